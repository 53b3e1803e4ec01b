"""Parquet parts: their names, the one writer of their bytes, their key statistics, and the
format every read of them uses (page checksums verified)."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from seqatlas import schema
from seqatlas.errors import AtlasError
from seqatlas.locations import RemoteLocation
from seqatlas.util import file_sha256

# Rows per Parquet row group: ~1 MB of positions columns, ~16 MB of fp16 embeddings.
ROW_GROUP_ROWS = {"sequences": 65536, "positions": 131072, "tokens": 16384, "ablations": 131072,
                  "repeats": 131072, "variants": 131072,
                  "pooled": 16384}
# the columns a table's rows are keyed and sorted on (compaction, region reads)
KEY_COLUMNS = {"positions": ("seq_id", "pos"), "tokens": ("seq_id", "start"),
               "repeats": ("seq_id", "start"), "ablations": ("seq_id", "pos"),
               "variants": ("seq_id", "pos"), "pooled": ("seq_id", "start")}
_END_COLUMNS = {"tokens": "end", "repeats": "end", "pooled": "end"}


def part_name(key: str) -> str:
    """The file name of a unit's part in each of its tables (from its content key)."""
    return f"part-{key[:24]}.parquet"


def _write_table(data: pa.Table, where, table: str) -> None:
    """The one Parquet writer of parts (driver or worker, local or remote: the same bytes)."""
    pq.write_table(data, where, row_group_size=ROW_GROUP_ROWS[table],
                   **parquet_options(table, data.schema))


def parquet_options(table: str, arrow_schema: pa.Schema) -> dict:
    """The Parquet writer options of parts of ``table``."""
    lists = [c for c in schema.LETTER_COLUMNS if c in arrow_schema.names and
             pa.types.is_float32(arrow_schema.field(c).type.value_type)]
    # float32 log-probabilities do not repeat: byte-stream-split floats compress, a
    # dictionary does not (measured: 130 -> 83 B per residue). DuckDB reads no
    # byte-stream-split float16, so float16 lists keep the default encoding.
    encoding = {"column_encoding": {f"{c}.list.element": "BYTE_STREAM_SPLIT" for c in lists},
                "use_dictionary": [c for c in arrow_schema.names if c not in lists]} \
        if lists else {}
    return {"compression": "zstd", "write_statistics": True, "write_page_checksum": True,
            **encoding}


def part_stats(table: str, data: pa.Table) -> dict | None:
    """A part's key ranges (:attr:`seqatlas.manifest.PartRecord.stats`), None for tables
    without coordinates or without rows."""
    import pyarrow.compute as pc

    keys = KEY_COLUMNS.get(table)
    if keys is None or data.num_rows == 0 or not all(k in data.column_names for k in keys):
        return None
    ids = pc.min_max(data[keys[0]])
    low = pc.min_max(data[keys[1]])
    end = _END_COLUMNS.get(table)
    high = pc.min_max(data[end]) if end in data.column_names else low
    if ids["min"].as_py() is None or low["min"].as_py() is None:
        return None
    return {"seq_id": [ids["min"].as_py(), ids["max"].as_py()],
            "pos": [int(low["min"].as_py()), int(high["max"].as_py())]}


def write_parquet(path: Path, table: str, data: pa.Table) -> tuple[int, str]:
    """Write ``data`` as a part of ``table`` at ``path`` (a temporary name) with the atlas's
    Parquet settings, fsynced; returns ``(bytes, sha256)``."""
    _write_table(data, path, table)
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())
    return os.stat(path).st_size, file_sha256(path)


def parquet_bytes(table: str, data: pa.Table) -> bytes:
    """A part's bytes in memory (uploaded in one piece to a remote atlas)."""
    sink = pa.BufferOutputStream()
    _write_table(data, sink, table)
    return sink.getvalue().to_pybytes()


def write_remote(location: RemoteLocation, name: str, table: str, data: pa.Table
                  ) -> tuple[int, str]:
    payload = parquet_bytes(table, data)
    location.write_bytes(payload, name)
    return len(payload), hashlib.sha256(payload).hexdigest()


def parquet_format():
    """The Parquet format of every read of committed parts: page checksums verified."""
    import pyarrow.dataset as ds

    return ds.ParquetFileFormat(default_fragment_scan_options=ds.ParquetFragmentScanOptions(
        page_checksum_verification=True))


def storage_error(exc: OSError, path: Path, doing: str) -> AtlasError:
    """An ``OSError`` while writing the atlas as an error that says what to do."""
    reason = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
              errno.EROFS: "the file system is read-only",
              errno.EACCES: "permission denied", errno.EPERM: "permission denied"}.get(
        exc.errno, exc.strerror or str(exc))
    return AtlasError(f"cannot {doing} in {path}: {reason}. Nothing partial was committed; "
                      "committed work is kept. Free space or fix the permissions, then re-run "
                      "to resume.")


