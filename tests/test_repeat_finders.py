"""The real tantan and TRF on a planted tandem repeat, and `annotate --run` end to end."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest

import seqatlas
from seqatlas.cli.main import main
from seqatlas.errors import ConfigError, InputError, ToolError
from seqatlas.repeats.formats import detect_format, read_repeats
from tests.conftest import write_fasta

UNIT, COPIES, FLANK = "ACGTTG", 20, 100
PLANTED = (FLANK, FLANK + len(UNIT) * COPIES)  # [100, 220)


def needs(program: str):
    return pytest.mark.skipif(shutil.which(program) is None,
                              reason=f"{program} is not installed (Debian package {program})")


def _flank(n: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice("ACGT") for _ in range(n))


def planted_genome() -> dict[str, str]:
    """chrA: random flank + (ACGTTG)x20 + random flank; chrB: (CA)x25, half soft-masked."""
    return {"chrA": _flank(FLANK, 1) + UNIT * COPIES + _flank(FLANK, 2),
            "chrB": _flank(60, 3) + "CA" * 12 + "ca" * 13 + _flank(70, 4).lower()}


def periodic_identity(sequence: str, start: int, end: int, period: int) -> float:
    """Fraction of bases in [start, end) equal to the base one period later."""
    region = sequence[start:end].upper()
    pairs = list(zip(region, region[period:]))
    return sum(a == b for a, b in pairs) / len(pairs)


def perfect_extent(sequence: str, start: int, end: int, period: int) -> tuple[int, int]:
    """[start, end) grown while the bases stay periodic (flanks may continue a repeat)."""
    s = sequence.upper()
    while start > 0 and s[start - 1] == s[start - 1 + period]:
        start -= 1
    while end < len(s) and s[end] == s[end - period]:
        end += 1
    return start, end


def _run(argv: list[str], cwd: Path) -> str:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False).stdout


@needs("tantan")
def test_real_tantan_f4_and_f3_find_the_planted_repeat(tmp_path):
    genome = planted_genome()
    fasta = write_fasta(tmp_path / "g.fa", {k: v.upper() for k, v in genome.items()})
    (tmp_path / "g.tantan-f4.tsv").write_text(_run(["tantan", "-f4", str(fasta)], tmp_path))
    (tmp_path / "g.tantan-f3.bed").write_text(_run(["tantan", "-f3", str(fasta)], tmp_path))
    assert detect_format(tmp_path / "g.tantan-f4.tsv") == "tantan-f4"
    assert detect_format(tmp_path / "g.tantan-f3.bed") == "tantan-f3"
    f4 = [r for r in read_repeats(tmp_path / "g.tantan-f4.tsv").to_pylist()
          if r["seq_id"] == "chrA"]
    # the planted (ACGTTG)x20 at [100, 220), and the flank base that continues it
    extent = perfect_extent(genome["chrA"], *PLANTED, 6)
    assert extent == (100, 221)
    assert len(f4) == 1 and (f4[0]["start"], f4[0]["end"]) == extent
    assert f4[0]["family"] == "period_6" and f4[0]["name"] in {UNIT[i:] + UNIT[:i]
                                                              for i in range(6)}
    assert periodic_identity(genome["chrA"], f4[0]["start"], f4[0]["end"], 6) > 0.95
    f3 = [r for r in read_repeats(tmp_path / "g.tantan-f3.bed").to_pylist()
          if r["seq_id"] == "chrA"]
    # -f3 reports what tantan masks: the copies after the first, so it starts a unit later
    assert len(f3) == 1 and f3[0]["end"] == extent[1]
    assert extent[0] < f3[0]["start"] <= extent[0] + len(UNIT)
    assert periodic_identity(genome["chrA"], f3[0]["start"], f3[0]["end"], 6) > 0.95
    # the (CA) run of chrB is found by both, as period 2 in -f4
    (ca,) = [r for r in read_repeats(tmp_path / "g.tantan-f4.tsv").to_pylist()
             if r["seq_id"] == "chrB"]
    assert (ca["start"], ca["end"], ca["family"]) == (59, 111, "period_2")
    assert periodic_identity(genome["chrB"], ca["start"], ca["end"], 2) > 0.95


@needs("trf")
def test_real_trf_ngs_finds_the_planted_repeat(tmp_path):
    genome = planted_genome()
    fasta = write_fasta(tmp_path / "g.fa", genome)
    out = _run(["trf", str(fasta), "2", "7", "7", "80", "10", "50", "500", "-h", "-ngs"],
               tmp_path)
    (tmp_path / "g.ngs").write_text(out)
    assert detect_format(tmp_path / "g.ngs") == "trf-ngs"
    rows = read_repeats(tmp_path / "g.ngs").to_pylist()
    (planted,) = [r for r in rows if r["seq_id"] == "chrA"]
    assert (planted["start"], planted["end"]) == perfect_extent(genome["chrA"], *PLANTED, 6)
    assert planted["family"] == "period_6"
    assert periodic_identity(genome["chrA"], planted["start"], planted["end"], 6) > 0.95
    (ca,) = [r for r in rows if r["seq_id"] == "chrB"]
    # the planted (CA)x25 at [60, 110), grown by the flank bases that happen to continue it
    assert perfect_extent(genome["chrB"], 60, 110, 2) == (59, 111)
    assert (ca["start"], ca["end"], ca["family"]) == (59, 111, "period_2")


def _dna_atlas(tmp_path: Path, name: str, fasta: Path) -> Path:
    from tests.dna_models import make_single

    model = tmp_path / "model"
    if not model.exists():
        make_single(model)
    seqatlas.ingest(fasta, atlas=tmp_path / name, model=str(model), workers=0, progress=False,
                    likelihood="unmasked", embeddings=False)
    return tmp_path / name


def _direct(program: str, fasta: Path, cwd: Path) -> list[tuple]:
    """The program run by hand on the original FASTA (uppercased), imported from a file."""
    upper = write_fasta(cwd / "upper.fa", {k: v.upper() for k, v in planted_genome().items()})
    if program == "tantan":
        out, name = _run(["tantan", "-f4", str(upper)], cwd), "direct.tsv"
    else:
        out, name = _run(["trf", str(upper), "2", "7", "7", "80", "10", "50", "500", "-h",
                          "-ngs"], cwd), "direct.ngs"
    (cwd / name).write_text(out)
    return sorted((r["seq_id"], r["start"], r["end"], r["name"], r["family"])
                  for r in read_repeats(cwd / name).to_pylist())


@pytest.mark.parametrize("program", [pytest.param("tantan", marks=needs("tantan")),
                                     pytest.param("trf", marks=needs("trf"))])
def test_annotate_run_cli_and_api(tmp_path, program, capsys):
    fasta = write_fasta(tmp_path / "g.fa", planted_genome())
    cli, api = _dna_atlas(tmp_path, "cli", fasta), _dna_atlas(tmp_path, "api", fasta)
    assert main(["annotate", "--run", program, "--atlas", str(cli), "--json",
                 "--no-progress"]) == 0
    shown = json.loads(capsys.readouterr().out)
    summary = seqatlas.annotate(atlas=api, run=program, progress=False)
    assert shown == json.loads(json.dumps(summary))
    expected_args = "" if program == "tantan" else "2 7 7 80 10 50 500"
    assert (summary["run"], summary["args"], summary["already_imported"]) == \
        (program, expected_args, False)
    direct = _direct(program, fasta, tmp_path)
    for atlas in (cli, api):
        rows = seqatlas.Atlas(atlas).repeats().to_pylist()
        assert sorted((r["seq_id"], r["start"], r["end"], r["name"], r["family"])
                      for r in rows) == direct
        assert {r["source"] for r in rows} == {program} and summary["repeats"] == len(rows)
        (planted,) = [r for r in rows if r["seq_id"] == "chrA"]
        assert (planted["start"], planted["end"]) == (100, 221)  # the planted repeat
        unit = next(u for u in seqatlas.Atlas(atlas).manifest["units"].values()
                    if u.get("repeat_finder") == program)
        assert unit["version"] == summary["version"] != "unknown"
        assert unit["args"] == expected_args.split() and unit["residues_from"] == {
            "source": 2, "positions": 0}
    again = seqatlas.annotate(atlas=api, run=program, progress=False)
    assert again["already_imported"] and again["repeats"] == summary["repeats"]
    assert seqatlas.Atlas(api).count("repeats") == summary["repeats"]


@needs("tantan")
def test_run_args_and_moved_source(tmp_path, capsys):
    fasta = write_fasta(tmp_path / "g.fa", planted_genome())
    atlas = _dna_atlas(tmp_path, "a", fasta)
    # the source FASTA moves away: the residues come from positions.ref, exactly
    fasta.rename(tmp_path / "moved.fa")
    assert main(["annotate", "--atlas", str(atlas), "--run", "tantan", "--run-args", "-w 10",
                 "--no-progress"]) == 0
    assert "(parameters -w 10): " in capsys.readouterr().out
    unit = next(u for u in seqatlas.Atlas(atlas).manifest["units"].values()
                if u.get("repeat_finder") == "tantan")
    assert unit["args"] == ["-w", "10"] and unit["residues_from"] == {"source": 0,
                                                                      "positions": 2}
    assert unit["command"] == "tantan -w 10 -f4 atlas.fa"
    rows = seqatlas.Atlas(atlas).repeats().to_pylist()
    (planted,) = [r for r in rows if r["seq_id"] == "chrA"]
    assert (planted["start"], planted["end"]) == (100, 221)
    # a changed source and an atlas without all positions: a clear error, nothing committed
    write_fasta(tmp_path / "g.fa", {**planted_genome(), "chrA": "T" + planted_genome()["chrA"]})
    manifest = json.loads((atlas / "atlas.json").read_text())
    manifest["parts"]["positions"] = {}
    (atlas / "atlas.json").write_text(json.dumps(manifest))
    before = seqatlas.Atlas(atlas).count("repeats")
    with pytest.raises(InputError, match=r"'chrA'.*has changed.*Put the original FASTA back"):
        seqatlas.annotate(atlas=atlas, run="tantan", progress=False)
    assert seqatlas.Atlas(atlas).count("repeats") == before


@needs("tantan")
@needs("trf")
def test_program_failure_commits_nothing(tmp_path, capsys):
    atlas = _dna_atlas(tmp_path, "a", write_fasta(tmp_path / "g.fa", planted_genome()))
    with pytest.raises(ToolError, match=r"(?s)tantan -r 7 -f4 atlas.fa.*exit status 1.*"
                                        r"nothing was committed.*bad option value"):
        seqatlas.annotate(atlas=atlas, run="tantan", run_args="-r 7", progress=False)
    assert main(["annotate", "--atlas", str(atlas), "--run", "trf", "--run-args",
                 "2 7 7 80 10 50 500 -l 0", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "exit status 2" in err and "max TR length must be at least 1 million" in err
    with pytest.raises(ConfigError, match="7 parameters Match Mismatch"):
        seqatlas.annotate(atlas=atlas, run="trf", run_args="2 7 7")
    with pytest.raises(ConfigError, match="must not set tantan's output type"):
        seqatlas.annotate(atlas=atlas, run="tantan", run_args="-f3")
    assert seqatlas.Atlas(atlas).count("repeats") == 0
    assert not any(k.startswith("repeats-") for k in seqatlas.Atlas(atlas).manifest["units"])


@pytest.mark.parametrize("program", ["tantan", "trf"])
def test_missing_program_says_how_to_install_it(tmp_path, monkeypatch, program, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH without the program
    with pytest.raises(ToolError) as exc:
        seqatlas.annotate(atlas=tmp_path / "none", run=program)
    assert str(exc.value).startswith(f"{program} is not installed: install the Debian package "
                                     f"{program} (apt-get install {program}) or ")
    assert main(["annotate", "--run", program, "--atlas", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err
    assert f"{program} is not installed" in err and "Traceback" not in err


def test_exactly_one_source_of_repeats(tmp_path, capsys):
    bed = tmp_path / "r.bed"
    bed.write_text("X\t1\t5\n")
    for kwargs, message in [({}, "got none"), ({"path": bed, "run": "tantan"},
                                               "got FILE and --run"),
                            ({"run": "tantan", "format": "bed"}, "--format describes a FILE"),
                            ({"path": bed, "run_args": "-w 5"}, "--run-args goes with --run"),
                            ({"run": "repeatmasker"}, "--run must be one of tantan, trf")]:
        with pytest.raises(ConfigError, match=message):
            seqatlas.annotate(atlas=tmp_path / "a", **kwargs)
    assert main(["annotate", "--atlas", str(tmp_path / "a")]) == 1
    assert "exactly one source of repeats" in capsys.readouterr().err
    assert main(["annotate", str(bed), "--run", "trf", "--atlas", str(tmp_path / "a")]) == 1
    assert "got FILE and --run" in capsys.readouterr().err


@needs("tantan")
@needs("trf")
def test_protein_atlas_runs_tantan_with_p_and_refuses_trf(tmp_path, tiny_esm):
    from tests.conftest import random_protein

    protein = random_protein(10, 2) + "QLKEAL" * 4 + random_protein(20, 3)
    fasta = write_fasta(tmp_path / "p.fa", {"P1": protein, "P2": random_protein(30, 4)})
    seqatlas.ingest(fasta, atlas=tmp_path / "a", model=str(tiny_esm), workers=0, progress=False,
                    likelihood="unmasked", embeddings=False)
    summary = seqatlas.annotate(atlas=tmp_path / "a", run="tantan", progress=False)
    assert summary["args"] == "-p"
    rows = [r for r in seqatlas.Atlas(tmp_path / "a").repeats().to_pylist()
            if r["seq_id"] == "P1"]
    assert [(r["start"], r["end"], r["family"]) for r in rows] == [(10, 34, "period_6")]
    with pytest.raises(ConfigError, match="trf finds repeats in dna and rna; this atlas holds "
                                          "protein sequences: use --run tantan"):
        seqatlas.annotate(atlas=tmp_path / "a", run="trf")
