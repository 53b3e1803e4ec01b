"""``seqatlas query sql|anomalies|enrichment`` and ``seqatlas export bedgraph|bed|bigwig``."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

query_app = typer.Typer(help="Query an atlas with DuckDB: SQL, likelihood anomalies, "
                        "enrichment in repeats.", no_args_is_help=True)
export_app = typer.Typer(help="Export tracks for genome browsers (bedGraph, bigWig) and "
                         "anomalous regions (BED).", no_args_is_help=True)

TABLE_ROWS_SHOWN = 10_000


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"


class Tail(str, Enum):
    high = "high"
    low = "low"
    both = "both"


class By(str, Enum):
    class_ = "class"
    family = "family"
    name = "name"
    copy = "copy"


ATLAS = typer.Option(..., "--atlas", "-a", help="Atlas directory.")
TIMEOUT = typer.Option(None, "--timeout", help="Cancel the query after this many seconds.")
COLUMN = typer.Option(None, "--column", help="Score column (default: logp; logp_unmasked for "
                      "unmasked atlases; the strand mean with --strands both).")
Z = typer.Option(3.0, "--z", help="|robust z| threshold (median/MAD per reference letter).")
TAIL = typer.Option(Tail.both, "--tail", help="Anomalously likely (high), unlikely (low), both.")
SMOOTH = typer.Option(1, "--smooth", help="Rolling mean of z over W positions (1: none).")
MIN_LENGTH = typer.Option(3, "--min-length", help="Anomalous positions in a row to make a "
                          "region.")
SCORE_COLUMN = typer.Option(None, "--score-column", help="Column z is computed from (default "
                            "as in `query anomalies`).")
MAX_GAP = typer.Option(2, "--max-gap", help="Merge regions at most this many positions apart.")


def _params(column, z, tail, smooth, min_length, max_gap):
    from seqatlas.query import AnomalyParams

    return AnomalyParams(column=column, z=z, tail=tail.value, smooth=smooth,
                         min_length=min_length, max_gap=max_gap)


def print_result(table, format: Format, title: str | None = None) -> None:
    """An Arrow table to stdout: a rich table, CSV or JSON."""
    from rich.console import Console

    if format == Format.parquet:
        from seqatlas.errors import ConfigError

        raise ConfigError("--format parquet needs --output FILE")
    if format == Format.csv:
        import pyarrow.csv as pacsv

        sink = sys.stdout.buffer
        pacsv.write_csv(table, sink)
        sink.flush()
        return
    if format == Format.json:
        from seqatlas.query.engine import json_record

        rows = [json_record(r) for r in table.to_pylist()]
        print("[" + ",\n".join(rows) + "]")
        return
    from rich.table import Table

    console = Console()
    shown = table.slice(0, TABLE_ROWS_SHOWN)
    rich_table = Table(title=title)
    for name in table.column_names:
        rich_table.add_column(name, justify="left" if table.schema.field(name).type
                              in (_string_types()) else "right")
    for row in shown.to_pylist():
        rich_table.add_row(*(_cell(v) for v in row.values()))
    console.print(rich_table)
    more = f" (first {TABLE_ROWS_SHOWN:,} shown; use --output)" \
        if table.num_rows > TABLE_ROWS_SHOWN else ""
    console.print(f"{table.num_rows:,} rows{more}")


def _string_types():
    import pyarrow as pa

    return (pa.string(), pa.large_string())


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@query_app.command("sql")
def sql(
    query: str = typer.Argument(..., help="One SELECT over the views sequences, positions, "
                                "tokens, repeats, position_z, anomalies, anomaly_regions."),
    atlas: Path = ATLAS,
    format: Format = typer.Option(Format.table, "--format", "-f", help="Output format."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the result to "
                                          "this file (the only file a query may write)."),
    timeout: Optional[float] = TIMEOUT,
    memory_limit: Optional[str] = typer.Option(None, "--memory-limit", help="DuckDB memory "
                                               "limit, e.g. 8GB (default: 75% of RAM)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Default: all CPUs."),
) -> None:
    """Run one read-only SELECT over an atlas's views, sandboxed (only the atlas is readable)."""
    from seqatlas.query import SqlConfig
    from seqatlas.query import sql as run_sql

    config = SqlConfig(timeout=timeout, memory_limit=memory_limit, threads=threads)
    if output is not None:
        file_format = "parquet" if format == Format.table else format.value
        rows = run_sql(atlas, query, output=output, format=file_format, config=config)
        typer.echo(f"{rows:,} rows written to {output} ({file_format}).", err=True)
        return
    print_result(run_sql(atlas, query, config=config), format)


