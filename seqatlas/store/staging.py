"""Staging: on a cluster, scoring workers write their units' parts under temporary names
in a run's staging area (:func:`stage_parts`) and send the driver only names, sizes, row
counts, digests and key statistics; the driver checks each staged file and commits it
(:meth:`seqatlas.store.writer.AtlasWriter.commit_staged`)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from seqatlas.errors import AtlasDamagedError, AtlasError
from seqatlas.locations import RemoteLocation
from seqatlas.store.parts import part_name, part_stats, storage_error, write_parquet, write_remote
from seqatlas.util import TEMP_MARK

STAGING = ".staging"  # one directory per run: what its workers wrote, not yet committed
STAGING_OPEN = ".open"  # in a remote run's staging area while the run goes on


@dataclass(frozen=True)
class StagedPart:
    """A part written under a temporary name (``staged``) in its table's directory, not yet
    committed: what a worker tells the driver instead of sending the rows."""

    table: str
    name: str
    staged: str
    rows: int
    bytes: int
    sha256: str
    stats: dict | None = None


class StagingUnreachable(AtlasError):
    """This worker does not see the run's staging area (see :func:`stage_parts`)."""


def _staging_visible(staging: str | os.PathLike | RemoteLocation) -> bool:
    """Whether this process (a scoring worker, on its node) sees a run's staging area."""
    try:
        if isinstance(staging, RemoteLocation):
            return staging.info(STAGING_OPEN) is not None
        return Path(staging).is_dir()
    except OSError:  # no access from here (credentials, endpoint, a mount that is gone)
        return False


def stage_parts(staging: str | os.PathLike | RemoteLocation, key: str,
                tables: dict[str, pa.Table | None]) -> dict[str, StagedPart]:
    """Write unit ``key``'s parts into a run's staging area (on a scoring worker; see
    :meth:`AtlasWriter.staging_area`); the driver commits them with
    :meth:`AtlasWriter.commit_staged`. Nothing is left behind when this fails."""
    if not _staging_visible(staging):
        raise StagingUnreachable(
            f"this worker cannot see the atlas's staging area {staging}: either the run that "
            "made it has ended, or this Ray node does not reach the atlas (a directory on "
            "another machine; for s3://, the credentials or the endpoint). The workers write "
            "their parts into the atlas, so it must be on storage every node reaches (a shared "
            "file system, s3://); use such a location, or --write-parts driver to send every "
            "result to the driver instead.")
    if isinstance(staging, RemoteLocation):
        def write(tmp, table, data):
            return write_remote(staging, tmp, table, data)
        delete = staging.delete
    else:
        directory = Path(staging)

        def write(tmp, table, data):
            return write_parquet(directory / tmp, table, data)

        def delete(tmp):
            (directory / tmp).unlink()
    name, tag = part_name(key), f"-{uuid.uuid4().hex[:12]}"
    staged, written = {}, []
    try:
        for table, data in tables.items():
            if data is None:
                continue
            tmp = f"{table}.{name}{TEMP_MARK}{os.getpid()}{tag}"
            written.append(tmp)
            size, digest = write(tmp, table, data)
            staged[table] = StagedPart(table=table, name=name, staged=tmp, rows=data.num_rows,
                                       bytes=size, sha256=digest,
                                       stats=part_stats(table, data))
    except BaseException as exc:
        for tmp in written:
            try:
                delete(tmp)
            except OSError:
                pass  # never written, or already gone
        if isinstance(exc, OSError):
            raise storage_error(exc, staging, "write a part") from None
        raise
    return staged


def footer_rows(handle) -> int:
    """The row count in the Parquet footer of the open file ``handle`` (then closed)."""
    with handle:
        return pq.ParquetFile(handle).metadata.num_rows


def verify_staged(where, size: int, part: StagedPart, key: str, *,
                  rows: Callable[[], int]) -> None:
    """A staged part must have the size and (from its footer) the rows its worker reported."""
    problem = None
    if size != part.bytes:
        problem = f"{size:,} bytes, the worker wrote {part.bytes:,}"
    else:
        try:
            found = rows()
        except (OSError, pa.ArrowException) as exc:
            found, problem = None, f"its Parquet footer cannot be read ({exc})"
        if found is not None and found != part.rows:
            problem = f"{found:,} rows, the worker wrote {part.rows:,}"
    if problem:
        raise AtlasDamagedError(f"the {part.table} part a worker staged for unit {key[:16]} "
                                f"({where}) is not as written: {problem}. Nothing of it was "
                                "committed; re-run to score it again.")


