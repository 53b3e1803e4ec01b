"""``seqatlas info`` and the printing of summaries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from seqatlas.cli.options import ATLAS, NO_PROGRESS, PROGRESS, Progress, json_option
from seqatlas.cli.tables import FittedTable
from seqatlas.util import format_size


def info(
    atlas: Optional[Path] = typer.Argument(None, help="Atlas directory.", show_default=False),
    atlas_flag: Optional[Path] = typer.Option(None, "--atlas", "-a", help="The atlas, as the "
                                              "other commands take it (same as ATLAS)."),
    as_json: bool = json_option("Print the summary as JSON."),
) -> None:
    """Show an atlas: model, scoring settings, inputs, row counts and sizes on disk."""
    import seqatlas

    if (atlas is None) == (atlas_flag is None):
        raise typer.BadParameter("give the atlas directory once: `seqatlas info ATLAS` or "
                                 "`seqatlas info --atlas ATLAS`")
    atlas = atlas or atlas_flag

    summary = seqatlas.info(atlas)
    if as_json:
        Console().print_json(json.dumps(summary))
    else:
        print_info(summary)
    if summary["damaged"]:
        from seqatlas.errors import AtlasDamagedError

        raise AtlasDamagedError(
            f"{len(summary['damaged'])} committed part(s) of {atlas} are damaged; `seqatlas "
            f"verify --atlas {atlas}` lists them, `seqatlas repair --atlas {atlas}` rewrites "
            "them from the inputs")


def _number(value) -> str:
    return f"{value:,}" if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else "?"


def print_info(summary: dict, console: Console | None = None) -> None:
    """The summary as text; a value a hand-edited manifest lacks prints as ``?``."""
    console = console or Console()
    model, scoring = summary["model"] or {}, summary["scoring"] or {}
    how = "detected" if summary.get("kind_detected") else "given"
    # paths are printed whole on one line (soft_wrap: the terminal wraps them, rich never
    # breaks or crops them), so they can be copied even from a narrow terminal
    console.print(f"[bold]atlas[/] {escape(summary['path'])}  (kind: {summary['kind']}, "
                  f"{how}; updated {summary['updated']})", highlight=False, soft_wrap=True)
    tokenizer = model.get("tokenizer") or {}
    console.print(f"[bold]model[/] {escape(str(model.get('name', '?')))} "
                  f"({model.get('model_type', '?')}, {_number(model.get('parameters'))} "
                  f"parameters, tokenizer {tokenizer.get('family', '?')}, weights sha256 "
                  f"{str(model.get('weights_sha256', '?'))[:12]}…)", highlight=False)
    layers = scoring.get("layers") or [scoring.get("layer")]
    layer = (f", layer{'s' if len(layers) > 1 else ''} {', '.join(map(str, layers))}"
             if scoring.get("embeddings") else "")
    strands = f", strands {scoring.get('strands', '?')}" if summary["kind"] != "protein" else ""
    copies = f", copy k-mer {scoring['copy_k']}" if scoring.get("copy_k") else ", copies off"
    console.print(f"[bold]scoring[/] likelihood {scoring.get('likelihood', '?')}, window "
                  f"{scoring.get('window', '?')} overlap {scoring.get('overlap', '?')}, "
                  f"embeddings {scoring.get('embedding_dtype') or 'none'}{layer}{strands}"
                  f"{copies}", highlight=False)
    numbers = ("parts", "rows", "on disk", "bytes/row")
    console.print(FittedTable(
        ("table", *numbers),
        ([name, str(t["parts"]), f"{t['rows']:,}", format_size(t["bytes"]),
          f"{t['bytes'] / t['rows']:.1f}" if t["rows"] else "-"]
         for name, t in summary["tables"].items()),
        title="tables", right=numbers, keys=("table",)))
    if summary.get("positions_unscored"):
        console.print(f"{summary['positions_unscored']:,} positions lie in long N runs and "
                      "were not scored (null logp, null window bounds).")
    for i in summary["inputs"]:
        console.print(Text.assemble(
            ("input", "bold"), f" {i['path']}: {_number(i['records'])} records, "
            f"{_number(i['residues'])} residues, {format_size(i['size'])}, sha256 "
            f"{i['sha256'][:12]}…"), highlight=False, soft_wrap=True)
    for damage in summary.get("damaged", []):
        console.print(f"damaged: {escape(damage)}", style="bold red", highlight=False)
    for warning in summary.get("warnings") or []:
        console.print(f"[bold yellow]warning:[/] {escape(str(warning.get('message', '?')))}",
                      highlight=False)


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


def verify(
    atlas: Path = ATLAS,
    as_json: bool = json_option("Print the report as JSON."),
) -> None:
    """Re-hash every committed part against the size and SHA-256 recorded when it was
    committed, and check that the input files are still there; exit 1 if anything is damaged.

    Example: seqatlas verify --atlas my_atlas
    """
    import seqatlas

    report = seqatlas.verify(atlas)
    console = Console()
    if as_json:
        console.print_json(json.dumps(report))
    else:
        console.print(f"{report['parts']:,} parts checked in {escape(report['atlas'])}"
                      + (f" ({report['parts_without_checksum']:,} committed before checksums: "
                         "size only)" if report["parts_without_checksum"] else ""),
                      highlight=False)
        for d in report["damaged"]:
            console.print(f"damaged: {d['table']}/{d['part']}: {d['problem']}", style="red",
                          highlight=False)
        for i in report["inputs"]:
            if i["problem"]:
                console.print(f"input: {escape(i['problem'])} (repair cannot rebuild from it)",
                              highlight=False)
        if report["ok"]:
            console.print("ok: every part is as committed", highlight=False)
    if not report["ok"]:
        from seqatlas.errors import AtlasDamagedError

        raise AtlasDamagedError(f"{len(report['damaged'])} part(s) damaged; `seqatlas repair "
                                f"--atlas {atlas}` rewrites them from the inputs")


def repair(
    atlas: Path = ATLAS,
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Scoring actors for "
                                          "re-scoring damaged units (0: in this process)."),
    progress: Progress = PROGRESS,
    no_progress: bool = NO_PROGRESS,
) -> None:
    """Rewrite damaged parts from the atlas's inputs: the sequences table, scored units (the
    atlas's own model and settings), imported or found repeats, detected copies.

    Example: seqatlas repair --atlas my_atlas
    """
    import seqatlas

    report = seqatlas.repair(atlas, workers=workers, progress=progress)
    if not report["damaged"]:
        typer.echo(f"{atlas}: nothing to repair; every part is as committed.", err=True)
        return
    typer.echo(f"{atlas}: repaired {len(report['damaged'])} damaged part(s) "
               f"({report['rescored_units']} unit(s) re-scored, {report['repeats_restored']} "
               "repeats unit(s) restored).", err=True)
    for command in report["rerun"]:
        typer.echo(f"to restore ablations, run: {command}", err=True)
