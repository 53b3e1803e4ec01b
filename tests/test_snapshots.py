"""Snapshot reads under concurrent writes: readers and a writer in separate processes,
interleaved at every step the writer takes on disk (tests/step_driver.py pauses it before
each rename, link and removal under the atlas). At each pause, a reader opened just then
and readers opened several commits earlier answer the same queries; every answer must be
the answer of the version that reader opened, for every version any reader saw, while an
ingest commits units, an index is rebuilt, parts are compacted and a damaged part is
repaired. No reader takes a lock, so the writer never waits for one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import seqatlas
from seqatlas.store import AtlasReader
from tests.conftest import make_esm, random_protein, write_fasta

HERE = Path(__file__).parent
ROOT = HERE.parent
STEP_TIMEOUT = 300.0
pytestmark = pytest.mark.slow


class Reader:
    """A reader process (tests/snapshot_reader.py)."""

    def __init__(self, atlas: Path, env: dict):
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "snapshot_reader.py"), str(atlas)], cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.version: int | None = None

    def _ask(self, op: str) -> dict:
        self.process.stdin.write(json.dumps({"op": op}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, f"the reader process died (exit {self.process.poll()})"
        return json.loads(line)

    def open(self) -> int:
        self.version = self._ask("open")["version"]
        return self.version

    def answer(self) -> tuple[int, dict]:
        reply = self._ask("answer")
        return reply["version"], reply["answers"]

    def close(self) -> None:
        try:
            self.process.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.process.stdin.close()
        except OSError:
            pass
        self.process.wait(timeout=60)


def _canonical(answers: dict) -> str:
    """The answers with error messages left out (the class of an error is the answer)."""
    return json.dumps({k: {"error": v["error"]} if isinstance(v, dict) and "error" in v else v
                       for k, v in answers.items()}, sort_keys=True)


class Interleaving:
    """Runs writing commands step by step, checking readers at every step."""

    def __init__(self, atlas: Path, tmp_path: Path):
        self.atlas = atlas
        self.tmp = tmp_path
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
        self.references: dict[int, str] = {}  # version -> canonical answers
        self.committed: dict[int, str] = {}  # version -> its answers as committed (if known)
        self.examples: dict[int, dict] = {}
        self.observations = 0
        self.steps_seen: list[str] = []

    def check(self, version: int, answers: dict, where: str) -> None:
        positions = answers["positions"]
        if "error" not in positions:  # never half a commit
            assert positions["rows"] == positions["committed_rows"], (where, positions)
        canonical = _canonical(answers)
        self.observations += 1
        if version in self.references:
            assert canonical in (self.references[version], self.committed.get(version)), (
                f"{where}: version {version} answered\n{canonical}\nbut earlier\n"
                f"{self.references[version]}")
        else:
            self.references[version] = canonical
            self.examples[version] = answers

    def run(self, name: str, command: list[str], *, keep_old: int = 2) -> int:
        """Run ``command`` through the step driver; returns its number of steps."""
        control = self.tmp / f"control-{name}"
        control.mkdir()
        writer = subprocess.Popen(
            [sys.executable, str(HERE / "step_driver.py"), str(control), str(self.atlas), "--",
             *command], cwd=ROOT, env=self.env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        fresh = Reader(self.atlas, self.env)
        olds = [Reader(self.atlas, self.env)]
        olds[0].open()  # opened before the writer's first step
        step = 1
        try:
            while True:
                deadline = time.monotonic() + STEP_TIMEOUT
                marker = control / f"step-{step}.json"
                while not marker.exists() and not (control / "done.json").exists():
                    assert writer.poll() is None or marker.exists() or \
                        (control / "done.json").exists(), writer.stdout.read()
                    assert time.monotonic() < deadline, f"{name}: no step {step}"
                    time.sleep(0.005)
                if not marker.exists():
                    break
                event = json.loads(marker.read_text())
                where = f"{name} step {step} ({event['event']} {event['path']})"
                self.steps_seen.append(where)
                version = fresh.open()  # a reader started during the write
                self.check(*fresh.answer(), where + " fresh")
                for old in olds:  # readers that opened commits ago, answering now
                    got, answers = old.answer()
                    assert got == old.version
                    self.check(got, answers, where + f" opened at {old.version}")
                if version != olds[-1].version:
                    olds.append(fresh)
                    fresh = Reader(self.atlas, self.env)
                    while len(olds) > keep_old + 1:  # keep the first and the latest
                        olds.pop(1).close()
                (control / f"go-{step}").touch()
                step += 1
            output = writer.communicate(timeout=STEP_TIMEOUT)[0]
            assert writer.returncode == 0, output[-3000:]
            for old in olds:  # and once more after the writer has finished
                got, answers = old.answer()
                self.check(got, answers, f"{name} after the end, opened at {old.version}")
        finally:
            if writer.poll() is None:
                writer.kill()
            for reader in [fresh, *olds]:
                reader.close()
        return step - 1


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("snapshots")
    model = make_esm(root / "esm", context_tokens=34, layers=2)
    write_fasta(root / "a.fa", {f"p{i}": random_protein(30 + 3 * i, i) for i in range(3)})
    write_fasta(root / "b.fa", {f"q{i}": random_protein(28 + 2 * i, 50 + i)
                                for i in range(4)})
    atlas = root / "atlas"
    seqatlas.ingest(root / "a.fa", atlas=atlas, model=str(model), workers=0, progress="none",
                    unit_tokens=64)
    seqatlas.build_index(atlas, name="default", type="flat")
    return root


def test_readers_see_one_committed_version_at_every_step_of_every_writer(base, tmp_path):
    atlas = base / "atlas"
    run = Interleaving(atlas, tmp_path)
    start = AtlasReader(atlas).version

    # an ingest commits units one by one
    steps = run.run("ingest", ["ingest", str(base / "b.fa"), "--atlas", str(atlas),
                               "--workers", "0", "--unit-tokens", "64", "--progress", "none"])
    after_ingest = AtlasReader(atlas).version
    assert after_ingest - start >= 3 and steps >= 3 * (after_ingest - start)
    seen = {v: json.loads(c) for v, c in run.references.items()}
    assert set(seen) == set(range(start, after_ingest + 1))  # every version was read
    rows = [seen[v]["positions"]["rows"] for v in sorted(seen)]
    assert rows == sorted(rows) and rows[0] < rows[-1]  # never backwards
    assert [seen[v]["positions"]["seqs"] for v in sorted(seen)][-1] == 7

    # an index rebuilt while readers search the old build
    run.run("index", ["index", "build", "--atlas", str(atlas), "--type", "flat"])
    # compaction swaps every part for new ones: earlier readers still read the old
    run.run("compact", ["compact", "--atlas", str(atlas)])
    final = AtlasReader(atlas).version
    assert final > after_ingest + 1
    answers = json.loads(run.references[final])
    assert answers["positions"] == json.loads(run.references[after_ingest])["positions"]
    assert len(answers["knn"]) == 4 and answers["anomalies"] != {"error": "KeyError"}
    for version, text in run.references.items():  # no reader ever failed
        assert "error" not in text, (version, run.examples[version])
    # every step of each writer was interleaved with readers, and readers answered often
    assert run.observations >= 3 * len(run.steps_seen)


def test_a_repair_is_seen_whole_by_readers(base, tmp_path):
    """Readers of the damaged version get the damage error (that version is damaged) until
    the repair has written the part again with the bytes that version committed (then they
    read them: their answer as committed); readers of the repaired version get the answers
    from before the damage."""
    import shutil

    atlas = tmp_path / "atlas"
    shutil.copytree(base / "atlas", atlas)
    run = Interleaving(atlas, tmp_path)
    reader = Reader(atlas, run.env)
    before_version = reader.open()
    _, before = reader.answer()
    reader.close()
    part = atlas / "positions" / sorted(AtlasReader(atlas).manifest.table_parts("positions"))[0]
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    run.committed[before_version] = _canonical(before)
    run.run("repair", ["repair", "--atlas", str(atlas), "--workers", "0", "--progress",
                       "none"])
    damaged = json.loads(run.references[before_version])
    assert damaged["positions"] == {"error": "AtlasDamagedError"}
    final = AtlasReader(atlas).version
    assert final > before_version
    repaired = json.loads(run.references[final])
    assert repaired["positions"]["rows"] == before["positions"]["rows"]
    assert repaired["positions"]["sum"] == pytest.approx(before["positions"]["sum"], abs=1e-3)
    assert repaired["tables"] == before["tables"]
