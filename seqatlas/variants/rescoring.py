"""Distributions at chosen sites, computed again with the atlas's own model and settings.

A site is rescored in the window that scored it at ingest (``window_start``/``window_end``
of its positions row), with the bases that window owned, so that the passes are the ones
ingest ran: exact masks the site's mask unit, fast the pass its unit was dealt into,
unmasked reads the window's unmasked pass. The reverse strand is the reverse complement of
the same window; its distribution is read back onto the forward strand's letters. The
numbers therefore equal what a full ingest stores in ``letter_logp``/``letter_logp_rc``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from seqatlas.checkpoints.tokenizers import reverse_complement
from seqatlas.errors import IngestError, describe_error
from seqatlas.progress import Meter
from seqatlas.scoring.ablation import RescoreTask
from seqatlas.scoring.workers import make_executor, run_units_timed

TASKS_PER_UNIT = 256  # rescoring tasks sent to a worker at once


@dataclass(frozen=True)
class SiteTask:
    """One window to rescore, on one strand, and the forward-strand bases read from it."""

    task: RescoreTask  # in the strand's own view (reverse complement for "-")
    strand: str  # "+" or "-"
    length: int  # window length (to map reverse-view bases back)


def owned_range(window_starts: np.ndarray, start: int, end: int) -> tuple[int, int]:
    """The window-local bases ``[a, b)`` that the window ``[start, end)`` owned at ingest:
    those whose positions row names it (``window_starts`` per position of the sequence)."""
    owned = np.flatnonzero(window_starts[start:end] == start)
    if not len(owned):
        return 0, end - start
    return int(owned[0]), int(owned[-1]) + 1


def strand_tasks(task: RescoreTask, *, strands: str, rna: bool) -> list[SiteTask]:
    """``task`` (forward view) on each strand scored: the reverse strand's view is the
    reverse complement of the (possibly corrupted) window, with its own, bases and masked
    regions mirrored."""
    length = len(task.residues)
    out = [SiteTask(task, "+", length)]
    if strands == "both":
        mirrored = RescoreTask(
            residues=reverse_complement(task.residues, rna=rna),
            own_start=length - task.own_end, own_end=length - task.own_start,
            bases=(length - 1 - np.asarray(task.bases, dtype=np.int64))[::-1].copy(),
            masked_regions=tuple((length - hi, length - lo) for lo, hi in task.masked_regions))
        out.append(SiteTask(mirrored, "-", length))
    return out


def forward_values(site_task: SiteTask, values: np.ndarray, complement: np.ndarray
                   ) -> np.ndarray:
    """A task's ``(bases, letters)`` distributions in the forward strand's base order and
    letters (the reverse view's are mirrored and complemented back)."""
    if site_task.strand == "+":
        return values
    return values[::-1][:, complement]


def rescore_sites(spec, scoring: dict, site_tasks: list[SiteTask], *, workers: int | None,
                  batch_tokens: int | None, progress, label: str = "rescoring"
                  ) -> tuple[list[np.ndarray], dict]:
    """Each task's ``(bases, letters)`` distributions in its own view's order, computed on
    the executor (``workers=0``: in this process); and the tokens it took."""
    scoring = {**scoring, "batch_tokens": batch_tokens}
    units = [list(range(i, min(i + TASKS_PER_UNIT, len(site_tasks))))
             for i in range(0, len(site_tasks), TASKS_PER_UNIT)]
    results: list[np.ndarray | None] = [None] * len(site_tasks)
    stats = {"real_tokens": 0, "computed_tokens": 0}
    failures: list[str] = []
    meter = Meter(label=label, unit="sites", rate_unit="sites",
                  total=sum(len(t.task.bases) for t in site_tasks), progress=progress)

    def commit(item, result) -> None:
        values, unit_stats = result
        for i, value in zip(item[0], values):
            results[i] = value
        for key in stats:
            stats[key] += unit_stats[key]
        meter.advance(sum(len(site_tasks[i].task.bases) for i in item[0]))

    def failed(item, error) -> None:
        failures.append(describe_error(error))

    if units:
        executor = make_executor(spec, scoring, workers=workers, gpus_per_worker=None,
                                 cpus_per_worker=None, address=None)
        source = ((unit, [site_tasks[i].task for i in unit]) for unit in units)
        run_units_timed(executor, source, method="rescore_letters", commit=commit,
                        max_retries=2, failed=failed, progress=meter)
    if failures:
        raise IngestError(f"rescoring failed for {len(failures)} batch(es) of sites after "
                          f"retries; last error: {failures[-1]}")
    return results, stats


def with_bases(task: RescoreTask, bases) -> RescoreTask:
    """``task`` reading only ``bases``."""
    return replace(task, bases=np.asarray(bases, dtype=np.int64))
