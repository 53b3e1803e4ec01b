"""Tiling sequences into overlapping windows; pure functions, no model.

Each position is scored from exactly one window. How consecutive windows share their overlap
depends on the context the model reads (``context``):

- ``centred`` (masked LMs, which read both sides): a position belongs to the window in which
  it is most central; consecutive windows split their overlap at the midpoint between their
  centres.
- ``left`` (a causal LM on one strand, which reads only what comes before): windows step by
  ``window - overlap`` and a position belongs to the last window that gives it at least
  ``overlap`` positions of left context (the first window owns from the sequence start).
- ``both`` (a causal LM on both strands: the reverse strand reads what comes after): windows
  step by ``window - 2 * overlap`` and every position keeps at least ``overlap`` positions of
  context on each side (except at the sequence ends).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    start: int  # window bounds in sequence coordinates, 0-based half-open
    end: int
    own_start: int  # the positions scored from this window
    own_end: int
    scored: bool = True  # False: a long run of N, whose positions are not sent to the model

    @property
    def length(self) -> int:
        return self.end - self.start


def default_overlap(window: int) -> int:
    """A quarter of the window: every owned position keeps >= 1/8 window of context each side."""
    return window // 4


CONTEXTS = ("centred", "left", "both")


def tile(length: int, window: int, overlap: int, context: str = "centred") -> list[Window]:
    """Windows covering ``[0, length)``; the last one is aligned to the end of the sequence."""
    if window < 1:
        raise ValueError("window must be at least 1")
    if not 0 <= overlap < window:
        raise ValueError("overlap must be in [0, window)")
    if context == "both" and 2 * overlap >= window:
        raise ValueError("overlap must be below half the window for context on both sides")
    if length <= window:
        return [Window(0, length, 0, length)]
    step = window - (2 * overlap if context == "both" else overlap)
    split = {"centred": _split, "both": _split,
             "left": lambda left, right, _: right + overlap}[context]
    starts = list(range(0, length - window, step))
    starts.append(length - window)
    if len(starts) > 1 and starts[-1] == starts[-2]:
        starts.pop()
    windows = []
    for k, start in enumerate(starts):
        if k == 0:
            own_start = 0
        else:
            own_start = split(starts[k - 1], start, window)
        own_end = length if k == len(starts) - 1 else split(start, starts[k + 1], window)
        windows.append(Window(start, start + window, own_start, own_end))
    return windows


def _split(left_start: int, right_start: int, window: int) -> int:
    """First position closer to the right window's centre (ties go to the left window)."""
    # centres are start + (window - 1) / 2; p belongs right when p - c_left > c_right - p
    twice_mid = left_start + right_start + window - 1
    return twice_mid // 2 + 1


def tile_record(length: int, window: int, overlap: int,
                skip: list[tuple[int, int]] = (), context: str = "centred") -> list[Window]:
    """Windows of a record whose ``skip`` runs (sorted, disjoint) are left unscored.

    Each skipped run becomes one unscored window owning exactly the run; the stretches
    between runs are tiled independently, so no window spans a skipped run.
    """
    windows: list[Window] = []
    cursor = 0
    for run_start, run_end in list(skip) + [(length, length)]:
        if run_start > cursor:
            windows.extend(Window(cursor + w.start, cursor + w.end, cursor + w.own_start,
                                  cursor + w.own_end)
                           for w in tile(run_start - cursor, window, overlap, context))
        if run_end > run_start:
            windows.append(Window(run_start, run_end, run_start, run_end, scored=False))
        cursor = run_end
    return windows
