"""The query engine: the sandbox (:mod:`seqatlas.query.sandbox`) with the views of
:mod:`seqatlas.query.views` over it (the anomaly views, ``icl_regions`` and
``variant_scores``).

A region engine (``Engine(..., region=...)``) reads only the parts, and inside compacted
files only the row groups, that hold the region; its tables with coordinates keep only the
region's rows, and the views built on them follow. What must stay the whole atlas's does:
the robust z statistics (median and MAD per reference letter, from the cache or computed
over every positions part) and the ablation methods (and seeds) the atlas holds. Smoothing
of z and the runs of ``anomaly_regions`` see the region's rows only; :func:`region_engine`
pads the region until, inside it, they are exactly the whole atlas's (what the plot tracks
and ``export --region`` read).
"""

from __future__ import annotations

from seqatlas.query.sandbox import (REGION_KEYS, Sandbox, SqlConfig, resolve_region,
                                    sequence_lengths)
from seqatlas.query.views import (AnomalyParams, _icl_regions_sql, cached_stats,
                                  create_anomaly_views, default_column, variant_scores_sql)
from seqatlas.store import AtlasReader

# how far a region engine of :func:`region_engine` first reads beyond the region, in
# positions (on top of the smoothing window and the merge gap); it grows 8-fold until the
# region's z and anomalous regions are exact
FIRST_PAD = 256


class Engine(Sandbox):
    """The sandboxed engine with the anomaly views (``position_z``, ``anomalies``,
    ``anomaly_regions``, ``robust_stats``) for ``anomaly_params``, and ``icl_regions``.

    ``robust_pass=True`` computes and caches the robust statistics now (what ``anomalies``,
    ``enrichment`` and ``export`` do); without it nothing is computed or written until a
    query reads the views. ``anomaly_views=False`` leaves them out.

    ``region`` (``SEQ:START-END``, ``SEQ`` or ``(seq_id, start, end)``, 0-based half-open):
    a region engine (see the module docstring and :class:`~seqatlas.query.sandbox.Sandbox`);
    the robust statistics stay the whole atlas's: the cached ones, else computed over all the
    positions parts (now with ``robust_pass``, else when a query reads them).
    """

    def __init__(self, atlas, config: SqlConfig | None = None,
                 anomaly_params: AnomalyParams | None = None, *, anomaly_views: bool = True,
                 robust_pass: bool = False, region=None):
        self.anomaly_params = anomaly_params or AnomalyParams()
        self.anomaly_column = None
        self.ablation_methods: tuple[str, ...] = ()  # in the atlas (set with the views)
        self.ablation_method: str | None = None  # whose values position_z carries
        self._anomaly_views = anomaly_views
        super().__init__(atlas, config, region=region)
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

    def _create_views(self) -> list[str]:
        allowed = super()._create_views()
        if self.region is not None:
            for table in self._whole_tables():
                allowed += self._add_whole(table)
        return allowed

    def _whole_tables(self) -> list[str]:
        """What a region engine reads whole: the ablations (the methods and seeds the atlas
        holds) and, while the robust statistics of the score column are not cached, the
        positions (to compute them)."""
        tables = ["ablations"] if self.atlas.count("ablations") else []
        if self._anomaly_views:
            column = self.anomaly_params.column or default_column(self.atlas.manifest.scoring)
            if column is not None and cached_stats(self.atlas, column) is None:
                tables.append("positions")
        return [t for t in tables if t in REGION_KEYS]


def region_engine(atlas, region, config: SqlConfig | None = None,
                  anomaly_params: AnomalyParams | None = None, *, robust_pass: bool = True,
                  regions: bool = True) -> tuple[Engine, tuple[str, int, int]]:
    """A region engine over ``region`` padded (on the same sequence) so that, inside
    ``region``, ``position_z`` (z smoothed over rows beyond its edges included) and, with
    ``regions``, every row of ``anomaly_regions`` overlapping it are exactly those of the
    whole atlas; returns it and the region as ``(seq_id, start, end)``.

    The padding starts at :data:`FIRST_PAD` positions and grows 8-fold until it is exact:
    every position of the region has its whole smoothing window inside the padded window
    (or the window reaches the sequence's end), and between the region and each cut edge of
    the window lie ``max_gap + 1`` consecutive positions with exact z and none anomalous, so
    no run or merge of anomalous positions crosses the cut. The caller filters its queries to
    the region.
    """
    reader = atlas if isinstance(atlas, AtlasReader) else AtlasReader(atlas)
    lengths = sequence_lengths(reader)
    span = resolve_region(reader, region, lengths)
    seq_id, start, end = span
    params = anomaly_params or AnomalyParams()
    params.validate()
    pad = FIRST_PAD + params.smooth + params.max_gap
    while True:
        window = (seq_id, max(0, start - pad), min(lengths[seq_id], end + pad))
        engine = Engine(reader, config, params, robust_pass=robust_pass, region=window)
        try:
            if window[1:] == (0, lengths[seq_id]) or \
                    _exact_inside(engine, span, lengths[seq_id], regions):
                return engine, span
        except BaseException:
            engine.close()
            raise
        engine.close()
        pad *= 8


def _exact_inside(engine: Engine, span: tuple[str, int, int], length: int,
                  regions: bool) -> bool:
    """Whether ``engine``'s (a region engine's) z inside ``span``, and with ``regions`` its
    anomalous regions overlapping ``span``, are the whole atlas's (see
    :func:`region_engine`)."""
    if engine.anomaly_column is None:
        return True
    params = engine.anomaly_params
    _, start, end = span
    _, low, high = engine.region
    before = (params.smooth - 1) // 2
    after = params.smooth - 1 - before
    # rows before the `before`-th (after the last but `after`) lack rows of their
    # smoothing window when the window is cut there
    row = engine.fetch_internal(f"""
        WITH r AS (SELECT pos, row_number() OVER (ORDER BY pos) - 1 AS i,
                          count(*) OVER () AS n FROM position_z)
        SELECT min(pos) FILTER (i = {before}) AS first, max(pos) FILTER (i = n - 1 - {after})
               AS last, count(*) AS n FROM r""").to_pylist()[0]
    if row["n"] == 0:
        return True  # nothing scored in the window: none in the region either
    if row["first"] is None or row["last"] is None:
        return False
    exact_low = low if low == 0 else row["first"]
    exact_high = high if high == length else row["last"] + 1
    if not regions:
        return exact_low <= start and end <= exact_high
    gap = params.max_gap + 1
    guards = []
    if low > 0:
        if exact_low + gap > start:
            return False
        guards.append((exact_low, exact_low + gap))
    if high < length:
        if exact_high - gap < end:
            return False
        guards.append((exact_high - gap, exact_high))
    for lo, hi in guards:
        hits = engine.fetch_internal("SELECT count(*) AS n FROM anomalies WHERE pos >= $1 "
                                     "AND pos < $2", [lo, hi])["n"][0].as_py()
        if hits:
            return False
    return True
