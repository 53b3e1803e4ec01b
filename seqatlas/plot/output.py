"""The canvas every plot is drawn on and how it is written: image size in pixels, PNG or SVG,
atomically through :func:`seqatlas.util.output_file` (``-``: standard output).

Figures are :class:`matplotlib.figure.Figure` objects with an Agg canvas of their own, so
pyplot and its global figure manager are never touched and no display is needed. At
:data:`DPI` a figure of ``size`` pixels renders to a PNG of exactly that many pixels; an SVG
says the same size (``width="1200px"``) over the drawing's own coordinates (its viewBox, in
points), so it displays at that size too.
"""

from __future__ import annotations

import io
import logging
import os
import re
from pathlib import Path

from seqatlas.errors import ConfigError
from seqatlas.util import STDOUT, check_output, output_file

FORMATS = ("png", "svg")
DEFAULT_SIZE = (1200, 800)
DPI = 100
MIN_PIXELS, MAX_PIXELS = 100, 8000
_SUFFIXES = {".png": "png", ".svg": "svg"}
_SVG_SIZE = re.compile(rb'<svg([^>]*?) width="[0-9.]+pt" height="[0-9.]+pt"')


def check_size(size) -> tuple[int, int]:
    """``size`` as (width, height) in whole pixels; a ConfigError saying how to fix it."""
    fix = (f"give (width, height) in whole pixels, each from {MIN_PIXELS} to {MAX_PIXELS}, "
           "e.g. size=(1200, 800) (--width 1200 --height 800)")
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        raise ConfigError(f"image size {size!r} is not a (width, height) pair: {fix}")
    for value in size:
        if isinstance(value, bool) or not isinstance(value, int) or \
                not MIN_PIXELS <= value <= MAX_PIXELS:
            raise ConfigError(f"image size {tuple(size)!r} is out of range: {fix}")
    return int(size[0]), int(size[1])


def image_format(output: str | os.PathLike | None, format: str | None) -> str:
    """The format to write: ``format`` (png or svg), else the one the suffix of ``output``
    names; PNG for standard output (``-``) or no output at all."""
    suffix = Path(os.fspath(output)).suffix.lower() if output is not None else ""
    if format is not None:
        chosen = str(format).lower()
        if chosen not in FORMATS:
            raise ConfigError(f"image format {format!r} is not one of {', '.join(FORMATS)}; "
                              "give --format png or --format svg")
        if suffix in _SUFFIXES and _SUFFIXES[suffix] != chosen:
            raise ConfigError(f"--output {output} names a {_SUFFIXES[suffix].upper()} file but "
                              f"the format is {chosen}: rename it .{chosen} or drop --format")
        return chosen
    if output is None or os.fspath(output) == STDOUT:
        return "png"
    if suffix not in _SUFFIXES:
        raise ConfigError(f"cannot tell the image format of --output {output}: name it .png or "
                          ".svg, or give --format png|svg (format='png' in Python)")
    return _SUFFIXES[suffix]


def prepare(output, format: str | None, size) -> tuple[str, tuple[int, int]]:
    """Check size, format and ``output`` (writable, not inside an atlas) before any work;
    returns (format, size)."""
    size = check_size(size)
    chosen = image_format(output, format)
    if output is not None:
        check_output(output)
    return chosen, size


def _matplotlib():
    """Import matplotlib's figure and Agg canvas, without the one-off font-cache notice."""
    logger = logging.getLogger("matplotlib.font_manager")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    finally:
        logger.setLevel(level)
    return Figure, FigureCanvasAgg


def new_figure(size: tuple[int, int]):
    """An empty Figure of ``size`` pixels at :data:`DPI`, on its own Agg canvas."""
    Figure, FigureCanvasAgg = _matplotlib()
    width, height = size
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def render(figure, format: str) -> bytes:
    """The figure as PNG or SVG bytes (no timestamps: the same figure gives the same bytes)."""
    import matplotlib

    buffer = io.BytesIO()
    if format == "svg":
        with matplotlib.rc_context({"svg.hashsalt": "seqatlas"}):
            figure.savefig(buffer, format="svg", dpi=DPI, metadata={"Date": None})
        width, height = (round(v * DPI) for v in figure.get_size_inches())
        return _SVG_SIZE.sub(
            lambda m: b'<svg' + m.group(1) + f' width="{width}px" height="{height}px"'.encode(),
            buffer.getvalue(), count=1)
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def save(figure, output, format: str) -> None:
    """Write ``figure`` to ``output`` (``-``: stdout) as ``format``, atomically."""
    data = render(figure, format)
    with output_file(output) as tmp:
        Path(tmp).write_bytes(data)
