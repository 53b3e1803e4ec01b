"""``anomalies``: the anomalous regions of an atlas, optionally with the repeats they overlap.

Regions are the rows of the ``anomaly_regions`` view (:mod:`seqatlas.query.views`), with
how much of each the in-context look-up explains (``n_probed``, ``net_gain``,
``explained_fraction``; null where the atlas has no ablations). ``with_repeats`` adds
``explained_by_copy`` (at least half the anomalous positions have an in-context copy),
``explained_by_lookup`` (explained_fraction >= 0.5; null when nothing was probed) and the
repeat classes and names the region overlaps.
"""

from __future__ import annotations

from dataclasses import asdict

import pyarrow as pa

from seqatlas.query.sandbox import arrow_table
from seqatlas.query.engine import Engine
from seqatlas.query.views import (AnomalyParams, repeat_overlaps_sql, require_ablation_method,
                                  require_scores)

_REGION_BOUNDS = 'SELECT seq_id, start, "end", tail FROM anomaly_regions'
REGIONS_WITH_REPEATS = f"""
    WITH hits AS (
        SELECT seq_id, start, tail,
               string_agg(DISTINCT repeat_class, ',' ORDER BY repeat_class) AS repeat_classes,
               string_agg(DISTINCT repeat_name, ',' ORDER BY repeat_name) AS repeat_names
        FROM ({repeat_overlaps_sql(_REGION_BOUNDS)})
        GROUP BY seq_id, start, tail)
    SELECT r.*, r.copy_fraction >= 0.5 AS explained_by_copy,
           r.explained_fraction >= 0.5 AS explained_by_lookup, hits.repeat_classes,
           hits.repeat_names
    FROM anomaly_regions r JOIN sequences s USING (seq_id)
    LEFT JOIN hits ON hits.seq_id = r.seq_id AND hits.start = r.start AND hits.tail = r.tail
    ORDER BY s.global_start + r.start, r.tail"""


def anomalies(atlas, *, params: AnomalyParams | None = None, with_repeats: bool = False,
              config=None) -> pa.Table:
    """Anomalous regions of an atlas (optionally with the repeat classes they overlap)."""
    params = params or AnomalyParams()
    with Engine(atlas, config, anomaly_params=params, robust_pass=True) as engine:
        require_scores(engine, "`query anomalies`")
        require_ablation_method(engine)
        if with_repeats:
            return arrow_table(engine.execute_internal(REGIONS_WITH_REPEATS))
        return arrow_table(engine.execute_internal(
            """SELECT r.* FROM anomaly_regions r JOIN sequences s USING (seq_id)
               ORDER BY s.global_start + r.start, r.tail"""))


def params_summary(params: AnomalyParams, column: str) -> dict:
    return {**asdict(params), "column": column}
