"""The detector's in-context copies as ``repeats`` rows (``annotate --detect``).

The detector itself (its definition and the ``copy_offset``/``copy_strand`` columns it fills
at ingest) is :mod:`seqatlas.copy_detector`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from seqatlas import schema
from seqatlas.copy_detector import DEFINITION_VERSION
from seqatlas.errors import ConfigError
from seqatlas.store import AtlasReader, AtlasWriter

SOURCE = schema.COPY_REPEAT_SOURCE
REPEAT_CLASS = schema.COPY_REPEAT_CLASS
FAMILIES = {1: "direct", -1: "reverse_complement"}


@dataclass
class CopyRuns:
    """Runs of consecutive positions of one window whose copies are one shifted (direct) or
    mirrored (reverse complement) stretch; arrays, one entry per run, in atlas order.
    ``seq`` indexes the atlas's sequence ids; intervals are 0-based half-open."""

    seq: np.ndarray
    start: np.ndarray
    end: np.ndarray
    direct: np.ndarray  # bool
    partner_start: np.ndarray
    partner_end: np.ndarray
    window_start: np.ndarray
    window_end: np.ndarray

    def __len__(self) -> int:
        return len(self.start)


def copy_runs(table: pa.Table, seq_order: list[str]) -> CopyRuns:
    """The runs of positions rows with a copy (seq_id, pos, window_start, window_end,
    copy_offset, copy_strand); ``seq_order``: the atlas's sequence ids in order."""
    import pyarrow.compute as pc

    if table.num_rows == 0:
        empty = np.zeros(0, dtype=np.int64)
        return CopyRuns(empty, empty, empty, empty.astype(bool), empty, empty, empty, empty)
    order = {s: i for i, s in enumerate(seq_order)}
    seq_ids = table["seq_id"].combine_chunks().dictionary_encode()
    names = seq_ids.dictionary.to_pylist()
    seq = np.array([order[s] for s in names], dtype=np.int64)[seq_ids.indices.to_numpy()]
    pos = table["pos"].to_numpy()
    window = table["window_start"].to_numpy()
    window_end = table["window_end"].to_numpy() if "window_end" in table.column_names \
        else np.zeros(len(pos), dtype=np.int64)
    offset = table["copy_offset"].to_numpy().astype(np.int64)
    direct = pc.equal(table["copy_strand"], "+").to_numpy(zero_copy_only=False)
    rows = np.lexsort((pos, seq))
    seq, pos, window, window_end, offset, direct = (a[rows] for a in (
        seq, pos, window, window_end, offset, direct))
    # direct: the copy is the stretch shifted by offset; reverse complement: mirrored
    # about an axis, pos + partner = 2 * pos + offset
    partner_key = np.where(direct, offset, 2 * pos + offset)
    new = np.ones(len(pos), dtype=bool)
    new[1:] = ((seq[1:] != seq[:-1]) | (pos[1:] != pos[:-1] + 1) | (window[1:] != window[:-1])
               | (direct[1:] != direct[:-1]) | (partner_key[1:] != partner_key[:-1]))
    first = np.flatnonzero(new)
    last = np.concatenate([first[1:], [len(pos)]]) - 1
    start, end = pos[first], pos[last] + 1
    is_direct, key = direct[first], partner_key[first]
    return CopyRuns(seq=seq[first], start=start, end=end, direct=is_direct,
                    partner_start=np.where(is_direct, start + key, key - end + 1),
                    partner_end=np.where(is_direct, end + key, key - start + 1),
                    window_start=window[first], window_end=window_end[first])


def _intervals(table: pa.Table, seq_order: list[str]) -> pa.Table:
    """Positions rows with a copy -> ``repeats`` rows, one per :func:`copy_runs` run."""
    import pyarrow.compute as pc

    runs = copy_runs(table, seq_order)
    if not len(runs):
        return schema.REPEATS.empty_table()
    seq_names = pa.array(seq_order, pa.string()).take(pa.array(runs.seq))
    partner = pc.binary_join_element_wise(
        seq_names, pc.binary_join_element_wise(pa.array(runs.partner_start).cast(pa.string()),
                                               pa.array(runs.partner_end).cast(pa.string()),
                                               "-"), ":")
    count = len(runs)
    return pa.table({
        "seq_id": seq_names,
        "start": pa.array(runs.start, pa.int64()),
        "end": pa.array(runs.end, pa.int64()),
        "strand": pa.array(np.where(runs.direct, "+", "-")),
        "name": partner,
        "class": pa.array([REPEAT_CLASS] * count, pa.string()),
        "family": pa.array(np.where(runs.direct, FAMILIES[1], FAMILIES[-1])),
        "source": pa.array([SOURCE] * count, pa.string()),
        "score": pa.nulls(count, pa.float64()),
    }, schema=schema.REPEATS)


