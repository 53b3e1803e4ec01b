"""Tables to standard output in the format ``--format`` names: the one place where a command's
result or listing is rendered.

``auto`` (the default) is a rich table on a terminal and TSV anywhere else, so ``seqatlas
models | cut -f1`` or ``seqatlas query sql ... | head`` get every value in full. In the machine
formats (tsv, csv, json, jsonl, parquet: :func:`seqatlas.query.output.write_stream`, the
writer behind ``--output`` too) stdout holds the result and nothing else; counts and notes go
to stderr, in a terminal as well. A rich table never truncates: a value too wide for its
column folds onto the next line, and numbers are never wrapped.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Collection, Iterable, Sequence

import pyarrow as pa
import typer
from rich.console import Console, ConsoleOptions, RenderResult
from rich.cells import cell_len
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from seqatlas.errors import ConfigError
from seqatlas.query.output import write_stream

TABLE_ROWS_SHOWN = 10_000
# the identifier columns of results, kept on one line while the table fits
ID_COLUMNS = ("seq_id", "query", "name", "group")
FOLDED_WIDTH = 10  # the narrowest a column of text may be folded to


def stdout_format(format) -> str:
    """The format a table goes to stdout in: ``format`` (an enum member or its value), with
    ``auto`` a rich table when stdout is a terminal and TSV otherwise."""
    value = getattr(format, "value", format)
    if value == "auto":
        return "table" if sys.stdout.isatty() else "tsv"
    return value


def chosen_format(format, as_json: bool):
    """``--format``, or json when the older ``--json`` flag is given."""
    return "json" if as_json else format


def note(text: str) -> None:
    """A count or a note for the reader: on stderr, never mixed into a result on stdout."""
    typer.echo(text, err=True)


def cell(value) -> str:
    """A value as a rich table shows it: floats to 4 significant digits, null as nothing."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class FittedTable:
    """Rows as a rich table when its columns fit the width, else as one block of ``column
    value`` lines per row (psql's expanded display), so that nothing is ever cut: numbers and
    the key columns are never wrapped, a long value folds onto the next line."""

    def __init__(self, columns: Sequence[str], rows: Iterable[Sequence[str]], *,
                 title: str | None = None, right: Collection[str] = (),
                 keys: Collection[str] = ID_COLUMNS):
        self.columns, self.rows, self.title = list(columns), [list(r) for r in rows], title
        self.table = Table(title=title)  # padding 1 each side, edges: 3 cells a column + 1
        self.width = 1
        for i, name in enumerate(self.columns):
            whole = name in right or name in keys
            self.table.add_column(name, justify="right" if name in right else "left",
                                  overflow="fold", no_wrap=whole)
            longest = max(cell_len(text) for text in [name, *(row[i] for row in self.rows)])
            self.width += 3 + (longest if whole else min(longest, FOLDED_WIDTH))
        for row in self.rows:
            self.table.add_row(*(Text(text) for text in row))

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if self.width <= options.max_width:
            yield self.table
            return
        if self.title:
            yield Text(self.title, style="table.title")
        for number, row in enumerate(self.rows, 1):
            yield Rule(f"row {number}", align="left")
            record = Table.grid(padding=(0, 2))
            record.add_column(style="bold", no_wrap=True)
            record.add_column(overflow="fold")
            for name, text in zip(self.columns, row):
                record.add_row(Text(name), Text(text))
            yield record



def _numeric(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) \
        or pa.types.is_decimal(kind) or pa.types.is_boolean(kind)


def arrow_rich_table(table: pa.Table, title: str | None = None) -> FittedTable:
    """An Arrow table as a :class:`FittedTable`, numeric columns right-justified."""
    columns = [column.to_pylist() for column in table.columns]  # names may repeat in SQL
    return FittedTable(table.column_names, ([cell(v) for v in row] for row in zip(*columns)),
                       title=title, right={f.name for f in table.schema if _numeric(f.type)})


def write_stdout(table: pa.Table, format: str) -> int:
    """``table`` to stdout in a machine format; returns the row count. Parquet is binary:
    refused on a terminal."""
    if format == "parquet" and sys.stdout.isatty():
        raise ConfigError("--format parquet writes binary Parquet: redirect stdout to a file "
                          "or a pipe (> result.parquet), or use --output FILE")
    sys.stdout.flush()
    rows = write_stream(table, sys.stdout.buffer, format)
    sys.stdout.buffer.flush()
    return rows


def print_table(table: pa.Table, format, *, title: str | None = None, what: str | None = None,
                render: Callable[[pa.Table, Console], None] | None = None) -> None:
    """``table`` to stdout as ``format`` resolves (:func:`stdout_format`). A rich table shows
    the first :data:`TABLE_ROWS_SHOWN` rows, drawn by ``render(rows, console)`` when given,
    else as :func:`arrow_rich_table`. ``what`` ("rows", "regions") names what the count on
    stderr counts; without it no count is printed."""
    resolved = stdout_format(format)
    if resolved != "table":
        write_stdout(table, resolved)
        if what:
            note(f"{table.num_rows:,} {what}")
        return
    shown = table.slice(0, TABLE_ROWS_SHOWN)
    console = Console()
    if render is None:
        console.print(arrow_rich_table(shown, title))
    else:
        render(shown, console)
    if what:
        more = f" (first {TABLE_ROWS_SHOWN:,} shown; use --output or --format tsv)" \
            if table.num_rows > TABLE_ROWS_SHOWN else ""
        note(f"{table.num_rows:,} {what}{more}")
