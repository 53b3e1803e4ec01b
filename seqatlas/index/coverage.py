"""What an index holds, so that it can grow with its atlas.

Beside ``index.faiss`` a build writes the units whose rows it indexed (``units.json``) and
the sorted ids it holds (``ids.npy``); the meta's ``coverage`` names them with their sha256.
Rows added to the table since then (:class:`PendingRows`) are found from them: a part whose
units were all indexed is skipped unread; any other part (a new unit's, or a compacted one
mixing indexed and new units) has its ids read and checked against the indexed ids. The
index's search adds an exact search over those rows until ``seqatlas index update`` folds
them in. Rows the index holds that the atlas no longer has (units removed) make it stale:
:func:`find_pending` refuses it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from seqatlas.errors import AtlasIndexError
from seqatlas.index.search import faiss_metric
from seqatlas.index.vectors import EmbeddingSource, prepare
from seqatlas.locations import RemoteLocation
from seqatlas.store import AtlasReader
from seqatlas.util import atomic_write, cache_dir, file_sha256

UNITS_FILE = "units.json"
IDS_FILE = "ids.npy"
COVERAGE_KEYS = ("units", "units_file", "units_sha256", "ids", "ids_file", "ids_bytes",
                 "ids_sha256")  # the meta's ``coverage`` record


def write_coverage(directory: Path, units: Iterable[str], ids: np.ndarray) -> dict:
    """Write ``units`` and the sorted ``ids`` into ``directory``; their meta record."""
    data = json.dumps(sorted(set(units))).encode()
    (directory / UNITS_FILE).write_bytes(data)
    with open(directory / IDS_FILE, "wb") as fh:
        np.save(fh, np.sort(np.asarray(ids, dtype=np.int64)))
    return {"units": len(json.loads(data)), "units_file": UNITS_FILE,
            "units_sha256": hashlib.sha256(data).hexdigest(), "ids": int(len(ids)),
            "ids_file": IDS_FILE, "ids_bytes": (directory / IDS_FILE).stat().st_size,
            "ids_sha256": file_sha256(directory / IDS_FILE)}


def index_ids(index) -> np.ndarray:
    """Every id a FAISS index holds (IDMap: its id map; IVF: its inverted lists), sorted."""
    import faiss

    outer = faiss.downcast_index(index)
    if isinstance(outer, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        return np.sort(faiss.vector_to_array(outer.id_map).astype(np.int64))
    invlists = faiss.extract_index_ivf(index).invlists
    lists = []
    for number in range(invlists.nlist):
        size = invlists.list_size(number)
        if size:
            lists.append(faiss.rev_swig_ptr(invlists.get_ids(number), size).copy())
    return np.sort(np.concatenate(lists).astype(np.int64)) if lists else \
        np.empty(0, np.int64)


def holds(indexed: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Which of ``ids`` are in the sorted array ``indexed``."""
    if not len(indexed):
        return np.zeros(len(ids), dtype=bool)
    at = np.searchsorted(indexed, ids)
    return np.asarray(indexed)[np.minimum(at, len(indexed) - 1)] == ids


def local_copy(file: RemoteLocation, digest: str, size: int | None, suffix: str,
               rebuild: str) -> Path:
    """A remote index file, copied once into this machine's cache (by its sha256)."""
    local = cache_dir() / "remote-indexes" / f"{digest}{suffix}"
    if local.exists() and local.stat().st_size == size:
        return local
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise AtlasIndexError(f"cannot read {file} ({exc}); {rebuild}") from None
    if data is None:
        raise AtlasIndexError(f"{file} is missing; {rebuild}")
    local.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(local, data)
    return local


def read_units(directory: Path | RemoteLocation, coverage: dict, rebuild: str) -> set[str]:
    """The units the index holds the rows of (checked against their sha256)."""
    file = directory / coverage["units_file"]
    try:
        data = file.read_bytes() if isinstance(file, RemoteLocation) or file.exists() else None
    except OSError as exc:
        raise AtlasIndexError(f"cannot read {file} ({exc}); {rebuild}") from None
    if data is None:
        raise AtlasIndexError(f"{file} is missing; {rebuild}")
    if hashlib.sha256(data).hexdigest() != coverage["units_sha256"]:
        raise AtlasIndexError(f"{file} is corrupt (sha256 differs from the build's); {rebuild}")
    return set(json.loads(data))


