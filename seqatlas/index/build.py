"""Build a FAISS index over an atlas's token embeddings, streamed from the tokens parts, or
(``level`` "pooled") over the pooled rows of one pooling and layer (ids: ``pool_id``).

Types: ``flat`` (exact), ``ivf-flat``, ``ivf-pq`` (PCA rotation + IVF + 8-bit PQ, 2 PCA
dimensions per code byte) and ``hnsw``. ``auto`` picks Flat below 1M vectors and IVF-PQ above
(:func:`choose_index`). Vector ids are the atlas ``token_id`` values. IVF and PQ train on a
random sample; the number of IVF lists (HNSW: efSearch) visited per query is then calibrated
on held-in queries against exact search and stored in the meta, with the recall measured.
The index directory also records what the index covers (units and ids), so that rows added
later are searched beside it and folded in by :func:`~seqatlas.index.update.update_index`.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np

from seqatlas.store import AtlasReader, AtlasWriter
from seqatlas import schema
from seqatlas.util import format_size, machine_memory_bytes, utc_now
from seqatlas.errors import AtlasIndexError, ConfigError
from seqatlas.index import store
from seqatlas.progress import Meter
from seqatlas.index.populate import add_batches, make_index, train, use_gpu
from seqatlas.index.shards import add_sharded
from seqatlas.index.search import METRICS, Calibration, calibrate
from seqatlas.index.coverage import index_ids
from seqatlas.index.vectors import (LEVELS, EmbeddingSource, column_layer, prepare,
                                    table_fingerprint)

TYPES = ("auto", "flat", "ivf-flat", "ivf-pq", "hnsw")
FLAT_LIMIT = 1_000_000  # auto: exact search below this many vectors
PQ_BYTES = 48  # auto: code bytes per vector; with the 8-byte id, <= 64 bytes per vector
VARIANCE_KEPT = 0.99  # auto: widen the codes while the PCA to 2 m dimensions keeps less
CALIBRATION_QUERIES = 1000


@dataclass
class IndexConfig:
    """Options of :func:`build_index`; ``None`` means chosen from the data."""

    name: str = "default"
    type: str = "auto"  # auto | flat | ivf-flat | ivf-pq | hnsw
    metric: str = "cosine"  # cosine (inner product of normalised vectors) | ip | l2
    column: str = "embedding"  # the tokens embedding column (embedding_layer_{L}: layer L)
    level: str = "tokens"  # tokens | pooled (the pooled rows of `pooling` and column's layer)
    pooling: str = "mean"  # pooled: mean | bos
    nlist: int | None = None  # IVF lists; default ~4 sqrt(N), a power of 2
    m: int | None = None  # ivf-pq: code bytes (PQ sub-quantizers); hnsw: neighbours per node
    nbits: int = 8  # ivf-pq: bits per sub-quantizer code
    efconstruction: int = 40  # hnsw
    sample: int | None = None  # training vectors; default max(65,536, 40 nlist), at most N
    recall_target: float = 0.95  # nprobe / efSearch: the smallest that reaches this recall@10
    seed: int = 0
    gpu: bool | None = None  # None: use GPUs when FAISS has any (the `gpu` extra)
    shards: int | None = None  # > 1: add parts in parallel on Ray, then merge
    address: str | None = None  # Ray cluster address for shards
    progress: bool | str = False  # auto | bar | log | none
    batch_rows: int = 65536

    def __post_init__(self) -> None:
        store.check_name(self.name)
        if self.type not in TYPES:
            raise ConfigError(f"--type {self.type!r}: choose one of {', '.join(TYPES)}")
        if self.metric not in METRICS:
            raise ConfigError(f"--metric {self.metric!r}: choose one of {', '.join(METRICS)}")
        if self.level not in LEVELS:
            raise ConfigError(f"--level {self.level!r}: choose one of {', '.join(LEVELS)}")
        if self.pooling not in schema.POOLINGS:
            raise ConfigError(f"--pooling {self.pooling!r}: choose one of "
                              f"{', '.join(schema.POOLINGS)}")
        for key in ("nlist", "m", "sample", "shards"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ConfigError(f"--{key} must be a positive integer, not {value!r}")
        if not isinstance(self.nbits, int) or not 1 <= self.nbits <= 16:
            raise ConfigError(f"--nbits must be in [1, 16], not {self.nbits!r}")
        if not isinstance(self.efconstruction, int) or self.efconstruction < 1:
            raise ConfigError(f"--efconstruction must be a positive integer, not "
                              f"{self.efconstruction!r}")
        if not 0 < self.recall_target <= 1:
            raise ConfigError(f"recall_target must be in (0, 1], not {self.recall_target!r}")
        if self.gpu is not None and not isinstance(self.gpu, bool):
            raise ConfigError(f"gpu must be True, False or None, not {self.gpu!r}")


@dataclass
class Plan:
    """The index to build: type, parameters, and why; :meth:`describe` is its FAISS
    factory string."""

    type: str
    nlist: int | None = None
    m: int | None = None
    nbits: int | None = None
    pca: int | None = None  # ivf-pq: dimensions kept by the PCA rotation (None: none)
    efconstruction: int | None = None
    sample: int = 0
    reason: str = ""

    @property
    def params(self) -> dict:
        """The parameters that are set (recorded in the index meta)."""
        return {k: v for k, v in asdict(self).items()
                if k not in ("type", "reason") and v not in (None, 0)}

    def describe(self) -> str:
        if self.type == "flat":
            return "IDMap,Flat"
        if self.type == "hnsw":
            return f"IDMap,HNSW{self.m}"
        code = "Flat" if self.type == "ivf-flat" else f"PQ{self.m}x{self.nbits}np"
        return (f"PCAR{self.pca}," if self.pca else "") + f"IVF{self.nlist},{code}"


def default_nlist(n: int) -> int:
    """About 4 sqrt(n) lists, a power of 2, with >= 39 vectors per list to train on."""
    if n < 39 * 2:
        return 1
    target = 2 ** round(math.log2(4 * math.sqrt(n)))
    return int(max(1, min(target, 65536, 2 ** int(math.log2(n // 39)))))


def pq_shape(dim: int, m: int | None) -> tuple[int, int | None]:
    """(sub-quantizers, PCA dimensions or None): 2 dimensions per code byte by default."""
    if m is None:
        m = min(PQ_BYTES, max(1, dim // 2))
        if 2 * m >= dim:
            while dim % m:
                m -= 1
    reduced = 2 * m if 2 * m < dim else None
    if reduced is None and dim % m:
        raise ConfigError(f"--m {m}: the PQ needs the dimension ({dim}) to be a multiple of "
                          f"it; choose a divisor of {dim}, or m < {dim / 2:g} (the vectors "
                          "are then rotated to 2 m dimensions first)")
    return m, reduced


def choose_index(n: int, dim: int, *, memory_bytes: int | None = None,
                 flat_limit: int = FLAT_LIMIT) -> Plan:
    """What ``auto`` builds for ``n`` vectors of ``dim``: Flat below ``flat_limit`` vectors when
    it fits in half the memory, else IVF-PQ with codes sized to fit."""
    memory_bytes = memory_bytes or machine_memory_bytes()
    flat_bytes = n * (4 * dim + 8)
    if n < flat_limit and flat_bytes <= memory_bytes // 2:
        return Plan("flat", reason=f"{n:,} vectors < {flat_limit:,}: exact search (Flat, "
                                   f"{format_size(flat_bytes)}) is fast enough")
    m, pca = pq_shape(dim, None)
    while n * (m + 8) > memory_bytes // 2 and m > 1:
        m, pca = pq_shape(dim, max(1, m // 2))
    if n * (m + 8) > memory_bytes // 2:
        raise ConfigError(f"{n:,} vectors do not fit in this machine's memory even as 1-byte "
                          "codes; build on a larger machine")
    why = f"{n:,} vectors" + (f" >= {flat_limit:,}" if n >= flat_limit else
                               f": Flat ({format_size(flat_bytes)}) exceeds half the memory")
    plan = Plan("ivf-pq", nlist=default_nlist(n), m=m, nbits=8, pca=pca, reason=f"{why}: IVF-PQ")
    _describe_codes(plan, n)
    return plan


def _describe_codes(plan: Plan, n: int) -> None:
    """Replace what ``plan.reason`` says about the code size (after its first ", ")."""
    plan.reason = (plan.reason.split(", ")[0] +
                   f", {plan.m} code bytes + 8 id bytes per vector ({format_size(n * (plan.m + 8))})" +
                   (f", after a PCA rotation to {plan.pca} dimensions" if plan.pca else ""))


def principal_axes(sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending) and axes (columns) of the sample's uncentred second moments.

    Uncentred, so that projecting keeps inner products as well as distances: a centred PCA
    shifts every inner product by a term that depends on the vector, which wrecks ip and
    cosine rankings.
    """
    x = np.asarray(sample, dtype=np.float64)
    eigenvalues, axes = np.linalg.eigh(x.T @ x)
    return np.clip(eigenvalues[::-1], 0, None), axes[:, ::-1]


