"""Atlases written by main before the restructuring (tests/data/main_atlas, made by its
make.py with seqatlas 806f1ba) open, read and query identically, and extend exactly as
that version extended them; the manifest's prose is not part of any key."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

import seqatlas
from seqatlas import manifest as manifest_module
from seqatlas.manifest import Manifest

FIXTURE = Path(__file__).parent / "data" / "main_atlas"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
OPTIONS = dict(model="dnabert6-tiny", likelihood="fast", strands="both", workers=0,
               progress=False, layer=[-1, 1])


@pytest.fixture
def old(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "main_atlas")
    return tmp_path / "main_atlas"


# columns added since the fixture was written: the probe icl look-up values, null in an
# atlas that has never been probed
ADDED = {"n_probed", "net_gain", "explained_fraction", "explained_by_lookup",
         "probed_anomalous_inside", "mean_net_gain"}


def _close(got: list[dict], expected: list[dict]) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert set(e) <= set(g) and set(g) - set(e) <= ADDED
        assert all(g[k] in (None, 0) for k in set(g) - set(e)), g
        for key, value in e.items():
            if isinstance(value, float) and not math.isnan(value):
                # float32 kernels differ across CPUs by a few ulps: 2e-5 relative
                assert g[key] == pytest.approx(value, rel=2e-5, abs=1e-6), key
            else:
                assert g[key] == value or (g[key] != g[key] and value != value), key


def test_the_manifest_round_trips_byte_for_byte(old):
    raw = json.loads((old / "atlas" / "atlas.json").read_text())
    typed = Manifest.from_json(raw)
    assert typed.to_json() == raw
    assert typed.scoring.distribution == "standard-letters"
    assert typed.scoring.fast.method == "round-robin"
    assert typed.scoring.stored_layers() == [4, 1]


def test_an_old_atlas_opens_and_queries_as_before(old):
    atlas = seqatlas.Atlas(old / "atlas")
    summary = seqatlas.info(old / "atlas")
    assert summary["tables"]["positions"]["rows"] == 510
    assert summary["model"]["name"] == "dnabert6-tiny"
    assert atlas.tokens().column_names[-2:] == ["embedding", "embedding_layer_1"]
    _close(atlas.sql(
        "SELECT seq_id, count(*) AS n, round(sum(logp), 4) AS s, count(copy_offset) AS copies "
        "FROM positions GROUP BY seq_id ORDER BY seq_id").to_pylist(), EXPECTED["sql"])
    _close(atlas.anomalies(z=1.5).to_pylist(), EXPECTED["anomalies"])
    _close(atlas.enrichment(by="name", z=1.5).to_pylist(), EXPECTED["enrichment"])
    _close(atlas.knn(kmer="ACGTAC", k=5).to_pylist(), EXPECTED["knn"])


def test_an_old_atlas_resumes_with_its_own_keys_and_extends_as_before(old):
    before = json.loads((old / "atlas" / "atlas.json").read_text())
    again = seqatlas.ingest(old / "inputs" / "first.fa", atlas=old / "atlas", **OPTIONS)
    assert (again.units_scored, again.units_skipped) == (0, again.units_total)
    assert json.loads((old / "atlas" / "atlas.json").read_text())["parts"] == before["parts"]

    seqatlas.ingest(old / "inputs" / "second.fa", atlas=old / "atlas", **OPTIONS)
    manifest = json.loads((old / "atlas" / "atlas.json").read_text())
    # the same part names (content keys) as main 806f1ba gave for this extension
    # (tables added since, such as ablations, are recorded empty)
    assert {t: sorted(p) for t, p in manifest["parts"].items() if p or t in
            EXPECTED["extended_parts"]} == EXPECTED["extended_parts"]
    assert sorted(manifest["units"]) == EXPECTED["extended_units"]
    rows = seqatlas.Atlas(old / "atlas").sql(
        "SELECT pos, ref, logp, logp_rc, entropy, rank, copy_offset FROM positions "
        "WHERE seq_id = 'chrC' ORDER BY pos").to_pylist()
    _close(rows, EXPECTED["extended_positions_c"])


def test_rewording_the_manifest_prose_changes_no_key(tmp_path, monkeypatch, old):
    fasta = old / "inputs" / "second.fa"
    seqatlas.ingest(fasta, atlas=tmp_path / "new", **OPTIONS)
    parts = json.loads((tmp_path / "new" / "atlas.json").read_text())["parts"]
    units = json.loads((tmp_path / "new" / "atlas.json").read_text())["units"]
    assert all(u.get("key_scheme") == 2 for u in units.values() if "seq_ids" in u)
    # a new atlas keys on stable identifiers, not on the legacy prose record
    assert sorted(parts["positions"]) != EXPECTED["extended_parts"]["positions"]

    reworded = "over the standard letters of the kind (renormalised, marginalised per base)"
    old_text = manifest_module.DISTRIBUTIONS["standard-letters"]
    monkeypatch.setitem(manifest_module.DISTRIBUTIONS, "standard-letters", reworded)
    monkeypatch.setitem(manifest_module._DISTRIBUTION_WORDINGS, old_text, "standard-letters")
    monkeypatch.setitem(manifest_module._DISTRIBUTION_WORDINGS, reworded, "standard-letters")
    again = seqatlas.ingest(fasta, atlas=tmp_path / "new", **OPTIONS)
    assert again.units_scored == 0
    assert json.loads((tmp_path / "new" / "atlas.json").read_text())["parts"] == parts


def test_a_manifest_without_its_keys_is_a_clear_error(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "atlas.json").write_text(json.dumps({"schema_version": 2}))
    with pytest.raises(seqatlas.SeqAtlasError, match="atlas.json"):
        seqatlas.Atlas(tmp_path / "a")
