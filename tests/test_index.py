"""Embedding indexes: exact Flat search, IVF-PQ recall, integrity checks, sharded builds,
GPU selection, auto choice, CLI parity."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import seqatlas
from seqatlas import schema
from seqatlas.atlas import Atlas, AtlasWriter
from seqatlas.cli.main import main
from seqatlas.store import AtlasReader
from seqatlas.errors import AtlasIndexError, ConfigError
from seqatlas.index import IndexConfig, build_index, choose_index, load_index, plan_index
from seqatlas.index.build import pq_shape, use_gpu
from seqatlas.index.store import index_dir

MODEL = {"name": "synthetic", "model_type": "bert", "parameters": 0, "weights_sha256": "0" * 64,
         "tokenizer": {"family": "single"}}
LETTERS = np.array(list("ACGT"))


def make_embedding_atlas(path: Path, vectors: np.ndarray, *, parts: int = 3,
                         model: dict | None = None, sequences: int = 2) -> Path:
    """An atlas whose tokens carry ``vectors`` (stored as float16), in several parts.

    Token i is base i of the sequences laid end to end: token_id i, letter ACGT[i % 4].
    """
    n, dim = vectors.shape
    model = {**(model or MODEL), "hidden_size": dim}
    scoring = {"likelihood": "none", "embeddings": True, "strands": "forward", "window": 100,
               "overlap": 25, "embedding_dtype": "float16", "layer": 2, "layers": [2]}
    lengths = np.diff(np.linspace(0, n, sequences + 1).astype(int))
    with AtlasWriter(path, kind="dna", model=model, scoring=scoring) as writer:
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        names = [f"seq{i}" for i in range(sequences)]
        writer.commit("s" * 24, {"sequences": pa.Table.from_pydict({
            "seq_id": names, "ordinal": list(range(sequences)), "length": lengths.tolist(),
            "description": [""] * sequences, "source": ["synthetic"] * sequences,
            "sha1": [""] * sequences, "global_start": starts.tolist(),
            "token_offset": starts.tolist()}, schema=schema.SEQUENCES)})
        seq_of = np.repeat(np.arange(sequences), lengths)
        bounds = np.linspace(0, n, parts + 1).astype(int)
        for part in range(parts):
            rows = np.arange(bounds[part], bounds[part + 1])
            flat = pa.array(vectors[rows].astype(np.float16).ravel(), type=pa.float16())
            table = pa.Table.from_arrays([
                pa.array(rows, pa.int64()),
                pa.array([names[s] for s in seq_of[rows]]),
                pa.array(rows - starts[seq_of[rows]], pa.int64()),
                pa.array(rows - starts[seq_of[rows]] + 1, pa.int64()),
                pa.array(LETTERS[rows % 4].tolist()),
                pa.FixedSizeListArray.from_arrays(flat, dim)],
                schema=schema.tokens_schema(dim))
            writer.commit(f"{part:024d}", {"tokens": table})
    return path


def brute_force(x: np.ndarray, queries: np.ndarray, k: int, metric: str):
    x = x.astype(np.float16).astype(np.float32)
    queries = queries.astype(np.float32)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    if metric == "l2":
        scores = ((queries[:, None, :] - x[None, :, :]) ** 2).sum(-1)
        order = np.argsort(scores, axis=1, kind="stable")[:, :k]
    else:
        scores = queries @ x.T
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(3000, 16)).astype(np.float32)
    return make_embedding_atlas(tmp_path_factory.mktemp("small") / "atlas", vectors), vectors


@pytest.mark.parametrize("metric", ["ip", "l2", "cosine"])
def test_flat_search_equals_brute_force(small, metric):
    path, vectors = small
    meta = build_index(path, name=f"flat-{metric}", type="flat", metric=metric)
    assert (meta["type"], meta["ntotal"], meta["dim"], meta["metric"]) == \
        ("flat", 3000, 16, metric)
    assert meta["search"] == {"recall_at_10": 1.0, "exact": True}
    index = load_index(path, f"flat-{metric}")
    queries = np.random.default_rng(1).normal(size=(40, 16)).astype(np.float32)
    distances, ids = index.search(queries, 10)
    want_distances, want_ids = brute_force(vectors, queries, 10, metric)
    assert ids.dtype == np.int64 and distances.dtype == np.float32
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(distances, want_distances, rtol=1e-4, atol=1e-4)
    # ids are token_ids: they join back to the right rows
    tokens = Atlas(path).tokens(columns=["token_id", "seq_id", "start", "token", "embedding"])
    rows = {t: i for i, t in enumerate(tokens["token_id"].to_pylist())}
    hit = int(ids[0, 0])
    row = rows[hit]
    assert tokens["token"][row].as_py() == "ACGT"[hit % 4]
    assert (tokens["seq_id"][row].as_py(), tokens["start"][row].as_py()) == \
        (("seq0", hit) if hit < 1500 else ("seq1", hit - 1500))
    np.testing.assert_array_equal(np.array(tokens["embedding"][row].as_py(), np.float16),
                                  vectors[hit].astype(np.float16))


def test_more_neighbours_than_vectors_and_bad_queries(tmp_path):
    path = make_embedding_atlas(tmp_path / "a", np.eye(4, 8, dtype=np.float32), parts=1,
                                sequences=1)
    build_index(path, type="flat", metric="l2")
    index = load_index(path)
    distances, ids = index.search(np.eye(1, 8, dtype=np.float32), 6)
    assert ids[0, 0] == 0 and list(ids[0, 4:]) == [-1, -1]
    assert distances[0, 0] == 0
    with pytest.raises(ConfigError, match=r"shape \(n, 8\)"):
        index.search(np.zeros((2, 5), np.float32), 3)
    with pytest.raises(ConfigError, match="k must be a positive integer"):
        index.search(np.zeros((2, 8), np.float32), 0)


@pytest.mark.parametrize("metric", ["ip", "l2", "cosine"])
def test_exact_search_is_one_flat_whatever_the_batches(metric):
    """The exact top-k (calibration truth; identity's neighbours without an index) is that
    of one Flat over all rows, however they are split into batches, ties included."""
    from seqatlas.index.search import exact_search
    from seqatlas.index.vectors import prepare

    rng = np.random.default_rng(5)
    x = np.round(rng.normal(size=(3000, 8)))  # rounded: many exact ties
    x[:, 0] = np.abs(x[:, 0]) + 1  # no zero rows
    x = prepare(x, metric)
    ids = rng.permutation(10**6)[:3000]  # token ids need not follow the row order
    queries = prepare(x[rng.integers(0, 3000, 50)], metric)
    whole_d, whole_i = exact_search(queries, [(ids, x)], 11, metric)
    cuts = [0, 7, 1030, 1031, 2500, 3000]
    split_d, split_i = exact_search(queries, ((ids[a:b], x[a:b]) for a, b in
                                              zip(cuts, cuts[1:])), 11, metric)
    np.testing.assert_array_equal(whole_i, split_i)
    np.testing.assert_array_equal(whole_d, split_d)
    want_d, _ = brute_force(x, queries, 11, metric)  # cosine: x, queries are unit rows
    np.testing.assert_allclose(whole_d, want_d, rtol=1e-4, atol=1e-4)
    assert set(whole_i.ravel()) <= set(ids)
    few_d, few_i = exact_search(queries, [(ids[:3], x[:3])], 5, metric)
    assert few_i.shape == few_d.shape == (50, 3) and set(few_i.ravel()) == set(ids[:3])
    assert exact_search(queries, [], 5, metric)[1].shape == (50, 0)


def clustered(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32) * 3
    return (centres[rng.integers(0, clusters, n)] + rng.normal(size=(n, dim))).astype(np.float32)


def test_ivf_pq_recall_on_200k_clustered_vectors(tmp_path):
    vectors = clustered(200_000, 32, 500, seed=2)
    path = make_embedding_atlas(tmp_path / "a", vectors, parts=4)
    meta = build_index(path, type="ivf-pq", metric="l2")
    # 32 dimensions: 16 one-byte codes of 2 dimensions each, no PCA; ~4 sqrt(N) lists
    assert meta["params"] == {"nlist": 2048, "m": 16, "nbits": 8, "sample": 81920}
    assert meta["factory"] == "IVF2048,PQ16x8np"
    assert meta["bytes_per_vector"] < 16 + 8 + 4  # codes + id + quantizer, amortised
    # 2 dimensions of isotropic noise per code byte limit the recall to ~0.9 (measured
    # 0.898); the build says so, and stops raising nprobe once the recall stops rising
    search = meta["search"]
    assert search["parameter"] == "nprobe" and 0.85 <= search["recall_at_10"] < 0.95
    assert "use larger codes (--m)" in search["warning"] and len(search["curve"]) < 8
    index = load_index(path)
    assert index.mmap  # IVF lists are mapped, not read
    queries = vectors[np.random.default_rng(3).choice(len(vectors), 200, replace=False)]
    _, truth = brute_force(vectors, queries, 10, "l2")
    _, ids = index.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, ids)])
    assert recall >= 0.85, recall
    # more lists visited never lowers recall much, and nprobe=nlist scans everything
    _, all_ids = index.search(queries, 10, nprobe=2048)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, all_ids)]) >= recall - 0.01


def low_rank(n: int, dim: int, rank: int, seed: int) -> np.ndarray:
    """Clustered vectors near a ``rank``-dimensional subspace, like real embeddings."""
    rng = np.random.default_rng(seed)
    latent = clustered(n, rank, 50, seed)
    return (latent @ rng.normal(size=(rank, dim)) + 0.05 * rng.normal(size=(n, dim))
            ).astype(np.float32)


def test_ivf_pq_with_pca_and_hnsw(tmp_path):
    vectors = low_rank(20_000, 64, 12, seed=4)
    path = make_embedding_atlas(tmp_path / "a", vectors)
    meta = build_index(path, name="pq", type="ivf-pq", m=16, metric="cosine")
    assert meta["factory"] == "PCAR32,IVF512,PQ16x8np"
    assert 0.99 < meta["pca_variance_kept"] < 1
    hnsw = build_index(path, name="hnsw", type="hnsw", m=16)
    assert hnsw["factory"] == "IDMap,HNSW16" and hnsw["search"]["parameter"] == "efSearch"
    assert hnsw["search"]["efSearch"] >= 16 and "nprobe" not in hnsw["search"]
    queries = vectors[:100]
    _, truth = brute_force(vectors, queries, 10, "cosine")
    for name in ("pq", "hnsw"):
        _, ids = load_index(path, name).search(queries, 10)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, ids)])
        assert recall >= 0.85, (name, recall)


def test_auto_choice_threshold_and_memory():
    big = 64 << 30
    plan = choose_index(999_999, 128, memory_bytes=big)
    assert plan.type == "flat" and "999,999 vectors < 1,000,000" in plan.reason
    plan = choose_index(1_000_000, 128, memory_bytes=big)
    assert (plan.type, plan.nlist, plan.m, plan.nbits, plan.pca) == ("ivf-pq", 4096, 48, 8, 96)
    assert "48 code bytes + 8 id bytes" in plan.reason and "PCA rotation to 96" in plan.reason
    assert plan.describe() == "PCAR96,IVF4096,PQ48x8np"
    # Flat would not fit in half the memory: IVF-PQ even below the threshold
    plan = choose_index(500_000, 1024, memory_bytes=2 << 30)
    assert plan.type == "ivf-pq" and "exceeds half the memory" in plan.reason
    # codes shrink until they fit
    plan = choose_index(100_000_000, 128, memory_bytes=8 << 30)
    assert plan.m == 24 and plan.pca == 48 and 100_000_000 * (24 + 8) <= 4 << 30
    with pytest.raises(ConfigError, match="do not fit"):
        choose_index(10**9, 128, memory_bytes=1 << 30)
    assert choose_index(10, 4, memory_bytes=big).type == "flat"


def test_auto_with_m_describes_the_codes_it_uses():
    plan = plan_index(IndexConfig(type="auto", m=16), 2_000_000, 128, memory_bytes=64 << 30)
    assert (plan.type, plan.m, plan.pca) == ("ivf-pq", 16, 32) and plan.params["m"] == 16
    assert "16 code bytes + 8 id bytes" in plan.reason and "PCA rotation to 32" in plan.reason
    assert "48 code bytes" not in plan.reason


def test_auto_widens_codes_while_the_pca_loses_variance():
    from seqatlas.index.build import explained_variance, widen_codes

    rng = np.random.default_rng(10)
    isotropic = explained_variance(rng.normal(size=(5000, 128)).astype(np.float32))
    assert 0.7 < isotropic[95] < 0.8
    plan = widen_codes(choose_index(2_000_000, 128, memory_bytes=64 << 30), isotropic,
                       2_000_000, 128, 64 << 30)
    assert (plan.m, plan.pca) == (64, None)  # 96 of 128 dimensions lose too much: no PCA
    assert "64 code bytes + 8 id bytes" in plan.reason and plan.params["m"] == 64
    flat_tail = explained_variance(low_rank(5000, 128, 20, seed=11))
    plan = widen_codes(choose_index(2_000_000, 128, memory_bytes=64 << 30), flat_tail,
                       2_000_000, 128, 64 << 30)
    assert (plan.m, plan.pca) == (48, 96)
    assert re.search(r"the PCA keeps (99\.\d\d|100\.00)% of the sample's variance", plan.reason)
    # wider codes must fit in memory too
    plan = widen_codes(choose_index(2_000_000, 128, memory_bytes=64 << 30), isotropic,
                       2_000_000, 128, 2_000_000 * 70 * 2)
    assert plan.m == 48


def test_plan_defaults_and_checks():
    assert pq_shape(128, None) == (48, 96)
    assert pq_shape(32, None) == (16, None)
    assert pq_shape(30, None) == (15, None)
    assert pq_shape(128, 64) == (64, None)
    with pytest.raises(ConfigError, match="multiple of it"):
        pq_shape(128, 100)
    plan = plan_index(IndexConfig(type="ivf-flat"), 10_000, 8)
    assert (plan.nlist, plan.sample) == (256, 10_000)
    with pytest.raises(ConfigError, match="--nlist 5000 is more than"):
        plan_index(IndexConfig(type="ivf-flat", nlist=5000), 1000, 8)
    with pytest.raises(ConfigError, match="too few for 8-bit PQ"):
        plan_index(IndexConfig(type="ivf-pq", nlist=4), 200, 8)
    with pytest.raises(ConfigError, match="--type 'ivfpq'"):
        IndexConfig(type="ivfpq")
    with pytest.raises(ConfigError, match="--nlist must be a positive integer"):
        IndexConfig(nlist=0)
    with pytest.raises(ConfigError, match="index name"):
        IndexConfig(name="../x")


def test_gpu_selection(monkeypatch):
    import faiss

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0)
    assert use_gpu(None, "ivf-pq") == (False, "CPU (FAISS sees no GPU)")
    with pytest.raises(ConfigError, match=r"--gpu: FAISS sees no GPU.*seqatlas\[gpu\]"):
        use_gpu(True, "ivf-pq")
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 2)
    assert use_gpu(None, "ivf-pq")[0] and use_gpu(True, "ivf-flat")[0]
    assert not use_gpu(False, "ivf-pq")[0]
    assert not use_gpu(None, "flat")[0] and not use_gpu(None, "hnsw")[0]


def test_gpu_code_path_gives_the_cpu_result(tmp_path, monkeypatch):
    """With a GPU faked by CPU clones, the GPU build path returns the CPU build's index."""
    import faiss

    vectors = clustered(6000, 16, 20, seed=5)
    path = make_embedding_atlas(tmp_path / "a", vectors)
    cpu = build_index(path, name="cpu", type="ivf-flat", gpu=False)
    cloned = []
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus",
                        lambda index: cloned.append(1) or faiss.clone_index(index),
                        raising=False)
    gpu = build_index(path, name="gpu", type="ivf-flat")
    assert gpu["gpu"] is True and not cpu["gpu"] and len(cloned) == 2  # k-means + assignment
    queries = vectors[:50]
    assert np.array_equal(load_index(path, "cpu").search(queries, 5)[1],
                          load_index(path, "gpu").search(queries, 5)[1])
    # the saved index holds the CPU quantizer again
    assert load_index(path, "gpu").index.quantizer is not None