def read_ids(directory: Path | RemoteLocation, coverage: dict, rebuild: str, *,
             verify: bool = True) -> np.ndarray:
    """The sorted ids the index holds (memory-mapped)."""
    file = directory / coverage["ids_file"]
    if isinstance(file, RemoteLocation):
        file = local_copy(file, coverage["ids_sha256"], coverage["ids_bytes"], ".ids.npy",
                          rebuild)
    if not file.exists():
        raise AtlasIndexError(f"{file} is missing; {rebuild}")
    if file.stat().st_size != coverage["ids_bytes"] or \
            (verify and file_sha256(file) != coverage["ids_sha256"]):
        raise AtlasIndexError(f"{file} is corrupt (not the file the build wrote); {rebuild}")
    try:
        ids = np.load(file, mmap_mode="r")
    except ValueError as exc:
        raise AtlasIndexError(f"{file} cannot be read ({exc}); {rebuild}") from None
    if ids.dtype != np.int64 or ids.ndim != 1 or len(ids) != coverage["ids"]:
        raise AtlasIndexError(f"{file} does not hold the {coverage['ids']:,} ids of the "
                              f"index; {rebuild}")
    return ids


class PendingRows:
    """The rows of the indexed table that the index does not hold (added since the build):
    in ``parts``, those whose ids are not in ``indexed``. Searched exactly, as the index
    of ``metric`` searches (a FAISS Flat with its metric, built on the first search)."""

    def __init__(self, source: EmbeddingSource, parts: list[Path], indexed: np.ndarray,
                 rows: int, metric: str):
        self.source, self.parts, self.indexed = source, parts, indexed
        self.rows, self.metric = rows, metric
        self._flat = self._ids = None

    def __repr__(self) -> str:
        return f"PendingRows({self.rows:,} {self.source.noun} rows in {len(self.parts)} parts)"

    def batches(self, batch_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, float32 vectors) of the pending rows, as stored (not normalised)."""
        for ids, x in self.source.batches(self.parts, batch_rows=batch_rows):
            new = ~holds(self.indexed, ids)
            if new.any():
                yield ids[new], x[new]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances, ids) of the nearest ``k`` pending rows of each prepared query, as
        the index's own search returns them (before :func:`to_similarity`)."""
        import faiss

        if self._flat is None:
            flat, labels = faiss.IndexFlat(self.source.dim, faiss_metric(self.metric)), []
            for ids, x in self.batches(65536):
                flat.add(prepare(x, self.metric))
                labels.append(ids.astype(np.int64))
            self._flat = flat
            self._ids = np.concatenate(labels) if labels else np.empty(0, np.int64)
        k = min(k, self._flat.ntotal)
        if k == 0:
            return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0),
                                                                     np.int64)
        distances, rows = self._flat.search(queries, k)
        return distances, np.where(rows >= 0, self._ids[np.maximum(rows, 0)], -1)


def open_source(atlas: AtlasReader, meta: dict) -> EmbeddingSource:
    """The vectors index ``meta`` was built over, as the atlas holds them now."""
    return EmbeddingSource.open(atlas, meta.get("layer_column", meta["column"]),
                                level=meta.get("level", "tokens"),
                                pooling=meta.get("pooling") or "mean")


def find_pending(atlas: AtlasReader, meta: dict, directory: Path | RemoteLocation,
                 rebuild: str, *, verify: bool = True) -> PendingRows:
    """The rows added to the indexed table since the build; refuses (AtlasIndexError with
    ``rebuild``) an index holding rows the atlas no longer has."""
    name, coverage, ntotal = meta["name"], meta["coverage"], int(meta["ntotal"])
    table = meta.get("level", "tokens")  # the level names its table
    units = read_units(directory, coverage, rebuild)
    records = atlas.manifest.table_parts(table)
    gone = units - {u for record in records.values() for u in record.covered_units()}
    if gone:
        raise AtlasIndexError(
            f"index {name!r} holds the {table} rows of {len(gone):,} unit(s) that "
            f"{atlas.path} no longer has (removed since the build), so its hits would be "
            f"stale; {rebuild}")
    source = open_source(atlas, meta)
    indexed, held, parts, new = None, 0, [], 0
    for path, rows in zip(source.parts, source.rows):
        if set(records[path.name].covered_units()) <= units:
            held += rows
            continue
        if indexed is None:
            indexed = read_ids(directory, coverage, rebuild, verify=verify)
        found = holds(indexed, source.ids(path))
        held += int(found.sum())
        if not found.all():
            parts.append(path)
            new += int((~found).sum())
    if held != ntotal:
        raise AtlasIndexError(
            f"index {name!r} holds {ntotal:,} vectors from other {table} parts than the atlas "
            f"now has ({source.total:,} {source.noun} rows; the atlas changed since the "
            f"build, or the index was copied from another atlas); {rebuild}")
    if indexed is None:
        indexed = np.empty(0, np.int64)  # nothing to check: no part holds a new unit
    return PendingRows(source, parts, indexed, new, meta["metric"])
