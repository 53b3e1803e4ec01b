"""Entry point: the Typer app, its commands, and the one place errors become exit codes."""

from __future__ import annotations

import errno
import inspect
import math
import sys
import types
import typing

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
app.command("verify")(info_cmd.verify)
app.command("repair")(info_cmd.repair)
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


_USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                errno.ENOENT, errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.EPIPE}


def finite_float(text: str) -> float:
    """Parse a float option, refusing nan and infinities (a usage error, exit 2)."""
    try:
        number = float(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a number") from None
    if not math.isfinite(number):
        raise typer.BadParameter(f"{text!r} is not a finite number")
    return number


def _is_float(annotation) -> bool:
    return annotation is float or (typing.get_origin(annotation) in (typing.Union,
                                                                     types.UnionType)
                                   and float in typing.get_args(annotation))


def check_numbers(typer_app: typer.Typer) -> None:
    """Give every float option and argument of every command under ``typer_app`` the
    :func:`finite_float` parser, so no command ever receives nan or an infinity."""
    for info in typer_app.registered_commands:
        hints = typing.get_type_hints(info.callback)
        for name, parameter in inspect.signature(info.callback).parameters.items():
            default = parameter.default
            if (isinstance(default, typer.models.ParameterInfo) and _is_float(hints.get(name))
                    and getattr(default, "parser", None) is None):
                default.parser = finite_float
    for group in typer_app.registered_groups:
        check_numbers(group.typer_instance)


check_numbers(app)


def _print_error(message: str) -> None:
    """``Error: message`` on stderr, as plain text (no markup, no emoji codes)."""
    from rich.console import Console
    from rich.text import Text

    Console(stderr=True, soft_wrap=True).print(
        Text.assemble(("Error:", "bold red"), " ", message), highlight=False)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; a :class:`SeqAtlasError` prints ``Error: ...`` and exits 1."""
    from rich.console import Console

    try:
        code = app(args=argv, prog_name="seqatlas", standalone_mode=False)
        if code == 130:  # Typer turns a KeyboardInterrupt into exit code 130
            raise KeyboardInterrupt
        if isinstance(code, int) and not isinstance(code, bool) and code:
            return code
    except SeqAtlasError as exc:
        _print_error(str(exc))
        return 1
    except OSError as exc:  # storage the user must fix: a full disk, a read-only directory
        if exc.errno not in _USER_ERRNOS:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        _print_error(f"{where}{exc.strerror or exc}. Committed work is kept; fix it and re-run.")
        return 1
    except KeyboardInterrupt:
        Console(stderr=True).print("Interrupted: committed work is kept; re-run to resume.",
                                   markup=False, highlight=False)
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
    code = main()
    engine = sys.modules.get("seqatlas.query.engine")
    if engine is not None:  # a query DuckDB could not stop at once must not delay the exit
        engine.exit_if_abandoned(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
