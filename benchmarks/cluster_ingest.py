"""Benchmark: who writes the parts, on a simulated 3-node Ray cluster (this 2-core machine).

A ``ray.cluster_utils.Cluster`` with a head (the driver's node, no CPUs) and two worker nodes
of one CPU each ingests 1 Mb of chrX with ``dnabert6-tiny`` (unmasked, fp16 embeddings of
128 values per base) into a fresh atlas, once per setup, in one run:

1. ``--write-parts driver`` (every result travels to the driver, which writes every part)
   vs ``--write-parts workers`` (each worker writes its units' parts and sends the driver
   names, sizes and digests): wall time, driver CPU seconds, and the bytes that crossed the
   driver per scored position (the manifest's run record), with the ratio driver/workers;
2. the worker-written ingest into ``s3://`` on a local S3 endpoint (moto's server) vs the
   same into a local directory (skipped, saying why, if moto is not installed).

Both atlases of step 1 are checked to hold byte-identical parts.

Usage: python benchmarks/cluster_ingest.py [--mb 1] [--start-mb 40] (needs ../shared/data).
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
sys.path.insert(0, str(HERE.parent))  # tests.s3_endpoint, and seqatlas when not installed


def chrx_slice(target: Path, start: int, length: int) -> int:
    """Write ``length`` bases of chrX from ``start`` (0-based) as one record; returns the
    bases written."""
    out, seen = [], 0
    with gzip.open(DATA / "hs37_chrX_70Mb.fa.gz", "rt") as fh:
        for line in fh:
            if line.startswith(">"):
                continue
            line = line.strip()
            if seen + len(line) > start:
                out.append(line[max(0, start - seen):])
                if sum(map(len, out)) >= length:
                    break
            seen += len(line)
    sequence = "".join(out)[:length]
    target.write_text(f">chrX_{start}_{start + len(sequence)}\n{sequence}\n")
    return len(sequence)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed_ingest(fasta: Path, atlas: str, *, address: str, **options) -> dict:
    import seqatlas
    from seqatlas.store import AtlasReader

    wall, cpu = time.perf_counter(), cpu_seconds()
    report = seqatlas.ingest(fasta, atlas=atlas, model="dnabert6-tiny", likelihood="unmasked",
                             workers=2, cpus_per_worker=1, address=address, progress=False,
                             **options)
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    manifest = AtlasReader(atlas).manifest
    run = manifest.runs[-1]
    parts = [p for table in manifest.parts.values() for p in table.values()]
    stored = {table: sum(p.bytes for p in table_parts.values())
              for table, table_parts in manifest.parts.items() if table_parts}
    return {"wall_s": wall, "driver_cpu_s": cpu, "scoring_s": report.seconds,
            "positions": report.positions_scored, "units": report.units_scored,
            "nodes": len(run["nodes"]), "bytes_per_position": run["driver_bytes"]["per_position"],
            "bytes": run["driver_bytes"], "parts": len(parts),
            "manifest_bytes": len(manifest.dumps()),
            "stored_bytes_per_position": {table: round(size / report.positions_scored, 2)
                                          for table, size in stored.items()}}


def parts_of(atlas: str) -> dict:
    from seqatlas.store import AtlasReader

    manifest = AtlasReader(atlas).manifest
    return {table: {name: p.sha256 for name, p in parts.items()}
            for table, parts in manifest.parts.items() if parts}


def show(name: str, row: dict) -> None:
    print(f"{name:<28} {row['wall_s']:8.1f} s wall  {row['driver_cpu_s']:7.2f} s driver CPU  "
          f"{row['bytes_per_position']:10.2f} B/position through the driver  "
          f"({row['units']} units on {row['nodes']} nodes; {row['parts']} parts, manifest "
          f"{row['manifest_bytes']:,} B; stored B/position {row['stored_bytes_per_position']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=1.0)
    parser.add_argument("--start-mb", type=float, default=40.0)
    args = parser.parse_args()

    import ray
    from ray.cluster_utils import Cluster

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fasta = work / "slice.fa"
        bases = chrx_slice(fasta, int(args.start_mb * 1e6), int(args.mb * 1e6))
        print(f"{bases:,} bases of chrX from {args.start_mb:g} Mb; dnabert6-tiny unmasked, "
              "fp16 embeddings; a head (0 CPUs) + 2 worker nodes of 1 CPU")
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0,
                                                                "include_dashboard": False})
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.ERROR)
        results = {}
        try:
            # a first short ingest warms the file caches and the weights-hash cache
            timed_ingest(fasta, str(work / "warm"), address=cluster.address, unit_tokens=65536)
            for mode in ("driver", "workers"):
                results[mode] = timed_ingest(fasta, str(work / mode), address=cluster.address,
                                             write_parts=mode)
                show(f"local, {mode}-written", results[mode])
            assert parts_of(str(work / "driver")) == parts_of(str(work / "workers")), \
                "the two atlases differ"
            driver, workers = results["driver"], results["workers"]
            print(f"bytes through the driver per position: {driver['bytes_per_position']:.1f} "
                  f"vs {workers['bytes_per_position']:.2f}: "
                  f"{driver['bytes_per_position'] / workers['bytes_per_position']:.0f}x fewer; "
                  f"driver CPU {driver['driver_cpu_s']:.2f} s vs {workers['driver_cpu_s']:.2f} "
                  f"s ({driver['driver_cpu_s'] / workers['driver_cpu_s']:.1f}x); wall "
                  f"{driver['wall_s']:.1f} s vs {workers['wall_s']:.1f} s; the parts are "
                  "byte-identical")
            s3 = s3_run(fasta, cluster.address)
            if s3 is not None:
                assert s3.pop("committed") == parts_of(str(work / "workers")), \
                    "the s3:// atlas differs from the local one"
                results["s3"] = s3
                show("s3://, workers-written", s3)
                print(f"s3:// on the local endpoint vs a local directory: wall "
                      f"{s3['wall_s']:.1f} s vs {workers['wall_s']:.1f} s "
                      f"({s3['wall_s'] / workers['wall_s']:.2f}x)")
        finally:
            ray.shutdown()
            cluster.shutdown()
        print(json.dumps(results, indent=1, default=str))


def s3_run(fasta: Path, address: str) -> dict | None:
    """The worker-written ingest into a bucket of an S3 endpoint on 127.0.0.1 (moto's server,
    the test extra); None when moto is missing."""
    try:
        from tests.s3_endpoint import local_s3_endpoint
    except ImportError as exc:
        print(f"s3:// skipped: {exc}")
        return None
    with local_s3_endpoint() as endpoint:
        atlas = endpoint.bucket("bench") + "/atlas"
        row = timed_ingest(fasta, atlas, address=address, write_parts="workers")
        row["committed"] = parts_of(atlas)
        return row


if __name__ == "__main__":
    main()
