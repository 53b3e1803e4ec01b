"""The command tables of ``seqatlas --help`` and of each group's ``--help`` show every
command's summary as whole sentences: the first paragraph of its help, on one logical line
that rich wraps to the terminal, never broken where the docstring's lines break, never cut."""

from __future__ import annotations

import inspect
import re

import pytest

from seqatlas.cli.main import main

WIDTHS = (80, 120)
SENTENCE_END = re.compile(r"[.!?][\"')\]]*$")


def _groups():
    """(path, click group) of the root and every group, from the app as Typer builds it."""
    import typer.main

    from seqatlas.cli.main import app

    def walk(group, path):
        yield path, group
        for name, sub in group.commands.items():
            if hasattr(sub, "commands"):
                yield from walk(sub, [*path, name])

    return list(walk(typer.main.get_command(app), []))


def _first_paragraph(help_text: str | None) -> str:
    """The first paragraph of a help text as rich shows it: one line, plain text."""
    from rich.text import Text

    text = inspect.cleandoc(help_text or "").split("\f")[0].strip().split("\n\n")[0]
    return " ".join(Text.from_markup(text).plain.split())


def _help(path: list[str], width: int, capsys, monkeypatch) -> str:
    import typer.rich_utils

    monkeypatch.setenv("COLUMNS", str(width))
    monkeypatch.setenv("TERMINAL_WIDTH", str(width))
    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", width, raising=False)
    capsys.readouterr()
    assert main([*path, "--help"]) == 0, path
    return capsys.readouterr().out


def _command_rows(text: str) -> dict[str, tuple[str, list[str], int]]:
    """name -> (summary rejoined across its wrapped lines, the lines, the column's width),
    from every command panel (not Options or Arguments) of a rendered help."""
    rows: dict[str, tuple[list[str], int]] = {}
    in_panel = False
    column = width = 0
    current = None
    for line in text.splitlines():
        if line.startswith("╭"):
            title = line.strip("╭╮─ ")
            in_panel = "Option" not in title and "Argument" not in title
            current = None
            continue
        if line.startswith("╰"):
            in_panel = False
            continue
        if not in_panel or not line.startswith("│"):
            continue
        body = line[1:line.rindex("│")]  # between the borders
        match = re.match(r" (\S+)( +)\S", body)
        if match:
            current = match.group(1)
            column = match.end() - 1
            width = len(body) - column - 1  # the description column, less its right padding
            rows[current] = ([body[column:].rstrip()], width)
        elif current is not None and body.strip():
            assert body[:column].strip() == "", line
            rows[current][0].append(body[column:].rstrip())
    return {name: (" ".join(lines), lines, width) for name, (lines, width) in rows.items()}


def _assert_wrapped_only_where_full(name: str, lines: list[str], width: int) -> None:
    """Each line break of a summary is rich's own wrapping: the next word did not fit."""
    for line, following in zip(lines, lines[1:]):
        next_word = following.split()[0]
        assert len(line) + 1 + len(next_word) > width, (
            f"{name}: summary broken after {line!r} though {next_word!r} fits "
            f"({width} columns): a line break of the docstring shown as it is")


@pytest.mark.parametrize("width", WIDTHS)
def test_every_command_summary_is_whole_sentences(width, capsys, monkeypatch):
    """Root and group help: every registered command is listed, its summary ends a sentence,
    is the first paragraph of its help (or its leading whole sentences) on one logical line,
    wrapped only where the column is full, and nothing is cut with an ellipsis."""
    groups = _groups()
    assert len(groups) >= 7  # the root and its groups
    for path, group in groups:
        text = _help(path, width, capsys, monkeypatch)
        assert all(len(line) <= width for line in text.splitlines()), (path, width)
        rows = _command_rows(text)
        shown = {name for name, command in group.commands.items() if not command.hidden}
        assert shown <= set(rows), (path, shown - set(rows))
        for name in shown:
            summary, lines, column = rows[name]
            where = " ".join([*path, name])
            paragraph = _first_paragraph(group.commands[name].help)
            assert paragraph, f"{where} has no help"
            if not SENTENCE_END.search(paragraph):
                paragraph += "."
            assert "…" not in summary or "…" in paragraph, (where, summary)
            assert SENTENCE_END.search(summary), (where, summary)
            # the whole paragraph, or as many of its leading sentences as fit: a prefix of it
            # that ends a sentence, followed in it by a space
            assert summary == paragraph or (
                paragraph.startswith(summary) and paragraph[len(summary)] == " "
                and len(summary) >= 60), (where, summary, paragraph)
            if len(paragraph) <= 200:
                assert summary == paragraph, (where, summary, paragraph)
            _assert_wrapped_only_where_full(where, lines, column)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", ["verify", "report"])
