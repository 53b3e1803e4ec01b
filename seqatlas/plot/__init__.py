"""Figures of an atlas, drawn with matplotlib (headless: an Agg canvas per figure, pyplot
never touched): a track of one region, the in-silico mutagenesis heatmap of one region, the
enrichment forest plot, score and robust-z distributions, identity vs context per layer,
look-up vs control gains, an index's recall calibration, and the pooled embeddings on their
first two principal components.

Every function takes the atlas (a path or an :class:`~seqatlas.atlas.Atlas`), returns the
:class:`matplotlib.figure.Figure` and, given ``output``, writes it there as PNG or SVG (the
suffix .png/.svg, or ``format``; ``-`` is standard output) atomically, never inside an atlas.
``size`` is (width, height) in pixels: the PNG has exactly that many. The data come from
DuckDB queries filtered to what is drawn (:mod:`seqatlas.plot.data`,
:mod:`seqatlas.plot.tables`), so a genome-scale atlas is never read whole. matplotlib is
imported only when a figure is drawn.
"""

from __future__ import annotations

import dataclasses
import os

import pyarrow as pa

from seqatlas.errors import ConfigError
from seqatlas.plot.charts import (draw_calibration, draw_distribution, draw_enrichment,
                                  draw_icl, draw_identity)
from seqatlas.plot.data import track_data
from seqatlas.plot.drawing import draw_track
from seqatlas.plot.heatmap import draw_mutagenesis, mutagenesis_data
from seqatlas.plot.output import DEFAULT_SIZE, new_figure, prepare, save
from seqatlas.plot.projection import (Projection, ProjectionConfig, check_max_categories,
                                      draw_projection, pooled_projection)
from seqatlas.plot.tables import (calibration_curve, doubling_rows, enrichment_rows,
                                  histograms, icl_targets, identity_rows, reader_of)
from seqatlas.query.output import file_format, write_result
from seqatlas.query.views import AnomalyParams
from seqatlas.util import STDOUT, check_output

__all__ = ["calibration", "distribution", "embedding", "enrichment", "icl", "identity",
           "mutagenesis", "track"]

def _params(params: AnomalyParams | None, column: str | None) -> AnomalyParams:
    params = dataclasses.replace(params) if params is not None else AnomalyParams()
    if column is not None:
        params.column = column
    params.validate()
    return params


def _finish(figure, output, format: str):
    if output is not None:
        save(figure, output, format)
    return figure


def track(atlas, *, region: str, output: str | os.PathLike | None = None,
          column: str | None = None, params: AnomalyParams | None = None,
          max_positions: int = 5000, max_arcs: int = 1000,
          size: tuple[int, int] = DEFAULT_SIZE, format: str | None = None):
    """Panels of one region ``SEQ:START-END`` (0-based, half-open; ``SEQ`` alone: the whole
    sequence) sharing the x axis: the likelihood column (``column``, default the atlas's; with
    its strand variants when stored), robust z with the +-``params.z`` thresholds, entropy,
    repeats by class, anomalous regions shaded, in-context copies as arcs (direct above,
    reverse complement below) and ``probe icl``'s net_gain. A region longer than
    ``max_positions`` is binned (bin means with a min-max band; the title says how many
    positions per bin), and at most ``max_arcs`` copies are drawn."""
    fmt, size = prepare(output, format, size)
    data = track_data(atlas, region=region, params=_params(params, column),
                      max_positions=max_positions, max_arcs=max_arcs)
    figure = new_figure(size)
    draw_track(figure, data)
    return _finish(figure, output, fmt)


def mutagenesis(atlas, *, region: str | None = None, seq_id: str | None = None,
                output: str | os.PathLike | None = None, max_positions: int = 1000,
                max_arcs: int = 1000, size: tuple[int, int] = DEFAULT_SIZE,
                format: str | None = None):
    """Heatmap of the LLR of every substitution (letters x positions) in ``region``
    (``SEQ:START-END``, 0-based and half-open; ``SEQ`` alone: the whole sequence) or the
    whole sequence ``seq_id`` (give one), from the atlas's stored distributions, on a
    diverging colour map centred at 0 with the ref cells marked; under it the in-context
    copies as arcs and the repeats by class, as :func:`track` draws them. A region longer
    than ``max_positions`` is binned (per bin and letter the mean LLR; the title says how
    many positions per bin), and at most ``max_arcs`` copies are drawn. See
    :mod:`seqatlas.plot.heatmap`."""
    fmt, size = prepare(output, format, size)
    data = mutagenesis_data(atlas, region=region, seq_id=seq_id, max_positions=max_positions,
                            max_arcs=max_arcs)
    figure = new_figure(size)
    draw_mutagenesis(figure, data)
    return _finish(figure, output, fmt)


