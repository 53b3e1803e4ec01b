"""The storage layer: the atlas directory, its manifest, the atomic commit of Parquet parts,
and reading committed parts.

Commit protocol: a part is written under a temporary name, fsynced, renamed, and only then
recorded in ``atlas.json``, which is itself replaced atomically. Readers see only parts the
manifest lists, so a crash at any point leaves a consistent atlas.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from seqatlas import schema
from seqatlas.errors import AtlasError, AtlasMismatchError
from seqatlas.manifest import InputRecord, Manifest, ModelRecord, PartRecord, ScoringRecord
from seqatlas.util import TEMP_MARK, atomic_write, replacing, utc_now

MANIFEST = "atlas.json"
LOCK = ".lock"
# Rows per Parquet row group: ~1 MB of positions columns, ~16 MB of fp16 embeddings.
ROW_GROUP_ROWS = {"sequences": 65536, "positions": 131072, "tokens": 16384, "ablations": 131072,
                  "repeats": 131072}


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

    def __repr__(self) -> str:
        counts = ", ".join(f"{t}={self.count(t)}" for t in schema.TABLES)
        return f"{type(self).__name__}({str(self.path)!r}, {counts})"

    def part_paths(self, table: str) -> list[Path]:
        return [self.path / table / name for name in sorted(self.manifest.table_parts(table))]

    def count(self, table: str) -> int:
        return sum(p.rows for p in self.manifest.table_parts(table).values())

    def _read(self, table: str, columns, arrow_schema: pa.Schema) -> pa.Table:
        paths = self.part_paths(table)
        if not paths:
            return arrow_schema.empty_table() if columns is None else \
                arrow_schema.empty_table().select(columns)
        import pyarrow.dataset as ds

        data = ds.dataset([str(p) for p in paths], format="parquet", schema=arrow_schema)
        return data.to_table(columns=columns)

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
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.path / LOCK, "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise AtlasError(f"{self.path} is being written by another seqatlas process; "
                             "wait for it to finish") from None
        self._remove_stale_temporaries()
        if manifest_path.exists():
            self.manifest = AtlasReader(self.path).manifest
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
            now = utc_now()
            self.manifest = Manifest(
                schema_version=schema.SCHEMA_VERSION, seqatlas_version=seqatlas_version,
                created=now, updated=now, kind=kind, kind_detected=kind_detected, model=model,
                scoring=scoring, parts={t: {} for t in schema.TABLES})
            self._write_manifest()

    def _remove_stale_temporaries(self) -> None:
        """Temporary files of a writer that died; safe to delete while we hold the lock."""
        for table in schema.TABLES:
            directory = self.path / table
            if directory.is_dir():
                for stale in directory.glob(f".*{TEMP_MARK}*"):
                    stale.unlink()
        for stale in self.path.glob(f".{MANIFEST}{TEMP_MARK}*"):
            stale.unlink()

    def _check_compatible(self, kind: str, model: ModelRecord, scoring: ScoringRecord) -> None:
        """Refuse other settings, listing every difference (compared by stable identifiers,
        never by the manifest's prose)."""
        old = self.manifest
        differences = []
        if old.kind != kind:
            differences.append(f"kind: atlas {old.kind!r}, now {kind!r}")
        for key, was, now in (("name", old.model.name, model.name),
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
        self.manifest.updated = utc_now()
        atomic_write(self.path / MANIFEST, self.manifest.dumps())

    def _write_part(self, table: str, name: str, data: pa.Table) -> dict:
        directory = self.path / table
        directory.mkdir(exist_ok=True)
        final = directory / name
        with replacing(final) as tmp:
            pq.write_table(data, tmp, compression="zstd", row_group_size=ROW_GROUP_ROWS[table],
                           write_statistics=True)
        return {"rows": data.num_rows, "bytes": final.stat().st_size}

    def set_cache(self, path: tuple[str, ...], value) -> None:
        """Store a derived value (e.g. robust statistics) under ``cache`` in the manifest."""
        if self.manifest.cache is None:
            self.manifest.cache = {}
        node = self.manifest.cache
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = value
        self._write_manifest()

    def set_index(self, name: str, entry: dict | None) -> None:
        """Record embedding index ``name`` (``None``: forget it) under ``indexes``."""
        if self.manifest.indexes is None:
            self.manifest.indexes = {}
        indexes = self.manifest.indexes
        if entry is None:
            indexes.pop(name, None)
        else:
            indexes[name] = entry
        self._write_manifest()

    def commit(self, key: str, tables: dict[str, pa.Table | None], *,
               unit: dict | None = None, inputs: list[dict] | None = None) -> None:
        """Write the parts named by content ``key``, then record them in one manifest update."""
        name = f"part-{key[:24]}.parquet"
        written = {}
        for table, data in tables.items():
            if data is not None:
                written[table] = self._write_part(table, name, data)
        for table, meta in written.items():
            self.manifest.parts.setdefault(table, {})[name] = PartRecord(**meta, unit=key)
        self.manifest.units[key] = {**(unit or {}), "committed": utc_now()}
        if inputs:
            self.manifest.inputs.extend(InputRecord.from_json(i) if isinstance(i, dict) else i
                                        for i in inputs)
        self._write_manifest()

