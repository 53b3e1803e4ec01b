"""Benchmark: embedding indexes over >= 2M real token embeddings, in one run.

Ingests a slice of human chrX (default 2.1 Mb from 30 Mb, no N there) with the embedded
``dnabert6-tiny`` model (hidden size 128, overlapping 6-mers: one token per base) with
``likelihood="none"``, then builds Flat, IVF-PQ (what ``auto`` picks at this size) and HNSW
indexes with :func:`seqatlas.build_index` and reports, for each: build time, bytes per
vector, recall@10 against exact search (Flat), and queries/s for one batch of queries
(atlas tokens drawn at random) on all threads and on one thread, with ratios against Flat.

Usage: python benchmarks/index_knn.py [--mb 2.1] [--start-mb 30] [--queries 1000]
       [--workdir DIR] [--atlas DIR]   (needs ../shared/data unless --atlas is given;
       the ingested atlas is kept in --workdir and reused by the next run)
"""

from __future__ import annotations

import argparse
import gzip
import os
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def write_slice(path: Path, start: int, length: int) -> int:
    """chrX[start : start + length] as FASTA; returns its number of N."""
    wanted, seen, chunks = start + length, 0, []
    with gzip.open(DATA / "hs37_chrX_70Mb.fa.gz", "rt") as fh:
        fh.readline()
        for line in fh:
            line = line.strip()
            if seen + len(line) > start:
                chunks.append(line[max(0, start - seen):])
            seen += len(line)
            if seen >= wanted:
                break
    sequence = "".join(chunks)[:length]
    with open(path, "w") as out:
        out.write(f">X:{start}-{start + length}\n")
        for i in range(0, len(sequence), 60):
            out.write(sequence[i : i + 60] + "\n")
    return sequence.upper().count("N")


def ensure_atlas(args) -> Path:
    import seqatlas

    if args.atlas:
        return Path(args.atlas)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    atlas = workdir / "chrx_atlas"
    fasta = workdir / "chrx_slice.fa"
    start, length = int(args.start_mb * 1e6), int(args.mb * 1e6)
    if not fasta.exists():
        n = write_slice(fasta, start, length)
        print(f"chrX:{start:,}-{start + length:,} written ({n} N)")
    t0 = time.perf_counter()
    report = seqatlas.ingest(fasta, atlas=atlas, model="dnabert6-tiny", likelihood="none",
                             embeddings=True, copy_k=0, workers=0, progress=False)
    seconds = time.perf_counter() - t0
    if report.units_scored:
        print(f"ingest: {report.positions_scored:,} bases in {seconds:.0f} s "
              f"({report.positions_scored / seconds:,.0f} tokens/s, dnabert6-tiny, "
              "likelihood none, workers 0)")
    else:
        print(f"ingest: reusing {atlas}")
    return atlas


def timed_search(index, queries: np.ndarray, k: int, threads: int, repeats: int):
    import faiss

    faiss.omp_set_num_threads(threads)
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = index.search(queries, k)
        best = min(best, time.perf_counter() - t0)
    return len(queries) / best, result


