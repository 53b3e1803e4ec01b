"""Searching FAISS indexes: metrics, exact search, calibration of nprobe/efSearch.

Cosine indexes hold unit vectors under L2 (the same ranking as their inner product);
:func:`to_similarity` turns their distances back into cosine similarities.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import numpy as np

if TYPE_CHECKING:
    from seqatlas.index.build import Plan

METRICS = ("cosine", "ip", "l2")
CALIBRATION_K = 10


def faiss_metric(metric: str) -> int:
    """FAISS metric of an index: cosine is L2 over unit vectors (same ranking as their inner
    product, and PQ codes of unit vectors are far more accurate under L2)."""
    import faiss

    return faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2


def to_similarity(distances: np.ndarray, metric: str) -> np.ndarray:
    """Cosine similarity from the squared L2 distances of unit vectors: 1 - d / 2."""
    return (1 - distances / 2).astype(np.float32) if metric == "cosine" else distances


def set_search_params(index, meta: dict, nprobe: int | None = None) -> None:
    """Apply the build's calibrated nprobe (IVF) or efSearch (HNSW), or ``nprobe``."""
    import faiss

    search = meta.get("search", {})
    value = nprobe or search.get(search.get("parameter", "nprobe"))
    if value is None:
        return
    if meta["type"].startswith("ivf"):
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = min(int(value), ivf.nlist)
    elif meta["type"] == "hnsw":
        faiss.downcast_index(faiss.downcast_index(index).index).hnsw.efSearch = int(value)


class Calibration:
    """Exact top-k of a few held-in queries, accumulated batch by batch."""

    def __init__(self, queries: np.ndarray, metric: str, k: int = CALIBRATION_K):
        import faiss

        self.queries, self.metric, self.k = queries, metric, k
        self.heap = faiss.ResultHeap(len(queries), k, keep_max=metric != "l2")

    def add(self, ids: np.ndarray, x: np.ndarray) -> None:
        if len(self.queries):
            self.add_result(*exact_search(self.queries, [(ids, x)], self.k, self.metric))

    def add_result(self, distances: np.ndarray, ids: np.ndarray) -> None:
        self.heap.add_result(np.ascontiguousarray(distances, dtype=np.float32),
                             np.ascontiguousarray(ids, dtype=np.int64))

    def truth(self) -> np.ndarray:
        self.heap.finalize()
        return self.heap.I


def exact_search(queries: np.ndarray, batches: Iterable[tuple[np.ndarray, np.ndarray]],
                 k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k of ``queries`` among the rows of ``(ids, vectors)`` batches: one
    FAISS Flat holding every batch, searched once; (distances, ids), each (n, min(k, rows)),
    -1 ids where there are fewer rows.

    Queries and vectors come as the index holds them (:func:`~seqatlas.index.vectors.prepare`:
    cosine rows are unit vectors, searched by inner product). One Flat, not one per batch:
    FAISS computes distances in blocks of rows, so the last bit of a distance, and with it
    the order of near ties, depends on where the row falls; one Flat makes the result the
    same whatever the batch sizes.
    """
    import faiss

    flat = faiss.IndexFlat(queries.shape[1], faiss.METRIC_L2 if metric == "l2"
                           else faiss.METRIC_INNER_PRODUCT)
    labels = []
    for ids, x in batches:
        flat.add(x)
        labels.append(np.asarray(ids, dtype=np.int64))
    k = min(k, flat.ntotal)
    if k == 0:
        return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
    distances, rows = flat.search(queries, k)
    ids = np.concatenate(labels)
    return distances, np.where(rows >= 0, ids[np.maximum(rows, 0)], -1)


def merge_top_k(first: tuple[np.ndarray, np.ndarray], second: tuple[np.ndarray, np.ndarray],
                k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """The top ``k`` of two (distances, ids) results of the same queries, as FAISS returns
    them for an index of ``metric`` (before :func:`to_similarity`: larger is nearer only for
    ``ip``); nearest first, ``first`` before ``second`` on a tie, -1 ids last."""
    distances = np.concatenate([first[0], second[0]], axis=1).astype(np.float32, copy=False)
    ids = np.concatenate([first[1], second[1]], axis=1).astype(np.int64, copy=False)
    key = np.where(ids >= 0, -distances if metric == "ip" else distances, np.inf)
    order = np.argsort(key, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(distances, order, axis=1), np.take_along_axis(ids, order, axis=1)


def per_query_recall(truth: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Fraction of each query's true top-k found in its returned top-k."""
    return np.array([len(set(t[t >= 0]) & set(f[f >= 0])) / max((t >= 0).sum(), 1)
                     for t, f in zip(truth, found)], dtype=np.float64)


def calibrate(index, plan: Plan, queries: np.ndarray, truth: np.ndarray,
              target: float) -> dict:
    """Smallest nprobe (IVF) or efSearch (HNSW) whose recall@k reaches ``target``."""
    if plan.type == "flat" or not len(queries):
        return {"recall_at_10": 1.0, "exact": plan.type == "flat"}
    if plan.type == "hnsw":
        key, values = "efSearch", [16, 32, 64, 128, 256, 512, 1024]
    else:
        key, values = "nprobe", [v for v in (2 ** i for i in range(17)) if v < plan.nlist]
        values.append(plan.nlist)
    meta = {"type": plan.type}
    curve, bound = {}, {}
    for value in values:
        set_search_params(index, meta, value)
        _, found = index.search(queries, truth.shape[1])
        hits = per_query_recall(truth, found)
        curve[value] = round(float(hits.mean()), 4)
        # reached only when one standard error below the mean still reaches it, so the
        # setting holds for other queries too
        bound[value] = float(hits.mean() - hits.std() / np.sqrt(len(hits)))
        recalls = list(curve.values())
        if bound[value] >= target or (len(recalls) >= 3 and recalls[-1] <= recalls[-3]):
            break  # reached, or no gain over two doublings: the codes limit the recall
    value = next((v for v, b in bound.items() if b >= target), max(curve, key=curve.get))
    result = {key: value, "parameter": key, "recall_at_10": curve[value],
              "target": target, "queries": len(queries),
              "curve": {str(v): r for v, r in curve.items()}}
    if bound[value] < target:
        result["warning"] = (f"recall@10 {curve[value]:.3f} does not reach {target} at any "
                             f"{key}; use larger codes (--m) or --type flat/hnsw")
    return result

