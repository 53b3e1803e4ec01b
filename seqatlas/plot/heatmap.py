"""The in-silico mutagenesis heatmap (:func:`seqatlas.plot.mutagenesis`): what it draws, read
from the atlas, and how it is drawn.

Rows are the kind's standard letters (``scoring.distribution_letters``, top to bottom), columns
the positions of one region in the atlas's 0-based coordinates (column ``pos`` covers
``[pos, pos + 1)``), each cell the LLR of the substitution ref -> letter from the stored
distributions (:mod:`seqatlas.variants.scan`), on a diverging colour map centred at 0 (red:
less likely than the reference; blue: more likely). The ref cells hold no value and carry a
dot; positions without a distribution (or whose ref is not a standard letter) are a grey
column. Up to ``max_positions`` positions every
position is drawn; a longer region is cut into bins of ``ceil(length / max_positions)``
positions as :func:`seqatlas.plot.track` bins, each cell the mean LLR of that letter over the
bin's positions where it is a substitution (refs are then not marked). Under the heatmap:
in-context copies as arcs (direct above, reverse complement below; at most ``max_arcs``) and
the repeats by class, as the track draws them.

Artists carry a ``gid``: ``llr`` (the heatmap image: ``get_array()`` is the letters x columns
matrix, NaN where there is no value), ``ref`` (the marks at the ref cells), ``copies:+|-``,
``repeats:CLASS``; the panels are labelled ``mutagenesis``, ``copies`` and ``repeats``.
"""

from __future__ import annotations

import math

import numpy as np

from seqatlas.errors import ConfigError
from seqatlas.plot.data import Region, copy_arcs, repeat_rows
from seqatlas.plot.drawing import draw_copies, draw_repeats, stacked_axes
from seqatlas.plot.tables import reader_of
from seqatlas.query.tracks import (require_distributions, substitution_llr_sql,
                                   substitution_rows_sql)
from seqatlas.query.engine import Engine
from seqatlas.variants.scan import resolve_span, scan_variants

_REGION = "seq_id = $1 AND pos >= $2 AND pos < $3"
_COLOURS = "RdBu"  # red below 0 (less likely than the ref), blue above


def _check_count(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a whole number, 1 or more, not {value!r} "
                          f"(--{name.replace('_', '-')})")


def _per_position(reader, place: Region, letters: str) -> tuple[np.ndarray, dict]:
    """(letters x positions) LLRs of the region's scan and the ref marks (pos, row)."""
    scan = scan_variants(reader, region=str(place))
    matrix = np.full((len(letters), place.size), np.nan)
    index = {c: k for k, c in enumerate(letters)}
    column = scan["pos"].to_numpy() - place.start
    rows = np.array([index[a] for a in scan["alt"].to_pylist()], dtype=np.int64)
    matrix[rows, column] = np.asarray(scan["llr"].to_numpy(zero_copy_only=False), float)
    first = np.r_[True, column[1:] != column[:-1]] if len(column) else np.zeros(0, bool)
    refs = np.array([index[r] for r in scan["ref"].to_pylist()], dtype=np.int64)
    return matrix, {"pos": place.start + column[first], "row": refs[first]}


def _binned(engine, place: Region, letters: str, both: bool, per_bin: int) -> np.ndarray:
    """(letters x bins) mean LLR of each letter over the bin's positions where it is a
    substitution, computed by DuckDB."""
    k = range(1, len(letters) + 1)
    each = ", ".join(f"{substitution_llr_sql(i, both)} AS l{i}" for i in k)
    means = ", ".join(f"avg(l{i})::DOUBLE AS l{i}" for i in k)
    rows = engine.fetch_internal(f"""
        SELECT (pos - $2) // $4 AS bin, {means}
        FROM (SELECT pos, {each} FROM ({substitution_rows_sql(letters, _REGION)}))
        GROUP BY bin ORDER BY bin""", [place.seq_id, place.start, place.end, per_bin])
    matrix = np.full((len(letters), math.ceil(place.size / per_bin)), np.nan)
    at = rows["bin"].to_numpy()
    for i in k:
        matrix[i - 1, at] = np.asarray(rows[f"l{i}"].to_numpy(zero_copy_only=False), float)
    return matrix