def enrichment(atlas, *, by: str = "class", params: AnomalyParams | None = None,
               table: pa.Table | None = None, output: str | os.PathLike | None = None,
               max_groups: int = 40, size: tuple[int, int] = DEFAULT_SIZE,
               format: str | None = None):
    """Forest plot of the anomaly odds ratio per repeat group (log axis) with its 95%
    interval and BH q, from :func:`seqatlas.query.enrichment` (``by``, ``params``) or a
    precomputed ``table``; infinite or zero odds ratios are drawn at the axis edge, NaN ones
    marked not estimable. At most ``max_groups`` groups, in table order (by p)."""
    fmt, size = prepare(output, format, size)
    if isinstance(max_groups, bool) or not isinstance(max_groups, int) or max_groups < 1:
        raise ConfigError(f"max_groups must be a whole number, 1 or more, not {max_groups!r}")
    rows = enrichment_rows(atlas, by=by, params=params and _params(params, None), table=table)
    where = reader_of(atlas).path
    if table is None:
        chosen = params or AnomalyParams()
        title = (f"enrichment of anomalies (|z| >= {chosen.z:g}, tail {chosen.tail}) by {by} "
                 f"in {where}")
    else:
        title = f"enrichment of anomalies in {where}"
    if len(rows) > max_groups:
        title += f"\nthe first {max_groups} of {len(rows):,} groups (by p)"
        rows = rows[:max_groups]
    figure = new_figure(size)
    draw_enrichment(figure, rows, title=title)
    return _finish(figure, output, fmt)


def distribution(atlas, *, column: str | None = None, params: AnomalyParams | None = None,
                 bins: int = 50, output: str | os.PathLike | None = None,
                 size: tuple[int, int] = DEFAULT_SIZE, format: str | None = None):
    """Per reference letter, histograms (``bins`` bins, counted by DuckDB) of the score
    column and of robust z, with the robust fit: the normal of the letter's median and
    scale (1.4826 MAD) scaled to the counts, and the +-``params.z`` thresholds."""
    fmt, size = prepare(output, format, size)
    data = histograms(atlas, params=_params(params, column), bins=bins)
    figure = new_figure(size)
    draw_distribution(figure, data)
    return _finish(figure, output, fmt)


def identity(atlas, *, table: pa.Table | None = None, output: str | os.PathLike | None = None,
             size: tuple[int, int] = DEFAULT_SIZE, format: str | None = None,
             **identity_options):
    """Identity, context, next and prev agreement of embedding neighbours per layer, with
    their chance levels dashed, from :func:`seqatlas.query.identity` (``identity_options``:
    :class:`seqatlas.query.IdentityConfig` fields) or a precomputed ``table``."""
    fmt, size = prepare(output, format, size)
    if table is not None and identity_options:
        raise ConfigError(f"identity options ({', '.join(sorted(identity_options))}) apply "
                          "only when the table is computed here; pass them or table=, not both")
    rows = identity_rows(atlas, table=table, options=identity_options)
    first = rows[0]
    sampled = (f"{first['k']} neighbours of {first['sample']:,} sampled tokens, "
               if "k" in first and "sample" in first else "")
    title = f"identity vs context of embedding neighbours ({sampled}{reader_of(atlas).path})"
    figure = new_figure(size)
    draw_identity(figure, rows, title=title)
    return _finish(figure, output, fmt)


def _runs(targets: list[dict]) -> str:
    runs: dict[str, list] = {}
    for t in targets:
        seeds = runs.setdefault(t["method"], [])
        if t["seed"] not in seeds:
            seeds.append(t["seed"])
    return "; ".join(f"{method}, seed{'s' if len(seeds) > 1 else ''} "
                     f"{', '.join(map(str, sorted(seeds)))}" for method, seeds in runs.items())


