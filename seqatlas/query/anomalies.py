"""Likelihood anomalies: robust z-scores per reference letter, anomalous runs, repeat overlap.

``z = (score - median) / (1.4826 * MAD)``, with the median and MAD of the score column over
all scored positions of the same reference letter (one model per atlas). They are computed
once and cached in ``atlas.json`` under ``cache`` (keyed by column and the committed
positions parts), so later queries skip the pass. With ``smooth = W`` the z-score is the mean
of the per-position z over W consecutive scored rows centred on the position.

Views created in every :class:`~seqatlas.query.engine.Engine`:

- ``position_z``: every scored position with ``score``, ``z`` and ``tail`` (``high`` when
  z >= threshold, ``low`` when z <= -threshold, else null).
- ``anomalies``: the rows of ``position_z`` in the selected tail(s).
- ``anomaly_regions``: runs of at least ``min_length`` consecutive anomalous positions of one
  tail, then runs separated by at most ``max_gap`` other positions merged; 0-based half-open.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import pyarrow as pa

from seqatlas.errors import AtlasError, ConfigError

SCORE_COLUMNS = ("logp", "logp_unmasked", "logp_rc", "logp_unmasked_rc", "logp_mean",
                 "logp_unmasked_mean", "entropy")
TAILS = ("high", "low", "both")
MAD_TO_SD = 1.4826  # MAD of a normal distribution times this is its standard deviation


@dataclass
class AnomalyParams:
    """What counts as anomalous; defaults suit a first look at a genome or proteome."""

    column: str | None = None  # None: logp, or the strand mean / unmasked value (see below)
    z: float = 3.0  # |z| threshold
    tail: str = "both"  # high | low | both
    smooth: int = 1  # rolling mean of z over this many positions (1 = none)
    min_length: int = 3  # positions in a run before it is a region
    max_gap: int = 2  # runs at most this many positions apart are merged

    def validate(self) -> None:
        if self.column is not None and self.column not in SCORE_COLUMNS:
            raise ConfigError(f"--column must be one of {', '.join(SCORE_COLUMNS)}, not "
                              f"{self.column!r}")
        if self.tail not in TAILS:
            raise ConfigError(f"--tail must be one of {', '.join(TAILS)}, not {self.tail!r}")
        if self.z <= 0:
            raise ConfigError("--z must be positive")
        if self.smooth < 1:
            raise ConfigError("--smooth must be 1 (no smoothing) or more")
        if self.min_length < 1 or self.max_gap < 0:
            raise ConfigError("--min-length must be 1 or more and --max-gap 0 or more")


def default_column(scoring: dict) -> str | None:
    """The atlas's main likelihood column: masked logp, else unmasked; strand mean if both."""
    mode = scoring.get("likelihood")
    suffix = "_mean" if scoring.get("strands") == "both" else ""
    if mode in ("exact", "fast"):
        return "logp" + suffix
    if mode == "unmasked":
        return "logp_unmasked" + suffix
    return None


def _parts_key(atlas) -> str:
    names = sorted(atlas.manifest["parts"].get("positions", {}))
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def robust_stats(engine, column: str) -> dict[str, dict]:
    """Median, scaled MAD and count of ``column`` per reference letter (cached in the atlas)."""
    atlas = engine.atlas
    key = _parts_key(atlas)
    cached = atlas.manifest.get("cache", {}).get("robust_z", {}).get(column)
    if cached and cached.get("parts") == key:
        return cached["by_ref"]
    rows = engine.execute_internal(f"""
        SELECT ref, median(x) AS median, mad(x) AS mad, avg(abs(x - m)) AS mean_abs, count(*)
        FROM (SELECT ref, "{column}" AS x, median("{column}") OVER (PARTITION BY ref) AS m
              FROM positions WHERE "{column}" IS NOT NULL)
        GROUP BY ref ORDER BY ref""").fetchall()
    by_ref = {}
    for ref, median, mad, mean_abs, count in rows:
        # A letter whose scores are mostly identical has MAD 0; the mean absolute deviation
        # (times sqrt(pi/2), a normal's SD) keeps its z finite. Both 0: z is null.
        scale = MAD_TO_SD * mad if mad else (1.2533 * mean_abs if mean_abs else None)
        by_ref[ref] = {"median": float(median), "scale": scale, "count": int(count)}
    _store_cache(atlas, column, {"parts": key, "by_ref": by_ref})
    return by_ref


def _store_cache(atlas, column: str, value: dict) -> None:
    """Record in the manifest when the atlas is writable and not being written; else skip."""
    from seqatlas.atlas import AtlasWriter

    try:
        with AtlasWriter(atlas.path) as writer:
            if _parts_key(writer) != value["parts"]:
                return  # an ingest committed parts since; the next query recomputes
            writer.set_cache(("robust_z", column), value)
            atlas.manifest = writer.manifest
    except (AtlasError, OSError):
        pass


