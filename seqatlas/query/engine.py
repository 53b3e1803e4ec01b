"""The query engine: the sandbox (:mod:`seqatlas.query.sandbox`) with the views of
:mod:`seqatlas.query.views` over it (the anomaly views, ``icl_regions`` and
``variant_scores``).
"""

from __future__ import annotations

from seqatlas.query.sandbox import Sandbox, SqlConfig
from seqatlas.query.views import (AnomalyParams, _icl_regions_sql, create_anomaly_views,
                                  variant_scores_sql)


class Engine(Sandbox):
    """The sandboxed engine with the anomaly views (``position_z``, ``anomalies``,
    ``anomaly_regions``, ``robust_stats``) for ``anomaly_params``, and ``icl_regions``.

    ``robust_pass=True`` computes and caches the robust statistics now (what ``anomalies``,
    ``enrichment`` and ``export`` do); without it nothing is computed or written until a
    query reads the views. ``anomaly_views=False`` leaves them out.
    """

    def __init__(self, atlas, config: SqlConfig | None = None,
                 anomaly_params: AnomalyParams | None = None, *, anomaly_views: bool = True,
                 robust_pass: bool = False):
        super().__init__(atlas, config)
        self.anomaly_params = anomaly_params or AnomalyParams()
        self.anomaly_column = None
        self.ablation_methods: tuple[str, ...] = ()  # in the atlas (set with the views)
        self.ablation_method: str | None = None  # whose values position_z carries
        try:
            self.con.execute(f"CREATE OR REPLACE VIEW icl_regions AS {_icl_regions_sql()}")
            scoring = self.atlas.manifest.scoring
            if scoring is not None and scoring.stores_distributions():
                self.con.execute("CREATE OR REPLACE VIEW variant_scores AS " +
                                 variant_scores_sql(scoring.distribution_letters,
                                                    scoring.strands))
            if anomaly_views:
                create_anomaly_views(self, self.anomaly_params, compute=robust_pass)
        except BaseException:
            self.close()
            raise
