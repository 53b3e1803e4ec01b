"""Benchmark: the embedded DNA model over human chrX on this 2-core CPU, in one run.

1. ``--part genome``: ingest of ``hs37_chrX_70Mb.fa.gz`` (70 Mb) with ``dnabert6-tiny`` in
   ``unmasked`` mode (embeddings off by default: 128 fp16 values per token would add ~256
   bytes per base): wall time, bases/s, model FLOP utilisation (FLOPs per base counted by
   torch's FlopCounterMode, against this machine's measured fp32 matmul rate), peak RSS of
   the driver and of the scoring workers, bytes on disk per base, and what a 1 Mb region
   query reads. With ``--baseline REV`` the same ingest runs first with the package as of git
   revision REV (exported to a temporary directory, in a subprocess): before and after from
   one run of the script, on the same machine.
2. ``--part fast``: ``exact`` vs ``fast`` on the model's held-out region X:62,000,000+: speed-up
   and Spearman correlation of per-base logp; ``--strides 40,24,...`` adds fast mode at each
   stride (40 was the default before the stride was measured).

Usage: python benchmarks/genome_scale.py [--part genome|fast|all] [--limit-mb 70]
           [--baseline REV] [--region-kb 20] [--strides 40,32,24,20,16]  (needs ../shared/data)
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
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


def genome(fasta: Path, atlas_dir: Path, *, model: str, embeddings: bool, resume: bool) -> dict:
    """One unmasked ingest of ``fasta``: speed, FLOP utilisation, memory and disk."""
    import seqatlas

    if not resume:
        shutil.rmtree(atlas_dir, ignore_errors=True)
    with PeakRss() as rss:
        started = time.perf_counter()
        report = seqatlas.ingest(fasta, atlas=atlas_dir, model=model, likelihood="unmasked",
                                 embeddings=embeddings, progress=True)
        wall = time.perf_counter() - started
    atlas = seqatlas.Atlas(atlas_dir)
    info = atlas.summary()
    bases = info["tables"]["positions"]["rows"]
    disk = sum(t["bytes"] for t in info["tables"].values())
    scored = report.positions_scored
    result = {
        "package": str(Path(seqatlas.__file__).parent),
        "bases": bases, "bases_scored": scored,
        "bases_in_long_n_runs": report.positions_unscored,
        "wall_s": wall, "bases_per_s": bases / wall,
        "bases_this_run": scored + report.positions_unscored,
        "bases_per_s_this_run": (scored + report.positions_unscored) / wall,
        "scored_bases_per_s_scoring": scored / report.seconds if report.seconds else None,
        "engine": report.as_dict().get("engine"),
        "peak_rss_driver_mb": rss.driver / 2**20,
        "peak_rss_worker_mb": max(rss.workers.values(), default=0) / 2**20,
        "bytes_on_disk_per_base": disk / bases,
        "positions_bytes_per_base": info["tables"]["positions"]["bytes"] / bases,
        "parts": info["tables"]["positions"]["parts"],
        "padding_efficiency": report.padding_efficiency,
        "region_query_1mb": region_query(atlas, "X", 20_000_000, 21_000_000),
    }
    return result


def flop_utilisation(result: dict, *, model: str, sample: bytes) -> dict:
    """Model FLOPs per scored base (counted on ``sample``), the achieved FLOP/s over the
    ingest's wall time and this machine's measured fp32 matmul rate (2 threads)."""
    from flops import flops_per_base, matmul_rate

    per_base = flops_per_base(model, likelihood="unmasked", residues=sample)
    rate = matmul_rate()
    achieved = per_base * result["bases_scored"] / result["wall_s"]
    return {"model_flops_per_base": per_base, "achieved_gflops": achieved / 1e9,
            "matmul_gflops": rate / 1e9, "model_flop_utilisation": achieved / rate}


def baseline_genome(rev: str, args, fasta: Path, work: Path) -> dict:
    """:func:`genome` with the package as of git revision ``rev``, in a subprocess."""
    root = Path(__file__).resolve().parents[1]
    tree = Path(tempfile.mkdtemp(prefix="seqatlas-baseline-"))
    archive = subprocess.run(["git", "-C", str(root), "archive", rev, "seqatlas"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    command = [sys.executable, __file__, "--part", "genome-only", "--fasta", str(fasta),
               "--workdir", str(work / "baseline"), "--model", args.model]
    command += ["--embeddings"] if args.embeddings else []
    out = subprocess.run(command, env={**os.environ, "PYTHONPATH": str(tree)}, check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def held_out_region(chrx: Path, start: int, length: int, target: Path) -> Path:
    """``length`` bases of chrX from ``start`` (0-based) as a FASTA record named X_<start>."""
    from gpu_check import read_region

    _, bases = read_region(chrx, start, length)
    target.write_text(f">X_{start}\n{bases}\n")
    return target


def exact_vs_fast(region: Path, work: Path, *, model: str, strides: list[int]) -> dict:
    """Exact, then fast at the tokenizer's default stride and at each of ``strides``, on
    ``region``; exact runs again at the end and the two exact times are averaged."""
    import seqatlas

    def run(name: str, mode: str, **options) -> tuple[float, np.ndarray]:
        atlas_dir = work / f"region_{name}"
        shutil.rmtree(atlas_dir, ignore_errors=True)
        # in this process: report.seconds is then scoring alone (the model loads before the
        # clock starts, and the batch size measured in the first run is reused), as a long
        # run amortises them
        report = seqatlas.ingest(region, atlas=atlas_dir, model=model, likelihood=mode,
                                 embeddings=False, progress=False, workers=0, **options)
        logp = seqatlas.Atlas(atlas_dir).positions(columns=["pos", "logp"]).sort_by("pos")
        print(f"{name}: {report.seconds:.1f} s scoring", flush=True)
        return report.seconds, logp["logp"].to_numpy(zero_copy_only=False).astype(float)

    exact_s, exact = run("exact", "exact")
    runs = {"default": run("fast", "fast")}
    for stride in strides:
        runs[stride] = run(f"fast_{stride}", "fast", fast_stride=stride)
    exact_s = (exact_s + run("exact_again", "exact")[0]) / 2
    manifest = json.loads((work / "region_fast" / "atlas.json").read_text())
    out = {"bases": int((~np.isnan(exact)).sum()), "exact_s": exact_s,
           "default_stride": manifest["scoring"]["fast"]["stride"]}
    for name, (seconds, logp) in runs.items():
        diff = np.abs(logp - exact)
        out[f"fast_{name}"] = {"seconds": seconds, "speedup": exact_s / seconds,
                               "spearman": spearman(exact, logp),
                               "mean_abs_diff": float(np.nanmean(diff)),
                               "p99_abs_diff": float(np.nanpercentile(diff, 99))}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--model", default="dnabert6-tiny")
    parser.add_argument("--part", choices=["genome", "fast", "all", "genome-only"],
                        default="all", help="genome-only: one genome ingest, JSON only "
                        "(what --baseline runs)")
    parser.add_argument("--limit-mb", type=float, default=None, help="only the first N Mb")
    parser.add_argument("--fasta", type=Path, default=None, help="genome part: this FASTA")
    parser.add_argument("--embeddings", action="store_true", help="also store embeddings")
    parser.add_argument("--baseline", default=None,
                        help="git revision to measure the genome part against, in this run")
    parser.add_argument("--region-start", type=int, default=62_000_000,
                        help="the exact vs fast region (default: the model's held-out Mb)")
    parser.add_argument("--region-kb", type=float, default=20.0,
                        help="region for exact vs fast (exact costs one pass per base)")
    parser.add_argument("--strides", default="",
                        help="comma-separated fast strides to measure beside the default")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted ingest in --workdir (rates then cover "
                        "this run's bases only)")
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="seqatlas-genome-"))
    work.mkdir(parents=True, exist_ok=True)
    chrx = args.data / "hs37_chrX_70Mb.fa.gz"
    if args.part == "genome-only":
        result = genome(args.fasta, work / "genome", model=args.model,
                        embeddings=args.embeddings, resume=args.resume)
        print(json.dumps(result))
        return
    summary: dict = {"model": args.model}
    if args.part in ("genome", "all"):
        fasta = args.fasta or chrx
        if args.limit_mb and args.fasta is None:
            fasta = work / "prefix.fa"
            write_prefix(chrx, fasta, int(args.limit_mb * 1e6))
        sample = held_out_region(chrx, 20_000_000, 20_000, work / "flops.fa") \
            .read_text().split("\n")[1].encode()
        if args.baseline:
            before = baseline_genome(args.baseline, args, fasta, work)
            before.update(flop_utilisation(before, model=args.model, sample=sample))
            summary["genome_before"] = before
            print(json.dumps({"before": before}, indent=1), flush=True)
        after = genome(fasta, work / "genome", model=args.model, embeddings=args.embeddings,
                       resume=args.resume)
        after.update(flop_utilisation(after, model=args.model, sample=sample))
        summary["genome"] = after
        print(json.dumps({"after": after}, indent=1), flush=True)
        if args.baseline:
            summary["genome_speedup"] = before["wall_s"] / after["wall_s"]
    if args.part in ("fast", "all"):
        region = held_out_region(chrx, args.region_start, int(args.region_kb * 1000),
                                 work / "region.fa")
        strides = [int(s) for s in args.strides.split(",") if s]
        summary["exact_vs_fast"] = exact_vs_fast(region, work, model=args.model,
                                                 strides=strides)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
