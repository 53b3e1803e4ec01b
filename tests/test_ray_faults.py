"""Ray requests that cannot be met, stalls and Ctrl-C end in a clear error, never a hang.

The Ray tests share the session's local Ray (``ray_session``: 2 CPUs, no GPU)."""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections import deque
from contextlib import nullcontext

import pytest

import seqatlas
from seqatlas.cli.main import main
from seqatlas.errors import ConfigError, IngestError
from seqatlas.scoring.pipeline import IngestConfig
from seqatlas.scoring.workers import (RayExecutor, plan_actors, run_units, run_units_timed)
from tests.conftest import random_protein, write_fasta


# -- planning the actors (no Ray) ---------------------------------------------------------

CLUSTER_YAML = [{"CPU": 8}] + [{"CPU": 4, "GPU": 1}] * 8  # head + 8 g5.xlarge


@pytest.mark.parametrize("nodes, asked, expected", [
    ([{"CPU": 2}], {}, (1, 2, 0.0)),  # one CPU actor with every CPU
    ([{"CPU": 2}], {"workers": 2}, (2, 1, 0.0)),
    ([{"CPU": 16, "GPU": 2}], {}, (2, 8, 1.0)),  # one actor per GPU
    # 40 CPUs // 8 would be 5 per actor, more than a GPU node has: 4 fit
    (CLUSTER_YAML, {}, (8, 4, 1.0)),
    ([{"CPU": 4, "GPU": 8}], {}, (4, 1, 1.0)),  # one CPU each at least: 4 actors, not 8
    ([{"CPU": 4, "GPU": 1}], {"gpus_per_worker": 0.5}, (2, 2, 0.5)),
    ([{"CPU": 8, "GPU": 2}], {"gpus_per_worker": 0.4}, (4, 2, 0.4)),  # 2 per GPU, not 5
    ([{"CPU": 8, "GPU": 2}], {"gpus_per_worker": 0.25, "cpus_per_worker": 1}, (8, 1, 0.25)),
])
def test_derived_values_always_fit(nodes, asked, expected):
    workers, cpus, gpus, problem = plan_actors(
        nodes, **{"workers": None, "cpus_per_worker": None, "gpus_per_worker": None, **asked})
    assert (workers, cpus, gpus) == expected and problem is None


def test_requests_that_cannot_be_placed_are_explained():
    one = [{"CPU": 2}]
    plan = {"workers": None, "cpus_per_worker": None, "gpus_per_worker": None}
    problem = plan_actors(one, **{**plan, "cpus_per_worker": 100})[3]
    assert "100 CPUs" in problem and "2 CPUs" in problem and \
        "--cpus-per-worker to at most 2" in problem
    problem = plan_actors(one, **{**plan, "gpus_per_worker": 1})[3]
    assert "1 GPU" in problem and "0 GPUs" in problem and "--gpus-per-worker 0" in problem
    problem = plan_actors(one, **{**plan, "workers": 4, "cpus_per_worker": 1})[3]
    assert "4 worker(s) x 1 CPU x 0 GPUs = 4 CPUs" in problem and "room for 2" in problem \
        and "--workers to 2" in problem
    # CPUs must be on one node: two nodes of 2 CPUs hold no 3-CPU actor
    problem = plan_actors([{"CPU": 2}, {"CPU": 2}], **{**plan, "cpus_per_worker": 3})[3]
    assert "at most 2 CPUs" in problem and "room for 0" in problem
    problem = plan_actors([{"CPU": 8, "GPU": 2}], **{**plan, "workers": 5,
                                                     "gpus_per_worker": 0.4})[3]
    assert "room for 4" in problem
    with pytest.raises(ConfigError, match="fraction"):
        plan_actors(one, **{**plan, "gpus_per_worker": 1.5})
    with pytest.raises(ConfigError, match="gpus-per-worker"):
        plan_actors(one, **{**plan, "gpus_per_worker": math.nan})


# -- the watchdog in the driver loop (no Ray) ---------------------------------------------

class StuckExecutor:
    """Finishes every unit at once except those whose payload is "stuck"."""

    capacity = 2

    def __init__(self):
        self.results: deque = deque()
        self.stuck = 0
        self.closed = False

    @property
    def busy(self):
        return len(self.results) + self.stuck

    def submit(self, token, payload, method="score"):
        if payload == "stuck":
            self.stuck += 1
        else:
            self.results.append((token, payload, None))

    def next_result(self, timeout=None):
        if self.results:
            return self.results.popleft()
        time.sleep(min(timeout, 0.05))
        return None

    def describe_stall(self):
        return "1 actor hangs"

    def close(self):
        self.closed = True