def explained_variance(sample: np.ndarray) -> np.ndarray:
    """Cumulative fraction of the sample's energy in its first 1, 2, ... principal axes."""
    return cumulative_energy(principal_axes(sample)[0])


def cumulative_energy(eigenvalues: np.ndarray) -> np.ndarray:
    """Cumulative fraction of the energy in the first 1, 2, ... of ``eigenvalues``."""
    total = eigenvalues.sum()
    return np.cumsum(eigenvalues) / total if total > 0 else np.ones(len(eigenvalues))


def rotation(axes: np.ndarray, reduced: int, seed: int):
    """A trained FAISS transform: projection on the first ``reduced`` axes, then a random
    rotation that spreads the energy evenly over the PQ sub-quantizers."""
    import faiss

    dim = axes.shape[0]
    spin, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(reduced, reduced)))
    matrix = (axes[:, :reduced] @ spin).T.astype(np.float32)  # y = matrix @ x
    transform = faiss.LinearTransform(dim, reduced, False)
    faiss.copy_array_to_vector(np.ascontiguousarray(matrix).ravel(), transform.A)
    transform.is_trained = True
    return transform


def widen_codes(plan: Plan, cumulative: np.ndarray, n: int, dim: int,
                memory_bytes: int) -> Plan:
    """auto: double the code bytes while the PCA rotation would keep less than
    ``VARIANCE_KEPT`` of the variance and the codes still fit in half the memory."""
    while plan.pca and cumulative[plan.pca - 1] < VARIANCE_KEPT:
        wider = 2 * plan.m
        if 2 * wider >= dim:  # no PCA: the largest code size that divides dim
            wider = next((m for m in range(dim // 2, plan.m, -1) if dim % m == 0), None)
        if wider is None or n * (wider + 8) > memory_bytes // 2:
            break
        plan.m, plan.pca = pq_shape(dim, wider)
    _describe_codes(plan, n)
    if plan.pca:
        plan.reason += (f"; the PCA keeps {cumulative[plan.pca - 1]:.2%} of the sample's "
                        "variance")
    return plan


def plan_index(config: IndexConfig, n: int, dim: int, memory_bytes: int | None = None) -> Plan:
    """The build plan for ``config`` over ``n`` vectors of ``dim``; fills defaults, checks."""
    if config.type == "auto":
        plan = choose_index(n, dim, memory_bytes=memory_bytes)
        if plan.type == "ivf-pq":
            if config.m is not None:
                plan.m, plan.pca = pq_shape(dim, config.m)
                _describe_codes(plan, n)
            plan.nlist = config.nlist or plan.nlist
            plan.nbits = config.nbits
    elif config.type == "flat":
        plan = Plan("flat", reason="requested: exact search")
    elif config.type == "hnsw":
        plan = Plan("hnsw", m=config.m or 32, efconstruction=config.efconstruction,
                    reason="requested: HNSW graph over the full vectors")
    else:
        plan = Plan(config.type, nlist=config.nlist or default_nlist(n),
                    reason=f"requested: {config.type}")
        if config.type == "ivf-pq":
            plan.m, plan.pca = pq_shape(dim, config.m)
            plan.nbits = config.nbits
    if plan.nlist is not None:
        if plan.nlist > max(n, 1):
            raise ConfigError(f"--nlist {plan.nlist} is more than the {n:,} vectors; use at "
                              f"most {max(1, n // 39)} (39 training vectors per list)")
        wanted = max(65536, 40 * plan.nlist) if plan.type == "ivf-pq" else 40 * plan.nlist
        plan.sample = min(n, config.sample or wanted)
        if plan.sample < plan.nlist:
            raise ConfigError(f"--sample {plan.sample} is smaller than --nlist {plan.nlist}")
        if plan.type == "ivf-pq" and plan.sample < 2 ** plan.nbits:
            raise ConfigError(f"{plan.sample} training vectors are too few for {plan.nbits}-bit "
                              f"PQ codes (need >= {2 ** plan.nbits}); use --type flat or a "
                              "smaller --nbits")
    return plan


def build_index(atlas: str | os.PathLike | AtlasReader, **options) -> dict:
    """Build embedding index ``name`` of ``atlas`` from scratch and record it in the
    manifest: over its tokens, or (``level`` "pooled") its pooled rows of ``pooling`` and
    the layer ``column`` stores.

    The index is built from the version of the atlas open when it starts, without the
    writer lock; it is recorded under the lock (waiting for a running writer to finish),
    and rows committed meanwhile are searched beside it until an update.

    Options are the fields of :class:`IndexConfig`. Returns the index meta: type, metric,
    dim, ntotal, level, pooling, layer, parameters, why they were chosen, calibrated search
    settings with their measured recall@10, what it covers (``coverage``), sha256, timings.
    """
    config = IndexConfig(**options)
    import faiss  # noqa: F401 -- a missing FAISS fails before the atlas is locked

    path = atlas.path if isinstance(atlas, AtlasReader) else atlas
    started = time.perf_counter()
    # built from one version, without the lock: ingests and readers go on meanwhile
    snapshot = AtlasReader(path)
    source, plan, (gpu, device) = _open(snapshot, config)
    t0 = time.perf_counter()
    index, calibration, variance = _trained_index(config, plan, source, gpu)
    train_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    index, shards, nodes = _add(index, source, config, calibration, gpu)
    add_seconds = time.perf_counter() - t0
    search = calibrate(index, plan, calibration.queries, calibration.truth(),
                       config.recall_target)
    meta = _meta(config, plan, snapshot, source, index, search=search, gpu=gpu,
                 device=device, shards=shards, nodes=nodes, train_seconds=train_seconds,
                 add_seconds=add_seconds, variance=variance)
    meta["build_seconds"] = round(time.perf_counter() - started, 3)
    staged = store.stage_index(snapshot.path, config.name, index, meta, units=source.units(),
                               ids=index_ids(index))
    try:
        # recorded under the lock, after any ingest running now: rows it commits meanwhile
        # are searched beside the index until `index update`
        with AtlasWriter(path, wait=math.inf) as writer:
            gone = set(source.units()) - set(writer.manifest.units)
            if gone:
                raise AtlasIndexError(
                    f"{writer.path}: {len(gone)} unit(s) this index was built from were "
                    "dropped while it was built (a repair or re-ingest); nothing was "
                    f"recorded. Run `seqatlas index build --atlas {writer.path} --name "
                    f"{config.name}` again.")
            store.remove_stale(writer.path, writer.manifest)
            meta = staged.publish()
            writer.set_index(config.name, store.replacing_entry(
                meta, (writer.manifest.indexes or {}).get(config.name)))
    finally:
        staged.discard()
    return meta


def _open(snapshot: AtlasReader, config: IndexConfig
          ) -> tuple[EmbeddingSource, Plan, tuple[bool, str]]:
    """The vectors to index, the plan for them, and (whether to use GPUs, why)."""
    source = EmbeddingSource.open(snapshot, config.column, level=config.level,
                                  pooling=config.pooling)
    plan = plan_index(config, source.total, source.dim)
    gpu = use_gpu(config.gpu, plan.type)
    if config.shards and config.shards > 1 and plan.type == "hnsw":
        raise ConfigError("HNSW graphs cannot be merged from shards; use --type ivf-pq "
                          "or ivf-flat with --shards, or build HNSW without --shards")
    return source, plan, gpu


def _samples(config: IndexConfig, plan: Plan, source: EmbeddingSource
             ) -> tuple[np.ndarray, np.ndarray]:
    """(training sample, calibration queries drawn from it), normalised for cosine; flat
    indexes draw neither."""
    n = source.total
    draw = max(plan.sample, 0 if plan.type == "flat" else min(n, CALIBRATION_QUERIES))
    sample = prepare(source.sample(draw, config.seed), config.metric) if draw else \
        np.empty((0, source.dim))
    rng = np.random.default_rng(config.seed + 1)
    wanted = min(len(sample), CALIBRATION_QUERIES)  # flat: none drawn, none wanted
    return sample, sample[rng.choice(len(sample), wanted, replace=False)]


def _pca(config: IndexConfig, plan: Plan, sample: np.ndarray, n: int, dim: int):
    """ivf-pq with a PCA: (the trained rotation, the fraction of variance it keeps); auto
    codes are widened first while it loses too much. (None, None) without a PCA."""
    if not plan.pca:
        return None, None
    eigenvalues, axes = principal_axes(sample)
    cumulative = cumulative_energy(eigenvalues)
    if config.type == "auto" and config.m is None:
        widen_codes(plan, cumulative, n, dim, machine_memory_bytes())
    if not plan.pca:  # widened to codes over the full vectors
        return None, None
    return rotation(axes, plan.pca, config.seed), round(float(cumulative[plan.pca - 1]), 5)


def _trained_index(config: IndexConfig, plan: Plan, source: EmbeddingSource, gpu: bool
                   ) -> tuple[object, Calibration, float | None]:
    """The trained, empty index; the calibration queries (their exact top-k still to
    accumulate); the PCA's variance kept (None without one)."""
    sample, queries = _samples(config, plan, source)
    transform, variance = _pca(config, plan, sample[: plan.sample], source.total, source.dim)
    index = make_index(plan, source.dim, config.metric, transform)
    train(index, plan, sample[: plan.sample], gpu)  # flat, hnsw: nothing to train
    calibration = Calibration(np.ascontiguousarray(queries, dtype=np.float32), config.metric)
    return index, calibration, variance


def _add(index, source: EmbeddingSource, config: IndexConfig, calibration: Calibration,
         gpu: bool) -> tuple[object, int, int]:
    """Add every vector (in Ray shards, or here with a progress bar; both through
    :func:`add_batches`) and accumulate the calibration's exact top-k; (index, shards, Ray
    nodes that added them)."""
    shards, nodes = min(config.shards or 1, len(source.parts)), 1
    if shards > 1:
        index, shards, nodes = add_sharded(index, source, shards, config=config,
                                    calibration=calibration, gpu=gpu)
    else:
        progress = Meter(label="adding", unit="vectors", total=source.total,
                         progress=config.progress)
        with progress:
            add_batches(index, source, config.metric, calibration, gpu=gpu,
                        batch_rows=config.batch_rows,
                        advance=progress.advance)
    if index.ntotal != source.total:
        raise ConfigError(f"the index holds {index.ntotal:,} vectors but the atlas has "
                          f"{source.total:,} {source.noun} rows; the {source.table} parts "
                          "disagree with the committed state (atlas.json and its log)")
    return index, shards, nodes


def _meta(config: IndexConfig, plan: Plan, snapshot: AtlasReader, source: EmbeddingSource,
          index, *, search: dict, gpu: bool, device: str, shards: int, nodes: int,
          train_seconds: float,
          add_seconds: float, variance: float | None) -> dict:
    """The index meta (``meta.json`` less what :func:`store.write_index` adds)."""
    import faiss

    model = snapshot.manifest.model
    pooled = config.level == "pooled"
    meta = {
        "name": config.name, "type": plan.type, "auto": config.type == "auto",
        "reason": plan.reason, "factory": plan.describe(), "metric": config.metric,
        "dim": source.dim, "ntotal": int(index.ntotal),
        "column": f"{config.column} (pooled {config.pooling})" if pooled else config.column,
        "level": config.level, "pooling": config.pooling if pooled else None,
        "layer_column": config.column, "layer": column_layer(snapshot, config.column),
        "params": plan.params, "seed": config.seed,
        "search": search, "gpu": gpu, "device": device, "shards": shards,
        "shard_nodes": nodes,
        "model": {"name": model.name if model else None,
                  "weights_sha256": model.weights_sha256 if model else None},
        "atlas": atlas_record(snapshot, source),
        "train_seconds": round(train_seconds, 3), "add_seconds": round(add_seconds, 3),
        "faiss_version": faiss.__version__, "built": utc_now(),
    }
    if variance is not None:
        meta["pca_variance_kept"] = variance
    return meta


def atlas_record(snapshot: AtlasReader, source: EmbeddingSource) -> dict:
    """The meta's ``atlas``: the atlas's state the index was built (or updated) from."""
    table = source.table
    return {"updated": snapshot.manifest.updated, f"{table}_rows": source.total,
            f"{table}_parts": len(source.parts),
            f"{table}_fingerprint": table_fingerprint(snapshot, table)}
