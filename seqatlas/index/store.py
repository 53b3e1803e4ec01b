"""Index directories ``ATLAS/index/<name>/`` (FAISS file + ``meta.json``, and what it
covers: ``units.json``, ``ids.npy``, see :mod:`~seqatlas.index.coverage`): atomic writes,
checked loading, search.

Each build (or update) is written into a directory of its own, ``index/<name>/<build>/``,
renamed into place once complete and named by the manifest's ``indexes`` entry (``dir``)
in the commit that records it. A reader therefore uses the build of the version it opened
(never a mixture, never a build of rows it does not know), while a newer one is written;
the builds replaced stay for :data:`~seqatlas.store.writer.RETIRED_KEEP_SECONDS` (the
entry's ``retired``) and are then removed by a writer. Indexes built before keep their
files in ``index/<name>/`` itself until their next build. Loading checks the checksum, the
dimension, the vector count and that the index was built from this atlas's rows, and turns
every failure (FAISS raises RuntimeError on a bad file) into :class:`AtlasIndexError`. Rows
added to the atlas since the build are found and searched exactly beside the index
(:attr:`LoadedIndex.pending_rows`); an index built before coverage was recorded is current
only while the table's fingerprint is unchanged.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seqatlas.locations import RemoteLocation
from seqatlas.store import AtlasReader
from seqatlas.store.writer import retired_long_enough
from seqatlas.util import TEMP_MARK, file_sha256, fsync_dir, temporary_name, utc_now
from seqatlas.errors import AtlasIndexError, ConfigError
from seqatlas.index.coverage import (COVERAGE_KEYS, PendingRows, find_pending, local_copy,
                                     write_coverage)
from seqatlas.index.search import merge_top_k, set_search_params, to_similarity
from seqatlas.index.vectors import (POOLED_VECTORS, legacy_tokens_fingerprint, prepare,
                                    tokens_fingerprint)

INDEX_DIR = "index"
INDEX_FILE = "index.faiss"
META_FILE = "meta.json"
# the meta keys recorded in the manifest's ``indexes`` entry
ENTRY_KEYS = ("type", "metric", "column", "dim", "ntotal", "bytes", "bytes_per_vector",
              "sha256", "built", "factory", "level", "updated", "dir")
_BUILD = re.compile(r"^b-[0-9a-f]{16}$")
LEGACY_BUILD = "."  # the files of a build made before builds had directories of their own


def index_dir(atlas: AtlasReader, name: str) -> Path:
    """The directory of index ``name`` as of the version ``atlas`` reads."""
    check_name(name)
    entry = (atlas.manifest.indexes or {}).get(name) or {}
    build = entry.get("dir")
    root = atlas.path / INDEX_DIR / name
    return root / build if isinstance(build, str) and _BUILD.match(build) else root


def check_name(name: str) -> None:
    if not name or name.startswith(".") or not all(c.isalnum() or c in "-_." for c in name):
        raise ConfigError(f"index name {name!r}: use letters, digits, '-', '_' or '.', not "
                          "starting with '.'")


def remove_stale(atlas_path: Path | RemoteLocation, manifest) -> None:
    """Temporary directories of builds that died, builds no entry of ``manifest`` names
    (a crash before the commit) and builds retired longer than the keep time (call while
    holding the atlas lock)."""
    if isinstance(atlas_path, RemoteLocation):
        return  # a remote index is uploaded whole, file by file, from a local build
    root = atlas_path / INDEX_DIR
    if not root.is_dir():
        return
    for stale in root.glob(f".*{TEMP_MARK}*"):
        if not _being_written(stale.name):
            shutil.rmtree(stale, ignore_errors=True)
    for directory in root.iterdir():
        if not directory.is_dir() or TEMP_MARK in directory.name:
            continue
        entry = (manifest.indexes or {}).get(directory.name)
        keep = kept_builds(entry)
        for child in directory.iterdir():
            if child.is_dir() and ((TEMP_MARK in child.name and not _being_written(child.name))
                                   or (_BUILD.match(child.name) and child.name not in keep)):
                shutil.rmtree(child, ignore_errors=True)
            elif child.is_file() and entry is not None and entry.get("dir") and \
                    LEGACY_BUILD not in keep:
                child.unlink(missing_ok=True)


def _being_written(name: str) -> bool:
    """Whether a temporary build belongs to a process that still runs (builds are written
    before the lock is taken; the temporary name carries the writer's pid)."""
    match = re.search(re.escape(TEMP_MARK) + r"(\d+)", name)
    if match is None:
        return False
    try:
        os.kill(int(match[1]), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, owned by someone else
    return True


def kept_builds(entry: dict | None) -> set[str]:
    """The builds of an index entry that readers may use: its own, and those it replaced
    less than the keep time ago (:data:`LEGACY_BUILD`: the files in the index's directory)."""
    if entry is None:
        return set()
    return {entry.get("dir") or LEGACY_BUILD} | {
        build for build, when in (entry.get("retired") or {}).items()
        if not retired_long_enough(when)}


def replacing_entry(meta: dict, previous: dict | None) -> dict:
    """The ``indexes`` entry of build ``meta`` replacing the entry ``previous``: the builds
    readers of earlier versions may still use are listed as ``retired`` (build -> when)."""
    entry = index_entry(meta)
    if previous is None:
        return entry
    kept = kept_builds(previous)
    retired = {b: t for b, t in (previous.get("retired") or {}).items() if b in kept}
    retired[previous.get("dir") or LEGACY_BUILD] = utc_now()
    retired.pop(entry.get("dir"), None)
    return {**entry, "retired": retired}


def index_entry(meta: dict) -> dict:
    """The manifest's ``indexes`` entry of an index with ``meta``."""
    return {key: meta[key] for key in ENTRY_KEYS if key in meta}


@dataclass
class StagedIndex:
    """A build written into the atlas under a temporary name (:func:`stage_index`), to be
    renamed into place by :meth:`publish` under the atlas lock, just before the commit that
    records it, or removed by :meth:`discard`."""

    meta: dict
    staged: Path | None  # None: already in place (a remote build is uploaded whole)
    final: Path | None

    def publish(self) -> dict:
        if self.staged is not None:
            os.replace(self.staged, self.final)
            fsync_dir(self.final.parent)
            self.staged = None
        return self.meta

    def discard(self) -> None:
        if self.staged is not None:
            shutil.rmtree(self.staged, ignore_errors=True)
            self.staged = None


def stage_index(atlas_path: Path | RemoteLocation, name: str, index, meta: dict, *,
                units: list[str] | None = None, ids: np.ndarray | None = None
                ) -> StagedIndex:
    """Write ``index`` and its meta (sha256, bytes and its build directory added), with what
    it covers (the ``units`` whose rows it holds and its ``ids``, when given: meta
    ``coverage``), into a build directory of its own; no lock needed.

    A remote atlas gets the index file and the coverage files, then its meta (uploaded from
    a local build); the manifest's ``indexes`` entry, written after, is what makes it the
    atlas's index."""
    import faiss

    if isinstance(atlas_path, RemoteLocation):
        with tempfile.TemporaryDirectory(prefix="seqatlas-index-") as tmp:
            meta = write_index(Path(tmp), name, index, meta, units=units, ids=ids)
            built = Path(tmp) / INDEX_DIR / name / meta["dir"]
            files = [INDEX_FILE] + [meta["coverage"][key] for key in ("units_file", "ids_file")
                                    if key in meta.get("coverage", {})]
            try:
                for file in files:
                    with open(built / file, "rb") as fh:
                        atlas_path.write_bytes(fh.read(), INDEX_DIR, name, meta["dir"], file)
                atlas_path.write_bytes((built / META_FILE).read_bytes(), INDEX_DIR, name,
                                       meta["dir"], META_FILE)
            except OSError as exc:
                raise AtlasIndexError(f"cannot upload index {name!r} to {atlas_path} "
                                      f"({exc}); nothing was recorded, build it again") from None
        return StagedIndex(meta, None, None)
    root = atlas_path / INDEX_DIR / name
    root.mkdir(parents=True, exist_ok=True)
    build = f"b-{uuid.uuid4().hex[:16]}"
    final = root / build
    tmp = temporary_name(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        faiss.write_index(index, str(tmp / INDEX_FILE))
        meta = {**meta, "file": INDEX_FILE, "dir": build,
                "bytes": (tmp / INDEX_FILE).stat().st_size,
                "sha256": file_sha256(tmp / INDEX_FILE)}
        meta["bytes_per_vector"] = round(meta["bytes"] / max(meta["ntotal"], 1), 2)
        meta.pop("coverage", None)
        if units is not None:
            meta["coverage"] = write_coverage(tmp, units, ids)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))
        for path in sorted(tmp.iterdir()) + [tmp]:
            fsync_dir(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return StagedIndex(meta, tmp, final)


def write_index(atlas_path: Path | RemoteLocation, name: str, index, meta: dict, *,
                units: list[str] | None = None, ids: np.ndarray | None = None) -> dict:
    """:func:`stage_index` and publish at once (the caller holds the atlas lock); the meta."""
    staged = stage_index(atlas_path, name, index, meta, units=units, ids=ids)
    try:
        return staged.publish()
    finally:
        staged.discard()


def read_meta(atlas: AtlasReader, name: str) -> dict:
    directory = index_dir(atlas, name)
    path = directory / META_FILE
    if isinstance(path, RemoteLocation):
        raw = path.read_bytes()
        text = raw.decode("utf-8", "replace") if raw is not None else None
    else:
        text = path.read_text() if path.exists() else None
    if text is None:
        latest = AtlasReader(atlas.path)
        if latest.version != atlas.version and name in (latest.manifest.indexes or {}):
            raise AtlasIndexError(
                f"index {name!r} of {atlas.path} was built after this reader opened the atlas "
                f"(it reads version {atlas.version}, the atlas is at {latest.version}): call "
                "`atlas.refresh()` or open the atlas again")
        known = ", ".join(sorted(atlas.manifest.indexes or {})) or "none"
        raise AtlasIndexError(
            f"{atlas.path} has no index named {name!r} (indexes: {known}); build one with "
            f"`seqatlas index build --atlas {atlas.path}" +
            ("" if name == "default" else f" --name {name}") + "`")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AtlasIndexError(f"{path} is corrupt ({exc}); rebuild it with "
                              f"`seqatlas index build --atlas {atlas.path} --name {name}`") \
            from None


def list_indexes(atlas: str | os.PathLike | AtlasReader) -> list[dict]:
    """The indexes recorded in the atlas manifest: name, type, metric, column, ntotal, bytes."""
    atlas = atlas if isinstance(atlas, AtlasReader) else AtlasReader(atlas)
    rows = []
    for name, entry in sorted((atlas.manifest.indexes or {}).items()):
        rows.append({"name": name, **{key: entry.get(key) for key in
                                      ("type", "metric", "column", "dim", "ntotal", "bytes",
                                       "bytes_per_vector", "built")}})
    return rows


class LoadedIndex:
    """A checked index, ready to search; ids are atlas ``token_id`` values (``level``
    "pooled": ``pool_id`` values).

    ``pending`` (:class:`~seqatlas.index.coverage.PendingRows`, None for an index built
    before coverage was recorded): the rows added to the atlas since the build, which
    :meth:`search` searches exactly beside the index; :attr:`pending_rows` counts them and
    :meth:`pending_note` says so.
    """

    def __init__(self, index, meta: dict, path: Path, mmap: bool, *,
                 pending: PendingRows | None = None, atlas=None):
        self.index = index
        self.meta = meta
        self.path = path
        self.mmap = mmap
        self.pending = pending
        self.atlas = atlas  # the atlas path (for the update command in pending_note)
        self.column: str = meta["column"]
        self.metric: str = meta["metric"]
        self.dim: int = meta["dim"]
        self.level: str = meta.get("level", "tokens")
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"LoadedIndex({self.meta['name']!r}, type={self.meta['type']}, "
                f"metric={self.metric}, ntotal={self.meta['ntotal']}, column={self.column}, "
                f"pending_rows={self.pending_rows})")

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def pending_rows(self) -> int:
        """Rows added to the atlas since the build, searched exhaustively."""
        return self.pending.rows if self.pending is not None else 0

    @property
    def total(self) -> int:
        """Vectors a search covers: the index's and the pending rows."""
        return self.ntotal + self.pending_rows

    def pending_note(self) -> str | None:
        """What to tell the user when rows were searched beside the index (None: none)."""
        if not self.pending_rows:
            return None
        name = self.meta["name"]
        noun = "token" if self.level == "tokens" else self.level
        option = "" if name == "default" else f" --name {name}"
        return (f"{self.pending_rows:,} {noun} rows added since index {name!r} was built "
                f"were searched exhaustively; `seqatlas index update --atlas {self.atlas}"
                f"{option}` adds them")

    def search(self, queries: np.ndarray, k: int, *, nprobe: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Nearest ``k`` rows of each query row: (distances (n, k) float32, ids (n, k) int64,
        -1 where there are fewer hits), over the index and the :attr:`pending_rows`.

        Distances are inner products (``ip``) or cosine similarities (``cosine``: queries are
        normalised here), both larger when nearer, or squared Euclidean distances (``l2``).
        ``nprobe`` overrides the build's calibrated number of IVF lists (HNSW: efSearch)
        visited per query.
        """

        queries = np.asarray(queries)
        if queries.ndim == 1:
            queries = queries[None, :]
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ConfigError(f"queries must have shape (n, {self.dim}) for index "
                              f"{self.meta['name']!r}, not {queries.shape}")
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError(f"k must be a positive integer, not {k!r}")
        if nprobe is not None and (not isinstance(nprobe, (int, np.integer)) or nprobe < 1):
            raise ConfigError(f"nprobe must be a positive integer, not {nprobe!r}")
        queries = prepare(queries, self.metric)
        if len(queries) == 0:
            return np.empty((0, k), np.float32), np.empty((0, k), np.int64)
        with self._lock:
            set_search_params(self.index, self.meta, nprobe)
            distances, ids = self.index.search(queries, int(k))
            if self.pending_rows:
                distances, ids = merge_top_k((distances, ids),
                                             self.pending.search(queries, int(k)), int(k),
                                             self.metric)
        return to_similarity(distances.astype(np.float32, copy=False), self.metric), \
            ids.astype(np.int64, copy=False)


def load_index(atlas: str | os.PathLike | AtlasReader, name: str = "default", *,
               mmap: bool = True, verify: bool = True) -> LoadedIndex:
    """Open index ``name`` of ``atlas`` after checking it belongs to the atlas as it is now.

    Rows added since the build are found (:attr:`LoadedIndex.pending_rows`) and searched
    beside the index; refused (:class:`AtlasIndexError` saying how to rebuild) are an index
    of another model, of another dimension, or holding rows the atlas no longer has.
    ``mmap`` maps the file where FAISS can (IVF inverted lists, flat codes) instead of
    reading it into memory; ``verify`` checks the sha256 of the files (one read of each).
    """

    atlas = atlas if isinstance(atlas, AtlasReader) else AtlasReader(atlas)
    meta = read_meta(atlas, name)
    directory = index_dir(atlas, name)
    rebuild = f"rebuild it with `seqatlas index build --atlas {atlas.path} --name {name}`"
    try:
        file = directory / meta["file"]
        model, built = meta["model"], meta["atlas"]
        dim, ntotal, column = int(meta["dim"]), int(meta["ntotal"]), meta["column"]
        level, coverage = meta.get("level", "tokens"), meta.get("coverage")
        for key in COVERAGE_KEYS if coverage is not None else ():
            if key not in coverage:
                raise KeyError(f"coverage.{key}")
    except (KeyError, TypeError, ValueError) as exc:
        raise AtlasIndexError(f"{directory / META_FILE} lacks {exc}; {rebuild}") from None
    current = atlas.manifest.model.to_json() if atlas.manifest.model else {}
    for key in ("name", "weights_sha256"):
        if model.get(key) != current.get(key):
            raise AtlasIndexError(
                f"index {name!r} in {atlas.path} was built from another atlas (model "
                f"{model.get('name')!r}, weights {str(model.get('weights_sha256'))[:12]}; this "
                f"atlas: {current.get('name')!r}, {str(current.get('weights_sha256'))[:12]}); "
                f"{rebuild}")
    if coverage is not None:  # rows added since are searched exactly; rows gone: refused
        pending = find_pending(atlas, {**meta, "name": name}, directory, rebuild,
                               verify=verify)
    else:  # built before coverage was recorded: current while the tokens are unchanged
        pending = None
    table_column = column if level == "tokens" else POOLED_VECTORS
    atlas_dim = _column_dim(atlas, level, table_column)
    if atlas_dim != dim:
        raise AtlasIndexError(f"index {name!r} has dimension {dim} but the atlas's "
                              f"{table_column!r} column has dimension {atlas_dim}; {rebuild}")
    if pending is None:
        rows = atlas.count("tokens")
        fingerprint = built.get("tokens_fingerprint")
        if fingerprint not in (tokens_fingerprint(atlas), legacy_tokens_fingerprint(atlas)) \
                or ntotal != rows:
            raise AtlasIndexError(
                f"index {name!r} holds {ntotal:,} vectors from other tokens parts than the "
                f"atlas now has ({rows:,} token rows; the atlas changed since the build, or "
                f"the index was copied from another atlas); {rebuild}")
    if isinstance(file, RemoteLocation):
        file = _downloaded(file, meta, rebuild)
    if not file.exists():
        raise AtlasIndexError(f"{file} is missing; {rebuild}")
    size = file.stat().st_size
    if "bytes" in meta and size != meta["bytes"]:
        raise AtlasIndexError(f"{file} is {size:,} bytes, the build wrote {meta['bytes']:,} "
                              f"(truncated or replaced); {rebuild}")
    if verify and file_sha256(file) != meta.get("sha256"):
        raise AtlasIndexError(f"{file} is corrupt (sha256 differs from the build's); "
                              f"{rebuild}")
    index, mapped = _read(file, str(meta.get("type", "")), mmap, rebuild)
    if index.d != dim:
        raise AtlasIndexError(f"{file} has dimension {index.d}, its meta.json says {dim}; "
                              f"{rebuild}")
    if index.ntotal != ntotal:
        raise AtlasIndexError(f"{file} holds {index.ntotal:,} vectors, its meta.json says "
                              f"{ntotal:,}; {rebuild}")
    return LoadedIndex(index, meta, directory, mapped, pending=pending, atlas=atlas.path)


def _downloaded(file: RemoteLocation, meta: dict, rebuild: str) -> Path:
    """A remote index file, copied once into this machine's cache (by its SHA-256) so that
    FAISS can map it; the copy is checked like a local index file."""
    return local_copy(file, str(meta.get("sha256", "unknown")), meta.get("bytes"), ".faiss",
                      rebuild)


def _read(file: Path, kind: str, mmap: bool, rebuild: str):
    import faiss

    # IVF: the inverted lists are mapped (IO_FLAG_MMAP); Flat and HNSW: the flat codes
    # (IO_FLAG_MMAP_IFC, FAISS >= 1.11). The two flags cannot be combined.
    flags = faiss.IO_FLAG_MMAP if kind.startswith("ivf") else \
        getattr(faiss, "IO_FLAG_MMAP_IFC", None)
    if mmap and flags is not None:
        try:
            return faiss.read_index(str(file), flags), True
        except RuntimeError:
            pass  # an index type FAISS cannot map: read it into memory
    try:
        return faiss.read_index(str(file)), False
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise AtlasIndexError(f"{file} cannot be read by FAISS ({reason}); {rebuild}") \
            from None


def _column_dim(atlas: AtlasReader, table: str, column: str) -> int | None:
    import pyarrow as pa

    parts = atlas.part_paths(table)
    if not parts:
        return None
    arrow_schema = atlas.open_part(parts[0]).schema_arrow
    if column not in arrow_schema.names:
        raise AtlasIndexError(f"the atlas's {table} have no column {column!r} (the index was "
                              "built from another atlas)")
    field_type = arrow_schema.field(column).type
    return field_type.list_size if pa.types.is_fixed_size_list(field_type) else None
