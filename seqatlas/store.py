"""The storage layer: the atlas directory, its manifest, the atomic commit of Parquet parts,
and reading committed parts.

Commit protocol: a part is written under a temporary name, fsynced, renamed, and only then
recorded in ``atlas.json``, which is itself replaced atomically. Readers see only parts the
manifest lists, so a crash at any point leaves a consistent atlas. On a cluster the scoring
workers write their units' parts under temporary names themselves (:func:`stage_parts`) and
send the driver only names, sizes, row counts and digests; the driver checks each staged
file, renames it and records it (:meth:`AtlasWriter.commit_staged`). A temporary or an
unrecorded part left by a crash is removed when a writer next opens the atlas.

Integrity: each part's size and SHA-256 are recorded at commit, and Parquet page checksums
are written and verified on read. Every read of a table first checks its parts: a missing
or resized part, or one whose bytes no longer hash to the recorded value, is refused by
name. Hashing every part on every read would cost a full read, so a part is re-hashed only
when its file identity (size, mtime, ctime, inode, device) differs from the one it had when
last hashed (``.verified``, an append-only log): any write to a file changes its ctime.
``seqatlas verify`` re-hashes everything regardless.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import socket
import threading
import time
import os
import shutil
import stat
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from seqatlas import schema
from seqatlas.errors import AtlasDamagedError, AtlasError, AtlasMismatchError
from seqatlas.locations import RemoteLocation, remote_location
from seqatlas.manifest import InputRecord, Manifest, ModelRecord, PartRecord, ScoringRecord
from seqatlas.util import (ATLAS_MARKER, TEMP_MARK, atomic_write, cache_dir, file_sha256,
                           fsync_dir, replacing, utc_now)

MANIFEST = ATLAS_MARKER
LOCK = ".lock"
VERIFIED_LOG = ".verified"
STAGING = ".staging"  # one directory per run: what its workers wrote, not yet committed
STAGING_OPEN = ".open"  # in a remote run's staging area while the run goes on
LOCK_STALE_SECONDS = 300.0  # a remote lock object not refreshed for this long is abandoned
LOCK_REFRESH_SECONDS = 30.0  # how often a remote writer refreshes its lock object
# Rows per Parquet row group: ~1 MB of positions columns, ~16 MB of fp16 embeddings.
ROW_GROUP_ROWS = {"sequences": 65536, "positions": 131072, "tokens": 16384, "ablations": 131072,
                  "repeats": 131072, "variants": 131072}


RUNS_KEPT = 100  # run records kept in the manifest (the most recent)


def part_name(key: str) -> str:
    """The file name of a unit's part in each of its tables (from its content key)."""
    return f"part-{key[:24]}.parquet"


def _write_table(data: pa.Table, where, table: str) -> None:
    """The one Parquet writer of parts (driver or worker, local or remote: the same bytes)."""
    lists = [c for c in schema.LETTER_COLUMNS if c in data.column_names and
             pa.types.is_float32(data.schema.field(c).type.value_type)]
    # float32 log-probabilities do not repeat: byte-stream-split floats compress, a
    # dictionary does not (measured: 130 -> 83 B per residue). DuckDB reads no
    # byte-stream-split float16, so float16 lists keep the default encoding.
    encoding = {"column_encoding": {f"{c}.list.element": "BYTE_STREAM_SPLIT" for c in lists},
                "use_dictionary": [c for c in data.column_names if c not in lists]} \
        if lists else {}
    pq.write_table(data, where, compression="zstd", row_group_size=ROW_GROUP_ROWS[table],
                   write_statistics=True, write_page_checksum=True, **encoding)


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


def _write_remote(location: RemoteLocation, name: str, table: str, data: pa.Table
                  ) -> tuple[int, str]:
    payload = parquet_bytes(table, data)
    location.write_bytes(payload, name)
    return len(payload), hashlib.sha256(payload).hexdigest()


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
            return _write_remote(staging, tmp, table, data)
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
                                       bytes=size, sha256=digest)
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


@dataclass(frozen=True)
class PartDamage:
    """A committed part that is not as it was committed."""

    table: str
    name: str
    unit: str
    problem: str

    def __str__(self) -> str:
        return f"{self.table}/{self.name}: {self.problem}"


def _identity(info: os.stat_result) -> list[int]:
    return [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_dev]


