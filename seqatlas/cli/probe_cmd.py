"""``seqatlas probe icl|doubling``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from seqatlas.cli.options import (ATLAS, CPUS_PER_WORKER, FORMAT, GPUS_PER_WORKER,
                                  NO_PROGRESS, PROGRESS, AblationMethod, Format, Kind,
                                  ProbeLikelihood, Progress, Tokenizer, address_option,
                                  json_option)

probe_app = typer.Typer(help="Measure in-context look-up causally: corrupt a copy (and a "
                        "matched control region) and rescore.", no_args_is_help=True)

SEED = typer.Option(0, "--seed", help="Seed of shuffle/substitute (recorded per row).")
WORKERS = typer.Option(None, "--workers", help="Scoring actors (default: one per GPU, else 1); "
                       "0 scores in this process without Ray.")
BATCH_TOKENS = typer.Option(None, "--batch-tokens", help="Padded tokens per forward pass "
                            "(default: 32768 on GPU; on a CPU, the fastest of 1024-16384 for this model, "
                            "measured once per machine and kept in the user's cache).")


def _fmt(value) -> str:
    return "" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


@probe_app.command("icl")
def icl(
    atlas: str = ATLAS,
    method: Optional[AblationMethod] = typer.Option(
        None, "--method", show_default=False, help="How a region is corrupted: mask (its "
        "tokens; the default for masked LMs), shuffle (seeded permutation of its residues; "
        "the default for causal LMs, which have no mask), substitute (seeded draws from the "
        "sequence's letter composition)."),
    seed: int = SEED,
    likelihood: Optional[ProbeLikelihood] = typer.Option(
        None, "--likelihood", help="Rescoring mode (default: the atlas's, when exact, fast or "
        "causal; else exact, and the intact value is recomputed). A causal model probes only "
        "targets whose copy lies upstream, with an upstream control."),
    where: Optional[str] = typer.Option(
        None, "--where", help="SQL condition on position_z (positions when the atlas has no "
        "scores): probe only the targets holding a matching position, e.g. \"tail = 'high'\"."),
    bed: Optional[Path] = typer.Option(None, "--bed", help="Probe only the targets that "
                                       "overlap an interval of this BED file."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="The atlas's checkpoint, "
                                        "when the path recorded in the atlas moved."),
    batch_tokens: Optional[int] = BATCH_TOKENS,
    unit_tokens: int = typer.Option(65536, "--unit-tokens", help="Tokens computed per work "
                                    "unit (the resume granularity)."),
    workers: Optional[int] = WORKERS,
    gpus_per_worker: Optional[float] = GPUS_PER_WORKER,
    cpus_per_worker: Optional[int] = CPUS_PER_WORKER,
    address: Optional[str] = address_option("Ray cluster address; default: a local Ray."),
    max_retries: int = typer.Option(2, "--max-retries", help="Retries of a failing unit."),
    progress: Progress = PROGRESS,
    no_progress: bool = NO_PROGRESS,
    as_json: bool = json_option("Print the report as JSON."),
) -> None:
    """Rescore each in-context copy with its partner, and a matched control, corrupted.

    Rows go to the atlas's ablations table (SQL views: ablations, icl_regions). Re-running
    skips what is done; a killed run resumes.
    """
    from seqatlas.probe import probe_icl

    report = probe_icl(atlas, method=method.value if method else None, seed=seed,
                       likelihood=likelihood.value if likelihood else None, where=where,
                       bed=bed, model=model, batch_tokens=batch_tokens, unit_tokens=unit_tokens,
                       workers=workers, gpus_per_worker=gpus_per_worker,
                       cpus_per_worker=cpus_per_worker, address=address,
                       max_retries=max_retries, progress=progress)
    console = Console()
    if as_json:
        console.print_json(json.dumps(report.as_dict()))
        return
    controls = ", ".join(f"{n} {rule}" for rule, n in sorted(report.controls.items()))
    console.print(f"{report.atlas}: {report.targets_probed:,} target(s) probed "
                  f"({report.positions_probed:,} positions, {report.seconds:.1f} s), "
                  f"{report.targets_skipped:,} already probed; --method {report.method} "
                  f"--seed {report.seed}, --likelihood {report.likelihood}"
                  + (f"; controls: {controls}" if controls else "") + ".", highlight=False,
                  markup=False)
    table = Table("copy strand", "targets", "positions", "icl_gain", "control_gain",
                  "net_gain", title="mean gain in logp (nats): partner vs control corrupted")
    for row in report.gains:
        table.add_row(*(_fmt(row[k]) for k in ("copy_strand", "targets", "positions",
                                                 "icl_gain", "control_gain", "net_gain")))
    console.print(table)


@probe_app.command("doubling")
def doubling(
    fasta: Path = typer.Argument(..., help="FASTA file of sequences S (each at most half the "
                                 "model's context)."),
    model: str = typer.Option("antiberty", "--model", "-m", help="Embedded model name, "
                              "checkpoint directory or hub id."),
    kind: Optional[Kind] = typer.Option(None, "--kind", help="Detected when omitted."),
    method: Optional[AblationMethod] = typer.Option(
        None, "--method", show_default=False, help="How the partner is corrupted: mask (its "
        "tokens; default for masked LMs), shuffle (seeded permutation of its residues; "
        "default for causal LMs, which have no mask), substitute (seeded draws from the "
        "sequence's letter composition)."),
    seed: int = SEED,
    shuffle: bool = typer.Option(False, "--shuffle", help="Also probe a seeded shuffle of "
                                 "each sequence."),
    likelihood: Optional[ProbeLikelihood] = typer.Option(
        None, "--likelihood", show_default=False, help="exact (default for masked LMs): each "
        "position of the scored copy masked in turn (its PLL terms); fast: well-separated "
        "positions masked together; causal (default and only mode for causal LMs): one pass."),
    copy: Optional[int] = typer.Option(
        None, "--copy", show_default=False, help="The copy scored: 1 (default for masked "
        "LMs) or 2 (default for causal LMs, whose copy 1 cannot see copy 2)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the table to "
                                          "this file: parquet, or csv/tsv/json by --format or "
                                          "by its extension (.csv, .tsv, .json)."),
    format: Format = FORMAT,
    tokenizer: Optional[Tokenizer] = typer.Option(None, "--tokenizer", help="Override the "
                                                  "detected tokenizer family."),
    batch_tokens: Optional[int] = BATCH_TOKENS,
    workers: Optional[int] = typer.Option(0, "--workers", help="0 (default) scores in this "
                                          "process; N uses N Ray actors."),
    progress: Progress = PROGRESS,
    no_progress: bool = NO_PROGRESS,
) -> None:
    """The doubling construct: S alone, S+S, S+S with the partner copy corrupted, a control.

    Mean logp of the scored copy (1; 2 for a causal model) in each, with the same-composition control S+C (C a seeded shuffle
    of S) intact and corrupted; icl_gain, control_gain and net_gain per sequence.
    """
    from seqatlas.probe import probe_doubling
    from seqatlas.probe.doubling import summary

    from seqatlas.cli.tables import note, print_table, stdout_format
    from seqatlas.query.output import file_format

    table = probe_doubling(fasta, output=output, model=model,
                           format=file_format(output, format.value) if output else "parquet",
                           kind=kind.value if kind else None,
                           method=method.value if method else None, seed=seed,
                           shuffle=shuffle, likelihood=likelihood.value if likelihood else None,
                           copy=copy,
                           tokenizer=tokenizer.value if tokenizer else None,
                           batch_tokens=batch_tokens, workers=workers, progress=progress)
    lines = [f"{variant}: " + "; ".join(
        f"{gain} mean {_fmt(v['mean'])} [{_fmt(v['min'])}, {_fmt(v['max'])}]"
        for gain, v in gains.items()) for variant, gains in summary(table).items()]
    if output is None and stdout_format(format) != "table":  # piped: the rows, notes aside
        print_table(table, format, what="rows")
        for line in lines:
            note(line)
        return
    console = Console()
    shown = Table("seq_id", "variant", "length", "alone", "doubled", "partner",
                  "control_intact", "control", "icl_gain", "control_gain", "net_gain",
                  title=f"mean logp of copy {_first(table, 'scored_copy')} (nats), "
                  f"--method {_first(table, 'method')}")
    for row in table.to_pylist():
        shown.add_row(row["seq_id"], row["variant"], str(row["length"]),
                      *(_fmt(row[k]) for k in ("logp_alone", "logp_doubled", "logp_partner",
                                               "logp_control_intact", "logp_control",
                                               "icl_gain", "control_gain", "net_gain")))
    console.print(shown)
    for line in lines:
        console.print(line, highlight=False, markup=False)
    if output is not None:
        console.print(f"{table.num_rows} row(s) written to {output}", highlight=False,
                      markup=False)


def _first(table, column: str):
    """The first row's value of ``column`` (the same on every row), or '?' with no rows."""
    return table[column][0].as_py() if table.num_rows else "?"