def test_watchdog_reports_a_stall_with_the_counts():
    items = [(0, "a"), (1, "stuck"), (2, "b"), (3, "c")]
    committed = []
    executor = StuckExecutor()
    started = time.monotonic()
    with pytest.raises(IngestError) as exc:
        run_units_timed(executor, items, method="score", max_retries=0, failed=None,
                        commit=lambda item, result: committed.append(item[0]),
                        progress=nullcontext(), stall_timeout=0.5, total=len(items))
    assert 0.5 <= time.monotonic() - started < 3
    message = str(exc.value)
    assert "3 of 4 unit(s) committed" in message and "1 pending (1 in flight)" in message
    assert "1 actor hangs" in message and "re-run" in message and "--stall-timeout" in message
    assert committed == [0, 2, 3] and executor.closed


def test_watchdog_off_waits_for_slow_units():
    class Slow(StuckExecutor):
        def next_result(self, timeout=None):
            assert timeout is None  # no watchdog: wait on
            time.sleep(0.3)
            return self.results.popleft()

    committed = []
    run_units(Slow(), [(0, "a"), (1, "b")], method="score", max_retries=0, failed=None,
              commit=lambda item, result: committed.append(item[0]), stall_timeout=0)
    assert committed == [0, 1]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -1, True, "10"])
def test_stall_timeout_is_validated(value):
    with pytest.raises(ConfigError, match="--stall-timeout"):
        IngestConfig(stall_timeout=value).validate()


@pytest.mark.parametrize("value", [None, 0, 0.5, 1800])
def test_stall_timeout_accepts_seconds_or_off(value):
    IngestConfig(stall_timeout=value).validate()


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_cli_refuses_a_bad_stall_timeout(tmp_path, tiny_esm, capsys, value):
    fasta = write_fasta(tmp_path / "p.fa", {"x": "MKTAYIAK"})
    code = main(["ingest", str(fasta), "--atlas", str(tmp_path / "a"), "--model",
                 str(tiny_esm), "--workers", "0", "--no-progress", f"--stall-timeout={value}"])
    err = capsys.readouterr().err
    if value == "-1":
        assert code == 1 and "--stall-timeout must be a finite number" in err
    else:  # refused by the config check (exit 1) or as a usage error (exit 2)
        assert code in (1, 2) and "finite" in err, err
    assert not (tmp_path / "a").exists()


# -- on Ray ---------------------------------------------------------------------------------

def _dummy_worker():
    """An actor class that answers at once, except for the payload "stuck" (by value: a
    class defined in a function is pickled with the actor)."""

    class Dummy:
        def __init__(self, spec, scoring, threads=None, *, load=True):
            pass

        def ready(self):
            return True

        def score(self, payload):
            if payload == "stuck":
                time.sleep(600)
            if payload == "die":
                os._exit(1)
            return payload

    return Dummy


def _sleepy_scoring_worker():
    """The real scoring actor, except that it hangs on the sequence "stuck" (and loads its
    model before it answers ready(), so the first unit is quick)."""
    from seqatlas.scoring.workers import ScoringWorker

    class Sleepy(ScoringWorker):
        def ready(self):
            self.load()
            return True

        def score(self, jobs):
            if any(j.seq_id == "stuck" for j in jobs):
                time.sleep(600)
            return super().score(jobs)

    return Sleepy


def _wait_cpus_free(ray, timeout=30.0):
    """ray.kill is asynchronous: let the killed actors give their CPUs back."""
    deadline = time.monotonic() + timeout
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"]:
        assert time.monotonic() < deadline, "the actors' CPUs were not given back"
        time.sleep(0.1)


def _fasta(tmp_path, names=("a", "b", "c")):
    return write_fasta(tmp_path / "in.fa", {n: random_protein(30, seed=i)
                                            for i, n in enumerate(names)})


OPTIONS = {"progress": False, "unit_tokens": 500}  # one unit per 30-residue sequence


