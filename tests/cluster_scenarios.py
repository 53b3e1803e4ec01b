"""Scenarios on a simulated multi-node Ray cluster, run in a process of their own by
tests/test_cluster.py (the test session keeps its single local Ray).

``python -m tests.cluster_scenarios WORKDIR`` starts a ``ray.cluster_utils.Cluster`` (a head
without CPUs and three worker nodes of one CPU each), ingests the same FASTA into atlases on
it, kills a worker node in the middle of one ingest, builds a sharded index across the nodes,
and writes what it saw to ``WORKDIR/results.json`` for the tests to check.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from pathlib import Path

WORKERS = 3
# fast failure detection: a removed node is declared dead within a few seconds
SYSTEM_CONFIG = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                 "health_check_timeout_ms": 500, "health_check_failure_threshold": 3}


def _units(atlas: Path) -> int:
    """Committed scored units (the sequences part is a unit too, without seq_ids)."""
    from seqatlas.errors import SeqAtlasError
    from seqatlas.store import AtlasReader

    try:  # the state as a reader sees it: atlas.json plus the commit log
        units = AtlasReader(atlas).manifest.units
    except SeqAtlasError:
        return 0
    return sum(1 for unit in units.values() if "seq_ids" in unit)


def _kill_when_committed(cluster, node, atlas: Path, after: int, seen: dict) -> threading.Thread:
    """A thread that removes ``node`` from ``cluster`` once ``after`` units of ``atlas`` are
    committed, recording how many were."""
    def watch() -> None:
        deadline = time.monotonic() + 300
        while _units(atlas) < after and time.monotonic() < deadline:
            time.sleep(0.02)
        seen["committed_at_kill"] = _units(atlas)
        cluster.remove_node(node, allow_graceful=False)
        seen["killed"] = node.node_id

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def main(workdir: str) -> None:
    import ray
    import torch
    from ray.cluster_utils import Cluster

    import seqatlas
    from tests.conftest import make_esm, random_protein, write_fasta

    torch.set_num_threads(1)  # as each actor of one CPU: the same float sums
    root = Path(workdir)
    model = make_esm(root / "model", context_tokens=64, hidden=128, layers=4, seed=2)
    fasta = write_fasta(root / "in.fa", {f"p{i}": random_protein(70 + 5 * i, seed=i)
                                         for i in range(30)})
    options = {"model": str(model), "unit_tokens": 2000, "progress": False}
    results: dict = {}

    t0 = time.perf_counter()
    reference = seqatlas.ingest(fasta, atlas=root / "reference", workers=0, **options)
    results["reference"] = {"units": reference.units_scored,
                            "seconds": time.perf_counter() - t0}

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "_system_config": SYSTEM_CONFIG})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(WORKERS)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.ERROR)
    results["worker_nodes"] = [node.node_id for node in nodes]
    results["head_node"] = cluster.head_node.node_id
    try:
        # 1. an ingest with one actor per node
        spread = seqatlas.ingest(fasta, atlas=root / "spread", workers=WORKERS,
                                 cpus_per_worker=1, address=cluster.address, **options)
        results["spread"] = {"units": spread.units_scored, "failed": spread.failed}

        # 2. a sharded index build, one shard per node
        meta = seqatlas.build_index(root / "spread", name="sharded", type="flat",
                                    shards=WORKERS, address=cluster.address)
        results["index"] = {key: meta[key] for key in ("shards", "shard_nodes", "ntotal",
                                                       "sha256")}

        # 3. an ingest that loses a worker node after a few units
        seen: dict = {}
        watcher = _kill_when_committed(cluster, nodes[-1], root / "killed", after=3, seen=seen)
        t0 = time.perf_counter()
        killed = seqatlas.ingest(fasta, atlas=root / "killed", workers=WORKERS,
                                 cpus_per_worker=1, address=cluster.address, **options)
        watcher.join(timeout=60)
        results["killed"] = {**seen, "units": killed.units_scored, "failed": killed.failed,
                             "seconds": time.perf_counter() - t0,
                             "alive_nodes": sum(1 for n in ray.nodes() if n["Alive"])}
    finally:
        ray.shutdown()
        cluster.shutdown()
    # the reference index: one process, no shards
    meta = seqatlas.build_index(root / "reference", name="single", type="flat")
    results["reference"]["index"] = {key: meta[key] for key in ("shards", "ntotal", "sha256")}
    (root / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
