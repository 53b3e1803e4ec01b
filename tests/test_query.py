"""The DuckDB layer: sandboxed SQL, anomalies, overlap joins, enrichment, browser exports."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import seqatlas
from seqatlas.cli.main import main
from seqatlas.errors import AtlasError, QueryError
from seqatlas.query import AnomalyParams, Engine, SqlConfig
from seqatlas.query.views import repeat_overlaps_sql
from seqatlas.store import AtlasWriter
from tests.query_data import make_atlas

RNG = np.random.default_rng(7)
SEQS = {"chrA": "".join(RNG.choice(list("ACGT"), 400)),
        "chrB": "".join(RNG.choice(list("ACGT"), 300))}


def _scores():
    rng = np.random.default_rng(3)
    scores = {k: rng.normal(-1.3, 0.2, len(v)) for k, v in SEQS.items()}
    scores["chrA"][100:112] = 0.0  # anomalously likely: a run of 12
    scores["chrA"][112:114] = -1.3  # a 2-position gap ...
    scores["chrA"][114:118] = 0.0  # ... then 4 more: merged into one region
    scores["chrB"][50:55] = -6.0  # anomalously unlikely
    scores["chrB"][200] = 0.0  # a single position: shorter than min_length
    scores["chrB"][10:20] = np.nan  # unscored (N run)
    return scores


REPEATS = [("chrA", 95, 120, "(ACG)n", "Simple_repeat", None),
           ("chrA", 300, 320, "AluY", "SINE", "Alu"),
           ("chrB", 40, 60, "L1HS", "LINE", "L1"),
           ("chrB", 45, 50, "L1PA2", "LINE", "L1")]


@pytest.fixture(scope="module")
def atlas(tmp_path_factory) -> Path:
    return make_atlas(tmp_path_factory.mktemp("q") / "atlas", SEQS, _scores(), repeats=REPEATS)


def _snapshot(root: Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
            if p.is_file() or p.is_symlink()}


def test_sql_reads_the_views(atlas):
    scores = _scores()
    expected = np.nansum(np.concatenate([scores["chrA"], scores["chrB"]]).astype(np.float32))
    result = seqatlas.Atlas(atlas).sql(
        "SELECT count(*) AS n, count(logp) AS scored, sum(logp) AS total FROM positions")
    row = result.to_pylist()[0]
    assert row["n"] == 700 and row["scored"] == 690
    assert row["total"] == pytest.approx(float(expected), rel=1e-5)
    classes = seqatlas.Atlas(atlas).sql(
        "SELECT class, count(*) AS n FROM repeats GROUP BY class ORDER BY class").to_pylist()
    assert classes == [{"class": "LINE", "n": 2}, {"class": "SINE", "n": 1},
                       {"class": "Simple_repeat", "n": 1}]


HOSTILE = [
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_text('/etc/hostname')",
    "SELECT * FROM read_csv('~/.bashrc')",
    "SELECT * FROM read_parquet('{atlas}/../outside.parquet')",
    "SELECT * FROM read_csv('{atlas}/positions/escape.csv')",  # a symlink out of the atlas
    "SELECT * FROM read_csv('{atlas}/atlas.json')",  # in the atlas, but not a part
    "SELECT * FROM glob('/*')",
    "COPY (SELECT 1) TO '{tmp}/copied.csv'",
    "COPY positions TO '{tmp}/copied.parquet'",
    "ATTACH '{tmp}/new.duckdb' AS other",
    "ATTACH ':memory:' AS other",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET threads = 1",
    "SET enable_external_access = true",
    "RESET lock_configuration",
    "PRAGMA database_list",
    "CREATE TABLE t AS SELECT 1",
    "SELECT 1; SELECT 2",
    "DROP VIEW positions",
]


def test_hostile_queries_are_refused_and_change_nothing(atlas, tmp_path):
    (tmp_path / "outside.parquet").write_bytes((atlas / "atlas.json").read_bytes())
    link = atlas / "positions" / "escape.csv"
    link.symlink_to("/etc/passwd")
    try:
        before, before_tmp = _snapshot(atlas), _snapshot(tmp_path)
        with Engine(atlas) as engine:
            for template in HOSTILE:
                query = template.format(atlas=atlas, tmp=tmp_path)
                with pytest.raises(QueryError):
                    engine.run(query)
            # the engine still answers after every refusal
            assert engine.run("SELECT count(*) AS n FROM sequences").to_pylist() == [{"n": 2}]
        assert _snapshot(atlas) == before and _snapshot(tmp_path) == before_tmp
    finally:
        link.unlink()


def test_a_committed_part_linked_out_of_the_atlas_is_refused(tmp_path):
    atlas = make_atlas(tmp_path / "atlas", SEQS, _scores())
    part = sorted((atlas / "positions").iterdir())[0]
    outside = tmp_path / "elsewhere.parquet"
    part.rename(outside)
    part.symlink_to(outside)
    with pytest.raises(AtlasError, match="outside the atlas"):
        Engine(atlas)


def test_timeout_cancels_and_the_next_query_works(atlas):
    slow = "SELECT count(*) FROM range(100000000) a, range(1000000) b WHERE a.range + b.range = 7"
    with Engine(atlas, SqlConfig(timeout=0.5)) as engine:
        with pytest.raises(QueryError, match="timeout"):
            engine.run(slow)
        assert engine.run("SELECT 41 + 1 AS x").to_pylist() == [{"x": 42}]
    code = main(["query", "sql", slow, "--atlas", str(atlas), "--timeout", "0.5"])
    assert code == 1


@pytest.mark.parametrize("fmt", ["csv", "tsv", "json", "parquet"])
def test_output_file_is_the_only_thing_written(atlas, tmp_path, fmt):
    out = tmp_path / f"result.{fmt}"
    before = _snapshot(atlas)
    query = "SELECT seq_id, pos, logp FROM positions WHERE pos < 3 ORDER BY seq_id, pos"
    assert main(["query", "sql", query, "--atlas", str(atlas), "-f", fmt, "-o", str(out)]) == 0
    expected = seqatlas.Atlas(atlas).sql(query).to_pylist()
    if fmt == "parquet":
        rows = pq.read_table(out).to_pylist()
    elif fmt == "json":
        rows = json.loads(out.read_text())
    else:
        import pyarrow.csv as pacsv

        delimiter = "\t" if fmt == "tsv" else ","
        rows = pacsv.read_csv(out, parse_options=pacsv.ParseOptions(delimiter=delimiter)
                              ).to_pylist()
        if fmt == "tsv":
            assert out.read_text().splitlines()[0] == "seq_id\tpos\tlogp"
    assert [(r["seq_id"], r["pos"]) for r in rows] == [(r["seq_id"], r["pos"]) for r in expected]
    assert [r["logp"] for r in rows] == pytest.approx([r["logp"] for r in expected])
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]
    assert _snapshot(atlas) == before


def test_tsv_to_stdout_and_values_it_cannot_carry(atlas, capsys):
    query = "SELECT seq_id, pos FROM positions WHERE pos < 2 ORDER BY seq_id, pos"
    assert main(["query", "sql", query, "--atlas", str(atlas), "-f", "tsv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "seq_id\tpos" and all(len(line.split("\t")) == 2 for line in lines)
    assert main(["query", "sql", "SELECT 'a' || chr(9) || 'b' AS x", "--atlas", str(atlas),
                 "-f", "tsv"]) == 1
    assert "tab or a line break" in capsys.readouterr().err


def test_cli_errors_are_clean(atlas, capsys):
    assert main(["query", "sql", "SELEC nonsense", "--atlas", str(atlas)]) == 1
    assert "Error:" in capsys.readouterr().err
    assert main(["query", "sql", "SELECT * FROM read_csv('/etc/passwd')",
                 "--atlas", str(atlas)]) == 1
    assert "sandbox" in capsys.readouterr().err


def _robust_z(values: np.ndarray) -> np.ndarray:
    median = np.median(values)
    return (values - median) / (1.4826 * np.median(np.abs(values - median)))


def test_z_scores_are_robust_per_reference_letter(atlas):
    scores = _scores()
    refs = np.array(list(SEQS["chrA"] + SEQS["chrB"]))
    values = np.concatenate([scores["chrA"], scores["chrB"]]).astype(np.float32).astype(float)
    expected = np.full(len(values), np.nan)
    scored = ~np.isnan(values)
    for letter in "ACGT":
        mask = scored & (refs == letter)
        expected[mask] = _robust_z(values[mask])
    got = seqatlas.Atlas(atlas).sql("""SELECT z FROM positions p LEFT JOIN position_z USING
        (seq_id, pos) JOIN sequences s USING (seq_id) ORDER BY s.ordinal, p.pos""")
    z = np.array([np.nan if v is None else v for v in got.column("z").to_pylist()])
    np.testing.assert_allclose(z, expected, rtol=1e-4, atol=1e-4)


def test_robust_statistics_are_cached_and_invalidated(tmp_path):
    atlas = make_atlas(tmp_path / "atlas", SEQS, _scores())
    before = {p: p.read_bytes() for p in atlas.rglob("*") if p.is_file()}
    # query sql computes the statistics inside DuckDB
    inline = seqatlas.Atlas(atlas).sql("SELECT seq_id, pos, z FROM position_z ORDER BY ALL")
    # anomalies (like enrichment and export) runs the pass once and caches it, for the user
    # and outside the atlas: no reader writes the atlas
    reader = seqatlas.Atlas(atlas)
    reader.anomalies()
    assert {p: p.read_bytes() for p in atlas.rglob("*") if p.is_file()} == before
    [path] = (reader.cache / "robust_z").glob("logp-*.json")
    cached = json.loads(path.read_text())
    # ... and the cached values give the same z as the inline computation
    assert seqatlas.Atlas(atlas).sql("SELECT seq_id, pos, z FROM position_z ORDER BY ALL") \
        .equals(inline)
    assert set(cached["by_ref"]) == {"A", "C", "G", "T"}
    # the cache is what the views use: doctor it and z follows
    cached["by_ref"]["A"]["median"] = 100.0
    path.write_text(json.dumps(cached))
    low = seqatlas.Atlas(atlas).sql("SELECT max(z) AS z FROM position_z WHERE ref = 'A'")
    assert low.to_pylist()[0]["z"] < -100
    # new positions parts invalidate it
    make_atlas(atlas, {"chrC": "ACGT" * 10}, {"chrC": np.full(40, -1.0)})
    fresh = seqatlas.Atlas(atlas).sql("SELECT max(z) AS z FROM position_z WHERE ref = 'A'")
    assert fresh.to_pylist()[0]["z"] > 0


def test_statistics_an_earlier_version_cached_in_the_atlas_state_are_still_read(tmp_path):
    """Atlases whose state holds ``cache.robust_z`` (written by readers of earlier seqatlas
    versions) keep using it while current; nothing new is written there."""
    atlas = make_atlas(tmp_path / "atlas", SEQS, _scores())
    inline = seqatlas.Atlas(atlas).sql("SELECT max(z) AS z FROM position_z WHERE ref = 'A'")
    reader = seqatlas.Atlas(atlas)
    reader.anomalies()
    [path] = (reader.cache / "robust_z").glob("logp-*.json")
    cached = json.loads(path.read_text())
    path.unlink()
    cached["by_ref"]["A"]["median"] = 100.0
    with AtlasWriter(atlas) as writer:
        writer.set_cache(("robust_z", "logp"), cached)
    low = seqatlas.Atlas(atlas).sql("SELECT max(z) AS z FROM position_z WHERE ref = 'A'")
    assert low.to_pylist()[0]["z"] < -100 < inline.to_pylist()[0]["z"]


def _reference_regions(scores: dict, params: AnomalyParams) -> set:
    """Runs >= min_length of one tail, merged across gaps <= max_gap (pure Python)."""
    refs = {k: np.array(list(v)) for k, v in SEQS.items()}
    z = {}
    for letter in "ACGT":
        pooled = np.concatenate([scores[k].astype(np.float32)[refs[k] == letter] for k in SEQS])
        pooled = pooled[~np.isnan(pooled)].astype(float)
        median, scale = np.median(pooled), 1.4826 * np.median(np.abs(pooled - np.median(pooled)))
        for k in SEQS:
            z.setdefault(k, np.full(len(SEQS[k]), np.nan))
            sel = refs[k] == letter
            z[k][sel] = (scores[k].astype(np.float32)[sel] - median) / scale
    regions = set()
    for k, values in z.items():
        for tail, hit in (("high", values >= params.z), ("low", values <= -params.z)):
            runs, start = [], None
            for i, flag in enumerate(list(hit) + [False]):
                if flag and start is None:
                    start = i
                if not flag and start is not None:
                    if i - start >= params.min_length:
                        runs.append([start, i])
                    start = None
            merged = []
            for run in runs:
                if merged and run[0] - merged[-1][1] <= params.max_gap:
                    merged[-1][1] = run[1]
                else:
                    merged.append(run)
            regions |= {(k, s, e, tail) for s, e in merged}
    return regions


@pytest.mark.parametrize("min_length,max_gap", [(3, 2), (1, 0), (5, 0), (2, 10)])
def test_anomaly_regions_match_a_reference(tmp_path, min_length, max_gap):
    rng = np.random.default_rng(min_length * 10 + max_gap)
    scores = {k: rng.standard_t(2, len(v)) for k, v in SEQS.items()}  # heavy tails: many runs
    atlas = make_atlas(tmp_path / "atlas", SEQS, scores)
    params = AnomalyParams(z=1.5, min_length=min_length, max_gap=max_gap)
    got = seqatlas.query.anomalies(atlas, params=params)
    assert {(r["seq_id"], r["start"], r["end"], r["tail"]) for r in got.to_pylist()} == \
        _reference_regions(scores, params)


def test_planted_regions_and_their_repeats(atlas):
    regions = seqatlas.Atlas(atlas).anomalies(with_repeats=True).to_pylist()
    by_start = {(r["seq_id"], r["start"]): r for r in regions}
    high = by_start[("chrA", 100)]
    assert (high["end"], high["tail"], high["n_anomalous"]) == (118, "high", 16)
    assert high["repeat_classes"] == "Simple_repeat" and high["repeat_names"] == "(ACG)n"
    low = by_start[("chrB", 50)]
    assert (low["end"], low["tail"]) == (55, "low") and low["peak_z"] < -3
    assert low["repeat_classes"] == "LINE" and low["repeat_names"] == "L1HS"
    assert ("chrB", 200) not in by_start  # one position < min_length 3
    only_low = seqatlas.Atlas(atlas).anomalies(tail="low")
    assert set(only_low.column("tail").to_pylist()) == {"low"}


def test_smoothing_averages_z_over_a_centred_window(atlas):
    raw = seqatlas.Atlas(atlas).sql("SELECT z FROM position_z WHERE seq_id = 'chrA' ORDER BY pos")
    smooth = seqatlas.query.sql(atlas, "SELECT z FROM position_z WHERE seq_id = 'chrA' ORDER BY "
                                "pos", params=AnomalyParams(smooth=5))
    z, s = np.array(raw.column("z").to_pylist()), np.array(smooth.column("z").to_pylist())
    assert s[50] == pytest.approx(z[48:53].mean(), rel=1e-6)
    assert s[0] == pytest.approx(z[0:3].mean(), rel=1e-6)


intervals = st.lists(st.tuples(st.sampled_from(["chrA", "chrB"]), st.integers(0, 60),
                               st.integers(0, 12)), min_size=0, max_size=25)


@settings(max_examples=25, deadline=None)
@given(repeats=intervals, queries=intervals)
def test_overlap_join_equals_brute_force(tmp_path_factory, repeats, queries):
    import pyarrow as pa

    rows = [(s, a, a + n, f"r{i}", "c", None) for i, (s, a, n) in enumerate(repeats)]
    atlas = make_atlas(tmp_path_factory.mktemp("join") / "a", SEQS, _scores(), repeats=rows)
    probe = pa.table({"seq_id": [q[0] for q in queries], "start": [q[1] for q in queries],
                      "end": [q[1] + q[2] for q in queries], "qid": list(range(len(queries)))})
    with Engine(atlas) as engine:
        engine.con.register("probe", probe)
        got = engine.execute_internal(repeat_overlaps_sql("SELECT * FROM probe")).fetchall()
        plan = "\n".join(r[1] for r in engine.execute_internal(
            "EXPLAIN " + repeat_overlaps_sql("SELECT * FROM probe")).fetchall())
    columns = list(probe.column_names) + ["repeat_start", "repeat_end", "repeat_name"]
    pairs = {(r[columns.index("qid")], r[columns.index("repeat_name")]) for r in got}
    expected = {(qid, name) for qid, (qs, qa, qn) in enumerate(queries)
                for name, (rs, ra, rn) in ((f"r{i}", r) for i, r in enumerate(repeats))
                if qs == rs and ra < qa + qn and qa < ra + rn}
    assert pairs == expected
    # a range join on global coordinates; the only hash joins look sequences up by seq_id
    if queries and repeats:  # (else the optimiser drops the join)
        assert any(name in plan for name in ("IE Join", "IEJoin", "Piecewise Merge Join",
                                             "Nested Loop Join"))
        assert plan.count("Hash Join") == plan.count("seq_id = seq_id")


def test_enrichment_matches_scipy_on_known_counts(atlas):
    from scipy.stats import false_discovery_control, fisher_exact
    from scipy.stats.contingency import odds_ratio

    params = dict(z=3.0, tail="both")
    table = {r["group"]: r for r in seqatlas.Atlas(atlas).enrichment(**params).to_pylist()}
    z = seqatlas.Atlas(atlas).sql("""SELECT seq_id, pos, tail IS NOT NULL AS anomalous
                                     FROM position_z""").to_pylist()
    spans = {"Simple_repeat": [("chrA", 95, 120)], "SINE": [("chrA", 300, 320)],
             "LINE": [("chrB", 40, 60), ("chrB", 45, 50)]}  # nested: counted once
    total = len(z)
    anomalous_total = sum(r["anomalous"] for r in z)
    ps = []
    for group, intervals in spans.items():
        inside = [r for r in z if any(r["seq_id"] == s and a <= r["pos"] < b
                                      for s, a, b in intervals)]
        a_in = sum(r["anomalous"] for r in inside)
        row = table[group]
        assert (row["n_inside"], row["anomalous_inside"]) == (len(inside), a_in)
        assert (row["n_outside"], row["anomalous_outside"]) == (total - len(inside),
                                                                anomalous_total - a_in)
        counts = [[a_in, len(inside) - a_in],
                  [anomalous_total - a_in, total - len(inside) - anomalous_total + a_in]]
        assert row["p_value"] == pytest.approx(fisher_exact(counts)[1], rel=1e-9)
        if min(min(counts)) > 0:
            ratio = odds_ratio(counts, kind="sample")
            assert row["odds_ratio"] == pytest.approx(ratio.statistic)
            assert (row["ci_low"], row["ci_high"]) == pytest.approx(
                tuple(ratio.confidence_interval(0.95)))
        else:  # Haldane-Anscombe: the interval of the table + 0.5
            a, b, c, d = np.array(counts).ravel() + 0.5
            half = 1.959964 * np.sqrt(1 / a + 1 / b + 1 / c + 1 / d)
            centre = np.log(a * d / (b * c))
            assert (row["ci_low"], row["ci_high"]) == pytest.approx(
                (np.exp(centre - half), np.exp(centre + half)), rel=1e-5)
        ps.append((group, row["p_value"]))
    q = false_discovery_control([p for _, p in ps], method="bh")
    for (group, _), q_value in zip(ps, q):
        assert table[group]["q_value"] == pytest.approx(q_value)
    assert table["LINE"]["n_inside"] == 20 and table["Simple_repeat"]["anomalous_inside"] == 16


def test_enrichment_without_anomalies_has_no_odds_ratio(atlas, capsys):
    rows = seqatlas.query.enrichment(atlas, params=AnomalyParams(z=1e6)).to_pylist()
    assert rows and all(r["anomalous_inside"] == r["anomalous_outside"] == 0 for r in rows)
    for row in rows:
        assert math.isnan(row["odds_ratio"]) and math.isnan(row["ci_low"])
        assert math.isnan(row["ci_high"]) and row["p_value"] == row["q_value"] == 1.0
    assert main(["query", "enrichment", "--atlas", str(atlas), "--z", "1e6",
                 "--format", "csv"]) == 0
    assert "no position has |z| >= 1e+06" in capsys.readouterr().err


def test_enrichment_by_name_and_cli_parity(atlas, capsys):
    api = seqatlas.query.enrichment(atlas, by="name").to_pylist()
    assert {r["group"] for r in api} == {"(ACG)n", "AluY", "L1HS", "L1PA2"}
    assert main(["query", "enrichment", "--atlas", str(atlas), "--by", "name",
                 "--format", "json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert [(r["group"], r["n_inside"], r["anomalous_inside"]) for r in cli] == \
        [(r["group"], r["n_inside"], r["anomalous_inside"]) for r in api]


def test_anomalies_cli_matches_api(atlas, capsys):
    api = seqatlas.query.anomalies(atlas, params=AnomalyParams(min_length=2),
                                   with_repeats=True).to_pylist()
    assert main(["query", "anomalies", "--atlas", str(atlas), "--min-length", "2",
                 "--with-repeats", "--format", "json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert [(r["seq_id"], r["start"], r["end"], r["repeat_classes"]) for r in cli] == \
        [(r["seq_id"], r["start"], r["end"], r["repeat_classes"]) for r in api]
    assert main(["query", "anomalies", "--atlas", str(atlas), "--format", "table"]) == 0
    assert "anomalous regions" in capsys.readouterr().out


def test_bedgraph_merges_equal_runs_and_skips_unscored(atlas, tmp_path):
    out = tmp_path / "logp.bedgraph"
    result = seqatlas.export(atlas, format="bedgraph", output=out, column="logp")
    lines = [line.split("\t") for line in out.read_text().splitlines()]
    assert result["intervals"] == len(lines)
    scores = _scores()
    # rebuild per-base values from the track
    for seq_id, values in scores.items():
        track = np.full(len(values), np.nan)
        for chrom, start, end, value in lines:
            if chrom == seq_id:
                track[int(start):int(end)] = float(value)
        np.testing.assert_allclose(track, values.astype(np.float32), rtol=1e-6)
    assert ["chrA", "100", "112", "0"] in lines  # 12 equal values, one line
    assert lines[0][0] == "chrA" and lines[-1][0] == "chrB"


def test_bed_and_bigwig_exports_cli_and_api(atlas, tmp_path):
    import pyBigWig

    assert main(["export", "bed", "--atlas", str(atlas), "-o", str(tmp_path / "cli.bed")]) == 0
    seqatlas.export(atlas, format="bed", output=tmp_path / "api.bed")
    assert (tmp_path / "cli.bed").read_text() == (tmp_path / "api.bed").read_text()
    bed = [line.split("\t") for line in (tmp_path / "api.bed").read_text().splitlines()]
    assert bed[0][:4] == ["chrA", "100", "118", "high"] and bed[1][:4] == ["chrB", "50", "55",
                                                                           "low"]
    assert main(["export", "bigwig", "--atlas", str(atlas), "--column", "logp",
                 "-o", str(tmp_path / "logp.bw")]) == 0
    bw = pyBigWig.open(str(tmp_path / "logp.bw"))
    assert bw.chroms() == {"chrA": 400, "chrB": 300}
    values = np.array(bw.values("chrB", 0, 300))
    expected = _scores()["chrB"].astype(np.float32)
    np.testing.assert_allclose(values, expected, rtol=1e-6)  # nan where unscored
    bw.close()


def test_commands_that_need_scores_refuse_a_likelihood_none_atlas(tmp_path, capsys):
    from seqatlas.errors import ConfigError

    unscored = {k: np.full(len(v), np.nan) for k, v in SEQS.items()}
    atlas = make_atlas(tmp_path / "none", SEQS, unscored, likelihood="none", repeats=REPEATS)
    needs = "was ingested with --likelihood none: it has no likelihood scores, which {} needs"
    calls = [("`query anomalies`", lambda: seqatlas.query.anomalies(atlas)),
             ("`query enrichment`", lambda: seqatlas.query.enrichment(atlas)),
             ("`export bed`", lambda: seqatlas.export(atlas, format="bed",
                                                      output=tmp_path / "r.bed")),
             ("`export bedgraph --column z`",
              lambda: seqatlas.export(atlas, format="bedgraph", output=tmp_path / "z.bg"))]
    for what, call in calls:
        with pytest.raises(ConfigError, match=re.escape(needs.format(what))):
            call()
    assert not (tmp_path / "r.bed").exists() and not (tmp_path / "z.bg").exists()
    assert main(["query", "enrichment", "--atlas", str(atlas)]) == 1
    err = capsys.readouterr().err
    assert "re-ingest with --likelihood exact, fast or unmasked" in err and "Traceback" not in err
    # a track of a stored column needs no z: it is written (empty here: nothing is scored)
    result = seqatlas.export(atlas, format="bedgraph", output=tmp_path / "logp.bg",
                             column="logp")
    assert result["intervals"] == 0 and (tmp_path / "logp.bg").read_text() == ""


def test_query_commands_do_not_import_torch_or_ray(atlas):
    code = ("import sys; from seqatlas.cli.main import main; "
            f"main(['query', 'sql', 'SELECT 1', '--atlas', {str(atlas)!r}]); "
            "print(sorted(m for m in ('torch', 'ray', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stderr


def test_a_schema_1_atlas_is_read_and_queried_but_not_extended(tmp_path, tiny_bert):
    from seqatlas.errors import AtlasMismatchError

    atlas = make_atlas(tmp_path / "atlas", SEQS, _scores(), repeats=REPEATS)
    for part in (atlas / "positions").iterdir():  # as version 1 wrote them: no copy columns
        table = pq.read_table(part)
        pq.write_table(table.drop_columns(["copy_offset", "copy_strand"]), part)
    manifest = json.loads((atlas / "atlas.json").read_text())
    manifest["schema_version"] = 1
    for name, record in manifest["parts"]["positions"].items():  # no checksums then
        record["bytes"] = (atlas / "positions" / name).stat().st_size
        del record["sha256"]
    (atlas / "atlas.json").write_text(json.dumps(manifest))
    old = seqatlas.Atlas(atlas)
    positions = old.positions(columns=["pos", "copy_offset"])
    assert positions.num_rows == 700 and positions["copy_offset"].null_count == 700
    assert old.sql("SELECT count(*) AS n FROM anomaly_regions").to_pylist()[0]["n"] >= 2
    (tmp_path / "x.fa").write_text(">p\nMKVLAT\n")
    with pytest.raises(AtlasMismatchError, match="schema version 1"):
        seqatlas.ingest(tmp_path / "x.fa", atlas=atlas, model=str(tiny_bert), workers=0,
                        progress=False)


def test_embeddings_must_be_a_bool(tmp_path, tiny_bert):
    from seqatlas.errors import ConfigError

    with pytest.raises(ConfigError, match="embeddings=False"):
        seqatlas.ingest(tmp_path / "x.fa", atlas=tmp_path / "a", model=str(tiny_bert),
                        embeddings="none")
