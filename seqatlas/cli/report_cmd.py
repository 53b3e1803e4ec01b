"""``seqatlas report``: one self-contained HTML report of one or more atlases."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from seqatlas.cli.options import (ABLATION_METHOD, MAX_GAP, MIN_LENGTH, SCORE_COLUMN, SMOOTH,
                                  TAIL, Z, AblationMethod, Tail, anomaly_params)
from seqatlas.cli.tables import note


def report(
    atlas: List[str] = typer.Option(..., "--atlas", "-a", help="Atlas directory or URI; repeat "
                                     "--atlas for several atlases in one report."),
    output: Path = typer.Option(..., "--output", "-o", help="The HTML file to write (- for "
                                "stdout); never inside an atlas."),
    doubling: Optional[Path] = typer.Option(None, "--doubling", help="A `seqatlas probe "
                                            "doubling -o` output (Parquet or CSV), shown with "
                                            "the first atlas."),
    top_regions: int = typer.Option(5, "--top-regions", help="Anomalous regions shown with a "
                                    "track each (by peak |z|)."),
    flank: int = typer.Option(50, "--flank", help="Positions drawn on each side of a region."),
    max_sequences: int = typer.Option(500, "--max-sequences", help="Rows of the per-sequence "
                                      "table."),
    identity_sample: int = typer.Option(500, "--identity-sample", help="Tokens sampled by the "
                                        "identity vs context diagnostic."),
    z: float = Z, tail: Tail = TAIL, min_length: int = MIN_LENGTH, max_gap: int = MAX_GAP,
    smooth: int = SMOOTH, score: Optional[str] = SCORE_COLUMN,
    ablation_method: Optional[AblationMethod] = ABLATION_METHOD,
) -> None:
    """Write one self-contained HTML file (images inlined, no network) with what each atlas
    holds: manifest summary, per-sequence likelihoods, distributions, the top anomalous
    regions with their tracks, enrichment in repeats, look-up vs control gains, identity vs
    context, and the embedding indexes with their calibration curves.

    Example: seqatlas report --atlas dna_atlas -o report.html"""
    from seqatlas.html_report import report as write

    params = anomaly_params(score, z, tail, smooth, min_length, max_gap, ablation_method)
    result = write(atlas, output=output, doubling=doubling, params=params,
                   top_regions=top_regions, flank=flank, max_sequences=max_sequences,
                   identity_sample=identity_sample)
    sections = sum(len(a["sections"]) for a in result["atlases"].values())
    note(f"Wrote {result['output']} ({result['bytes']:,} bytes, {sections} sections) in "
         f"{result['seconds']:.1f} s.")
