"""``report``: one self-contained HTML file that ties an atlas's tables and plots together.

Everything is inlined (PNG images as data URIs, a short stylesheet, no script, no font or
link that leaves the file), so the report opens offline and can be mailed or archived as one
file. Sections appear only for what an atlas holds:

- ``summary``: model, weights hash, scoring settings, inputs, table sizes, warnings;
- ``sequences``: per sequence length, PLL, mean logp, pseudo-perplexity, top-1 accuracy;
- ``distribution``: score and robust-z histograms per reference letter with the robust fit;
- ``anomalies``: the top anomalous regions (by peak |z|) with a track of each;
- ``enrichment``: anomaly odds ratios per repeat class, the table and a forest plot;
- ``copies``: ``probe icl`` gains (look-up vs matched control) per copy strand, and the
  doubling probe's results when a ``probe doubling`` output is given;
- ``identity``: identity vs context agreement of embedding neighbours per layer;
- ``indexes``: each embedding index with its recall calibration curve;
- ``pooled`` (an atlas that stores embeddings or pooled rows): the pooled vectors of the
  first pooled layer (mean pooling when stored) on their first two principal components
  (:func:`seqatlas.plot.embedding`), with the number of vectors and each component's
  explained variance. Points are coloured by :func:`pooled_color`: per-bin vectors by
  ``repeat_class`` (the class covering most of the bin) when the atlas has repeats, else by
  sequence; per-sequence vectors by the first word of the sequence description when any
  sequence has one, else by length. Without pooled rows the section says how to make them
  (``seqatlas pool``);
- ``variants`` (an atlas that stores per-position distributions, ingest's
  ``--distributions``): the LLR of every substitution at the atlas's first positions
  (:func:`seqatlas.variants.scan.scan_first`, at most ``variant_positions``) inside vs
  outside in-context copies and inside vs outside repeats: histograms and a table of counts,
  means and medians.

Images are PNG at a fixed pixel size and tables are capped (the cap is stated where it
applies), so the file stays small (a few MB) for a chromosome-scale atlas.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from seqatlas import plot, schema
from seqatlas.atlas import Atlas
from seqatlas.errors import ConfigError
from seqatlas.index.store import list_indexes, read_meta
from seqatlas.index.vectors import stored_layers
from seqatlas.query import AnomalyParams, enrichment, identity
from seqatlas.query.per_sequence import sequence_summary
from seqatlas.query.views import default_column
from seqatlas.query.regions import anomalies
from seqatlas.plot.output import new_figure, render
from seqatlas.plot.projection import ProjectionConfig, pooled_projection
from seqatlas.plot.tables import doubling_rows
from seqatlas.util import format_size, output_file
from seqatlas.variants.scan import scan_first

# Beyond this many tokens identity vs context is drawn only from a built index.
EXACT_IDENTITY_TOKENS = 2_000_000
SECTIONS = ("summary", "sequences", "distribution", "anomalies", "enrichment", "copies",
            "identity", "indexes", "pooled")
# sections of an atlas that stores per-position distributions (ingest --distributions),
# after those of SECTIONS
DISTRIBUTION_SECTIONS = ("variants",)
# the stored variant sets' look-up rows by kind of copy (the variants section)
LOOKUP_SHIFT_SQL = """
    SELECT v.variant_set, v.lookup_method AS method,
           CASE WHEN p.copy_strand = '-' THEN 'reverse-complement copy'
                WHEN EXISTS (SELECT 1 FROM repeats r WHERE r.seq_id = v.seq_id
                             AND r.start <= v.pos AND r."end" > v.pos
                             AND r.source <> 'seqatlas-copies') THEN 'direct copy in a repeat'
                ELSE 'interspersed direct copy' END AS copy_kind,
           count(*) AS sites, count(v.lookup_shift) AS with_control,
           avg(v.llr_intact - v.llr_partner) AS icl_shift,
           avg(v.llr_intact - v.llr_control) AS control_shift,
           avg(v.lookup_shift) AS lookup_shift, avg(abs(v.lookup_shift)) AS mean_abs_lookup_shift
    FROM variants v LEFT JOIN positions p ON p.seq_id = v.seq_id AND p.pos = v.pos
    WHERE v.lookup_method IS NOT NULL
    GROUP BY ALL ORDER BY ALL"""


@dataclass
class ReportConfig:
    """What goes into the report and how large it may grow."""

    top_regions: int = 5  # anomalous regions shown with a track each
    max_sequences: int = 500  # rows of the per-sequence table
    flank: int = 50  # positions drawn on each side of an anomalous region
    identity_sample: int = 500  # tokens sampled by the identity diagnostic
    image_size: tuple[int, int] = (1000, 560)  # pixels of each plot
    variant_positions: int = 200_000  # positions whose substitutions the variants section scans

    def validate(self) -> None:
        if self.top_regions < 0 or self.max_sequences < 1 or self.flank < 0:
            raise ConfigError("--top-regions and --flank must be 0 or more, --max-sequences 1 "
                              "or more")
        if self.identity_sample < 1:
            raise ConfigError("--identity-sample must be 1 or more")
        if isinstance(self.variant_positions, bool) or \
                not isinstance(self.variant_positions, int) or self.variant_positions < 1:
            raise ConfigError(f"variant_positions must be a whole number, 1 or more, not "
                              f"{self.variant_positions!r}")
        width, height = self.image_size
        if not (100 <= width <= 4000 and 100 <= height <= 4000):
            raise ConfigError("image sizes must be 100 to 4000 pixels on each side")


def _png(figure) -> str:
    data = base64.b64encode(render(figure, "png")).decode("ascii")
    return f'<img alt="" src="data:image/png;base64,{data}">'


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.4g}" if abs(value) < 1e6 else f"{value:.4e}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return html.escape(str(value))


def _table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return "<p>(none)</p>"
    columns = columns or list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(row.get(c))}</td>" for c in columns) +
                   "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pairs(items: dict) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_cell(v)}</td></tr>"
                   for k, v in items.items() if v is not None)
    return f'<table class="pairs">{rows}</table>'


class _AtlasReport:
    """The sections of one atlas, each rendered only when the atlas holds its data."""

    def __init__(self, atlas: Atlas, config: ReportConfig, params: AnomalyParams,
                 doubling, number: int):
        self.atlas = atlas
        self.config = config
        self.params = params
        self.doubling = doubling
        self.prefix = f"a{number}-"
        summary = atlas.summary()
        self.info = summary
        self.rows = {t: v["rows"] for t, v in summary["tables"].items()}
        self.method_note = ""
        if self.rows["ablations"] and params.ablation_method is None:
            methods = {r["method"] for r in atlas.sql(
                "SELECT DISTINCT method FROM ablations").to_pylist()}
            if len(methods) > 1:  # the views need one: the first in the schema's order
                chosen = next(m for m in schema.ABLATION_METHODS if m in methods)
                self.params = dataclasses.replace(params, ablation_method=chosen)
                self.method_note = (f"<p>The atlas holds probe icl runs of several methods "
                                    f"({', '.join(sorted(methods))}); anomalies and "
                                    f"enrichment carry those of <code>{chosen}</code> "
                                    "(--ablation-method chooses another).</p>")
        column = params.column or default_column(atlas.manifest.scoring)
        # positions with a score: none for an embeddings-only atlas, or one of long N runs
        self.scored = int(atlas.sql(f'SELECT count("{column}") AS n FROM positions')
                          .column("n")[0].as_py()) if column and self.rows["positions"] else 0
        self.seconds: dict[str, float] = {}

    def _size(self) -> dict:
        width, height = self.config.image_size
        return {"size": (width, height)}

    def summary(self) -> str:
        info = self.info
        model = info["model"] or {}
        facts = {"atlas": info["path"], "kind": info["kind"], "model": model.get("name"),
                 "model source": model.get("source"),
                 "model type": model.get("model_type"),
                 "parameters": model.get("parameters"),
                 "weights sha256": model.get("weights_sha256"),
                 "tokenizer": (model.get("tokenizer") or {}).get("family"),
                 "created": info["created"], "updated": info["updated"]}
        scoring = {k: v if not isinstance(v, (list, dict)) else str(v)
                   for k, v in (info["scoring"] or {}).items()}
        inputs = [{"path": i.get("path"), "kind": i.get("kind"),
                   "sequences": i.get("records"), "residues": i.get("residues"),
                   "sha256": i.get("sha256")}
                  for i in info["inputs"]]
        tables = [{"table": t, "rows": v["rows"], "parts": v["parts"],
                   "bytes": format_size(v["bytes"])} for t, v in info["tables"].items()
                  if v["parts"]]
        parts = [_pairs(facts), "<h3>Scoring settings</h3>", _pairs(scoring),
                 "<h3>Inputs</h3>", _table(inputs), "<h3>Tables</h3>", _table(tables)]
        if info["warnings"]:
            parts += ["<h3>Warnings</h3>", "<ul>" + "".join(
                f"<li>{html.escape(str(w.get('message', w)))}</li>"
                for w in info["warnings"]) + "</ul>"]
        return "".join(parts)

    def sequences(self) -> str | None:
        if not self.rows["positions"] or default_column(self.atlas.manifest.scoring) is None:
            return None
        total = self.rows["sequences"]
        rows = sequence_summary(self.atlas, limit=self.config.max_sequences)
        columns = ["seq_id", "length", "scored", "pll", "mean_logp", "pseudo_perplexity",
                   "top1_accuracy"]
        if any(r["mean_logp_rc"] is not None for r in rows):
            columns.insert(5, "mean_logp_rc")
        note = (f"<p>The first {len(rows):,} of {total:,} sequences, in atlas order.</p>"
                if total > len(rows) else "")
        return note + _table(rows, columns)

    def distribution(self) -> str | None:
        if not self.scored:
            return None
        return _png(plot.distribution(self.atlas, params=self.params, **self._size()))

    def anomalies(self) -> str | None:
        if not self.scored:
            return None
        regions = anomalies(self.atlas, params=self.params).to_pylist()
        if not regions:
            return f"<p>No anomalous regions at |z| &ge; {self.params.z}.</p>"
        top = sorted(regions, key=lambda r: (-abs(r["peak_z"] or 0), r["seq_id"], r["start"]))
        top = top[: self.config.top_regions]
        columns = [c for c in ("seq_id", "start", "end", "tail", "n_anomalous", "mean_z",
                               "peak_z", "copy_fraction", "n_probed", "net_gain",
                               "explained_fraction") if c in regions[0]]
        parts = [self.method_note, f"<p>{len(regions):,} anomalous regions at |z| &ge; {self.params.z}; the "
                 f"top {len(top)} by peak |z|, each drawn with {self.config.flank} positions "
                 "on each side.</p>", _table(top, columns)]
        lengths = {r["seq_id"]: r["length"] for r in self.atlas.sequences(
            columns=["seq_id", "length"]).to_pylist()}
        for region in top:
            start = max(0, region["start"] - self.config.flank)
            end = min(lengths[region["seq_id"]], region["end"] + self.config.flank)
            label = f"{region['seq_id']}:{start}-{end}"
            figure = plot.track(self.atlas, region=label, params=self.params, **self._size())
            parts.append(f"<h3>{html.escape(label)}</h3>{_png(figure)}")
        return "".join(parts)

    def enrichment(self) -> str | None:
        if not self.scored or not self.rows["repeats"]:
            return None
        table = enrichment(self.atlas, by="class", params=self.params)
        columns = [c for c in ("group", "n_inside", "anomalous_inside", "rate_inside",
                               "rate_outside", "odds_ratio", "ci_low", "ci_high", "p_value",
                               "q_value", "mean_net_gain", "explained_fraction")
                   if c in table.column_names]
        figure = plot.enrichment(self.atlas, table=table, **self._size())
        return self.method_note + _table(table.to_pylist(), columns) + _png(figure)

    def copies(self) -> str | None:
        if not self.rows["ablations"] and self.doubling is None:
            return None
        parts = []
        if self.rows["ablations"]:
            rows = self.atlas.sql(
                """SELECT method, seed, copy_strand, count(*) AS positions,
                          count(DISTINCT (target_start, target_end)) AS targets,
                          avg(icl_gain) AS mean_icl_gain,
                          avg(control_gain) AS mean_control_gain,
                          avg(net_gain) AS mean_net_gain
                   FROM ablations GROUP BY ALL ORDER BY ALL""").to_pylist()
            parts += ["<p>Per probed position: icl_gain is the drop in logp when the copy's "
                      "partner is corrupted, control_gain the drop when a matched control "
                      "region is corrupted the same way; net_gain = icl_gain - control_gain "
                      "is the look-up effect beyond the corruption itself.</p>", _table(rows)]
        if self.doubling is not None:
            rows = self.doubling.group_by(["variant", "method"], use_threads=False).aggregate(
                [("seq_id", "count"), ("icl_gain", "mean"), ("control_gain", "mean"),
                 ("net_gain", "mean"), ("doubling_gain", "mean")]).to_pylist()
            parts += ["<h3>Doubling probe (S+S vs S+C)</h3>", _table(rows)]
        parts.append(_png(plot.icl(self.atlas, doubling=self.doubling, **self._size())))
        return "".join(parts)

    def identity(self) -> str | None:
        layers = stored_layers(self.atlas)
        if not layers or not self.rows["tokens"]:
            return None
        indexed = {entry["column"] for entry in list_indexes(self.atlas)}
        if self.rows["tokens"] > EXACT_IDENTITY_TOKENS and not set(layers.values()) & indexed:
            return (f"<p>Not computed: {self.rows['tokens']:,} tokens are too many for an exact "
                    "neighbour search here. Build an index (<code>seqatlas index build --atlas "
                    f"{html.escape(str(self.atlas.path))}</code>) and run the report again.</p>")
        table = identity(self.atlas, sample=self.config.identity_sample)
        figure = plot.identity(self.atlas, table=table, **self._size())
        return _table(table.to_pylist()) + _png(figure)

    def indexes(self) -> str | None:
        built = list_indexes(self.atlas)
        if not built:
            return None
        rows, parts = [], []
        for entry in built:
            search = read_meta(self.atlas, entry["name"]).get("search") or {}
            rows.append({**{k: entry[k] for k in ("name", "type", "metric", "column", "ntotal",
                                                   "bytes_per_vector")},
                         "recall_at_10": search.get("recall_at_10"),
                         "setting": (f"{search['parameter']}={search[search['parameter']]}"
                                     if search.get("parameter") else "exact")})
            if search.get("curve"):
                figure = plot.calibration(self.atlas, index=entry["name"], **self._size())
                parts.append(f"<h3>{html.escape(entry['name'])}</h3>{_png(figure)}")
        return _table(rows) + "".join(parts)

    def pooled(self) -> str | None:
        pooling = self.atlas.manifest.pooling
        if not pooling or not self.rows.get("pooled"):
            if not stored_layers(self.atlas):
                return None
            where = html.escape(str(self.atlas.path))
            return ("<p>No pooled embeddings: this atlas stores token embeddings but no "
                    "vectors pooled from them. Make them with <code>seqatlas pool --atlas "
                    f"{where}</code> (one vector per sequence, or per bin with "
                    "<code>--bin</code>) and run the report again.</p>")
        level = "bin" if pooling.get("bin") else "sequence"
        color = pooled_color(self.atlas, level=level, repeats=bool(self.rows["repeats"]))
        try:
            projection = pooled_projection(self.atlas, ProjectionConfig(color=color))
        except ConfigError as exc:  # e.g. fewer than 3 vectors
            return f"<p>Not drawn: {html.escape(str(exc))}</p>"
        unit = "sequence" if not projection.bin else f"{projection.bin:,}-base bin"
        facts = {"vectors": projection.table.num_rows, "vectors stored (this layer and pooling)":
                 projection.matched, "one vector per": unit, "layer": projection.layer,
                 "pooling": projection.pooling, "dimensions": projection.dimensions,
                 "PC1 explained variance": f"{100 * projection.explained[0]:.1f}%",
                 "PC2 explained variance": f"{100 * projection.explained[1]:.1f}%",
                 "coloured by": color}
        layers = ", ".join(map(str, pooling.get("layers") or []))
        poolings = ", ".join(pooling.get("poolings") or [])
        others = (f" The atlas holds pooled vectors of layers {layers} ({poolings} pooling); "
                  f"shown: layer {projection.layer}, {projection.pooling} pooling. "
                  "<code>seqatlas plot embedding --layer L --pooling P</code> draws another."
                  if "," in layers or "," in poolings else "")
        text = (f"<p>The pooled vectors on their first two principal components (PCA of the "
                f"centred vectors).{others}</p>")
        figure = plot.embedding(self.atlas, projection=projection, **self._size())
        return text + _pairs(facts) + _png(figure)

    def variants(self) -> str | None:
        scoring = self.atlas.manifest.scoring
        if scoring is None or not scoring.stores_distributions() or not self.rows["positions"]:
            return None
        cap = self.config.variant_positions
        scan, covered = scan_first(self.atlas, max_positions=cap)
        total = sum(length for length in self.atlas.sequences(
            columns=["length"])["length"].to_pylist())
        llr = scan["llr"].to_numpy(zero_copy_only=False).astype(float)
        in_copy = np.asarray(pc.is_valid(scan["copy_offset"]).to_numpy(
            zero_copy_only=False), dtype=bool)
        inside = _in_repeats(self.atlas, scan)
        groups = [("in an in-context copy", in_copy), ("no in-context copy", ~in_copy)]
        if inside is not None:
            groups += [("in a repeat", inside), ("outside repeats", ~inside)]
        rows = [_llr_row("all", llr, scan)] + [_llr_row(name, llr, scan, mask)
                                                for name, mask in groups]
        letters = scoring.distribution_letters
        strands = (" (with both strands scored, the mean of the two strands' LLRs)"
                   if scoring.strands == "both" else "")
        scope = (f"the first {covered:,} of {total:,} positions (in atlas order; at most "
                 f"{cap:,} are scanned)" if covered < total else f"all {total:,} positions")
        repeats = ("" if inside is not None else " The scanned sequences carry no repeat "
                   "annotations (other than in-context copies), so repeats are not compared.")
        text = (f"<p>The LLR, log p(alt) - log p(ref){strands}, of every substitution among "
                f"the letters {html.escape(letters)} at {scope}, read from the stored "
                f"distributions: {scan.num_rows:,} substitutions (positions without a "
                "distribution, or whose reference letter is not one of these, have none). "
                "In an in-context copy: the position's k-mer occurs again in its window "
                "(copy_offset set); repeats: the repeats table, without the in-context "
                f"copies <code>annotate --detect</code> adds.{repeats} Negative: the model "
                "finds the substitution less likely than the reference.</p>")
        lookup = self._lookup_shifts()
        if not scan.num_rows:
            return text + lookup
        figure = _llr_figure(llr, groups, self.config.image_size)
        return text + _table(rows) + _png(figure) + lookup

    def _lookup_shifts(self) -> str:
        """The look-up shift of the stored variant sets scored with ``--lookup``, by kind
        of copy, with its control ("" when no set has look-up rows)."""
        if not self.rows.get("variants"):
            return ""
        rows = self.atlas.sql(LOOKUP_SHIFT_SQL).to_pylist()
        if not rows:
            return ""
        return ("<h3>Look-up shift of the stored variant sets</h3><p>Sites of the variant "
                "sets stored with <code>variants score --lookup --store</code>, in nats: "
                "icl_shift = llr_intact - llr_partner (the copy partner corrupted), "
                "control_shift = llr_intact - llr_control (a matched control region corrupted "
                "the same way), lookup_shift = icl_shift - control_shift, the part attributed "
                "to look-up.</p>" + _table(rows))

    def render(self) -> tuple[str, list[str]]:
        titles = {"summary": "Summary", "sequences": "Sequences",
                  "distribution": "Score distributions", "anomalies": "Top anomalous regions",
                  "enrichment": "Enrichment in repeats", "copies": "In-context copies: look-up "
                  "vs control", "identity": "Identity vs context", "indexes": "Embedding indexes",
                  "pooled": "Pooled embeddings",
                  "variants": "Substitutions: LLR in copies and repeats"}
        shown, body = [], []
        for name in SECTIONS + DISTRIBUTION_SECTIONS:
            start = time.perf_counter()
            content = getattr(self, name)()
            self.seconds[name] = round(time.perf_counter() - start, 3)
            if content is None:
                continue
            shown.append(name)
            body.append(f'<section id="{self.prefix}{name}" data-section="{name}">'
                        f"<h2>{titles[name]}</h2>{content}</section>")
        return "".join(body), shown


def pooled_color(atlas: Atlas, *, level: str, repeats: bool) -> str:
    """The SQL colouring the pooled embeddings section (over ``pooled_points``, see
    :mod:`seqatlas.plot.projection`): ``repeat_class`` for bins of an atlas with repeats,
    ``seq_id`` for bins without; for sequences the first word of the description when any
    sequence has one, else ``length``."""
    if level == "bin":
        return "repeat_class" if repeats else "seq_id"
    described = atlas.sql("SELECT count(*) AS n FROM sequences "
                          "WHERE trim(coalesce(description, '')) <> ''")["n"][0].as_py()
    return "nullif(split_part(trim(description), ' ', 1), '')" if described else "length"


def _in_repeats(atlas: Atlas, scan: pa.Table) -> np.ndarray | None:
    """Per row of ``scan``, whether its position lies in a repeat (not an ``annotate
    --detect`` copy); None when the scanned sequences have no such repeat."""
    paths = atlas.part_paths("repeats")
    if not paths or not scan.num_rows:
        return None
    spans = scan.group_by("seq_id", use_threads=False).aggregate([("pos", "max")])
    ids = spans["seq_id"].to_pylist()
    repeats = atlas.dataset(paths, schema.REPEATS).to_table(
        columns=["seq_id", "start", "end"],
        filter=ds.field("seq_id").isin(ids) & (ds.field("source") != schema.COPY_REPEAT_SOURCE))
    if not repeats.num_rows:
        return None
    # each scanned sequence's positions [0, extent) at its offset in one flat array
    extent = dict(zip(ids, (p + 1 for p in spans["pos_max"].to_pylist())))
    offset, size = {}, 0
    for seq_id in ids:
        offset[seq_id], size = size, size + extent[seq_id]
    depth = np.zeros(size + 1, dtype=np.int64)
    for seq_id, lo, hi in zip(*(repeats[c].to_pylist() for c in ("seq_id", "start", "end"))):
        lo, hi = max(0, lo), min(hi, extent[seq_id])
        if lo < hi:
            depth[offset[seq_id] + lo] += 1
            depth[offset[seq_id] + hi] -= 1
    covered = np.cumsum(depth)[:-1] > 0
    base = np.array([offset[s] for s in scan["seq_id"].to_pylist()], dtype=np.int64)
    return covered[base + scan["pos"].to_numpy()]


def _llr_row(group: str, llr: np.ndarray, scan: pa.Table, mask=None) -> dict:
    """Positions, substitutions, mean and median LLR of the rows of ``scan`` in ``mask``."""
    chosen = llr if mask is None else llr[mask]
    values = chosen[np.isfinite(chosen)]
    keys = scan.select(["seq_id", "pos"]) if mask is None else \
        scan.select(["seq_id", "pos"]).filter(pa.array(mask))
    positions = keys.group_by(["seq_id", "pos"]).aggregate([]).num_rows
    return {"group": group, "positions": positions, "substitutions": int(len(chosen)),
            "mean_llr": float(values.mean()) if len(values) else None,
            "median_llr": float(np.median(values)) if len(values) else None,
            "fraction_llr_below_-1": float((values < -1).mean()) if len(values) else None}


def _llr_figure(llr: np.ndarray, groups: list, size: tuple[int, int]):
    """Density histograms of the LLRs inside vs outside each pair of ``groups``, one panel
    per pair, on shared bins (the 0.1 to 99.9 percentiles), medians dashed."""
    figure = new_figure(size)
    finite = np.isfinite(llr)
    low, high = np.percentile(llr[finite], [0.1, 99.9]) if finite.any() else (-1.0, 1.0)
    if not high > low:
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, 61)
    pairs = [groups[i:i + 2] for i in range(0, len(groups), 2)]
    axes = figure.subplots(1, len(pairs), squeeze=False, sharey=False)[0]
    for ax, pair in zip(axes, pairs):
        for (name, mask), colour in zip(pair, ("tab:red", "tab:blue")):
            values = llr[mask & finite]
            if not len(values):
                continue
            ax.hist(np.clip(values, low, high), bins=edges, density=True, histtype="step",
                    linewidth=1.2, color=colour, label=f"{name} ({len(values):,})", gid=name)
            ax.axvline(float(np.median(values)), color=colour, linestyle="--", linewidth=0.8)
        ax.axvline(0.0, color="gray", linewidth=0.6)
        ax.set_xlabel("LLR of a substitution, nats (clipped to the 0.1-99.9 percentiles)")
        ax.set_ylabel("density")
        ax.legend(loc="upper left", fontsize="small", frameon=False)
    figure.suptitle("substitutions inside vs outside in-context copies and repeats "
                    "(dashed: medians)")
    return figure


_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { border-bottom: 2px solid #444; } h2 { margin-top: 2em; border-bottom: 1px solid #bbb; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
th { background: #eee; } td:first-child, th:first-child { text-align: left; }
table.pairs th { text-align: left; } table.pairs td { text-align: left; word-break: break-all; }
img { max-width: 100%; } nav { background: #f6f6f6; padding: 0.5em 1em; }
"""


