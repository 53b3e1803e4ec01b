"""Planning an ingest: inputs, sequences, windows and content-keyed work units.

Everything here is deterministic in the inputs and the scoring parameters (never in the
number of workers), so a re-run after a crash plans the same units with the same keys.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa

from seqatlas import schema
from seqatlas.errors import InputError
from seqatlas.fasta import FastaRecord, FastaScan, KindGuess, read_fasta
from seqatlas.scoring.scorer import WindowJob
from seqatlas.scoring.windows import Window, tile_record


@dataclass
class SequenceInfo:
    seq_id: str
    description: str
    length: int
    sha1: str
    skip_runs: list[tuple[int, int]] = field(default_factory=list)  # long N runs, not scored
    ordinal: int = -1
    global_start: int = -1
    token_offset: int = -1
    raw_sha1: str | None = None  # SHA-1 of the residues as read (case kept): the rows'
    # source, checked again when they are built (``sha1``, the stored one, is of uppercase)


@dataclass
class InputPlan:
    path: Path
    size: int
    sha256: str
    kind: str
    sequences: list[SequenceInfo]
    registered: bool = False  # already recorded in the atlas manifest
    guess: KindGuess | None = None  # the kind the content looks like (seen by the scan)
    source: str | None = None  # what the user gave when ``path`` is a copy of a stream


    def describe(self) -> dict:
        return {"path": self.source or os.path.abspath(self.path), "size": self.size, "sha256": self.sha256,
                "kind": self.kind, "records": len(self.sequences),
                "residues": sum(s.length for s in self.sequences),
                "first_ordinal": self.sequences[0].ordinal if self.sequences else None}

    def sequences_table(self) -> pa.Table:
        rows = {name: [] for name in schema.SEQUENCES.names}
        for s in self.sequences:
            rows["seq_id"].append(s.seq_id)
            rows["ordinal"].append(s.ordinal)
            rows["length"].append(s.length)
            rows["description"].append(s.description)
            rows["source"].append(str(self.path.resolve()))
            rows["sha1"].append(s.sha1)
            rows["global_start"].append(s.global_start)
            rows["token_offset"].append(s.token_offset)
        return pa.Table.from_pydict(rows, schema=schema.SEQUENCES)


@dataclass
class UnitPlan:
    key: str
    input_index: int
    windows: list[tuple[int, Window]] = field(default_factory=list)  # (sequence index, window)
    cost: int = 0  # tokens computed

    @property
    def positions(self) -> int:
        return sum(w.own_end - w.own_start for _, w in self.windows)

    @property
    def unscored(self) -> int:
        """Positions in long N runs, written with null scores."""
        return sum(w.own_end - w.own_start for _, w in self.windows if not w.scored)


def n_runs(residues: bytes, min_length: int) -> list[tuple[int, int]]:
    """Half-open intervals of runs of N (either case) at least ``min_length`` long."""
    if min_length < 1:
        return []
    pattern = re.compile(rb"[Nn]{%d,}" % min_length)
    return [(m.start(), m.end()) for m in pattern.finditer(residues)]


def scan_input(path: Path, kind: str, seen_ids: set[str], *, skip_n_runs: int = 0) -> InputPlan:
    """Validate a FASTA file completely and record its sequences (nothing is written), in
    one read that also hashes the file.

    For DNA and RNA, runs of at least ``skip_n_runs`` N are recorded so they are not scored.
    """
    scan = FastaScan(path, kind=kind, seen_ids=seen_ids)
    runs = skip_n_runs if kind != "protein" else 0
    sequences = [_sequence_info(record, skip_n_runs=runs) for record in scan]
    return InputPlan(path=path, size=scan.size, sha256=scan.sha256,  # type: ignore[arg-type]
                     kind=kind, sequences=sequences, guess=scan.guess)


def _sequence_info(record: FastaRecord, *, skip_n_runs: int) -> SequenceInfo:
    return SequenceInfo(record.id, record.description, record.length,
                        sha1=hashlib.sha1(record.sequence.upper()).hexdigest(),
                        skip_runs=n_runs(record.sequence, skip_n_runs),
                        raw_sha1=hashlib.sha1(record.sequence).hexdigest())


def plan_units(inputs: list[InputPlan], *, fingerprint: str, window: int, overlap: int,
               cost: Callable[[Window], int], unit_tokens: int,
               context: str = "centred") -> list[UnitPlan]:
    """Consecutive windows grouped until a unit's ``cost`` (tokens computed) reaches
    ``unit_tokens``; units never span input files. ``context``: how windows share their
    overlap (:func:`seqatlas.scoring.windows.tile`)."""
    units: list[UnitPlan] = []
    for index, plan in enumerate(inputs):
        current = UnitPlan(key="", input_index=index)
        for s_index, seq in enumerate(plan.sequences):
            for w in tile_record(seq.length, window, overlap, seq.skip_runs, context):
                current.windows.append((s_index, w))
                current.cost += cost(w)
                if current.cost >= unit_tokens:
                    units.append(current)
                    current = UnitPlan(key="", input_index=index)
        if current.windows:
            units.append(current)
    for unit in units:
        plan = inputs[unit.input_index]
        content = [fingerprint, plan.sha256] + [
            (plan.sequences[s].seq_id, plan.sequences[s].sha1, plan.sequences[s].token_offset,
             w.start, w.end, w.own_start, w.own_end, w.scored) for s, w in unit.windows]
        unit.key = hashlib.sha256(json.dumps(content).encode()).hexdigest()
    return units


def iter_unit_jobs(plan: InputPlan, units: list[UnitPlan], *, kind: str,
                   skip: set[str]) -> Iterator[tuple[UnitPlan, list[WindowJob]]]:
    """Stream the file once, yielding each unit not in ``skip`` with its window jobs.

    Every record read is checked against the plan (id, length, SHA-1 of its residues) before
    any of its windows is handed out: a file rewritten since it was scanned raises
    :class:`InputError` in the driver, so the unit holding the changed record is never
    scored or committed (and not retried: the error ends the ingest; units committed
    before it hold records that were checked)."""
    wanted: dict[int, list[tuple[int, int]]] = {}  # sequence -> (unit, window index)
    for u, unit in enumerate(units):
        if unit.key in skip:
            continue
        for k, (s_index, _) in enumerate(unit.windows):
            wanted.setdefault(s_index, []).append((u, k))
    pending: dict[int, list[WindowJob]] = {}
    read = 0
    for s_index, record in enumerate(_reread(plan, kind)):
        read += 1
        if s_index >= len(plan.sequences):
            raise _changed(plan, f"it now has a record {record.id!r} (line {record.line}) "
                           f"after the {len(plan.sequences)} it had")
        seq = plan.sequences[s_index]
        check_record(plan, seq, record)
        for u, k in wanted.get(s_index, []):
            w = units[u].windows[k][1]
            pending.setdefault(u, []).append(WindowJob(
                seq_id=seq.seq_id, token_offset=seq.token_offset, start=w.start, end=w.end,
                own_start=w.own_start, own_end=w.own_end,
                residues=record.sequence[w.start : w.end], scored=w.scored,
                seq_length=seq.length))
            if k == len(units[u].windows) - 1:  # complete: hand it out before reading on
                yield units[u], pending.pop(u)
    if read < len(plan.sequences):
        raise _changed(plan, f"it now ends after {read} of its {len(plan.sequences)} records "
                       f"(record {plan.sequences[read].seq_id!r} is gone)")


def check_record(plan: InputPlan, seq: SequenceInfo, record: FastaRecord) -> None:
    """Refuse a record read during scoring that is not the one planned."""
    if record.id != seq.seq_id:
        raise _changed(plan, f"record {record.ordinal + 1} (line {record.line}) is now "
                       f"{record.id!r}, not {seq.seq_id!r}")
    if record.length != seq.length:
        raise _changed(plan, f"record {seq.seq_id!r} (line {record.line}) now has "
                       f"{record.length} residues, not {seq.length}")
    sha1 = hashlib.sha1(record.sequence.upper()).hexdigest()
    if sha1 != seq.sha1:
        raise _changed(plan, f"record {seq.seq_id!r} (line {record.line}) has other residues "
                       f"(SHA-1 {sha1[:12]}…, planned {seq.sha1[:12]}…)")
    if seq.raw_sha1 is not None and hashlib.sha1(record.sequence).hexdigest() != seq.raw_sha1:
        raise _changed(plan, f"record {seq.seq_id!r} (line {record.line}) has the same residues "
                       "in another case (soft-masking)")


def _reread(plan: InputPlan, kind: str) -> Iterator[FastaRecord]:
    """The records of ``plan``'s file, read again; a read that fails means it changed."""
    try:
        records = read_fasta(plan.path, kind=kind)
    except InputError as exc:  # gone, or unreadable
        raise _changed(plan, str(exc)) from None
    while True:
        try:
            record = next(records)
        except StopIteration:
            return
        except InputError as exc:  # FastaError included: it no longer reads as planned
            raise _changed(plan, str(exc)) from None
        yield record


def _changed(plan: InputPlan, what: str) -> InputError:
    return InputError(
        f"{plan.path} changed during the ingest: {what}. No row was built from what changed "
        "(units committed before it are kept). The atlas registered the file as it was when "
        f"the ingest began (sha256 {plan.sha256[:12]}…): put that version back and re-run "
        "to finish, or ingest the new version into a new --atlas.")
