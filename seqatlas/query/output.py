"""Result writers: an Arrow result (a table or a stream of record batches) to a file or a
binary stream as TSV, CSV, JSON, JSONL or Parquet, written by seqatlas (never by DuckDB);
the sandbox, the CLI and the probes write their results through them.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pyarrow as pa

from seqatlas.errors import ConfigError
from seqatlas.util import check_output, output_file

# where a result goes: the files write_result writes, and for the CLI's stdout also a rich
# table; auto is a table on a terminal, else TSV (on stdout), or the format the suffix of
# --output names (else parquet)
FILE_FORMATS = ("tsv", "csv", "json", "jsonl", "parquet")
OUTPUT_FORMATS = ("auto", "table", *FILE_FORMATS)
SUFFIX_FORMATS = {".tsv": "tsv", ".txt": "tsv", ".csv": "csv", ".json": "json",
                  ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
_BREAKS = re.compile(r"[\t\n\r]")


def json_record(record: dict) -> str:
    """One row as JSON, on one line: NaN and infinities become null at any depth (JSON has
    neither), other values as :func:`_plain` makes them."""
    return json.dumps(_plain(record))


def _interval_text(value) -> str:
    """A month-day-nanosecond interval as DuckDB writes one: ``1 month 2 days 00:00:01.5``."""
    months, days, nanos = value.months, value.days, value.nanoseconds
    parts = [f"{n} {unit}{'' if abs(n) == 1 else 's'}"
             for n, unit in ((months, "month"), (days, "day")) if n]
    if nanos or not parts:
        sign, nanos = ("-" if nanos < 0 else ""), abs(nanos)
        seconds, fraction = divmod(nanos, 10**9)
        clock = f"{sign}{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        parts.append(clock + (f".{fraction:09d}".rstrip("0") if fraction else ""))
    return " ".join(parts)


def _plain(value):
    """A Python value from Arrow made JSON-serialisable (non-finite floats become None)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and not isinstance(value, pa.MonthDayNano):
        return [_plain(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, pa.MonthDayNano):
        return _interval_text(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def _json_texts(array: pa.Array) -> list[str]:
    """Every value of ``array`` as JSON text (``null`` for a null), column-wise."""
    import pyarrow.compute as pc

    kind = array.type
    if pa.types.is_dictionary(kind):
        return _json_texts(array.dictionary_decode())
    if pa.types.is_floating(kind):  # pyarrow writes the shortest text that reads back
        return ["null" if v is None or v in ("nan", "inf", "-inf") else v
                for v in pc.cast(array, pa.string()).to_pylist()]
    if pa.types.is_integer(kind) or pa.types.is_decimal(kind):
        return ["null" if v is None else v for v in pc.cast(array, pa.string()).to_pylist()]
    if pa.types.is_boolean(kind):
        return ["null" if v is None else ("true" if v else "false") for v in array.to_pylist()]
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return ["null" if v is None else json.dumps(v, ensure_ascii=False)
                for v in array.to_pylist()]
    valid = array.is_valid().to_pylist()
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_map(kind) \
            or pa.types.is_fixed_size_list(kind):
        if pa.types.is_fixed_size_list(kind):
            size = kind.list_size
            first, offsets = array.offset * size, [i * size for i in range(len(array) + 1)]
        else:
            bounds = array.offsets.to_pylist()
            first, offsets = bounds[0], [b - bounds[0] for b in bounds]
        span = offsets[-1] if offsets else 0
        if pa.types.is_map(kind):
            keys = _json_texts(array.keys.slice(first, span))
            keys = [k if k.startswith('"') else json.dumps(k) for k in keys]
            items = _json_texts(array.items.slice(first, span))
            return ["{" + ", ".join(f"{keys[j]}: {items[j]}" for j in range(lo, hi)) + "}"
                    if ok else "null" for ok, lo, hi in zip(valid, offsets, offsets[1:])]
        values = _json_texts(array.values.slice(first, span))
        return ["[" + ", ".join(values[lo:hi]) + "]" if ok else "null"
                for ok, lo, hi in zip(valid, offsets, offsets[1:])]
    if pa.types.is_struct(kind):
        names = [json.dumps(kind.field(i).name, ensure_ascii=False)
                 for i in range(kind.num_fields)]
        fields = [_json_texts(child) for child in array.flatten()]
        return ["{" + ", ".join(f"{name}: {texts[i]}" for name, texts in zip(names, fields))
                + "}" if ok else "null" for i, ok in enumerate(valid)]
    return [json.dumps(_plain(v), ensure_ascii=False, default=str)
            for v in array.to_pylist()]


def _needs_text(kind: pa.DataType) -> bool:
    """Whether pyarrow's CSV writer cannot write a column of ``kind`` as it is."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return (pa.types.is_nested(kind) or pa.types.is_interval(kind) or pa.types.is_binary(kind)
            or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind))


def _csv_schema(arrow_schema: pa.Schema) -> pa.Schema:
    """The schema :func:`csv_ready` gives batches of ``arrow_schema``."""
    return pa.schema([pa.field(f.name, pa.string()) if _needs_text(f.type) else f
                      for f in arrow_schema])


def _csv_text(column):
    """``column`` (Array or ChunkedArray) as a string column CSV can carry, or None when the
    CSV writer takes it as it is."""
    if not _needs_text(column.type):
        return None
    nested = pa.types.is_nested(column.type.value_type if pa.types.is_dictionary(column.type)
                                else column.type)

    def convert(array: pa.Array) -> pa.Array:
        if pa.types.is_dictionary(array.type):
            array = array.dictionary_decode()
        texts = _json_texts(array) if nested else [_plain(v) for v in array.to_pylist()]
        valid = array.is_valid().to_pylist()
        return pa.array([t if ok else None for t, ok in zip(texts, valid)], pa.string())

    if isinstance(column, pa.ChunkedArray):
        return pa.chunked_array([convert(chunk) for chunk in column.chunks], pa.string())
    return convert(column)


def csv_ready(data: pa.Table | pa.RecordBatch) -> pa.Table | pa.RecordBatch:
    """``data`` with every column pyarrow's CSV writer cannot write turned into text, for CSV
    and TSV output: nested columns (lists, arrays, structs, maps, unions) as JSON
    (``[0.1, 0.2]``, ``{"a": 1}``; a map as an object with text keys; NaN and infinities as
    null), intervals as DuckDB writes them (``1 day 00:00:01.5``), binary as UTF-8 text with
    undecodable bytes backslash-escaped. A null stays null (an empty field); other columns
    are left as they are, and ``data`` itself is returned when nothing needs converting."""
    columns = [_csv_text(column) for column in data.columns]
    if all(c is None for c in columns):
        return data
    arrays = [data.column(i) if c is None else c for i, c in enumerate(columns)]
    return type(data).from_arrays(arrays, names=data.schema.names)


def write_tsv(reader: pa.RecordBatchReader, sink) -> int:
    """Tab-separated values without quotes (a header line, then one line per row) to the
    binary ``sink``; returns the row count. Values are written as in CSV (nested ones as
    JSON, see :func:`csv_ready`), a null as an empty field; a value holding a tab or a line
    break, which TSV cannot carry, is refused."""
    import pyarrow.compute as pc

    refusal = ConfigError("a value holds a tab or a line break, which TSV cannot carry; use "
                          "--format csv (quoted) or parquet")
    names = reader.schema.names
    if any(_BREAKS.search(name) for name in names):
        raise refusal
    sink.write(("\t".join(names) + "\n").encode())
    rows = 0
    for batch in reader:
        if not batch.num_rows:
            continue
        columns = [pc.cast(column, pa.string()) for column in csv_ready(batch).columns]
        if any(pc.any(pc.match_substring_regex(column, _BREAKS.pattern)).as_py()
               for column in columns):
            raise refusal
        lines = pc.binary_join_element_wise(*columns, "\t", null_handling="replace",
                                            null_replacement="")
        sink.write(("\n".join(lines.to_pylist()) + "\n").encode())
        rows += batch.num_rows
    return rows


def file_format(output: str | os.PathLike, format: str) -> str:
    """The format a result is written to ``output`` in: ``format`` itself, or for ``auto``
    (and ``table``, which no file can hold) the one ``output``'s suffix names
    (:data:`SUFFIX_FORMATS`: .tsv/.txt, .csv, .json, .jsonl/.ndjson), else parquet."""
    if format in FILE_FORMATS:
        return format
    if format not in ("auto", "table"):
        raise ConfigError(f"--format {format} cannot be written to a file; use one of "
                          f"{', '.join(FILE_FORMATS)}")
    return SUFFIX_FORMATS.get(Path(output).suffix.lower(), "parquet")


def write_stream(batches: pa.RecordBatchReader | pa.Table, sink, format: str) -> int:
    """Write a result to the binary file object ``sink`` (a file, ``sys.stdout.buffer``; only
    written to, never sought) as ``format``, one of :data:`FILE_FORMATS`; returns the row
    count. TSV as :func:`write_tsv`; CSV quoted, nested values as JSON (:func:`csv_ready`);
    JSON one array of row objects, one row a line; JSONL one row object a line; Parquet
    zstd-compressed."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if format not in FILE_FORMATS:
        raise ConfigError(f"--format {format} is not one of {', '.join(FILE_FORMATS)}")
    reader = batches.to_reader() if isinstance(batches, pa.Table) else batches
    if format == "tsv":
        return write_tsv(reader, sink)
    rows = 0
    if format == "parquet":
        with pq.ParquetWriter(sink, reader.schema, compression="zstd") as writer:
            for batch in reader:
                writer.write_batch(batch)
                rows += batch.num_rows
    elif format == "csv":
        with pacsv.CSVWriter(sink, _csv_schema(reader.schema)) as writer:
            for batch in reader:
                writer.write_batch(csv_ready(batch))
                rows += batch.num_rows
    else:  # (before the first row, between rows, after the last, without rows)
        opening, separator, closing, empty = (("", "\n", "\n", "") if format == "jsonl"
                                              else ("[\n", ",\n", "\n]\n", "[]\n"))
        for batch in reader:
            records = [json_record(record) for record in batch.to_pylist()]
            if records:
                sink.write(((opening if rows == 0 else separator)
                            + separator.join(records)).encode())
                rows += len(records)
        sink.write((closing if rows else empty).encode())
    return rows


def write_result(batches: pa.RecordBatchReader | pa.Table, output: str | os.PathLike,
                 format: str) -> int:
    """Write a result to ``output`` through :func:`seqatlas.util.output_file` (``-``:
    stdout; never inside an atlas; special files in place) as :func:`write_stream` writes
    ``format`` (resolved by :func:`file_format`); returns the row count."""
    format = file_format(output, format)
    check_output(output)
    with output_file(output) as tmp, open(tmp, "wb") as fh:
        return write_stream(batches, fh, format)
