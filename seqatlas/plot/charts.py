"""Drawing the enrichment forest plot, the score and robust-z histograms, identity vs context
per layer, look-up vs control gains and an index's calibration curve, from what
:mod:`seqatlas.plot.tables` returns. Artists carry a ``gid`` naming what they show (see each
function), so a figure can be checked against the data it was drawn from."""

from __future__ import annotations

import math

import numpy as np

from seqatlas.plot.tables import MEASURES

_MEASURE_COLOURS = dict(zip(MEASURES, ("tab:blue", "tab:orange", "tab:green", "tab:red")))
_STRANDS = {"+": ("tab:green", "direct (+)"), "-": ("tab:purple", "reverse complement (-)")}
_MARKERS = {"mask": "o", "shuffle": "s", "substitute": "^"}
_VARIANT_COLOURS = {"original": "tab:blue", "shuffled": "tab:orange"}


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


def _q_text(q: float) -> str:
    return "q = n/a" if not math.isfinite(q) else f"q = {q:.3g}"


def draw_enrichment(figure, rows: list[dict], *, title: str) -> None:
    """Forest plot, one row per group in table order (top first): ``odds_ratio`` (an
    errorbar container: the odds ratios with their 95% interval), ``odds_ratio:clipped``
    (infinite or zero odds ratios, drawn at the axis edge with an arrow marker; their
    interval as ``ci:clipped``), ``not-estimable`` texts (NaN odds ratios), ``q-value`` texts
    and the ``no-effect`` line at 1, on a log axis."""
    ax = figure.add_subplot()
    ax.set_label("enrichment")
    ys = np.arange(len(rows), dtype=np.float64)
    positive = [v for r in rows for v in (r["odds_ratio"], r["ci_low"], r["ci_high"])
                if math.isfinite(v) and v > 0]
    low, high = min(positive + [1.0]) / 2, max(positive + [1.0]) * 2
    ax.set_xscale("log")
    ax.set_xlim(low, high)
    finite = [i for i, r in enumerate(rows) if math.isfinite(r["odds_ratio"])
              and r["odds_ratio"] > 0]
    if finite:
        odds = np.array([rows[i]["odds_ratio"] for i in finite])
        ci = np.array([[rows[i]["ci_low"], rows[i]["ci_high"]] for i in finite])
        ci = np.where(np.isfinite(ci) & (ci > 0), ci, odds[:, None])
        errors = np.clip(np.stack([odds - ci[:, 0], ci[:, 1] - odds]), 0, None)
        ax.errorbar(odds, ys[finite], xerr=errors, fmt="o", color="black", ecolor="black",
                    capsize=3, markersize=5, gid="odds_ratio", label="odds ratio (95% CI)")
    # an odds ratio a log axis cannot show: at the edge, the arrow pointing off the axis
    for value, x, marker, name in ((math.inf, high / 1.15, ">", "inf"),
                                   (0.0, low * 1.15, "<", "0")):
        mine = [i for i, r in enumerate(rows) if r["odds_ratio"] == value]
        if not mine:
            continue
        ax.plot([x] * len(mine), ys[mine], linestyle="none", marker=marker, color="tab:red",
                markersize=8, gid="odds_ratio:clipped",
                label=f"odds ratio {name} (drawn at the edge)")
        bounded = [i for i in mine if math.isfinite(rows[i]["ci_low"])
                   and math.isfinite(rows[i]["ci_high"]) and rows[i]["ci_low"] > 0]
        if bounded:
            ax.hlines(ys[bounded], [rows[i]["ci_low"] for i in bounded],
                      [rows[i]["ci_high"] for i in bounded], color="tab:red", gid="ci:clipped")
    drawn = set(finite) | {i for i, r in enumerate(rows) if r["odds_ratio"] in (math.inf, 0.0)}
    for i, row in enumerate(rows):
        if i not in drawn:  # NaN (or a negative odds ratio in a table passed in)
            ax.text(1.0, ys[i], "  not estimable (empty margin or no anomalies)", va="center",
                    fontsize="small", color="gray", gid="not-estimable", in_layout=False)
        ax.text(1.01, ys[i], _q_text(row["q_value"]), transform=ax.get_yaxis_transform(),
                va="center", fontsize="small", gid="q-value")
    ax.axvline(1.0, color="gray", linestyle="--", linewidth=0.8, gid="no-effect")
    ax.set_yticks(ys, [str(r["group"]) for r in rows])
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlabel("odds ratio of anomalies, inside vs outside the group (log scale)")
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(loc="lower right", fontsize="small")
    figure.suptitle(title)


def _normal(xs: np.ndarray, centre: float, scale: float, count: float, width: float):
    return count * width * np.exp(-0.5 * ((xs - centre) / scale) ** 2) / (
        scale * math.sqrt(2 * math.pi))


