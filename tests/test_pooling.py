"""Pooled embeddings (seqatlas.scoring.pooling): per sequence and per bin, at ingest and with
`seqatlas pool`, equal to numpy over the stored token embeddings."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import seqatlas
from seqatlas.cli.main import main
from seqatlas.errors import ConfigError
from seqatlas.store import AtlasReader
from seqatlas.scoring.pooling import bins_of, split_bins

from conftest import make_esm, random_protein, write_fasta
from dna_models import make_bpe, make_nonoverlapping, make_overlapping, make_single
from embedding_data import random_dna

TOLERANCE = 1e-3  # float16 storage: ~5e-4 relative rounding, so 1e-3 absolute and relative


def _vectors(column) -> np.ndarray:
    return np.stack([np.asarray(v, np.float32) for v in column.to_pylist()])


def _check_against_tokens(atlas: Path) -> dict:
    """Every pooled mean row equals the numpy mean of the stored embeddings of the tokens
    starting in it; every bin holding a token has exactly one row per layer. Returns facts
    about the bins for further checks."""
    reader = AtlasReader(atlas)
    pooling = reader.manifest.pooling
    columns = reader.manifest.scoring.embedding_columns()
    tokens = reader.tokens().sort_by("token_id")
    pooled = reader.pooled()
    lengths = dict(zip(*(reader.sequences().column(c).to_pylist() for c in ("seq_id", "length"))))
    seq = np.asarray(tokens.column("seq_id").to_pylist(), dtype=object)
    start = tokens.column("start").to_numpy()
    size = pooling["bin"]
    bin_start = start - start % size if size else np.zeros_like(start)
    expected = {(s, int(b)) for s, b in zip(seq, bin_start)}
    rows = pooled.to_pylist()
    means = [r for r in rows if r["pooling"] == "mean"]
    assert len(means) == len(expected) * len(pooling["layers"])
    assert len({(r["seq_id"], r["start"], r["layer"]) for r in means}) == len(means)
    for layer in pooling["layers"]:
        x = _vectors(tokens.column(columns[layer]))
        for r in (r for r in means if r["layer"] == layer):
            chosen = (seq == r["seq_id"]) & (bin_start == r["start"])
            assert r["tokens"] == int(chosen.sum())
            assert r["end"] == (min(r["start"] + size, lengths[r["seq_id"]]) if size
                                else lengths[r["seq_id"]])
            assert r["level"] == ("bin" if size else "sequence")
            np.testing.assert_allclose(np.asarray(r["vector"], np.float32),
                                       x[chosen].mean(axis=0), rtol=TOLERANCE, atol=TOLERANCE)
    return {"rows": rows, "tokens": tokens, "lengths": lengths}


def _cut_bins(atlas: Path, size: int) -> tuple[int, int]:
    """(bins whose positions were scored by more than one window, bins split between two
    committed units): both must occur for the test to mean anything."""
    reader = AtlasReader(atlas)
    positions = reader.positions(["seq_id", "pos", "window_start"]).to_pylist()
    windows: dict[tuple, set] = {}
    for p in positions:
        key = (p["seq_id"], p["pos"] - p["pos"] % size if size else 0)
        windows.setdefault(key, set()).add(p["window_start"])
    by_window = sum(len(w) > 1 for w in windows.values())
    owned = []
    for name, part in reader.manifest.table_parts("positions").items():
        table = reader.open_part(atlas / "positions" / name).read(["seq_id", "pos"])
        ranges: dict[str, list] = {}
        for s, p in zip(table.column("seq_id").to_pylist(), table.column("pos").to_pylist()):
            ranges.setdefault(s, []).append((p, p + 1))
        owned.append(ranges)
    lengths = dict(zip(*(reader.sequences().column(c).to_pylist() for c in ("seq_id", "length"))))
    by_unit = sum(len(b) for b in split_bins(owned, lengths, size).values())
    return by_window, by_unit


FAMILIES = {
    "overlapping-3mer": (make_overlapping, {"context_tokens": 24}, 20),
    "nonoverlapping-3mer": (make_nonoverlapping, {"context_tokens": 16}, 30),
    "single": (make_single, {"context_tokens": 20}, 16),
    "bpe": (make_bpe, {"context_tokens": 32}, 24),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_bins_equal_numpy_over_stored_tokens_for_every_dna_tokenizer(tmp_path, family):
    make, extra, window = FAMILIES[family]
    model = make(tmp_path / "model", **extra)
    records = {f"c{i}": random_dna(260 + 97 * i, i) for i in range(3)}
    records["c1"] = records["c1"][:120] + "N" * 90 + records["c1"][210:]  # a skipped N run
    write_fasta(tmp_path / "d.fa", records)
    seqatlas.ingest(tmp_path / "d.fa", atlas=tmp_path / "a", model=str(model), workers=0,
                    likelihood="unmasked", window=window, overlap=6, unit_tokens=90,
                    pool_bin=40, skip_n_runs=50, progress="none")
    reader = AtlasReader(tmp_path / "a")
    assert reader.manifest.pooling == {"bin": 40, "level": "bin", "poolings": ["mean"],
                                       "layers": reader.manifest.scoring.stored_layers()}
    facts = _check_against_tokens(tmp_path / "a")
    by_window, by_unit = _cut_bins(tmp_path / "a", 40)
    assert by_window > 0 and by_unit > 0
    # the N run's bin [160, 200) of c1 was not scored and holds no token: no row
    unscored = AtlasReader(tmp_path / "a").positions(["seq_id", "pos", "window_start"])
    assert all(r["window_start"] is None for r in unscored.to_pylist()
               if r["seq_id"] == "c1" and 160 <= r["pos"] < 200)
    assert not any(r["seq_id"] == "c1" and r["start"] == 160 for r in facts["rows"])
    assert all(r["pooling"] == "mean" for r in facts["rows"])  # bins: no bos


def test_whole_proteins_longer_than_the_context_with_bos(tmp_path):
    model = make_esm(tmp_path / "esm", context_tokens=34, layers=2)
    records = {f"p{i}": random_protein(15 + 29 * i, i) for i in range(5)}  # up to 131 > 34
    write_fasta(tmp_path / "p.fa", records)
    seqatlas.ingest(tmp_path / "p.fa", atlas=tmp_path / "a", model=str(model), workers=0,
                    likelihood="unmasked", unit_tokens=70, layer=[0, 2], progress="none")
    reader = AtlasReader(tmp_path / "a")
    assert reader.manifest.pooling["poolings"] == ["mean", "bos"]
    assert reader.manifest.pooling["bin"] == 0
    facts = _check_against_tokens(tmp_path / "a")
    assert _cut_bins(tmp_path / "a", 0)[1] > 0  # a protein split between units
    offsets = dict(zip(*(reader.sequences().column(c).to_pylist()
                         for c in ("seq_id", "token_offset"))))
    bos = [r for r in facts["rows"] if r["pooling"] == "bos"]
    assert sorted((r["seq_id"], r["layer"]) for r in bos) == \
        sorted((s, layer) for s in records for layer in (0, 2))
    for r in bos:
        assert (r["start"], r["end"], r["tokens"]) == (0, len(records[r["seq_id"]]), 1)
        assert r["pool_id"] == offsets[r["seq_id"]]
    # layer 0 of this model is its token embedding table: the BOS row is the <cls> vector
    import torch
    from transformers import EsmForMaskedLM

    table = EsmForMaskedLM.from_pretrained(model).esm.embeddings.word_embeddings.weight
    cls = table[0].detach().to(torch.float16).float().numpy()
    for r in (r for r in bos if r["layer"] == 0):
        np.testing.assert_allclose(np.asarray(r["vector"], np.float32), cls, rtol=TOLERANCE,
                                   atol=TOLERANCE)


def test_bin_cut_by_a_window_differs_only_by_the_models_context_effect(tmp_path):
    """Layer 0 of a rotary ESM has no context effect: a bin cut by windows equals the bin
    scored inside one window. At the last layer the two differ exactly by the mean of the
    tokens' own differences, nothing else (no token missed or counted twice)."""
    model = make_esm(tmp_path / "esm", context_tokens=34, layers=2)
    write_fasta(tmp_path / "p.fa", {"p": random_protein(90, 3)})
    pooled = {}
    for window in (12, 32):
        atlas = tmp_path / f"w{window}"
        seqatlas.ingest(tmp_path / "p.fa", atlas=atlas, model=str(model), workers=0,
                        likelihood="unmasked", window=window, overlap=4, layer=[0, 2],
                        pool_bin=10, progress="none")
        reader = AtlasReader(atlas)
        table = reader.pooled().sort_by([("layer", "ascending"), ("start", "ascending")])
        tokens = reader.tokens().sort_by("token_id")
        pooled[window] = (table, tokens)
    (a, ta), (b, tb) = pooled[12], pooled[32]
    assert a.column("start").to_pylist() == b.column("start").to_pylist()
    layer = np.asarray(a.column("layer").to_pylist())
    va, vb = _vectors(a.column("vector")), _vectors(b.column("vector"))
    np.testing.assert_allclose(va[layer == 0], vb[layer == 0], rtol=TOLERANCE, atol=TOLERANCE)
    assert np.abs(va[layer == 2] - vb[layer == 2]).max() > 10 * TOLERANCE  # context matters
    token_diff = _vectors(ta.column("embedding_layer_2")) - _vectors(tb.column("embedding_layer_2"))
    starts = ta.column("start").to_numpy()
    for j, s in enumerate(a.filter(np.asarray(a.column("layer")) == 2).column("start").to_pylist()):
        want = token_diff[(starts >= s) & (starts < s + 10)].mean(axis=0)
        np.testing.assert_allclose(va[layer == 2][j] - vb[layer == 2][j], want, atol=3 * TOLERANCE)


