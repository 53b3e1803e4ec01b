"""Executors that score work units: Ray actors (the default) or this process.

Both expose ``submit(token, payload, method)``, ``next_result(timeout)``, ``busy`` and
``capacity`` so one driver loop, :func:`run_units`, with its retries, commits and stall
watchdog, serves ingest and the probes on either.

Ray never refuses a resource request it cannot meet: an actor that asks for more CPUs or
GPUs than any node has, or more than is left, waits for them forever. So the Ray executor
checks the request against the cluster before it starts an actor (:func:`plan_actors`),
hands units only to actors that have answered a ``ready()`` call, and waits in short slices
so that the driver's watchdog and Ctrl-C always get control back.

Progress within a unit: a worker counts the real tokens of the batches it has finished
(:meth:`ScoringWorker.progress`). In this process that count is handed to the executor's
watcher after each batch; a Ray actor answers ``progress()`` in a thread of its own (a
concurrency group) while it scores, and the driver asks each busy actor between its waits.
An answer is passed on only while its unit is still in flight and only if it is about that
very call, so it never changes a result, a commit or a retry.

Each Ray actor holds up to :data:`IN_FLIGHT_PER_ACTOR` units (Ray runs an actor's calls in
the order they were sent), so it starts its next unit while the driver commits its last.
When an actor dies, the unit it was running counts as a failed attempt; the units queued
behind it never started and go back to the queue without one (:class:`Displaced`).

Driver load: both executors count the bytes of what they send and receive
(:func:`wire_bytes`), so an ingest can record what crossed the driver per position.
"""

from __future__ import annotations

import math
import os
import pickle
import time
import warnings
from collections import deque
from dataclasses import dataclass, replace
from typing import Callable, Iterable

from seqatlas.errors import AtlasError, ConfigError, IngestError
from seqatlas.util import start_ray

STALL_TIMEOUT = 1800.0  # seconds without a finished unit before the driver gives up
START_TIMEOUT = 60.0  # seconds for the actors to be placed and answer ready()
WAIT_SLICE = 0.5  # longest single ray.wait, so Ctrl-C and the watchdog act promptly
WRITE_PARTS = ("workers", "driver")  # who writes the parts of scored units
IN_FLIGHT_PER_ACTOR = 2  # units sent to an actor before its first one has come back
_EPS = 1e-9


class Displaced(Exception):
    """A unit that never started: the actor it was queued on died running another one."""


@dataclass(frozen=True)
class UnitRequest:
    """One work unit for :meth:`ScoringWorker.score_unit`: its jobs, and the run's staging
    directory, where the worker writes its parts (``staging`` None: the rows travel back to
    the driver, which writes them)."""

    key: str
    jobs: list
    staging: str | None = None
    pool: object | None = None  # a seqatlas.scoring.pooling.PoolSpec: pool what it owns


@dataclass(frozen=True)
class UnitResult:
    """What a worker returns for a unit: its staged parts (``staged``, table -> StagedPart)
    or, written by the driver, its tables (``tables``); the positions it holds, the token
    counts of its batches and the Ray node it ran on."""

    positions: int
    stats: dict
    node: str
    staged: dict | None = None
    tables: dict | None = None


def wire_bytes(value) -> int:
    """The bytes ``value`` takes on the way between the driver and a worker: Arrow data by
    its buffers, anything else pickled (as Ray does, near enough)."""
    import pyarrow as pa

    if isinstance(value, (pa.Table, pa.RecordBatch)):
        return value.get_total_buffer_size()
    if value is None:
        return 0
    if isinstance(value, UnitResult) and value.tables:
        return wire_bytes(replace(value, tables=None)) + \
            sum(wire_bytes(t) for t in value.tables.values())
    if isinstance(value, tuple) and any(isinstance(v, pa.Table) for v in value):
        return sum(wire_bytes(v) for v in value)
    return len(pickle.dumps(value, protocol=5))