def test_verify_and_report_summaries_are_complete_sentences(name, width, capsys, monkeypatch):
    """The two docstrings whose first sentence wraps over several lines show it whole."""
    import typer.main

    from seqatlas.cli.main import app

    rows = _command_rows(_help([], width, capsys, monkeypatch))
    summary, lines, column = rows[name]
    first = _first_paragraph(typer.main.get_command(app).commands[name].help)
    assert summary.endswith(".") and summary == first, (summary, first)
    assert len(lines) >= 2  # a long sentence, wrapped by the table itself
    _assert_wrapped_only_where_full(name, lines, column)


def test_group_summaries_are_whole_sentences(capsys, monkeypatch):
    """The groups' own descriptions (the help= of each sub-Typer) end a sentence, in the
    root table and at the top of their own help."""
    from rich.text import Text

    rows = _command_rows(_help([], 120, capsys, monkeypatch))
    for path, group in _groups()[1:]:
        summary = rows[path[-1]][0] if len(path) == 1 else None
        if summary is not None:
            assert SENTENCE_END.search(summary), (path, summary)
        text = _help(path, 120, capsys, monkeypatch)
        description = " ".join(Text.from_markup(group.help or "").plain.split())
        assert SENTENCE_END.search(description), (path, description)
        assert description.split()[0] in text


def test_any_new_command_gets_a_whole_sentence_summary(monkeypatch):
    """The mechanism covers commands and groups it has never seen: a long multi-sentence
    paragraph keeps its leading whole sentences, a paragraph with no full stop gets one."""
    import typer
    import typer.rich_utils
    from typer.testing import CliRunner

    from seqatlas.cli.main import set_summaries

    first = ("Pool the per-token embeddings of every sequence into one vector per sequence, "
             "weighted by the per-position likelihoods of the atlas's own model.")
    second = "Writes a table of its own that later commands read."
    third = "Reads only the embeddings table and the positions table of the atlas, not more."
    fourth = "Nothing else."

    app = typer.Typer(rich_markup_mode="rich")
    sub = typer.Typer(help="A new group\nwrapped in its help")

    @app.command("pool")
    def pool() -> None:
        pass

    pool.__doc__ = "\n".join([first, second, third, fourth, "", "Details."])

    @sub.command("update")
    def update() -> None:
        """Add the tokens ingested since the index was built to it,
        without a rebuild. Writes."""

    app.add_typer(sub, name="index")
    set_summaries(app)
    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", 80, raising=False)
    runner = CliRunner()
    rows = _command_rows(runner.invoke(app, ["--help"], env={"COLUMNS": "80"}).output)
    assert rows["pool"][0] == f"{first} {second}"  # the whole sentences that fit 200 chars
    assert rows["index"][0] == "A new group wrapped in its help."
    _assert_wrapped_only_where_full("pool", rows["pool"][1], rows["pool"][2])
    rows = _command_rows(runner.invoke(app, ["index", "--help"], env={"COLUMNS": "80"}).output)
    assert rows["update"][0] == ("Add the tokens ingested since the index was built to it, "
                                 "without a rebuild. Writes.")
    _assert_wrapped_only_where_full("update", rows["update"][1], rows["update"][2])