class _VerifiedLog:
    """Parts hashed since they last changed: ``table/name`` -> (file identity, SHA-256)."""

    def __init__(self, root: Path | RemoteLocation):
        self.path = _verified_path(root)
        self.entries: dict[str, tuple[list[int], str]] = {}
        self.lines = 0
        try:
            with open(self.path, encoding="utf-8") as fh:
                for line in fh:
                    self.lines += 1
                    try:
                        key, identity, digest = json.loads(line)
                    except (ValueError, TypeError):
                        continue  # a line cut short by a crash
                    self.entries[key] = (identity, digest)
        except (OSError, UnicodeDecodeError):
            pass

    def trusted(self, key: str, identity: list[int], digest: str) -> bool:
        return self.entries.get(key) == (identity, digest)

    def record(self, key: str, identity: list[int], digest: str) -> None:
        self.entries[key] = (identity, digest)
        try:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps([key, identity, digest]) + "\n")
            self.lines += 1
        except OSError:
            pass  # a read-only atlas: the part is hashed again next time

    def compact(self, keep: set[str]) -> None:
        """Rewrite the log with one line per part still committed (writers only)."""
        if self.lines <= 2 * len(self.entries) + 1000:
            return
        self.entries = {k: v for k, v in self.entries.items() if k in keep}
        text = "".join(json.dumps([k, i, d]) + "\n" for k, (i, d) in self.entries.items())
        try:
            atomic_write(self.path, text.encode())
            self.lines = len(self.entries)
        except OSError:
            pass


def _verified_path(root: Path | RemoteLocation) -> Path:
    """Where the ``.verified`` log of an atlas lives: in it, or for a remote atlas in this
    machine's cache (what one machine hashed says nothing of another's reads)."""
    if isinstance(root, RemoteLocation):
        directory = cache_dir() / "remote-atlases"
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass  # the log is then not kept: parts are hashed on every read
        return directory / f"{root.key()}{VERIFIED_LOG}"
    return root / VERIFIED_LOG


def _damage_message(path: Path, damage: list[PartDamage]) -> str:
    shown = "; ".join(map(str, damage[:5])) + (f"; and {len(damage) - 5} more"
                                                if len(damage) > 5 else "")
    return (f"{path}: {len(damage)} committed part(s) damaged ({shown}). `seqatlas verify "
            f"--atlas {path}` lists everything; `seqatlas repair --atlas {path}` (or re-running "
            "the ingest) rewrites them from the inputs.")


def check_parts(root: Path, manifest: Manifest, verified: _VerifiedLog,
                tables: list[str] | None = None, *, full: bool = False) -> list[PartDamage]:
    """The committed parts of ``tables`` (default: all) that are not as committed."""
    damage = []
    for table in tables or schema.TABLES:
        for name, record in sorted(manifest.table_parts(table).items()):
            problem = _part_problem(root, verified, table, name, record, full=full)
            if problem:
                damage.append(PartDamage(table, name, record.unit, problem))
    return damage


def _part_problem(root: Path | RemoteLocation, verified: _VerifiedLog, table: str, name: str,
                  record: PartRecord, *, full: bool) -> str | None:
    if isinstance(root, RemoteLocation):
        return _remote_part_problem(root, verified, table, name, record, full=full)
    path = root / table / name
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if info.st_size != record.bytes:
        return (f"{info.st_size:,} bytes on disk, {record.bytes:,} when committed "
                "(truncated or rewritten)")
    return _digest_problem(verified, f"{table}/{name}", _identity(info), record, full=full,
                           digest=lambda: file_sha256(path))


def _remote_part_problem(root: RemoteLocation, verified: _VerifiedLog, table: str, name: str,
                         record: PartRecord, *, full: bool) -> str | None:
    try:
        info = root.info(table, name)
    except OSError as exc:
        return f"unreadable ({exc})"
    if info is None:
        return "missing"
    if info[0] != record.bytes:
        return (f"{info[0]:,} bytes in the store, {record.bytes:,} when committed "
                "(truncated or rewritten)")
    return _digest_problem(verified, f"{table}/{name}", list(info), record, full=full,
                           digest=lambda: root.sha256(table, name))


def _digest_problem(verified: _VerifiedLog, key: str, identity, record: PartRecord, *,
                    full: bool, digest: Callable[[], str]) -> str | None:
    """The part's SHA-256 against its record, unless ``verified`` trusts its identity."""
    if record.sha256 is None:
        return None  # committed before checksums: its size is all there is to check
    if not full and verified.trusted(key, identity, record.sha256):
        return None
    try:
        value = digest()
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if value != record.sha256:
        return "its bytes changed since it was committed (SHA-256 differs)"
    verified.record(key, identity, value)
    return None


def _load_manifest(root: Path | RemoteLocation) -> tuple[dict, bytes]:
    """The manifest of the atlas at ``root`` as JSON, and its bytes."""
    if isinstance(root, RemoteLocation):
        try:
            raw = root.read_bytes(MANIFEST)
        except OSError as exc:
            raise AtlasError(f"cannot read {root}/{MANIFEST} ({exc}); check the credentials "
                             "and the endpoint") from None
        if raw is None:
            raise AtlasError(f"{root} is not an atlas (no {MANIFEST}); create one with "
                             f"`seqatlas ingest FASTA --atlas {root}`")
    else:
        manifest = root / MANIFEST
        if not manifest.exists():
            raise AtlasError(f"{root} is not an atlas (no {MANIFEST}); "
                             "create one with `seqatlas ingest FASTA --atlas DIR`")
        raw = manifest.read_bytes()
    try:
        return json.loads(raw), raw
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AtlasError(f"{root}/{MANIFEST} is corrupt ({exc}); restore it or re-ingest") \
            from None


