"""Executors that score work units: Ray actors (the default) or this process.

Both expose ``submit(token, payload, method)`` and ``next_result()`` so one driver loop,
:func:`run_units`, with its retries and commits, serves ingest and the probes on either.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable, Iterable

from seqatlas.errors import IngestError
from seqatlas.util import start_ray


class ScoringWorker:
    """Holds one loaded model and scores units with it (a Ray actor, or in process)."""

    def __init__(self, spec, scoring: dict, threads: int | None = None):
        import torch

        from seqatlas.scoring.scorer import Scorer
        from seqatlas.checkpoints import LoadedModel

        if threads:
            # Ray sets OMP_NUM_THREADS=1 in workers; use the CPUs this actor was given.
            torch.set_num_threads(threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.scorer = Scorer(LoadedModel(spec, device=device), **scoring)

    def score(self, jobs):
        before = (self.scorer.real_tokens, self.scorer.computed_tokens)
        positions, tokens = self.scorer.score(jobs)
        stats = {"real_tokens": self.scorer.real_tokens - before[0],
                 "computed_tokens": self.scorer.computed_tokens - before[1]}
        return positions, tokens, stats

    def rescore(self, tasks):
        """Masked logp of each task's bases (see :meth:`Scorer.rescore`), and the stats."""
        before = (self.scorer.real_tokens, self.scorer.computed_tokens)
        values = self.scorer.rescore(tasks)
        stats = {"real_tokens": self.scorer.real_tokens - before[0],
                 "computed_tokens": self.scorer.computed_tokens - before[1]}
        return values, stats


class LocalExecutor:
    """Scores in this process, one unit at a time (``--workers 0``: debugging, notebooks)."""

    def __init__(self, spec, scoring: dict):
        self.worker = ScoringWorker(spec, scoring)
        self.results: deque = deque()
        self.capacity = 1

    def submit(self, token, payload, method: str = "score") -> None:
        try:
            self.results.append((token, getattr(self.worker, method)(payload), None))
        except Exception as exc:  # reported per unit by the driver loop
            self.results.append((token, None, exc))

    def next_result(self):
        return self.results.popleft()

    @property
    def busy(self) -> int:
        return len(self.results)

    def close(self) -> None:
        pass


def make_executor(spec, scoring: dict, *, workers: int | None, gpus_per_worker: float | None,
                  cpus_per_worker: int | None, address: str | None):
    """The Ray actors, or this process with ``workers=0``."""
    if workers == 0:
        return LocalExecutor(spec, scoring)
    return RayExecutor(spec, scoring, workers=workers, gpus_per_worker=gpus_per_worker,
                       cpus_per_worker=cpus_per_worker, address=address)


class RayExecutor:
    """A pool of scoring actors; a dead actor is replaced and its unit reported as failed."""

    def __init__(self, spec, scoring: dict, *, workers: int | None,
                 gpus_per_worker: float | None,
                 cpus_per_worker: int | None, address: str | None):
        self.ray, self.started_ray = start_ray(
            address, error=IngestError, fallback="use --workers 0 to score without Ray")
        ray = self.ray
        resources = ray.cluster_resources()
        if gpus_per_worker is None:  # a GPU box uses its GPUs without being told
            gpus_per_worker = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
        if workers is None:
            gpus = int(resources.get("GPU", 0))
            workers = max(1, int(gpus // gpus_per_worker)) if gpus_per_worker else 1
        if cpus_per_worker is None:
            cpus_per_worker = max(1, int(resources.get("CPU", 1)) // workers)
        self.actor_class = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker)(
            ScoringWorker)
        self.args = (spec, scoring, cpus_per_worker)
        self.idle = deque(self.actor_class.remote(*self.args) for _ in range(workers))
        self.capacity = workers
        self.pending: dict = {}

    @property
    def busy(self) -> int:
        return len(self.pending)

    def submit(self, token, payload, method: str = "score") -> None:
        actor = self.idle.popleft()
        ref = getattr(actor, method).remote(payload)
        self.pending[ref] = (token, actor)

    def next_result(self):
        ray = self.ray
        ready, _ = ray.wait(list(self.pending), num_returns=1)
        token, actor = self.pending.pop(ready[0])
        try:
            result = ray.get(ready[0])
        except ray.exceptions.RayActorError as exc:
            self.idle.append(self.actor_class.remote(*self.args))
            return token, None, exc
        except ray.exceptions.RayTaskError as exc:
            self.idle.append(actor)
            return token, None, exc.cause if exc.cause is not None else exc
        self.idle.append(actor)
        return token, result, None

    def close(self) -> None:
        for actor in list(self.idle) + [a for _, a in self.pending.values()]:
            self.ray.kill(actor)
        if self.started_ray:
            self.ray.shutdown()


def run_units(executor, items: Iterable[tuple], *, method: str,
              commit: Callable[[tuple, object], None], max_retries: int,
              failed: Callable[[tuple, BaseException], None]) -> None:
    """Keep every worker busy with ``items`` (``(token, payload)`` pairs), calling ``commit``
    with each item and its result as it arrives; an item that fails is retried up to
    ``max_retries`` times, then reported to ``failed`` while the rest goes on."""
    source = iter(items)
    retry: deque = deque()
    attempts: dict[int, int] = {}
    exhausted = False
    while True:
        while executor.busy < executor.capacity:
            if retry:
                item = retry.popleft()
            elif not exhausted:
                item = next(source, None)
                if item is None:
                    exhausted = True
                    continue
            else:
                break
            executor.submit(item, item[1], method)
        if executor.busy == 0:
            return
        item, result, error = executor.next_result()
        if error is not None:
            attempts[id(item)] = attempts.get(id(item), 0) + 1
            if attempts[id(item)] <= max_retries:
                retry.append(item)
            else:
                failed(item, error)
            continue
        commit(item, result)


def run_units_timed(executor, items: Iterable[tuple], *, method: str,
                    commit: Callable[[tuple, object], None], max_retries: int,
                    failed: Callable[[tuple, BaseException], None], progress) -> float:
    """:func:`run_units` inside the ``progress`` display, then close ``executor``; returns
    the seconds it took."""
    started = time.perf_counter()
    try:
        with progress:
            run_units(executor, items, method=method, commit=commit, max_retries=max_retries,
                      failed=failed)
    finally:
        executor.close()
    return time.perf_counter() - started
