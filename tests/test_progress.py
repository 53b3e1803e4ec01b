"""Progress that tells the truth: log lines at an interval outside a terminal, counts that
rise within a work unit (in process and from a Ray actor), exact final counts without the
positions of skipped N runs, and --progress none|log|auto on the CLI."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
import warnings
from collections import deque
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import seqatlas
from seqatlas import progress as progress_module
from seqatlas.cli import options
from seqatlas.cli.main import main
from seqatlas.errors import ConfigError
from seqatlas.progress import INTERVAL_VARIABLE, Meter, check_progress, progress_mode
from seqatlas.scoring import pipeline
from seqatlas.scoring.workers import run_units
from tests.conftest import random_protein, write_fasta
from tests.dna_models import make_single

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^scoring: ([\d,]+)/([\d,]+) positions \((\d+)%\), (?:[\d,]+|--) "
                  r"positions/s, elapsed \d+:\d\d:\d\d, (ETA (?:\d+:\d\d:\d\d|--)|done|stopped)$")


def _lines(text: str) -> list[tuple[int, int, str]]:
    """(done, total, end) of each log line of the ingest in ``text``; other lines ignored."""
    found = []
    for line in text.splitlines():
        match = LINE.match(line)
        if match:
            found.append((int(match[1].replace(",", "")), int(match[2].replace(",", "")),
                          match[4]))
    return found


# --- the meter -----------------------------------------------------------------------------

class _Clock:
    def __init__(self, now: float):
        self.now = now

    def monotonic(self) -> float:
        return self.now


def test_log_line_says_count_percent_rate_elapsed_and_eta(monkeypatch):
    clock = _Clock(100.0)
    monkeypatch.setattr(progress_module, "time", clock)
    meter = Meter(label="scoring", unit="positions", total=100_000, progress="log",
                  stream=io.StringIO())
    meter.started = 100.0
    assert meter.line() == ("scoring: 0/100,000 positions (0%), -- positions/s, elapsed "
                            "0:00:00, ETA --")
    clock.now = 110.0
    meter.advance(12_340)
    assert meter.line() == ("scoring: 12,340/100,000 positions (12%), 1,234 positions/s, "
                            "elapsed 0:00:10, ETA 0:01:11")
    clock.now = 3_700.0
    meter.advance(100_000 - 12_340)
    assert meter.line(end="done") == ("scoring: 100,000/100,000 positions (100%), 28 "
                                      "positions/s, elapsed 1:00:00, done")


def test_log_mode_prints_a_line_every_interval_and_a_last_one():
    stream = io.StringIO()
    with Meter(label="scoring", unit="positions", total=10, progress="log", interval=0.05,
               stream=stream) as meter:
        meter.advance(7)
        started = time.monotonic()
        time.sleep(0.4)
        slept = time.monotonic() - started
        meter.advance(3)
    lines = _lines(stream.getvalue())
    assert lines[-1] == (10, 10, "done")
    periodic = lines[:-1]
    # one line per 0.05 s while it slept (a loaded machine may run the thread late, never early)
    assert 3 <= len(periodic) <= slept / 0.05 + 1
    assert all(line[:2] == (7, 10) and line[2].startswith("ETA") for line in periodic[1:])
    assert stream.getvalue().count("\n") == len(lines)  # nothing else is written


def test_log_interval_from_the_environment(monkeypatch):
    monkeypatch.setenv(INTERVAL_VARIABLE, "0.25")
    assert Meter(label="x", unit="u", total=1, progress="log", stream=io.StringIO()
                 ).interval == 0.25
    monkeypatch.delenv(INTERVAL_VARIABLE)
    assert Meter(label="x", unit="u", total=1, progress="log", stream=io.StringIO()
                 ).interval == 10.0
    for bad in ("soon", "0", "-1", "inf"):
        monkeypatch.setenv(INTERVAL_VARIABLE, bad)
        with pytest.raises(ConfigError, match=INTERVAL_VARIABLE if bad == "soon" else
                           "positive number of seconds"):
            Meter(label="x", unit="u", total=1, progress="log", stream=io.StringIO())
    assert Meter(label="x", unit="u", total=1, progress="none").interval is None  # unread


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_modes_resolve_from_bools_names_and_the_stream():
    pipe, terminal = io.StringIO(), _Terminal()
    assert [progress_mode(value, pipe) for value in (True, "auto", False, "bar", "log", "none")
            ] == ["log", "log", "none", "bar", "log", "none"]
    assert [progress_mode(value, terminal) for value in (True, "auto", "log")] == \
        ["bar", "bar", "log"]
    assert progress_mode(options.Progress.none, terminal) == "none"  # the CLI's enum
    assert check_progress(True) == "auto" and check_progress(options.Progress.log) == "log"
    for bad in ("loud", 1, None, "Auto"):
        with pytest.raises(ConfigError, match="auto, bar, log, none"):
            check_progress(bad)


def test_bar_mode_draws_the_count():
    stream = _Terminal()
    with Meter(label="adding", unit="vectors", total=42, progress="bar", stream=stream) as m:
        m.advance(40)
        m.partial("k", 2)
    assert m.completed == 42
    assert "adding" in stream.getvalue() and "42/42" in stream.getvalue()


def test_none_mode_counts_and_writes_nothing():
    stream = _Terminal()
    with Meter(label="x", unit="u", total=5, progress="none", stream=stream) as meter:
        meter.advance(2)
        meter.partial("a", 2)
        meter.settle("a", 3)
    assert meter.completed == 5 and stream.getvalue() == ""


def test_a_retried_unit_is_counted_once():
    """Partial counts of a failed attempt are dropped; the commit's count replaces those of
    the attempt that succeeded."""

    class Flaky:
        capacity = 1

        def __init__(self):
            self.results, self.watcher, self.tries = deque(), None, 0

        @property
        def busy(self):
            return len(self.results)

        def watch(self, watcher):
            self.watcher = watcher

        def submit(self, token, payload, method="score"):
            self.tries += 1
            for tokens in (10, 20, 30):
                self.watcher(token, tokens)
            error = RuntimeError("worker died") if self.tries == 1 else None
            self.results.append((token, None if error else "rows", error))

        def next_result(self, timeout=None):
            return self.results.popleft()

    meter = Meter(label="scoring", unit="positions", total=100, progress="none")
    seen = []

    def partial(item, tokens):
        meter.partial(item[0], tokens)
        seen.append(meter.completed)

    def commit(item, result):
        meter.settle(item[0], 100)
        seen.append(meter.completed)

    executor = Flaky()
    run_units(executor, [("unit", "jobs")], method="score", commit=commit, max_retries=1,
              failed=None, partial=partial)
    assert executor.tries == 2
    assert seen == [10, 20, 30, 0, 10, 20, 30, 100]
    assert meter.completed == 100 and meter.in_flight == {}


# --- during an ingest ----------------------------------------------------------------------

class _Recording(Meter):
    """The ingest's meter, recording (kind, settled, completed) after each change."""

    made: list[_Recording] = []

    def __init__(self, **kwargs):
        super().__init__(**{**kwargs, "progress": "none"})
        self.events: list[tuple[str, int, int]] = []
        _Recording.made.append(self)

    def partial(self, key, n):
        super().partial(key, n)
        self.events.append(("partial", self.done, self.completed))

    def settle(self, key, n):
        super().settle(key, n)
        self.events.append(("settle", self.done, self.completed))


