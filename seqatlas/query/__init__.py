"""DuckDB queries over an atlas: sandboxed SQL, anomalies, enrichment, browser tracks,
nearest k-mers in embedding space and the identity/context diagnostic.

Nothing here imports torch, ray or faiss until a k-mer is embedded or an index is searched.
"""

from __future__ import annotations

import os

import pyarrow as pa

from seqatlas.query.engine import Engine
from seqatlas.query.identity_context import IdentityConfig, identity
from seqatlas.query.neighbours import KnnConfig, knn
from seqatlas.query.regions import anomalies
from seqatlas.query.repeat_enrichment import enrichment
from seqatlas.query.tracks import export
from seqatlas.query.sandbox import SqlConfig
from seqatlas.query.sequence_search import SimilarConfig, similar
from seqatlas.query.views import AnomalyParams

__all__ = ["AnomalyParams", "Engine", "IdentityConfig", "KnnConfig", "SimilarConfig",
           "SqlConfig", "anomalies", "enrichment", "export", "identity", "knn", "similar", "sql"]


def sql(atlas, query: str, *, output: str | os.PathLike | None = None,
        format: str = "parquet", params: AnomalyParams | None = None,
        config: SqlConfig | None = None, region=None) -> pa.Table | int:
    """Run one read-only ``SELECT`` over the atlas's views, sandboxed.

    Returns the result as an Arrow table, or, with ``output``, streams it into that file
    (``format`` csv, json or parquet) and returns the row count. ``params`` shapes the
    ``anomalies`` views; ``config`` sets the timeout, memory limit and threads. Nothing is
    computed up front and the atlas is never written.

    ``region`` (``SEQ:START-END``, 0-based half-open, or ``SEQ`` for a whole sequence; or
    ``(seq_id, start, end)``): the views of positions, tokens, repeats, ablations and
    variants hold only the region's rows (intervals: those sharing a base with it), read
    from the parts and row groups that hold it; ``sequences`` stays whole, and z uses the
    whole atlas's robust statistics (see :class:`~seqatlas.query.engine.Engine`). A region
    that is not in the atlas is an InputError naming it and the valid range.
    """
    with Engine(atlas, config, anomaly_params=params, region=region) as engine:
        if output is not None:
            return engine.run_to_file(query, output, format)
        return engine.run(query)
