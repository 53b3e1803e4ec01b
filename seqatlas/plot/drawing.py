"""Drawing a track (:func:`seqatlas.plot.track`) from what :func:`seqatlas.plot.data.track_data`
returns: panels sharing the x axis in the atlas's 0-based coordinates.

Artists carry a ``gid`` (and each panel a label) naming what they show, so a figure can be
checked against the atlas: lines ``logp`` (each likelihood column by name), ``z``,
``entropy``, ``net_gain:METHOD:SEED``; ``COLUMN:range`` the min-max band of binned values;
``threshold:high|low``; ``anomalies:high|low`` and ``repeats:CLASS`` (polygon collections,
one box per region or repeat); ``copies:+|-`` (line collections, one arc per copy, from pos to
pos + copy_offset).
"""

from __future__ import annotations

import numpy as np

_TAIL_COLOURS = {"high": "tab:red", "low": "tab:blue"}
_STRAND_COLOURS = {"+": "tab:green", "-": "tab:purple"}
_LINE_COLOURS = ("black", "tab:orange", "tab:blue")
_ARC_POINTS = 24


def _interval_boxes(intervals, low: float, high: float) -> list[np.ndarray]:
    return [np.array([(s, low), (s, high), (e, high), (e, low)], dtype=np.float64)
            for s, e in intervals]


def _line(ax, x, values: dict, *, label: str, gid: str, colour, binned: bool, dots: bool):
    ax.plot(x, values["mean"], color=colour, linewidth=0.9, label=label, gid=gid,
            marker="." if dots else None, markersize=3)
    if binned:
        ax.fill_between(x, values["min"], values["max"], color=colour, alpha=0.2,
                        linewidth=0, gid=f"{gid}:range")


def _shade_anomalies(ax, regions: list[dict], legend: bool) -> None:
    from matplotlib.collections import PolyCollection

    for tail, colour in _TAIL_COLOURS.items():
        mine = [(r["start"], r["end"]) for r in regions if r["tail"] == tail]
        if not mine:
            continue
        boxes = PolyCollection(_interval_boxes(mine, 0.0, 1.0), facecolors=colour, alpha=0.25,
                               edgecolors="none", transform=ax.get_xaxis_transform(),
                               gid=f"anomalies:{tail}",
                               label=f"anomalous region ({tail})" if legend else None)
        ax.add_collection(boxes, autolim=False)


def _arcs(pos: np.ndarray, offset: np.ndarray, sign: float, widest: float) -> list[np.ndarray]:
    """Half-ellipses from each pos to pos + offset, height growing with |offset| (the widest
    arc drawn reaches 1)."""
    if not len(pos):
        return []
    theta = np.linspace(0.0, np.pi, _ARC_POINTS)
    start, end = pos.astype(np.float64), (pos + offset).astype(np.float64)
    height = 0.15 + 0.85 * np.abs(offset).astype(np.float64) / widest
    xs = start[:, None] + (end - start)[:, None] * (1 - np.cos(theta))[None, :] / 2
    ys = sign * height[:, None] * np.sin(theta)[None, :]
    return list(np.stack([xs, ys], axis=-1))


def _panels(data: dict) -> list[tuple[str, float]]:
    panels = [("likelihood", 3.0), ("z", 2.0)]
    if data["entropy"] is not None:
        panels.append(("entropy", 1.5))
    if data["repeats"] is not None:
        classes = len({r["class"] for r in data["repeats"]})
        panels.append(("repeats", min(3.0, max(0.8, 0.35 * classes))))
    if data["copies"]["total"]:
        panels.append(("copies", 2.0))
    if data["ablations"] is not None:
        panels.append(("net_gain", 1.5))
    return panels


def draw_track(figure, data: dict) -> None:
    """Draw the panels of ``data`` on ``figure`` (see the module docstring)."""
    from matplotlib.ticker import FuncFormatter

    region, per_bin = data["region"], data["per_bin"]
    binned, x = per_bin > 1, data["x"]
    dots = not binned and region.size <= 300
    by_name = stacked_axes(figure, _panels(data))
    suffix = " (bin mean, min-max band)" if binned else ""

    ax = by_name["likelihood"]
    for colour, (column, values) in zip(_LINE_COLOURS, data["likelihood"].items()):
        _line(ax, x, values, label=column + suffix, gid=column, colour=colour, binned=binned,
              dots=dots)
    ax.set_ylabel(data["column"] if len(data["likelihood"]) == 1 else "log p")

    ax = by_name["z"]
    _line(ax, x, data["z"], label="robust z" + suffix, gid="z", colour="black", binned=binned,
          dots=dots)
    for tail, sign in (("high", 1), ("low", -1)):
        ax.axhline(sign * data["threshold"], color=_TAIL_COLOURS[tail], linestyle="--",
                   linewidth=0.8, gid=f"threshold:{tail}",
                   label=f"|z| = {data['threshold']:g}" if tail == "high" else None)
    ax.set_ylabel("robust z")

    if "entropy" in by_name:
        _line(by_name["entropy"], x, data["entropy"], label="entropy" + suffix, gid="entropy",
              colour="tab:brown", binned=binned, dots=dots)
        by_name["entropy"].set_ylabel("entropy (nats)")

    for name in ("likelihood", "z", "entropy"):
        if name in by_name:
            _shade_anomalies(by_name[name], data["anomaly_regions"], legend=name == "likelihood")
    for name in ("likelihood", "z"):
        handles, _ = by_name[name].get_legend_handles_labels()
        if handles:
            by_name[name].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small",
                                 frameon=False)

    if "repeats" in by_name:
        draw_repeats(by_name["repeats"], data["repeats"], binned)
    if "copies" in by_name:
        draw_copies(by_name["copies"], data["copies"])
    if "net_gain" in by_name:
        _draw_net_gain(by_name["net_gain"], data["ablations"], binned)

    last = list(by_name.values())[-1]
    last.set_xlim(region.start, region.end)
    last.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    last.set_xlabel(f"{region.seq_id} position (0-based; {region.start:,}-{region.end:,} of "
                    f"{region.length:,})")
    title = f"{region} ({region.size:,} positions)"
    if binned:
        title += f"; binned: {per_bin:,} positions per bin"
    figure.suptitle(title)