def mutagenesis_data(atlas, *, region: str | None = None, seq_id: str | None = None,
                     max_positions: int, max_arcs: int) -> dict:
    """Everything :func:`seqatlas.plot.mutagenesis` draws (see the module docstring)."""
    _check_count("max_positions", max_positions)
    _check_count("max_arcs", max_arcs)
    reader = reader_of(atlas)
    letters = require_distributions(reader, "`plot mutagenesis`")
    name, start, end = resolve_span(reader, region=region, seq_id=seq_id)
    both = reader.manifest.scoring.strands == "both"
    with Engine(reader, anomaly_views=False, region=(name, start, end)) as engine:
        length = engine.fetch_internal("SELECT length FROM sequences WHERE seq_id = $1",
                                       [name])["length"][0].as_py()
        place = Region(name, start, end, length)
        per_bin = 1 if place.size <= max_positions else math.ceil(place.size / max_positions)
        if per_bin == 1:
            matrix, refs = _per_position(reader, place, letters)
        else:
            matrix, refs = _binned(engine, place, letters, both, per_bin), None
        copies = engine.fetch_internal(f"SELECT count(copy_offset) AS n FROM positions "
                                       f"WHERE {_REGION}", [name, start, end])["n"][0].as_py()
        has_repeats = engine.atlas.count("repeats") > 0
        return {"region": place, "letters": letters, "per_bin": per_bin, "llr": matrix,
                "refs": refs, "both_strands": both,
                "copies": copy_arcs(engine, place, copies, max_arcs),
                "repeats": repeat_rows(engine, place, per_bin) if has_repeats else None,
                "atlas": str(reader.path)}


def _panels(data: dict) -> list[tuple[str, float]]:
    panels = [("mutagenesis", max(3.0, 0.2 * len(data["letters"])))]
    if data["copies"]["total"]:
        panels.append(("copies", 1.5))
    if data["repeats"] is not None:
        classes = len({r["class"] for r in data["repeats"]})
        panels.append(("repeats", min(3.0, max(0.8, 0.35 * classes))))
    return panels


def _draw_refs(ax, figure, data: dict) -> None:
    refs, region = data["refs"], data["region"]
    if refs is None or not len(refs["pos"]):
        return
    cell_points = figure.get_figwidth() * 72 * 0.8 / region.size
    ax.plot(refs["pos"] + 0.5, refs["row"], linestyle="none", marker="o",
            markersize=float(np.clip(0.45 * cell_points, 1.0, 5.0)), color="black",
            gid="ref", label="reference letter")


def draw_mutagenesis(figure, data: dict) -> None:
    """Draw the panels of ``data`` (from :func:`mutagenesis_data`) on ``figure``."""
    from matplotlib import colormaps
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.ticker import FuncFormatter

    region, per_bin, letters = data["region"], data["per_bin"], data["letters"]
    matrix = data["llr"]
    by_name = stacked_axes(figure, _panels(data))

    ax = by_name["mutagenesis"]
    finite = np.abs(matrix[np.isfinite(matrix)])
    limit = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    cmap = colormaps[_COLOURS].with_extremes(bad="0.85")
    right = region.start + matrix.shape[1] * per_bin
    image = ax.imshow(matrix, aspect="auto", interpolation="nearest", cmap=cmap,
                      norm=TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit),
                      extent=(region.start, right, len(letters) - 0.5, -0.5), gid="llr")
    _draw_refs(ax, figure, data)
    ax.set_yticks(range(len(letters)), list(letters),
                  fontsize="small" if len(letters) <= 8 else "x-small")
    ax.set_ylabel("substitution to")
    strands = " (mean of both strands)" if data["both_strands"] else ""
    what = "bin mean LLR" if per_bin > 1 else "LLR"
    figure.colorbar(image, ax=ax, location="top", fraction=0.08, aspect=50, pad=0.02,
                    label=f"{what}{strands}: log p(alt) - log p(ref), nats")

    if "copies" in by_name:
        copies = dict(data["copies"], pos=data["copies"]["pos"] + 0.5)  # cell centres
        draw_copies(by_name["copies"], copies)
    if "repeats" in by_name:
        draw_repeats(by_name["repeats"], data["repeats"], per_bin > 1)

    last = list(by_name.values())[-1]
    last.set_xlim(region.start, region.end)
    last.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    last.set_xlabel(f"{region.seq_id} position (0-based; {region.start:,}-{region.end:,} of "
                    f"{region.length:,})")
    title = f"in-silico mutagenesis of {region} ({region.size:,} positions)"
    if per_bin > 1:
        title += (f"\nbinned: {per_bin:,} positions per bin, each cell the mean LLR over "
                  "the bin's positions where the letter is a substitution")
    figure.suptitle(title, fontsize="medium")
