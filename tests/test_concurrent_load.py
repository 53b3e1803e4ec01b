"""Readers in their own processes query an atlas while `seqatlas ingest` extends it and
`seqatlas index build` rebuilds its index: no reader fails, and every answer equals the
answer of the version it read (tests/load_harness.py; the long run with 8 readers is
benchmarks/concurrent_load.py)."""

from __future__ import annotations

import pytest

from tests.conftest import random_protein
from tests.load_harness import (OPS, LoadConfig, build_fixture, index_command, ingest_command,
                                run_load, summary)


# 60-90 s on 2 cores: two CLI writers and three readers start, then every answer is checked
@pytest.mark.slow
def test_readers_answer_from_committed_versions_while_the_atlas_grows(tmp_path, tiny_esm):
    fixture = build_fixture(tmp_path / "load", model=tiny_esm,
                            base=[random_protein(50 + 6 * i, 700 + i) for i in range(4)],
                            extensions=[[random_protein(45 + 5 * i, 800 + i)
                                         for i in range(4)]])
    # one reader draws reports (seconds each), two answer the quick queries
    quick = {"sql": 1, "anomalies": 1, "knn": 1, "info": 1}
    config = LoadConfig(readers=3, seconds=10, gap=0.5, hold=0.5, stop_grace=5.0,
                        mix=[{"report": 1, "info": 1}, quick, quick],
                        # a build beside the ingest, then one over the rows it added
                        stages=[[ingest_command(fixture, fixture.extensions[0]),
                                 index_command(fixture)], [index_command(fixture)]])
    result = run_load(fixture, config, tmp_path / "control")
    text = summary(result)
    print(text)
    assert all(step.returncode == 0 for step in result.writers), text
    assert result.final_sequences == fixture.sequences + fixture.added, text
    assert len(result.commits) - 1 >= 6, text  # the ingest committed unit by unit
    assert not result.errors, text
    assert not result.inconsistent, text
    assert len(result.versions_seen) >= 2, text
    checked = {r["op"] for r in result.records if r["verdict"] == "ok"}
    assert checked == set(OPS), text
