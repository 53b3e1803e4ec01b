"""Indexes that grow with their atlas: rows ingested after a build are searched exactly
beside the index (and reported), `index update` folds them in without training again, and
an index whose rows left the atlas is refused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import seqatlas
from seqatlas import schema
from seqatlas.cli.main import main
from seqatlas.errors import AtlasIndexError, ConfigError
from seqatlas.index import build_index, load_index, update_index
from seqatlas.index.store import index_dir
from seqatlas.query import knn
from seqatlas.store import AtlasReader, AtlasWriter
from tests.embedding_data import make_token_atlas, random_dna

DIM = 8
SEQS = {"a": random_dna(120, 1), "b": random_dna(90, 2)}
REBUILD = r"seqatlas index build --atlas \S+ --name default"


def _embed(layer, texts, ids):
    return np.stack([np.random.default_rng(int(i) * 7 + layer).normal(size=DIM)
                     for i in ids])


def _vectors(matrix: np.ndarray) -> pa.Array:
    matrix = np.asarray(matrix, dtype=np.float16)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1), pa.float16()),
                                             matrix.shape[1])


def add_sequence(path: Path, seq_id: str, residues: str, embed=_embed, *,
                 parts: int = 1) -> np.ndarray:
    """Commit one more sequence with its token rows in ``parts`` new units, as an ingest
    of another FASTA record would; returns its token ids."""
    reader = AtlasReader(path)
    sequences = reader.sequences()
    start = int(max((s + n for s, n in zip(sequences["global_start"].to_pylist(),
                                           sequences["length"].to_pylist())), default=0))
    layers = reader.manifest.scoring.stored_layers()
    token_schema = reader.manifest.tokens_schema()
    n = len(residues)
    with AtlasWriter(path) as writer:
        writer.commit(hashlib.sha256(b"s" + seq_id.encode()).hexdigest(), {
            "sequences": pa.Table.from_pydict({
                "seq_id": [seq_id], "ordinal": [sequences.num_rows], "length": [n],
                "description": [""], "source": ["more"], "sha1": [""],
                "global_start": [start], "token_offset": [start]}, schema=schema.SEQUENCES)})
        bounds = np.linspace(0, n, parts + 1).astype(int)
        for part, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
            starts = np.arange(lo, hi)
            texts = [residues[s] for s in starts]
            columns = {"token_id": start + starts, "seq_id": [seq_id] * len(starts),
                       "start": starts, "end": starts + 1, "token": texts}
            for layer in layers:
                columns[schema.layer_column(layers, layer)] = _vectors(
                    embed(layer, texts, start + starts))
            tokens = pa.Table.from_arrays([pa.array(columns[f.name], type=f.type)
                                           for f in token_schema], schema=token_schema)
            writer.commit(hashlib.sha256(f"{seq_id}:{part}".encode()).hexdigest(),
                          {"tokens": tokens})
    return start + np.arange(n)


def _all_tokens(path: Path) -> tuple[np.ndarray, np.ndarray]:
    tokens = AtlasReader(path).tokens(columns=["token_id", "embedding"])
    x = np.stack(tokens["embedding"].to_numpy(zero_copy_only=False)).astype(np.float32)
    return tokens["token_id"].to_numpy(), x


def _stored(path: Path, token_id: int) -> np.ndarray:
    ids, x = _all_tokens(path)
    return x[list(ids).index(token_id)]


def _brute_cosine(path: Path, queries: np.ndarray, k: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    ids, x = _all_tokens(path)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    scores = queries / np.linalg.norm(queries, axis=1, keepdims=True) @ x.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), ids[order]


def _dir(path: Path, name: str = "default") -> Path:
    """The directory of the build the atlas's current version names."""
    return index_dir(AtlasReader(path), name)


def _files(path: Path, name: str = "default") -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(_dir(path, name).iterdir())}


@pytest.fixture
def grown(tmp_path):
    """A Flat (cosine) index over two sequences, then a third ingested after the build."""
    path = make_token_atlas(tmp_path / "atlas", SEQS, _embed, dim=DIM, parts_per_sequence=2)
    build_index(path, type="flat", metric="cosine")
    new = add_sequence(path, "c", random_dna(50, 3), parts=2)
    return path, new


# --- (a) Flat: new rows searched beside the index, reported, folded in ---------------