@query_app.command("anomalies")
def anomalies(
    atlas: Path = ATLAS,
    z: float = Z, tail: Tail = TAIL, min_length: int = MIN_LENGTH, max_gap: int = MAX_GAP,
    smooth: int = SMOOTH, column: Optional[str] = COLUMN,
    with_repeats: bool = typer.Option(False, "--with-repeats", help="Add the repeat classes "
                                      "and names each region overlaps."),
    format: Format = typer.Option(Format.table, "--format", "-f", help="Output format."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write to this file."),
) -> None:
    """Regions of anomalously likely or unlikely positions, and what may explain them."""
    from seqatlas.query import anomalies as find
    from seqatlas.query.engine import write_result

    table = find(atlas, params=_params(column, z, tail, smooth, min_length, max_gap),
                 with_repeats=with_repeats)
    if output is not None:
        fmt = "parquet" if format == Format.table else format.value
        rows = write_result(table, output, fmt)
        typer.echo(f"{rows:,} regions written to {output} ({fmt}).", err=True)
        return
    print_result(table, format, title=f"anomalous regions (|z| >= {z:g}, tail {tail.value})")


@query_app.command("enrichment")
def enrichment(
    atlas: Path = ATLAS,
    by: By = typer.Option(By.class_, "--by", help="Group repeats by class, family or name; or "
                          "compare positions with an in-context copy to those without."),
    z: float = Z, tail: Tail = TAIL, smooth: int = SMOOTH, column: Optional[str] = COLUMN,
    format: Format = typer.Option(Format.table, "--format", "-f", help="Output format."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write to this file."),
) -> None:
    """Odds ratio, Fisher p and BH q of anomalies inside vs outside each repeat group."""
    from seqatlas.query import enrichment as run
    from seqatlas.query.engine import write_result

    table = run(atlas, by=by.value, params=_params(column, z, tail, smooth, 1, 0))
    if output is not None:
        fmt = "parquet" if format == Format.table else format.value
        write_result(table, output, fmt)
        typer.echo(f"{table.num_rows:,} groups written to {output} ({fmt}).", err=True)
        return
    print_result(table, format, title=f"enrichment of anomalies (|z| >= {z:g}, tail "
                 f"{tail.value}) by {by.value}")


def _export(format: str, atlas, output, column, params) -> None:
    from seqatlas.query import export

    result = export(atlas, format=format, output=output, column=column, params=params)
    typer.echo(f"{result['intervals']:,} intervals written to {result['output']}.", err=True)


OUTPUT = typer.Option(..., "--output", "-o", help="File to write.")


@export_app.command("bedgraph")
def bedgraph(atlas: Path = ATLAS, output: Path = OUTPUT,
             column: str = typer.Option("z", "--column", help="z, logp, logp_unmasked, "
                                        "logp_mean, entropy, rank, ..."),
             smooth: int = SMOOTH, score: Optional[str] = SCORE_COLUMN) -> None:
    """A bedGraph of a per-position column (runs of equal values merged)."""
    _export("bedgraph", atlas, output, column, _params(score, 3.0, Tail.both, smooth, 1, 0))


@export_app.command("bigwig")
def bigwig(atlas: Path = ATLAS, output: Path = OUTPUT,
           column: str = typer.Option("z", "--column", help="z, logp, logp_unmasked, "
                                      "logp_mean, entropy, rank, ..."),
           smooth: int = SMOOTH, score: Optional[str] = SCORE_COLUMN) -> None:
    """A bigWig of a per-position column (needs pyBigWig)."""
    _export("bigwig", atlas, output, column, _params(score, 3.0, Tail.both, smooth, 1, 0))


@export_app.command("bed")
def bed(atlas: Path = ATLAS, output: Path = OUTPUT, z: float = Z, tail: Tail = TAIL,
        min_length: int = MIN_LENGTH, max_gap: int = MAX_GAP, smooth: int = SMOOTH,
        column: Optional[str] = COLUMN) -> None:
    """A BED6 of anomalous regions: name = tail, score = 100 x |peak z| (at most 1000)."""
    _export("bed", atlas, output, "z", _params(column, z, tail, smooth, min_length, max_gap))
