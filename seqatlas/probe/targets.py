"""Targets of ``probe icl`` and their matched control regions: pure numpy, no model.

A **target** is a run of consecutive positions, scored from one window, whose in-context
copies (``copy_offset``/``copy_strand``, :mod:`seqatlas.copy_detector`) form one stretch, the
**partner** (:func:`seqatlas.repeats.copies.copy_runs`). A run that overlaps its own partner
(a tandem repeat of period shorter than the run, or a hairpin without a loop) is split so
that no target overlaps its partner: a direct run with offset d into pieces of |d| positions
(each piece's partner is the next or previous period), a reverse-complement run at the axis
of its mirror (each arm's partner is the other arm). The target's residues are never
corrupted.

The **control** region has the partner's length and lies in the same window. Rule
``mirror``: at the same distance from the target as the partner, on the other side. When
that falls outside the window or overlaps the target, the partner or any position that has
an in-context copy (corrupting another copy would be look-up, not control), rule
``nearest``: the admissible region of that length whose start is nearest the mirror start
(ties: the upstream one). No admissible region: rule ``none``, no control.

Direction: a causal model reads only what precedes a position, so ``probe icl`` with a causal
model takes only the targets whose partner lies upstream, and their controls are chosen
among the admissible regions that end before the target (``upstream``): the mirror of an
upstream partner is downstream, where corrupting could not change the target at all, so the
rule is ``nearest`` (the upstream region nearest the mirror start, so nearest the target).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

CONTROL_RULES = ("mirror", "nearest", "none")
DEFINITION_VERSION = 1  # bump when the target or control definition changes


@dataclass(frozen=True)
class Target:
    seq: int  # index into the atlas's sequence order
    start: int
    end: int
    partner_start: int
    partner_end: int
    direct: bool
    window_start: int
    window_end: int
    control_start: int | None = None
    control_end: int | None = None
    control_rule: str = "none"

    @property
    def length(self) -> int:
        return self.end - self.start


def split_runs(runs) -> list[Target]:
    """Targets from copy runs (a :class:`~seqatlas.repeats.copies.CopyRuns`), each split so
    that it does not overlap its partner."""
    targets = []
    for i in range(len(runs)):
        seq, s, e = int(runs.seq[i]), int(runs.start[i]), int(runs.end[i])
        ps, direct = int(runs.partner_start[i]), bool(runs.direct[i])
        ws, we = int(runs.window_start[i]), int(runs.window_end[i])
        if direct:
            shift = ps - s
            step = abs(shift) if abs(shift) < e - s else e - s
            pieces = [(a, min(a + step, e)) for a in range(s, e, step)]
            targets += [Target(seq, a, b, a + shift, b + shift, True, ws, we)
                        for a, b in pieces]
        else:
            axis = ps + int(runs.end[i]) - 1  # pos + partner(pos): constant along the run
            pieces = [(s, min(e, (axis + 1) // 2)), (max(s, axis // 2 + 1), e)]
            targets += [Target(seq, a, b, axis - b + 1, axis - a + 1, False, ws, we)
                        for a, b in pieces if b > a]
    return targets


def choose_control(target: Target, has_copy: np.ndarray, *, upstream: bool = False) -> Target:
    """``target`` with its control region and the rule that chose it. ``has_copy``: per
    position of the target's window, whether it has an in-context copy. ``upstream``: only
    regions that end before the target are admissible (a causal model's control)."""
    ws, we = target.window_start, target.window_end
    length = target.partner_end - target.partner_start
    if target.partner_start >= target.end:  # partner downstream: control upstream
        mirror = target.start - (target.partner_start - target.end) - length
    else:
        mirror = target.end + (target.start - target.partner_end)
    span = we - ws
    if length < 1 or length > span:
        return target
    bad = has_copy[:span].astype(bool).copy()
    for lo, hi in ((target.start, target.end), (target.partner_start, target.partner_end)):
        bad[max(lo - ws, 0):max(hi - ws, 0)] = True
    blocked = np.concatenate([[0], np.cumsum(bad)])
    starts = np.arange(span - length + 1)
    ok = blocked[starts + length] == blocked[starts]
    if upstream:
        ok &= starts + length <= target.start - ws
    if not ok.any():
        return target
    local = mirror - ws
    if 0 <= local < len(ok) and ok[local]:
        return _with_control(target, mirror, length, "mirror")
    admissible = np.flatnonzero(ok)
    nearest = admissible[np.argmin(np.abs(admissible - local))]  # first minimum: upstream
    return _with_control(target, ws + int(nearest), length, "nearest")


def _with_control(target: Target, start: int, length: int, rule: str) -> Target:
    return replace(target, control_start=start, control_end=start + length, control_rule=rule)
