"""Compaction: many small parts of a table rewritten as few large files sorted by
sequence and position (``start`` for tables of intervals), sequences in the atlas's own
order (their ordinal: so rows follow the global coordinate, and token_id, as an ingest
wrote them), with row groups of
:data:`~seqatlas.store.parts.ROW_GROUP_ROWS` rows, so that a region read opens a few row
groups of one file; the swap is one commit (readers see the old parts or the new, never a
mix), and the replaced parts stay readable for a while (see :mod:`seqatlas.store.writer`).

Nothing else changes: the units (resume keys) stay committed, so a later ingest of the same
input finds nothing to do; each new part records the units whose rows it holds (``units``),
its size and SHA-256, so ``verify`` and ``repair`` cover it (repair drops and re-scores all
of a damaged compacted part's units).

The sort never holds more than ``memory_bytes`` of rows: parts whose key ranges do not
overlap are streamed in key order (an ingest's units are contiguous ranges, so a genome's
parts mostly are); overlapping ones are sorted together, split by sequence (and by position
within a sequence larger than the budget) when they would not fit.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from seqatlas.errors import ConfigError
from seqatlas.locations import RemoteLocation
from seqatlas.store.integrity import file_identity
from seqatlas.store.parts import (KEY_COLUMNS, ROW_GROUP_ROWS, parquet_format, parquet_options,
                                  part_name)
from seqatlas.store.writer import AtlasWriter
from seqatlas.util import TEMP_MARK, file_sha256, fsync_dir, machine_memory_bytes

COMPACTED_TABLES = ("positions", "tokens")  # the tables with a part per unit
FILE_ROWS = {"positions": 16 * 131072, "tokens": 64 * 16384}  # rows per compacted file
COMPACTED = "compacted"  # the unit of a compacted part (its units are listed in `units`)


@dataclass
class _Source:
    name: str
    rows: int
    memory: int  # uncompressed bytes (Parquet metadata)
    units: list[str]
    low: tuple
    high: tuple
    seq_rows: dict[str, int] = field(default_factory=dict)


def _where(writer: AtlasWriter, table: str, name: str):
    if isinstance(writer.path, RemoteLocation):
        return str(writer.path.part(table, name)), writer.path.filesystem
    return str(writer.path / table / name), None


def _open(writer: AtlasWriter, table: str, name: str) -> pq.ParquetFile:
    path, filesystem = _where(writer, table, name)
    return pq.ParquetFile(path if filesystem is None else filesystem.open_input_file(path))


def _sequence_order(writer: AtlasWriter) -> dict[str, int]:
    """seq_id -> its place in the atlas (ordinal); the sort order of compacted files."""
    from seqatlas import schema

    names = sorted(writer.manifest.table_parts("sequences"))
    if not names:
        return {}
    data = _read(writer, "sequences", [_Source(n, 0, 0, [], (), ()) for n in names],
                 schema.SEQUENCES).sort_by("ordinal")
    return {seq_id: i for i, seq_id in enumerate(data["seq_id"].to_pylist())}


def _rank(order: dict[str, int], seq_id: str) -> tuple:
    """A sequence's sort key: its ordinal (sequences the atlas does not list go last)."""
    return (order.get(seq_id, len(order)), seq_id)


def _source(writer: AtlasWriter, table: str, name: str, order: dict[str, int]) -> _Source:
    import pyarrow.compute as pc

    record = writer.manifest.table_parts(table)[name]
    handle = _open(writer, table, name)
    meta = handle.metadata
    memory = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    seq, pos = KEY_COLUMNS[table]
    keys = handle.read(columns=[seq, pos])
    counts = pc.value_counts(keys[seq]).to_pylist()
    seq_rows = {c["values"]: c["counts"] for c in counts}
    first = min(seq_rows, key=lambda k: _rank(order, k))
    last = max(seq_rows, key=lambda k: _rank(order, k))
    low = pc.min(pc.filter(keys[pos], pc.equal(keys[seq], first))).as_py()
    high = pc.max(pc.filter(keys[pos], pc.equal(keys[seq], last))).as_py()
    return _Source(name=name, rows=record.rows, memory=memory, units=record.covered_units(),
                   low=(_rank(order, first), low), high=(_rank(order, last), high),
                   seq_rows=seq_rows)