def _histogram_panel(ax, histogram: dict, *, count: int, centre: float,
                     scale: float | None, lines: list[tuple[float, str, str]],
                     fontsize: float) -> None:
    edges, counts = histogram["edges"], histogram["counts"]
    ax.stairs(counts, edges, fill=True, alpha=0.45, color="tab:blue", gid="histogram")
    if scale:
        xs = np.linspace(edges[0], edges[-1], 200)
        ax.plot(xs, _normal(xs, centre, scale, count, edges[1] - edges[0]), color="black",
                linewidth=0.9, gid="fit")
    for x, style, gid in lines:
        ax.axvline(x, color="tab:red" if gid.startswith("threshold") else "black",
                   linestyle=style, linewidth=0.8, gid=gid)
    outside = [f"{histogram[k]:,} {k}" for k in ("below", "above") if histogram[k]]
    if outside:
        # inside the panel: never a reason for the layout to shrink it
        ax.text(0.99, 0.97, " / ".join(outside) + " the axis", transform=ax.transAxes,
                ha="right", va="top", fontsize=fontsize, gid="outside", in_layout=False)


def draw_distribution(figure, data: dict) -> None:
    """Per reference letter two panels (labels ``score:REF`` and ``z:REF``): histogram
    (``histogram``, a step patch of counts over edges), the robust normal fit scaled to the
    counts (``fit``), the median (``median``) and median +- scale (``scale``) lines, and on
    the z panel the +-z thresholds (``threshold:high|low``)."""
    from matplotlib.ticker import MaxNLocator

    letters = data["letters"]
    ncols = len(letters) if len(letters) <= 4 else math.ceil(math.sqrt(len(letters)))
    nrows = math.ceil(len(letters) / ncols)
    grid = figure.add_gridspec(2 * nrows, ncols)
    # points per panel side: small panels get small text, so the axes keep their room
    side = min(figure.get_figwidth() * 72 / ncols, figure.get_figheight() * 72 / (2 * nrows))
    fontsize = max(4.0, min(8.0, side / 14))
    threshold = data["threshold"]
    for i, letter in enumerate(letters):
        row, col = divmod(i, ncols)
        ref, median, scale = letter["ref"], letter["median"], letter["scale"]
        ax = figure.add_subplot(grid[2 * row, col])
        ax.set_label(f"score:{ref}")
        lines = [(median, "-", "median")]
        if scale:
            lines += [(median - scale, ":", "scale"), (median + scale, ":", "scale")]
        _histogram_panel(ax, letter["score"], count=letter["n"], centre=median, scale=scale,
                         lines=lines, fontsize=fontsize)
        scale_text = f"{scale:.3g}" if scale else "0"
        ax.set_title(f"{ref}: n = {letter['n']:,}\nmedian {median:.3g}, scale {scale_text}",
                     fontsize=fontsize)
        ax.set_xlabel(data["column"], fontsize=fontsize)
        zax = figure.add_subplot(grid[2 * row + 1, col])
        zax.set_label(f"z:{ref}")
        if letter["z"] is not None:
            _histogram_panel(zax, letter["z"], count=letter["nz"], centre=0.0, scale=1.0,
                             lines=[(threshold, "--", "threshold:high"),
                                    (-threshold, "--", "threshold:low")], fontsize=fontsize)
        else:
            zax.text(0.5, 0.5, "no z: all values equal", transform=zax.transAxes,
                     ha="center", va="center", fontsize=fontsize, gid="note", in_layout=False)
        zax.set_xlabel("robust z" + (f" (smoothed, {data['smooth']})"
                                     if data["smooth"] > 1 else ""), fontsize=fontsize)
        for each in (ax, zax):
            each.tick_params(labelsize=fontsize)
            each.xaxis.set_major_locator(MaxNLocator(4))
            each.yaxis.set_major_locator(MaxNLocator(4))
    total = sum(letter["n"] for letter in letters)
    figure.suptitle(f"{data['column']} and robust z per reference letter ({total:,} scored "
                    "positions)\nblack: the robust normal fit (median, 1.4826 MAD)",
                    fontsize=min(12.0, max(6.0, figure.get_figwidth() * 72 / 60)))


def draw_identity(figure, rows: list[dict], *, title: str) -> None:
    """One line per measure over the layers (gid = the measure) and its chance level dashed
    (gid ``MEASURE_chance``)."""
    ax = figure.add_subplot()
    ax.set_label("identity")
    layers = np.array([row["layer"] for row in rows], dtype=np.float64)
    for measure in MEASURES:
        colour = _MEASURE_COLOURS[measure]
        values = np.array([row[measure] for row in rows], dtype=np.float64)
        chance = np.array([row[f"{measure}_chance"] for row in rows], dtype=np.float64)
        ax.plot(layers, values, marker="o", color=colour, label=measure, gid=measure)
        chance_x = layers if len(layers) > 1 else np.array([layers[0] - 0.5, layers[0] + 0.5])
        chance_y = chance if len(layers) > 1 else np.repeat(chance, 2)
        ax.plot(chance_x, chance_y, linestyle="--", color=colour, linewidth=0.9,
                label=f"{measure} chance", gid=f"{measure}_chance")
    ax.set_xticks(layers, [str(int(v)) for v in layers])
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("layer")
    ax.set_ylabel("fraction of neighbours in agreement")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small", frameon=False)
    figure.suptitle(title)