def create_anomaly_views(engine, params: AnomalyParams) -> None:
    """(Re)create ``position_z``, ``anomalies`` and ``anomaly_regions`` for ``params``."""
    params.validate()
    scoring = engine.atlas.manifest["scoring"]
    column = params.column or default_column(scoring)
    engine.anomaly_column = column
    if column is None:
        return  # likelihood none: no scores to rank
    by_ref = robust_stats(engine, column)
    values = ", ".join(f"({_literal(ref)}, {s['median']!r}, "
                       f"{'NULL' if s['scale'] is None else repr(s['scale'])})"
                       for ref, s in by_ref.items())
    stats = (f"SELECT * FROM (VALUES {values}) t(ref, median, scale)" if values else
             "SELECT NULL::VARCHAR AS ref, NULL::DOUBLE AS median, NULL::DOUBLE AS scale "
             "WHERE false")
    copy_columns = ", p.copy_offset, p.copy_strand" if "copy_offset" in \
        engine.position_columns else ", NULL::INTEGER AS copy_offset, NULL::VARCHAR AS copy_strand"
    before = (params.smooth - 1) // 2
    after = params.smooth - 1 - before
    z = "z0" if params.smooth == 1 else (
        f"avg(z0) OVER (PARTITION BY seq_id ORDER BY pos ROWS BETWEEN {before} PRECEDING "
        f"AND {after} FOLLOWING)")
    tails = {"high": "tail = 'high'", "low": "tail = 'low'", "both": "tail IS NOT NULL"}
    con = engine.con
    con.execute(f"CREATE OR REPLACE VIEW robust_stats AS {stats}")
    con.execute(f"""CREATE OR REPLACE VIEW position_z AS
        WITH scored AS (
            SELECT p.seq_id, p.pos, p.ref, p.soft_masked, p."{column}" AS score,
                   (p."{column}" - st.median) / st.scale AS z0,
                   p.window_start, p.window_end{copy_columns}
            FROM positions p JOIN robust_stats st ON p.ref = st.ref
            WHERE p."{column}" IS NOT NULL),
        zs AS (SELECT * EXCLUDE (z0), {z} AS z FROM scored)
        SELECT *, CASE WHEN z >= {params.z!r} THEN 'high' WHEN z <= {-params.z!r} THEN 'low'
                  END AS tail
        FROM zs""")
    con.execute(f"CREATE OR REPLACE VIEW anomalies AS SELECT * FROM position_z "
                f"WHERE {tails[params.tail]}")
    con.execute(f"""CREATE OR REPLACE VIEW anomaly_regions AS
        WITH steps AS (
            SELECT seq_id, pos, tail, z, copy_offset IS NOT NULL AS has_copy,
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
                   count(*) FILTER (has_copy) AS n_copy
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
               sum(n_copy) / sum(n) AS copy_fraction
        FROM regions GROUP BY seq_id, tail, region""")


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


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


_REGION_BOUNDS = 'SELECT seq_id, start, "end", tail FROM anomaly_regions'
REGIONS_WITH_REPEATS = f"""
    WITH hits AS (
        SELECT seq_id, start, tail,
               string_agg(DISTINCT repeat_class, ',' ORDER BY repeat_class) AS repeat_classes,
               string_agg(DISTINCT repeat_name, ',' ORDER BY repeat_name) AS repeat_names
        FROM ({repeat_overlaps_sql(_REGION_BOUNDS)})
        GROUP BY seq_id, start, tail)
    SELECT r.*, r.copy_fraction >= 0.5 AS explained_by_copy, hits.repeat_classes,
           hits.repeat_names
    FROM anomaly_regions r JOIN sequences s USING (seq_id)
    LEFT JOIN hits ON hits.seq_id = r.seq_id AND hits.start = r.start AND hits.tail = r.tail
    ORDER BY s.global_start + r.start, r.tail"""


def anomalies(atlas, *, params: AnomalyParams | None = None, with_repeats: bool = False,
              config=None) -> pa.Table:
    """Anomalous regions of an atlas (optionally with the repeat classes they overlap)."""
    from seqatlas.query.engine import Engine, arrow_table

    params = params or AnomalyParams()
    with Engine(atlas, config, anomaly_params=params) as engine:
        if engine.anomaly_column is None:
            raise ConfigError(f"{engine.atlas.path} was ingested with --likelihood none: it "
                              "has no scores to find anomalies in")
        if with_repeats:
            return arrow_table(engine.execute_internal(REGIONS_WITH_REPEATS))
        return arrow_table(engine.execute_internal(
            """SELECT r.* FROM anomaly_regions r JOIN sequences s USING (seq_id)
               ORDER BY s.global_start + r.start, r.tail"""))


def params_summary(params: AnomalyParams, column: str) -> dict:
    return {**asdict(params), "column": column}