@pytest.fixture
def recording(monkeypatch):
    _Recording.made = []
    monkeypatch.setattr(pipeline, "Meter", _Recording)
    return _Recording.made


def _check_one_unit(report, meter: _Recording, *, least: int) -> list[int]:
    """The counts shown while the one unit was in flight (rising, below its total), then the
    exact count when it committed; returns the in-flight counts."""
    assert report.units_scored == 1 and meter.total == report.positions_scored
    assert meter.events[-1] == ("settle", report.positions_scored, report.positions_scored)
    before = [completed for kind, done, completed in meter.events[:-1]
              if kind == "partial" and done == 0 and completed > 0]
    assert len(before) >= least, meter.events
    assert before == sorted(before) and before[-1] < meter.total
    return before


@pytest.mark.parametrize("batch_tokens", [68, 1024])
def test_in_process_counts_rise_within_one_unit(tmp_path, tiny_esm, recording, batch_tokens):
    fasta = write_fasta(tmp_path / "p.fa", {"p": random_protein(90, seed=3)})
    report = seqatlas.ingest(fasta, atlas=tmp_path / "a", model=str(tiny_esm), workers=0,
                             unit_tokens=10**9, batch_tokens=batch_tokens, progress="none")
    assert report.positions_scored == 90  # the same whatever the batches
    before = _check_one_unit(report, recording[0], least=2)
    if batch_tokens == 68:  # two rows a batch: a count after nearly every one
        assert len(before) >= 40


def _slow_batches_worker():
    """The real scoring actor, 20 ms slower per batch, so its unit lasts seconds (defined in
    a function: pickled by value with the actor)."""
    from seqatlas.scoring.workers import ScoringWorker

    class SlowBatches(ScoringWorker):
        def load(self):
            if self.scorer is not None:
                return
            super().load()
            counted = self.scorer._run_batch

            def slow(rows, views, results):
                time.sleep(0.02)
                counted(rows, views, results)

            self.scorer._run_batch = slow

    return SlowBatches