def _node_id() -> str:
    """The Ray node this process runs on ("local" outside Ray)."""
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:  # only a label
        pass
    return "local"


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class ScoringWorker:
    """Holds one loaded model and scores units with it (a Ray actor, or in process).

    ``load=False`` (the Ray actors) defers loading the model to the first unit, so the
    constructor, and the ``ready()`` the driver waits for, only show the actor was placed.
    """

    def __init__(self, spec, scoring: dict, threads: int | None = None, *, load: bool = True):
        self.spec, self.scoring, self.threads = spec, scoring, threads
        self.scorer = None
        self.node: str | None = None  # a fixed label in process; the Ray node's id otherwise
        self.on_batch: Callable[[int], None] | None = None  # in process: the count, per batch
        self._progress = (0, 0)  # (calls begun, real tokens of the last one's finished batches)
        if load:
            self.load()

    def progress(self) -> tuple[int, int]:
        """``(calls, tokens)``: how many ``score``/``rescore`` calls this worker has begun, and
        the real tokens of the batches the last one has finished (one tuple, read whole)."""
        return self._progress

    def _begin(self) -> None:
        self._progress = (self._progress[0] + 1, 0)

    def _count_batches(self) -> None:
        """After each batch of the scorer, add its real tokens to :meth:`progress` (and tell
        ``on_batch``). Only counts: the batch and what it computes are the scorer's."""
        run_batch = self.scorer._run_batch

        def counted(rows, views, results):
            run_batch(rows, views, results)
            calls, tokens = self._progress
            tokens += sum(row.length for row in rows)
            self._progress = (calls, tokens)
            if self.on_batch is not None:
                try:
                    self.on_batch(tokens)
                except Exception as exc:  # showing progress never fails (or retries) a unit
                    self.on_batch = None
                    warnings.warn(f"progress display stopped: {exc!r}", stacklevel=2)

        self.scorer._run_batch = counted

    def ready(self) -> bool:
        """Answers once the actor has been given its resources and started."""
        return True

    def load(self) -> None:
        if self.scorer is not None:
            return
        import torch

        from seqatlas.scoring.scorer import Scorer
        from seqatlas.checkpoints import load_model

        # Ray sets OMP_NUM_THREADS=1 in workers: use the CPUs this actor was given, and never
        # more threads than this process may run on (oversubscribed threads spin and wait)
        threads = min(self.threads or torch.get_num_threads(), usable_cores())
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.scorer = Scorer(load_model(self.spec, device=device), **self.scoring)
        self._count_batches()

    def score(self, jobs):
        self._begin()
        self.load()
        before = (self.scorer.real_tokens, self.scorer.computed_tokens)
        positions, tokens = self.scorer.score(jobs)
        stats = {"real_tokens": self.scorer.real_tokens - before[0],
                 "computed_tokens": self.scorer.computed_tokens - before[1],
                 "unscored_reasons": dict(self.scorer.unscored), **self.engine()}
        return positions, tokens, stats

    def engine(self) -> dict:
        """How this worker runs the model (the run record's ``engine``)."""
        import torch

        return {"precision": self.scorer.precision, "batch_tokens": self.scorer.batch_budget(),
                "device": self.scorer.model.device.type, "threads": torch.get_num_threads()}

    def score_unit(self, request: UnitRequest) -> UnitResult:
        """Score one unit; with ``request.staging`` (when this node sees it), write its parts
        there and return only what the driver needs to commit them; else return the rows."""
        from seqatlas.store import StagingUnreachable, stage_parts

        positions, tokens, stats = self.score(request.jobs)
        tables = {"positions": positions, "tokens": tokens}
        if request.pool is not None:
            from seqatlas.scoring.pooling import unit_pooled

            pooled = unit_pooled(tokens, request.jobs, request.pool, self.scorer.bos_vectors,
                                 self.scorer.model.spec.hidden_size)
            tables["pooled"] = pooled if pooled.num_rows else None
        common = {"positions": positions.num_rows, "stats": stats, "node": self.node or _node_id()}
        if request.staging is not None:
            try:
                return UnitResult(**common,
                                  staged=stage_parts(request.staging, request.key, tables))
            except StagingUnreachable:
                pass  # a node that does not see the atlas sends its rows (the driver warns)
        return UnitResult(**common, tables=tables)

    def rescore(self, tasks):
        """Masked logp of each task's bases (see :meth:`Scorer.rescore`), and the stats."""
        self._begin()
        self.load()
        before = (self.scorer.real_tokens, self.scorer.computed_tokens)
        values = self.scorer.rescore(tasks)
        stats = {"real_tokens": self.scorer.real_tokens - before[0],
                 "computed_tokens": self.scorer.computed_tokens - before[1]}
        return values, stats

    def rescore_letters(self, tasks):
        """Each task's bases' distributions (see :meth:`Scorer.rescore_letters`), and the
        stats."""
        self._begin()
        self.load()
        before = (self.scorer.real_tokens, self.scorer.computed_tokens)
        values = self.scorer.rescore_letters(tasks)
        stats = {"real_tokens": self.scorer.real_tokens - before[0],
                 "computed_tokens": self.scorer.computed_tokens - before[1]}
        return values, stats