def report(atlases, *, output: str | os.PathLike, doubling=None,
           params: AnomalyParams | None = None, config: ReportConfig | None = None,
           **options) -> dict:
    """Write one self-contained HTML report of ``atlases`` (a path or a list of paths) to
    ``output``. ``doubling`` is a ``probe doubling`` output (path or table) shown with the
    first atlas; ``params`` shapes z and the anomalous regions; ``options`` are
    :class:`ReportConfig` fields. Returns output, bytes, seconds and the sections shown."""
    config = config or ReportConfig(**options)
    config.validate()
    params = params or AnomalyParams()
    params.validate()
    paths = [atlases] if isinstance(atlases, (str, os.PathLike)) else list(atlases)
    if not paths:
        raise ConfigError("give at least one atlas to report on")
    doubling_table = pa.Table.from_pylist(doubling_rows(doubling)) \
        if doubling is not None else None
    start = time.perf_counter()
    opened = [Atlas(p) for p in paths]  # every atlas checked before anything is drawn
    bodies, nav, shown = [], [], {}
    for number, atlas in enumerate(opened):
        part = _AtlasReport(atlas, config, params, doubling_table if number == 0 else None,
                            number)
        body, sections = part.render()
        name = html.escape(str(atlas.path))
        bodies.append(f'<article id="a{number}"><h1>{name}</h1>{body}</article>')
        nav.append(f'<li><a href="#a{number}">{name}</a>: ' + ", ".join(
            f'<a href="#a{number}-{s}">{s}</a>' for s in sections) + "</li>")
        shown[str(atlas.path)] = {"sections": sections, "seconds": part.seconds}
    document = ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>seqatlas report</title><style>{_STYLE}</style></head><body>"
                f"<nav><strong>seqatlas report</strong><ul>{''.join(nav)}</ul></nav>"
                f"{''.join(bodies)}</body></html>")
    data = document.encode("utf-8")
    with output_file(output) as tmp:
        tmp.write_bytes(data)
    return {"output": str(output), "bytes": len(data),
            "seconds": round(time.perf_counter() - start, 3), "atlases": shown}
