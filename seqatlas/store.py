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
import json
import os
import shutil
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from seqatlas import schema
from seqatlas.errors import AtlasDamagedError, AtlasError, AtlasMismatchError
from seqatlas.manifest import InputRecord, Manifest, ModelRecord, PartRecord, ScoringRecord
from seqatlas.util import (ATLAS_MARKER, TEMP_MARK, atomic_write, file_sha256, fsync_dir,
                           replacing, utc_now)

MANIFEST = ATLAS_MARKER
LOCK = ".lock"
VERIFIED_LOG = ".verified"
STAGING = ".staging"  # one directory per run: what its workers wrote, not yet committed
# Rows per Parquet row group: ~1 MB of positions columns, ~16 MB of fp16 embeddings.
ROW_GROUP_ROWS = {"sequences": 65536, "positions": 131072, "tokens": 16384, "ablations": 131072,
                  "repeats": 131072}


RUNS_KEPT = 100  # run records kept in the manifest (the most recent)


def part_name(key: str) -> str:
    """The file name of a unit's part in each of its tables (from its content key)."""
    return f"part-{key[:24]}.parquet"


def write_parquet(path: Path, table: str, data: pa.Table) -> tuple[int, str]:
    """Write ``data`` as a part of ``table`` at ``path`` (a temporary name) with the atlas's
    Parquet settings, fsynced; returns ``(bytes, sha256)``. Every part is written here, by
    the driver or a worker, so both give the same bytes."""
    pq.write_table(data, path, compression="zstd", row_group_size=ROW_GROUP_ROWS[table],
                   write_statistics=True, write_page_checksum=True)
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())
    return os.stat(path).st_size, file_sha256(path)


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


def stage_parts(staging: str | os.PathLike, key: str,
                tables: dict[str, pa.Table | None]) -> dict[str, StagedPart]:
    """Write unit ``key``'s parts into a run's staging directory (on a scoring worker; see
    :meth:`AtlasWriter.staging_area`); the driver commits them with
    :meth:`AtlasWriter.commit_staged`. Nothing is left behind when this fails."""
    directory = Path(staging)
    if not directory.is_dir():
        raise AtlasError(
            f"this worker cannot see the atlas's staging directory {directory}: either the run "
            "that made it has ended, or this Ray node does not see the atlas. The workers write "
            "their parts into the atlas, so it must be on storage every node reaches (a shared "
            "file system); use such a path, or --write-parts driver to send every result to the "
            "driver instead.")
    name, tag = part_name(key), f"-{uuid.uuid4().hex[:12]}"
    written: list[Path] = []
    staged = {}
    try:
        for table, data in tables.items():
            if data is None:
                continue
            tmp = directory / f"{table}.{name}{TEMP_MARK}{os.getpid()}{tag}"
            written.append(tmp)
            size, digest = write_parquet(tmp, table, data)
            staged[table] = StagedPart(table=table, name=name, staged=tmp.name,
                                       rows=data.num_rows, bytes=size, sha256=digest)
    except BaseException as exc:
        for tmp in written:
            try:
                tmp.unlink()
            except OSError:
                pass
        if isinstance(exc, OSError):
            raise storage_error(exc, directory, "write a part") from None
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

    def __init__(self, root: Path):
        self.path = root / VERIFIED_LOG
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


def _part_problem(root: Path, verified: _VerifiedLog, table: str, name: str,
                  record: PartRecord, *, full: bool) -> str | None:
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
    if record.sha256 is None:
        return None  # committed before checksums: its size is all there is to check
    key, identity = f"{table}/{name}", _identity(info)
    if not full and verified.trusted(key, identity, record.sha256):
        return None
    try:
        digest = file_sha256(path)
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if digest != record.sha256:
        return "its bytes changed since it was committed (SHA-256 differs)"
    verified.record(key, identity, digest)
    return None