class LocalExecutor:
    """Scores in this process, one unit at a time (``--workers 0``: debugging, notebooks)."""

    def __init__(self, spec, scoring: dict):
        self.worker = ScoringWorker(spec, scoring)
        self.worker.node = "local"  # even when this driver has a Ray session open
        self.results: deque = deque()
        self.capacity = 1
        self.watcher: Callable[[object, int], None] | None = None
        self.bytes_sent = self.bytes_received = 0  # as if they crossed to a worker

    def watch(self, watcher: Callable[[object, int], None] | None) -> None:
        """Call ``watcher(token, tokens)`` after each batch of the unit in flight."""
        self.watcher = watcher

    def submit(self, token, payload, method: str = "score") -> None:
        watcher = self.watcher
        self.worker.on_batch = None if watcher is None else (lambda done: watcher(token, done))
        self.bytes_sent += wire_bytes(payload)
        try:
            result = getattr(self.worker, method)(payload)
            self.bytes_received += wire_bytes(result)
            self.results.append((token, result, None))
        except Exception as exc:  # reported per unit by the driver loop
            self.results.append((token, None, exc))
        finally:
            self.worker.on_batch = None

    def next_result(self, timeout: float | None = None):
        return self.results.popleft()

    @property
    def busy(self) -> int:
        return len(self.results)

    def close(self) -> None:
        pass


def per_core_workers(spec) -> bool:
    """Whether a CPU runs ``spec``'s model faster as one single-threaded worker per core than
    as one worker with every core: its matrices are too small to split across threads
    (hidden size at most 512), and a copy per core is cheap (at most 50 M parameters).
    Measured with dnabert6-tiny on 2 cores: two 1-thread processes ran the encoder 15% and
    the LM head 38% faster than one 2-thread process, and the Python between passes runs
    in both (benchmarks/genome_scale.py)."""
    hidden, parameters = getattr(spec, "hidden_size", None), getattr(spec, "parameters", None)
    return bool(hidden and hidden <= 512 and parameters and parameters <= 50_000_000)


def make_executor(spec, scoring: dict, *, workers: int | None, gpus_per_worker: float | None,
                  cpus_per_worker: int | None, address: str | None,
                  start_timeout: float = START_TIMEOUT, units: int = 0):
    """The Ray actors, or this process with ``workers=0``; ``units``: how many work units
    are to be scored (enough of them let a small model run one worker per CPU)."""
    if workers == 0:
        return LocalExecutor(spec, scoring)
    return RayExecutor(spec, scoring, workers=workers, gpus_per_worker=gpus_per_worker,
                       cpus_per_worker=cpus_per_worker, address=address,
                       start_timeout=start_timeout, units=units)


# -- what the cluster can hold ------------------------------------------------------------

def _fit(node: dict, cpus: float, gpus: float) -> float:
    """How many actors of ``cpus`` CPUs and ``gpus`` GPUs one node holds. A fraction of a
    GPU (``gpus`` < 1) is carved out of one physical GPU, so a GPU holds ``floor(1/gpus)``
    of them (0.4 -> 2, not 2.5); whole GPUs are whole devices."""
    fit = math.inf
    if cpus > 0:
        fit = min(fit, math.floor(node.get("CPU", 0) / cpus + _EPS))
    if gpus > 0:
        have = node.get("GPU", 0)
        per_gpu = math.floor(1 / gpus + _EPS) if gpus < 1 else None
        fit = min(fit, math.floor(have + _EPS) * per_gpu if per_gpu else
                  math.floor(have / gpus + _EPS))
    return fit