def recall(truth: np.ndarray, found: np.ndarray) -> float:
    return float(np.mean([len(set(t) & set(f)) / len(t) for t, f in zip(truth, found)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=2.1)
    parser.add_argument("--start-mb", type=float, default=30.0)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--workdir", default="/tmp/seqatlas-index-bench")
    parser.add_argument("--atlas", default=None, help="Use this atlas instead of ingesting.")
    parser.add_argument("--types", default="flat,auto,hnsw")
    args = parser.parse_args()

    import faiss

    import seqatlas
    from seqatlas.index.vectors import EmbeddingSource

    threads = os.cpu_count() or 1
    atlas = ensure_atlas(args)
    source = EmbeddingSource.open(seqatlas.Atlas(atlas))
    print(f"atlas: {source.total:,} token embeddings of {source.dim} (fp16) in "
          f"{len(source.parts)} parts; {threads} CPU threads; faiss {faiss.__version__}")
    rng = np.random.default_rng(0)
    queries = source.sample(args.queries, seed=7)  # atlas tokens, as `query knn` looks up
    rows = []
    truth = None
    for kind in args.types.split(","):
        name = f"bench-{kind}"
        meta = seqatlas.build_index(atlas, name=name, type=kind, metric="cosine")
        index = seqatlas.load_index(atlas, name)
        repeats = 1 if meta["type"] == "flat" else 3
        qps_all, (distances, ids) = timed_search(index, queries, args.k, threads, repeats)
        qps_one, _ = timed_search(index, queries, args.k, 1, repeats)
        faiss.omp_set_num_threads(threads)
        if meta["type"] == "flat":
            truth = ids
            check = rng.choice(len(queries), 20, replace=False)
            agreement = recall(_numpy_top(source, queries[check], args.k), ids[check])
            print(f"  Flat vs numpy brute force on {len(check)} queries: {agreement:.4f} "
                  "of the top-10 ids agree (1 - ties at the 10th place)")
        rows.append({"type": meta["type"], "factory": meta["factory"],
                     "build_s": meta["build_seconds"], "bpv": meta["bytes_per_vector"],
                     "recall": recall(truth, ids) if truth is not None else float("nan"),
                     "qps_all": qps_all, "qps_one": qps_one, "search": meta["search"],
                     "reason": meta["reason"]})
        print(f"  built {meta['type']} ({meta['factory']}) in {meta['build_seconds']:.1f} s "
              f"(train {meta['train_seconds']:.1f} s, add {meta['add_seconds']:.1f} s): "
              f"{meta['reason']}; search {meta['search']}", flush=True)
        if meta["type"].startswith("ivf"):
            _nprobe_sweep(index, queries, truth, args.k, threads, meta["search"]["nprobe"])
    flat = next(r for r in rows if r["type"] == "flat")
    print(f"\n{len(queries)} queries, k={args.k}, metric cosine; recall@10 = |found ∩ exact| / 10"
          " against Flat; queries/s best of 3 (Flat: 1 run)")
    print(f"{'index':34s} {'build s':>8s} {'B/vector':>9s} {'recall@10':>9s} "
          f"{'q/s all':>9s} {'q/s 1 thr':>9s} {'x Flat':>7s} {'x Flat 1t':>9s} {'x bytes':>8s}")
    for r in rows:
        print(f"{r['type'] + ' ' + r['factory']:34s} {r['build_s']:8.1f} {r['bpv']:9.1f} "
              f"{r['recall']:9.4f} {r['qps_all']:9.0f} {r['qps_one']:9.0f} "
              f"{r['qps_all'] / flat['qps_all']:7.1f} {r['qps_one'] / flat['qps_one']:9.1f} "
              f"{r['bpv'] / flat['bpv']:8.3f}")


def _nprobe_sweep(index, queries, truth, k, threads, chosen) -> None:
    import faiss

    faiss.omp_set_num_threads(threads)
    for nprobe in sorted({max(1, chosen // 2), chosen, chosen * 2, chosen * 4}):
        t0 = time.perf_counter()
        _, ids = index.search(queries, k, nprobe=nprobe)
        qps = len(queries) / (time.perf_counter() - t0)
        mark = " (calibrated)" if nprobe == chosen else ""
        print(f"    nprobe {nprobe:4d}: recall@10 {recall(truth, ids):.4f}, "
              f"{qps:,.0f} q/s{mark}")


def _numpy_top(source, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact cosine top-k by numpy, streamed over the parts."""
    from seqatlas.index.vectors import normalise

    q = normalise(queries)
    best_s = np.full((len(q), k), -np.inf, np.float32)
    best_i = np.full((len(q), k), -1, np.int64)
    for ids, x in source.batches():
        scores = q @ normalise(x).T
        s = np.concatenate([best_s, scores], 1)
        i = np.concatenate([best_i, np.broadcast_to(ids, scores.shape)], 1)
        top = np.argsort(-s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
    return best_i


if __name__ == "__main__":
    main()
