"""The bundled demo data and ``demo``: both embedded models end to end on real sequences."""

from __future__ import annotations

import math
import tempfile
from importlib import resources
from pathlib import Path

DEMO_FASTA = "demo_proteins.fa"
DEMO_DNA = "demo_chrx.fa"


def demo_fasta() -> Path:
    """Path of the bundled demo proteins (8 antibody domains, 2 ankyrin-repeat proteins)."""
    return Path(str(resources.files("seqatlas") / "data" / DEMO_FASTA))


def demo_dna() -> Path:
    """Path of the bundled demo DNA: 3 kb of human chrX (62,844,500-62,847,500, GRCh37),
    inside the region held out from dnabert6-tiny's training, with tandem repeats."""
    return Path(str(resources.files("seqatlas") / "data" / DEMO_DNA))


def sequence_summary(atlas) -> list[dict]:
    """Per sequence: length, PLL (sum of logp), mean logp, pseudo-perplexity, top-1 accuracy,
    and with both strands scored, the reverse strand's mean logp."""
    import pyarrow.compute as pc

    positions = atlas.positions(columns=["seq_id", "logp", "logp_rc", "rank"])
    table = positions.append_column("top1", pc.equal(positions["rank"], 1)).group_by(
        "seq_id", use_threads=False).aggregate(
        [("logp", "sum"), ("logp", "mean"), ("logp", "count"), ("logp_rc", "mean"),
         ("top1", "mean")])
    order = {s: i for i, s in enumerate(atlas.sequences(columns=["seq_id"])["seq_id"]
                                        .to_pylist())}
    rows = []
    for row in table.to_pylist():
        mean = row["logp_mean"]
        rows.append({
            "seq_id": row["seq_id"],
            "scored": row["logp_count"],
            "pll": row["logp_sum"],
            "mean_logp": mean,
            "mean_logp_rc": row["logp_rc_mean"],
            "pseudo_perplexity": math.exp(-mean) if mean is not None else None,
            "top1_accuracy": row["top1_mean"],
        })
    return sorted(rows, key=lambda r: order[r["seq_id"]])


def demo(*, atlas: str | Path | None = None, workers: int | None = None,
         progress: bool | str = True) -> dict:
    """Ingest the bundled proteins with AntiBERTy (exact PLL terms) and 3 kb of held-out
    human chrX with dnabert6-tiny (fast mode, both strands), each into its own atlas under
    ``atlas``."""
    import seqatlas
    from seqatlas.atlas import Atlas

    root = Path(atlas) if atlas else Path(tempfile.mkdtemp(prefix="seqatlas-demo-"))
    runs = {
        "proteins": (demo_fasta(), {"model": "antiberty", "likelihood": "exact"}),
        "dna": (demo_dna(), {"model": "dnabert6-tiny", "likelihood": "fast",
                             "strands": "both", "embeddings": False}),
    }
    summary = {"atlas": str(root)}
    for name, (fasta, options) in runs.items():
        report = seqatlas.ingest(fasta, atlas=root / name, workers=workers, progress=progress,
                                 **options)
        result = Atlas(root / name)
        summary[name] = {"atlas": str(root / name), "report": report.as_dict(),
                         "info": result.summary(), "sequences": sequence_summary(result)}
    return summary