def stacked_axes(figure, panels: list[tuple[str, float]]) -> dict:
    """One axes per ``(name, height ratio)`` panel, stacked with a shared x axis, each
    labelled with its name (tests find them by it): name -> axes."""
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False,
                           gridspec_kw={"height_ratios": [h for _, h in panels]})[:, 0]
    by_name = dict(zip((name for name, _ in panels), axes))
    for name, ax in by_name.items():
        ax.set_label(name)
    return by_name


def draw_repeats(ax, repeats: list[dict], binned: bool) -> None:
    from matplotlib import colormaps
    from matplotlib.collections import PolyCollection

    classes = sorted({r["class"] for r in repeats})
    palette = colormaps["tab10" if len(classes) <= 10 else "tab20"]
    for lane, name in enumerate(classes):
        mine = [(r["start"], r["end"]) for r in repeats if r["class"] == name]
        boxes = PolyCollection(_interval_boxes(mine, lane - 0.4, lane + 0.4),
                               facecolors=palette(lane % palette.N), edgecolors="none",
                               gid=f"repeats:{name}", label=name)
        ax.add_collection(boxes, autolim=False)
    ax.set_ylim(len(classes) - 0.5 if classes else 0.5, -0.5)
    ax.set_yticks([])
    ax.set_ylabel("repeats")
    if classes:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="x-small",
                  frameon=False, ncols=1 + len(classes) // 8)
    else:
        ax.text(0.5, 0.5, "no repeats in this region", transform=ax.transAxes,
                ha="center", va="center", fontsize="small", gid="note", in_layout=False)
    if binned and any(r["merged"] > 1 for r in repeats):
        ax.text(0.0, 1.0, "repeats of a class less than a bin apart are drawn as one box",
                transform=ax.transAxes, ha="left", va="bottom", fontsize="x-small",
                gid="note")


def draw_copies(ax, copies: dict) -> None:
    from matplotlib.collections import LineCollection

    shown = len(copies["pos"])
    width = 0.8 if shown <= 200 else 0.4
    widest = float(np.abs(copies["offset"]).max()) if shown else 1.0
    for strand, sign in (("+", 1.0), ("-", -1.0)):
        mine = copies["strand"] == strand
        arcs = _arcs(copies["pos"][mine], copies["offset"][mine], sign, widest or 1.0)
        if arcs:
            ax.add_collection(LineCollection(arcs, colors=_STRAND_COLOURS[strand],
                                             linewidths=width, alpha=0.6, gid=f"copies:{strand}"),
                              autolim=False)
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_ylim(-1.1, 1.1)
    ax.set_yticks([])
    ax.set_ylabel("copies")
    ax.text(0.005, 0.98, "direct (+)", transform=ax.transAxes, va="top", fontsize="x-small",
            color=_STRAND_COLOURS["+"], in_layout=False)
    ax.text(0.005, 0.02, "reverse complement (-)", transform=ax.transAxes, va="bottom",
            fontsize="x-small", color=_STRAND_COLOURS["-"], in_layout=False)
    if copies["stride"] > 1:
        ax.text(1.0, 1.0, f"arcs: 1 in {copies['stride']:,} of {copies['total']:,} copies "
                f"shown ({shown:,})", transform=ax.transAxes, ha="right", va="bottom",
                fontsize="x-small", gid="arcs-note")


def _draw_net_gain(ax, ablations: dict, binned: bool) -> None:
    series, methods = ablations["series"], ablations["methods"]
    ax.axhline(0.0, color="gray", linewidth=0.6)
    colours = ("tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:brown")
    for n, ((method, seed), values) in enumerate(series.items()):
        colour = colours[n % len(colours)]
        ax.plot(values["x"], values["mean"], linestyle="none", marker="o", markersize=3,
                color=colour, label=f"{method}, seed {seed}", gid=f"net_gain:{method}:{seed}")
        if binned:
            ax.vlines(values["x"], values["min"], values["max"], color=colour, linewidth=0.6,
                      gid=f"net_gain:{method}:{seed}:range")
    if len(methods) == 1:
        method, seed = methods[0]
        ax.set_ylabel(f"net_gain\n({method}, seed {seed})")
    else:
        ax.set_ylabel("net_gain")
        if series:
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="x-small",
                      frameon=False, title=f"{len(methods)} method/seed runs", title_fontsize=7)
    if not series:
        which = f" by {ablations['chosen']!r}" if ablations["chosen"] else ""
        ax.text(0.5, 0.5, f"no position probed{which} in this region (`seqatlas probe icl`)",
                transform=ax.transAxes, ha="center", va="center", fontsize="small", gid="note", in_layout=False)