def _lock_record(raw: bytes | None) -> dict | None:
    try:
        record = json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _dead_here(held: dict) -> bool:
    """Whether a lock record names a process of this machine that no longer runs."""
    if held.get("host") != socket.gethostname() or not isinstance(held.get("pid"), int):
        return False
    try:
        os.kill(held["pid"], 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def atlas_exists(atlas) -> bool:
    """Whether ``atlas`` (a directory or a URI) holds an atlas manifest."""
    remote = remote_location(atlas)
    if remote is not None:
        return remote.info(MANIFEST) is not None
    return (Path(atlas) / MANIFEST).is_file()


def _footer_rows(handle) -> int:
    """The row count in the Parquet footer of the open file ``handle`` (then closed)."""
    with handle:
        return pq.ParquetFile(handle).metadata.num_rows


def _verify_staged(where, size: int, part: StagedPart, key: str, *,
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


class AtlasReader:
    """An atlas directory, readable as Arrow tables (only committed parts)."""

    def __init__(self, path: str | os.PathLike | RemoteLocation):
        """``path``: an atlas directory, or the URI of a remote one (``s3://bucket/prefix``,
        see :mod:`seqatlas.locations`)."""
        remote = remote_location(path)
        self.path = remote if remote is not None else Path(path)
        self.filesystem = remote.filesystem if remote is not None else None  # None: local
        data, self._manifest_bytes = _load_manifest(self.path)
        version = data.get("schema_version") if isinstance(data, dict) else None
        if version not in schema.READABLE_VERSIONS:
            raise AtlasError(f"{self.path} has schema version {version}; this seqatlas reads "
                             f"versions {', '.join(map(str, schema.READABLE_VERSIONS))}: "
                             "re-ingest into a new --atlas directory, or use the seqatlas "
                             "version that wrote it")
        try:
            self.manifest = Manifest.from_json(data)
        except (KeyError, TypeError, AttributeError) as exc:
            raise AtlasError(f"{self.path}/{MANIFEST} is corrupt (it lacks or misshapes {exc}); restore it "
                             "or re-ingest") from None
        self.schema_version = version
        self._verified = _VerifiedLog(self.path)
        self._sound: set[str] = set()  # tables whose parts this reader has checked

    def __repr__(self) -> str:
        counts = ", ".join(f"{t}={self.count(t)}" for t in schema.TABLES)
        return f"{type(self).__name__}({str(self.path)!r}, {counts})"

    def part_paths(self, table: str) -> list[Path]:
        """The committed parts of ``table``, each checked against its manifest record
        (raises :class:`AtlasDamagedError` naming every damaged one)."""
        if table not in self._sound:
            damage = self.check_parts([table])
            if damage:
                raise AtlasDamagedError(_damage_message(self.path, damage))
            self._sound.add(table)
        if isinstance(self.path, RemoteLocation):
            return [self.path.part(table, name)
                    for name in sorted(self.manifest.table_parts(table))]
        return [self.path / table / name for name in sorted(self.manifest.table_parts(table))]

    def check_parts(self, tables: list[str] | None = None, *,
                    full: bool = False) -> list[PartDamage]:
        """Every committed part of ``tables`` (default: all) that is missing, resized or
        whose bytes changed; ``full`` re-hashes parts whose file looks unchanged too."""
        return check_parts(self.path, self.manifest, self._verified, tables, full=full)

    def count(self, table: str) -> int:
        return sum(p.rows for p in self.manifest.table_parts(table).values())

    def dataset(self, paths: list, arrow_schema: pa.Schema | None = None):
        """A pyarrow dataset of committed parts (from :meth:`part_paths`), read where the
        atlas lives, page checksums verified."""
        import pyarrow.dataset as ds

        return ds.dataset([str(p) for p in paths], format=parquet_format(),
                          schema=arrow_schema, filesystem=self.filesystem)

    def open_part(self, path) -> pq.ParquetFile:
        """One committed part (from :meth:`part_paths`), opened where the atlas lives."""
        return pq.ParquetFile(path if self.filesystem is None else
                              self.filesystem.open_input_file(str(path)))

    def _read(self, table: str, columns, arrow_schema: pa.Schema) -> pa.Table:
        paths = self.part_paths(table)
        if not paths:
            return arrow_schema.empty_table() if columns is None else \
                arrow_schema.empty_table().select(columns)
        try:
            return self.dataset(paths, arrow_schema).to_table(columns=columns)
        except (OSError, ValueError, pa.ArrowException) as exc:  # UnicodeDecodeError included
            raise AtlasDamagedError(
                f"{self.path}: a {table} part cannot be read ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}). Run `seqatlas verify "
                f"--atlas {self.path}`, then `seqatlas repair --atlas {self.path}`.") from None

    def sequences(self, columns: list[str] | None = None) -> pa.Table:
        table = self._read("sequences", None, schema.SEQUENCES).sort_by("ordinal")
        return table if columns is None else table.select(columns)

    def positions(self, columns: list[str] | None = None) -> pa.Table:
        """One row per residue or base; see :data:`seqatlas.schema.POSITIONS` (plus the
        distribution columns where the atlas stores them)."""
        return self._read("positions", columns, self.manifest.positions_schema())

    def repeats(self, columns: list[str] | None = None) -> pa.Table:
        """Imported repeat annotations, 0-based half-open; see :data:`schema.REPEATS`."""
        return self._read("repeats", columns, schema.REPEATS)

    def tokens(self, columns: list[str] | None = None) -> pa.Table:
        """One row per model token, with its embedding(s) when the atlas stores them
        (``embedding``: the first layer; ``embedding_layer_{L}``: each further layer L)."""
        return self._read("tokens", columns, self.manifest.tokens_schema())

    def summary(self) -> dict:
        """Counts and bytes on disk per table, plus the manifest's headline facts."""
        manifest = self.manifest
        tables = {}
        for table in schema.TABLES:
            parts = manifest.table_parts(table)
            tables[table] = {"parts": len(parts), "rows": sum(p.rows for p in parts.values()),
                             "bytes": sum(p.bytes for p in parts.values())}
        return {
            "path": str(self.path),
            "kind": manifest.kind,
            "kind_detected": manifest.kind_detected,
            "model": manifest.model.to_json() if manifest.model else None,
            "scoring": manifest.scoring.to_json() if manifest.scoring else None,
            "inputs": [i.to_json() for i in manifest.inputs],
            "tables": tables,
            "units": {"committed": len(manifest.units)},
            "positions_unscored": sum(u.get("unscored", 0) for u in manifest.units.values()),
            "damaged": [str(d) for d in self.check_parts()],
            "warnings": [dict(w) for w in manifest.warnings or []],
            "created": manifest.created,
            "updated": manifest.updated,
        }


class AtlasWriter:
    """Creates or extends an atlas; the only code that writes parts and the manifest."""

    def __init__(self, path: str | os.PathLike | RemoteLocation, *, kind: str | None = None,
                 model: ModelRecord | dict | None = None,
                 scoring: ScoringRecord | dict | None = None,
                 seqatlas_version: str = "", kind_detected: bool = False):
        """Without ``model`` the atlas must exist already (adding annotations to it).
        ``path``: a directory, or the URI of a remote atlas (:mod:`seqatlas.locations`)."""
        remote = remote_location(path)
        self.path = remote if remote is not None else Path(path)
        self._staging: Path | RemoteLocation | None = None
        self._manifest_bytes: bytes | None = None
        if isinstance(model, dict):
            model = ModelRecord.from_json(model)
        if isinstance(scoring, dict):
            scoring = ScoringRecord.from_json(scoring)
        if remote is not None:
            self._lock = None
            self._open_remote(kind, model, scoring, seqatlas_version, kind_detected)
            return
        if model is None and not (self.path / MANIFEST).exists():
            raise AtlasError(f"{self.path} is not an atlas (no {MANIFEST}); "
                             "create one with `seqatlas ingest FASTA --atlas DIR` first")
        if self.path.exists() and not self.path.is_dir():
            raise AtlasError(f"{self.path} exists and is not a directory")
        manifest_path = self.path / MANIFEST
        if self.path.exists() and any(self.path.iterdir()) and not manifest_path.exists():
            raise AtlasError(f"{self.path} is a non-empty directory that is not an atlas; "
                             "choose a new --atlas directory")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock = open(self.path / LOCK, "a")
        except OSError as exc:
            raise storage_error(exc, self.path, "write the atlas") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise AtlasError(f"{self.path} is being written by another seqatlas process; "
                             "wait for it to finish") from None
        try:
            self._open(manifest_path, kind, model, scoring, seqatlas_version, kind_detected)
        except BaseException:
            self.close()
            raise

    def _open_remote(self, kind, model, scoring, seqatlas_version, kind_detected) -> None:
        """A remote atlas: a lock object instead of a file lock (see :meth:`_take_lock`)."""
        location = self.path
        try:
            exists = location.info(MANIFEST) is not None
            if model is None and not exists:
                raise AtlasError(f"{location} is not an atlas (no {MANIFEST}); create one with "
                                 f"`seqatlas ingest FASTA --atlas {location}` first")
            if not exists and location.any_file():
                raise AtlasError(f"{location} holds files but no {MANIFEST}: it is not an "
                                 "atlas; choose a new --atlas prefix")
            self._take_lock()
        except OSError as exc:
            raise storage_error(exc, location, "open the atlas") from None
        try:
            self._open(location / MANIFEST, kind, model, scoring, seqatlas_version,
                       kind_detected)
        except BaseException:
            self.close()
            raise

    def _take_lock(self) -> None:
        """Take the remote atlas's lock object: refused while another writer's lock is
        fresher than :data:`LOCK_STALE_SECONDS`; two writers that both found none each read
        the object back after writing it, and the one whose write was overwritten backs off."""
        location, now = self.path, time.time()
        held = _lock_record(location.read_bytes(LOCK))
        if held and now - held.get("refreshed", 0) < LOCK_STALE_SECONDS and \
                not _dead_here(held):
            raise AtlasError(
                f"{location} is being written by another seqatlas process (host "
                f"{held.get('host')}, pid {held.get('pid')}, lock refreshed "
                f"{now - held.get('refreshed', 0):.0f} s ago); wait for it to finish. If no "
                f"such process runs any more, delete {location}/{LOCK}.")
        self._owner = {"owner": uuid.uuid4().hex, "host": socket.gethostname(),
                       "pid": os.getpid(), "refreshed": now}
        location.write_bytes(json.dumps(self._owner).encode(), LOCK)
        time.sleep(0.2)  # let a racing writer's PUT land before we read back
        back = _lock_record(location.read_bytes(LOCK))
        if not back or back.get("owner") != self._owner["owner"]:
            self._owner = None
            raise AtlasError(f"{location} is being written by another seqatlas process "
                             "(it took the lock as this one did); wait for it to finish")
        self._lock = True
        self._heartbeat = threading.Event()
        threading.Thread(target=self._keep_lock, args=(self._heartbeat,), daemon=True,
                         name="seqatlas-lock").start()

    def _keep_lock(self, stop: threading.Event) -> None:
        """Refresh the lock object while this writer is open (a thread of its own: a unit
        can take longer than the lock's staleness)."""
        while not stop.wait(LOCK_REFRESH_SECONDS):
            self._refresh_lock()

    def _refresh_lock(self) -> None:
        owner = getattr(self, "_owner", None)
        if owner:
            try:
                self.path.write_bytes(json.dumps({**owner, "refreshed": time.time()}).encode(),
                                      LOCK)
            except OSError:
                pass  # tried again at the next beat

    def _release_lock(self) -> None:
        owner = getattr(self, "_owner", None)
        if getattr(self, "_heartbeat", None) is not None:
            self._heartbeat.set()
        self._owner, self._lock = None, None
        if not owner:
            return
        try:
            held = _lock_record(self.path.read_bytes(LOCK))
            if held and held.get("owner") == owner["owner"]:
                self.path.delete(LOCK)
        except OSError:
            pass  # the lock goes stale on its own

    def _open(self, manifest_path, kind, model, scoring, seqatlas_version,
              kind_detected) -> None:
        if manifest_path.exists():
            reader = AtlasReader(self.path)
            self.manifest, self._manifest_bytes = reader.manifest, reader._manifest_bytes
            self._remove_stale_files()
            self._verified = _VerifiedLog(self.path)
            for table in schema.TABLES:
                self.manifest.parts.setdefault(table, {})
            if model is not None:
                if self.manifest.schema_version != schema.SCHEMA_VERSION:
                    raise AtlasMismatchError(
                        f"{self.path} was written with schema version "
                        f"{self.manifest.schema_version} (this seqatlas writes "
                        f"{schema.SCHEMA_VERSION}); ingest into a new --atlas directory. It "
                        "can still be queried and annotated.")
                self._check_compatible(kind, model, scoring)
        else:
            self._remove_stale_files()
            self._verified = _VerifiedLog(self.path)
            now = utc_now()
            self.manifest = Manifest(
                schema_version=schema.SCHEMA_VERSION, seqatlas_version=seqatlas_version,
                created=now, updated=now, kind=kind, kind_detected=kind_detected, model=model,
                scoring=scoring, parts={t: {} for t in schema.TABLES})
            self._write_manifest()
        self._verified.compact({f"{table}/{name}" for table, parts in self.manifest.parts.items()
                                for name in parts})

    def _remove_stale_files(self) -> None:
        """Temporary files of a writer or worker that died, and parts renamed but never
        recorded (a crash between the two); safe to delete while we hold the lock."""
        committed = getattr(self, "manifest", None)
        if isinstance(self.path, RemoteLocation):
            self._remove_stale_remote(committed)
            return
        stale = []
        for table in schema.TABLES:
            directory = self.path / table
            if not directory.is_dir():
                continue
            stale += directory.glob(f".*{TEMP_MARK}*")
            if committed is not None:
                parts = committed.table_parts(table)
                stale += [p for p in directory.glob("part-*.parquet") if p.name not in parts]
        stale += self.path.glob(f".{MANIFEST}{TEMP_MARK}*")
        for path in stale:
            try:
                path.unlink()
            except OSError:
                pass  # a read-only atlas: readers never look at temporaries
        # what the workers of dead runs staged; a worker still running for such a run (its
        # driver killed) finds its directory gone and fails instead of writing
        shutil.rmtree(self.path / STAGING, ignore_errors=True)

    def _remove_stale_remote(self, committed: Manifest | None) -> None:
        location = self.path
        for table in schema.TABLES:
            parts = committed.table_parts(table) if committed is not None else {}
            for name in location.listdir(table):
                if TEMP_MARK in name or (name.startswith("part-") and name not in parts):
                    location.delete(table, name)
        location.delete_tree(STAGING)

    def staging_area(self) -> Path | RemoteLocation:
        """This writer's staging directory, where workers write parts before the driver
        commits them (created on first use, removed with everything left in it on close)."""
        if self._staging is None and isinstance(self.path, RemoteLocation):
            staging = self.path / STAGING / uuid.uuid4().hex[:16]
            try:
                staging.write_bytes(b"", STAGING_OPEN)
            except OSError as exc:
                raise storage_error(exc, self.path, "create a staging area") from None
            self._staging = staging
        if self._staging is None:
            path = self.path / STAGING / uuid.uuid4().hex[:16]
            try:
                path.mkdir(parents=True)
            except OSError as exc:
                raise storage_error(exc, self.path, "create a staging directory") from None
            self._staging = path
        return self._staging

    def _check_compatible(self, kind: str, model: ModelRecord, scoring: ScoringRecord) -> None:
        """Refuse other settings, listing every difference (compared by stable identifiers,
        never by the manifest's prose)."""
        old = self.manifest
        differences = []
        if old.kind != kind:
            differences.append(f"kind: atlas {old.kind!r}, now {kind!r}")
        # the name is how the model was referred to (a relative path, a hub id): with the
        # same weights it is the same model
        same_weights = old.model.weights_sha256 is not None and \
            old.model.weights_sha256 == model.weights_sha256
        for key, was, now in (("name", old.model.name, old.model.name if same_weights
                               else model.name),
                              ("weights_sha256", old.model.weights_sha256, model.weights_sha256),
                              ("tokenizer", old.model.tokenizer_settings(),
                               model.tokenizer_settings())):
            if was != now:
                differences.append(f"model {key}: atlas {was!r}, now {now!r}")
        # the adapter, objective and shipped code (absent: transformers, masked, none)
        for key, default in (("adapter", "transformers"), ("objective", "masked"),
                             ("code_sha256", None)):
            was, now = old.model.extra.get(key, default), model.extra.get(key, default)
            if was != now:
                differences.append(f"model {key}: atlas {was!r}, now {now!r}")
        was, now = old.scoring.settings(), scoring.settings()
        for key in sorted(set(was) | set(now)):
            if was.get(key) != now.get(key):
                differences.append(f"{key}: atlas {was.get(key)!r}, now {now.get(key)!r}")
        if differences:
            raise AtlasMismatchError(
                f"{self.path} was built with other settings ({'; '.join(differences)}). "
                "Use the atlas's settings (`seqatlas info` shows them) or a new --atlas directory."
            )

    def close(self) -> None:
        if isinstance(self.path, RemoteLocation):
            if self._staging is not None:
                try:
                    self.path.delete_tree(STAGING, self._staging.name)
                except OSError:
                    pass  # removed by the next writer
                self._staging = None
            self._release_lock()
            return
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            try:
                self._staging.parent.rmdir()
            except OSError:
                pass  # not empty: another run's leftovers, removed by the next writer
            self._staging = None
        if not self._lock.closed:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()

    def __enter__(self) -> AtlasWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def committed_units(self) -> set[str]:
        return set(self.manifest.units)

    def _write_manifest(self) -> None:
        """Replace ``atlas.json`` with the manifest in memory; on failure the file on disk
        is unchanged and the caller must restore the in-memory manifest."""
        self.manifest.updated = utc_now()
        if isinstance(self.path, RemoteLocation):
            self._put_manifest()
            return
        try:
            atomic_write(self.path / MANIFEST, self.manifest.dumps())
        except OSError as exc:
            raise storage_error(exc, self.path, f"write {MANIFEST}") from None

    def _put_manifest(self) -> None:
        """Replace a remote atlas's manifest (one PUT: readers get the old or the new one),
        after checking that it is still the one this writer read or wrote last."""
        data = self.manifest.dumps()
        try:
            current = self.path.read_bytes(MANIFEST)
            if current is not None and current != self._manifest_bytes:
                raise AtlasError(f"{self.path}/{MANIFEST} was changed by another process "
                                 "while this one held the lock (a stale lock taken over?); "
                                 "nothing of this change was written. Re-run to resume.")
            self.path.write_bytes(data, MANIFEST)
        except OSError as exc:
            raise storage_error(exc, self.path, f"write {MANIFEST}") from None
        self._manifest_bytes = data

    def _update_manifest(self, change) -> None:
        """Apply ``change`` to the manifest and write it: both or neither."""
        before = Manifest.from_json(self.manifest.to_json())
        try:
            change(self.manifest)
            self._write_manifest()
        except BaseException:
            self.manifest = before
            raise

    def _write_part(self, table: str, name: str, data: pa.Table) -> dict:
        if isinstance(self.path, RemoteLocation):
            # straight to its name: one PUT, invisible until the manifest lists it
            try:
                size, digest = _write_remote(self.path, f"{table}/{name}", table, data)
                identity = list(self.path.info(table, name) or (size, 0))
            except OSError as exc:
                raise storage_error(exc, self.path, f"write a {table} part") from None
            self._verified.record(f"{table}/{name}", identity, digest)
            return {"rows": data.num_rows, "bytes": size, "sha256": digest}
        directory = self.path / table
        final = directory / name
        try:
            directory.mkdir(exist_ok=True)
            with replacing(final, durable=False) as tmp:
                _, digest = write_parquet(tmp, table, data)
            fsync_dir(directory)
            info = os.stat(final)
        except OSError as exc:
            raise storage_error(exc, self.path, f"write a {table} part") from None
        self._verified.record(f"{table}/{name}", _identity(info), digest)
        return {"rows": data.num_rows, "bytes": info.st_size, "sha256": digest}

    def check_parts(self, tables: list[str] | None = None, *,
                    full: bool = False) -> list[PartDamage]:
        """As :meth:`AtlasReader.check_parts`, for the manifest this writer holds."""
        return check_parts(self.path, self.manifest, self._verified, tables, full=full)

    def drop_damaged(self, damage: list[PartDamage]) -> set[str]:
        """Forget the units that wrote damaged parts (every part of such a unit, and its
        unit record) and delete their files, so that the work that made them is redone;
        returns the unit keys dropped."""
        units = {d.unit for d in damage}
        doomed = [(table, name) for table, parts in self.manifest.parts.items()
                  for name, record in parts.items() if record.unit in units]

        def change(manifest: Manifest) -> None:
            for table, name in doomed:
                manifest.parts[table].pop(name, None)
            for unit in units:
                manifest.units.pop(unit, None)

        self._update_manifest(change)
        for table, name in doomed:
            if isinstance(self.path, RemoteLocation):
                self.path.delete(table, name)
                continue
            try:
                (self.path / table / name).unlink()
            except FileNotFoundError:
                pass
        return units

    def set_cache(self, path: tuple[str, ...], value) -> None:
        """Store a derived value (e.g. robust statistics) under ``cache`` in the manifest."""
        def change(manifest: Manifest) -> None:
            if manifest.cache is None:
                manifest.cache = {}
            node = manifest.cache
            for name in path[:-1]:
                node = node.setdefault(name, {})
            node[path[-1]] = value

        self._update_manifest(change)

    def set_index(self, name: str, entry: dict | None) -> None:
        """Record embedding index ``name`` (``None``: forget it) under ``indexes``."""
        def change(manifest: Manifest) -> None:
            if manifest.indexes is None:
                manifest.indexes = {}
            if entry is None:
                manifest.indexes.pop(name, None)
            else:
                manifest.indexes[name] = entry

        self._update_manifest(change)

    def set_warning(self, code: str, warning: dict | None) -> None:
        """Replace the manifest's ``warnings`` of ``code`` with ``warning`` (None: none);
        the manifest is rewritten only when that changes something."""
        kept = [w for w in self.manifest.warnings or [] if w.get("code") != code]
        wanted = kept + ([{**warning, "code": code}] if warning is not None else [])
        if wanted == (self.manifest.warnings or []):
            return

        def change(manifest: Manifest) -> None:
            manifest.warnings = wanted or None

        self._update_manifest(change)

    def commit(self, key: str, tables: dict[str, pa.Table | None], *,
               unit: dict | None = None, inputs: list[dict] | None = None) -> None:
        """Write the parts named by content ``key``, then record them in one manifest update."""
        name = part_name(key)
        written = {}
        for table, data in tables.items():
            if data is not None:
                written[table] = self._write_part(table, name, data)
        self._record_unit(key, name, written, unit=unit, inputs=inputs)

    def commit_staged(self, key: str, staged: dict[str, StagedPart], *,
                      unit: dict | None = None) -> None:
        """Commit the parts a worker staged for unit ``key`` (:func:`stage_parts`): each
        staged file must be there with the size and row count the worker reported; it is
        renamed to its part name and all are recorded in one manifest update. A staged
        file that does not check out is removed and the unit left uncommitted."""
        name = part_name(key)
        checked = []
        staging = self.staging_area()
        for table, part in staged.items():
            if table not in schema.TABLES or part.name != name or "/" in part.staged or \
                    not part.staged.startswith(f"{table}.{name}{TEMP_MARK}"):
                raise AtlasError(f"unit {key[:16]}: a worker reported a {table} part "
                                 f"{part.staged!r} that is not one of its parts")
        if isinstance(staging, RemoteLocation):
            self._commit_staged_remote(key, staged, staging, unit=unit)
            return
        try:
            for table, part in staged.items():
                checked.append((staging / part.staged, self.path / table / name, part))
                self._check_staged(staging / part.staged, part, key)
            for _, final, _ in checked:
                final.parent.mkdir(exist_ok=True)
            for tmp, final, _ in checked:
                os.replace(tmp, final)
            for directory in {final.parent for _, final, _ in checked}:
                fsync_dir(directory)
            written = {}
            for _, final, part in checked:
                info = os.stat(final)
                self._verified.record(f"{part.table}/{name}", _identity(info), part.sha256)
                written[part.table] = {"rows": part.rows, "bytes": part.bytes,
                                       "sha256": part.sha256}
        except OSError as exc:
            raise storage_error(exc, self.path, "commit a worker's part") from None
        finally:
            for tmp, _, _ in checked:
                try:
                    tmp.unlink()
                except OSError:
                    pass  # renamed (committed), or already gone
        self._record_unit(key, name, written, unit=unit)

    def _commit_staged_remote(self, key: str, staged: dict[str, StagedPart],
                              staging: RemoteLocation, *, unit: dict | None) -> None:
        name, written = part_name(key), {}
        try:
            for part in staged.values():
                info = staging.info(part.staged)
                if info is None:
                    raise AtlasError(
                        f"the {part.table} part a worker wrote for unit {key[:16]} is not in "
                        f"{staging} ({part.staged}): the worker could not reach this atlas's "
                        "store, or wrote elsewhere. Committed work is kept.")
                try:
                    _verify_staged(f"{staging}/{part.staged}", info[0], part, key,
                                   rows=lambda: _footer_rows(staging.open_input(part.staged)))
                except AtlasDamagedError:
                    staging.delete(part.staged)
                    raise
            for part in staged.values():
                target = f"{part.table}/{name}"
                self.path.move(f"{STAGING}/{staging.name}/{part.staged}", target)
                identity = list(self.path.info(part.table, name) or (part.bytes, 0))
                self._verified.record(target, identity, part.sha256)
                written[part.table] = {"rows": part.rows, "bytes": part.bytes,
                                       "sha256": part.sha256}
        except (OSError, pa.ArrowException) as exc:
            raise storage_error(exc if isinstance(exc, OSError) else OSError(str(exc)),
                                self.path, "commit a worker's part") from None
        self._record_unit(key, name, written, unit=unit)

    def _check_staged(self, path: Path, part: StagedPart, key: str) -> None:
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            raise AtlasError(
                f"the {part.table} part a worker wrote for unit {key[:16]} is not in "
                f"{path.parent} ({path.name}): the worker's node does not see this atlas. Put "
                "the atlas on storage every Ray node reaches (a shared file system), or use "
                "--write-parts driver. Committed work is kept.") from None
        _verify_staged(path, size, part, key, rows=lambda: _footer_rows(open(path, "rb")))

    def record_run(self, record: dict) -> None:
        """Append a run record (what an ingest did, where, and what crossed the driver) to
        the manifest's ``runs``, keeping the most recent :data:`RUNS_KEPT`."""
        def change(manifest: Manifest) -> None:
            manifest.runs = ((manifest.runs or []) + [record])[-RUNS_KEPT:]

        self._update_manifest(change)

    def _record_unit(self, key: str, name: str, written: dict[str, dict], *,
                     unit: dict | None, inputs: list[dict] | None = None) -> None:
        def change(manifest: Manifest) -> None:
            for table, meta in written.items():
                manifest.parts.setdefault(table, {})[name] = PartRecord(**meta, unit=key)
            manifest.units[key] = {**(unit or {}), "committed": utc_now()}
            if inputs:
                manifest.inputs.extend(InputRecord.from_json(i) if isinstance(i, dict) else i
                                       for i in inputs)

        self._update_manifest(change)

