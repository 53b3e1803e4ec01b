"""``seqatlas plot track|enrichment|distribution|identity|icl|calibration|mutagenesis|
embedding``: figures as PNG or SVG."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from seqatlas.cli.options import (ABLATION_METHOD, ATLAS, IDENTITY_INDEX, IDENTITY_K,
                                  IDENTITY_LAYER, IDENTITY_NPROBE, IDENTITY_SAMPLE,
                                  IDENTITY_SEED, MAX_GAP, MIN_LENGTH, SCORE_COLUMN, SMOOTH,
                                  TAIL, Z, AblationMethod, By, Metric, Pooling, Tail,
                                  anomaly_params)
from seqatlas.cli.tables import note
from seqatlas.plot.output import DEFAULT_SIZE


plot_app = typer.Typer(help="Draw an atlas as PNG or SVG figures: a track of one region, "
                       "the in-silico mutagenesis heatmap of one region, enrichment in "
                       "repeats, score distributions, identity vs context, look-up vs "
                       "control gains, an index's recall calibration, pooled embeddings "
                       "on their principal components.",
                       no_args_is_help=True)

OUTPUT = typer.Option(..., "--output", "-o", help="Image to write: PNG or SVG by its suffix "
                      "(.png, .svg), or as --format says; - for stdout (PNG unless --format "
                      "svg); never inside an atlas.")
WIDTH = typer.Option(DEFAULT_SIZE[0], "--width", help="Image width in pixels.")
HEIGHT = typer.Option(DEFAULT_SIZE[1], "--height", help="Image height in pixels.")
# a plain string, checked by seqatlas.plot.output.image_format (whose message says the fix)
IMAGE_FORMAT = typer.Option(None, "--format", "-f", help="png or svg (default: the --output "
                            "suffix).")


def _draw(name: str, atlas: str, output: Path, width: int, height: int,
          format: Optional[str], **options) -> None:
    """Call ``seqatlas.plot.<name>`` and say what was written (the image, and the table of
    ``coordinates`` when one is given)."""
    from seqatlas import plot
    from seqatlas.plot.output import image_format

    getattr(plot, name)(atlas, output=output, size=(width, height), format=format, **options)
    note(f"Wrote {output} ({width}x{height} px, {image_format(output, format).upper()}).")
    if options.get("coordinates") is not None:
        note(f"Wrote the projected coordinates to {options['coordinates']}.")


@plot_app.command("track")
def track(
    atlas: str = ATLAS,
    region: str = typer.Option(..., "--region", "-r", help="SEQ:START-END, 0-based and "
                               "half-open as stored (e.g. chr1:1000000-2000000); SEQ alone: "
                               "the whole sequence."),
    output: Path = OUTPUT,
    z: float = Z, tail: Tail = TAIL, smooth: int = SMOOTH, min_length: int = MIN_LENGTH,
    max_gap: int = MAX_GAP, score: Optional[str] = SCORE_COLUMN,
    ablation_method: Optional[AblationMethod] = ABLATION_METHOD,
    max_positions: int = typer.Option(5000, "--max-positions", help="Bin a longer region: "
                                      "per bin the mean, and the min-max band."),
    max_arcs: int = typer.Option(1000, "--max-arcs", help="Draw at most this many in-context "
                                 "copy arcs (every n-th copy beyond)."),
    width: int = WIDTH, height: int = HEIGHT,
    format: Optional[str] = IMAGE_FORMAT,
) -> None:
    """Panels of one region: likelihood, robust z with its thresholds, entropy, repeats,
    anomalous regions, in-context copies as arcs and probe icl's net_gain.

    Example: seqatlas plot track --atlas dna_atlas --region chrX:0-100000 -o track.png"""
    _draw("track", atlas, output, width, height, format, region=region,
          params=anomaly_params(score, z, tail, smooth, min_length, max_gap, ablation_method),
          max_positions=max_positions, max_arcs=max_arcs)


@plot_app.command("enrichment")
def enrichment(
    atlas: str = ATLAS,
    output: Path = OUTPUT,
    by: By = typer.Option(By.class_, "--by", help="Group repeats by class, family or name; or "
                          "compare positions with an in-context copy to those without."),
    z: float = Z, tail: Tail = TAIL, smooth: int = SMOOTH,
    score: Optional[str] = SCORE_COLUMN,
    ablation_method: Optional[AblationMethod] = ABLATION_METHOD,
    max_groups: int = typer.Option(40, "--max-groups", help="Draw at most this many groups "
                                   "(the smallest p first)."),
    width: int = WIDTH, height: int = HEIGHT,
    format: Optional[str] = IMAGE_FORMAT,
) -> None:
    """Forest plot of the anomaly odds ratio per repeat group, with 95% intervals and BH q.

    Example: seqatlas plot enrichment --atlas dna_atlas --by class -o enrichment.svg"""
    _draw("enrichment", atlas, output, width, height, format, by=by.value,
          params=anomaly_params(score, z, tail, smooth, 1, 0, ablation_method), max_groups=max_groups)


@plot_app.command("distribution")
def distribution(
    atlas: str = ATLAS,
    output: Path = OUTPUT,
    score: Optional[str] = SCORE_COLUMN,
    z: float = Z, smooth: int = SMOOTH,
    bins: int = typer.Option(50, "--bins", help="Histogram bins per panel."),
    width: int = WIDTH, height: int = HEIGHT,
    format: Optional[str] = IMAGE_FORMAT,
) -> None:
    """Histograms of the score and of robust z per reference letter, with the robust fit.

    Example: seqatlas plot distribution --atlas prot_atlas -o distribution.png"""
    _draw("distribution", atlas, output, width, height, format, bins=bins,
          params=anomaly_params(score, z, Tail.both, smooth, 3, 2, None))


@plot_app.command("identity")
def identity(
    atlas: str = ATLAS,
    output: Path = OUTPUT,
    sample: int = IDENTITY_SAMPLE, layer: Optional[list[int]] = IDENTITY_LAYER,
    k: int = IDENTITY_K, seed: int = IDENTITY_SEED, index: Optional[str] = IDENTITY_INDEX,
    nprobe: Optional[int] = IDENTITY_NPROBE,
    metric: Metric = typer.Option(Metric.cosine, "--metric", help="Of the exact in-memory "
                                  "search (a built index keeps its own)."),
    width: int = WIDTH, height: int = HEIGHT,
    format: Optional[str] = IMAGE_FORMAT,
) -> None:
    """Identity, context, next and prev agreement of embedding neighbours per layer, with
    chance levels.

    Example: seqatlas plot identity --atlas dna_atlas --sample 500 -o identity.png"""
    _draw("identity", atlas, output, width, height, format, sample=sample,
          layers=list(layer) if layer else None, k=k, seed=seed, index=index, nprobe=nprobe,
          metric=metric.value)


@plot_app.command("icl")
def icl(
    atlas: str = ATLAS,
    output: Path = OUTPUT,
    doubling: Optional[Path] = typer.Option(None, "--doubling", help="A `seqatlas probe "
                                            "doubling -o` output (Parquet, CSV, TSV or JSON) "
                                            "to draw beside the atlas's probe icl targets."),
    width: int = WIDTH, height: int = HEIGHT,
    format: Optional[str] = IMAGE_FORMAT,
) -> None:
    """icl_gain against control_gain per probe icl target (and per doubling-probe sequence).

    Example: seqatlas plot icl --atlas dna_atlas --doubling doubling.csv -o icl.png"""
    _draw("icl", atlas, output, width, height, format, doubling=doubling)


@plot_app.command("calibration")
def calibration(
    atlas: str = ATLAS,
    output: Path = OUTPUT,
    index: str = typer.Option("default", "--index", help="Index name (see `seqatlas index "
                              "list`)."),
    width: int = WIDTH, height: int = HEIGHT,
    format: Optional[str] = IMAGE_FORMAT,
) -> None:
    """recall@10 of an IVF or HNSW index per nprobe or efSearch, as measured when it was
    built, with the target recall and the setting chosen.

    Example: seqatlas plot calibration --atlas dna_atlas --index default -o recall.png"""
    _draw("calibration", atlas, output, width, height, format, index=index)


@plot_app.command("mutagenesis")
def mutagenesis(
    atlas: str = ATLAS,
    region: Optional[str] = typer.Option(None, "--region", "-r", help="SEQ:START-END, 0-based "
                                         "and half-open as stored (e.g. P12345:0-120); SEQ "
                                         "alone: the whole sequence. Or --seq-id."),
    seq_id: Optional[str] = typer.Option(None, "--seq-id", help="A whole sequence (instead "
                                         "of --region)."),
    output: Path = OUTPUT,
    max_positions: int = typer.Option(1000, "--max-positions", help="Bin a longer region: "
                                      "per bin and letter the mean LLR."),
    max_arcs: int = typer.Option(1000, "--max-arcs", help="Draw at most this many in-context "
                                 "copy arcs (every n-th copy beyond)."),
    width: int = WIDTH, height: int = HEIGHT,
    format: Optional[str] = IMAGE_FORMAT,
) -> None:
    """Heatmap of the LLR of every substitution (letter x position) from the stored
    distributions, ref cells marked, with in-context copy arcs and repeats under it.

    Example: seqatlas plot mutagenesis --atlas prot_atlas --seq-id P12345 -o scan.png"""
    _draw("mutagenesis", atlas, output, width, height, format, region=region, seq_id=seq_id,
          max_positions=max_positions, max_arcs=max_arcs)


@plot_app.command("embedding")
def embedding(
    atlas: str = ATLAS,
    output: Path = OUTPUT,
    color: Optional[str] = typer.Option(None, "--color", help="SQL expression per pooled "
                                        "vector colouring its point, over pooled_points: "
                                        "seq_id, start, end, level, tokens, length, "
                                        "description, repeat_class, repeat_fraction, ... "
                                        "(e.g. repeat_class, or \"regexp_extract(description, "
                                        "'OS=(\\w+)', 1)\"); a number gets a colour bar. "
                                        "Default: one colour."),
    layer: Optional[int] = typer.Option(None, "--layer", help="Hidden layer of the pooled "
                                        "vectors (default: the first pooled)."),
    pooling: Optional[Pooling] = typer.Option(None, "--pooling", help="Pooled vectors to "
                                              "project (default: mean when stored)."),
    where: Optional[str] = typer.Option(None, "--where", help="SQL condition over the same "
                                        "columns keeping the vectors projected (e.g. "
                                        "\"length > 100\")."),
    coordinates: Optional[Path] = typer.Option(None, "--coordinates", help="Also write the "
                                               "projected table (pool_id, seq_id, start, "
                                               "end, level, pc1, pc2, color): TSV, CSV, JSON "
                                               "or Parquet by its suffix."),
    max_categories: int = typer.Option(10, "--max-categories", help="Categories in the "
                                       "legend (the most frequent; the rest as other)."),
    max_vectors: int = typer.Option(50_000, "--max-vectors", help="Project at most this "
                                    "many vectors (every n-th by pool_id beyond)."),
    width: int = WIDTH, height: int = HEIGHT,
    format: Optional[str] = IMAGE_FORMAT,
) -> None:
    """Pooled embeddings (seqatlas pool) on their first two principal components, coloured
    by an SQL expression, with each component's explained variance.

    Example: seqatlas plot embedding --atlas dna_atlas --color repeat_class -o pca.png"""
    _draw("embedding", atlas, output, width, height, format, color=color, layer=layer,
          pooling=pooling.value if pooling is not None else None, where=where,
          coordinates=coordinates, max_categories=max_categories, max_vectors=max_vectors)