def read_copies(atlas: AtlasReader, paths: list | None = None) -> pa.Table:
    """The positions rows that have an in-context copy, from the atlas's positions parts
    (``paths``: some of them; default all)."""
    import pyarrow.dataset as ds

    columns = ["seq_id", "pos", "window_start", "window_end", "copy_offset", "copy_strand"]
    paths = atlas.part_paths("positions") if paths is None else paths
    if not paths:
        return schema.POSITIONS.empty_table().select(columns)
    return atlas.dataset(paths, schema.POSITIONS).to_table(
        columns=columns, filter=ds.field("copy_offset").is_valid())


def seq_order(atlas) -> list[str]:
    """An atlas's sequence ids, in order."""
    return atlas.sequences(columns=["seq_id"])["seq_id"].to_pylist()


def check_detected(manifest: dict, path) -> int:
    k = manifest.scoring.copy_k if manifest.scoring else None
    if not k:
        raise ConfigError(f"{path} was ingested with --copy-k 0, so its positions have no copy "
                          "columns; re-ingest into a new atlas with --copy-k K (or the default)")
    return k


def copy_repeats(atlas) -> pa.Table:
    """The detector's copies of an atlas as ``repeats`` rows, without writing anything.

    Each row is a run of consecutive positions, scored from one window, whose copies form one
    stretch: ``strand`` "+" (family ``direct``: shifted by a constant offset) or "-" (family
    ``reverse_complement``: mirrored). ``name`` is that stretch, ``seq_id:start-end``, 0-based
    half-open; class ``in_context_copy``, source ``seqatlas-copies``, score null.
    """
    atlas = AtlasReader(atlas)
    check_detected(atlas.manifest, atlas.path)
    return _intervals(read_copies(atlas),
                      seq_order(atlas))


def _not_committed(reader: AtlasReader, table: pa.Table) -> pa.Table:
    """The rows of ``table`` not already among the atlas's detected copies (a copy lies
    within one window, so within one unit: equal rows are the same detection)."""
    import pyarrow.compute as pc

    keys = ["seq_id", "start", "end", "strand", "name"]
    committed = reader.repeats(columns=[*keys, "source"])
    committed = committed.filter(pc.equal(committed["source"], SOURCE)).select(keys)
    if committed.num_rows == 0 or table.num_rows == 0:
        return table
    seen = set(zip(*(committed[k].to_pylist() for k in keys)))
    mask = [row not in seen for row in zip(*(table[k].to_pylist() for k in keys))]
    return table.filter(pa.array(mask, pa.bool_()))


def annotate_copies(atlas) -> dict:
    """Commit :func:`copy_repeats` to the atlas's ``repeats`` table.

    Only positions parts not covered by an earlier detection are read, so re-running adds
    nothing, and after a further ingest it adds the new parts' copies only.
    """
    with AtlasWriter(atlas) as writer:
        k = check_detected(writer.manifest, writer.path)
        covered = {unit for record in writer.manifest.units.values()
                   if record.get("detector") == SOURCE for unit in record["positions_units"]}
        parts = writer.manifest.table_parts("positions")
        todo = sorted(name for name, meta in parts.items()
                      if not set(meta.covered_units()) <= covered)
        summary = {"file": None, "format": SOURCE, "copy_k": k, "renamed": {},
                   "positions_parts": len(todo), "repeats": 0, "already_imported": not todo}
        if not todo:
            return summary
        reader = AtlasReader(writer.path)
        paths = [p for p in reader.part_paths("positions") if p.name in set(todo)]
        table = _intervals(read_copies(reader, paths), seq_order(reader))
        if any(set(parts[name].covered_units()) & covered for name in todo):
            # a compacted part holding units detected before: keep only the new copies
            table = _not_committed(reader, table)
        units = sorted({u for name in todo for u in parts[name].covered_units()} - covered)
        key = "copies-" + hashlib.sha256(json.dumps([DEFINITION_VERSION, k, units])
                                         .encode()).hexdigest()
        writer.commit(key, {"repeats": table},
                      unit={"detector": SOURCE, "copy_k": k,
                            "definition_version": DEFINITION_VERSION, "positions_units": units,
                            "repeats": table.num_rows})
        summary["repeats"] = table.num_rows
        return summary
