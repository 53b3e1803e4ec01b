"""Benchmark: the embedded DNA model over human chrX on this 2-core CPU, in one run.

1. Ingest of ``hs37_chrX_70Mb.fa.gz`` (70 Mb) with ``dnabert6-tiny`` in ``unmasked`` mode
   (embeddings off by default: 128 fp16 values per token would add ~256 bytes per base):
   bases/s, wall time, peak RSS of the driver and of the scoring workers, bytes on disk per
   base, and how much a 1 Mb region query reads.
2. ``exact`` vs ``fast`` on a region of chrX for the overlapping 6-mer model: speed-up and
   Spearman correlation of per-base logp.

Usage: python benchmarks/genome_scale.py [--limit-mb 70] [--region-kb 20] [--skip-genome]
(needs ../shared/data).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


class PeakRss:
    """Samples VmHWM/VmRSS of this process and of Ray worker processes once a second."""

    def __init__(self):
        self.driver = 0
        self.workers: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _status(pid: int, key: str) -> int:
        try:
            for line in open(f"/proc/{pid}/status"):
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def _run(self):
        while not self._stop.is_set():
            self.driver = max(self.driver, self._status(os.getpid(), "VmHWM"))
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    try:
                        cmd = open(f"/proc/{entry}/cmdline", "rb").read()
                    except OSError:
                        continue
                    if b"ScoringWorker" in cmd or b"ray::" in cmd[:6]:
                        rss = self._status(int(entry), "VmHWM")
                        self.workers[int(entry)] = max(self.workers.get(int(entry), 0), rss)
            self._stop.wait(1.0)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def write_prefix(source: Path, target: Path, limit_bases: int) -> int:
    """The first ``limit_bases`` of the first record, as plain FASTA."""
    written = 0
    with gzip.open(source, "rt") as fh, open(target, "w") as out:
        out.write(fh.readline())
        for line in fh:
            if line.startswith(">") or written >= limit_bases:
                break
            line = line.strip()[: limit_bases - written]
            out.write(line + "\n")
            written += len(line)
    return written


def region_query(atlas, seq_id: str, start: int, end: int) -> dict:
    """Time and bytes read for one region, through pyarrow's statistics-based pruning."""
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    paths = [str(p) for p in atlas.part_paths("positions")]
    data = ds.dataset(paths, format="parquet")
    started = time.perf_counter()
    table = data.to_table(columns=["pos", "logp_unmasked"],
                          filter=(ds.field("seq_id") == seq_id) & (ds.field("pos") >= start)
                          & (ds.field("pos") < end))
    seconds = time.perf_counter() - started
    groups = total_groups = 0
    for path in paths:
        meta = pq.ParquetFile(path).metadata
        column = meta.schema.to_arrow_schema().get_field_index("pos")
        for g in range(meta.num_row_groups):
            total_groups += 1
            stats = meta.row_group(g).column(column).statistics
            if stats.max >= start and stats.min < end:
                groups += 1
    return {"rows": table.num_rows, "seconds": seconds, "row_groups_read": groups,
            "row_groups_total": total_groups}


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    ok = ~(np.isnan(x) | np.isnan(y))
    rx, ry = np.argsort(np.argsort(x[ok])), np.argsort(np.argsort(y[ok]))
    return float(np.corrcoef(rx, ry)[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--model", default="dnabert6-tiny")
    parser.add_argument("--limit-mb", type=float, default=None, help="only the first N Mb")
    parser.add_argument("--embeddings", action="store_true", help="also store embeddings")
    parser.add_argument("--region-start", type=int, default=30_000_000)
    parser.add_argument("--region-kb", type=float, default=20.0,
                        help="region for exact vs fast (exact costs one pass per base)")
    parser.add_argument("--skip-genome", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted ingest in --workdir (rates then cover "
                        "this run's bases only)")
    args = parser.parse_args()

    import seqatlas

    work = args.workdir or Path(tempfile.mkdtemp(prefix="seqatlas-genome-"))
    work.mkdir(parents=True, exist_ok=True)
    chrx = args.data / "hs37_chrX_70Mb.fa.gz"
    summary: dict = {"model": args.model}
    if not args.skip_genome:
        fasta = chrx
        if args.limit_mb:
            fasta = work / "prefix.fa"
            write_prefix(chrx, fasta, int(args.limit_mb * 1e6))
        atlas_dir = work / "genome"
        if not args.resume:
            shutil.rmtree(atlas_dir, ignore_errors=True)
        with PeakRss() as rss:
            started = time.perf_counter()
            report = seqatlas.ingest(fasta, atlas=atlas_dir, model=args.model,
                                     likelihood="unmasked", embeddings=args.embeddings,
                                     progress=True)
            wall = time.perf_counter() - started
        atlas = seqatlas.Atlas(atlas_dir)
        info = atlas.summary()
        bases = info["tables"]["positions"]["rows"]
        disk = sum(t["bytes"] for t in info["tables"].values())
        summary["genome"] = {
            "bases": bases,
            "bases_scored": report.positions_scored,
            "bases_in_long_n_runs": report.positions_unscored,
            "wall_s": wall,
            "bases_per_s": bases / wall,
            "bases_this_run": report.positions_scored + report.positions_unscored,
            "bases_per_s_this_run": (report.positions_scored + report.positions_unscored) / wall,
            "scored_bases_per_s_scoring": report.positions_scored / report.seconds,
            "peak_rss_driver_mb": rss.driver / 2**20,
            "peak_rss_worker_mb": max(rss.workers.values(), default=0) / 2**20,
            "bytes_on_disk_per_base": disk / bases,
            "positions_bytes_per_base": info["tables"]["positions"]["bytes"] / bases,
            "parts": info["tables"]["positions"]["parts"],
            "padding_efficiency": report.padding_efficiency,
            "region_query_1mb": region_query(atlas, "X", 20_000_000, 21_000_000),
        }
        print(json.dumps(summary["genome"], indent=1))

    # exact vs fast on a region without N
    region = work / "region.fa"
    length = int(args.region_kb * 1000)
    with gzip.open(chrx, "rt") as fh:
        fh.readline()
        width = len(fh.readline().strip())
    with gzip.open(chrx, "rt") as fh:
        fh.readline()
        skip_lines = args.region_start // width
        for _ in range(skip_lines):
            fh.readline()
        chunks, total = [], 0
        while total < length:
            line = fh.readline().strip()
            chunks.append(line)
            total += len(line)
    region.write_text(f">X_{skip_lines * width}\n{''.join(chunks)[:length]}\n")
    results = {}
    for mode in ("exact", "fast"):
        atlas_dir = work / f"region_{mode}"
        shutil.rmtree(atlas_dir, ignore_errors=True)
        report = seqatlas.ingest(region, atlas=atlas_dir, model=args.model, likelihood=mode,
                                 embeddings=False, progress=True)
        logp = seqatlas.Atlas(atlas_dir).positions(columns=["pos", "logp"]).sort_by("pos")
        results[mode] = (report.seconds, logp["logp"].to_numpy(zero_copy_only=False))
        print(f"{mode}: {report.seconds:.1f} s scoring for {length:,} bases")
    summary["exact_vs_fast"] = {
        "bases": length,
        "exact_s": results["exact"][0],
        "fast_s": results["fast"][0],
        "speedup": results["exact"][0] / results["fast"][0],
        "spearman": spearman(results["exact"][1].astype(float), results["fast"][1].astype(float)),
        "exact_mean_logp": float(np.nanmean(results["exact"][1])),
        "fast_mean_logp": float(np.nanmean(results["fast"][1])),
    }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
