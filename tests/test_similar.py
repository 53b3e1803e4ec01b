"""`seqatlas query similar`: sequence (and bin) search over pooled embeddings, exact and
filtered, joined to sequences, repeats and anomalies; bad queries refused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import seqatlas
from seqatlas.cli.main import main
from seqatlas.errors import ConfigError
from seqatlas.index.store import index_dir
from seqatlas.query import similar
from seqatlas.store import AtlasReader

from conftest import make_esm, random_protein, write_fasta
from dna_models import make_overlapping
from embedding_data import random_dna


@pytest.fixture(scope="module")
def proteins(tmp_path_factory):
    """A protein atlas of 14 sequences in two families ('kappa' share a motif), pooled per
    sequence (mean and bos)."""
    root = tmp_path_factory.mktemp("similar")
    model = make_esm(root / "esm", context_tokens=34, layers=2)
    motif = random_protein(25, 1000)
    records = {}
    for i in range(14):
        family = "kappa" if i % 2 == 0 else "lambda"
        body = random_protein(18 + 5 * i, i)
        seq = motif + body if family == "kappa" else body + random_protein(10, 500 + i)
        records[f"p{i} family={family} n={i}"] = seq
    write_fasta(root / "p.fa", records)
    seqatlas.ingest(root / "p.fa", atlas=root / "atlas", model=str(model), workers=0,
                    likelihood="unmasked", layer=[1, 2], progress="none")
    residues = {name.split()[0]: seq for name, seq in records.items()}
    return root / "atlas", residues


def _pooled(atlas: Path, layer: int, pooling: str = "mean"):
    table = AtlasReader(atlas).pooled().to_pylist()
    rows = [r for r in table if r["layer"] == layer and r["pooling"] == pooling]
    rows.sort(key=lambda r: r["pool_id"])
    x = np.stack([np.asarray(r["vector"], np.float32) for r in rows])
    return rows, x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute(rows, x, query: np.ndarray, k: int, keep=lambda r: True, exclude=None):
    q = query / np.linalg.norm(query)
    scores = x @ q
    order = [j for j in np.argsort(-scores, kind="stable")
             if keep(rows[j]) and rows[j]["pool_id"] != exclude]
    return [(rows[j]["seq_id"], float(scores[j])) for j in order[:k]]


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_exhaustive_search_equals_brute_force(proteins):
    atlas, _ = proteins
    for layer in (1, 2):
        rows, x = _pooled(atlas, layer)
        for query in ("p0", "p5", "p13"):
            j = next(i for i, r in enumerate(rows) if r["seq_id"] == query)
            want = _brute(rows, x, x[j], 5, exclude=rows[j]["pool_id"])
            got = similar(atlas, seq_id=query, k=5, layer=layer)
            assert got.column("seq_id").to_pylist() == [s for s, _ in want]
            np.testing.assert_allclose(got.column("distance").to_numpy(),
                                       [d for _, d in want], atol=1e-5)
            assert got.column("rank").to_pylist() == [1, 2, 3, 4, 5]
            assert set(got.column("query").to_pylist()) == {query}
    # bos vectors are searchable too, and differ from the means
    rows, x = _pooled(atlas, 2, "bos")
    got = similar(atlas, seq_id="p3", k=3, layer=2, pooling="bos")
    j = next(i for i, r in enumerate(rows) if r["seq_id"] == "p3")
    assert got.column("seq_id").to_pylist() == \
        [s for s, _ in _brute(rows, x, x[j], 3, exclude=rows[j]["pool_id"])]


@pytest.mark.parametrize("predicate,keep", [
    ("length < 60", lambda r, n: n[r["seq_id"]] < 60),
    ("description LIKE '%family=kappa%'", lambda r, n: int(r["seq_id"][1:]) % 2 == 0),
    ("seq_id IN ('p1', 'p4', 'p9', 'p12')", lambda r, n: r["seq_id"] in ("p1", "p4", "p9", "p12")),
    ("length > 10000", lambda r, n: False),
])
def test_filtered_search_is_exactly_the_filtered_brute_force_top_k(proteins, predicate, keep):
    atlas, residues = proteins
    lengths = {s: len(v) for s, v in residues.items()}
    rows, x = _pooled(atlas, 1)
    for query in ("p2", "p7"):
        j = next(i for i, r in enumerate(rows) if r["seq_id"] == query)
        want = _brute(rows, x, x[j], 4, keep=lambda r: keep(r, lengths),
                      exclude=rows[j]["pool_id"])
        got = similar(atlas, seq_id=query, k=4, where=predicate)
        assert got.column("seq_id").to_pylist() == [s for s, _ in want]
        np.testing.assert_allclose(got.column("distance").to_numpy(), [d for _, d in want],
                                   atol=1e-5)
        assert "passing --where" in got.schema.metadata[b"search"].decode()


def test_new_residues_are_embedded_as_the_atlas_was(proteins, tmp_path):
    atlas, residues = proteins
    # residues identical to a stored sequence get its stored vector: itself first
    got = similar(atlas, sequence=residues["p6"].lower(), k=2)
    assert got.column("seq_id").to_pylist()[0] == "p6"
    assert got.column("distance").to_pylist()[0] > 0.999
    # the join: length and description of the hit
    first = got.to_pylist()[0]
    assert first["length"] == len(residues["p6"]) and "family=kappa" in first["description"]
    assert first["tokens"] == len(residues["p6"])
    # a FASTA file: each record a query, labelled by its id
    write_fasta(tmp_path / "q.fa", {"qa": residues["p9"], "qb": residues["p4"][:30] + "AC"})
    got = similar(atlas, fasta=tmp_path / "q.fa", k=1)
    assert got.column("query").to_pylist() == ["qa", "qb"]
    assert got.column("seq_id").to_pylist()[0] == "p9"
    # the CLI gives the API's rows
    code = main(["query", "similar", "--atlas", str(atlas), "--fasta", str(tmp_path / "q.fa"),
                 "-k", "1", "--format", "json", "--output", str(tmp_path / "out.json")])
    assert code == 0
    printed = json.loads((tmp_path / "out.json").read_text())
    assert [r["seq_id"] for r in printed] == got.column("seq_id").to_pylist()
    np.testing.assert_allclose([r["distance"] for r in printed],
                               got.column("distance").to_numpy(), atol=1e-6)


def test_bad_queries_are_refused_clearly_and_nothing_is_written(proteins, capsys):
    atlas, _ = proteins
    before = _tree(atlas)
    cases = [
        (["--seq-id", "nope"], "no sequence 'nope'"),
        (["--sequence", "   "], "--sequence is empty"),
        (["--sequence", "MKV*J1"], "letters a protein atlas does not hold (*1)"),
        (["--seq-id", "p1", "-k", "0"], "-k must be a positive"),
        (["--seq-id", "p1", "--sequence", "MKV"], "one kind of query"),
        (["--seq-id", "p1", "--layer", "0"], "layer"),
        (["--seq-id", "p1", "--where", "1=1; SELECT 1"], "--where"),
        (["--seq-id", "p1", "--where", "no_such_column > 1"], "no_such_column"),
        (["--seq-id", "p1", "--index", "default"], "no index named 'default'"),
    ]
    for args, message in cases:
        code = main(["query", "similar", "--atlas", str(atlas), *args])
        err = capsys.readouterr().err
        assert code == 1, args
        assert message in err and "Traceback" not in err, (args, err)
    assert main(["query", "similar", "--atlas", str(atlas), "--seq-id", "p1", "-k", "3",
                 "--where", "length > 30"]) == 0
    capsys.readouterr()
    # a choice outside the enum is a usage error (exit 2), named by the option
    assert main(["query", "similar", "--atlas", str(atlas), "--seq-id", "p1", "--pooling",
                 "max"]) == 2
    assert "--pooling" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--pooling must be one of"):
        similar(atlas, seq_id="p1", pooling="max")
    assert _tree(atlas) == before  # readers never write
    with pytest.raises(ConfigError, match="one kind of query"):
        similar(atlas, k=3)


def test_an_atlas_without_pooled_rows_says_how_to_make_them(tmp_path, capsys):
    model = make_esm(tmp_path / "esm", context_tokens=34, layers=2)
    write_fasta(tmp_path / "p.fa", {f"p{i}": random_protein(20 + i, i) for i in range(4)})
    seqatlas.ingest(tmp_path / "p.fa", atlas=tmp_path / "a", model=str(model), workers=0,
                    likelihood="none", pool=False, progress="none")
    assert main(["query", "similar", "--atlas", str(tmp_path / "a"), "--seq-id", "p1"]) == 1
    assert "seqatlas pool --atlas" in capsys.readouterr().err
    seqatlas.pool(tmp_path / "a")
    assert similar(tmp_path / "a", seq_id="p1", k=3).num_rows == 3


def test_bins_join_repeats_and_anomaly_counts(tmp_path):
    model = make_overlapping(tmp_path / "model", k=3, context_tokens=24)
    repeat = random_dna(60, 77)
    records = {f"c{i}": random_dna(150, i) + repeat + random_dna(190, 10 + i) for i in range(3)}
    write_fasta(tmp_path / "d.fa", records)
    seqatlas.ingest(tmp_path / "d.fa", atlas=tmp_path / "a", model=str(model), workers=0,
                    likelihood="unmasked", window=20, overlap=6, pool_bin=50, progress="none")
    (tmp_path / "r.bed").write_text("".join(f"c{i}\t150\t210\tR{i}\t0\t+\n" for i in range(3)))
    seqatlas.annotate(tmp_path / "r.bed", atlas=tmp_path / "a")
    got = similar(tmp_path / "a", seq_id="c0:140-160", k=4)
    assert sorted(set(got.column("query").to_pylist())) == ["c0:100-150", "c0:150-200"]
    for row in got.to_pylist():
        inside = max(0, min(row["end"], 210) - max(row["start"], 150))
        assert row["repeat_fraction"] == pytest.approx(inside / (row["end"] - row["start"]))
        assert row["repeat_class"] is None  # BED repeats have names, no class
        count = seqatlas.query.sql(
            tmp_path / "a", "SELECT count(*) AS n, avg(score) AS m FROM position_z WHERE "
            f"seq_id = '{row['seq_id']}' AND pos >= {row['start']} AND pos < {row['end']} "
            "AND tail IS NOT NULL").to_pylist()[0]
        assert row["n_anomalous"] == count["n"]
        mean = seqatlas.query.sql(
            tmp_path / "a", "SELECT avg(logp_unmasked) AS m FROM positions WHERE "
            f"seq_id = '{row['seq_id']}' AND pos >= {row['start']} AND pos < {row['end']}"
        ).to_pylist()[0]["m"]
        assert row["logp"] == pytest.approx(mean, abs=1e-5)
    # a protein in a DNA atlas is refused; N (as the ingest accepts it) is not
    with pytest.raises(ConfigError, match="letters a dna atlas does not hold .*give a dna"):
        similar(tmp_path / "a", sequence="MKVLEEFPQ", k=1)
    with_n = records["c1"][:60] + "NNNN" + records["c1"][64:100]
    found = similar(tmp_path / "a", sequence=with_n, k=1)  # one query per 50-base bin
    assert [(h["seq_id"], h["start"]) for h in found.to_pylist()] == [("c1", 0), ("c1", 50)]
    # the query bins themselves are left out of their own hits
    for query, hit_start, hit_seq in zip(*(got.column(c).to_pylist()
                                           for c in ("query", "start", "seq_id"))):
        assert not (hit_seq == "c0" and query == f"c0:{hit_start}-{hit_start + 50}")


def test_a_pooled_index_gives_the_exhaustive_hits_grows_and_refuses_other_weights(
        tmp_path, capsys):
    from seqatlas.index import update_index

    model = make_esm(tmp_path / "esm", context_tokens=34, layers=2)
    write_fasta(tmp_path / "a.fa", {f"p{i}": random_protein(20 + 3 * i, i) for i in range(8)})
    write_fasta(tmp_path / "b.fa", {f"q{i}": random_protein(25 + 4 * i, 50 + i)
                                    for i in range(3)})
    atlas = tmp_path / "atlas"
    common = dict(model=str(model), workers=0, likelihood="none", progress="none")
    seqatlas.ingest(tmp_path / "a.fa", atlas=atlas, **common)
    seqatlas.build_index(atlas, name="seqs", level="pooled", type="flat")
    seqatlas.build_index(atlas, name="tok", type="flat")

    def same(a, b):
        assert a.column("seq_id").to_pylist() == b.column("seq_id").to_pylist()
        np.testing.assert_allclose(a.column("distance").to_numpy(),
                                   b.column("distance").to_numpy(), atol=1e-5)

    same(similar(atlas, seq_id=["p1", "p4"], k=4, index="seqs"),
         similar(atlas, seq_id=["p1", "p4"], k=4))
    # an ingest adds sequences: they are searched beside the index, and said so
    seqatlas.ingest(tmp_path / "b.fa", atlas=atlas, **common)
    grown = similar(atlas, seq_id="q1", k=5, index="seqs")
    assert grown.schema.metadata[b"pending_rows"] == b"3"
    same(grown, similar(atlas, seq_id="q1", k=5))
    assert main(["query", "similar", "--atlas", str(atlas), "--seq-id", "q1", "--index",
                 "seqs", "--format", "tsv"]) == 0
    assert "3 pooled rows added since index 'seqs' was built" in capsys.readouterr().err
    update_index(atlas, name="seqs")
    folded = similar(atlas, seq_id="q1", k=5, index="seqs")
    assert folded.schema.metadata[b"pending_rows"] == b"0"
    same(folded, grown)
    with pytest.raises(seqatlas.SeqAtlasError, match="indexes tokens"):
        similar(atlas, seq_id="q1", index="tok")
    meta_path = index_dir(AtlasReader(atlas), "seqs") / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["model"]["weights_sha256"] = "1" * 64
    meta_path.write_text(json.dumps(meta))
    assert main(["query", "similar", "--atlas", str(atlas), "--seq-id", "q1", "--index",
                 "seqs"]) == 1
    err = capsys.readouterr().err
    assert "built from another atlas" in err and "seqatlas index build" in err