@pytest.mark.ray
@pytest.mark.parametrize("request_, numbers", [
    ({"cpus_per_worker": 100}, ["1 worker(s) x 100 CPUs x 0 GPUs", "cluster has 2 CPUs",
                                "--cpus-per-worker to at most 2"]),
    ({"gpus_per_worker": 1}, ["x 1 GPU =", "0 GPUs", "--gpus-per-worker 0"]),
    ({"workers": 4, "cpus_per_worker": 1}, ["4 worker(s) x 1 CPU", "= 4 CPUs", "room for 2",
                                           "--workers to 2"]),
    ({"workers": 4}, ["4 worker(s) x 1 CPU", "room for 2", "--workers to 2"]),
])
def test_unmeetable_requests_fail_up_front(tmp_path, tiny_esm, ray_session, request_,
                                           numbers):
    fasta = _fasta(tmp_path)
    _wait_cpus_free(ray_session)  # actors of earlier tests are killed asynchronously
    started = time.monotonic()
    with pytest.raises(IngestError) as exc:
        seqatlas.ingest(fasta, atlas=tmp_path / "x", model=str(tiny_esm), **request_,
                        **OPTIONS)
    assert time.monotonic() - started < 20
    message = str(exc.value)
    assert "cannot start the scoring actors" in message, message
    for text in numbers:
        assert text in message, (text, message)
    assert ray_session.available_resources().get("CPU") == 2  # no actor was started
    assert seqatlas.Atlas(tmp_path / "x").positions().num_rows == 0  # only the sequences
    report = seqatlas.ingest(fasta, atlas=tmp_path / "x", model=str(tiny_esm), workers=0,
                             **OPTIONS)
    assert report.units_scored == report.units_total == 3


@pytest.mark.ray
def test_cli_prints_the_resource_error(tmp_path, tiny_esm, ray_session, capsys):
    fasta = _fasta(tmp_path)
    assert main(["ingest", str(fasta), "--atlas", str(tmp_path / "x"), "--model",
                 str(tiny_esm), "--no-progress", "--workers", "4", "--cpus-per-worker",
                 "1"]) == 1
    err = capsys.readouterr().err
    assert "Error:" in err and "room for 2" in err


@pytest.mark.ray
def test_actors_that_cannot_start_fail_fast(ray_session):
    """Resources held by something else: the actor is never placed."""
    _wait_cpus_free(ray_session)

    @ray_session.remote(num_cpus=2)
    class Blocker:
        def ready(self):
            return True

    blocker = Blocker.remote()
    try:
        ray_session.get(blocker.ready.remote(), timeout=30)
        started = time.monotonic()
        with pytest.raises(IngestError) as exc:
            RayExecutor(None, {}, workers=1, cpus_per_worker=1, gpus_per_worker=0,
                        address=None, start_timeout=2, actor_class=_dummy_worker())
        assert time.monotonic() - started < 10
        message = str(exc.value)
        assert "1 of 1 scoring actor(s)" in message and "not started within 2 s" in message
        assert "waiting for resources" in message and "free now: 0 of 2 CPUs" in message
    finally:
        ray_session.kill(blocker)
    _wait_cpus_free(ray_session)


@pytest.mark.ray
def test_stall_on_ray_names_committed_and_pending(ray_session):
    # one unit per actor: none waits behind the stuck one
    executor = RayExecutor(None, {}, workers=2, cpus_per_worker=1, gpus_per_worker=0,
                           address=None, actor_class=_dummy_worker(), in_flight=1)
    assert executor.capacity == 2 and not executor.starting
    items = [(0, "a"), (1, "stuck"), (2, "b"), (3, "c")]
    committed = []
    with pytest.raises(IngestError) as exc:
        run_units_timed(executor, items, method="score", max_retries=0, failed=None,
                        commit=lambda item, result: committed.append((item[0], result)),
                        progress=nullcontext(), stall_timeout=2, total=len(items))
    message = str(exc.value)
    assert "3 of 4 unit(s) committed" in message and "1 pending (1 in flight)" in message
    assert "1 alive" in message and "re-run" in message
    assert committed == [(0, "a"), (2, "b"), (3, "c")]
    assert not executor.pending and not executor.started  # closed: the actors are killed
    _wait_cpus_free(ray_session)