def _room(nodes: list[dict], cpus: float, gpus: float) -> float:
    return sum(_fit(node, cpus, gpus) for node in nodes)


def _amount(value: float, unit: str) -> str:
    return f"{value:g} {unit}{'' if value == 1 else 's'}"


def plan_actors(nodes: list[dict], *, workers: int | None, cpus_per_worker: int | None,
                gpus_per_worker: float | None, units: int = 0,
                small_model: bool = False) -> tuple[int, float, float, str | None]:
    """``(workers, cpus_per_worker, gpus_per_worker, problem)`` for a cluster whose alive
    nodes have the resources ``nodes`` (``ray.nodes()[i]["Resources"]``).

    Values left None are derived so that they fit: GPUs per worker 1 when there are GPUs,
    else 0; workers as many as the GPUs hold (one CPU each at least), else 1; CPUs per
    worker the most that lets every worker be placed. Without GPUs, a ``small_model``
    (:func:`per_core_workers`) with ``units`` enough to keep them busy (two per CPU) gets one
    single-threaded worker per CPU instead. ``problem`` (None when everything fits) says in
    numbers why the request cannot all be placed, and how to fix it.
    """
    total_cpu = sum(n.get("CPU", 0) for n in nodes)
    total_gpu = sum(n.get("GPU", 0) for n in nodes)
    most_cpu = max((n.get("CPU", 0) for n in nodes), default=0)
    most_gpu = max((n.get("GPU", 0) for n in nodes), default=0)
    if gpus_per_worker is not None and not 0 <= gpus_per_worker < math.inf:
        raise ConfigError(f"--gpus-per-worker must be 0 or more, not {gpus_per_worker!r}")
    if gpus_per_worker is not None and gpus_per_worker > 1 and \
            not float(gpus_per_worker).is_integer():
        raise ConfigError(f"--gpus-per-worker {gpus_per_worker:g}: an actor gets a fraction "
                          "of one GPU (at most 1, e.g. 0.5) or whole GPUs (1, 2, ...)")
    if cpus_per_worker is not None and not 0 <= cpus_per_worker < math.inf:
        raise ConfigError(f"--cpus-per-worker must be 0 or more, not {cpus_per_worker!r}")
    gpus = gpus_per_worker if gpus_per_worker is not None else (1.0 if total_gpu >= 1 else 0.0)
    if workers is None and cpus_per_worker is None and not gpus and small_model \
            and total_cpu >= 2 and units >= 2 * total_cpu:
        workers, cpus_per_worker = int(total_cpu), 1
    if workers is None:
        workers = 1
        if gpus:
            room = _room(nodes, cpus_per_worker if cpus_per_worker is not None else 1, gpus)
            workers = max(1, int(min(room, 1 << 20)))
    cpus = cpus_per_worker
    if cpus is None:
        cpus = max(1, int(total_cpu) // workers)
        for candidate in range(min(cpus, int(most_cpu)), 0, -1):
            if _room(nodes, candidate, gpus) >= workers:
                cpus = candidate
                break
        else:
            cpus = 1
    room = _room(nodes, cpus, gpus)
    if room >= workers:
        return workers, cpus, gpus, None
    fixes = []
    if gpus and not total_gpu:
        fixes.append("use --gpus-per-worker 0 (the cluster has no GPUs)")
    elif gpus > most_gpu:
        fixes.append(f"lower --gpus-per-worker to at most {most_gpu:g}")
    if cpus > most_cpu:
        fixes.append(f"lower --cpus-per-worker to at most {most_cpu:g}")
    if not fixes:  # each actor fits a node, not all of them: name what runs out
        short = [flag for flag, room_alone in (("--cpus-per-worker", _room(nodes, cpus, 0)),
                                               ("--gpus-per-worker", _room(nodes, 0, gpus)))
                 if room_alone < workers]
        fixes.append(f"lower --workers to {int(room)}" +
                     "".join(f" or {flag}" for flag in short
                             if flag != "--cpus-per-worker" or cpus > 1))
    fixes.append("use --workers 0 to score in this process without Ray")
    problem = (
        f"requested {workers} worker(s) x {_amount(cpus, 'CPU')} x {_amount(gpus, 'GPU')} = "
        f"{_amount(workers * cpus, 'CPU')}, {_amount(workers * gpus, 'GPU')}, but the Ray "
        f"cluster has {_amount(total_cpu, 'CPU')}, {_amount(total_gpu, 'GPU')} in "
        f"{len(nodes)} node(s) (at most {_amount(most_cpu, 'CPU')}, {_amount(most_gpu, 'GPU')} "
        f"on one node; an actor's CPUs and GPUs must be on one node): room for {int(room)} "
        f"such worker(s), and Ray would wait for the others forever. To fix: "
        + "; or ".join(fixes))
    return workers, cpus, gpus, problem


class RayExecutor:
    """A pool of scoring actors; a dead actor is replaced and its unit reported as failed.

    Units go only to actors that answered ``ready()`` (placed and started); an actor still
    starting (at the start, or replacing a dead one) joins the pool when it answers.

    ``address`` None (a local Ray: started here, or the one this process already runs) has
    a fixed size: a request that does not fit, or actors none of which start within
    ``start_timeout`` seconds, raise :class:`IngestError` at once. A cluster ``address`` may
    grow (an autoscaler adds nodes on demand), so there a request that does not fit the
    nodes up now only warns, and the actors are waited for; the driver's stall watchdog
    reports them if they never start.
    """

    def __init__(self, spec, scoring: dict, *, workers: int | None,
                 gpus_per_worker: float | None,
                 cpus_per_worker: int | None, address: str | None,
                 start_timeout: float = START_TIMEOUT, actor_class: type | None = None,
                 in_flight: int = IN_FLIGHT_PER_ACTOR, units: int = 0):
        self.started: dict = {}  # actor id -> started actor (alive as far as we know)
        self.queues: dict[str, deque] = {}  # actor id -> its units' result refs, oldest first
        self.in_flight = in_flight
        self.displaced: set = set()  # result refs queued behind a unit that killed its actor
        self.bytes_sent = self.bytes_received = 0  # payloads out, results in (wire_bytes)
        self.pending: dict = {}  # unit's result ref -> (token, actor)
        self.starting: dict = {}  # ready() ref -> actor not yet started
        self.started_ray = False
        self.last_error: BaseException | None = None  # of the last actor that died
        self.watcher: Callable[[object, int], None] | None = None
        self.calls: dict = {}  # unit's result ref -> which call of its actor it is
        self.submitted: dict[str, int] = {}  # actor id -> calls submitted to it
        self.polls: dict = {}  # progress() ref -> (unit's result ref, its call number)
        self.reports = False  # the actor class answers progress()
        self.ray, self.started_ray = start_ray(
            address, error=IngestError, fallback="use --workers 0 to score without Ray")
        try:
            self._start(spec, scoring, workers=workers, gpus_per_worker=gpus_per_worker,
                        cpus_per_worker=cpus_per_worker, fixed=address in (None, "local"),
                        start_timeout=start_timeout, actor_class=actor_class or ScoringWorker,
                        units=units)
        except BaseException:
            self.close()
            raise

    def _start(self, spec, scoring: dict, *, workers, gpus_per_worker, cpus_per_worker,
               fixed: bool, start_timeout: float, actor_class: type, units: int = 0) -> None:
        ray = self.ray
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        workers, cpus, gpus, problem = plan_actors(
            nodes, workers=workers, cpus_per_worker=cpus_per_worker,
            gpus_per_worker=gpus_per_worker, units=units, small_model=per_core_workers(spec))
        if problem and fixed:
            raise IngestError(f"cannot start the scoring actors: {problem}")
        if problem:
            warnings.warn(f"the Ray cluster cannot place every scoring actor yet: {problem} "
                          "If an autoscaler adds nodes, the actors start as they come up (see "
                          "`ray status`); if nothing does, the stall watchdog stops the run "
                          "after --stall-timeout", stacklevel=2)
        self.workers, self.cpus, self.gpus = workers, cpus, gpus
        # progress() runs in its own thread, so an actor answers it while it scores
        self.reports = callable(getattr(actor_class, "progress", None))
        groups = {"concurrency_groups": {"progress": 1}} if self.reports else {}
        self.actor_class = ray.remote(num_cpus=cpus, num_gpus=gpus, **groups)(actor_class)
        self.args = (spec, scoring, int(cpus) or None)
        for _ in range(workers):
            self._launch()
        deadline = time.monotonic() + start_timeout
        while self.starting and time.monotonic() < deadline:
            slice_ = min(WAIT_SLICE, max(0.0, deadline - time.monotonic()))
            ready, _ = ray.wait(list(self.starting), num_returns=len(self.starting),
                                timeout=slice_)
            for ref in ready:
                self._started(ref)
        if self.starting and not self.started and fixed:
            raise IngestError(
                f"{self._not_started()} within {start_timeout:g} s: Ray is waiting for "
                f"resources ({self._free()}; see `ray status`): another job may hold them. "
                "Lower --workers, --cpus-per-worker or --gpus-per-worker, or use --workers 0 "
                "to score in this process")
        if not (self.starting or self.started):
            raise IngestError(f"no scoring actor could start ({self.last_error}); check the "
                              "Ray workers' logs, or use --workers 0 to score in this process")

    def _launch(self) -> None:
        actor = self.actor_class.remote(*self.args, load=False)
        self.starting[actor.ready.remote()] = actor

    def _started(self, ref) -> None:
        actor = self.starting.pop(ref)
        try:
            self.ray.get(ref)
        except Exception as exc:  # the actor died while starting: drop it
            self.last_error = exc
            self._kill(actor)
            return
        name = actor._actor_id.hex()
        self.started[name] = actor
        self.queues[name] = deque()

    @property
    def capacity(self) -> int:
        """Units that can be in flight now: ``in_flight`` per started actor."""
        return len(self.started) * self.in_flight

    @property
    def busy(self) -> int:
        return len(self.pending)

    def watch(self, watcher: Callable[[object, int], None] | None) -> None:
        """Call ``watcher(token, tokens)`` with what busy actors report of their unit (asked
        between the waits of :meth:`next_result`)."""
        self.watcher = watcher

    def submit(self, token, payload, method: str = "score") -> None:
        """Send a unit to the started actor with the fewest in flight."""
        name = min(self.started, key=lambda n: len(self.queues[n]))
        actor = self.started[name]
        ref = getattr(actor, method).remote(payload)
        self.bytes_sent += wire_bytes(payload)
        self.pending[ref] = (token, actor)
        self.queues[name].append(ref)
        self.submitted[name] = self.calls[ref] = self.submitted.get(name, 0) + 1

    def next_result(self, timeout: float | None = None):
        """The next finished unit as ``(token, result, error)``; None when none finished
        within ``timeout`` seconds (None: wait on) or when a starting actor joined the pool
        (so the driver can give it a unit)."""
        ray = self.ray
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            refs = list(self.pending) + list(self.starting)
            if not refs:
                raise IngestError(f"no scoring actor is left ({self.last_error}); committed "
                                  "work is kept: re-run the same command to resume")
            left = WAIT_SLICE if deadline is None else \
                max(0.0, min(WAIT_SLICE, deadline - time.monotonic()))
            ready, _ = ray.wait(refs, num_returns=1, timeout=left)
            if ready and ready[0] in self.starting:
                self._started(ready[0])
                return None
            if ready:
                return self._result(ready[0])
            self._poll()
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def _poll(self) -> None:
        """Pass on the answers of busy actors' ``progress()`` that are about their unit still
        in flight, and ask again (one question in flight per unit; never waits)."""
        if self.watcher is None or not self.reports:
            return
        ray = self.ray
        if self.polls:
            answered, _ = ray.wait(list(self.polls), num_returns=len(self.polls), timeout=0)
            for poll in answered:
                unit_ref, call = self.polls.pop(poll)
                try:
                    calls, tokens = ray.get(poll)
                except Exception:  # the actor died: its unit's own result says so
                    continue
                if unit_ref in self.pending and calls == call:
                    self.watcher(self.pending[unit_ref][0], tokens)
        asked = {unit_ref for unit_ref, _ in self.polls.values()}
        for unit_ref, (_, actor) in self.pending.items():
            if unit_ref not in asked:
                poll = actor.progress.options(concurrency_group="progress").remote()
                self.polls[poll] = (unit_ref, self.calls[unit_ref])

    def _result(self, ref):
        ray = self.ray
        token, actor = self.pending.pop(ref)
        self.calls.pop(ref, None)
        name = actor._actor_id.hex()
        try:
            result = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            self._died(name, actor, exc)
            if ref in self.displaced:
                self.displaced.discard(ref)
                return token, None, Displaced(f"queued on an actor that died: {exc}")
            return token, None, exc
        except ray.exceptions.RayTaskError as exc:
            self._done(name, ref)
            return token, None, exc.cause if exc.cause is not None else exc
        except ray.exceptions.RayError as exc:  # its result was lost with the node
            self._done(name, ref)
            return token, None, exc
        self._done(name, ref)
        self.bytes_received += wire_bytes(result)
        return token, result, None

    def _done(self, name: str, ref) -> None:
        queue = self.queues.get(name)
        if queue is not None and ref in queue:
            queue.remove(ref)

    def _died(self, name: str, actor, error: BaseException) -> None:
        """The first news of an actor's death: replace it; of its units, the oldest was
        running (a failed attempt), the others are displaced."""
        if name not in self.started:
            return
        self.last_error = error
        del self.started[name]
        queue = self.queues.pop(name, deque())
        if queue:
            queue.popleft()
        self.displaced.update(queue)
        self._kill(actor)
        self._launch()

    def _not_started(self) -> str:
        return (f"{len(self.starting)} of {self.workers} scoring actor(s) "
                f"({_amount(self.cpus, 'CPU')}, {_amount(self.gpus, 'GPU')} each) have not "
                "started")

    def _free(self) -> str:
        try:
            free, total = self.ray.available_resources(), self.ray.cluster_resources()
        except Exception:  # only a diagnosis
            return "free resources unknown"
        return (f"free now: {free.get('CPU', 0):g} of {total.get('CPU', 0):g} CPUs, "
                f"{free.get('GPU', 0):g} of {total.get('GPU', 0):g} GPUs")

    def _states(self) -> dict[str, int]:
        """How many actors running units are in each Ray state (ALIVE, RESTARTING, DEAD)."""
        counts: dict[str, int] = {}
        try:
            from ray._private import state
        except ImportError:
            return counts
        for _, actor in self.pending.values():
            try:
                info = state.actors(actor._actor_id.hex()) or {}
                name = info.get("State", "UNKNOWN")
            except Exception:  # only a diagnosis
                name = "UNKNOWN"
            counts[name] = counts.get(name, 0) + 1
        return counts

    def describe_stall(self) -> str:
        """What the actors are doing, for the driver's stall report."""
        parts = []
        if self.starting:
            parts.append(f"{self._not_started()}: Ray is waiting for resources "
                         f"({self._free()}; see `ray status`)")
        states = self._states()
        if self.pending:
            alive = states.pop("ALIVE", 0)
            text = f"{len(self.pending)} actor(s) hold an unfinished unit"
            if alive:
                text += f" ({alive} alive: the unit runs slowly or hangs in the model)"
            if states:
                text += " (" + ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items())) \
                    + ")"
            parts.append(text)
        return "; ".join(parts) or "no actor holds a unit"

    def _kill(self, actor) -> None:
        try:
            self.ray.kill(actor, no_restart=True)
        except Exception:  # already gone
            pass

    def close(self) -> None:
        """Kill every actor (started, busy or still waiting to start), without waiting."""
        actors = list(self.started.values()) + [a for _, a in self.pending.values()] + \
            list(self.starting.values())
        self.started.clear()
        self.queues.clear()
        self.displaced.clear()
        self.pending.clear()
        self.starting.clear()
        self.calls.clear()
        self.polls.clear()
        for actor in actors:
            self._kill(actor)
        if self.started_ray:
            self.started_ray = False
            self.ray.shutdown()


