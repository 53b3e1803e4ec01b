"""``seqatlas info`` and the printing of summaries."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from seqatlas.cli.options import json_option
from seqatlas.util import format_size


def info(
    atlas: Path = typer.Argument(..., help="Atlas directory."),
    as_json: bool = json_option("Print the summary as JSON."),
) -> None:
    """Show an atlas: model, scoring settings, inputs, row counts and sizes on disk."""
    import seqatlas

    summary = seqatlas.info(atlas)
    if as_json:
        Console().print_json(json.dumps(summary))
    else:
        print_info(summary)


def print_info(summary: dict, console: Console | None = None) -> None:
    console = console or Console()
    model, scoring = summary["model"], summary["scoring"]
    how = "detected" if summary.get("kind_detected") else "given"
    console.print(f"[bold]atlas[/] {summary['path']}  (kind: {summary['kind']}, {how}; "
                  f"updated {summary['updated']})")
    console.print(f"[bold]model[/] {model['name']} ({model['model_type']}, "
                  f"{model['parameters']:,} parameters, tokenizer "
                  f"{model['tokenizer']['family']}, weights sha256 "
                  f"{model['weights_sha256'][:12]}…)")
    layers = scoring.get("layers") or [scoring["layer"]]
    layer = (f", layer{'s' if len(layers) > 1 else ''} {', '.join(map(str, layers))}"
             if scoring["embeddings"] else "")
    strands = f", strands {scoring['strands']}" if summary["kind"] != "protein" else ""
    copies = f", copy k-mer {scoring['copy_k']}" if scoring.get("copy_k") else ", copies off"
    console.print(f"[bold]scoring[/] likelihood {scoring['likelihood']}, window "
                  f"{scoring['window']} overlap {scoring['overlap']}, embeddings "
                  f"{scoring['embedding_dtype'] or 'none'}{layer}{strands}{copies}")
    table = Table(title="tables")
    for column in ("table", "parts", "rows", "on disk", "bytes/row"):
        table.add_column(column, justify="right" if column != "table" else "left")
    for name, t in summary["tables"].items():
        per_row = f"{t['bytes'] / t['rows']:.1f}" if t["rows"] else "-"
        table.add_row(name, str(t["parts"]), f"{t['rows']:,}", format_size(t["bytes"]), per_row)
    console.print(table)
    if summary.get("positions_unscored"):
        console.print(f"{summary['positions_unscored']:,} positions lie in long N runs and "
                      "were not scored (null logp, null window bounds).")
    inputs = Table(title="inputs")
    for column in ("file", "records", "residues", "size", "sha256"):
        inputs.add_column(column)
    for i in summary["inputs"]:
        inputs.add_row(i["path"], f"{i['records']:,}", f"{i['residues']:,}", format_size(i["size"]),
                       i["sha256"][:12] + "…")
    console.print(inputs)


def print_demo(summary: dict) -> None:
    console = Console()
    titles = {"proteins": "AntiBERTy, exact pseudo-log-likelihood per protein",
              "dna": "dnabert6-tiny, fast mode, both strands, per sequence"}
    for name in ("proteins", "dna"):
        part = summary[name]
        print_info(part["info"], console)
        table = Table(title=titles[name])
        columns = ["sequence", "scored", "PLL", "mean logp", "pseudo-perplexity", "top-1 acc"]
        if name == "dna":
            columns.insert(4, "mean logp (rc)")
        for column in columns:
            table.add_column(column, justify="left" if column == "sequence" else "right")
        for row in part["sequences"]:
            cells = [row["seq_id"], f"{row['scored']:,}", f"{row['pll']:.1f}",
                     f"{row['mean_logp']:.3f}", f"{row['pseudo_perplexity']:.2f}",
                     f"{row['top1_accuracy']:.2f}"]
            if name == "dna":
                cells.insert(4, f"{row['mean_logp_rc']:.3f}")
            table.add_row(*cells)
        console.print(table)
        report = part["report"]
        console.print(f"Scored {report['positions_scored']:,} positions in "
                      f"{report['seconds']:.1f} s.\n")
    console.print(f"Explore: seqatlas info {summary['proteins']['atlas']}, or in Python "
                  f"seqatlas.Atlas({summary['proteins']['atlas']!r}).positions(). For DNA the "
                  "chance level of top-1 accuracy is 0.25 (mean logp -1.386).")