def test_rows_added_after_a_build_are_searched_and_reported(grown, capsys):
    path, new = grown
    index = load_index(path)
    assert (index.ntotal, index.pending_rows, index.total) == (210, 50, 260)
    assert index.meta["coverage"]["ids"] == 210 and index.meta["level"] == "tokens"
    queries = np.stack([_stored(path, int(new[10])), _stored(path, 5)])
    distances, ids = index.search(queries, 7)
    assert ids[:, 0].tolist() == [new[10], 5]  # a new row's own vector finds it first
    want_d, want_i = _brute_cosine(path, queries, 7)
    np.testing.assert_array_equal(ids, want_i)
    np.testing.assert_allclose(distances, want_d, rtol=1e-5, atol=1e-5)
    assert "50 token rows added since index 'default' was built were searched " \
           "exhaustively; `seqatlas index update --atlas" in index.pending_note()
    # knn: the hits over old and new rows, and the count in the result and on stderr
    capsys.readouterr()
    result = knn(path, at="c:10", k=5)
    assert result.schema.metadata[b"pending_rows"] == b"50"
    want = [int(i) for i in _brute_cosine(path, queries[:1], 6)[1][0] if i != new[10]][:5]
    assert result["token_id"].to_pylist() == want
    assert "50 token rows added since index 'default' was built were searched " \
           "exhaustively" in result.schema.metadata[b"note"].decode()
    assert main(["query", "knn", "--atlas", str(path), "--at", "c:10", "-k", "5",
                 "--format", "json"]) == 0
    out, err = capsys.readouterr()
    assert [r["token_id"] for r in json.loads(out)] == want
    assert "50 token rows added since index 'default' was built" in err
    assert f"seqatlas index update --atlas {path}" in err


def test_update_equals_a_fresh_flat_build(grown, capsys):
    path, new = grown
    rng = np.random.default_rng(4)
    queries = np.concatenate([rng.normal(size=(40, DIM)),
                              [_stored(path, int(i)) for i in new[[0, 33, 49]]]])
    queries = queries.astype(np.float32)
    searched = load_index(path).search(queries, 10)  # the index and the new rows beside it
    before = AtlasReader(path).manifest.indexes["default"]
    meta = update_index(path)
    assert meta["added"] == 50 and meta["ntotal"] == 260
    assert meta["last_update"]["added"] == 50 and meta["search"] == {"recall_at_10": 1.0,
                                                                     "exact": True}
    assert meta["built"] == before["built"] and meta["coverage"]["ids"] == 260
    entry = AtlasReader(path).manifest.indexes["default"]
    assert entry["ntotal"] == 260 and entry["sha256"] == meta["sha256"] != before["sha256"]
    updated = load_index(path)
    assert updated.pending_rows == 0 and updated.ntotal == 260
    build_index(path, name="fresh", type="flat", metric="cosine")
    fresh = load_index(path, "fresh")
    d1, i1 = updated.search(queries, 10)
    d2, i2 = fresh.search(queries, 10)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(d1, d2)
    np.testing.assert_array_equal(searched[1], i1)  # the same hits before the update
    np.testing.assert_allclose(searched[0], d1, rtol=1e-6, atol=1e-6)
    assert i1[-3:, 0].tolist() == new[[0, 33, 49]].tolist()
    # nothing new: said so, nothing written
    files, version = _files(path), AtlasReader(path).version
    assert update_index(path)["added"] == 0
    assert main(["index", "update", "--atlas", str(path)]) == 0
    assert "index 'default' is up to date (260 vectors); nothing was added" in \
        " ".join(capsys.readouterr().out.split())
    assert _files(path) == files and AtlasReader(path).version == version


