"""Creating, training and filling FAISS indexes (CPU, or GPUs for IVF training and list
assignment); shared by single and sharded builds."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from seqatlas.errors import ConfigError
from seqatlas.index.search import Calibration, faiss_metric
from seqatlas.index.vectors import EmbeddingSource, prepare

if TYPE_CHECKING:
    from seqatlas.index.build import Plan


def make_index(plan: Plan, dim: int, metric: str, transform=None):
    """An empty CPU index for ``plan``; the outermost index assigns token_ids. A plan with
    ``pca`` needs its trained ``transform`` (:func:`rotation`)."""
    import faiss

    fmetric = faiss_metric(metric)
    if plan.type == "flat":
        return faiss.IndexIDMap(faiss.IndexFlat(dim, fmetric))
    if plan.type == "hnsw":
        graph = faiss.IndexHNSWFlat(dim, plan.m, fmetric)
        graph.hnsw.efConstruction = plan.efconstruction
        return faiss.IndexIDMap(graph)
    if plan.type == "ivf-flat":
        return faiss.index_factory(dim, f"IVF{plan.nlist},Flat", fmetric)
    if not plan.pca:
        return faiss.index_factory(dim, plan.describe(), fmetric)
    if transform is None:
        raise ValueError("a PCA plan needs its trained rotation")
    inner = faiss.index_factory(plan.pca, plan.describe().split(",", 1)[1], fmetric)
    index = faiss.IndexPreTransform(transform, inner)
    index.own_fields = True
    inner.this.disown()
    transform.this.disown()
    return index


def gpu_count() -> int:
    """GPUs FAISS can use (0 with faiss-cpu)."""
    import faiss

    try:
        return int(faiss.get_num_gpus())
    except AttributeError:
        return 0


def use_gpu(requested: bool | None, index_type: str) -> tuple[bool, str]:
    """Whether to train and add on GPUs, and why."""
    gpus = gpu_count()
    if requested and gpus == 0:
        raise ConfigError("--gpu: FAISS sees no GPU; install the gpu extra "
                          "(pip install 'seqatlas[gpu]') on a CUDA machine, or use --no-gpu")
    if requested is False:
        return False, "CPU (--no-gpu)"
    if gpus == 0:
        return False, "CPU (FAISS sees no GPU)"
    if index_type in ("flat", "hnsw"):
        return False, f"CPU ({index_type} has nothing to train and FAISS has no GPU HNSW)"
    return True, f"{gpus} GPU(s): coarse k-means and list assignment"


def _gpu_resources(index):
    """Move the IVF coarse quantizer's work (k-means, assignment) to all GPUs."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    clustering = faiss.index_cpu_to_all_gpus(faiss.IndexFlat(ivf.d, ivf.metric_type))
    ivf.clustering_index = clustering
    return ivf, clustering


def train(index, plan: Plan, sample: np.ndarray, gpu: bool) -> None:
    if plan.type in ("flat", "hnsw"):
        return
    if not gpu:
        index.train(sample)
        return
    ivf, clustering = _gpu_resources(index)
    try:
        index.train(sample)
    finally:
        ivf.clustering_index = None
        del clustering


def add_batches(index, source: EmbeddingSource, metric: str, calibration: Calibration, *,
                gpu: bool, batch_rows: int, advance=None) -> None:
    """Add ``source``'s vectors (normalised for cosine) to ``index`` and to the exact top-k
    of ``calibration``, calling ``advance(rows)`` after each batch. On GPU the coarse
    assignment runs on a GPU copy of the quantizer; the CPU quantizer is put back after."""
    if gpu:
        import faiss

        ivf = faiss.extract_index_ivf(index)
        cpu_quantizer = ivf.quantizer
        gpu_quantizer = faiss.index_cpu_to_all_gpus(cpu_quantizer)  # kept alive while used
        ivf.quantizer = gpu_quantizer
    try:
        for ids, x in source.batches(batch_rows=batch_rows):
            x = prepare(x, metric)
            index.add_with_ids(x, ids)
            calibration.add(ids, x)
            if advance is not None:
                advance(len(ids))
    finally:
        if gpu:
            ivf.quantizer = cpu_quantizer
            del gpu_quantizer