def icl(atlas, *, doubling=None, output: str | os.PathLike | None = None,
        size: tuple[int, int] = DEFAULT_SIZE, format: str | None = None):
    """icl_gain against control_gain per probed target of ``probe icl`` (coloured by copy
    strand, with y = x), and with ``doubling`` (a ``probe doubling -o`` file or table) a
    second panel of the doubling probe per sequence and variant."""
    fmt, size = prepare(output, format, size)
    reader = reader_of(atlas)
    targets = icl_targets(reader)
    rows = doubling_rows(doubling) if doubling is not None else None
    if targets is None and rows is None:
        raise ConfigError(f"{reader.path} has no ablations: run `seqatlas probe icl --atlas "
                          f"{reader.path}` first, or pass doubling= (--doubling), the table "
                          "`seqatlas probe doubling FASTA -o FILE` writes")
    titles = ("", "")
    if targets is not None:
        positions = sum(t["positions"] for t in targets)
        titles = (f"probe icl: {len(targets):,} targets, {positions:,} positions "
                  f"({_runs(targets)})", titles[1])
    if rows is not None:
        methods = sorted({str(r.get("method")) for r in rows if r.get("method") is not None})
        sequences = len({r["seq_id"] for r in rows})
        titles = (titles[0], f"probe doubling: {sequences:,} sequences"
                  + (f" (method {', '.join(methods)})" if methods else ""))
    figure = new_figure(size)
    draw_icl(figure, targets, rows, titles=titles)
    return _finish(figure, output, fmt)


def calibration(atlas, *, index: str = "default", output: str | os.PathLike | None = None,
                size: tuple[int, int] = DEFAULT_SIZE, format: str | None = None):
    """recall@10 of an IVF or HNSW index per search setting (nprobe or efSearch), as
    measured when it was built, with the target recall and the setting chosen."""
    fmt, size = prepare(output, format, size)
    curve = calibration_curve(atlas, index=index)
    figure = new_figure(size)
    draw_calibration(figure, curve)
    return _finish(figure, output, fmt)


def embedding(atlas, *, color: str | None = None, layer: int | None = None,
              pooling: str | None = None, where: str | None = None,
              projection: Projection | None = None, output: str | os.PathLike | None = None,
              coordinates: str | os.PathLike | None = None, max_categories: int = 10,
              max_vectors: int = 50_000, size: tuple[int, int] = DEFAULT_SIZE,
              format: str | None = None):
    """The pooled vectors of one ``layer`` and ``pooling`` (default: the first pooled layer,
    mean) on their first two principal components, each point coloured by the SQL
    expression ``color`` (a category legend of the ``max_categories`` most frequent values,
    or a colour bar for a number) and filtered by the SQL condition ``where``, both over the
    view ``pooled_points`` (pooled rows joined to their sequence and ``repeat_class``); axes
    give each component's explained variance. ``coordinates`` writes the projected table
    (pool_id, seq_id, start, end, level, pc1, pc2, color) as TSV, CSV, JSON or Parquet by its
    suffix. ``projection``: a precomputed :func:`seqatlas.plot.projection.pooled_projection`
    (then no selection options). See :mod:`seqatlas.plot.projection`."""
    fmt, size = prepare(output, format, size)
    check_max_categories(max_categories)
    if coordinates is not None:
        file_format(coordinates, "auto")
        check_output(coordinates)
        if output is not None and os.fspath(output) == os.fspath(coordinates) == STDOUT:
            raise ConfigError("the image and the coordinates cannot both go to standard "
                              "output (-): write one of them to a file")
    chosen = {"color": color, "layer": layer, "pooling": pooling, "where": where}
    if projection is None:
        projection = pooled_projection(atlas, ProjectionConfig(
            **chosen, max_vectors=max_vectors))
    elif any(v is not None for v in chosen.values()):
        raise ConfigError(f"{', '.join(k for k, v in chosen.items() if v is not None)} apply "
                          "only when the projection is computed here; pass them or "
                          "projection=, not both")
    figure = new_figure(size)
    draw_projection(figure, projection, max_categories=max_categories)
    if coordinates is not None:
        write_result(projection.table, coordinates, "auto")
    return _finish(figure, output, fmt)
