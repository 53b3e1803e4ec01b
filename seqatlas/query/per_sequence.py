"""Per-sequence likelihood summaries, computed in DuckDB so a genome-scale atlas is never
read into memory: length, scored positions, PLL (the sum of the atlas's likelihood column),
mean logp, pseudo-perplexity exp(-mean logp), top-1 accuracy, and with both strands scored
the reverse strand's mean."""

from __future__ import annotations

import math

from seqatlas.query.views import default_column
from seqatlas.query.sandbox import Sandbox


def sequence_summary(atlas, *, limit: int | None = None, config=None) -> list[dict]:
    """One dict per sequence, in atlas order (the first ``limit`` when given): seq_id,
    length, scored, pll, mean_logp, mean_logp_rc (None unless both strands were scored),
    pseudo_perplexity, top1_accuracy. The scores are the forward strand's values of the
    atlas's likelihood column (masked logp, or unmasked for an unmasked atlas)."""
    with Sandbox(atlas, config) as engine:
        scoring = engine.atlas.manifest.scoring
        column = default_column(scoring)
        if column is None:
            return []
        forward = column.removesuffix("_mean")
        reverse = f'avg(p."{forward}_rc")' if scoring.strands == "both" else "NULL"
        bound = f"LIMIT {int(limit)}" if limit is not None else ""
        rows = engine.fetch_internal(f"""
            WITH chosen AS (SELECT seq_id, length, ordinal FROM sequences
                            ORDER BY ordinal {bound})
            SELECT c.seq_id, any_value(c.length) AS length,
                   count(p."{forward}") AS scored, sum(p."{forward}") AS pll,
                   avg(p."{forward}") AS mean_logp, {reverse} AS mean_logp_rc,
                   avg(CASE WHEN p."{forward}" IS NULL THEN NULL
                            ELSE (p.rank = 1)::DOUBLE END) AS top1_accuracy
            FROM chosen c LEFT JOIN positions p USING (seq_id)
            GROUP BY c.seq_id, c.ordinal ORDER BY c.ordinal""").to_pylist()
    for row in rows:
        mean = row["mean_logp"]
        row["pseudo_perplexity"] = math.exp(-mean) if mean is not None else None
    return rows
