"""Fold the rows added to an atlas since an index was built into the index, without
training it again.

IVF and IVF-PQ keep their trained coarse quantizer, PCA rotation and PQ codebooks and add
the new vectors to their lists; Flat and HNSW append them. The search setting (nprobe,
efSearch) is then calibrated again, as a build does, on queries drawn from every indexed
vector, old and new, against their exact top-10 over all of them, and the measured recall
recorded; the index, its coverage and meta are written atomically and recorded in the
manifest. A build (:func:`~seqatlas.index.build.build_index`) still starts from scratch.
"""

from __future__ import annotations

import os
import time

import numpy as np

from seqatlas.errors import AtlasIndexError
from seqatlas.index import store
from seqatlas.index.build import CALIBRATION_QUERIES, Plan, atlas_record
from seqatlas.index.search import Calibration, calibrate
from seqatlas.index.vectors import BATCH_ROWS, EmbeddingSource, prepare
from seqatlas.progress import Meter
from seqatlas.store import AtlasReader, AtlasWriter
from seqatlas.util import utc_now

# meta keys a write recomputes, dropped before it
_WRITTEN = ("file", "bytes", "sha256", "bytes_per_vector", "coverage", "added")


def update_index(atlas: str | os.PathLike | AtlasReader, name: str = "default", *,
                 recall_target: float | None = None, progress: bool | str = False,
                 batch_rows: int = BATCH_ROWS) -> dict:
    """Add the rows of ``atlas`` that index ``name`` does not hold yet to it (under the atlas
    lock, as a build), recalibrate its search setting and write it; returns its meta with
    ``added``, the rows added (0: the index was current and nothing was written).

    ``recall_target``: the recall@10 the calibration aims at (default: the build's).
    Raises :class:`AtlasIndexError` where the index must be rebuilt instead (another model
    or dimension, or rows it holds gone from the atlas), saying how.
    """
    import faiss  # a missing FAISS fails before the atlas is locked

    path = atlas.path if isinstance(atlas, AtlasReader) else atlas
    started = time.perf_counter()
    with AtlasWriter(path) as writer:  # holds the atlas lock: no ingest during the update
        path = writer.path
        store.remove_stale(path, writer.manifest)
        snapshot = AtlasReader(path)
        loaded = store.load_index(snapshot, name, mmap=False)  # refuses a stale index
        if not loaded.pending_rows:
            return {**loaded.meta, "added": 0}
        meta = {k: v for k, v in loaded.meta.items() if k not in _WRITTEN}
        pending, index = loaded.pending, loaded.index
        t0 = time.perf_counter()
        added = []
        meter = Meter(label="adding", unit="vectors", total=pending.rows, progress=progress)
        with meter:
            for ids, x in pending.batches(batch_rows):
                index.add_with_ids(prepare(x, loaded.metric), ids)
                added.append(ids.astype(np.int64))
                meter.advance(len(ids))
        add_seconds = time.perf_counter() - t0
        ids = np.concatenate([np.asarray(pending.indexed)] + added)
        if index.ntotal != len(ids):
            raise AtlasIndexError(f"index {name!r} holds {index.ntotal:,} vectors after the "
                                  f"update, its ids {len(ids):,}; rebuild it with `seqatlas "
                                  f"index build --atlas {path} --name {name}`")
        plan = Plan(meta["type"], **meta.get("params", {}))
        target = recall_target or meta["search"].get("target") or 0.95
        meta["search"] = recalibrate(index, plan, pending.source, loaded.metric, target,
                                     seed=int(meta.get("seed", 0)), batch_rows=batch_rows)
        meta.update(ntotal=int(index.ntotal), atlas=atlas_record(snapshot, pending.source),
                    faiss_version=faiss.__version__, updated=utc_now(),
                    last_update={"added": sum(len(i) for i in added),
                                 "add_seconds": round(add_seconds, 3),
                                 "seconds": round(time.perf_counter() - started, 3)})
        meta = store.write_index(path, name, index, meta, units=pending.source.units(),
                                 ids=ids)
        writer.set_index(name, store.replacing_entry(meta, (writer.manifest.indexes or {})
                                                     .get(name)))
    return {**meta, "added": meta["last_update"]["added"]}


def recalibrate(index, plan: Plan, source: EmbeddingSource, metric: str, target: float, *,
                seed: int, batch_rows: int = BATCH_ROWS) -> dict:
    """The search setting reaching ``target`` recall@10 on queries drawn from every vector
    of ``source`` against their exact top-10 over all of them (Flat: exact, nothing run)."""
    if plan.type == "flat":
        return calibrate(index, plan, np.empty((0, source.dim), np.float32),
                         np.empty((0, 10), np.int64), target)
    queries = prepare(source.sample(min(source.total, CALIBRATION_QUERIES), seed + 1), metric)
    calibration = Calibration(queries, metric)
    for ids, x in source.batches(batch_rows=batch_rows):
        calibration.add(ids, prepare(x, metric))
    return calibrate(index, plan, calibration.queries, calibration.truth(), target)