# --- integrity -------------------------------------------------------------------------


@pytest.fixture
def built(tmp_path):
    vectors = np.random.default_rng(6).normal(size=(500, 16)).astype(np.float32)
    path = make_embedding_atlas(tmp_path / "a", vectors, parts=2)
    build_index(path, type="ivf-flat", nlist=8)
    return path


def _dir(path: Path, name: str = "default") -> Path:
    """The directory of the build the atlas's current version names."""
    return index_dir(AtlasReader(path), name)


def _file(path: Path, name: str = "default") -> Path:
    return _dir(path, name) / "index.faiss"


def test_flipped_byte_is_a_clear_error(built):
    data = bytearray(_file(built).read_bytes())
    data[len(data) // 2] ^= 0xFF
    _file(built).write_bytes(bytes(data))
    with pytest.raises(AtlasIndexError, match=r"is corrupt \(sha256 differs.*seqatlas index "
                                               r"build --atlas .* --name default"):
        load_index(built)


def test_truncated_file_is_a_clear_error(built):
    data = _file(built).read_bytes()
    _file(built).write_bytes(data[: len(data) // 3])
    with pytest.raises(AtlasIndexError, match="truncated or replaced"):
        load_index(built)


def test_unreadable_file_with_matching_checksum_is_a_clear_error(built):
    """FAISS's RuntimeError on a bad file becomes AtlasIndexError, never a crash."""
    from seqatlas.util import file_sha256

    data = _file(built).read_bytes()
    _file(built).write_bytes(data[:40] + bytes(len(data) - 40))  # same size, zeroed body
    meta_path = _dir(built) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["sha256"] = file_sha256(_file(built))
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(AtlasIndexError, match="cannot be read by FAISS"):
        load_index(built)


def test_wrong_dimension_is_a_clear_error(built, tmp_path):
    import faiss

    from seqatlas.util import file_sha256

    # an index of another width in place of the file (and a meta.json that matches the file)
    other = faiss.IndexIDMap(faiss.IndexFlatL2(8))
    other.add_with_ids(np.zeros((500, 8), np.float32), np.arange(500))
    faiss.write_index(other, str(_file(built)))
    meta_path = _dir(built) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta.update(sha256=file_sha256(_file(built)), bytes=_file(built).stat().st_size)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(AtlasIndexError, match="has dimension 8, its meta.json says 16"):
        load_index(built)
    # an index copied to an atlas whose embeddings have another width
    narrow = make_embedding_atlas(tmp_path / "narrow", np.ones((500, 8), np.float32))
    build_index(narrow, type="flat")
    shutil.rmtree(_dir(narrow))  # its build's files swapped for another atlas's
    shutil.copytree(_dir(tmp_path / "a"), _dir(narrow))
    with pytest.raises(AtlasIndexError, match="has dimension 16 but the atlas's 'embedding' "
                                               "column has dimension 8"):
        load_index(narrow)


def test_index_of_another_atlas_is_a_clear_error(built, tmp_path):
    vectors = np.random.default_rng(7).normal(size=(500, 16)).astype(np.float32)
    other_model = make_embedding_atlas(tmp_path / "m", vectors, model={**MODEL, "name": "x"})
    same_model = make_embedding_atlas(tmp_path / "s", vectors[:400])
    for other in (other_model, same_model):  # its build's files swapped for built's
        build_index(other, type="ivf-flat", nlist=8)
        shutil.rmtree(_dir(other))
        shutil.copytree(_dir(built), _dir(other))
    with pytest.raises(AtlasIndexError, match="built from another atlas \\(model 'synthetic'"):
        load_index(other_model)
    with pytest.raises(AtlasIndexError, match="holds 500 vectors from other tokens parts than "
                                               "the atlas now has \\(400 token rows"):
        load_index(same_model)
    # copied whole, without its manifest entry, it is no index of that atlas at all
    bare = make_embedding_atlas(tmp_path / "bare", vectors)
    shutil.copytree(built / "index", bare / "index")
    with pytest.raises(AtlasIndexError, match="has no index named 'default'"):
        load_index(bare)


def test_atlas_changed_since_build_and_missing_index(built):
    with pytest.raises(AtlasIndexError, match="no index named 'other'.*seqatlas index build "
                                               "--atlas .* --name other"):
        load_index(built, "other")
    first = AtlasReader(built).tokens().slice(0, 1)
    extra = first.set_column(0, "token_id", pa.array([500], pa.int64()))
    with AtlasWriter(built) as writer:  # more tokens arrive after the build
        writer.commit("extra-tokens", {"tokens": extra})
    index = load_index(built)  # searched beside the index until `index update`
    assert (index.ntotal, index.pending_rows) == (500, 1)
    vector = np.array(extra["embedding"][0].as_py(), np.float32)  # token 0's, too
    assert sorted(index.search(vector, 2)[1][0]) == [0, 500]
    with AtlasWriter(built) as writer:  # a row the index holds, twice: not what it indexed
        writer.commit("twice", {"tokens": first})
    with pytest.raises(AtlasIndexError, match="atlas changed since the build"):
        load_index(built)


def test_rebuild_replaces_atomically_and_cleans_stale_builds(built, monkeypatch):
    first = json.loads((_dir(built) / "meta.json").read_text())
    stale = built / "index" / ".default.tmp-999999"
    stale.mkdir()
    (stale / "index.faiss").write_bytes(b"half written")
    unrecorded = built / "index" / "default" / "b-00000000000000ff"  # a crash before commit
    unrecorded.mkdir()
    old_reader = AtlasReader(built)
    meta = build_index(built, type="flat")
    assert not stale.exists() and not unrecorded.exists()
    assert meta["type"] == "flat" and first["type"] == "ivf-flat"
    assert sorted(p.name for p in (built / "index").iterdir()) == ["default"]
    assert load_index(built).meta["sha256"] == meta["sha256"] != first["sha256"]
    manifest = Atlas(built).manifest["indexes"]["default"]
    assert manifest["sha256"] == meta["sha256"] and manifest["type"] == "flat"
    assert seqatlas.Atlas(built).count("tokens") == 500
    # the first build is kept for readers that opened the atlas before the rebuild
    assert set(manifest["retired"]) == {first["dir"]} and meta["dir"] != first["dir"]
    assert load_index(old_reader).meta["sha256"] == first["sha256"]
    # ... until it has been retired for the keep time
    from seqatlas.store import writer as writer_module

    monkeypatch.setattr(writer_module, "RETIRED_KEEP_SECONDS", 0.0)
    third = build_index(built, type="flat")
    assert sorted(p.name for p in (built / "index" / "default").iterdir()) == \
        sorted([meta["dir"], third["dir"]])  # the first is gone, the second just retired
    assert set(Atlas(built).manifest["indexes"]["default"]["retired"]) == {meta["dir"]}


def test_an_index_built_before_builds_had_directories_is_read_and_replaced(built, monkeypatch):
    """Earlier versions kept an index's files in ``index/<name>/`` itself: still read, kept
    for earlier readers when rebuilt, then removed."""
    from seqatlas.store import writer as writer_module

    build = _dir(built)
    entry = dict(AtlasReader(built).manifest.indexes["default"])
    for file in build.iterdir():
        file.rename(build.parent / file.name)
    build.rmdir()
    entry.pop("dir")
    meta = json.loads((build.parent / "meta.json").read_text())
    meta.pop("dir")
    (build.parent / "meta.json").write_text(json.dumps(meta))
    with AtlasWriter(built) as writer:
        writer.set_index("default", entry)
    legacy = AtlasReader(built)
    assert _dir(built) == built / "index" / "default"
    assert load_index(legacy).meta["sha256"] == meta["sha256"]
    rebuilt = build_index(built, type="flat")
    assert (built / "index" / "default" / "index.faiss").exists()  # kept for `legacy`
    assert load_index(legacy).meta["sha256"] == meta["sha256"]
    assert load_index(built).meta["sha256"] == rebuilt["sha256"]
    monkeypatch.setattr(writer_module, "RETIRED_KEEP_SECONDS", 0.0)
    last = build_index(built, type="flat")
    assert sorted(p.name for p in (built / "index" / "default").iterdir()) == \
        sorted([rebuilt["dir"], last["dir"]])  # the legacy files are gone


def test_a_build_runs_beside_a_writer_and_records_after_it(built, monkeypatch):
    """The build reads one version without the lock; recording it waits for the lock."""
    import threading

    from seqatlas.store import writer as writer_module

    monkeypatch.setattr(writer_module, "LOCK_POLL_SECONDS", 0.05)
    first = AtlasReader(built).tokens().slice(0, 1)
    extra = first.set_column(0, "token_id", pa.array([500], pa.int64()))
    holder = AtlasWriter(built)  # a writer (say an ingest) holds the lock
    result = {}
    thread = threading.Thread(target=lambda: result.update(build_index(built, type="flat")))
    thread.start()
    holder.commit("extra-tokens", {"tokens": extra})  # committed during the build
    time.sleep(0.5)
    assert thread.is_alive() and "ntotal" not in result  # waiting for the lock
    holder.close()
    thread.join(timeout=120)
    assert result["ntotal"] in (500, 501)
    index = load_index(built)  # rows the build did not see are searched beside it
    assert index.ntotal + index.pending_rows == 501


def test_a_writer_may_start_while_a_build_writes_its_files(built, monkeypatch):
    """A build writes its files before it takes the lock: an ingest started meanwhile is
    not refused, and the half-written build survives that writer's clean-up."""
    import threading

    from seqatlas.index import store as index_store

    staged, release = threading.Event(), threading.Event()
    original = index_store.stage_index

    def slow_stage(*args, **kwargs):
        result = original(*args, **kwargs)
        staged.set()
        release.wait(timeout=60)
        return result

    monkeypatch.setattr(index_store, "stage_index", slow_stage)
    result = {}
    thread = threading.Thread(target=lambda: result.update(build_index(built, type="flat")))
    thread.start()
    assert staged.wait(timeout=120)
    temporary = [p for p in (built / "index" / "default").iterdir() if ".tmp-" in p.name]
    assert len(temporary) == 1
    first = AtlasReader(built).tokens().slice(0, 1)
    extra = first.set_column(0, "token_id", pa.array([500], pa.int64()))
    with AtlasWriter(built) as writer:  # not refused: the build does not hold the lock
        index_store.remove_stale(writer.path, writer.manifest)
        writer.commit("extra-tokens", {"tokens": extra})
    assert temporary[0].is_dir()  # a running build's files are not stale
    release.set()
    thread.join(timeout=120)
    assert result["dir"] and not temporary[0].exists()
    index = load_index(built)
    assert index.meta["dir"] == result["dir"] and index.ntotal + index.pending_rows == 501


def test_no_embeddings_and_unknown_column(tmp_path, built):
    with pytest.raises(AtlasIndexError, match="no embedding column 'embedding_layer_3'; "
                                               "choose one of: embedding"):
        build_index(built, column="embedding_layer_3")
    with AtlasWriter(tmp_path / "plain", kind="dna", model={**MODEL, "hidden_size": 4},
                     scoring={"embeddings": False}):
        pass
    with pytest.raises(AtlasIndexError, match="stores no embeddings; ingest with "
                                               "`--embeddings float16`"):
        build_index(tmp_path / "plain")


# --- sharded builds on Ray -------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.parametrize("kind", ["flat", "ivf-flat"])
def test_sharded_build_equals_single_build(tmp_path, ray_session, kind):
    vectors = clustered(9000, 16, 30, seed=8)
    path = make_embedding_atlas(tmp_path / "a", vectors, parts=5)
    single = build_index(path, name="single", type=kind, nlist=32 if kind != "flat" else None)
    sharded = build_index(path, name="sharded", type=kind, shards=3,
                          nlist=32 if kind != "flat" else None)
    assert sharded["shards"] == 3 and single["shards"] == 1
    assert sharded["ntotal"] == single["ntotal"] == 9000
    assert sharded["search"] == single["search"]
    queries = clustered(200, 16, 30, seed=9)
    d1, i1 = load_index(path, "single").search(queries, 10, nprobe=4)
    d2, i2 = load_index(path, "sharded").search(queries, 10, nprobe=4)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(d1, d2)


@pytest.mark.ray
def test_sharded_hnsw_is_refused(tmp_path, ray_session):
    path = make_embedding_atlas(tmp_path / "a", np.ones((100, 4), np.float32))
    with pytest.raises(ConfigError, match="HNSW graphs cannot be merged"):
        build_index(path, type="hnsw", shards=2)


# --- CLI -------------------------------------------------------------------------------


def test_cli_and_api_parity(small, capsys):
    path, _ = small
    api = build_index(path, name="api", type="ivf-flat", metric="l2", nlist=16)
    assert main(["index", "build", "--atlas", str(path), "--name", "cli", "--type", "ivf-flat",
                 "--metric", "l2", "--nlist", "16", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    varying = {"name", "built", "build_seconds", "train_seconds", "add_seconds", "atlas", "dir"}
    assert {k: v for k, v in cli.items() if k not in varying} == \
        {k: v for k, v in api.items() if k not in varying}
    assert main(["index", "build", "--atlas", str(path), "--name", "shown"]) == 0
    out = capsys.readouterr().out
    assert "index 'shown': flat (IDMap,Flat)" in out
    assert "why: 3,000 vectors < 1,000,000: exact search" in out
    assert main(["index", "list", "--atlas", str(path)]) == 0
    listed = capsys.readouterr().out
    assert "api" in listed and "cli" in listed and "ivf-flat" in listed
    assert main(["index", "list", "--atlas", str(path), "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["cli"]["ntotal"] == 3000 and rows["cli"]["type"] == "ivf-flat"


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["index", "build", "--atlas", str(tmp_path / "none")]) == 1
    assert "is not an atlas" in capsys.readouterr().err
    assert main(["index", "build", "--atlas", str(tmp_path / "none"), "--gpu"]) == 1


def test_index_modules_do_not_import_ray_or_faiss_for_help():
    code = ("import sys, seqatlas.cli.main, seqatlas.index; "
            "assert 'ray' not in sys.modules, 'ray'; "
            "import seqatlas.cli.index_cmd; assert 'faiss' not in sys.modules, 'faiss'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr


# --- end to end ------------------------------------------------------------------------


def test_ingested_atlas_end_to_end(tmp_path, tiny_esm):
    from conftest import random_protein, write_fasta

    fasta = write_fasta(tmp_path / "p.fa", {f"p{i}": random_protein(60, i) for i in range(4)})
    seqatlas.ingest(fasta, atlas=tmp_path / "a", model=str(tiny_esm), likelihood="none",
                    workers=0, progress=False)
    meta = seqatlas.build_index(tmp_path / "a")
    assert meta["type"] == "flat" and meta["ntotal"] == 240 and meta["dim"] == 32
    tokens = Atlas(tmp_path / "a").tokens(columns=["token_id", "embedding"])
    queries = np.array(tokens["embedding"].to_pylist()[:5], np.float32)
    distances, ids = seqatlas.load_index(tmp_path / "a").search(queries, 3)
    assert ids[:, 0].tolist() == tokens["token_id"].to_pylist()[:5]
    np.testing.assert_allclose(distances[:, 0], 1.0, atol=1e-5)
