"""Entry point: the Typer app, its commands, and the one place errors become exit codes."""

from __future__ import annotations

import sys

import typer

from seqatlas.cli import (annotate_cmd, index_cmd, info_cmd, ingest_cmd, models_cmd, probe_cmd,
                          query_cmd)
from seqatlas.errors import SeqAtlasError

app = typer.Typer(
    name="seqatlas",
    help="Atlases of masked sequence language models over proteomes and genomes: per-position "
    "likelihoods and per-token embeddings in Parquet, resumable, on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
app.command("ingest")(ingest_cmd.ingest)
app.command("info")(info_cmd.info)
app.command("demo")(ingest_cmd.demo)
app.command("models")(models_cmd.models)
app.command("annotate")(annotate_cmd.annotate)
app.add_typer(query_cmd.query_app, name="query")
app.add_typer(query_cmd.export_app, name="export")
app.add_typer(index_cmd.index_app, name="index")
app.add_typer(probe_cmd.probe_app, name="probe")

# ClickException as the installed Typer raises it: click's own, or the copy that newer Typer
# versions vendor (typer._click), which click.ClickException does not catch
_CLICK_EXCEPTIONS = tuple(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; a :class:`SeqAtlasError` prints ``Error: ...`` and exits 1."""
    from rich.console import Console

    try:
        app(args=argv, standalone_mode=False)
    except SeqAtlasError as exc:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]Error:[/] {exc}", highlight=False,
                                                    markup=True)
        return 1
    except KeyboardInterrupt:
        Console(stderr=True).print("Interrupted: committed work is kept; re-run to resume.")
        return 130
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        return 1
    except _CLICK_EXCEPTIONS as exc:  # usage errors: a bad value, an unknown option
        exc.show()
        return exc.exit_code
    return 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
