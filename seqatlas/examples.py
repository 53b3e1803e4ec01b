"""The bundled demo data and ``demo``: the embedded default end to end on real proteins."""

from __future__ import annotations

import tempfile
from importlib import resources
from pathlib import Path

DEMO_FASTA = "demo_proteins.fa"


def demo_fasta() -> Path:
    """Path of the bundled demo FASTA (8 antibody domains, 2 ankyrin-repeat proteins)."""
    return Path(str(resources.files("seqatlas") / "data" / DEMO_FASTA))


def sequence_summary(atlas) -> list[dict]:
    """Per sequence: length, PLL (sum of logp), mean logp, pseudo-perplexity, top-1 accuracy."""
    import math

    import pyarrow.compute as pc

    positions = atlas.positions(columns=["seq_id", "logp", "logp_unmasked", "rank"])
    table = positions.append_column("top1", pc.equal(positions["rank"], 1)).group_by(
        "seq_id", use_threads=False).aggregate(
        [("logp", "sum"), ("logp", "mean"), ("logp", "count"), ("logp_unmasked", "mean"),
         ("top1", "mean")])
    order = {s: i for i, s in enumerate(atlas.sequences(columns=["seq_id"])["seq_id"]
                                        .to_pylist())}
    rows = []
    for row in table.to_pylist():
        mean = row["logp_mean"]
        rows.append({
            "seq_id": row["seq_id"],
            "length": row["logp_count"],
            "pll": row["logp_sum"],
            "mean_logp": mean,
            "pseudo_perplexity": math.exp(-mean) if mean is not None else None,
            "mean_logp_unmasked": row["logp_unmasked_mean"],
            "top1_accuracy": row["top1_mean"],
        })
    return sorted(rows, key=lambda r: order[r["seq_id"]])


def demo(*, atlas: str | Path | None = None, workers: int | None = None,
         progress: bool = True) -> dict:
    """Ingest the bundled proteins with AntiBERTy (exact mode) and summarise the atlas."""
    import seqatlas
    from seqatlas.atlas import Atlas

    path = Path(atlas) if atlas else Path(tempfile.mkdtemp(prefix="seqatlas-demo-"))
    report = seqatlas.ingest(demo_fasta(), atlas=path, model="antiberty", likelihood="exact",
                             workers=workers, progress=progress)
    result = Atlas(path)
    return {"atlas": str(path), "report": report.as_dict(), "info": result.summary(),
            "sequences": sequence_summary(result)}