class AtlasReader:
    """An atlas directory, readable as Arrow tables (only committed parts)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        manifest = self.path / MANIFEST
        if not manifest.exists():
            raise AtlasError(f"{self.path} is not an atlas (no {MANIFEST}); "
                             "create one with `seqatlas ingest FASTA --atlas DIR`")
        try:
            data = json.loads(manifest.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise AtlasError(f"{manifest} is corrupt ({exc}); restore it or re-ingest") from None
        version = data.get("schema_version") if isinstance(data, dict) else None
        if version not in schema.READABLE_VERSIONS:
            raise AtlasError(f"{self.path} has schema version {version}; this seqatlas reads "
                             f"versions {', '.join(map(str, schema.READABLE_VERSIONS))}: "
                             "re-ingest into a new --atlas directory, or use the seqatlas "
                             "version that wrote it")
        try:
            self.manifest = Manifest.from_json(data)
        except (KeyError, TypeError, AttributeError) as exc:
            raise AtlasError(f"{manifest} is corrupt (it lacks or misshapes {exc}); restore it "
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
        return [self.path / table / name for name in sorted(self.manifest.table_parts(table))]

    def check_parts(self, tables: list[str] | None = None, *,
                    full: bool = False) -> list[PartDamage]:
        """Every committed part of ``tables`` (default: all) that is missing, resized or
        whose bytes changed; ``full`` re-hashes parts whose file looks unchanged too."""
        return check_parts(self.path, self.manifest, self._verified, tables, full=full)

    def count(self, table: str) -> int:
        return sum(p.rows for p in self.manifest.table_parts(table).values())

    def _read(self, table: str, columns, arrow_schema: pa.Schema) -> pa.Table:
        paths = self.part_paths(table)
        if not paths:
            return arrow_schema.empty_table() if columns is None else \
                arrow_schema.empty_table().select(columns)
        import pyarrow.dataset as ds

        try:
            data = ds.dataset([str(p) for p in paths], format=parquet_format(),
                              schema=arrow_schema)
            return data.to_table(columns=columns)
        except (OSError, ValueError, pa.ArrowException) as exc:  # UnicodeDecodeError included
            raise AtlasDamagedError(
                f"{self.path}: a {table} part cannot be read ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}). Run `seqatlas verify "
                f"--atlas {self.path}`, then `seqatlas repair --atlas {self.path}`.") from None

    def sequences(self, columns: list[str] | None = None) -> pa.Table:
        table = self._read("sequences", None, schema.SEQUENCES).sort_by("ordinal")
        return table if columns is None else table.select(columns)

    def positions(self, columns: list[str] | None = None) -> pa.Table:
        """One row per residue or base; see :data:`seqatlas.schema.POSITIONS`."""
        return self._read("positions", columns, schema.POSITIONS)

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

    def __init__(self, path: str | os.PathLike, *, kind: str | None = None,
                 model: ModelRecord | dict | None = None,
                 scoring: ScoringRecord | dict | None = None,
                 seqatlas_version: str = "", kind_detected: bool = False):
        """Without ``model`` the atlas must exist already (adding annotations to it)."""
        self.path = Path(path)
        self._staging: Path | None = None
        if isinstance(model, dict):
            model = ModelRecord.from_json(model)
        if isinstance(scoring, dict):
            scoring = ScoringRecord.from_json(scoring)
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

    def _open(self, manifest_path: Path, kind, model, scoring, seqatlas_version,
              kind_detected) -> None:
        if manifest_path.exists():
            self.manifest = AtlasReader(self.path).manifest
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

    def staging_area(self) -> Path:
        """This writer's staging directory, where workers write parts before the driver
        commits them (created on first use, removed with everything left in it on close)."""
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
        try:
            atomic_write(self.path / MANIFEST, self.manifest.dumps())
        except OSError as exc:
            raise storage_error(exc, self.path, f"write {MANIFEST}") from None

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
        try:
            for table, part in staged.items():
                if table not in schema.TABLES or part.name != name or "/" in part.staged or \
                        not part.staged.startswith(f"{table}.{name}{TEMP_MARK}"):
                    raise AtlasError(f"unit {key[:16]}: a worker reported a {table} part "
                                     f"{part.staged!r} that is not one of its parts")
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

    def _check_staged(self, path: Path, part: StagedPart, key: str) -> None:
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            raise AtlasError(
                f"the {part.table} part a worker wrote for unit {key[:16]} is not in "
                f"{path.parent} ({path.name}): the worker's node does not see this atlas. Put "
                "the atlas on storage every Ray node reaches (a shared file system), or use "
                "--write-parts driver. Committed work is kept.") from None
        problem = None
        if size != part.bytes:
            problem = f"{size:,} bytes, the worker wrote {part.bytes:,}"
        else:
            try:
                rows = pq.ParquetFile(path).metadata.num_rows
            except (OSError, pa.ArrowException) as exc:
                rows, problem = None, f"its Parquet footer cannot be read ({exc})"
            if rows is not None and rows != part.rows:
                problem = f"{rows:,} rows, the worker wrote {part.rows:,}"
        if problem:
            raise AtlasDamagedError(f"the {part.table} part a worker staged for unit "
                                    f"{key[:16]} ({path}) is not as written: {problem}. "
                                    "Nothing of it was committed; re-run to score it again.")

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