def run_units(executor, items: Iterable[tuple], *, method: str,
              commit: Callable[[tuple, object], None], max_retries: int,
              failed: Callable[[tuple, BaseException], None],
              stall_timeout: float | None = STALL_TIMEOUT, total: int | None = None,
              partial: Callable[[tuple, int], None] | None = None) -> None:
    """Keep every worker busy with ``items`` (``(token, payload)`` pairs), calling ``commit``
    with each item and its result as it arrives; an item that fails is retried up to
    ``max_retries`` times, then reported to ``failed`` while the rest goes on. A worker's
    :class:`AtlasError` (it cannot write its parts) stops the loop at once.

    ``partial(item, tokens)``, if given, hears the real tokens of the batches an item in
    flight has finished, as the executor learns them, and ``partial(item, 0)`` when an
    attempt fails (its retry starts again from 0); only ``commit`` says an item is done.

    The watchdog: when no unit finishes (committed or failed) for ``stall_timeout``
    seconds (None or 0: never), :class:`IngestError` says what is committed, what is
    pending and what the workers are doing (``total``: how many items there are, for the
    count). What was committed stays committed."""
    source = iter(items)
    retry: deque = deque()
    attempts: dict[int, int] = {}
    exhausted = False
    done = gave_up = 0
    last = time.monotonic()
    watch = getattr(executor, "watch", None)
    if watch is not None:
        watch(partial)

    def take():
        nonlocal exhausted
        if retry:
            return retry.popleft()
        if not exhausted:
            item = next(source, None)
            if item is not None:
                return item
            exhausted = True
        return None

    while True:
        while executor.busy < executor.capacity:
            item = take()
            if item is None:
                break
            executor.submit(item, item[1], method)
        if executor.busy == 0 and exhausted and not retry:
            return
        left = None
        if stall_timeout:
            left = last + stall_timeout - time.monotonic()
            if left <= 0:
                raise IngestError(_stall_message(executor, stall_timeout, done=done,
                                                 gave_up=gave_up, total=total))
        outcome = executor.next_result(left)
        if outcome is None:  # nothing finished yet, or a worker joined: look again
            continue
        last = time.monotonic()
        item, result, error = outcome
        if error is not None:
            if partial is not None:
                partial(item, 0)
            if isinstance(error, Displaced):  # it never ran: no attempt spent
                retry.appendleft(item)
                continue
            if isinstance(error, AtlasError):  # a worker cannot write the atlas (a full
                raise error  # disk, no access): every other unit would fail the same way
            attempts[id(item)] = attempts.get(id(item), 0) + 1
            if attempts[id(item)] <= max_retries:
                retry.append(item)
            else:
                gave_up += 1
                failed(item, error)
            continue
        commit(item, result)
        done += 1


