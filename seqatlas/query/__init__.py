"""DuckDB queries over an atlas: sandboxed SQL, anomalies, enrichment, browser tracks,
nearest k-mers in embedding space and the identity/context diagnostic.

Nothing here imports torch or ray.
"""

from __future__ import annotations

import os

import pyarrow as pa

from seqatlas.query.anomalies import AnomalyParams, anomalies
from seqatlas.query.engine import Engine, SqlConfig
from seqatlas.query.enrichment import enrichment
from seqatlas.query.tracks import export

# the functions, bound after their modules so they own the names seqatlas.query.knn/identity
from seqatlas.query.identity import IdentityConfig, identity  # noqa: E402
from seqatlas.query.knn import KnnConfig, knn  # noqa: E402

__all__ = ["AnomalyParams", "Engine", "IdentityConfig", "KnnConfig", "SqlConfig", "anomalies",
           "enrichment", "export", "identity", "knn", "sql"]


def sql(atlas, query: str, *, output: str | os.PathLike | None = None,
        format: str = "parquet", params: AnomalyParams | None = None,
        config: SqlConfig | None = None) -> pa.Table | int:
    """Run one read-only ``SELECT`` over the atlas's views, sandboxed.

    Returns the result as an Arrow table, or, with ``output``, streams it into that file
    (``format`` csv, json or parquet) and returns the row count. ``params`` shapes the
    ``anomalies`` views; ``config`` sets the timeout, memory limit and threads.
    """
    with Engine(atlas, config, anomaly_params=params) as engine:
        if output is not None:
            return engine.run_to_file(query, output, format)
        return engine.run(query)