@pytest.mark.ray
def test_ingest_stall_keeps_committed_units_and_resumes(tmp_path, tiny_esm, ray_session,
                                                        monkeypatch):
    import seqatlas.scoring.workers as workers

    sleepy = _sleepy_scoring_worker()

    def make_executor(spec, scoring, **options):  # one unit per actor: none waits behind
        return RayExecutor(spec, scoring, actor_class=sleepy, in_flight=1, **options)

    monkeypatch.setattr(workers, "make_executor", make_executor)
    fasta = _fasta(tmp_path, names=("a", "stuck", "b", "c"))
    started = time.monotonic()
    with pytest.raises(IngestError) as exc:
        seqatlas.ingest(fasta, atlas=tmp_path / "x", model=str(tiny_esm), workers=2,
                        cpus_per_worker=1, stall_timeout=2, **OPTIONS)
    assert time.monotonic() - started < 60
    message = str(exc.value)
    assert "3 of 4 unit(s) committed" in message and "1 pending" in message, message
    assert set(seqatlas.Atlas(tmp_path / "x").positions()["seq_id"].to_pylist()) == \
        {"a", "b", "c"}
    monkeypatch.undo()
    _wait_cpus_free(ray_session)
    report = seqatlas.ingest(fasta, atlas=tmp_path / "x", model=str(tiny_esm), workers=0,
                             **OPTIONS)
    assert report.units_skipped == 3 and report.units_scored == 1


@pytest.mark.ray
def test_ctrl_c_while_waiting_interrupts_and_kills_the_actors(ray_session, sigint_delivered):
    executor = RayExecutor(None, {}, workers=2, cpus_per_worker=1, gpus_per_worker=0,
                           address=None, actor_class=_dummy_worker())
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    started = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_units_timed(executor, [(0, "stuck"), (1, "stuck")], method="score",
                            max_retries=0, failed=None, commit=None, progress=nullcontext(),
                            stall_timeout=None)
    finally:
        timer.cancel()
    assert time.monotonic() - started < 5
    _wait_cpus_free(ray_session, timeout=10)  # close() killed both busy actors


@pytest.mark.ray
def test_a_dead_actor_is_replaced_and_its_unit_retried(ray_session):
    executor = RayExecutor(None, {}, workers=2, cpus_per_worker=1, gpus_per_worker=0,
                           address=None, actor_class=_dummy_worker())
    items = [(0, "a"), (1, "die"), (2, "b"), (3, "c")]
    committed, failed = [], []
    run_units_timed(executor, items, method="score", max_retries=1,
                    failed=lambda item, error: failed.append((item[0], error)),
                    commit=lambda item, result: committed.append(item[0]),
                    progress=nullcontext(), stall_timeout=30, total=len(items))
    assert sorted(committed) == [0, 2, 3]
    # the first try and the retry each killed an actor; each was replaced
    assert [(i, isinstance(e, ray_session.exceptions.RayActorError)) for i, e in failed] == \
        [(1, True)]
    _wait_cpus_free(ray_session)


@pytest.mark.ray
def test_each_actor_holds_two_units_and_a_death_spends_one_attempt(ray_session):
    executor = RayExecutor(None, {}, workers=2, cpus_per_worker=1, gpus_per_worker=0,
                           address=None, actor_class=_dummy_worker())
    assert executor.capacity == 4
    for item in [(0, "a"), (1, "b"), (2, "c"), (3, "d")]:
        executor.submit(item, item[1], "score")
    assert sorted(len(q) for q in executor.queues.values()) == [2, 2]
    assert executor.bytes_sent > 0
    results = [executor.next_result(30) for _ in range(4)]
    assert sorted((r[0][0], r[1]) for r in results) == [(0, "a"), (1, "b"), (2, "c"), (3, "d")]
    assert executor.bytes_received > 0
    executor.close()
    _wait_cpus_free(ray_session)

    # one actor, two units on it: the first kills it; the second, queued behind, never ran,
    # so it is sent again without spending an attempt (max_retries=0)
    executor = RayExecutor(None, {}, workers=1, cpus_per_worker=1, gpus_per_worker=0,
                           address=None, actor_class=_dummy_worker())
    committed, failed = [], []
    run_units_timed(executor, [(0, "die"), (1, "a")], method="score", max_retries=0,
                    failed=lambda item, error: failed.append(item[0]),
                    commit=lambda item, result: committed.append(item[0]),
                    progress=nullcontext(), stall_timeout=60, total=2)
    assert committed == [1] and failed == [0]
    _wait_cpus_free(ray_session)