def test_cli_update_and_json(grown, capsys):
    path, _ = grown
    assert main(["index", "update", "--atlas", str(path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["added"] == 50 and shown["ntotal"] == 260
    assert shown == json.loads((_dir(path) / "meta.json").read_text()) | \
        {"added": 50}
    add_sequence(path, "d", random_dna(20, 5))
    assert main(["index", "update", "--atlas", str(path), "--name", "default"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # as one line, whatever the width
    assert "index 'default': flat (IDMap,Flat)" in out and "280 vectors" in out
    assert "20 rows added in" in out and "recall@10 vs exact search: 1.000" in out
    assert main(["index", "update", "--atlas", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["added"] == 0
    assert main(["index", "update", "--atlas", str(path), "--name", "nope"]) == 1
    assert "no index named 'nope'" in capsys.readouterr().err


# --- (b) IVF-PQ keeps its training -----------------------------------------------------


def _token_atlas(path: Path, vectors: np.ndarray, units: int) -> Path:
    """Tokens only (seq "s", token i = row i), in ``units`` units."""
    model = {"name": "synthetic", "model_type": "bert", "parameters": 0,
             "weights_sha256": "0" * 64, "tokenizer": {"family": "single"},
             "hidden_size": vectors.shape[1]}
    scoring = {"likelihood": "none", "embeddings": True, "strands": "forward", "window": 100,
               "overlap": 25, "embedding_dtype": "float16", "layer": 2, "layers": [2]}
    with AtlasWriter(path, kind="dna", model=model, scoring=scoring):
        pass
    _commit_rows(path, vectors, 0, units)
    return path


def _commit_rows(path: Path, vectors: np.ndarray, first: int, units: int) -> None:
    token_schema = AtlasReader(path).manifest.tokens_schema()
    bounds = np.linspace(0, len(vectors), units + 1).astype(int)
    with AtlasWriter(path) as writer:
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            rows = np.arange(first + lo, first + hi)
            writer.commit(f"rows-{rows[0]}", {"tokens": pa.Table.from_arrays([
                pa.array(rows, pa.int64()), pa.array(["s"] * len(rows)),
                pa.array(rows, pa.int64()), pa.array(rows + 1, pa.int64()),
                pa.array(["A"] * len(rows)), _vectors(vectors[lo:hi])], schema=token_schema)})


def _recall(index, queries: np.ndarray, truth: np.ndarray) -> float:
    _, found = index.search(queries, 10)
    return float(np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found)]))


def _trained(index) -> dict[str, bytes]:
    """The trained parts of an IVF-PQ index: PCA matrix, coarse centroids, PQ codebooks."""
    import faiss

    outer = faiss.downcast_index(index)
    transform = faiss.downcast_VectorTransform(outer.chain.at(0))
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    quantizer = faiss.downcast_index(ivf.quantizer)
    return {"pca": faiss.vector_to_array(transform.A).tobytes(),
            "centroids": faiss.vector_to_array(quantizer.codes).tobytes(),
            "pq": faiss.vector_to_array(ivf.pq.centroids).tobytes()}


def test_ivf_pq_update_keeps_its_training_and_its_recall(tmp_path):
    rng = np.random.default_rng(8)
    centres = rng.normal(size=(40, 6)) * 3
    latent = centres[rng.integers(0, 40, 4000)] + rng.normal(size=(4000, 6))
    vectors = (latent @ rng.normal(size=(6, 32)) + 0.05 * rng.normal(size=(4000, 32))
               ).astype(np.float32)
    path = _token_atlas(tmp_path / "a", vectors[:2000], units=2)
    options = {"type": "ivf-pq", "nlist": 16, "m": 8, "nbits": 6, "metric": "l2"}
    built = build_index(path, name="grown", **options)
    assert built["factory"] == "PCAR16,IVF16,PQ8x6np" and built["ntotal"] == 2000
    trained = _trained(load_index(path, "grown", mmap=False).index)
    _commit_rows(path, vectors[2000:], 2000, units=3)
    assert load_index(path, "grown").pending_rows == 2000
    meta = update_index(path, "grown")
    assert meta["added"] == 2000 and meta["ntotal"] == 4000
    assert meta["factory"] == built["factory"] and meta["params"] == built["params"]
    search = meta["search"]
    assert search["parameter"] == "nprobe" and search["queries"] == 1000
    assert 0 < search["recall_at_10"] <= 1 and search["target"] == 0.95
    grown = load_index(path, "grown")
    assert grown.pending_rows == 0 and grown.ntotal == 4000
    assert _trained(load_index(path, "grown", mmap=False).index) == trained
    build_index(path, name="fresh", **options)
    fresh = load_index(path, "fresh")
    queries = vectors[rng.choice(4000, 200, replace=False)]
    x = vectors.astype(np.float16).astype(np.float32)
    truth = np.argsort(((queries[:, None, :] - x[None, :, :]) ** 2).sum(-1), axis=1,
                       kind="stable")[:, :10]
    assert _recall(grown, queries, truth) >= 0.95 * _recall(fresh, queries, truth) > 0.5


# --- (c) HNSW appends ----------------------------------------------------------------


def test_hnsw_appends(grown):
    path, new = grown
    build_index(path, name="graph", type="hnsw", m=8, metric="cosine")
    more = add_sequence(path, "d", random_dna(40, 6))
    pending = load_index(path, "graph")
    assert pending.pending_rows == 40
    query = _stored(path, int(more[7]))
    assert pending.search(query, 3)[1][0, 0] == more[7]
    meta = update_index(path, "graph")
    assert meta["added"] == 40 and meta["ntotal"] == 300
    assert meta["factory"] == "IDMap,HNSW8" and meta["search"]["parameter"] == "efSearch"
    index = load_index(path, "graph")
    assert index.pending_rows == 0 and index.ntotal == 300
    distances, ids = index.search(np.stack([query, _stored(path, int(new[3]))]), 10)
    assert ids[:, 0].tolist() == [more[7], new[3]]
    np.testing.assert_allclose(distances[:, 0], 1.0, atol=1e-3)
    all_ids, x = _all_tokens(path)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    queries = unit[np.random.default_rng(9).choice(len(unit), 50, replace=False)]
    truth = all_ids[np.argsort(-(queries @ unit.T), axis=1, kind="stable")[:, :10]]
    assert _recall(index, queries, truth) >= 0.9


# --- (d) refusals ----------------------------------------------------------------------


def test_other_weights_are_refused(grown):
    path, _ = grown
    meta_path = _dir(path) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["model"]["weights_sha256"] = "1" * 64
    meta_path.write_text(json.dumps(meta))
    for run in (lambda: load_index(path), lambda: update_index(path)):
        with pytest.raises(AtlasIndexError, match=f"built from another atlas.*{REBUILD}"):
            run()


def test_rows_gone_from_the_atlas_are_refused(grown, capsys):
    path, _ = grown
    manifest = AtlasReader(path).manifest
    first = sorted(manifest.table_parts("tokens"))[0]
    with AtlasWriter(path) as writer:  # one unit's tokens leave the atlas
        writer.replace_parts("tokens", [first], {}, operation="drop a unit")
    files = _files(path)
    for run in (lambda: load_index(path), lambda: update_index(path)):
        with pytest.raises(AtlasIndexError, match=r"holds the tokens rows of 1 unit\(s\) that "
                                                  rf".* no longer has .*{REBUILD}"):
            run()
    assert _files(path) == files
    assert main(["query", "knn", "--atlas", str(path), "--at", "a:5"]) == 1
    err = capsys.readouterr().err
    assert "no longer has" in err and "seqatlas index build" in err
    build_index(path, type="flat")  # the rebuild the message names
    assert load_index(path).pending_rows == 0


def test_an_index_built_before_coverage_keeps_the_fingerprint_check(tmp_path):
    path = make_token_atlas(tmp_path / "atlas", SEQS, _embed, dim=DIM)
    build_index(path, type="flat", metric="ip")
    directory = _dir(path)
    meta = json.loads((directory / "meta.json").read_text())
    for key in ("coverage", "level", "pooling", "layer_column"):
        meta.pop(key)
    (directory / "meta.json").write_text(json.dumps(meta))
    for file in ("units.json", "ids.npy"):
        (directory / file).unlink()
    index = load_index(path)
    assert index.pending is None and index.pending_rows == 0 and index.total == 210
    assert update_index(path)["added"] == 0  # current: nothing to do
    add_sequence(path, "c", random_dna(10, 7))
    for run in (lambda: load_index(path), lambda: update_index(path)):
        with pytest.raises(AtlasIndexError, match=f"atlas changed since the build.*{REBUILD}"):
            run()


def test_damaged_coverage_is_refused(grown):
    path, _ = grown
    ids = _dir(path) / "ids.npy"
    data = bytearray(ids.read_bytes())
    data[-1] ^= 0xFF
    ids.write_bytes(bytes(data))
    with pytest.raises(AtlasIndexError, match=f"ids.npy is corrupt.*{REBUILD}"):
        load_index(path)
    (_dir(path) / "units.json").write_text("[]")
    with pytest.raises(AtlasIndexError, match=f"units.json is corrupt.*{REBUILD}"):
        load_index(path)


# --- (e) pooled rows -------------------------------------------------------------------


def _pool(path: Path, seq_ids: list[str], key: str) -> None:
    """Commit the mean (and a random bos) row per sequence of layer 6, as a pooling unit."""
    reader = AtlasReader(path)
    tokens = reader.tokens(columns=["token_id", "seq_id", "embedding"])
    offsets = dict(zip(*reader.sequences(columns=["seq_id", "token_offset"]).to_pydict()
                       .values()))
    rows = []
    for seq_id in seq_ids:
        mine = tokens.filter(pa.compute.equal(tokens["seq_id"], seq_id))
        x = np.stack(mine["embedding"].to_numpy(zero_copy_only=False)).astype(np.float32)
        n = len(x)
        for pooling, vector in (("mean", x.mean(0)),
                                ("bos", np.random.default_rng(n).normal(size=DIM))):
            rows.append({"seq_id": seq_id, "start": 0, "end": n, "level": "sequence",
                         "pooling": pooling, "layer": 6, "tokens": n if pooling == "mean" else 1,
                         "pool_id": offsets[seq_id], "vector": vector})
    pooled_schema = reader.manifest.pooled_schema()
    columns = {f.name: [r[f.name] for r in rows] for f in pooled_schema if f.name != "vector"}
    arrays = [pa.array(columns[f.name], type=f.type) if f.name != "vector" else
              _vectors(np.stack([r["vector"] for r in rows])) for f in pooled_schema]
    with AtlasWriter(path) as writer:
        writer.commit(key, {"pooled": pa.Table.from_arrays(arrays, schema=pooled_schema)},
                      unit={"pooled": len(seq_ids)})


def _mean(path: Path, seq_id: str) -> np.ndarray:
    tokens = AtlasReader(path).tokens(columns=["seq_id", "embedding"])
    mine = tokens.filter(pa.compute.equal(tokens["seq_id"], seq_id))
    return np.stack(mine["embedding"].to_numpy(zero_copy_only=False)).astype(
        np.float32).mean(0).astype(np.float16).astype(np.float32)


def test_pooled_index_grows(tmp_path, capsys):
    many = {f"s{i}": random_dna(20 + i, 10 + i) for i in range(6)}
    path = make_token_atlas(tmp_path / "atlas", many, _embed, dim=DIM)
    _pool(path, list(many)[:3], "pool-1")
    _pool(path, list(many)[3:], "pool-2")
    offsets = dict(zip(*AtlasReader(path).sequences(columns=["seq_id", "token_offset"])
                       .to_pydict().values()))
    assert main(["index", "build", "--atlas", str(path), "--name", "seqs", "--level",
                 "pooled", "--type", "flat", "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert (meta["level"], meta["pooling"], meta["layer"], meta["ntotal"]) == \
        ("pooled", "mean", 6, 6)  # the mean rows only, not the bos ones
    assert meta["column"] == "embedding (pooled mean)" and meta["layer_column"] == "embedding"
    assert meta["atlas"]["pooled_rows"] == 6 and meta["coverage"]["units"] == 2
    index = load_index(path, "seqs")
    assert index.level == "pooled" and index.pending_rows == 0
    _, ids = index.search(_mean(path, "s4"), 2)
    assert ids[0, 0] == offsets["s4"]  # ids are pool_ids
    with pytest.raises(AtlasIndexError, match="is over pooled vectors, not tokens"):
        knn(path, at="s0:1", index="seqs")
    # a new sequence and its pooled rows arrive
    add_sequence(path, "late", random_dna(30, 40))
    _pool(path, ["late"], "pool-3")
    late = int(AtlasReader(path).sequences().filter(
        pa.compute.equal(AtlasReader(path).sequences()["seq_id"], "late"))["token_offset"][0]
        .as_py())
    index = load_index(path, "seqs")
    assert index.pending_rows == 1
    assert "1 pooled rows added since index 'seqs'" in index.pending_note()
    assert "--name seqs" in index.pending_note()
    _, ids = index.search(_mean(path, "late"), 3)
    assert ids[0, 0] == late
    assert update_index(path, "seqs")["added"] == 1
    build_index(path, name="fresh", level="pooled", type="flat")
    updated, fresh = load_index(path, "seqs"), load_index(path, "fresh")
    assert updated.pending_rows == 0 and updated.ntotal == fresh.ntotal == 7
    queries = np.stack([_mean(path, s) for s in [*many, "late"]])
    d1, i1 = updated.search(queries, 7)
    d2, i2 = fresh.search(queries, 7)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(d1, d2)
    assert sorted(i1[:, 0].tolist()) == sorted([*offsets.values(), late])


def test_pooled_build_errors(tmp_path):
    path = make_token_atlas(tmp_path / "atlas", SEQS, _embed, dim=DIM)
    with pytest.raises(AtlasIndexError, match="no pooled embeddings yet.*seqatlas pool"):
        build_index(path, level="pooled")
    _pool(path, ["a"], "pool-1")
    with pytest.raises(AtlasIndexError, match="no embedding column 'embedding_layer_2'"):
        build_index(path, level="pooled", column="embedding_layer_2")
    with pytest.raises(ConfigError, match="--pooling 'max'"):
        build_index(path, level="pooled", pooling="max")
    with pytest.raises(ConfigError, match="--level 'bins'"):
        build_index(path, level="bins")


# --- (f) compaction mixes indexed and new units --------------------------------------


def test_compaction_after_a_build_leaves_exactly_the_new_rows_pending(grown):
    path, new = grown
    before = load_index(path)
    pending_before = sorted(i for ids, _ in before.pending.batches(1000) for i in ids)
    report = seqatlas.compact(path)
    assert report["tables"]["tokens"]["parts_after"] == 1
    (record,) = AtlasReader(path).manifest.table_parts("tokens").values()
    assert len(record.covered_units()) == 6  # 4 indexed units and 2 new ones in one part
    index = load_index(path)
    assert index.pending_rows == 50 and len(index.pending.parts) == 1
    pending = sorted(i for ids, _ in index.pending.batches(7) for i in ids)
    assert pending == pending_before == new.tolist()
    assert index.search(_stored(path, int(new[20])), 1)[1][0, 0] == new[20]
    assert update_index(path)["added"] == 50
    assert load_index(path).pending_rows == 0


# --- a real ingest ---------------------------------------------------------------------


def test_a_second_ingest_is_searched_then_folded_in(tmp_path, capsys):
    from tests.conftest import write_fasta
    from tests.dna_models import make_overlapping

    model = make_overlapping(tmp_path / "model", k=3)
    atlas = tmp_path / "atlas"
    options = {"model": str(model), "likelihood": "unmasked", "workers": 0,
               "progress": False}
    seqatlas.ingest(write_fasta(tmp_path / "x.fa", {"x": random_dna(60, 5)}), atlas=atlas,
                    **options)
    build_index(atlas, type="flat", metric="ip")
    seqatlas.ingest(write_fasta(tmp_path / "y.fa", {"y": random_dna(40, 6)}), atlas=atlas,
                    **options)
    index = load_index(atlas)
    assert (index.ntotal, index.pending_rows) == (58, 38)  # 3-mers of 60 and 40 bases
    capsys.readouterr()
    hits = knn(atlas, at=["x:3", "y:30"], k=4)
    assert hits.schema.metadata[b"pending_rows"] == b"38"
    assert "38 token rows added" in hits.schema.metadata[b"note"].decode()
    assert {"x", "y"} <= set(hits["seq_id"].to_pylist())
    assert update_index(atlas)["added"] == 38
    after = knn(atlas, at=["x:3", "y:30"], k=4)
    assert after.schema.metadata[b"pending_rows"] == b"0"
    assert after["token_id"].to_pylist() == hits["token_id"].to_pylist()
    np.testing.assert_allclose(after["distance"].to_numpy(), hits["distance"].to_numpy(),
                               rtol=1e-5)
    assert capsys.readouterr().err == ""


# --- a remote atlas --------------------------------------------------------------------


def test_a_remote_index_grows_like_a_local_one(tmp_path):
    pytest.importorskip("fsspec", reason="memory:// goes through fsspec")
    from seqatlas.locations import remote_location

    uri = f"memory://seqatlas-grow-{tmp_path.name}/atlas"
    make_token_atlas(uri, SEQS, _embed, dim=DIM)
    build = build_index(uri, type="flat")["dir"]
    assert {"index.faiss", "meta.json", "units.json", "ids.npy"} <= \
        set(remote_location(uri).listdir("index", "default", build))
    new = add_sequence(uri, "c", random_dna(30, 3))
    index = load_index(uri)
    assert (index.ntotal, index.pending_rows) == (210, 30)
    vector = AtlasReader(uri).tokens().filter(pa.compute.equal(
        AtlasReader(uri).tokens()["token_id"], int(new[4])))["embedding"][0].as_py()
    assert index.search(np.array(vector, np.float32), 1)[1][0, 0] == new[4]
    assert update_index(uri)["added"] == 30
    index = load_index(uri)
    assert (index.ntotal, index.pending_rows) == (240, 0)
