"""Planning an ingest: inputs, sequences, windows and content-keyed work units.

Everything here is deterministic in the inputs and the scoring parameters (never in the
number of workers), so a re-run after a crash plans the same units with the same keys.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from seqatlas import schema
from seqatlas.ingest.fasta import read_fasta
from seqatlas.ingest.scoring import FAST_STRIDE, WindowJob
from seqatlas.ingest.windows import Window, tile


@dataclass
class SequenceInfo:
    seq_id: str
    description: str
    length: int
    sha1: str
    ordinal: int = -1
    global_start: int = -1
    token_offset: int = -1


@dataclass
class InputPlan:
    path: Path
    size: int
    sha256: str
    kind: str
    sequences: list[SequenceInfo]
    registered: bool = False  # already recorded in the atlas manifest

    def describe(self) -> dict:
        return {"path": str(self.path), "size": self.size, "sha256": self.sha256,
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
            rows["source"].append(str(self.path))
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


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def scan_input(path: Path, kind: str, seen_ids: set[str]) -> InputPlan:
    """Validate a FASTA file completely and record its sequences (nothing is written)."""
    sequences = []
    for record in read_fasta(path, kind=kind, seen_ids=seen_ids):
        sha1 = hashlib.sha1(record.sequence.upper()).hexdigest()
        sequences.append(SequenceInfo(record.id, record.description, len(record.sequence), sha1))
    return InputPlan(path=path, size=path.stat().st_size, sha256=file_sha256(path), kind=kind,
                     sequences=sequences)


def window_cost(window: Window, *, likelihood: str, unmasked_pass: bool, n_special: int) -> int:
    tokens = window.length + n_special
    passes = {"exact": window.own_end - window.own_start,
              "fast": min(FAST_STRIDE, window.own_end - window.own_start)}.get(likelihood, 0)
    return tokens * (passes + int(unmasked_pass))


def plan_units(inputs: list[InputPlan], *, fingerprint: str, window: int, overlap: int,
               likelihood: str, unmasked_pass: bool, n_special: int,
               unit_tokens: int) -> list[UnitPlan]:
    """Consecutive windows grouped until a unit costs ``unit_tokens`` computed tokens."""
    units: list[UnitPlan] = []
    for index, plan in enumerate(inputs):
        current = UnitPlan(key="", input_index=index)
        for s_index, seq in enumerate(plan.sequences):
            for w in tile(seq.length, window, overlap):
                current.windows.append((s_index, w))
                current.cost += window_cost(w, likelihood=likelihood,
                                            unmasked_pass=unmasked_pass, n_special=n_special)
                if current.cost >= unit_tokens:
                    units.append(current)
                    current = UnitPlan(key="", input_index=index)
        if current.windows:
            units.append(current)
    for unit in units:
        plan = inputs[unit.input_index]
        content = [fingerprint, plan.sha256] + [
            (plan.sequences[s].seq_id, plan.sequences[s].sha1, plan.sequences[s].token_offset,
             w.start, w.end, w.own_start, w.own_end) for s, w in unit.windows]
        unit.key = hashlib.sha256(json.dumps(content).encode()).hexdigest()
    return units


def iter_unit_jobs(plan: InputPlan, units: list[UnitPlan], *, kind: str,
                   skip: set[str]) -> Iterator[tuple[UnitPlan, list[WindowJob]]]:
    """Stream the file once, yielding each unit not in ``skip`` with its window jobs."""
    wanted: dict[int, list[tuple[int, Window]]] = {}
    for u, unit in enumerate(units):
        for s_index, w in unit.windows:
            wanted.setdefault(s_index, []).append((u, w))
    pending: dict[int, list[WindowJob]] = {}
    done = 0
    for s_index, record in enumerate(read_fasta(plan.path, kind=kind)):
        seq = plan.sequences[s_index]
        for u, w in wanted.get(s_index, []):
            if units[u].key in skip:
                continue
            pending.setdefault(u, []).append(WindowJob(
                seq_id=seq.seq_id, token_offset=seq.token_offset, start=w.start, end=w.end,
                own_start=w.own_start, own_end=w.own_end,
                residues=record.sequence[w.start : w.end]))
        # units whose last window lies in this record are complete
        while done < len(units) and units[done].windows[-1][0] <= s_index:
            if units[done].key not in skip:
                yield units[done], pending.pop(done)
            done += 1