def _stall_message(executor, stall_timeout: float, *, done: int, gave_up: int,
                   total: int | None) -> str:
    busy = executor.busy
    if total is not None:
        counts = (f"{done} of {total} unit(s) committed in this run, "
                  f"{total - done - gave_up} pending ({busy} in flight)")
    else:
        counts = f"{done} unit(s) committed in this run, {busy} in flight, more pending"
    if gave_up:
        counts += f", {gave_up} failed"
    describe = getattr(executor, "describe_stall", None)
    state = f"; {describe()}" if describe is not None else ""
    return (f"no work unit finished in the last {stall_timeout:g} s (the stall timeout): "
            f"{counts}{state}. Committed work is kept: re-run the same command to resume. "
            "If a unit can take longer than that, raise --stall-timeout (0 turns the watchdog "
            "off)")


def run_units_timed(executor, items: Iterable[tuple], *, method: str,
                    commit: Callable[[tuple, object], None], max_retries: int,
                    failed: Callable[[tuple, BaseException], None], progress,
                    stall_timeout: float | None = STALL_TIMEOUT,
                    total: int | None = None,
                    partial: Callable[[tuple, int], None] | None = None) -> float:
    """:func:`run_units` inside the ``progress`` display, then close ``executor`` (also on
    an error or Ctrl-C); returns the seconds it took."""
    started = time.perf_counter()
    try:
        with progress:
            run_units(executor, items, method=method, commit=commit, max_retries=max_retries,
                      failed=failed, stall_timeout=stall_timeout, total=total,
                      partial=partial)
    finally:
        executor.close()
    return time.perf_counter() - started