def _wait_cpus_free(ray, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ray.available_resources().get("CPU", 0) >= ray.cluster_resources().get("CPU", 0):
            return
        time.sleep(0.2)


@pytest.mark.ray
def test_ray_actor_counts_rise_within_one_unit(tmp_path, tiny_esm, ray_session, recording,
                                               monkeypatch):
    from seqatlas.scoring.workers import RayExecutor

    actor_class = _slow_batches_worker()
    monkeypatch.setattr(pipeline, "_executor", lambda config, setup, **_: RayExecutor(
        setup.spec, setup.scoring_args(config), workers=1, cpus_per_worker=1,
        gpus_per_worker=0, address=None, actor_class=actor_class))
    fasta = write_fasta(tmp_path / "p.fa", {"p": random_protein(120, seed=4)})
    try:
        report = seqatlas.ingest(fasta, atlas=tmp_path / "a", model=str(tiny_esm),
                                 unit_tokens=10**9, batch_tokens=68, progress="none")
    finally:
        _wait_cpus_free(ray_session)
    assert report.positions_scored == 120
    _check_one_unit(report, recording[0], least=2)  # the actor answered while it scored


@pytest.fixture(scope="module")
def tiny_dna(tmp_path_factory) -> Path:
    return make_single(tmp_path_factory.mktemp("dna") / "single", context_tokens=48)


def test_counts_and_rate_leave_out_skipped_n_runs(tmp_path, tiny_dna, monkeypatch, capsys):
    monkeypatch.setenv(INTERVAL_VARIABLE, "0.05")
    rng = __import__("random").Random(5)
    dna = "".join(rng.choice("ACGT") for _ in range(300))
    fasta = write_fasta(tmp_path / "d.fa", {"d": dna[:200] + "N" * 60 + dna[200:],
                                            "e": dna[:40]})
    report = seqatlas.ingest(fasta, atlas=tmp_path / "a", model=str(tiny_dna), workers=0,
                             skip_n_runs=50, likelihood="unmasked", embeddings=False,
                             unit_tokens=200, progress="log")
    assert (report.positions_scored, report.positions_unscored) == (340, 60)
    lines = _lines(capsys.readouterr().err)
    assert lines and lines[-1] == (340, 340, "done")
    assert all(total == 340 and done <= 340 for done, total, _ in lines)


def test_a_bad_progress_value_is_refused_before_anything_is_written(tmp_path, tiny_esm):
    fasta = write_fasta(tmp_path / "p.fa", {"p": random_protein(20, seed=1)})
    with pytest.raises(ConfigError, match="progress must be True, False or one of"):
        seqatlas.ingest(fasta, atlas=tmp_path / "a", model=str(tiny_esm), workers=0,
                        progress="loud")
    assert not (tmp_path / "a").exists()


# --- the CLI -------------------------------------------------------------------------------

def test_no_progress_is_progress_none_and_the_last_given_wins():
    app = typer.Typer()

    @app.command()
    def show(progress: options.Progress = options.PROGRESS,
             no_progress: bool = options.NO_PROGRESS) -> None:
        typer.echo(progress.value)

    def mode(*args: str) -> str:
        result = CliRunner().invoke(app, list(args))
        assert result.exit_code == 0, result.output
        return result.output.strip()

    assert mode() == "auto"
    assert mode("--no-progress") == "none"
    assert mode("--progress", "log") == "log"
    assert mode("--progress", "log", "--no-progress") == "none"
    assert mode("--no-progress", "--progress", "bar") == "bar"
    assert CliRunner().invoke(app, ["--progress", "loud"]).exit_code == 2


@pytest.mark.parametrize("flags", [["--progress", "none"], ["--no-progress"],
                                   ["--progress", "log"]])
def test_cli_progress_none_leaves_stderr_empty(tmp_path, tiny_esm, capfd, monkeypatch, flags):
    monkeypatch.setenv(INTERVAL_VARIABLE, "0.05")
    fasta = write_fasta(tmp_path / "p.fa", {"p": random_protein(60, seed=2)})
    with warnings.catch_warnings(record=True):  # the tiny model's out-of-domain warning
        code = main(["ingest", str(fasta), "--atlas", str(tmp_path / "a"), "--model",
                     str(tiny_esm), "--workers", "0", *flags])
    assert code == 0
    out, err = capfd.readouterr()
    assert "60 positions" in out  # the report, on stdout
    if flags == ["--progress", "log"]:
        assert _lines(err)[-1] == (60, 60, "done")
    else:
        assert err == ""


def test_cli_with_stderr_a_pipe_logs_lines(tmp_path, tiny_esm):
    fasta = write_fasta(tmp_path / "p.fa", {"p": random_protein(150, seed=6)})
    env = {**os.environ, INTERVAL_VARIABLE: "0.05"}
    done = subprocess.run([sys.executable, "-m", "seqatlas.cli.main", "ingest", str(fasta),
                           "--atlas", str(tmp_path / "a"), "--model", str(tiny_esm),
                           "--workers", "0", "--batch-tokens", "68"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    lines = _lines(done.stderr)
    assert len(lines) >= 2, done.stderr  # auto is log: lines while it scored, and the last
    assert lines[-1] == (150, 150, "done")
    assert all(total == 150 for _, total, _ in lines)
    assert [d for d, _, _ in lines] == sorted(d for d, _, _ in lines)
    assert "\x1b[" not in done.stderr  # no bar redrawn into the pipe
