"""Writing an atlas: the only code that writes parts and commits them to the log.

A part is written under a temporary name, fsynced and renamed to its final name (derived
from its unit's content key), then committed by one log entry naming it
(:mod:`seqatlas.store.journal`). Readers see only parts an entry names, so a crash at any
point leaves a consistent atlas; a temporary or an unrecorded part left by a crash is
removed when a writer next opens the atlas. Parts that compaction replaced are kept for
:data:`RETIRED_KEEP_SECONDS` (readers that opened an earlier version still read them), then
deleted by a writer.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

from seqatlas import schema
from seqatlas.errors import AtlasBusyError, AtlasDamagedError, AtlasError, AtlasMismatchError
from seqatlas.locations import RemoteLocation, remote_location
from seqatlas.manifest import Manifest, ModelRecord, ScoringRecord
from seqatlas.store.backend import backend_for
from seqatlas.store.integrity import (VERIFIED_LOG, PartDamage, VerifiedLog, check_parts,
                                      file_identity)
from seqatlas.store.journal import LOG_DIR, MANIFEST, Journal, LogState
from seqatlas.store.parts import (part_name, part_stats, storage_error, write_parquet,
                                  write_remote)
from seqatlas.store.reader import read_state
from seqatlas.store.staging import (STAGING, STAGING_OPEN, StagedPart, footer_rows,
                                    verify_staged)
from seqatlas.util import TEMP_MARK, fsync_dir, replacing, utc_now

RETIRED_KEEP_SECONDS = 3600.0  # a replaced part stays readable this long
LOCK_POLL_SECONDS = 0.5  # how often a waiting writer tries the lock again


def retired_long_enough(when: str) -> bool:
    """Whether something retired at ``when`` (ISO 8601) has been kept the keep time, so no
    reader still uses it (:data:`RETIRED_KEEP_SECONDS`); an unreadable time: not yet."""
    try:
        age = (datetime.now(timezone.utc) - datetime.fromisoformat(when)).total_seconds()
    except (TypeError, ValueError):
        return False
    return age > RETIRED_KEEP_SECONDS


class AtlasWriter:
    """Creates or extends an atlas; the only code that writes parts and commits them."""

    def __init__(self, path: str | os.PathLike | RemoteLocation, *, kind: str | None = None,
                 model: ModelRecord | dict | None = None,
                 scoring: ScoringRecord | dict | None = None,
                 seqatlas_version: str = "", kind_detected: bool = False,
                 wait: float = 0.0):
        """Without ``model`` the atlas must exist already (adding annotations to it).
        ``path``: a directory, or the URI of a remote atlas (:mod:`seqatlas.locations`).
        ``wait``: seconds to wait for another writer's lock (``math.inf``: as long as it
        takes) before refusing with :class:`~seqatlas.errors.AtlasBusyError`."""
        remote = remote_location(path)
        self.path = remote if remote is not None else Path(path)
        self.backend = backend_for(self.path)
        self._staging: Path | RemoteLocation | None = None
        self._locked = False
        if isinstance(model, dict):
            model = ModelRecord.from_json(model)
        if isinstance(scoring, dict):
            scoring = ScoringRecord.from_json(scoring)
        try:
            exists = self._check_place(model)
        except OSError as exc:
            raise storage_error(exc, self.path, "open the atlas") from None
        self._lock(wait)
        self._locked = True
        try:
            self._open(exists, kind, model, scoring, seqatlas_version, kind_detected)
        except OSError as exc:
            self.close()
            raise storage_error(exc, self.path, "open the atlas") from None
        except BaseException:
            self.close()
            raise

    def _lock(self, wait: float) -> None:
        deadline = time.monotonic() + wait
        while True:
            try:
                self.backend.lock()
                return
            except AtlasBusyError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(min(LOCK_POLL_SECONDS, max(deadline - time.monotonic(), 0.0)))

    def _check_place(self, model) -> bool:
        """Whether an atlas exists at the path; refuses a place that is not one."""
        location = self.path
        if isinstance(location, RemoteLocation):
            exists = location.info(MANIFEST) is not None
            if model is None and not exists:
                raise AtlasError(f"{location} is not an atlas (no {MANIFEST}); create one with "
                                 f"`seqatlas ingest FASTA --atlas {location}` first")
            if not exists and location.any_file():
                raise AtlasError(f"{location} holds files but no {MANIFEST}: it is not an "
                                 "atlas; choose a new --atlas prefix")
            return exists
        exists = (location / MANIFEST).exists()
        if model is None and not exists:
            raise AtlasError(f"{location} is not an atlas (no {MANIFEST}); "
                             "create one with `seqatlas ingest FASTA --atlas DIR` first")
        if location.exists() and not location.is_dir():
            raise AtlasError(f"{location} exists and is not a directory")
        if location.exists() and any(location.iterdir()) and not exists:
            raise AtlasError(f"{location} is a non-empty directory that is not an atlas; "
                             "choose a new --atlas directory")
        return exists

    def _open(self, exists, kind, model, scoring, seqatlas_version, kind_detected) -> None:
        if exists:
            self.manifest, state = read_state(self.backend)
            self.journal = Journal(self.backend, state)
            self._remove_stale_files()
            self._verified = VerifiedLog(self.path, self.manifest)
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
            self._clear_log()
            now = utc_now()
            self.manifest = Manifest(
                schema_version=schema.SCHEMA_VERSION, seqatlas_version=seqatlas_version,
                created=now, updated=now, kind=kind, kind_detected=kind_detected, model=model,
                scoring=scoring, parts={t: {} for t in schema.TABLES}, log_version=0)
            data = self.manifest.dumps()
            self.backend.replace(MANIFEST, data)
            self.journal = Journal(self.backend, LogState(base_bytes=len(data)))
            self._verified = VerifiedLog(self.path, self.manifest)
        self._verified.compact({f"{table}/{name}" for table, parts in self.manifest.parts.items()
                                for name in parts})

    # -- the log -------------------------------------------------------------------------

    @property
    def version(self) -> int | None:
        """The log version of this writer's state (None: not upgraded to the log yet)."""
        return self.manifest.log_version

    def _clear_log(self) -> None:
        """Remove a log that no base refers to (a crashed upgrade, or a log left behind by
        a seqatlas version that rewrote atlas.json without it)."""
        for directory in (f"{LOG_DIR}/segments", LOG_DIR):
            for name in self.backend.listdir(directory):
                self.backend.delete(f"{directory}/{name}")

    def upgrade(self) -> bool:
        """Give an atlas written before the commit log its log (one atomic replace of
        atlas.json); False when it has one already."""
        if self.manifest.log_version is not None:
            return False
        self._clear_log()
        self.manifest.log_version = 0
        data = self.manifest.dumps()
        try:
            self.backend.replace(MANIFEST, data)
        except BaseException:
            self.manifest.log_version = None
            raise
        self.journal = Journal(self.backend, LogState(base_bytes=len(data)))
        return True

    def _commit(self, actions: list[dict], operation: str) -> None:
        """Commit ``actions`` as one log entry (upgrading a pre-log atlas first)."""
        if not actions:
            return
        try:
            self.upgrade()
            self.journal.commit(self.manifest, actions, operation)
        except OSError as exc:
            raise storage_error(exc, self.path, "commit to the log") from None

    def fold(self) -> None:
        """Write the whole state into atlas.json (a checkpoint), whatever the tail's size."""
        try:
            self.upgrade()
            if self.journal.state.tail_bytes:
                self.journal.fold(self.manifest)
        except OSError as exc:
            raise storage_error(exc, self.path, f"write {MANIFEST}") from None

    # -- files ---------------------------------------------------------------------------

    def _remove_stale_files(self) -> None:
        """Temporary files of a writer or worker that died, parts renamed but never
        committed (a crash between the two), and parts retired long enough ago; safe to
        delete while we hold the lock."""
        committed = getattr(self, "manifest", None)
        retired = dict(committed.retired or {}) if committed is not None else {}
        expired = [key for key, when in retired.items() if retired_long_enough(when)]
        for table in schema.TABLES:
            parts = committed.table_parts(table) if committed is not None else {}
            for name in self.backend.listdir(table):
                key = f"{table}/{name}"
                unrecorded = name.startswith("part-") and name not in parts and \
                    key not in retired
                if TEMP_MARK in name or unrecorded or (key in expired and name not in parts):
                    try:
                        self.backend.delete(key)
                    except OSError:
                        pass  # a read-only atlas: readers never look at them
        for name in self.backend.listdir(""):
            if name.startswith(f".{MANIFEST}{TEMP_MARK}") or name == VERIFIED_LOG:
                self.backend.delete(name)
        for name in self.backend.listdir(LOG_DIR):
            if TEMP_MARK in name:
                self.backend.delete(f"{LOG_DIR}/{name}")
        # what the workers of dead runs staged; a worker still running for such a run (its
        # driver killed) finds its directory gone and fails instead of writing
        if isinstance(self.path, RemoteLocation):
            self.path.delete_tree(STAGING)
        else:
            shutil.rmtree(self.path / STAGING, ignore_errors=True)
        if expired and committed is not None and committed.log_version is not None:
            self._commit([{"unretire": expired}], "remove retired parts")

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
        """Fold the log into atlas.json when due, remove this run's staging area, unlock."""
        try:
            journal = getattr(self, "journal", None)
            if self._locked and journal is not None and journal.fold_due():
                try:
                    journal.fold(self.manifest)
                except OSError:
                    pass  # the log holds everything; the next writer folds
        finally:
            self._remove_staging()
            if self._locked:
                self.backend.unlock()
                self._locked = False

    def _remove_staging(self) -> None:
        if self._staging is None:
            return
        if isinstance(self.path, RemoteLocation):
            try:
                self.path.delete_tree(STAGING, self._staging.name)
            except OSError:
                pass  # removed by the next writer
        else:
            shutil.rmtree(self._staging, ignore_errors=True)
            try:
                self._staging.parent.rmdir()
            except OSError:
                pass  # not empty: another run's leftovers, removed by the next writer
        self._staging = None

    def __enter__(self) -> AtlasWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def verified(self) -> VerifiedLog:
        """The hashes of parts whose files have not changed since (see integrity)."""
        return self._verified

    @property
    def committed_units(self) -> set[str]:
        return set(self.manifest.units)

    def write_part(self, table: str, name: str, data: pa.Table) -> dict:
        """Write ``data`` as part ``name`` of ``table`` (not yet committed); returns its
        record (rows, bytes, sha256, stats)."""
        stats = part_stats(table, data)
        if isinstance(self.path, RemoteLocation):
            # straight to its name: one PUT, invisible until an entry names it
            try:
                size, digest = write_remote(self.path, f"{table}/{name}", table, data)
                identity = list(self.path.info(table, name) or (size, 0))
            except OSError as exc:
                raise storage_error(exc, self.path, f"write a {table} part") from None
            self._verified.record(f"{table}/{name}", identity, digest)
            return _part_record(data.num_rows, size, digest, stats)
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
        self._verified.record(f"{table}/{name}", file_identity(info), digest)
        return _part_record(data.num_rows, info.st_size, digest, stats)

    def check_parts(self, tables: list[str] | None = None, *,
                    full: bool = False) -> list[PartDamage]:
        """As :meth:`AtlasReader.check_parts`, for the state this writer holds."""
        return check_parts(self.path, self.manifest, self._verified, tables, full=full)

    # -- commits -------------------------------------------------------------------------

    def drop_damaged(self, damage: list[PartDamage]) -> set[str]:
        """Forget the units that wrote damaged parts (every part holding rows of such a
        unit, and its unit record) and delete the damaged files, so that the work that made
        them is redone; returns the unit keys dropped. A compacted part holds many units: they
        are all dropped, and so is every other part that holds rows of any of them."""
        units = {u for d in damage for u in (d.units or (d.unit,))}
        doomed: set[tuple[str, str]] = set()
        grew = True
        while grew:
            grew = False
            for table, parts in self.manifest.parts.items():
                for name, record in parts.items():
                    covered = set(record.covered_units())
                    if (table, name) not in doomed and covered & units:
                        doomed.add((table, name))
                        if not covered <= units:
                            units |= covered
                            grew = True
        damaged = sorted({(d.table, d.name) for d in damage} & doomed)
        actions = [{"remove": {"table": t, "name": n}} for t, n in sorted(doomed)]
        actions += [{"drop_unit": u} for u in sorted(units) if u in self.manifest.units]
        # damaged parts are deleted now (no reader can use them); the sound parts of the
        # dropped units stay retired for readers of earlier versions, as compaction's do
        actions.append({"unretire": [f"{t}/{n}" for t, n in damaged]})
        self._commit(actions, "drop damaged parts")
        for table, name in damaged:
            try:
                self.backend.delete(f"{table}/{name}")
            except OSError:
                pass
        return units

    def set_cache(self, path: tuple[str, ...], value) -> None:
        """Store a derived value (e.g. robust statistics) under ``cache`` in the state."""
        self._commit([{"set": {"field": "cache", "path": list(path), "value": value}}],
                     "cache")

    def set_index(self, name: str, entry: dict | None) -> None:
        """Record embedding index ``name`` (``None``: forget it) under ``indexes``."""
        self._commit([{"set": {"field": "indexes", "path": [name], "value": entry}}],
                     "index" if entry is not None else "forget index")

    def set_pooling(self, settings: dict | None) -> None:
        """Record what the pooled table holds (:attr:`Manifest.pooling`); nothing is committed
        when that changes nothing."""
        if settings == self.manifest.pooling:
            return
        self._commit([{"set": {"field": "pooling", "path": [], "value": settings}}], "pooling")

    def set_warning(self, code: str, warning: dict | None) -> None:
        """Replace the state's ``warnings`` of ``code`` with ``warning`` (None: none);
        nothing is committed when that changes nothing."""
        kept = [w for w in self.manifest.warnings or [] if w.get("code") != code]
        wanted = kept + ([{**warning, "code": code}] if warning is not None else [])
        if wanted == (self.manifest.warnings or []):
            return
        self._commit([{"set": {"field": "warnings", "value": wanted or None}}], "warnings")

    def record_run(self, record: dict) -> None:
        """Append a run record (what an ingest did, where, and what crossed the driver) to
        the state's ``runs``, keeping the most recent ones."""
        self._commit([{"run": record}], "run record")

    def replace_parts(self, table: str, removed: list[str], added: dict[str, dict], *,
                      operation: str) -> None:
        """Swap parts of ``table`` in one commit: ``removed`` (names) are retired,
        ``added`` (name -> record) were written already with :meth:`write_part`."""
        actions = [{"remove": {"table": table, "name": n}} for n in removed]
        actions += [{"add": {"table": table, "name": n, **record}}
                    for n, record in added.items()]
        self._commit(actions, operation)

    def commit(self, key: str, tables: dict[str, pa.Table | None], *,
               unit: dict | None = None, inputs: list[dict] | None = None) -> None:
        """Write the parts named by content ``key``, then commit them in one log entry."""
        name = part_name(key)
        written = {}
        for table, data in tables.items():
            if data is not None:
                written[table] = self.write_part(table, name, data)
        self._record_unit(key, name, written, unit=unit, inputs=inputs)

    def commit_staged(self, key: str, staged: dict[str, StagedPart], *,
                      unit: dict | None = None) -> None:
        """Commit the parts a worker staged for unit ``key`` (:func:`stage_parts`): each
        staged file must be there with the size and row count the worker reported; it is
        renamed to its part name and all are committed in one log entry. A staged file
        that does not check out is removed and the unit left uncommitted."""
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
                self._verified.record(f"{part.table}/{name}", file_identity(info), part.sha256)
                written[part.table] = _part_record(part.rows, part.bytes, part.sha256,
                                                   part.stats)
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
                    verify_staged(f"{staging}/{part.staged}", info[0], part, key,
                                  rows=lambda: footer_rows(staging.open_input(part.staged)))
                except AtlasDamagedError:
                    staging.delete(part.staged)
                    raise
            for part in staged.values():
                target = f"{part.table}/{name}"
                self.path.move(f"{STAGING}/{staging.name}/{part.staged}", target)
                identity = list(self.path.info(part.table, name) or (part.bytes, 0))
                self._verified.record(target, identity, part.sha256)
                written[part.table] = _part_record(part.rows, part.bytes, part.sha256,
                                                   part.stats)
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
        verify_staged(path, size, part, key, rows=lambda: footer_rows(open(path, "rb")))

    def _record_unit(self, key: str, name: str, written: dict[str, dict], *,
                     unit: dict | None, inputs: list[dict] | None = None) -> None:
        actions = [{"add": {"table": table, "name": name, **meta, "unit": key}}
                   for table, meta in written.items()]
        actions.append({"unit": {"key": key, "record": {**(unit or {}),
                                                          "committed": utc_now()}}})
        for record in inputs or []:
            actions.append({"input": record if isinstance(record, dict) else record.to_json()})
        self._commit(actions, "commit unit")


def _part_record(rows: int, size: int, digest: str, stats: dict | None) -> dict:
    record = {"rows": rows, "bytes": size, "sha256": digest}
    if stats is not None:
        record["stats"] = stats
    return record
