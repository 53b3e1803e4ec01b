"""``Atlas``: the facade over one atlas directory. Reading comes from
:class:`seqatlas.store.AtlasReader`; the query methods call the ``query`` layer."""

from __future__ import annotations

import os

import pyarrow as pa

from seqatlas import probe as _probe
from seqatlas import query as _query
from seqatlas.store import AtlasReader, AtlasWriter

__all__ = ["Atlas", "AtlasWriter", "info"]


class Atlas(AtlasReader):
    """An atlas directory, readable as Arrow tables and queryable with SQL.

    >>> atlas = Atlas("my_atlas")          # doctest: +SKIP
    >>> atlas.positions(columns=["seq_id", "pos", "logp"])  # doctest: +SKIP
    """

    def sql(self, query: str, *, timeout: float | None = None, **options) -> pa.Table:
        """Run one read-only SELECT over the views (sequences, positions, tokens, repeats,
        position_z, anomalies, anomaly_regions); see :func:`seqatlas.query.sql`."""
        return _query.sql(self, query, config=_query.SqlConfig(timeout=timeout), **options)

    def anomalies(self, *, with_repeats: bool = False, **params) -> pa.Table:
        """Anomalous regions; ``params`` are :class:`seqatlas.query.AnomalyParams` fields."""
        return _query.anomalies(self, params=_query.AnomalyParams(**params),
                               with_repeats=with_repeats)

    def enrichment(self, *, by: str = "class", **params) -> pa.Table:
        """Anomaly enrichment per repeat group; see :func:`seqatlas.query.enrichment`."""
        return _query.enrichment(self, by=by, params=_query.AnomalyParams(**params))

    def knn(self, *, kmer=None, at=None, sequence=None, **options) -> pa.Table:
        """Nearest tokens of k-mers, stored tokens (``at="SEQ:POS"``) or sequences in
        embedding space; ``options`` are :class:`seqatlas.query.KnnConfig` fields."""
        return _query.knn(self, kmer=kmer, at=at, sequence=sequence, **options)

    def probe_icl(self, **options):
        """Rescore the atlas's in-context copies with the partner and a matched control
        corrupted (``ablations`` table); ``options`` are :class:`seqatlas.probe.IclConfig`
        fields. Returns the :class:`seqatlas.probe.IclReport`."""
        report = _probe.probe_icl(self.path, **options)
        self.manifest = AtlasReader(self.path).manifest  # the new parts are visible here
        return report

    def identity(self, **options) -> pa.Table:
        """Identity vs context agreement of embedding neighbours per stored layer;
        ``options`` are :class:`seqatlas.query.IdentityConfig` fields."""
        return _query.identity(self, **options)


def info(atlas: str | os.PathLike) -> dict:
    """Manifest summary, row counts and bytes on disk of an atlas."""
    return AtlasReader(atlas).summary()
