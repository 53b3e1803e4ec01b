"""Enrichment of likelihood anomalies in repeats: 2x2 tables, odds ratios, Fisher, BH.

For each group (a repeat class, family or name; or positions with an in-context copy), the
scored positions are split into inside / outside the group's repeats and anomalous / not
(:mod:`seqatlas.query.views`). Each group gets the sample odds ratio with its 95% Woolf
(log-normal) interval, the two-sided Fisher exact p, and the Benjamini-Hochberg q over all
groups of the query. A position covered by several repeats of one group counts once.

Where the atlas holds ablations (``seqatlas probe icl``), each group also gets, over its
anomalous positions inside that were probed (those with a ``net_gain``, of the one method
``AnomalyParams.ablation_method`` chooses): their number ``probed_anomalous_inside``, their
``mean_net_gain``, and ``explained_fraction`` = sum(net_gain) / sum(excess), how much of the
anomaly (score minus the letter's median) the copy's look-up explains. Both are null when no
such position was probed (or the excess sums to 0).

Membership is computed without a per-position interval join: repeat boundaries cut the genome
(global coordinates) into segments, each position finds its segment with an ASOF join, and
counts per segment are summed per group. Zero-length repeats cover no position.
"""

from __future__ import annotations

import math

import pyarrow as pa

from seqatlas.errors import ConfigError
from seqatlas.query.engine import Engine
from seqatlas.query.views import (TAIL_PREDICATES, AnomalyParams, require_ablation_method,
                                  require_scores)

GROUPINGS = ("class", "family", "name", "copy")
RESULT_COLUMNS = ("group", "n_inside", "anomalous_inside", "n_outside", "anomalous_outside",
                  "rate_inside", "rate_outside", "odds_ratio", "ci_low", "ci_high", "p_value",
                  "q_value", "probed_anomalous_inside", "mean_net_gain", "explained_fraction")


def _sums(anomalous: str) -> str:
    """Over rows with columns ``anomalous`` (a condition), net_gain and excess: n, a (the
    anomalous), then over the anomalous probed ones: p (their number), g (sum of net_gain),
    x (sum of excess)."""
    probed = f"({anomalous}) AND net_gain IS NOT NULL"
    return (f"count(*) AS n, count(*) FILTER ({anomalous}) AS a, "
            f"count(*) FILTER ({probed}) AS p, sum(net_gain) FILTER ({probed}) AS g, "
            f"sum(excess) FILTER ({probed}) AS x")


def _repeat_counts(engine, by: str, anomalous: str) -> list[tuple]:
    return engine.execute_internal(f"""
        WITH rep AS (
            SELECT gstart, gend, coalesce("{by}", '(unspecified)') AS grp
            FROM repeats_global WHERE gend > gstart),
        bounds AS (SELECT gstart AS b FROM rep UNION SELECT gend FROM rep),
        seg AS (SELECT b AS s, lead(b) OVER (ORDER BY b) AS e FROM bounds),
        seg_group AS (
            SELECT DISTINCT seg.s, rep.grp
            FROM seg JOIN rep ON rep.gstart <= seg.s AND seg.e <= rep.gend
            WHERE seg.e IS NOT NULL),
        pz AS (
            SELECT s.global_start + z.pos AS gpos, ({anomalous}) AS anomalous, z.net_gain,
                   z.excess
            FROM position_z z JOIN sequences s USING (seq_id)),
        per_segment AS (
            SELECT seg.s, {_sums("anomalous")}
            FROM pz ASOF JOIN seg ON pz.gpos >= seg.s
            WHERE pz.gpos < seg.e
            GROUP BY seg.s),
        groups AS (SELECT DISTINCT grp FROM rep)
        SELECT groups.grp, coalesce(sum(c.n), 0)::BIGINT, coalesce(sum(c.a), 0)::BIGINT,
               coalesce(sum(c.p), 0)::BIGINT, sum(c.g), sum(c.x)
        FROM groups LEFT JOIN seg_group sg ON sg.grp = groups.grp
                    LEFT JOIN per_segment c ON c.s = sg.s
        GROUP BY groups.grp ORDER BY groups.grp""").fetchall()


