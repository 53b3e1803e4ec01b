"""The anomaly views of an engine: robust z-scores per reference letter, anomalous positions
and runs, the in-context look-up probes, and the overlap SQL that joins intervals with repeats.

``z = (score - median) / (1.4826 * MAD)``, with the median and MAD of the score column over
all scored positions of the same reference letter (one model per atlas). They are computed
by :func:`robust_stats` and cached in the user's cache, outside the atlas (keyed by the
atlas, the column and the committed positions parts, see :mod:`seqatlas.store.reader_cache`),
so later queries skip the pass; no reader writes the atlas. Statistics that earlier versions
cached in the atlas state (under ``cache``) are still used while current. An engine made
without that pass (``query sql``) uses a current cache and otherwise computes the same
statistics inside DuckDB when, and only when, a query reads these views. With ``smooth = W``
the z-score is the mean of the per-position z over W consecutive scored rows centred on the
position.

In a region engine (``Engine(..., region=...)``) the statistics stay the whole atlas's: the
cached ones, or computed over all the positions parts (:meth:`Sandbox.whole_table`), never
over the region's rows, so a position's z does not depend on the region it is read through;
the views built on the region's rows (smoothing, runs of anomalous positions, the look-up
probes of ``icl_regions``) see only those rows. The ablation methods are the whole atlas's
too.

Views created by :class:`seqatlas.query.engine.Engine`:

- ``position_z``: every scored position with ``score``, ``z``, ``tail`` (``high`` when
  z >= threshold, ``low`` when z <= -threshold, else null), ``excess`` (score minus its
  letter's median, unsmoothed: how far above typical the position is) and the position's
  ablation values ``icl_gain``, ``control_gain``, ``net_gain`` for one corruption method
  (``AnomalyParams.ablation_method``; by default the only method the atlas holds), averaged
  over its seeds; null where the position was not probed. An atlas without ablations gets
  typed nulls and no join. With several methods and none chosen, reading these three columns
  in ``query sql`` fails with a message saying to pass ``--ablation-method`` (other columns
  still read), and :func:`~seqatlas.query.anomalies` / ``enrichment`` refuse up front.
- ``anomalies``: the rows of ``position_z`` in the selected tail(s).
- ``anomaly_regions``: runs of at least ``min_length`` consecutive anomalous positions of one
  tail, then runs separated by at most ``max_gap`` other positions merged; 0-based half-open.
  Over the region's anomalous positions (gap positions excluded, as for ``n_anomalous``):
  ``n_probed`` (those with a ``net_gain``), ``net_gain`` (their mean) and
  ``explained_fraction`` = sum(net_gain) / sum(excess) over them, the share of the anomaly
  the copy's look-up explains (null when none is probed or the excess sums to 0; meaningful
  for the high tail).
- ``icl_regions``: one row per probed target of the ``ablations`` table (seq_id,
  target_start, target_end, method, seed) with its ``length``, ``n_probed`` positions, partner
  and control intervals, ``copy_strand``, ``copy_distance`` = partner_start - target_start
  (the signed offset between the intervals' starts, for direct and reverse-complement
  copies alike), ``control_rule``, the probed window, the means ``mean_logp_intact``,
  ``mean_icl_gain``, ``mean_control_gain``, ``mean_net_gain``, and ``repeat_classes`` (the
  distinct classes of repeats overlapping the target, comma-joined, without the copy
  detector's own ``in_context_copy`` class; null if none). Independent of the scores.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass

from seqatlas.errors import ConfigError
from seqatlas.schema import ABLATION_METHODS, COPY_REPEAT_CLASS
from seqatlas.query.sandbox import sql_string
from seqatlas.manifest import ScoringRecord
from seqatlas.store.reader_cache import read_value, write_value

SCORE_COLUMNS = ("logp", "logp_unmasked", "logp_rc", "logp_unmasked_rc", "logp_mean",
                 "logp_unmasked_mean", "entropy")
TAILS = ("high", "low", "both")
ABLATION_COLUMNS = ("icl_gain", "control_gain", "net_gain")  # per position in position_z
# the rows of position_z in each tail selection
TAIL_PREDICATES = {"high": "tail = 'high'", "low": "tail = 'low'", "both": "tail IS NOT NULL"}
MAD_TO_SD = 1.4826  # MAD of a normal distribution times this is its standard deviation
MEAN_ABS_TO_SD = 1.2533  # sqrt(pi / 2): the same for the mean absolute deviation


@dataclass
class AnomalyParams:
    """What counts as anomalous; defaults suit a first look at a genome or proteome."""

    column: str | None = None  # None: logp, or the strand mean / unmasked value (see below)
    z: float = 3.0  # |z| threshold
    tail: str = "both"  # high | low | both
    smooth: int = 1  # rolling mean of z over this many positions (1 = none)
    min_length: int = 3  # positions in a run before it is a region
    max_gap: int = 2  # runs at most this many positions apart are merged
    ablation_method: str | None = None  # None: the only method in the ablations table

    def validate(self) -> None:
        if self.column is not None and self.column not in SCORE_COLUMNS:
            raise ConfigError(f"--column must be one of {', '.join(SCORE_COLUMNS)}, not "
                              f"{self.column!r}")
        if self.tail not in TAILS:
            raise ConfigError(f"--tail must be one of {', '.join(TAILS)}, not {self.tail!r}")
        if not _finite_number(self.z) or self.z <= 0:
            raise ConfigError(f"--z must be a positive finite number, not {self.z!r}")
        for name in ("smooth", "min_length", "max_gap"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"--{name.replace('_', '-')} must be a whole number, not "
                                  f"{value!r}")
        if self.smooth < 1:
            raise ConfigError("--smooth must be 1 (no smoothing) or more")
        if self.min_length < 1 or self.max_gap < 0:
            raise ConfigError("--min-length must be 1 or more and --max-gap 0 or more")
        if self.ablation_method is not None and self.ablation_method not in ABLATION_METHODS:
            raise ConfigError(f"--ablation-method must be one of {', '.join(ABLATION_METHODS)}, "
                              f"not {self.ablation_method!r}")


def _finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value)


def default_column(scoring: ScoringRecord | None) -> str | None:
    """The atlas's main likelihood column: masked or causal logp, else unmasked; strand mean
    if both (:meth:`seqatlas.manifest.ScoringRecord.likelihood_column`)."""
    return None if scoring is None else scoring.likelihood_column()


def _parts_key(atlas) -> str:
    names = sorted(atlas.manifest.table_parts("positions"))
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def _stats_query(column: str, positions: str = "positions") -> str:
    """The statistics of ``column`` over ``positions`` (SQL naming all the positions)."""
    return f"""
        SELECT ref, median(x) AS median, mad(x) AS mad, avg(abs(x - m)) AS mean_abs, count(*) AS n
        FROM (SELECT ref, "{column}" AS x, median("{column}") OVER (PARTITION BY ref) AS m
              FROM {positions} WHERE "{column}" IS NOT NULL)
        GROUP BY ref ORDER BY ref"""


def cached_stats(atlas, column: str) -> dict[str, dict] | None:
    """The robust statistics of ``column`` when cached for the positions parts ``atlas``
    reads (in the user's cache, or in the state by an earlier version); else None."""
    key = _parts_key(atlas)
    cached = read_value(atlas.cache, _stats_file(column, key))
    if not (isinstance(cached, dict) and cached.get("parts") == key):
        cached = atlas.manifest.cached("robust_z", column)
    return cached["by_ref"] if cached and cached.get("parts") == key else None


def _stats_file(column: str, parts_key: str) -> str:
    return f"robust_z/{re.sub(r'[^A-Za-z0-9_]', '_', column)}-{parts_key}.json"


def robust_stats(engine, column: str) -> dict[str, dict]:
    """Median, scaled MAD and count of ``column`` per reference letter (cached for the user,
    outside the atlas)."""
    atlas = engine.atlas
    cached = cached_stats(atlas, column)
    if cached is not None:
        return cached
    key = _parts_key(atlas)
    rows = engine.execute_internal(_stats_query(column, engine.whole_table("positions"))
                                   ).fetchall()
    by_ref = {}
    for ref, median, mad, mean_abs, count in rows:
        # A letter whose scores are mostly identical has MAD 0; the mean absolute deviation
        # (times sqrt(pi/2), a normal's SD) keeps its z finite. Both 0: z is null.
        scale = MAD_TO_SD * mad if mad else (MEAN_ABS_TO_SD * mean_abs if mean_abs else None)
        by_ref[ref] = {"median": float(median), "scale": scale, "count": int(count)}
    write_value(atlas.cache, _stats_file(column, key), {"parts": key, "by_ref": by_ref},
                superseded=_stats_file(column, "*"))
    return by_ref


def _double(value: float | None) -> str:
    """A DOUBLE literal that round-trips exactly (a bare 1.25 would be a DECIMAL)."""
    return "NULL::DOUBLE" if value is None else f"'{float(value)!r}'::DOUBLE"


def _stats_relation(engine, column: str, compute: bool) -> str:
    """SQL of (ref, median, scale): literal values when cached (or ``compute``), else the
    same statistics computed by DuckDB whenever a query reads them."""
    by_ref = robust_stats(engine, column) if compute else cached_stats(engine.atlas, column)
    if by_ref is None:
        return (f"SELECT ref, median::DOUBLE AS median, CASE "
                f"WHEN mad <> 0 THEN {MAD_TO_SD!r}::DOUBLE * mad "
                f"WHEN mean_abs <> 0 THEN {MEAN_ABS_TO_SD!r}::DOUBLE * mean_abs END AS scale "
                f"FROM ({_stats_query(column, engine.whole_table('positions'))})")
    values = ", ".join(f"({sql_string(ref)}, {_double(s['median'])}, {_double(s['scale'])})"
                       for ref, s in by_ref.items())
    return (f"SELECT * FROM (VALUES {values}) t(ref, median, scale)" if values else
            "SELECT NULL::VARCHAR AS ref, NULL::DOUBLE AS median, NULL::DOUBLE AS scale "
            "WHERE false")


def _regions_sql(params: AnomalyParams) -> str:
    """Runs of at least ``min_length`` anomalous positions of one tail, merged across gaps of
    at most ``max_gap`` positions."""
    return f"""
        WITH steps AS (
            SELECT seq_id, pos, tail, z, copy_offset IS NOT NULL AS has_copy, net_gain, excess,
                   CASE WHEN pos - lag(pos) OVER (PARTITION BY seq_id, tail ORDER BY pos) = 1
                        THEN 0 ELSE 1 END AS new_run
            FROM anomalies),
        runs AS (
            SELECT *, sum(new_run) OVER (PARTITION BY seq_id, tail ORDER BY pos
                                         ROWS UNBOUNDED PRECEDING) AS run
            FROM steps),
        kept AS (
            SELECT seq_id, tail, run, min(pos) AS start, max(pos) + 1 AS "end",
                   count(*) AS n, sum(z) AS z_sum, max(abs(z)) AS z_peak,
                   count(*) FILTER (has_copy) AS n_copy, count(net_gain) AS n_probed,
                   sum(net_gain) AS gain_sum,
                   sum(excess) FILTER (net_gain IS NOT NULL) AS excess_sum
            FROM runs GROUP BY seq_id, tail, run HAVING count(*) >= {params.min_length}),
        gaps AS (
            SELECT *, CASE WHEN start - lag("end") OVER (PARTITION BY seq_id, tail
                                                          ORDER BY start) <= {params.max_gap}
                           THEN 0 ELSE 1 END AS new_region
            FROM kept),
        regions AS (
            SELECT *, sum(new_region) OVER (PARTITION BY seq_id, tail ORDER BY start
                                            ROWS UNBOUNDED PRECEDING) AS region
            FROM gaps)
        SELECT seq_id, min(start) AS start, max("end") AS "end", tail,
               sum(n)::BIGINT AS n_anomalous, sum(z_sum) / sum(n) AS mean_z,
               CASE WHEN tail = 'low' THEN -max(z_peak) ELSE max(z_peak) END AS peak_z,
               sum(n_copy) / sum(n) AS copy_fraction,
               sum(n_probed)::BIGINT AS n_probed,
               sum(gain_sum) / nullif(sum(n_probed), 0) AS net_gain,
               CASE WHEN sum(excess_sum) <> 0 THEN sum(gain_sum) / sum(excess_sum)
               END AS explained_fraction
        FROM regions GROUP BY seq_id, tail, region"""


def ablation_methods(engine) -> tuple[str, ...]:
    """The corruption methods in the atlas's ablations table (none read without parts; the
    whole table's in a region engine)."""
    if engine.atlas.count("ablations") == 0:
        return ()
    rows = engine.execute_internal(f"SELECT DISTINCT method FROM "
                                   f"{engine.whole_table('ablations')} ORDER BY method")
    return tuple(method for (method,) in rows.fetchall())


def _ambiguous_methods(methods) -> str:
    return (f"the atlas holds ablations of several methods ({', '.join(methods)}); choose one "
            "with --ablation-method (AnomalyParams.ablation_method)")


def require_ablation_method(engine) -> str | None:
    """The method whose ablation values the views carry (None: the atlas has no ablations);
    a ConfigError when several methods are present and none was chosen, or when the chosen
    one is absent."""
    chosen, methods = engine.anomaly_params.ablation_method, engine.ablation_methods
    if chosen is None and len(methods) > 1:
        raise ConfigError(_ambiguous_methods(methods))
    if chosen is not None and chosen not in methods:
        present = f"it has {', '.join(methods)}" if methods else \
            "it has none: run `seqatlas probe icl` first"
        raise ConfigError(f"{engine.atlas.path} has no {chosen!r} ablations ({present})")
    return engine.ablation_method


def _ablation_relation(engine, params: AnomalyParams, lazy: bool) -> tuple[str, str]:
    """(select list, join) adding the ablation columns of ``params``'s method to
    ``positions p``. No ablations (or the chosen method absent): typed nulls, no join.
    Several methods and none chosen: nulls, or with ``lazy`` a DuckDB error when read."""
    methods = engine.ablation_methods = ablation_methods(engine)
    method = params.ablation_method or (methods[0] if len(methods) == 1 else None)
    engine.ablation_method = method if method in methods else None
    if engine.ablation_method is None:
        value = (f"error({sql_string(_ambiguous_methods(methods))})" if lazy and
                 params.ablation_method is None and len(methods) > 1 else "NULL")
        return ", ".join(f"{value}::DOUBLE AS {c}" for c in ABLATION_COLUMNS), ""
    averages = ", ".join(f"avg({c})::DOUBLE AS {c}" for c in ABLATION_COLUMNS)
    join = (f"LEFT JOIN (SELECT seq_id, pos, {averages} FROM ablations "
            f"WHERE method = {sql_string(engine.ablation_method)} GROUP BY seq_id, pos) a "
            "ON a.seq_id = p.seq_id AND a.pos = p.pos")
    return ", ".join(f"a.{c}" for c in ABLATION_COLUMNS), join


def create_anomaly_views(engine, params: AnomalyParams, *, compute: bool = True) -> None:
    """(Re)create ``position_z``, ``anomalies`` and ``anomaly_regions`` for ``params``;
    ``compute=False`` never runs (or caches) the robust statistics pass up front."""
    params.validate()
    scoring = engine.atlas.manifest.scoring
    column = params.column or default_column(scoring)
    engine.anomaly_column = column
    if column is None:
        return  # likelihood none: no scores to rank
    stats = _stats_relation(engine, column, compute)
    ablation_columns, ablation_join = _ablation_relation(engine, params, lazy=not compute)
    copy_columns = ", p.copy_offset, p.copy_strand" if "copy_offset" in \
        engine.position_columns else ", NULL::INTEGER AS copy_offset, NULL::VARCHAR AS copy_strand"
    before = (params.smooth - 1) // 2
    after = params.smooth - 1 - before
    z = "z0" if params.smooth == 1 else (
        f"avg(z0) OVER (PARTITION BY seq_id ORDER BY pos ROWS BETWEEN {before} PRECEDING "
        f"AND {after} FOLLOWING)")
    con = engine.con
    con.execute(f"CREATE OR REPLACE VIEW robust_stats AS {stats}")
    con.execute(f"""CREATE OR REPLACE VIEW position_z AS
        WITH scored AS (
            SELECT p.seq_id, p.pos, p.ref, p.soft_masked, p."{column}" AS score,
                   (p."{column}" - st.median) / st.scale AS z0,
                   p.window_start, p.window_end{copy_columns},
                   p."{column}" - st.median AS excess, {ablation_columns}
            FROM positions p JOIN robust_stats st ON p.ref = st.ref {ablation_join}
            WHERE p."{column}" IS NOT NULL),
        zs AS (SELECT * EXCLUDE (z0), {z} AS z FROM scored)
        SELECT * EXCLUDE (excess, {", ".join(ABLATION_COLUMNS)}),
               CASE WHEN z >= {params.z!r} THEN 'high' WHEN z <= {-params.z!r} THEN 'low'
               END AS tail, excess, {", ".join(ABLATION_COLUMNS)}
        FROM zs""")
    con.execute(f"CREATE OR REPLACE VIEW anomalies AS SELECT * FROM position_z "
                f"WHERE {TAIL_PREDICATES[params.tail]}")
    con.execute(f"CREATE OR REPLACE VIEW anomaly_regions AS {_regions_sql(params)}")


def variant_scores_sql(letters: str, strands: str) -> str:
    """The body of the ``variant_scores`` view: each scorable site of the stored variant
    sets with its LLR from the stored distributions, per strand and mean, and the site's
    entropy and in-context copy."""
    lit = sql_string(letters)
    fwd = (f"p.letter_logp[instr({lit}, v.alt)] - p.letter_logp[instr({lit}, v.ref)]")
    rc = (f"p.letter_logp_rc[instr({lit}, v.alt)] - p.letter_logp_rc[instr({lit}, v.ref)]")
    llr = f"({fwd} + {rc}) / 2" if strands == "both" else fwd
    return f"""SELECT v.* EXCLUDE (llr), {llr} AS llr, {fwd} AS llr_fwd, {rc} AS llr_rc, p.entropy,
                      p.copy_offset, p.copy_strand
               FROM variants v LEFT JOIN positions p ON p.seq_id = v.seq_id AND p.pos = v.pos
               WHERE v.problem IS NULL"""


def _icl_regions_sql() -> str:
    """One row per probed target (see the module doc); the overlap is a range join."""
    key = "seq_id, target_start, target_end, method, seed"
    targets = f"""
        SELECT {key}, target_end - target_start AS length, count(*) AS n_probed,
               any_value(partner_start) AS partner_start, any_value(partner_end) AS partner_end,
               any_value(copy_strand) AS copy_strand,
               any_value(partner_start) - target_start AS copy_distance,
               any_value(control_start) AS control_start, any_value(control_end) AS control_end,
               any_value(control_rule) AS control_rule,
               any_value(window_start) AS window_start, any_value(window_end) AS window_end,
               avg(logp_intact)::DOUBLE AS mean_logp_intact,
               avg(icl_gain)::DOUBLE AS mean_icl_gain,
               avg(control_gain)::DOUBLE AS mean_control_gain,
               avg(net_gain)::DOUBLE AS mean_net_gain
        FROM ablations GROUP BY {key}"""
    bounds = f'SELECT DISTINCT seq_id, target_start AS start, target_end AS "end" FROM ({targets})'
    return f"""
        WITH targets AS ({targets}),
        hits AS (
            SELECT seq_id, start, "end",
                   string_agg(DISTINCT repeat_class, ',' ORDER BY repeat_class) AS repeat_classes
            FROM ({repeat_overlaps_sql(bounds)})
            WHERE repeat_class <> {sql_string(COPY_REPEAT_CLASS)}
            GROUP BY seq_id, start, "end")
        SELECT t.*, hits.repeat_classes
        FROM targets t LEFT JOIN hits ON hits.seq_id = t.seq_id
             AND hits.start = t.target_start AND hits."end" = t.target_end"""


def require_scores(engine, what: str) -> str:
    """The engine's anomaly score column; a ConfigError saying that ``what`` (a command)
    needs likelihood scores when the atlas was ingested with ``--likelihood none``."""
    if engine.anomaly_column is None:
        raise ConfigError(f"{engine.atlas.path} was ingested with --likelihood none: it has no "
                          f"likelihood scores, which {what} needs; re-ingest with --likelihood "
                          "exact, fast or unmasked into a new --atlas")
    return engine.anomaly_column


def repeat_overlaps_sql(intervals: str) -> str:
    """SQL pairing each row of ``intervals`` (a relation with seq_id, start, end) with every
    repeat sharing at least one base with it.

    Both sides are moved to global coordinates (sequence offset + position) so the join
    condition is a pure inequality and DuckDB plans a range join (IEJoin); an extra
    ``seq_id`` equality would make it a hash join per sequence. A zero-length interval
    [x, x) counts as the point between bases x-1 and x: it overlaps intervals containing both.
    """
    return f"""
        SELECT i.* EXCLUDE (g_start, g_end), rp.start AS repeat_start, rp."end" AS repeat_end,
               rp.name AS repeat_name, rp.class AS repeat_class, rp.family AS repeat_family
        FROM (SELECT x.*, s.global_start + x.start AS g_start, s.global_start + x."end" AS g_end
              FROM ({intervals}) x JOIN sequences s USING (seq_id)) i
        JOIN repeats_global rp ON rp.gstart < i.g_end AND i.g_start < rp.gend"""
