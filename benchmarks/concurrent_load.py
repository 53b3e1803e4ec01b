"""Benchmark: readers under load while the atlas is written (issue 28).

READERS processes loop over ``query sql``, ``anomalies``, ``knn``, ``info`` and ``report``
(the library calls behind those commands, a fresh ``Atlas`` per query) against one atlas
while ``seqatlas ingest`` extends it with each of EXTENSIONS FASTA files in turn (committing
unit by unit), a ``seqatlas index build`` running beside each ingest (it records its index
once the ingest has ended); then the index is rebuilt over everything, and again and again
until SECONDS have passed. The atlas is small (a tiny random ESM-2-style model, float16
embeddings, a flat index), so the figures measure the readers, the commit protocol and the
index swap rather than a model.

Every answer is checked against the answer of the version its reader opened (see
``tests/load_harness.py``). Prints per op: answers, answers per second, latency
percentiles, errors and inconsistent answers, then what the writers did and the first
problems of each kind. Exits 1 on any error, inconsistent answer or failed writer.

Every process runs with one BLAS/OpenMP thread (more processes than cores already).

Usage: python benchmarks/concurrent_load.py [--readers 8] [--seconds 60] [--extensions 2]
       [--records 8] [--mix sql=3,anomalies=2,knn=3,info=3,report=1] [--hold 1.0]
       [--keep DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests.load_harness, and seqatlas when not installed


def parse_mix(text: str) -> dict[str, int]:
    from tests.load_harness import OPS

    mix = {}
    for item in text.split(","):
        op, _, weight = item.partition("=")
        if op not in OPS:
            raise SystemExit(f"--mix: {op!r} is not one of {', '.join(OPS)}")
        mix[op] = int(weight or 1)
    return mix


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="the load lasts this long at least (and until the ingests end)")
    parser.add_argument("--base", type=int, default=12, help="sequences in the atlas at first")
    parser.add_argument("--extensions", type=int, default=2,
                        help="FASTA files ingested into the atlas during the load")
    parser.add_argument("--records", type=int, default=8, help="sequences per extension")
    parser.add_argument("--unit-tokens", type=int, default=4000,
                        help="ingest work unit (one commit each): ~35 tokens per residue here")
    parser.add_argument("--mix", default="sql=3,anomalies=2,knn=3,info=3,report=1",
                        help="ops and their weights in each reader's loop")
    parser.add_argument("--gap", type=float, default=1.0, help="seconds between writer runs")
    parser.add_argument("--hold", type=float, default=1.0,
                        help="seconds a writer waits after each commit (a tiny model scores "
                        "a unit in milliseconds)")
    parser.add_argument("--no-rebuild", action="store_true",
                        help="no index rebuilds after the ingests")
    parser.add_argument("--keep", type=Path, help="work in this new directory and keep it "
                        "(default: a temporary directory, removed)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    from tests.conftest import random_protein
    from tests.load_harness import (LoadConfig, build_fixture, index_command, ingest_command,
                                    run_load, summary)

    if args.keep and args.keep.exists() and any(args.keep.iterdir()):
        raise SystemExit(f"--keep {args.keep}: choose a new or empty directory")
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="seqatlas-load-"))
    # this run's caches (weights hashes, robust statistics), not the user's
    os.environ.setdefault("SEQATLAS_CACHE_DIR", str(workdir / "cache"))
    try:
        clock = time.perf_counter()
        fixture = build_fixture(
            workdir, unit_tokens=args.unit_tokens,
            base=[random_protein(80 + (7 * i) % 60, i) for i in range(args.base)],
            extensions=[[random_protein(80 + (11 * i) % 60, 1000 * j + i)
                         for i in range(args.records)] for j in range(1, args.extensions + 1)])
        stages = [[ingest_command(fixture, fasta), index_command(fixture)]
                  for fasta in fixture.extensions] + [[index_command(fixture)]]
        config = LoadConfig(readers=args.readers, seconds=args.seconds, mix=parse_mix(args.mix),
                            stages=stages, gap=args.gap, hold=args.hold,
                            rebuild=None if args.no_rebuild else index_command(fixture))
        print(f"atlas of {fixture.sequences} sequences built in "
              f"{time.perf_counter() - clock:.1f} s; {args.readers} readers, mix {args.mix}; "
              f"writers: {len(stages)} stages, then index rebuilds until "
              f"{args.seconds:.0f} s", flush=True)
        result = run_load(fixture, config, workdir / "control")
        print(summary(result))
        expected = fixture.sequences + fixture.added
        grown = result.final_sequences == expected
        if not grown:
            print(f"\nthe atlas holds {result.final_sequences} sequences, not {expected}")
        if args.json:
            args.json.write_text(json.dumps({
                "readers": args.readers, "seconds": result.seconds, "mix": config.mix,
                "ops": result.op_stats(), "commits": len(result.commits) - 1,
                "versions_seen": len(result.versions_seen),
                "writers": [{"stage": s.stage, "command": s.command[:2],
                             "returncode": s.returncode,
                             "seconds": s.seconds, "commits": len(s.commits)}
                            for s in result.writers],
                "problems": [vars(p) for p in result.problems]}, indent=1, default=str))
        return 0 if result.ok and grown else 1
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
