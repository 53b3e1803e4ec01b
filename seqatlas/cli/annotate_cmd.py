"""``seqatlas annotate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from seqatlas.cli.options import (ATLAS, NO_PROGRESS, PROGRESS_HELP, Names, Progress,
                                  RepeatFinder, RepeatFormat, json_option,
                                  progress_option)
from seqatlas.cli.options import OnMismatch


def annotate(
    file: Optional[Path] = typer.Argument(
        None, help="Repeat annotations: RepeatMasker .out, UCSC rmsk or simpleRepeat, TRF .dat "
        "or -ngs, tantan -f4 or -f3, BED, GFF3 (gzip ok). Omit it with --run or --detect."),
    atlas: str = ATLAS,
    format: Optional[RepeatFormat] = typer.Option(None, "--format",
                                                  help="File format (detected when omitted)."),
    names: Names = typer.Option(Names.auto, help="auto: also match chrX <-> X and chrM <-> MT."),
    on_mismatch: OnMismatch = typer.Option(
        OnMismatch.error, "--on-mismatch", help="FILE records on sequences the atlas lacks or "
        "running past a sequence's end (a genome-wide file against a partial atlas): error "
        "refuses the file; skip leaves them out; clip leaves out the first and clips the "
        "second to the sequence."),
    run: Optional[RepeatFinder] = typer.Option(
        None, "--run", help="Instead of a FILE: run tantan or trf on the atlas's own sequences "
        "and import the tandem repeats it finds."),
    run_args: Optional[str] = typer.Option(
        None, "--run-args", help="With --run: the program's parameters, replacing the defaults "
        "(tantan: none, -p for proteins; trf: '2 7 7 80 10 50 500'). seqatlas adds the output "
        "options (tantan -f4, trf -h -ngs)."),
    progress: Progress = progress_option(f"With --run: {PROGRESS_HELP}"),
    no_progress: bool = NO_PROGRESS,
    detect: bool = typer.Option(False, "--detect", help="Instead of a FILE: import the "
                                "in-context copies found at ingest (copy_offset, copy_strand) "
                                "as repeats, source seqatlas-copies."),
    as_json: bool = json_option("Print the summary as JSON."),
) -> None:
    """Import repeats into an atlas (0-based half-open): from FILE, by running tantan or TRF
    (--run), or from the in-context copies found at ingest (--detect)."""
    import seqatlas

    summary = seqatlas.annotate(file, atlas=atlas, format=format.value if format else None,
                                names=names.value, run=run.value if run else None,
                                run_args=run_args, progress=progress, detect=detect,
                                on_mismatch=on_mismatch.value)
    console = Console()
    if as_json:
        console.print_json(json.dumps(summary))
        return
    if detect:
        state = "already imported" if summary["already_imported"] else \
            f"imported from {summary['positions_parts']} positions part(s)"
        console.print(f"{atlas}: {summary['repeats']:,} in-context copies (k = "
                      f"{summary['copy_k']}) {state}.")
        return
    renamed = f", renamed {summary['renamed']}" if summary["renamed"] else ""
    state = "already imported" if summary["already_imported"] else "imported"
    parameters = f"parameters {summary['args']}" if summary.get("args") else "default parameters"
    origin = summary["file"] or f"{summary['run']} {summary['version']} ({parameters})"
    console.print(f"{origin}: {summary['repeats']:,} {summary['format']} repeats "
                  f"{state}{renamed}.")
    if summary.get("on_mismatch", "error") != "error":
        left_out = summary["skipped_sequences"]
        shown = f" ({', '.join(left_out[:5])}{' ...' if len(left_out) > 5 else ''})" \
            if left_out else ""
        console.print(f"--on-mismatch {summary['on_mismatch']}: skipped "
                      f"{summary['skipped_unknown_sequence']:,} on sequences not in the atlas"
                      f"{shown}, skipped {summary['skipped_past_end']:,} past the end, clipped "
                      f"{summary['clipped']:,}.", highlight=False, markup=False)