def _diagonal(ax, xs, ys) -> None:
    values = [v for v in (*xs, *ys, 0.0) if math.isfinite(v)]
    low, high = min(values), max(values)
    pad = 0.05 * (high - low or 1.0)
    low, high = low - pad, high + pad
    ax.plot([low, high], [low, high], color="gray", linestyle="--", linewidth=0.8,
            gid="diagonal", label="icl_gain = control_gain")
    ax.axhline(0.0, color="gray", linewidth=0.5)
    ax.axvline(0.0, color="gray", linewidth=0.5)
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)


def draw_icl(figure, targets: list[dict] | None, doubling: list[dict] | None,
             *, titles: tuple[str, str]) -> None:
    """Scatter of icl_gain (y) against control_gain (x): per probed target (panel ``icl``,
    one collection per copy strand, method and seed, gid ``icl:STRAND:METHOD:SEED``) and per
    doubling-probe row (panel ``doubling``, one per variant, gid ``doubling:VARIANT``), each
    with the ``diagonal`` y = x."""
    panels = [p for p, rows in (("icl", targets), ("doubling", doubling)) if rows is not None]
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for name, ax in zip(panels, axes):
        ax.set_label(name)
        ax.set_xlabel("control_gain (nats): a matched control corrupted")
        ax.set_ylabel("icl_gain (nats): the copy corrupted")
    if targets is not None:
        ax = axes[panels.index("icl")]
        drawn = [t for t in targets if _finite(t["icl_gain"]) and _finite(t["control_gain"])]
        runs = sorted({(t["method"], t["seed"]) for t in targets})
        many = len(drawn) > 5000
        for strand, (colour, name) in _STRANDS.items():
            for method, seed in runs:
                mine = [t for t in drawn if t["copy_strand"] == strand and t["method"] == method
                        and t["seed"] == seed]
                if not mine:
                    continue
                label = name if len(runs) == 1 else f"{name}, {method} seed {seed}"
                ax.scatter([t["control_gain"] for t in mine], [t["icl_gain"] for t in mine],
                           s=12, color=colour, marker=_MARKERS.get(method, "o"), alpha=0.7,
                           label=label, gid=f"icl:{strand}:{method}:{seed}", rasterized=many)
        _diagonal(ax, [t["control_gain"] for t in drawn], [t["icl_gain"] for t in drawn])
        missing = len(targets) - len(drawn)
        title = titles[0] + (f"\n{missing:,} target(s) without a control value not shown"
                             if missing else "")
        ax.set_title(title, fontsize="small")
        ax.legend(fontsize="x-small", loc="upper left")
    if doubling is not None:
        ax = axes[panels.index("doubling")]
        drawn = [r for r in doubling if _finite(r["icl_gain"]) and _finite(r["control_gain"])]
        for variant in sorted({r["variant"] for r in drawn}):
            mine = [r for r in drawn if r["variant"] == variant]
            ax.scatter([r["control_gain"] for r in mine], [r["icl_gain"] for r in mine], s=20,
                       color=_VARIANT_COLOURS.get(variant, "tab:gray"), alpha=0.8,
                       label=variant, gid=f"doubling:{variant}")
            if len(drawn) <= 20:
                for r in mine:
                    ax.annotate(str(r["seq_id"]), (r["control_gain"], r["icl_gain"]),
                                fontsize="x-small", xytext=(3, 3), textcoords="offset points")
        _diagonal(ax, [r["control_gain"] for r in drawn], [r["icl_gain"] for r in drawn])
        missing = len(doubling) - len(drawn)
        ax.set_title(titles[1] + (f"\n{missing:,} row(s) without both gains not shown"
                                  if missing else ""), fontsize="small")
        ax.legend(fontsize="x-small", loc="upper left")
    figure.suptitle("look-up vs control: above the diagonal, corrupting the copy costs more "
                    "than corrupting a matched control", fontsize="medium")


def draw_calibration(figure, curve: dict) -> None:
    """recall@10 per search setting (``recall`` line), the ``target`` recall and the
    ``chosen`` setting."""
    ax = figure.add_subplot()
    ax.set_label("calibration")
    ax.plot(curve["values"], curve["recall"], marker="o", color="tab:blue", gid="recall",
            label="recall@10 of the calibration queries")
    if curve["target"] is not None:
        ax.axhline(curve["target"], color="tab:red", linestyle="--", linewidth=0.8,
                   gid="target", label=f"target {curve['target']:g}")
    if curve["chosen"] is not None:
        ax.axvline(curve["chosen"], color="gray", linestyle=":", gid="chosen",
                   label=f"chosen {curve['parameter']} = {curve['chosen']}")
    ax.set_xscale("log", base=2)
    ax.set_ylim(min(0.0, float(curve["recall"].min())) - 0.02, 1.02)
    ax.set_xlabel(curve["parameter"])
    ax.set_ylabel("recall@10")
    ax.legend(loc="lower right", fontsize="small")
    queries = f", {curve['queries']:,} queries" if curve["queries"] else ""
    figure.suptitle(f"index {curve['index']!r} ({curve['type']}, {curve['metric']}{queries}) "
                    f"of {curve['atlas']}")