def _clusters(sources: list[_Source]) -> list[list[_Source]]:
    """Sources grouped so that groups' key ranges do not overlap, in key order."""
    groups: list[list[_Source]] = []
    high = None
    for source in sorted(sources, key=lambda s: (s.low, s.high)):
        if groups and source.low <= high:
            groups[-1].append(source)
            high = max(high, source.high)
        else:
            groups.append([source])
            high = source.high
    return groups


class _Sink:
    """Compacted files of one table: fixed row groups, a new file every FILE_ROWS rows."""

    def __init__(self, writer: AtlasWriter, table: str, arrow_schema: pa.Schema, tag: str):
        self.writer, self.table, self.schema, self.tag = writer, table, arrow_schema, tag
        self.files: dict[str, dict] = {}
        self.pending: list[tuple[pa.Table, set[str]]] = []
        self.pending_rows = 0
        self._file = None

    def add(self, data: pa.Table, units: set[str]) -> None:
        if data.num_rows == 0:
            return
        self.pending.append((data.select(self.schema.names).cast(self.schema), set(units)))
        self.pending_rows += data.num_rows
        while self.pending_rows >= ROW_GROUP_ROWS[self.table]:
            self._flush(ROW_GROUP_ROWS[self.table])

    def _flush(self, rows: int) -> None:
        """Write the first ``rows`` pending rows as one row group; the file holding them
        lists the units of every piece that gave it a row."""
        pieces, units, taken = [], set(), 0
        while taken < rows:
            data, piece_units = self.pending[0]
            take = min(rows - taken, data.num_rows)
            pieces.append(data.slice(0, take))
            units |= piece_units
            taken += take
            if take == data.num_rows:
                self.pending.pop(0)
            else:
                self.pending[0] = (data.slice(take), piece_units)
        self.pending_rows -= rows
        chunk = pa.concat_tables(pieces)
        if self._file is None:
            self._start()
        self._file["writer"].write_table(chunk, row_group_size=rows)
        self._file["rows"] += chunk.num_rows
        self._file["units"] |= units
        seq = KEY_COLUMNS[self.table][0]
        self._file["seq_ids"] |= {chunk[seq][0].as_py(), chunk[seq][-1].as_py()}
        if self._file["rows"] >= FILE_ROWS[self.table]:
            self._finish()

    def _start(self) -> None:
        key = hashlib.sha256(f"{self.tag}:{len(self.files)}".encode()).hexdigest()
        name = part_name(key)
        path, filesystem = _where(self.writer, self.table, name)
        tmp = path.rsplit("/", 1)
        tmp = f"{tmp[0]}/.{tmp[1]}{TEMP_MARK}{os.getpid()}"
        if filesystem is None:
            Path(tmp).parent.mkdir(exist_ok=True)
            sink = tmp
        else:
            sink = filesystem.open_output_stream(tmp)
        self._file = {"name": name, "tmp": tmp, "sink": sink, "rows": 0, "units": set(),
                      "seq_ids": set(), "writer": pq.ParquetWriter(
                          sink, self.schema, **parquet_options(self.table, self.schema))}

    def _finish(self) -> None:
        file, self._file = self._file, None
        file["writer"].close()
        path, filesystem = _where(self.writer, self.table, file["name"])
        if filesystem is None:
            with open(file["tmp"], "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(file["tmp"], path)
            fsync_dir(Path(path).parent)
            info = os.stat(path)
            size, digest, identity = info.st_size, file_sha256(path), file_identity(info)
        else:
            file["sink"].close()
            filesystem.move(file["tmp"], path)
            location = self.writer.path
            identity = list(location.info(self.table, file["name"]))
            size, digest = identity[0], location.sha256(self.table, file["name"])
        # hashed here: readers need not hash it again while the file is unchanged
        self.writer.verified.record(f"{self.table}/{file['name']}", identity, digest)
        low, high = min(file["seq_ids"]), max(file["seq_ids"])
        self.files[file["name"]] = {
            "rows": file["rows"], "bytes": size, "sha256": digest, "unit": COMPACTED,
            "units": sorted(file["units"]),
            "stats": {"seq_id": [low, high], "pos": self._pos_range(path, filesystem)}}

    def _pos_range(self, path, filesystem) -> list[int]:
        handle = pq.ParquetFile(path if filesystem is None else
                                filesystem.open_input_file(path))
        pos = handle.schema_arrow.get_field_index(KEY_COLUMNS[self.table][1])
        end = handle.schema_arrow.get_field_index("end") if self.table == "tokens" else pos
        meta = handle.metadata
        lows = [meta.row_group(i).column(pos).statistics.min for i in range(meta.num_row_groups)]
        highs = [meta.row_group(i).column(end).statistics.max
                 for i in range(meta.num_row_groups)]
        return [int(min(lows)), int(max(highs))]

    def close(self) -> dict[str, dict]:
        if self.pending_rows:
            self._flush(self.pending_rows)
        if self._file is not None:
            self._finish()
        return self.files

    def abort(self) -> None:
        if self._file is not None:
            try:
                self._file["writer"].close()
            finally:
                path, filesystem = self._file["tmp"], _where(self.writer, self.table, "x")[1]
                if filesystem is None:
                    Path(path).unlink(missing_ok=True)
                else:
                    filesystem.delete_file(path)


def _read(writer: AtlasWriter, table: str, sources: list[_Source], arrow_schema, where=None):
    import pyarrow.dataset as ds

    filesystem = writer.path.filesystem if isinstance(writer.path, RemoteLocation) else None
    paths = [_where(writer, table, s.name)[0] for s in sources]
    return ds.dataset(paths, format=parquet_format(), schema=arrow_schema,
                      filesystem=filesystem).to_table(filter=where)


def _sorted(data: pa.Table, table: str, order: dict[str, int]) -> pa.Table:
    import pyarrow.compute as pc

    seq, pos = KEY_COLUMNS[table]
    known = pa.array(list(order), pa.string())
    rank = pc.fill_null(pc.index_in(data[seq], value_set=known), len(order))
    keyed = data.append_column("__rank", rank)
    return keyed.sort_by([("__rank", "ascending"), (seq, "ascending"),
                          (pos, "ascending")]).drop_columns(["__rank"])


def _emit_cluster(writer, table, group: list[_Source], sink: _Sink, arrow_schema,
                  memory_bytes: int, order: dict[str, int]) -> None:
    import pyarrow.dataset as ds

    if sum(s.memory for s in group) <= memory_bytes:
        sink.add(_sorted(_read(writer, table, group, arrow_schema), table, order),
                 {u for s in group for u in s.units})
        return
    seq, pos = KEY_COLUMNS[table]
    per_row = max(1, sum(s.memory for s in group) // max(1, sum(s.rows for s in group)))
    budget_rows = max(1, memory_bytes // per_row)
    batch: list[str] = []
    batch_rows = 0
    seq_rows: dict[str, int] = {}
    for s in group:
        for k, n in s.seq_rows.items():
            seq_rows[k] = seq_rows.get(k, 0) + n

    def emit(ids: list[str], where) -> None:
        holders = [s for s in group if any(i in s.seq_rows for i in ids)]
        sink.add(_sorted(_read(writer, table, holders, arrow_schema, where), table, order),
                 {u for s in holders for u in s.units})

    for seq_id in sorted(seq_rows, key=lambda k: _rank(order, k)):
        rows = seq_rows[seq_id]
        if rows > budget_rows:  # one sequence over the budget: by position ranges
            if batch:
                emit(batch, ds.field(seq).isin(batch))
                batch, batch_rows = [], 0
            holders = [s for s in group if seq_id in s.seq_rows]
            top = max((s.high[1] for s in holders if s.high[0][1] == seq_id), default=0)
            top = max([top] + [s.low[1] for s in holders if s.low[0][1] == seq_id])
            step = max(1, (top + 1) * budget_rows // rows)
            for start in range(0, top + 1, step):
                emit([seq_id], (ds.field(seq) == seq_id) & (ds.field(pos) >= start)
                     & (ds.field(pos) < start + step))
            continue
        if batch_rows + rows > budget_rows and batch:
            emit(batch, ds.field(seq).isin(batch))
            batch, batch_rows = [], 0
        batch.append(seq_id)
        batch_rows += rows
    if batch:
        emit(batch, ds.field(seq).isin(batch))


def _arrow_schema(writer: AtlasWriter, table: str) -> pa.Schema:
    if table == "positions":
        return writer.manifest.positions_schema()
    return writer.manifest.tokens_schema()


def compact_table(writer: AtlasWriter, table: str, *, memory_bytes: int) -> dict:
    """Compact ``table`` of the atlas ``writer`` holds; returns what it did."""
    parts = writer.manifest.table_parts(table)
    loose = [n for n, r in parts.items() if r.units is None]
    before = {"parts_before": len(parts), "rows": sum(r.rows for r in parts.values())}
    if not loose or (len(parts) == 1 and not parts[loose[0]].stats):
        return {**before, "parts_after": len(parts), "rewritten": 0}
    order = _sequence_order(writer)
    sources = [_source(writer, table, n, order) for n in sorted(loose)]
    low = min(s.low for s in sources)
    high = max(s.high for s in sources)
    for name, record in parts.items():  # compacted parts the loose ones fall among
        if record.units is not None:
            source = _source(writer, table, name, order)
            if source.low <= high and low <= source.high:
                sources.append(source)
    names = sorted(s.name for s in sources)
    tag = hashlib.sha256(f"{table}:{','.join(names)}".encode()).hexdigest()
    arrow_schema = _arrow_schema(writer, table)
    sink = _Sink(writer, table, arrow_schema, tag)
    try:
        for group in _clusters(sources):
            _emit_cluster(writer, table, group, sink, arrow_schema, memory_bytes, order)
        added = sink.close()
    except BaseException:
        sink.abort()
        raise
    rows = sum(r["rows"] for r in added.values())
    if rows != sum(s.rows for s in sources):
        raise AssertionError(f"compaction of {table} wrote {rows} rows of "
                             f"{sum(s.rows for s in sources)}")
    writer.replace_parts(table, names, added, operation=f"compact {table}")
    return {**before, "parts_after": len(writer.manifest.table_parts(table)),
            "rewritten": len(names)}


def default_memory_bytes() -> int:
    """Rows held in memory while sorting: a quarter of the machine's memory, at most 4 GiB."""
    return int(min(4 << 30, machine_memory_bytes() // 4))


def compact_atlas(atlas, *, tables: tuple[str, ...] | None = None,
                  memory_bytes: int | None = None) -> dict:
    """Compact the per-unit tables of ``atlas`` (see the module's docstring) and fold the
    log; returns per table the parts before and after."""
    tables = tables or COMPACTED_TABLES
    unknown = [t for t in tables if t not in COMPACTED_TABLES]
    if unknown:
        raise ConfigError(f"cannot compact {', '.join(unknown)}: compaction applies to "
                          f"{', '.join(COMPACTED_TABLES)}")
    memory = memory_bytes or default_memory_bytes()
    with AtlasWriter(atlas) as writer:
        report = {"atlas": str(writer.path), "tables": {
            table: compact_table(writer, table, memory_bytes=memory) for table in tables}}
        writer.fold()
        report["version"] = writer.version
    return report
