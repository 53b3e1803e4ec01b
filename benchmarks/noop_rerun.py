"""Benchmark: a re-run of ``seqatlas ingest`` with nothing left to do, through the CLI.

Builds an atlas of the bundled demo proteins with the embedded AntiBERTy (in-process
scoring, ``--workers 0``), then times the same ``seqatlas ingest`` command again as a new
process, as a user re-running a finished job would:

- cold: an empty cache directory, so the weights are hashed and the config is read through
  transformers (with its torch import), which is what every re-run cost before the caches;
- warm: the caches left by the first run (checkpoints.digests), the usual case.

Prints the median of ``--repeats`` runs of each, their ratio, the modules the warm run
loaded of torch/transformers/ray, and whether the warm run meets the 3 s target.

Usage: python benchmarks/noop_rerun.py [--repeats 5] [--model antiberty]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEMO = Path(__file__).resolve().parents[1] / "seqatlas" / "data" / "demo_proteins.fa"
TARGET_S = 3.0
# Run as the console script would, then report which heavy modules the process loaded.
PROBE = """
import json, sys
from seqatlas.cli.main import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "loaded": sorted(m for m in ("torch", "transformers", "ray")
                                                if m in sys.modules)}))
"""


def rerun(args: list[str], cache: Path) -> tuple[float, dict]:
    env = {**os.environ, "SEQATLAS_CACHE_DIR": str(cache)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PROBE, *args], env=env, capture_output=True,
                          text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"seqatlas {' '.join(args)} failed:\n{done.stderr}")
    return elapsed, json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="antiberty")
    parser.add_argument("--fasta", type=Path, default=DEMO)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="seqatlas_noop_"))
    try:
        command = ["ingest", str(args.fasta), "--atlas", str(work / "atlas"),
                   "--model", args.model, "--workers", "0", "--progress", "none"]
        warm_cache = work / "cache"
        first, _ = rerun(command, warm_cache)
        print(f"first ingest (scores {args.fasta.name}): {first:.1f} s")
        cold, warm, loaded = [], [], None
        for _ in range(args.repeats):
            cold_cache = work / "cold"
            shutil.rmtree(cold_cache, ignore_errors=True)
            cold.append(rerun(command, cold_cache)[0])
            elapsed, probe = rerun(command, warm_cache)
            warm.append(elapsed)
            loaded = probe["loaded"]
        cold_s, warm_s = statistics.median(cold), statistics.median(warm)
        print(f"no-op re-run, cold cache (baseline): median {cold_s:.2f} s "
              f"of {args.repeats} ({', '.join(f'{t:.2f}' for t in cold)})")
        print(f"no-op re-run, warm cache:            median {warm_s:.2f} s "
              f"of {args.repeats} ({', '.join(f'{t:.2f}' for t in warm)})")
        print(f"ratio cold/warm: {cold_s / warm_s:.1f}x; warm run loaded: "
              f"{', '.join(loaded) or 'none of torch, transformers, ray'}")
        print(f"target < {TARGET_S:.0f} s: {'met' if warm_s < TARGET_S else 'MISSED'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
