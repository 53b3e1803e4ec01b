"""Atlases on object storage: ``s3://`` on an S3 endpoint served on 127.0.0.1 by moto (the
``test`` extra), through ingest (in this process and on Ray workers that write their own
parts), annotate, query (DuckDB over pyarrow datasets, no file access), index build and knn,
and an ingest killed mid-run that resumes against the same bucket."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import seqatlas
from seqatlas.cli.main import main
from seqatlas.errors import AtlasError
from seqatlas.locations import is_remote, remote_location
from seqatlas.store import AtlasReader, AtlasWriter
from tests.conftest import make_esm, random_protein, write_fasta

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("moto.server", reason="the S3 tests need moto's server (the test extra)")
OPTIONS = {"progress": False, "unit_tokens": 400}


@pytest.fixture(scope="module")
def s3():
    from tests.s3_endpoint import local_s3_endpoint

    with local_s3_endpoint() as endpoint:
        yield endpoint


def _fasta(tmp_path: Path, n: int = 6) -> Path:
    return write_fasta(tmp_path / "in.fa", {f"p{i}": random_protein(40 + 9 * i, seed=i)
                                            for i in range(n)})


def _parts(atlas) -> dict:
    manifest = AtlasReader(atlas).manifest
    return {table: {name: (p.rows, p.sha256) for name, p in parts.items()}
            for table, parts in manifest.parts.items() if parts}


def test_uris_name_local_or_remote_locations(s3):
    assert not is_remote("atlas") and not is_remote("/tmp/a") and not is_remote(Path("s3:x"))
    assert not is_remote("file:///tmp/a") and not is_remote("C:\\atlas")
    assert is_remote("s3://bucket/prefix") and is_remote("memory://x")
    location = remote_location("s3://bucket/some/prefix/")
    assert (location.root, str(location)) == ("bucket/some/prefix", "s3://bucket/some/prefix/")
    assert (location / "positions").root == "bucket/some/prefix/positions"
    with pytest.raises(AtlasError, match="unknown query parameter"):
        remote_location("s3://bucket/p?colour=red")
    with pytest.raises(AtlasError, match="name a bucket"):
        remote_location("s3://")


def test_the_whole_job_on_s3_equals_a_local_atlas(tmp_path, tiny_esm, s3, capsys):
    fasta = _fasta(tmp_path)
    uri = s3.bucket("whole") + "/atlas"
    for atlas in (uri, tmp_path / "local"):
        report = seqatlas.ingest(fasta, atlas=atlas, model=str(tiny_esm), workers=0, **OPTIONS)
        assert report.units_scored > 3
    assert _parts(uri) == _parts(tmp_path / "local")
    keys = s3.keys("whole")
    assert "atlas/atlas.json" in keys and not any(".lock" in k or ".tmp-" in k for k in keys)
    assert not any(k.startswith("atlas/.staging/") and not k.endswith("/") for k in keys)

    bed = tmp_path / "r.bed"
    bed.write_text("p1\t3\t20\trep1\np2\t0\t10\trep2\n")
    for atlas in (uri, tmp_path / "local"):
        assert seqatlas.annotate(bed, atlas=atlas, progress=False)["repeats"] == 2
    sql = ("SELECT r.name, count(*) AS n, round(avg(p.logp), 6) AS mean FROM positions p "
           "JOIN repeats r ON p.seq_id = r.seq_id AND p.pos >= r.start AND p.pos < r.\"end\" "
           "GROUP BY r.name ORDER BY r.name")
    remote = seqatlas.query.sql(uri, sql).to_pylist()
    assert remote == seqatlas.query.sql(tmp_path / "local", sql).to_pylist()
    assert [r["n"] for r in remote] == [17, 10]
    embeddings = "SELECT token_id, embedding FROM tokens ORDER BY token_id LIMIT 3"
    assert seqatlas.query.sql(uri, embeddings).equals(
        seqatlas.query.sql(tmp_path / "local", embeddings))

    metas = [seqatlas.build_index(a, type="flat") for a in (uri, tmp_path / "local")]
    assert metas[0]["sha256"] == metas[1]["sha256"] and metas[0]["ntotal"] == 375
    assert f"atlas/index/default/{metas[0]['dir']}/index.faiss" in s3.keys("whole")
    hits = [seqatlas.query.knn(a, at="p1:5", k=3).to_pylist() for a in (uri, tmp_path / "local")]
    assert hits[0] == hits[1] and len(hits[0]) == 3

    # the CLI takes the URI as --atlas like a directory
    assert main(["query", "sql", "--atlas", uri, "SELECT count(*) AS n FROM positions",
                 "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"n": 375}]


def test_a_remote_atlas_query_reads_no_file(tmp_path, tiny_esm, s3):
    uri = s3.bucket("sandbox") + "/atlas"
    seqatlas.ingest(write_fasta(tmp_path / "p.fa", {"x": "MKTAYIAKQRQISFVKSHFSRQ"}), atlas=uri,
                    model=str(tiny_esm), workers=0, **OPTIONS)
    secret = tmp_path / "secret.csv"
    secret.write_text("a\n1\n")
    for statement in (f"SELECT * FROM read_csv('{secret}')",
                      f"SELECT * FROM read_parquet('{tmp_path}/*.parquet')",
                      "SELECT * FROM read_text('/etc/hostname')"):
        with pytest.raises(seqatlas.SeqAtlasError):
            seqatlas.query.sql(uri, statement)


def test_a_second_writer_is_refused_and_a_dead_ones_lock_is_taken_over(tmp_path, tiny_esm,
                                                                        s3):
    uri = s3.bucket("locks") + "/atlas"
    seqatlas.ingest(write_fasta(tmp_path / "p.fa", {"x": "MKTAYIAKQR"}), atlas=uri,
                    model=str(tiny_esm), workers=0, **OPTIONS)
    with AtlasWriter(uri):
        with pytest.raises(AtlasError, match="being written by another seqatlas process"):
            AtlasWriter(uri)
    location = remote_location(uri)
    assert location.info(".lock") is None  # released on close
    # a lock left by a process of this machine that died is not waited for
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    import socket

    location.write_bytes(json.dumps({"owner": "x", "host": socket.gethostname(),
                                     "pid": int(dead), "refreshed": time.time()}).encode(),
                         ".lock")
    with AtlasWriter(uri) as writer:
        assert writer.manifest.units
    # a fresh lock of another machine is
    location.write_bytes(json.dumps({"owner": "y", "host": "elsewhere", "pid": 1,
                                     "refreshed": time.time()}).encode(), ".lock")
    with pytest.raises(AtlasError, match="elsewhere"):
        AtlasWriter(uri)
    location.delete(".lock")


def test_a_version_committed_behind_a_writers_back_is_not_overwritten(tmp_path, tiny_esm, s3):
    from seqatlas.store.journal import entry_name

    uri = s3.bucket("race") + "/atlas"
    seqatlas.ingest(write_fasta(tmp_path / "p.fa", {"x": "MKTAYIAKQR"}), atlas=uri,
                    model=str(tiny_esm), workers=0, **OPTIONS)
    location = remote_location(uri)
    with AtlasWriter(uri) as writer:
        # as a writer that took a stale lock over and committed the next version
        other = {"version": writer.version + 1, "time": "2026-01-01T00:00:00+00:00",
                 "operation": "cache", "actions": [{"set": {"field": "cache", "path": ["y"],
                                                            "value": 2}}]}
        location.write_bytes(json.dumps(other).encode(), entry_name(writer.version + 1))
        with pytest.raises(AtlasError, match="committed by another process"):
            writer.set_cache(("x",), 1)
    state = AtlasReader(uri).manifest
    assert state.cached("y") == 2 and state.cached("x") is None


@pytest.mark.ray
def test_ray_workers_write_their_parts_to_s3(tmp_path, tiny_esm, s3, ray_session):
    fasta = _fasta(tmp_path)
    uri = s3.bucket("workers") + "/atlas"
    for atlas in (uri, tmp_path / "local"):
        seqatlas.ingest(fasta, atlas=atlas, model=str(tiny_esm), workers=2, cpus_per_worker=1,
                        **OPTIONS)
    assert _parts(uri) == _parts(tmp_path / "local")
    (run,) = AtlasReader(uri).manifest.runs
    assert run["write_parts"] == "workers" and run["executor"] == "ray"
    assert run["driver_bytes"]["received"] < 4096 * run["units"]
    assert not any(".tmp-" in k for k in s3.keys("workers"))


@pytest.mark.slow
def test_an_ingest_killed_mid_run_resumes_against_the_same_bucket(tmp_path, s3):
    model = make_esm(tmp_path / "medium", context_tokens=64, hidden=128, layers=4, seed=2)
    fasta = write_fasta(tmp_path / "in.fa", {f"p{i}": random_protein(60 + 7 * i, seed=i)
                                             for i in range(16)})
    uri = s3.bucket("resume") + "/atlas"
    args = ["--model", str(model), "--unit-tokens", "3000", "--no-progress", "--workers", "0"]
    command = [sys.executable, "-m", "seqatlas.cli.main", "ingest", str(fasta)]
    reference = subprocess.run([*command, "--atlas", str(tmp_path / "ref"), *args], cwd=ROOT,
                               capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr
    total = len(AtlasReader(tmp_path / "ref").manifest.units)

    victim = subprocess.Popen([*command, "--atlas", uri, *args], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True, env=dict(os.environ))
    location = remote_location(uri)
    deadline = time.time() + 120
    while time.time() < deadline:  # the state as a reader sees it: atlas.json plus the log
        try:
            if len(AtlasReader(uri).manifest.units) >= 3:
                break
        except AtlasError:
            pass  # not created yet
        time.sleep(0.05)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    committed = len(AtlasReader(uri).manifest.units)
    assert 2 < committed < total, "the kill must land half way through"
    assert location.info(".lock") is not None  # the dead writer's lock is still there

    resumed = subprocess.run([*command, "--atlas", uri, *args, "--json"], cwd=ROOT,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["units_skipped"] == committed - 1  # less the sequences
    assert _parts(uri) == _parts(tmp_path / "ref")
    committed_keys = {f"atlas/{table}/{name}" for table, parts in _parts(uri).items()
                      for name in parts}
    data_keys = {k for k in s3.keys("resume") if k.endswith(".parquet")}
    assert data_keys == committed_keys  # nothing uncommitted left in the bucket
    positions = seqatlas.Atlas(uri).positions(["seq_id", "pos"])
    assert positions.num_rows == len(set(zip(positions["seq_id"].to_pylist(),
                                             positions["pos"].to_pylist())))


@pytest.mark.slow
def test_the_readme_clusters_commands_run_against_a_local_endpoint(tmp_path, s3):
    """The Clusters section's commands, as written, on a bucket of the local endpoint (the
    environment points at it): every stage reads and writes s3:// and no local atlas."""
    import gzip

    from seqatlas.examples import demo_dna
    from seqatlas.fasta import read_fasta
    from tests.test_readme import _blocks

    (chrx,) = read_fasta(demo_dna(), kind="dna")
    with gzip.open(tmp_path / "genome.fa.gz", "wt") as fh:
        fh.write(f">X\n{chrx.sequence[:3000].decode()}\n")
    s3.bucket("atlases")
    (block,) = _blocks("## Clusters", "bash")
    outputs = []
    for line in block.strip().splitlines():
        assert "s3://atlases/genome" in line and "--address" not in line
        done = subprocess.run(line, shell=True, cwd=tmp_path, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
        outputs.append(done.stdout)
    manifest = AtlasReader("s3://atlases/genome").manifest
    assert sum(p.rows for p in manifest.parts["positions"].values()) == 3000
    assert manifest.runs[-1]["write_parts"] == "workers"
    assert manifest.runs[-1]["executor"] == "ray" and manifest.runs[-1]["units_sent_back"] == {}
    assert "seq_id" in outputs[2]  # the anomalies table's header
    bed = (tmp_path / "anomalies.bed").read_text().splitlines()
    assert bed and all(row.split("\t")[0] == "X" for row in bed)
    hits = [row for row in outputs[5].splitlines() if "X" in row]
    assert len(hits) == 5
    keys = s3.keys("atlases")
    assert any(re.fullmatch(r"genome/index/default/b-[0-9a-f]{16}/index\.faiss", k)
               for k in keys) and "genome/atlas.json" in keys
    assert "<html" in (tmp_path / "report.html").read_text()[:200].lower()
    assert not [p for p in tmp_path.iterdir()
                if p.name not in ("genome.fa.gz", "anomalies.bed", "report.html")]


@pytest.mark.slow
def test_every_command_that_reads_an_atlas_takes_an_s3_uri(tmp_path, s3, capsys):
    """info, verify, repair, probe, plot and report on a bucket's atlas, through the CLI, with
    the same results as on a local copy of the same ingest."""
    from seqatlas.examples import demo_dna
    from seqatlas.fasta import read_fasta

    (chrx,) = read_fasta(demo_dna(), kind="dna")
    fasta = write_fasta(tmp_path / "g.fa", {"X": chrx.sequence[:2000].decode()})
    uri, local = s3.bucket("commands") + "/atlas", str(tmp_path / "local")
    for atlas in (uri, local):
        seqatlas.ingest(fasta, atlas=atlas, model="dnabert6-tiny", likelihood="unmasked",
                        workers=0, progress=False)
        seqatlas.annotate(atlas=atlas, detect=True, progress=False)
    results = {}
    for atlas in (uri, local):
        out = tmp_path / ("out-remote" if atlas == uri else "out-local")
        out.mkdir()
        for argv in (["info", atlas, "--json"], ["verify", "--atlas", atlas, "--json"],
                     ["repair", "--atlas", atlas, "--no-progress"],
                     ["plot", "track", "--atlas", atlas, "--region", "X:100-900",
                      "-o", str(out / "track.png")],
                     ["probe", "icl", "--atlas", atlas, "--method", "mask", "--workers", "0",
                      "--no-progress"],
                     ["report", "--atlas", atlas, "-o", str(out / "report.html")]):
            assert main(argv) == 0, argv
        captured = capsys.readouterr().out
        results[atlas] = captured
        assert (out / "track.png").stat().st_size > 1000
        assert "look-up" in (out / "report.html").read_text().lower()
    info = json.loads(results[uri][:results[uri].index("\n}\n") + 2])
    assert info["path"] == uri and info["kind"] == "dna"
    icl = "SELECT count(*) AS n, round(sum(net_gain), 6) AS s FROM ablations"
    assert seqatlas.query.sql(uri, icl).to_pylist() == seqatlas.query.sql(local, icl).to_pylist()
    assert seqatlas.query.sql(uri, icl).to_pylist()[0]["n"] > 0
    assert not [k for k in s3.keys("commands") if ".tmp-" in k or k.endswith(".lock")]


def test_a_damaged_part_in_the_bucket_is_refused_by_name_and_repaired(tmp_path, tiny_esm, s3):
    fasta = _fasta(tmp_path, n=3)
    uri = s3.bucket("damage") + "/atlas"
    seqatlas.ingest(fasta, atlas=uri, model=str(tiny_esm), workers=0, **OPTIONS)
    before = _parts(uri)
    location = remote_location(uri)
    name = sorted(before["positions"])[0]
    data = location.read_bytes("positions", name)
    for damaged, problem in ((data[:100] + bytes(len(data) - 100), "SHA-256 differs"),
                             (data[:-10], "bytes in the store")):
        location.write_bytes(damaged, "positions", name)
        report = seqatlas.verify(uri, inputs=False)
        assert not report["ok"] and [d["part"] for d in report["damaged"]] == [name]
        assert problem in report["damaged"][0]["problem"]
        with pytest.raises(seqatlas.SeqAtlasError, match=name):
            seqatlas.query.sql(uri, "SELECT count(*) FROM positions")
        assert seqatlas.repair(uri, workers=0, progress=False)["rescored_units"] == 1
        assert _parts(uri) == before and seqatlas.verify(uri)["ok"]
        assert location.read_bytes("positions", name) == data