def test_pooled_vectors_do_not_depend_on_the_batch(tmp_path):
    model = make_esm(tmp_path / "esm", context_tokens=34, layers=2)
    others = {f"o{i}": random_protein(20 + 7 * i, 40 + i) for i in range(6)}
    target = random_protein(50, 99)
    write_fasta(tmp_path / "alone.fa", {"t": target})
    write_fasta(tmp_path / "batch.fa", {**dict(list(others.items())[:3]), "t": target,
                                        **dict(list(others.items())[3:])})
    vectors = []
    for name in ("alone", "batch"):
        seqatlas.ingest(tmp_path / f"{name}.fa", atlas=tmp_path / name, model=str(model),
                        workers=0, likelihood="none", progress="none")
        table = AtlasReader(tmp_path / name).pooled().to_pylist()
        vectors.append({(r["pooling"]): np.asarray(r["vector"], np.float32)
                        for r in table if r["seq_id"] == "t"})
    for pooling in ("mean", "bos"):
        np.testing.assert_allclose(vectors[0][pooling], vectors[1][pooling], rtol=TOLERANCE,
                                   atol=TOLERANCE)


def _tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_pool_command_equals_ingest_time_pooling(tmp_path, capsys):
    model = make_overlapping(tmp_path / "model", k=3, context_tokens=24)
    write_fasta(tmp_path / "d.fa", {f"c{i}": random_dna(300 + 50 * i, 10 + i) for i in range(3)})
    common = dict(model=str(model), workers=0, likelihood="unmasked", window=20, overlap=6,
                  unit_tokens=90, progress="none")
    seqatlas.ingest(tmp_path / "d.fa", atlas=tmp_path / "ingested", pool_bin=64, **common)
    seqatlas.ingest(tmp_path / "d.fa", atlas=tmp_path / "api", pool=False, **common)
    seqatlas.ingest(tmp_path / "d.fa", atlas=tmp_path / "cli", pool=False, **common)
    assert AtlasReader(tmp_path / "api").manifest.pooling is None
    assert AtlasReader(tmp_path / "api").count("pooled") == 0
    report = seqatlas.pool(tmp_path / "api", bin=64)
    assert main(["pool", "--atlas", str(tmp_path / "cli"), "--bin", "64", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["rows_added"] == report["rows_added"] == report["rows"] > 0

    def rows(atlas):
        table = AtlasReader(atlas).pooled().sort_by([("layer", "ascending"),
                                                     ("pool_id", "ascending")])
        return table.drop_columns(["vector"]).to_pylist(), _vectors(table.column("vector"))

    want_rows, want = rows(tmp_path / "ingested")
    for atlas in ("api", "cli"):
        got_rows, got = rows(tmp_path / atlas)
        assert got_rows == want_rows
        np.testing.assert_allclose(got, want, rtol=TOLERANCE, atol=TOLERANCE)
    assert AtlasReader(tmp_path / "api").manifest.pooling == \
        AtlasReader(tmp_path / "ingested").manifest.pooling
    # pooling again adds nothing and commits nothing
    version = AtlasReader(tmp_path / "api").version
    assert seqatlas.pool(tmp_path / "api")["rows_added"] == 0
    assert AtlasReader(tmp_path / "api").version == version
    # another binning is refused, unless the table is replaced
    with pytest.raises(ConfigError, match="--replace"):
        seqatlas.pool(tmp_path / "api", bin=100)
    replaced = seqatlas.pool(tmp_path / "api", bin=100, replace=True)
    assert replaced["bin"] == 100 and replaced["rows"] == replaced["rows_added"]
    starts = AtlasReader(tmp_path / "api").pooled(["start"]).column("start").to_pylist()
    assert {s % 100 for s in starts} == {0}
    _check_against_tokens(tmp_path / "api")
    # SQL sees the table
    assert main(["query", "sql", "--atlas", str(tmp_path / "ingested"), "--format", "json",
                 "SELECT level, count(*) AS n FROM pooled GROUP BY level"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer == [{"level": "bin", "n": len(want_rows)}]


def test_a_rerun_pools_nothing_again_and_extensions_pool_the_same_way(tmp_path):
    model = make_overlapping(tmp_path / "model", k=3, context_tokens=24)
    write_fasta(tmp_path / "a.fa", {"c0": random_dna(300, 1)})
    write_fasta(tmp_path / "b.fa", {"c1": random_dna(250, 2)})
    common = dict(model=str(model), workers=0, likelihood="unmasked", window=20, overlap=6,
                  unit_tokens=90, progress="none")
    seqatlas.ingest(tmp_path / "a.fa", atlas=tmp_path / "a", pool_bin=64, **common)
    version = AtlasReader(tmp_path / "a").version
    seqatlas.ingest(tmp_path / "a.fa", atlas=tmp_path / "a", **common)
    assert AtlasReader(tmp_path / "a").version == version
    with pytest.raises(ConfigError, match="pool-bin"):
        seqatlas.ingest(tmp_path / "b.fa", atlas=tmp_path / "a", pool_bin=100, **common)
    with pytest.raises(ConfigError, match="no-pool"):
        seqatlas.ingest(tmp_path / "b.fa", atlas=tmp_path / "a", pool=False, **common)
    seqatlas.ingest(tmp_path / "b.fa", atlas=tmp_path / "a", **common)  # recorded bin 64
    facts = _check_against_tokens(tmp_path / "a")
    assert {r["seq_id"] for r in facts["rows"]} == {"c0", "c1"}
    assert max(r["end"] - r["start"] for r in facts["rows"]) == 64


def test_bad_pooling_options_are_refused_before_anything_is_written(tmp_path, capsys):
    model = make_overlapping(tmp_path / "model", k=3, context_tokens=24)
    write_fasta(tmp_path / "a.fa", {"c0": random_dna(120, 1)})
    fasta = str(tmp_path / "a.fa")
    for args, message in (
            (["--pool-bin", "-5"], "--pool-bin must be"),
            (["--pool-bin", "100", "--no-pool"], "give one of them"),
            (["--pool-bin", "100", "--embeddings", "none"], "--embeddings none"),
    ):
        atlas = tmp_path / f"bad{len(args)}{message[:4]}"
        code = main(["ingest", fasta, "--atlas", str(atlas), "--model", str(model),
                     "--workers", "0", "--no-progress", *args])
        err = capsys.readouterr().err
        assert code == 1 and message in err and "Traceback" not in err
        assert not atlas.exists()
    # an atlas ingested without pooling: pooling an extension is refused with the way out
    seqatlas.ingest(fasta, atlas=tmp_path / "plain", model=str(model), workers=0, pool=False,
                    likelihood="unmasked", progress="none")
    before = _tree_hashes(tmp_path / "plain")
    write_fasta(tmp_path / "b.fa", {"c1": random_dna(100, 2)})
    code = main(["ingest", str(tmp_path / "b.fa"), "--atlas", str(tmp_path / "plain"),
                 "--pool-bin", "50", "--workers", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "seqatlas pool --atlas" in err
    assert _tree_hashes(tmp_path / "plain").keys() == before.keys()
    # nothing to pool without embeddings
    seqatlas.ingest(fasta, atlas=tmp_path / "noemb", model=str(model), workers=0,
                    embeddings=False, likelihood="unmasked", progress="none")
    assert AtlasReader(tmp_path / "noemb").manifest.pooling is None
    assert main(["pool", "--atlas", str(tmp_path / "noemb")]) == 1
    assert "stores no token embeddings" in capsys.readouterr().err
    assert main(["pool", "--atlas", str(tmp_path / "plain"), "--bin", "-1"]) == 1
    assert "--bin must be" in capsys.readouterr().err


def test_split_bins_finds_exactly_the_bins_no_unit_owns_whole():
    lengths = {"a": 100, "b": 30}
    units = [{"a": [(0, 25), (25, 45)]}, {"a": [(45, 100)], "b": [(0, 30)]}]
    assert split_bins(units, lengths, 20) == {"a": [(40, 60)]}
    assert split_bins(units, lengths, 0) == {"a": [(0, 100)]}
    assert split_bins(units, lengths, 5) == {}  # 45 is a bin edge
    assert bins_of(45, 20) == [(0, 20), (20, 40), (40, 45)]
    assert bins_of(45, 0) == [(0, 45)]