def _copy_counts(engine, anomalous: str) -> list[tuple]:
    rows = engine.execute_internal(f"""
        SELECT grouping(copy_strand) AS total, copy_strand, {_sums(anomalous)}
        FROM position_z WHERE copy_offset IS NOT NULL
        GROUP BY GROUPING SETS ((copy_strand), ())""").fetchall()
    by_strand = {strand: counts for total, strand, *counts in rows if not total}
    names = {"+": "in-context copy, direct", "-": "in-context copy, reverse complement"}
    out = [("in-context copy, any", *next(counts for total, _, *counts in rows if total))]
    for strand, name in names.items():
        if strand in by_strand:
            out.append((name, *by_strand[strand]))
    return out


def odds_ratio_test(anomalous_inside: int, n_inside: int, anomalous_outside: int,
                    n_outside: int) -> tuple[float, float, float, float]:
    """Sample odds ratio, its 95% Woolf interval, and the two-sided Fisher exact p.

    With a zero cell the interval is computed on the table plus 0.5 (Haldane-Anscombe), so
    it stays finite; the odds ratio itself is not corrected. A table with an empty margin
    (no positions inside or outside, or no anomalous or no other positions at all) says
    nothing about enrichment: odds ratio and interval are NaN and p is 1.
    """
    from scipy.stats import fisher_exact, norm

    anomalous = anomalous_inside + anomalous_outside
    if n_inside == 0 or n_outside == 0 or anomalous in (0, n_inside + n_outside):
        return math.nan, math.nan, math.nan, 1.0
    cells = [anomalous_inside, n_inside - anomalous_inside,
             anomalous_outside, n_outside - anomalous_outside]
    a, b, c, d = cells
    odds = (a * d / (b * c)) if b * c else math.inf if a * d else math.nan
    _, p = fisher_exact([[a, b], [c, d]])
    if 0 in cells:
        a, b, c, d = (x + 0.5 for x in cells)
    log_odds = math.log(a * d / (b * c))
    half_width = norm.ppf(0.975) * math.sqrt(1 / a + 1 / b + 1 / c + 1 / d)
    return float(odds), math.exp(log_odds - half_width), math.exp(log_odds + half_width), \
        float(p)


def enrichment(atlas, *, by: str = "class", params=None, config=None) -> pa.Table:
    """Anomalous vs other positions inside vs outside each group's repeats (see module doc)."""
    import numpy as np
    from scipy.stats import false_discovery_control

    if by not in GROUPINGS:
        raise ConfigError(f"--by must be one of {', '.join(GROUPINGS)}, not {by!r}")
    params = params or AnomalyParams()
    with Engine(atlas, config, anomaly_params=params, robust_pass=True) as engine:
        require_scores(engine, "`query enrichment`")
        require_ablation_method(engine)
        anomalous = TAIL_PREDICATES[params.tail]
        total, total_anomalous = engine.execute_internal(
            f"SELECT count(*), count(*) FILTER ({anomalous}) FROM position_z").fetchall()[0]
        if by == "copy":
            if "copy_offset" not in engine.position_columns:
                raise ConfigError("this atlas has no in-context copy columns")
            groups = _copy_counts(engine, anomalous)
        else:
            if engine.atlas.count("repeats") == 0:
                raise ConfigError(f"{engine.atlas.path} has no repeats: import some with "
                                  "`seqatlas annotate FILE --atlas DIR` first")
            groups = _repeat_counts(engine, by, anomalous)
    rows = []
    for group, n_in, a_in, probed, gain, excess in groups:
        n_out, a_out = total - n_in, total_anomalous - a_in
        odds, low, high, p = odds_ratio_test(a_in, n_in, a_out, n_out)
        rows.append({"group": group, "n_inside": n_in, "anomalous_inside": a_in,
                     "n_outside": n_out, "anomalous_outside": a_out,
                     "rate_inside": a_in / n_in if n_in else math.nan,
                     "rate_outside": a_out / n_out if n_out else math.nan,
                     "odds_ratio": odds, "ci_low": low, "ci_high": high, "p_value": p,
                     "probed_anomalous_inside": probed,
                     "mean_net_gain": gain / probed if probed else None,
                     "explained_fraction": gain / excess if probed and excess else None})
    q = false_discovery_control(np.array([r["p_value"] for r in rows]), method="bh") \
        if rows else []
    for row, q_value in zip(rows, q):
        row["q_value"] = float(q_value)
    rows.sort(key=lambda r: (r["p_value"], r["group"]))
    return pa.Table.from_pylist(rows, schema=pa.schema(
        [pa.field(c, pa.string() if c == "group" else
                  pa.int64() if c.startswith(("n_", "anomalous", "probed_")) else pa.float64())
         for c in RESULT_COLUMNS]))
