"""Sharded index builds on Ray: one trained (empty) index, shards of tokens parts added in
parallel by Ray tasks, merged in part order (so the result equals a single build's).

Imported only by a build with ``shards > 1``; ray is imported here, lazily.
"""

from __future__ import annotations


import numpy as np

from seqatlas.errors import AtlasIndexError, ConfigError, SeqAtlasError
from seqatlas.progress import Meter
from seqatlas.index.populate import add_batches, gpu_count
from seqatlas.index.search import Calibration
from seqatlas.index.vectors import EmbeddingSource
from seqatlas.store import AtlasReader
from seqatlas.util import start_ray


def split_parts(rows: list[int], shards: int) -> list[range]:
    """Contiguous runs of parts with about equal rows, at most ``shards`` of them."""
    total, bounds, start, done = sum(rows), [], 0, 0
    for shard in range(1, shards + 1):
        goal = total * shard / shards
        end = start
        while end < len(rows) and (done + rows[end] <= goal or end == start):
            done += rows[end]
            end += 1
        if shard == shards:
            while end < len(rows):
                done += rows[end]
                end += 1
        if end > start:
            bounds.append(range(start, end))
        start = end
    return bounds


def add_shard(index_bytes: np.ndarray, atlas_path, layout: dict, dim: int,
              parts: list, rows: list[int], metric: str, queries: np.ndarray, k: int,
              batch_rows: int, threads: int, gpu: bool):
    """Ray task: add ``parts`` to a copy of the trained index; return it serialised with the
    exact top-k of the calibration queries among these parts. ``layout``: the source's
    table, id column, vector column and row filter."""
    import faiss

    faiss.omp_set_num_threads(max(1, threads))
    index = faiss.deserialize_index(index_bytes)
    source = EmbeddingSource(AtlasReader(atlas_path), dim=dim, parts=list(parts), rows=rows,
                             **layout)
    calibration = Calibration(queries, metric, k)
    add_batches(index, source, metric, calibration, gpu=gpu and gpu_count() > 0,
                batch_rows=batch_rows)
    heap = calibration.heap
    heap.finalize()
    import ray

    return faiss.serialize_index(index), heap.D, heap.I, ray.get_runtime_context().get_node_id()


def add_sharded(index, source, shards: int, *, config, calibration, gpu: bool = False):
    """Add ``source``'s parts to the trained ``index`` in ``shards`` Ray tasks and merge;
    returns (index, number of shards, number of Ray nodes that added them). With ``gpu``, tasks take a share of the cluster's
    GPUs and assign vectors to lists there."""
    import faiss

    ray, started = start_ray(config.address, error=ConfigError,
                              fallback="build without --shards")
    try:
        resources = ray.cluster_resources()
        cpus, gpus = int(resources.get("CPU", 1)), resources.get("GPU", 0)
        threads = max(1, cpus // shards)
        gpu = gpu and gpus > 0
        task = ray.remote(num_cpus=threads, num_gpus=min(1.0, gpus / shards) if gpu else 0)(
            add_shard)
        payload = ray.put(faiss.serialize_index(index))
        queries = ray.put(calibration.queries)
        groups = split_parts(source.rows, shards)
        atlas = source.atlas.path if source.atlas.filesystem is not None else \
            str(source.atlas.path)  # a remote location travels with its filesystem
        layout = {"column": source.column, "table": source.table,
                  "id_column": source.id_column, "where": source.where}
        refs = [task.remote(payload, atlas, layout, source.dim,
                            [source.parts[i] for i in group],
                            [source.rows[i] for i in group], config.metric, queries,
                            calibration.k, config.batch_rows, threads, gpu)
                for group in groups]
        progress = Meter(label="adding", unit="vectors", total=source.total,
                         progress=config.progress)
        results: dict = {}
        with progress:
            pending = {ref: i for i, ref in enumerate(refs)}
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                shard = pending.pop(ready[0])
                try:
                    results[shard] = ray.get(ready[0])
                except ray.exceptions.RayError as exc:
                    cause = getattr(exc, "cause", None) or exc
                    if isinstance(cause, SeqAtlasError):
                        raise cause from None
                    raise AtlasIndexError(f"index shard {shard} (parts "
                                          f"{groups[shard].start}-{groups[shard].stop - 1}) "
                                          f"failed: {cause}") from None
                progress.advance(sum(source.rows[i] for i in groups[shard]))
        merged, nodes = None, set()
        for shard in range(len(groups)):
            data, distances, ids, node = results.pop(shard)
            nodes.add(node)
            part = faiss.deserialize_index(data)
            if merged is None:
                merged = part
            else:
                merged.merge_from(part, 0)
            calibration.add_result(distances, ids)
        return merged, len(groups), len(nodes)
    finally:
        if started:
            ray.shutdown()
