"""``seqatlas variants score``: CLI and Python parity, stored variant sets (commit, crash,
verify, repair), evaluation against measured scores, errors, and reads that write nothing."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pytest

import seqatlas
from seqatlas.cli.main import main
from seqatlas.errors import ConfigError, InputError
from seqatlas.store import AtlasWriter
from seqatlas.variants import evaluation
from tests.conftest import AMINO, random_protein, write_fasta

SEQ = random_protein(30, seed=11)


@pytest.fixture(scope="module")
def protein_atlas(tmp_path_factory, tiny_esm) -> Path:
    root = tmp_path_factory.mktemp("variants")
    fasta = write_fasta(root / "p.fa", {"P1": SEQ, "P2": random_protein(20, seed=12)})
    seqatlas.ingest(fasta, atlas=root / "atlas", model=str(tiny_esm), likelihood="exact",
                    workers=0, progress=False)
    return root / "atlas"


def _other(letter: str, k: int = 0) -> str:
    return [a for a in AMINO if a != letter][k]


def _mutants(n: int) -> list[str]:
    return [f"{SEQ[i]}{i + 1}{_other(SEQ[i], i % 5)}" for i in range(n)]


def _tsv(path: Path):
    return pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter="\t"),
                          convert_options=pacsv.ConvertOptions(strings_can_be_null=True))


def _files(atlas: Path) -> dict[str, str]:
    return {str(p.relative_to(atlas)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(atlas.rglob("*")) if p.is_file()}


def test_cli_equals_python(protein_atlas, tmp_path):
    mutants = _mutants(6) + [f"{_mutants(2)[0]}:{_mutants(2)[1]}", "Q99A"]
    expected = seqatlas.score_variants(mutants, atlas=protein_atlas, seq_id="P1",
                                       progress=False).table
    out = tmp_path / "scores.tsv"
    assert main(["variants", "score", *mutants, "--atlas", str(protein_atlas), "--seq-id",
                 "P1", "--no-progress", "-o", str(out)]) == 0
    got = _tsv(out)
    assert got["variant_id"].to_pylist() == expected["variant_id"].to_pylist()
    for a, b in zip(got["llr"].to_pylist(), expected["llr"].to_pylist()):
        assert (a is None and b is None) or a == pytest.approx(b, abs=1e-6)
    assert got["problem"].to_pylist()[-1].startswith("position 99 is outside")
    double = expected.to_pylist()[-2]
    assert double["llr"] == pytest.approx(sum(expected["llr"].to_pylist()[:2]), abs=1e-6)
    assert seqatlas.Atlas(protein_atlas).score_variants(
        mutants, seq_id="P1", progress=False).table.equals(expected)


def test_scoring_reads_only(protein_atlas):
    before = _files(protein_atlas)
    seqatlas.score_variants(_mutants(3), atlas=protein_atlas, seq_id="P1", joint=True,
                            progress=False)
    assert _files(protein_atlas) == before


def test_proteingym_file_and_evaluation(protein_atlas, tmp_path, capsys):
    rng = np.random.default_rng(0)
    rows = ["mutant,mutated_sequence,DMS_score,DMS_score_bin"]
    for i in range(len(SEQ)):
        for k in range(3):
            alt = _other(SEQ[i], k)
            rows.append(f"{SEQ[i]}{i + 1}{alt},{SEQ[:i] + alt + SEQ[i + 1:]},"
                        f"{rng.normal():.4f},{int(rng.random() > 0.5)}")
    path = tmp_path / "dms.csv"
    path.write_text("\n".join(rows) + "\n")
    result = seqatlas.score_variants(path, atlas=protein_atlas, seq_id="P1",
                                     score_column="DMS_score", bin_column="DMS_score_bin",
                                     progress=False)
    table = result.table
    assert result.scored == len(SEQ) * 3 == table.num_rows
    overall = result.evaluation[0]
    assert overall["group"] == "all" and overall["n"] == table.num_rows
    expected = evaluation.evaluate(np.array(table["llr"].to_pylist()),
                                   np.array(table["measured_score"].to_pylist()),
                                   bins=np.array(table["measured_bin"].to_pylist()))
    for name in ("spearman", "auc", "mcc", "ndcg", "top10_recall"):
        assert overall[name] == pytest.approx(expected[name]) or \
            overall[name] is expected[name] is None
    assert main(["variants", "score", str(path), "--atlas", str(protein_atlas), "--seq-id",
                 "P1", "--score-column", "DMS_score", "--no-progress", "-o",
                 str(tmp_path / "out.parquet")]) == 0
    assert "spearman" in capsys.readouterr().err


def test_stored_set_view_and_idempotence(protein_atlas, tmp_path):
    import shutil

    atlas = tmp_path / "atlas"
    shutil.copytree(protein_atlas, atlas)
    mutants = _mutants(4) + [f"{_mutants(2)[0]}:{_mutants(2)[1]}"]
    result = seqatlas.score_variants(mutants, atlas=atlas, seq_id="P1", store="s1",
                                     progress=False)
    assert result.stored_set == "s1"
    seqatlas.score_variants(mutants, atlas=atlas, seq_id="P1", store="s1", progress=False)
    view = seqatlas.Atlas(atlas).sql(
        "SELECT variant_id, sum(llr) AS llr, count(*) AS sites FROM variant_scores "
        "WHERE variant_set = 's1' GROUP BY variant_id ORDER BY variant_id")
    scores = {r["variant_id"]: r["llr"] for r in result.table.to_pylist()}
    assert view.num_rows == len(mutants)  # stored once, not twice
    for row in view.to_pylist():
        assert row["llr"] == pytest.approx(scores[row["variant_id"]], abs=1e-5)
    with pytest.raises(ConfigError, match="already holds a different variant set"):
        seqatlas.score_variants(mutants[:2], atlas=atlas, seq_id="P1", store="s1",
                                progress=False)
    assert seqatlas.verify(atlas)["ok"]


def test_stored_set_survives_a_crash_and_repair(protein_atlas, tmp_path, monkeypatch):
    import shutil

    atlas = tmp_path / "atlas"
    shutil.copytree(protein_atlas, atlas)
    mutants = _mutants(5)
    real = AtlasWriter._commit

    def crash(self, actions, operation):  # the part is written; the commit never comes
        if any(a.get("unit", {}).get("key", "").startswith("variants-") for a in actions):
            raise KeyboardInterrupt
        return real(self, actions, operation)

    monkeypatch.setattr(AtlasWriter, "_commit", crash)
    with pytest.raises(KeyboardInterrupt):
        seqatlas.score_variants(mutants, atlas=atlas, seq_id="P1", store="s2", progress=False)
    monkeypatch.setattr(AtlasWriter, "_commit", real)
    assert seqatlas.Atlas(atlas).count("variants") == 0  # nothing half-committed is seen
    seqatlas.score_variants(mutants, atlas=atlas, seq_id="P1", store="s2", progress=False)
    assert seqatlas.Atlas(atlas).count("variants") == 5
    assert sorted(p.name for p in (atlas / "variants").iterdir()
                  if p.name.startswith("part-")) == sorted(
        seqatlas.Atlas(atlas).manifest.table_parts("variants"))
    part = next((atlas / "variants").glob("part-*.parquet"))
    part.write_bytes(part.read_bytes()[:-8])
    report = seqatlas.verify(atlas)
    assert not report["ok"] and report["damaged"][0]["table"] == "variants"
    repaired = seqatlas.repair(atlas, progress=False)
    assert any("--store s2" in line for line in repaired["rerun"])
    assert seqatlas.verify(atlas)["ok"] and seqatlas.Atlas(atlas).count("variants") == 0
    seqatlas.score_variants(mutants, atlas=atlas, seq_id="P1", store="s2", progress=False)
    assert seqatlas.Atlas(atlas).count("variants") == 5


def test_errors_are_clear(protein_atlas, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("mutant,DMS_score\nA1G,0.5\nA1,0.2\n")
    with pytest.raises(InputError, match=r"bad\.csv:3"):
        seqatlas.score_variants(bad, atlas=protein_atlas, seq_id="P1", progress=False)
    assert main(["variants", "score", str(bad), "--atlas", str(protein_atlas), "--seq-id",
                 "P1", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "Error:" in err and "bad.csv:3" in err and "Traceback" not in err
    with pytest.raises(ConfigError, match="pass --seq-id"):
        seqatlas.score_variants(["A1G"], atlas=protein_atlas, progress=False)
    with pytest.raises(ConfigError, match="not a sequence of the atlas"):
        seqatlas.score_variants(["A1G"], atlas=protein_atlas, seq_id="nope", progress=False)
    with pytest.raises(InputError, match="no such file"):
        seqatlas.score_variants(tmp_path / "missing.vcf", atlas=protein_atlas,
                                progress=False)


def test_unscorable_rows_are_kept(protein_atlas):
    wrong_ref = _other(SEQ[2])
    mutants = [f"{wrong_ref}3A", f"{SEQ[0]}1*", f"{SEQ[0]}1B", f"{SEQ[1]}2{_other(SEQ[1])}"]
    table = seqatlas.score_variants(mutants, atlas=protein_atlas, seq_id="P1",
                                    progress=False).table
    problems = table["problem"].to_pylist()
    assert table.num_rows == 4
    assert f"it has {SEQ[2]} at P1:3" in problems[0]
    assert problems[1] is not None and problems[2] is not None and problems[3] is None
    assert all(v is None for v in table["llr"].to_pylist()[:3])
    assert math.isfinite(table["llr"].to_pylist()[3])


def test_offset(protein_atlas):
    site = f"{SEQ[4]}15{_other(SEQ[4])}"  # residue 15 of a protein numbered from 11
    row = seqatlas.score_variants([site], atlas=protein_atlas, seq_id="P1", offset=10,
                                  progress=False).table.to_pylist()[0]
    assert row["pos"] == 4 and row["input_position"] == 15 and row["problem"] is None


def test_lookup_rows_are_stored_and_reported(tmp_path):
    from seqatlas.html_report import report
    from tests.conftest import make_esm

    model = make_esm(tmp_path / "esm", context_tokens=66)
    motif = random_protein(10, seed=21)
    fasta = write_fasta(tmp_path / "r.fa", {"R": motif + random_protein(30, seed=22) + motif})
    atlas = tmp_path / "atlas"
    seqatlas.ingest(fasta, atlas=atlas, model=str(model), likelihood="exact", workers=0,
                    progress=False)
    mutants = [f"{motif[i]}{i + 1}{_other(motif[i])}" for i in (2, 4, 5)]
    result = seqatlas.score_variants(mutants, atlas=atlas, lookup=True, store="rep",
                                     progress=False)
    rows = result.table.to_pylist()
    assert all(r["in_copy"] and r["lookup_shift"] is not None for r in rows)
    stored = seqatlas.Atlas(atlas).sql(
        "SELECT variant_id, lookup_method, lookup_seed, llr_intact, llr_partner, "
        "lookup_shift FROM variants ORDER BY line, variant_id").to_pylist()
    by_id = {r["variant_id"]: r for r in rows}
    for row in stored:
        assert row["lookup_method"] == "mask" and row["lookup_seed"] == 0
        for name in ("llr_intact", "llr_partner", "lookup_shift"):
            assert row[name] == pytest.approx(by_id[row["variant_id"]][name], abs=1e-9)
    html = (tmp_path / "r.html")
    report([atlas], output=html)
    text = html.read_text()
    assert "Look-up shift of the stored variant sets" in text
    mean = sum(r["lookup_shift"] for r in rows) / len(rows)
    assert f"{mean:.4g}" in text


@pytest.mark.ray
def test_rescoring_on_ray_workers_equals_in_process(tmp_path, tiny_esm, ray_session):
    fasta = write_fasta(tmp_path / "p.fa", {"P1": SEQ})
    atlas = tmp_path / "atlas"
    seqatlas.ingest(fasta, atlas=atlas, model=str(tiny_esm), likelihood="exact",
                    distributions="none", workers=0, progress=False)
    mutants = _mutants(5)
    here = seqatlas.score_variants(mutants, atlas=atlas, seq_id="P1", workers=0,
                                   progress=False)
    there = seqatlas.score_variants(mutants, atlas=atlas, seq_id="P1", workers=1,
                                    progress=False)
    assert here.sites_rescored == there.sites_rescored == 5
    assert there.table["llr"].to_pylist() == pytest.approx(here.table["llr"].to_pylist(),
                                                           abs=1e-6)
