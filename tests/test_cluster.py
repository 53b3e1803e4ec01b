"""Multi-node Ray: a simulated cluster (a head and three worker nodes of one CPU each, see
tests/cluster_scenarios.py) ingests with actors on every node, loses a worker node in the
middle of an ingest without losing or duplicating a row, and builds a sharded index across
its nodes. The cluster runs in a process of its own, once for this module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import seqatlas

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory) -> tuple[Path, dict]:
    pytest.importorskip("ray.cluster_utils")
    workdir = tmp_path_factory.mktemp("cluster")
    done = subprocess.run([sys.executable, "-m", "tests.cluster_scenarios", str(workdir)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "RAY_DEDUP_LOGS": "0"})
    assert done.returncode == 0, done.stderr[-4000:]
    return workdir, json.loads((workdir / "results.json").read_text())


def _manifest(atlas: Path) -> dict:
    return json.loads((atlas / "atlas.json").read_text())


def _parts(atlas: Path) -> dict:
    return {table: {name: (p["rows"], p["sha256"]) for name, p in parts.items()}
            for table, parts in _manifest(atlas)["parts"].items() if parts}


def _files(atlas: Path) -> set[str]:
    """Every file but the indexes (each atlas has its own) and the commit log's entries (as
    many as the run's history had commits), with no temporary left in the log."""
    log = [p.name for p in (atlas / "_log").rglob("*") if p.is_file()]
    assert not any(".tmp-" in name for name in log), log
    return {str(p.relative_to(atlas)) for p in atlas.rglob("*") if p.is_file()
            and p.relative_to(atlas).parts[0] not in ("index", "_log")}


def test_an_ingest_uses_an_actor_on_every_node(cluster_run):
    workdir, results = cluster_run
    (run,) = _manifest(workdir / "spread")["runs"]
    assert run["executor"] == "ray" and run["workers"] == 3
    assert set(run["nodes"]) == set(results["worker_nodes"])  # never the CPU-less head
    assert sum(run["nodes"].values()) == run["units"] == results["reference"]["units"]
    assert min(run["nodes"].values()) >= 5  # each node did a fair share of the 88 units
    assert results["spread"]["failed"] == []
    # the same atlas, byte for byte, as one process scoring alone
    assert _parts(workdir / "spread") == _parts(workdir / "reference")
    assert _files(workdir / "spread") == _files(workdir / "reference")


def test_losing_a_node_mid_run_loses_and_duplicates_nothing(cluster_run):
    workdir, results = cluster_run
    killed = results["killed"]
    assert killed["killed"] == results["worker_nodes"][-1]
    assert 3 <= killed["committed_at_kill"] < killed["units"] / 2  # it died half way or less
    assert killed["alive_nodes"] == 3  # the head and two workers
    assert killed["failed"] == []  # the units it held were scored elsewhere
    assert killed["units"] == results["reference"]["units"]
    (run,) = _manifest(workdir / "killed")["runs"]
    survivors = set(results["worker_nodes"][:2])
    assert survivors <= set(run["nodes"])
    assert sum(run["nodes"][n] for n in survivors) > run["units"] / 2
    assert _parts(workdir / "killed") == _parts(workdir / "reference")
    assert _files(workdir / "killed") == _files(workdir / "reference")  # nothing left over
    positions = seqatlas.Atlas(workdir / "killed").positions(["seq_id", "pos"])
    assert positions.num_rows == len(set(zip(positions["seq_id"].to_pylist(),
                                             positions["pos"].to_pylist())))
    assert positions.num_rows == seqatlas.Atlas(workdir / "reference").count("positions")


def test_a_sharded_index_build_runs_across_nodes(cluster_run):
    _, results = cluster_run
    index, single = results["index"], results["reference"]["index"]
    assert index["shards"] == 3 and index["shard_nodes"] == 3
    assert single["shards"] == 1
    # merged in part order: the very index a single build makes
    assert (index["ntotal"], index["sha256"]) == (single["ntotal"], single["sha256"])
