"""Reading an atlas: one consistent version of its state (the base plus the log, see
:mod:`seqatlas.store.journal`), and its committed parts as Arrow tables, each part checked
against its record first (:mod:`seqatlas.store.integrity`)."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from seqatlas import schema
from seqatlas.errors import AtlasDamagedError, AtlasError
from seqatlas.locations import RemoteLocation, remote_location
from seqatlas.manifest import Manifest
from seqatlas.store.backend import Backend, backend_for
from seqatlas.store.integrity import PartDamage, VerifiedLog, check_parts, damage_message
from seqatlas.store.journal import MANIFEST, LogState, history, load_base, read_log
from seqatlas.store.parts import parquet_format
from seqatlas.store.reader_cache import atlas_cache


def read_state(backend: Backend) -> tuple[Manifest, LogState]:
    """The atlas's state at its last committed version (raises :class:`AtlasError` when
    there is no atlas, or its files are not readable as one). Nothing is locked: a writer
    committing meanwhile makes this the version before or after its commit."""
    path = backend.path
    try:
        loaded = load_base(backend)
    except OSError as exc:
        raise AtlasError(f"cannot read {path}/{MANIFEST} ({exc}); check the credentials "
                         "and the endpoint") from None
    if loaded is None:
        create = f"`seqatlas ingest FASTA --atlas {path}`" if isinstance(
            path, RemoteLocation) else "`seqatlas ingest FASTA --atlas DIR`"
        raise AtlasError(f"{path} is not an atlas (no {MANIFEST}); create one with {create}")
    data, raw = loaded
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version not in schema.READABLE_VERSIONS:
        raise AtlasError(f"{path} has schema version {version}; this seqatlas reads "
                         f"versions {', '.join(map(str, schema.READABLE_VERSIONS))}: "
                         "re-ingest into a new --atlas directory, or use the seqatlas "
                         "version that wrote it")
    try:
        manifest = Manifest.from_json(data)
    except (KeyError, TypeError, AttributeError) as exc:
        raise AtlasError(f"{path}/{MANIFEST} is corrupt (it lacks or misshapes {exc}); "
                         "restore it or re-ingest") from None
    try:
        return manifest, read_log(backend, manifest, len(raw))
    except OSError as exc:
        raise AtlasError(f"cannot read the commit log of {path} ({exc}); check the "
                         "permissions, the credentials and the endpoint") from None


def atlas_exists(atlas) -> bool:
    """Whether ``atlas`` (a directory or a URI) holds an atlas manifest."""
    remote = remote_location(atlas)
    if remote is not None:
        return remote.info(MANIFEST) is not None
    return (Path(atlas) / MANIFEST).is_file()


class AtlasReader:
    """An atlas directory, readable as Arrow tables (only committed parts): a snapshot of
    the version committed when it was opened, whatever writers commit meanwhile, until
    :meth:`refresh`."""

    def __init__(self, path: str | os.PathLike | RemoteLocation):
        """``path``: an atlas directory, or the URI of a remote one (``s3://bucket/prefix``,
        see :mod:`seqatlas.locations`)."""
        remote = remote_location(path)
        self.path = remote if remote is not None else Path(path)
        self.filesystem = remote.filesystem if remote is not None else None  # None: local
        self.backend = backend_for(self.path)
        self.manifest, _ = read_state(self.backend)
        self.schema_version = self.manifest.schema_version
        self._verified = VerifiedLog(self.path, self.manifest)
        self._sound: set[tuple[str, str]] = set()  # parts this reader has checked

    def __repr__(self) -> str:
        counts = ", ".join(f"{t}={self.count(t)}" for t in schema.TABLES)
        return f"{type(self).__name__}({str(self.path)!r}, {counts})"

    def refresh(self) -> bool:
        """Read the atlas's latest committed version from now on (a reader is a snapshot:
        it sees the version it opened until this is called); whether it moved."""
        manifest, _ = read_state(self.backend)
        moved = manifest.log_version != self.manifest.log_version or \
            manifest.updated != self.manifest.updated
        if moved:
            self.manifest = manifest
            self.schema_version = manifest.schema_version
            self._sound = set()
        return moved

    @cached_property
    def cache(self) -> Path | None:
        """This user's cache directory for the atlas, where readers keep what they derive
        (see :mod:`seqatlas.store.reader_cache`); None when it cannot be made."""
        return atlas_cache(self.path, self.manifest)

    @property
    def version(self) -> int | None:
        """The log version this reader sees (None: an atlas written before the log)."""
        return self.manifest.log_version

    def part_paths(self, table: str, *, region: tuple[str, int | None, int | None] | None
                   = None) -> list[Path]:
        """The committed parts of ``table``, each checked against its manifest record
        (raises :class:`AtlasDamagedError` naming every damaged one). ``region``
        ``(seq_id, start, end)``: only the parts whose key statistics can hold rows of it
        (parts committed before statistics are always included); only the parts returned
        are checked."""
        names = sorted(name for name, record in self.manifest.table_parts(table).items()
                       if region is None or record.may_hold(*region))
        unchecked = {name for name in names if (table, name) not in self._sound}
        if unchecked:
            damage = check_parts(self.path, self.manifest, self._verified, [table],
                                 names=unchecked)
            if damage:
                raise AtlasDamagedError(damage_message(self.path, damage))
            self._sound |= {(table, name) for name in unchecked}
        if isinstance(self.path, RemoteLocation):
            return [self.path.part(table, name) for name in names]
        return [self.path / table / name for name in names]

    def history(self, limit: int | None = 20) -> list[dict]:
        """The atlas's commits, newest first (see :func:`seqatlas.store.journal.history`)."""
        return history(self.backend, limit=limit)

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

    def pooled(self, columns: list[str] | None = None) -> pa.Table:
        """Pooled embeddings, one row per sequence or bin, pooling and layer; see
        :func:`seqatlas.schema.pooled_schema`."""
        return self._read("pooled", columns, self.manifest.pooled_schema())

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
            "pooling": manifest.pooling,
            "inputs": [i.to_json() for i in manifest.inputs],
            "tables": tables,
            "units": {"committed": len(manifest.units)},
            "positions_unscored": sum(u.get("unscored", 0) for u in manifest.units.values()),
            "damaged": [str(d) for d in self.check_parts()],
            "warnings": [dict(w) for w in manifest.warnings or []],
            "created": manifest.created,
            "updated": manifest.updated,
            "version": manifest.log_version,
        }


