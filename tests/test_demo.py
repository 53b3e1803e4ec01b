"""``seqatlas demo``: the whole job on the embedded models and the bundled data.

The full demo runs once for this module (slow: real AntiBERTy and dnabert6-tiny, about a
minute and a half on 2 cores); each test checks what one stage left behind against what the
atlas itself holds. The bundled tantan output is checked against tantan itself (fast).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import seqatlas
from seqatlas import examples, schema
from seqatlas.atlas import Atlas
from seqatlas.cli.info_cmd import print_demo
from seqatlas.fasta import read_fasta
from seqatlas.index.store import list_indexes
from seqatlas.repeats.formats import detect_format, read_repeats
from seqatlas.util import format_size

STAGES = ["ingest proteins", "ingest dna", "repeats", "probe icl", "anomalies", "enrichment",
          "index", "knn", "identity", "probe doubling", "report"]
INTERVAL = ("seq_id", "start", "end", "strand", "name", "class", "family", "score")
needs_tantan = pytest.mark.skipif(shutil.which("tantan") is None,
                                  reason="tantan is not installed (Debian package tantan)")


def _intervals(rows) -> list[tuple]:
    return sorted(tuple(r[k] for k in INTERVAL) for r in rows)


# -- the bundled tantan output (fast) ---------------------------------------------------

def test_bundled_tantan_output_parses_to_tandem_repeats_of_the_demo_dna():
    path = examples.demo_tantan()
    assert detect_format(path) == "tantan-f4"
    (dna,) = read_fasta(examples.demo_dna(), kind="dna")
    rows = read_repeats(path).to_pylist()
    assert len(rows) == 18
    assert {r["seq_id"] for r in rows} == {dna.id}
    assert all(0 <= r["start"] < r["end"] <= dna.length for r in rows)
    assert {r["class"] for r in rows} == {"Tandem_repeat"}


@needs_tantan
def test_bundled_tantan_output_is_what_tantan_gives_on_the_bundled_dna(tmp_path):
    """`tantan -f4` (the arguments `annotate --run tantan` uses for DNA) on the bundled
    FASTA, and on the uppercase copy seqatlas writes for a run, gives the bundled file."""
    direct = subprocess.run(["tantan", "-f4", str(examples.demo_dna())], capture_output=True,
                            text=True, check=True).stdout
    bundled = examples.demo_tantan().read_text()
    assert direct == bundled
    (dna,) = read_fasta(examples.demo_dna(), kind="dna")
    upper = tmp_path / "upper.fa"
    upper.write_text(f">{dna.id}\n{dna.sequence.upper().decode()}\n")
    (tmp_path / "live.tantan-f4.tsv").write_text(subprocess.run(
        ["tantan", "-f4", str(upper)], capture_output=True, text=True, check=True).stdout)
    assert _intervals(read_repeats(tmp_path / "live.tantan-f4.tsv").to_pylist()) == \
        _intervals(read_repeats(examples.demo_tantan()).to_pylist())


@pytest.mark.slow
def test_without_tantan_the_demo_imports_the_bundled_output(tmp_path, monkeypatch):
    """The repeats stage with tantan off PATH imports the bundled file; with tantan there,
    a live run gives the same intervals."""
    atlas = tmp_path / "dna"
    seqatlas.ingest(examples.demo_dna(), atlas=atlas, model="dnabert6-tiny",
                    likelihood="unmasked", embeddings=False, workers=0, progress=False)
    live = shutil.which("tantan")
    monkeypatch.setattr(examples.shutil, "which", lambda program: None)
    result = examples._repeats(atlas, progress=False)
    assert result["tandem_source"] == "bundled"
    assert result["tandem_file"] == str(examples.demo_tantan())
    imported = Atlas(atlas).sql("SELECT * FROM repeats WHERE source = 'tantan-f4'").to_pylist()
    assert len(imported) == result["tandem"]["repeats"] == 18
    bundled = _intervals(read_repeats(examples.demo_tantan()).to_pylist())
    assert _intervals(imported) == bundled
    if live is not None:
        monkeypatch.undo()
        seqatlas.annotate(atlas=atlas, run="tantan", progress=False)
        ran = Atlas(atlas).sql("SELECT * FROM repeats WHERE source = 'tantan'").to_pylist()
        assert _intervals(ran) == bundled


# -- the whole demo, run once ------------------------------------------------------------

@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "demo"
    return seqatlas.demo(atlas=root, workers=0, progress=False)


def _finite(*values) -> bool:
    return all(isinstance(v, float) and math.isfinite(v) for v in values)


@pytest.mark.slow
def test_summary_is_strict_json_with_the_seconds_of_every_stage(demo):
    assert json.loads(json.dumps(demo, allow_nan=False)) == demo
    assert list(demo["stages"]) == STAGES
    keys = ["proteins", "dna", "repeats", "probe_icl", "anomalies", "enrichment", "index",
            "knn", "identity", "doubling", "report"]
    for stage, key in zip(STAGES, keys):
        assert demo[key]["seconds"] == demo["stages"][stage] >= 0
    assert sum(demo["stages"].values()) <= demo["seconds"] + 0.1


@pytest.mark.slow
def test_demo_summarises_real_sequences(demo):
    proteins = demo["proteins"]
    rows = {r["seq_id"]: r for r in proteins["sequences"]}
    assert len(rows) == 10 and proteins["info"]["tables"]["positions"]["rows"] == 1237
    antibodies = [r for k, r in rows.items() if k.endswith(("|H", "|L"))]
    repeats = [r for k, r in rows.items() if not k.endswith(("|H", "|L"))]
    assert len(antibodies) == 8 and len(repeats) == 2
    # in-distribution antibody domains vs out-of-distribution repeat proteins
    assert max(r["pseudo_perplexity"] for r in antibodies) < 4
    assert min(r["pseudo_perplexity"] for r in repeats) > 8
    for r in rows.values():
        assert r["pll"] == pytest.approx(r["mean_logp"] * r["scored"], rel=1e-5)
    (dna,) = demo["dna"]["sequences"]
    scoring = demo["dna"]["info"]["scoring"]
    assert dna["scored"] == 3_000
    assert (scoring["likelihood"], scoring["strands"]) == (examples.DNA["likelihood"],
                                                           examples.DNA["strands"])
    # the trained DNA model names the right base well above the 0.25 chance level on
    # held-out human DNA
    assert dna["top1_accuracy"] > 0.3
    assert -3 < dna["mean_logp"] < 0


@pytest.mark.slow
def test_ingest_leaves_positions_and_tokens_with_embeddings(demo):
    for name, fasta, kind, dim in (("proteins", examples.demo_fasta(), "protein", 512),
                                   ("dna", examples.demo_dna(), "dna", 128)):
        atlas = Atlas(demo[name]["atlas"])
        lengths = {r.id: r.length for r in read_fasta(fasta, kind=kind)}
        positions = atlas.positions(columns=["seq_id", "logp"])
        assert positions.num_rows == sum(lengths.values())
        assert positions["logp"].null_count == 0
        tokens = atlas.tokens(columns=["token_id", "embedding"])
        assert tokens.num_rows > 0 and tokens["embedding"].null_count == 0
        assert len(tokens["embedding"][0]) == dim
        tables = demo[name]["info"]["tables"]
        assert tables["positions"]["rows"] == positions.num_rows
        assert tables["tokens"]["rows"] == tokens.num_rows
        assert demo[name]["report"]["positions_scored"] == positions.num_rows
        scoring = demo[name]["info"]["scoring"]
        assert scoring["likelihood"] == "fast" and scoring["embeddings"] is True


@pytest.mark.slow
def test_repeats_are_the_copies_and_tantans_tandem_repeats(demo):
    atlas = Atlas(demo["dna"]["atlas"])
    repeats = demo["repeats"]
    rows = atlas.sql("SELECT * FROM repeats").to_pylist()
    assert len(rows) == repeats["rows"] == atlas.summary()["tables"]["repeats"]["rows"]
    copies = [r for r in rows if r["class"] == "in_context_copy"]
    assert copies and len(copies) == repeats["copies"]["repeats"]
    assert {r["source"] for r in copies} == {"seqatlas-copies"}
    assert repeats["tandem_source"] == ("tantan" if shutil.which("tantan") else "bundled")
    source = "tantan" if repeats["tandem_source"] == "tantan" else "tantan-f4"
    tandem = [r for r in rows if r["class"] == "Tandem_repeat"]
    assert {r["source"] for r in tandem} == {source}
    assert len(tandem) == repeats["tandem"]["repeats"] == 18
    # the live run (or the import) gives the bundled file's intervals; only source differs
    assert _intervals(tandem) == _intervals(read_repeats(examples.demo_tantan()).to_pylist())
    assert sum(r["repeats"] for r in repeats["by_class"]) == len(rows)


@pytest.mark.slow
def test_probe_icl_rows_hold_each_gain_beside_its_control(demo):
    atlas = Atlas(demo["dna"]["atlas"])
    icl = demo["probe_icl"]
    rows = atlas.sql("SELECT * FROM ablations").to_pylist()
    assert len(rows) == icl["rows"] == icl["positions_probed"] > 0
    assert icl["targets_probed"] == icl["targets_total"] > 0 and not icl["failed"]
    assert {(r["method"], r["seed"]) for r in rows} == {("mask", 0)}
    # every position with an in-context copy was probed once, its partner and its control
    # lying elsewhere
    copies = atlas.sql("SELECT pos FROM positions WHERE copy_offset IS NOT NULL")
    assert sorted(r["pos"] for r in rows) == sorted(copies["pos"].to_pylist())
    for r in rows:
        assert r["copy_strand"] in ("+", "-")
        assert r["target_start"] <= r["pos"] < r["target_end"]
        assert r["partner_end"] <= r["target_start"] or r["partner_start"] >= r["target_end"]
        if r["control_start"] is not None:
            for a, b in ((r["target_start"], r["target_end"]),
                         (r["partner_start"], r["partner_end"])):
                assert r["control_end"] <= a or r["control_start"] >= b
    controlled = [r for r in rows if r["logp_control"] is not None]
    assert len(controlled) > len(rows) / 2
    for r in controlled:  # gains are stored as float32
        assert _finite(r["icl_gain"], r["control_gain"], r["net_gain"])
        assert r["net_gain"] == pytest.approx(r["icl_gain"] - r["control_gain"], abs=1e-6)
    assert sum(g["positions"] for g in icl["gains"]) == len(rows)
    mean = icl["mean"]
    assert (mean["targets"], mean["positions"]) == (icl["targets_total"], len(rows))
    assert _finite(mean["icl_gain"], mean["control_gain"], mean["net_gain"])
    assert mean["icl_gain"] == pytest.approx(
        sum(r["icl_gain"] for r in rows) / len(rows), abs=1e-6)


@pytest.mark.slow
def test_anomalies_and_enrichment_are_the_atlas_own(demo):
    atlas = Atlas(demo["dna"]["atlas"])
    anomalies = demo["anomalies"]
    regions = atlas.anomalies(with_repeats=True, **examples.ANOMALIES)
    assert regions.num_rows == anomalies["regions"] > 0
    assert sum(anomalies["by_tail"].values()) == regions.num_rows
    peaks = sorted((abs(z) for z in regions["peak_z"].to_pylist()), reverse=True)
    assert [abs(r["peak_z"]) for r in anomalies["top"]] == peaks[:len(anomalies["top"])]
    assert all(abs(r["peak_z"]) >= examples.ANOMALIES["z"] for r in anomalies["top"])
    enrichment = demo["enrichment"]
    for by in ("class", "copy"):
        table = atlas.enrichment(by=by, **examples.ANOMALIES).to_pylist()
        assert {r["group"]: r["odds_ratio"] for r in table} == \
            {r["group"]: r["odds_ratio"] for r in enrichment[by]}
    assert {r["group"] for r in enrichment["class"]} == {"in_context_copy", "Tandem_repeat"}
    (any_copy,) = [r for r in enrichment["copy"] if r["group"] == "in-context copy, any"]
    with_copy = atlas.sql("SELECT count(*) AS n FROM positions WHERE copy_offset IS NOT NULL")
    assert any_copy["n_inside"] == with_copy["n"][0].as_py()
    # probe icl ran first: the groups report how much of their excess look-up explains
    assert any(r["probed_anomalous_inside"] for r in enrichment["class"])


@pytest.mark.slow
def test_index_knn_and_identity(demo):
    atlas = Atlas(demo["dna"]["atlas"])
    index = demo["index"]
    tokens = atlas.summary()["tables"]["tokens"]["rows"]
    (listed,) = list_indexes(atlas)
    assert listed["name"] == index["name"] and listed["type"] == index["type"] == "flat"
    assert listed["ntotal"] == index["ntotal"] == tokens
    assert (Path(index["path"]) / "meta.json").is_file()
    knn = demo["knn"]
    assert knn["rows"] == len(knn["hits"]) == len(examples.KNN_KMERS) * examples.KNN_K
    assert [h["query"] for h in knn["hits"]] == [q for q in examples.KNN_KMERS
                                                for _ in range(examples.KNN_K)]
    token_ids = set(atlas.tokens(columns=["token_id"])["token_id"].to_pylist())
    assert all(h["token_id"] in token_ids and len(h["token"]) == 6 for h in knn["hits"])
    for query in examples.KNN_KMERS:
        distances = [h["distance"] for h in knn["hits"] if h["query"] == query]
        assert distances == sorted(distances, reverse=True)  # cosine similarity
    (row,) = demo["identity"]["rows"]
    assert row["sample"] == examples.IDENTITY["sample"] and "index" in row["neighbours"]
    # Sanabria et al.: neighbours share the 6-mer's identity far above chance
    assert row["identity"] > 10 * row["identity_chance"]
    assert row["identity"] > row["context"]


@pytest.mark.slow
def test_probe_doubling_writes_the_doubling_table(demo):
    doubling = demo["doubling"]
    table = pq.read_table(doubling["output"])
    assert table.schema.equals(schema.DOUBLING)
    ids = [r.id for r in read_fasta(doubling["fasta"], kind="protein")]
    assert ids == list(examples.DOUBLING_IDS)
    assert table.num_rows == doubling["rows"] == 2 * len(ids)
    assert sorted(zip(table["seq_id"].to_pylist(), table["variant"].to_pylist())) == \
        sorted((i, v) for i in ids for v in ("original", "shuffled"))
    for r in table.to_pylist():
        assert _finite(r["icl_gain"], r["control_gain"], r["net_gain"], r["doubling_gain"])
        assert r["net_gain"] == pytest.approx(r["icl_gain"] - r["control_gain"], abs=1e-9)
    for variant, mean in doubling["mean"].items():
        rows = [r for r in table.to_pylist() if r["variant"] == variant]
        assert mean["net_gain"] == pytest.approx(sum(r["net_gain"] for r in rows) / len(rows))


@pytest.mark.slow
def test_the_report_is_written_and_printed_last(demo, capsys):
    report = demo["report"]
    path = Path(report["output"])
    assert path == Path(demo["atlas"]) / "report.html"
    assert path.stat().st_size == report["bytes"] > 0
    text = path.read_text()
    assert text.lstrip().lower().startswith("<!doctype html>")
    # both atlases, the DNA's copies section with the doubling table beside ablations
    assert set(report["atlases"]) == {demo["dna"]["atlas"], demo["proteins"]["atlas"]}
    dna = report["atlases"][demo["dna"]["atlas"]]["sections"]
    assert {"anomalies", "enrichment", "copies", "identity", "indexes"} <= set(dna)
    assert all(variant in text for variant in demo["doubling"]["mean"])
    print_demo(demo)
    out = capsys.readouterr().out
    for stage in STAGES:
        assert stage in out
    assert out.strip().splitlines()[-1] == f"Report: {path} " \
        f"({format_size(report['bytes'])})"
