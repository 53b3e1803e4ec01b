"""Entry point: the Typer app, its commands, and the one place errors become exit codes."""

from __future__ import annotations

import errno
import inspect
import math
import os
import re
import select
import sys
import types
import typing

import typer

from seqatlas.cli import (annotate_cmd, index_cmd, info_cmd, ingest_cmd, models_cmd, plot_cmd,
                          probe_cmd, query_cmd, report_cmd, variants_cmd)
from seqatlas.cli.help_examples import add_examples
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


def _print_version(value: bool) -> None:
    if value:
        from seqatlas._version import __version__

        typer.echo(f"seqatlas {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_print_version,
                                       is_eager=True, help="Print the version and exit.")
          ) -> None:
    """Atlases of masked sequence language models."""


app.command("ingest")(ingest_cmd.ingest)
app.command("info")(info_cmd.info)
app.command("verify")(info_cmd.verify)
app.command("repair")(info_cmd.repair)
app.command("log")(info_cmd.log)
app.command("compact")(info_cmd.compact)
app.command("upgrade")(info_cmd.upgrade)
app.command("pool")(info_cmd.pool)
app.command("demo")(ingest_cmd.demo)
app.command("models")(models_cmd.models)
app.command("annotate")(annotate_cmd.annotate)
app.command("report")(report_cmd.report)
app.add_typer(query_cmd.query_app, name="query")
app.add_typer(query_cmd.export_app, name="export")
app.add_typer(index_cmd.index_app, name="index")
app.add_typer(probe_cmd.probe_app, name="probe")
app.add_typer(plot_cmd.plot_app, name="plot")
app.add_typer(variants_cmd.variants_app, name="variants")

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


# a summary of more than one sentence keeps only the sentences that fit this many characters
SUMMARY_CHARS = 200
# a full stop after one of these words ends no sentence
_ABBREVIATIONS = {"e.g.", "i.e.", "vs.", "cf.", "etc.", "approx.", "no.", "fig.", "eq."}
# a sentence ends at . ! or ? (and any closing quotes or brackets) before whitespace
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s)")


def summary(help_text: str | None) -> str:
    """The one-line summary of a help text for a command table: its first paragraph (before
    any ``\\f``), whitespace joined into one line, as many of its whole sentences as fit
    :data:`SUMMARY_CHARS` (always the first); a paragraph ending in no sentence end gets a
    full stop. Never a sentence cut short."""
    text = inspect.cleandoc(help_text or "").partition("\f")[0]
    paragraph = " ".join(text.strip().split("\n\n")[0].replace("\b", "").split())
    if not paragraph:
        return ""
    if len(paragraph) > SUMMARY_CHARS:
        ends = [m.end() for m in _SENTENCE_END.finditer(paragraph)
                if paragraph[:m.start() + 1].rsplit(" ", 1)[-1].lstrip("(['\"").lower()
                not in _ABBREVIATIONS and not paragraph[m.end():].lstrip()[:1].islower()]
        if ends:
            paragraph = paragraph[:max([end for end in ends if end <= SUMMARY_CHARS],
                                       default=ends[0])]
    if not re.search(r"[.!?][\"')\]]*$", paragraph):
        paragraph = paragraph.rstrip(":;,") + "."
    return paragraph


def set_summaries(typer_app: typer.Typer) -> None:
    """Give every command and group under ``typer_app`` (recursively) its :func:`summary` as
    ``short_help``: the command tables of ``--help`` then show whole sentences on one logical
    line (rich wraps it to the terminal), where Typer would keep the docstring's own line
    breaks and Click would cut it at 45 characters with an ellipsis. An explicit
    ``short_help`` is kept, made one line and a whole sentence."""
    from typer.main import solve_typer_info_help
    from typer.models import DefaultPlaceholder

    for info in typer_app.registered_commands:
        explicit = info.short_help if isinstance(info.short_help, str) else None
        info.short_help = summary(explicit or info.help or inspect.getdoc(info.callback))
    for group in typer_app.registered_groups:
        explicit = group.short_help
        if isinstance(explicit, DefaultPlaceholder) or not explicit:
            explicit = group.typer_instance.info.short_help
        if isinstance(explicit, DefaultPlaceholder) or not explicit:
            explicit = solve_typer_info_help(group)
        group.short_help = summary(explicit)
        set_summaries(group.typer_instance)


check_numbers(app)
add_examples(app)
set_summaries(app)


def _print_error(message: str) -> None:
    """``Error: message`` on stderr, as plain text (no markup, no emoji codes)."""
    from rich.console import Console
    from rich.text import Text

    Console(stderr=True, soft_wrap=True).print(
        Text.assemble(("Error:", "bold red"), " ", message), highlight=False)


def _stdout_identity() -> tuple[int, int] | None:
    """(device, inode) of the file descriptor behind stdout, None when it has none."""
    try:
        status = os.fstat(sys.__stdout__.fileno())
    except (AttributeError, OSError, ValueError):
        return None
    return status.st_dev, status.st_ino


def _stdout_gone(before: tuple[int, int] | None) -> bool:
    """Whether stdout's reader has gone (``seqatlas ... | head``): its descriptor, the one
    ``before`` identifies, polls as broken, or rich's broken-pipe handler has already pointed
    it at /dev/null. A broken pipe elsewhere (a child process's stdin) is not this."""
    if before is None:
        return False
    if _stdout_identity() != before:
        return True
    if not hasattr(select, "poll"):
        return True
    poller = select.poll()
    poller.register(sys.__stdout__.fileno(), select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _closed_stdout(exc: BaseException, before: tuple[int, int] | None) -> bool:
    """Whether ``exc`` (a BrokenPipeError, or the exit 1 that Typer and rich make of one)
    comes from writing to a stdout whose reader has gone; then stdout is pointed at
    /dev/null, so that the interpreter's last flush at exit is silent too."""
    cause = exc if isinstance(exc, OSError) else exc.__context__
    if not (isinstance(cause, OSError) and cause.errno == errno.EPIPE and _stdout_gone(before)):
        return False
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.__stdout__.fileno())
    os.close(devnull)
    return True


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; a :class:`SeqAtlasError` prints ``Error: ...`` and exits 1. Output cut
    short by its reader (``| head``) ends quietly with 0."""
    from rich.console import Console

    stdout = _stdout_identity()
    try:
        code = app(args=argv, prog_name="seqatlas", standalone_mode=False)
        sys.stdout.flush()  # a closed pipe shows here, not in the flush at exit
        if code == 130:  # Typer turns a KeyboardInterrupt into exit code 130
            raise KeyboardInterrupt
        if isinstance(code, int) and not isinstance(code, bool) and code:
            return code
    except SeqAtlasError as exc:
        _print_error(str(exc))
        return 1
    except SystemExit as exc:  # how Typer and rich end a write to a closed pipe
        if not _closed_stdout(exc, stdout):
            raise
    except OSError as exc:  # storage the user must fix: a full disk, a read-only directory
        if _closed_stdout(exc, stdout):
            return 0
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
    engine = sys.modules.get("seqatlas.query.sandbox")
    if engine is not None:  # a query DuckDB could not stop at once must not delay the exit
        engine.exit_if_abandoned(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
