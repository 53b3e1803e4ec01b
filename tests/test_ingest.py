"""End-to-end ingest: resume after SIGKILL, refusals, failures, bad input, CLI/API parity."""

from __future__ import annotations

import builtins
import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

import seqatlas
from seqatlas.store import AtlasReader
from seqatlas.cli.main import main
from seqatlas.errors import AtlasMismatchError, IngestError
from tests.conftest import make_esm, random_protein, write_fasta

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "seqatlas.cli.main", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _rows(atlas_dir: Path, table: str) -> pa.Table:
    data = getattr(seqatlas.Atlas(atlas_dir), table)()
    keys = [("seq_id", "ascending"), ("pos" if table == "positions" else "start", "ascending")]
    return data.sort_by(keys)


@pytest.fixture(scope="module")
def medium_esm(tmp_path_factory) -> Path:
    # big enough that a run takes seconds, so it can be killed half way
    return make_esm(tmp_path_factory.mktemp("models") / "medium_esm", context_tokens=64,
                    hidden=128, layers=4, seed=2)


@pytest.mark.ray
def test_resume_after_sigkill_gives_identical_rows(tmp_path, medium_esm):
    records = {f"p{i}": random_protein(60 + 7 * i, seed=i) for i in range(16)}
    fasta = write_fasta(tmp_path / "in.fa", records)
    args = ["--model", str(medium_esm), "--unit-tokens", "3000", "--no-progress"]
    reference = _cli("ingest", str(fasta), "--atlas", str(tmp_path / "ref"), *args)
    assert reference.returncode == 0, reference.stderr
    total_units = len(json.loads((tmp_path / "ref" / "atlas.json").read_text())["units"])

    victim = tmp_path / "victim"
    proc = subprocess.Popen([sys.executable, "-m", "seqatlas.cli.main", "ingest", str(fasta),
                             "--atlas", str(victim), *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:  # the state as a reader sees it: atlas.json plus the log
        try:
            if AtlasReader(victim).manifest.table_parts("positions"):
                break
        except seqatlas.SeqAtlasError:
            pass  # not created yet
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
    proc.wait()
    committed = len(AtlasReader(victim).manifest.units)
    assert 1 < committed < total_units, "the kill must land half way through"

    resumed = _cli("ingest", str(fasta), "--atlas", str(victim), *args, "--json")
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["units_skipped"] == committed - 1  # minus the sequences part
    for table in ("positions", "tokens"):
        assert _rows(victim, table).equals(_rows(tmp_path / "ref", table))
    positions = _rows(victim, "positions")
    assert positions.num_rows == sum(len(s) for s in records.values())
    assert len({(r["seq_id"], r["pos"]) for r in
                positions.select(["seq_id", "pos"]).to_pylist()}) == positions.num_rows
    # nothing on disk beyond the committed parts
    listed = {p.name for p in seqatlas.Atlas(victim).part_paths("positions")}
    assert {p.name for p in (victim / "positions").iterdir()} == listed

    parts_before = {p: p.stat().st_mtime_ns for p in victim.rglob("*.parquet")}
    again = seqatlas.ingest(fasta, atlas=victim, model=str(medium_esm), unit_tokens=3000,
                            progress=False)
    assert again.units_scored == 0 and again.units_skipped == again.units_total
    assert {p: p.stat().st_mtime_ns for p in victim.rglob("*.parquet")} == parts_before


def test_other_model_or_parameters_are_refused(tmp_path, tiny_esm, tiny_bert):
    fasta = write_fasta(tmp_path / "a.fa", {"a": random_protein(20, seed=1)})
    common = {"workers": 0, "progress": False}
    seqatlas.ingest(fasta, atlas=tmp_path / "x", model=str(tiny_esm), **common)
    with pytest.raises(AtlasMismatchError, match="likelihood: atlas 'exact', now 'fast'"):
        seqatlas.ingest(fasta, atlas=tmp_path / "x", model=str(tiny_esm), likelihood="fast",
                        **common)
    with pytest.raises(AtlasMismatchError, match="model"):
        seqatlas.ingest(fasta, atlas=tmp_path / "x", model=str(tiny_bert), **common)
    code = main(["ingest", str(fasta), "--atlas", str(tmp_path / "x"), "--model",
                 str(tiny_esm), "--window", "10", "--workers", "0", "--no-progress"])
    assert code == 1


def test_second_input_extends_the_atlas(tmp_path, tiny_esm):
    a = write_fasta(tmp_path / "a.fa", {"a1": random_protein(20, 1), "a2": random_protein(9, 2)})
    b = write_fasta(tmp_path / "b.fa", {"b1": random_protein(15, 3)})
    common = {"model": str(tiny_esm), "workers": 0, "progress": False}
    seqatlas.ingest(a, atlas=tmp_path / "x", **common)
    seqatlas.ingest([a, b], atlas=tmp_path / "x", **common)
    atlas = seqatlas.Atlas(tmp_path / "x")
    seqs = atlas.sequences().to_pylist()
    assert [(s["seq_id"], s["ordinal"], s["global_start"]) for s in seqs] == [
        ("a1", 0, 0), ("a2", 1, 20), ("b1", 2, 29)]
    tokens = atlas.tokens(columns=["token_id"])["token_id"].to_pylist()
    assert sorted(tokens) == list(range(44))
    assert len(atlas.manifest["inputs"]) == 2
    clash = write_fasta(tmp_path / "c.fa", {"a1": "MKV"})
    with pytest.raises(seqatlas.SeqAtlasError, match="already in the atlas"):
        seqatlas.ingest(clash, atlas=tmp_path / "x", **common)


def test_failing_unit_is_retried_then_reported(tmp_path, tiny_esm, monkeypatch):
    from seqatlas.scoring.scorer import Scorer

    records = {"good1": random_protein(30, 1), "bad": random_protein(30, 2),
               "good2": random_protein(30, 3)}
    fasta = write_fasta(tmp_path / "f.fa", records)
    original, calls = Scorer.score, []

    def flaky(self, jobs):
        if any(j.seq_id == "bad" for j in jobs):
            calls.append(1)
            raise RuntimeError("CUDA out of memory (simulated)")
        return original(self, jobs)

    monkeypatch.setattr(Scorer, "score", flaky)
    options = {"model": str(tiny_esm), "workers": 0, "progress": False, "unit_tokens": 500}
    with pytest.raises(IngestError) as exc:
        seqatlas.ingest(fasta, atlas=tmp_path / "x", max_retries=2, **options)
    assert "bad" in str(exc.value) and "out of memory" in str(exc.value)
    assert len(calls) == 3  # first try + 2 retries
    done = seqatlas.Atlas(tmp_path / "x").positions()
    assert set(done["seq_id"].to_pylist()) == {"good1", "good2"}
    monkeypatch.setattr(Scorer, "score", original)
    report = seqatlas.ingest(fasta, atlas=tmp_path / "x", max_retries=2, **options)
    assert report.units_scored == 1 and report.units_skipped == report.units_total - 1
    assert seqatlas.Atlas(tmp_path / "x").positions().num_rows == 90


@pytest.mark.parametrize("compress", [False, True])
def test_ingest_reads_the_input_once_to_validate_and_once_to_score(tmp_path, tiny_esm,
                                                                    monkeypatch, compress):
    text = b"".join(f">s{i}\n{random_protein(30 + i, seed=i)}\n".encode() for i in range(3))
    raw = gzip.compress(text) if compress else text
    fasta = tmp_path / ("in.fa.gz" if compress else "in.fa")
    fasta.write_bytes(raw)
    opened, real_open = [], builtins.open

    def counting_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and Path(file).resolve() == fasta.resolve():
            opened.append(file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    options = {"model": str(tiny_esm), "kind": "protein", "workers": 0, "progress": False}
    first = seqatlas.ingest(fasta, atlas=tmp_path / "x", **options)
    assert first.units_scored == first.units_total > 0
    assert len(opened) == 2  # one validating, hashing scan + the scoring stream
    (recorded,) = seqatlas.Atlas(tmp_path / "x").manifest["inputs"]
    assert (recorded["sha256"], recorded["size"]) == (hashlib.sha256(raw).hexdigest(), len(raw))
    opened.clear()
    again = seqatlas.ingest(fasta, atlas=tmp_path / "x", **options)
    assert again.units_scored == 0 and again.units_skipped == again.units_total
    assert len(opened) == 1  # nothing to score: the scan only


def test_scan_input_records_hashes_and_n_runs(tmp_path):
    from seqatlas.scoring.plan import scan_input

    text = b">a one\nACgtnnnnNNNNac\nGT\n>b\nNNNNNN\n"
    fasta = tmp_path / "d.fa.gz"
    fasta.write_bytes(gzip.compress(text))
    seen: set[str] = set()
    plan = scan_input(fasta, "dna", seen, skip_n_runs=5)
    assert (plan.size, plan.sha256) == (fasta.stat().st_size,
                                        hashlib.sha256(fasta.read_bytes()).hexdigest())
    assert [(s.seq_id, s.description, s.length, s.sha1, s.skip_runs) for s in plan.sequences] == [
        ("a", "one", 16, hashlib.sha1(b"ACGTNNNNNNNNACGT").hexdigest(), [(4, 12)]),
        ("b", "", 6, hashlib.sha1(b"NNNNNN").hexdigest(), [(0, 6)])]
    assert seen == {"a", "b"}
    protein = tmp_path / "p.fa"
    protein.write_bytes(b">p\nMNNNNNNK\n")
    (seq,) = scan_input(protein, "protein", set(), skip_n_runs=5).sequences
    assert seq.skip_runs == []


BAD_FASTA = {
    "no_header.fa": (b"MKTAYIAK\n>a\nMK\n", 1, None),
    "empty_record.fa": (b">a\nMKV\n>b\n>c\nMK\n", 3, "b"),
    "duplicate.fa": (b">a\nMKV\n>b\nMK\n>a x\nMK\n", 5, "a"),
    "illegal.fa": (b">a\nMKV\n>b\nMKV\nMK1V\n", 5, "b"),
    "binary.fa": (b">a\nMK\x00\x01\x02V\n", 2, None),
    "no_id.fa": (b">a\nMK\n> \nMK\n", 3, None),
    "empty.fa": (b"", None, None),
}


@pytest.mark.parametrize("name", sorted(BAD_FASTA))
def test_bad_fasta_gives_clear_error_and_writes_nothing(tmp_path, tiny_esm, capsys, name):
    data, line, record = BAD_FASTA[name]
    good = write_fasta(tmp_path / "good.fa", {"ok": "MKTAYIAKQR"})
    bad = tmp_path / name
    bad.write_bytes(data)
    code = main(["ingest", str(good), str(bad), "--atlas", str(tmp_path / "atlas"), "--model",
                 str(tiny_esm), "--kind", "protein", "--workers", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("Error:") and "Traceback" not in err
    assert name in err
    if line is not None:
        assert f"line {line}" in err
    if record is not None:
        assert f"'{record}'" in err
    assert not (tmp_path / "atlas").exists()


def test_cli_and_api_give_the_same_atlas(tmp_path, tiny_esm, capsys):
    fasta = write_fasta(tmp_path / "p.fa", {"x": random_protein(50, 1), "y": "mktAYIAK"})
    code = main(["ingest", str(fasta), "--atlas", str(tmp_path / "cli"), "--model", str(tiny_esm),
                 "--likelihood", "fast", "--window", "20", "--overlap", "6", "--layer", "1",
                 "--batch-tokens", "300", "--workers", "0", "--no-progress"])
    assert code == 0
    seqatlas.ingest(fasta, atlas=tmp_path / "api", model=str(tiny_esm), likelihood="fast",
                    window=20, overlap=6, layer=1, batch_tokens=300, workers=0, progress=False)
    cli, api = seqatlas.Atlas(tmp_path / "cli"), seqatlas.Atlas(tmp_path / "api")
    assert cli.manifest["scoring"] == api.manifest["scoring"]
    assert cli.manifest["model"] == api.manifest["model"]
    for table in ("positions", "tokens"):
        assert _rows(tmp_path / "cli", table).equals(_rows(tmp_path / "api", table))
    y = [r for r in _rows(tmp_path / "api", "positions").to_pylist() if r["seq_id"] == "y"]
    assert [r["soft_masked"] for r in y] == [True] * 3 + [False] * 5
    assert "".join(r["ref"] for r in y) == "MKTAYIAK"
    capsys.readouterr()
    assert main(["info", str(tmp_path / "cli"), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == json.loads(json.dumps(seqatlas.info(tmp_path / "cli")))
    assert shown["tables"]["positions"]["rows"] == 58
    assert main(["info", str(tmp_path / "cli")]) == 0
    text = capsys.readouterr().out
    assert "positions" in text and "58" in text and "fast" in text


def test_help_and_info_do_not_import_torch(tmp_path, tiny_esm):
    fasta = write_fasta(tmp_path / "p.fa", {"x": "MKTAYIAK"})
    seqatlas.ingest(fasta, atlas=tmp_path / "a", model=str(tiny_esm), workers=0, progress=False)
    code = (
        "import sys\n"
        "from seqatlas.cli.main import main\n"
        "for argv in (['--help'], ['ingest', '--help'], ['info', sys.argv[1]]):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = [m for m in ('torch', 'ray', 'transformers') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a")], capture_output=True,
                         text=True, cwd=ROOT)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr
    assert "--likelihood" in out.stdout and "exact" in out.stdout


def test_missing_atlas_and_model_errors(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nope")]) == 1
    assert "not an atlas" in capsys.readouterr().err
    fasta = write_fasta(tmp_path / "p.fa", {"x": "MKTAYIAK"})
    assert main(["ingest", str(fasta), "--atlas", str(tmp_path / "a"), "--model",
                 str(tmp_path / "no_such_model"), "--workers", "0"]) == 1
    assert "no_such_model" in capsys.readouterr().err


@pytest.mark.ray
def test_ray_workers_match_in_process_scoring(tmp_path, tiny_esm, ray_session):
    records = {f"s{i}": random_protein(25 + 11 * i, seed=i) for i in range(5)}
    fasta = write_fasta(tmp_path / "r.fa", records)
    options = {"model": str(tiny_esm), "progress": False, "unit_tokens": 600,
               "likelihood": "fast"}
    report = seqatlas.ingest(fasta, atlas=tmp_path / "ray", workers=2, cpus_per_worker=1,
                             **options)
    assert report.units_scored == report.units_total > 2
    assert report.positions_scored == sum(len(s) for s in records.values())
    seqatlas.ingest(fasta, atlas=tmp_path / "local", workers=0, **options)
    via_ray, local = _rows(tmp_path / "ray", "positions"), _rows(tmp_path / "local", "positions")
    assert via_ray.select(["seq_id", "pos", "ref"]).equals(local.select(["seq_id", "pos", "ref"]))
    for column in ("logp", "logp_unmasked", "entropy"):
        assert via_ray[column].to_numpy() == pytest.approx(local[column].to_numpy(), abs=1e-5)
    assert ray_session.is_initialized()  # ingest leaves a Ray it did not start running
