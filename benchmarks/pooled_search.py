"""Benchmark: pooled embeddings and sequence search, on real antibodies and on chrX bins.

``--part proteins``: the 274 antibody variable domains of ``jain2017_antibodies.fa.gz``
(137 antibodies, VH + VL) ingested with AntiBERTy (``likelihood unmasked``, pooled per
sequence: mean and [CLS]). For every VL domain, its nearest other VL domain by
``seqatlas query similar --where "description LIKE '%chain=VL%'"`` (exact, cosine): how
often it has the same light-chain class (kappa/lambda), against two controls measured in
the same run: chance (a random other VL) and the nearest VL by amino-acid composition (the
mean one-hot over residues, cosine), which a model must beat to claim more than composition.
Also queries/s of ``similar`` (all 274 as one call, exact and through a Flat pooled index).

``--part dna``: chrX 0-10 Mb (``--mb``) ingested with ``dnabert6-tiny`` (embeddings only), pooled
in 1 kb bins; an IVF-PQ pooled index built (time, bytes); the next 10 Mb ingested into the
same atlas; search before ``index update`` (index + new rows exhaustively), ``update``
(codebooks reused), and a fresh build of the same type: recall@10 of each against exact
search over all bins, and the overlap of the updated index's hits with the fresh build's.
Also (alone with ``--part cost``) the ingest cost of pooling: 1 Mb ingested with and
without pooling, in the same run.

Usage: python benchmarks/pooled_search.py --part proteins|dna [--workdir DIR] [--mb 10]
(needs ../shared/data; the DNA atlas is kept in --workdir and a re-run resumes it)
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np

from index_knn import write_slice  # chrX[start:start + length] as FASTA (benchmarks/ is on the path)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
AMINO = "ACDEFGHIKLMNPQRSTVWY"


def proteins(workdir: Path) -> None:
    import seqatlas
    from seqatlas.fasta import read_fasta
    from seqatlas.query import similar

    atlas = workdir / "jain_atlas"
    fasta = DATA / "jain2017_antibodies.fa.gz"
    t0 = time.perf_counter()
    seqatlas.ingest(fasta, atlas=atlas, model="antiberty", likelihood="unmasked", workers=0,
                    progress=False)
    print(f"ingest (AntiBERTy, unmasked, pooled per sequence): {time.perf_counter() - t0:.1f} s")
    records = list(read_fasta(fasta, kind="protein"))
    info = {r.id: dict(f.split("=", 1) for f in r.description.split() if "=" in f)
            for r in records}
    vl = [r for r in records if info[r.id]["chain"] == "VL"]
    classes = np.array([info[r.id]["lc_class"] for r in vl])
    n = len(vl)
    counts = {c: int((classes == c).sum()) for c in set(classes)}
    chance = sum(m * (m - 1) for m in counts.values()) / (n * (n - 1))
    where = "description LIKE '%chain=VL%'"
    t0 = time.perf_counter()
    hits = similar(atlas, seq_id=[r.id for r in vl], k=1, where=where)
    seconds = time.perf_counter() - t0
    nearest = dict(zip(hits.column("query").to_pylist(), hits.column("seq_id").to_pylist()))
    cls = {r.id: info[r.id]["lc_class"] for r in vl}
    model_same = np.mean([cls[q] == cls[h] for q, h in nearest.items()])
    bos = similar(atlas, seq_id=[r.id for r in vl], k=1, where=where, pooling="bos")
    bos_same = np.mean([cls[q] == cls[h] for q, h in zip(bos.column("query").to_pylist(),
                                                          bos.column("seq_id").to_pylist())])
    comp = np.stack([[r.sequence.upper().count(a.encode()) / len(r.sequence) for a in AMINO]
                     for r in vl])
    comp /= np.linalg.norm(comp, axis=1, keepdims=True)
    sim = comp @ comp.T
    np.fill_diagonal(sim, -np.inf)
    comp_nearest = classes[np.argmax(sim, axis=1)]
    comp_same = np.mean(comp_nearest == classes)
    model_nearest = np.array([cls[nearest[r.id]] for r in vl])
    bos_nearest = dict(zip(bos.column("query").to_pylist(), bos.column("seq_id").to_pylist()))
    bos_classes = np.array([cls[bos_nearest[r.id]] for r in vl])
    print(f"{n} VL domains ({', '.join(f'{c} {m}' for c, m in sorted(counts.items()))}): "
          "nearest other VL shares the light-chain class")
    print(f"  AntiBERTy mean-pooled : {model_same:.3f}")
    print(f"  AntiBERTy [CLS]       : {bos_same:.3f}")
    print(f"  composition (control) : {comp_same:.3f}")
    print(f"  chance (random VL)    : {chance:.3f}")
    print(f"  ratio mean-pooled / chance {model_same / chance:.2f}, "
          f"/ composition {model_same / comp_same:.2f}")
    for c, m in sorted(counts.items()):  # per class: the rare class is the hard one
        mine = classes == c
        print(f"  {c}: same class as the nearest: mean-pooled {np.mean(model_nearest[mine] == c):.3f}, "
              f"[CLS] {np.mean(bos_classes[mine] == c):.3f}, composition "
              f"{np.mean(comp_nearest[mine] == c):.3f}, chance {(m - 1) / (n - 1):.3f}")
    every = [r.id for r in records]
    t0 = time.perf_counter()
    similar(atlas, seq_id=every, k=10)
    exact_s = time.perf_counter() - t0
    from seqatlas.index.search import exact_search
    from seqatlas.index.vectors import prepare
    from seqatlas.query.sequence_search import candidate_vectors
    from seqatlas.store import AtlasReader

    reader = AtlasReader(atlas)
    ids, vectors = candidate_vectors(reader, reader.manifest.pooling["layers"][0], "mean")
    t0 = time.perf_counter()
    exact_search(prepare(vectors, "cosine"), [(ids, prepare(vectors, "cosine"))], 10, "cosine")
    search_only = len(ids) / (time.perf_counter() - t0)
    seqatlas.build_index(atlas, name="pooled-flat", level="pooled", type="flat")
    t0 = time.perf_counter()
    similar(atlas, seq_id=every, k=10, index="pooled-flat")
    index_s = time.perf_counter() - t0
    print(f"similar, {len(every)} queries in one call (k=10, joins included): exact "
          f"{len(every) / exact_s:.0f} q/s, Flat index {len(every) / index_s:.0f} q/s; "
          f"filtered (VL only, k=1): {n / seconds:.0f} q/s; the vector search alone "
          f"(exact, {vectors.shape[1]}-d): {search_only:,.0f} q/s")


def recall(truth: np.ndarray, found: np.ndarray) -> float:
    return float(np.mean([len(set(t[t >= 0]) & set(f[f >= 0])) / max((t >= 0).sum(), 1)
                          for t, f in zip(truth, found)]))


# embeddings only (no likelihood head): the forward passes pooling rides on
COMMON = dict(model="dnabert6-tiny", likelihood="none", workers=0, progress=False, copy_k=0)


def cost(workdir: Path) -> None:
    """The ingest cost of pooling: 1 Mb of chrX with and without, in the same run."""
    import seqatlas

    common = COMMON
    one = workdir / "one_mb.fa"
    if not one.exists():
        write_slice(one, 30_000_000, 1_000_000)
    warm = workdir / "warm.fa"
    if not warm.exists():
        write_slice(warm, 30_000_000, 20_000)
    shutil.rmtree(workdir / "cost_warm", ignore_errors=True)  # imports, weights hash, caches
    seqatlas.ingest(warm, atlas=workdir / "cost_warm", **common)
    timings: dict[str, list[float]] = {"pooled": [], "no-pool": []}
    for label, extra in (("no-pool", {"pool": False}), ("pooled", {})) * 2:
        target = workdir / f"cost_{label}"
        shutil.rmtree(target, ignore_errors=True)
        t0 = time.perf_counter()
        seqatlas.ingest(one, atlas=target, **common, **extra)
        timings[label].append(time.perf_counter() - t0)
    pooled, plain = min(timings["pooled"]), min(timings["no-pool"])
    print(f"ingest 1 Mb (dnabert6-tiny, embeddings only, best of 2, alternated after a "
          f"warm-up): pooled {pooled:.1f} s, --no-pool {plain:.1f} s: ratio {pooled / plain:.3f}")


def dna(workdir: Path, mb: float) -> None:
    import seqatlas
    from seqatlas.index import update_index
    from seqatlas.index.search import exact_search
    from seqatlas.index.vectors import prepare
    from seqatlas.query.sequence_search import candidate_vectors
    from seqatlas.store import AtlasReader

    cost(workdir)
    length = int(mb * 1e6)
    common = COMMON
    atlas = workdir / "chrx_bins"
    first, second = workdir / "first.fa", workdir / "second.fa"
    if not first.exists():
        write_slice(first, 0, length)
        write_slice(second, length, length)
    reader = AtlasReader(atlas) if (atlas / "atlas.json").exists() else None
    names = {Path(i.path).name for i in reader.manifest.inputs} if reader else set()
    if "first.fa" not in names:
        t0 = time.perf_counter()
        seqatlas.ingest(first, atlas=atlas, **common)
        print(f"ingest first {mb:g} Mb: {time.perf_counter() - t0:.0f} s")
    reader = AtlasReader(atlas)
    if "grown" not in (reader.manifest.indexes or {}):
        meta = seqatlas.build_index(atlas, name="grown", level="pooled", type="ivf-pq",
                                    nlist=64, m=32)
        print(f"pooled IVF-PQ over {meta['ntotal']:,} bins of 1 kb: built in "
              f"{meta['build_seconds']:.2f} s, {meta['bytes']:,} bytes "
              f"({meta['bytes_per_vector']:.1f} B/vector), recall@10 "
              f"{meta['search']['recall_at_10']:.3f}")
        flat = seqatlas.build_index(atlas, name="first-flat", level="pooled", type="flat")
        print(f"pooled Flat: built in {flat['build_seconds']:.2f} s, {flat['bytes']:,} bytes")
    if "second.fa" not in names:
        t0 = time.perf_counter()
        seqatlas.ingest(second, atlas=atlas, **common)
        print(f"ingest second {mb:g} Mb: {time.perf_counter() - t0:.0f} s")
    reader = AtlasReader(atlas)
    layer = reader.manifest.pooling["layers"][0]
    ids, vectors = candidate_vectors(reader, layer, "mean")
    rng = np.random.default_rng(0)
    chosen = rng.choice(len(ids), min(1000, len(ids)), replace=False)
    queries = vectors[chosen]
    _, truth = exact_search(prepare(queries, "cosine"), [(ids, prepare(vectors, "cosine"))],
                            10, "cosine")
    index = seqatlas.load_index(atlas, "grown")
    t0 = time.perf_counter()
    _, before = index.search(queries, 10)
    pending_s = time.perf_counter() - t0
    print(f"{len(ids):,} bins now; before update: {getattr(index, 'pending_rows', '?')} rows "
          f"searched exhaustively beside the index: recall@10 {recall(truth, before):.3f}, "
          f"{len(queries) / pending_s:,.0f} q/s")
    t0 = time.perf_counter()
    updated = update_index(atlas, name="grown")
    update_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    seqatlas.build_index(atlas, name="fresh", level="pooled", type="ivf-pq", nlist=64,
                                 m=32)
    fresh_s = time.perf_counter() - t0
    results = {}
    for name in ("grown", "fresh"):
        index = seqatlas.load_index(atlas, name)
        t0 = time.perf_counter()
        _, found = index.search(queries, 10)
        results[name] = (found, len(queries) / (time.perf_counter() - t0))
    print(f"update: {update_s:.2f} s (codebooks reused; recall@10 calibrated "
          f"{updated['search']['recall_at_10']:.3f}); fresh build: {fresh_s:.2f} s")
    for name, (found, qps) in results.items():
        print(f"  {name:6s}: recall@10 vs exact {recall(truth, found):.3f}, {qps:,.0f} q/s")
    print(f"  update / fresh recall ratio: "
          f"{recall(truth, results['grown'][0]) / recall(truth, results['fresh'][0]):.3f}; "
          f"overlap of their top-10: {recall(results['fresh'][0], results['grown'][0]):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("proteins", "dna", "cost"), required=True)
    parser.add_argument("--workdir", default="/tmp/seqatlas-pooled-bench")
    parser.add_argument("--mb", type=float, default=10.0)
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if args.part == "proteins":
        proteins(workdir)
    elif args.part == "cost":
        cost(workdir)
    else:
        dna(workdir, args.mb)


if __name__ == "__main__":
    main()
