"""The command line as people type it: usage errors, --version, stdin, plain-text errors,
adding a file to an atlas without retyping its settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import seqatlas
from seqatlas._version import __version__
from seqatlas.cli.main import main
from seqatlas.errors import AtlasMismatchError
from tests.conftest import random_protein, write_fasta

RECORDS = {f"p{i}": random_protein(30 + 7 * i, seed=40 + i) for i in range(3)}
FAST = ["--workers", "0", "--no-progress", "--window", "20"]


def _cli(*args: str, stdin: bytes | None = None, cwd: Path | None = None):
    return subprocess.run([sys.executable, "-m", "seqatlas.cli.main", *args], input=stdin,
                          capture_output=True, timeout=600, cwd=cwd)


def test_bare_seqatlas_prints_help_and_version_prints_the_version():
    bare = _cli()
    text = (bare.stdout + bare.stderr).decode()
    assert "Usage: seqatlas" in text and "ingest" in text and "query" in text
    assert "Traceback" not in text and bare.returncode in (0, 2)
    version = _cli("--version")
    assert version.returncode == 0 and version.stdout.decode().strip() == f"seqatlas {__version__}"


@pytest.mark.parametrize("argv, says", [
    (["--bogus"], "No such option: --bogus"),
    (["ingest"], "Missing argument"),
    (["ingest", "x.fa", "--likelihood", "Fast"], "'Fast' is not one of"),
    (["ingest", "x.fa", "--window", "ten"], "Invalid value for '--window'"),
    (["info"], "give the atlas directory once"),
    (["query", "sql"], "Missing argument"),
    (["query", "anomalies", "--atlas", "a", "--z", "nan"], "not a finite number"),
    (["index", "list", "--atlas", "a", "--bogus"], "No such option"),
    (["export", "bedgraph", "--atlas", "a", "--smooth", "1.5"], "Invalid value for '--smooth'"),
    (["nonsense"], "No such command"),
])
def test_usage_errors_exit_2_with_a_message_and_no_traceback(argv, says, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert says in err and "Usage:" in err and "Traceback" not in err


def _commands():
    """(path, click command) of every command, from the app as Typer builds it."""
    import typer.main

    from seqatlas.cli.main import app

    def walk(command, path):
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                yield from walk(sub, [*path, name])
        else:
            yield path, command

    return list(walk(typer.main.get_command(app), []))


def test_help_fits_80_columns_with_examples(capsys, monkeypatch):
    """At 80 columns every option name is shown whole, nothing is cut ('…'), every command
    ends with its examples, and options all have a help text."""
    monkeypatch.setenv("COLUMNS", "80")
    commands = _commands()
    assert len(commands) >= 19
    for path, command in commands:
        assert main([*path, "--help"]) == 0, path
        text = capsys.readouterr().out
        assert "Examples:" in text and f"seqatlas {' '.join(path)}" in text, path
        assert "…" not in text, (path, [line for line in text.splitlines() if "…" in line])
        for parameter in command.params:
            if getattr(parameter, "hidden", False):  # a deprecated alias
                continue
            for flag in parameter.opts + parameter.secondary_opts:
                if flag.startswith("--"):
                    assert flag in text, (path, flag)
            if parameter.param_type_name == "option" and parameter.name != "help":
                assert (parameter.help or "").strip(), (path, parameter.name)


def test_every_example_parses():
    """Each help example is a command line its command accepts (options, choices, types)."""
    import shlex

    from seqatlas.cli.help_examples import EXAMPLES

    by_path = {" ".join(path): command for path, command in _commands()}
    assert set(EXAMPLES) == set(by_path)
    for name, lines in EXAMPLES.items():
        for line in lines:
            argv = shlex.split(line.split(" | ")[-1], comments=True)
            assert argv[0] == "seqatlas" and " ".join(argv[1:]).startswith(name), line
            args = argv[1 + len(name.split()):]
            by_path[name].make_context(name, args)  # raises click's usage error if not


def test_every_command_has_help(capsys):
    """--help of each command and group exits 0 (a group without arguments shows help)."""
    from seqatlas.cli.main import app

    def walk(typer_app, prefix):
        for info in typer_app.registered_commands:
            yield [*prefix, info.name or info.callback.__name__]
        for group in typer_app.registered_groups:
            yield [*prefix, group.name]
            yield from walk(group.typer_instance, [*prefix, group.name])

    commands = list(walk(app, []))
    assert ["query", "sql"] in commands and ["index", "build"] in commands
    for command in commands:
        assert main([*command, "--help"]) == 0, command
        assert "Usage: seqatlas " + " ".join(command) in capsys.readouterr().out


def test_errors_are_printed_as_plain_text(tmp_path):
    """A path holding rich markup and an emoji code (':100:') is printed as it is."""
    weird = tmp_path / "[bold red]x[/] :100: :thumbs_up:"
    done = _cli("query", "sql", "SELECT 1", "--atlas", str(weird))
    err = done.stderr.decode()
    assert done.returncode == 1 and "Traceback" not in err
    assert f"Error: {weird}" in err.replace("\n", "")
    assert "💯" not in err and "👍" not in err


# -- stdin and other streams ------------------------------------------------------------------


@pytest.fixture()
def proteins(tmp_path):
    return write_fasta(tmp_path / "p.fa", RECORDS)


def test_ingest_reads_stdin_and_records_it(tmp_path, tiny_esm, proteins):
    reference = seqatlas.ingest(proteins, atlas=tmp_path / "file", model=str(tiny_esm),
                                workers=0, progress=False, window=20)
    assert reference.units_scored == 1
    piped = _cli("ingest", "-", "--atlas", str(tmp_path / "piped"), "--model", str(tiny_esm),
                 *FAST, stdin=proteins.read_bytes())
    assert piped.returncode == 0, piped.stderr.decode()
    expected = seqatlas.Atlas(tmp_path / "file").positions()
    assert seqatlas.Atlas(tmp_path / "piped").positions().equals(expected)
    manifest = json.loads((tmp_path / "piped" / "atlas.json").read_text())
    [record] = manifest["inputs"]
    assert record["path"] == "<stdin>" and record["size"] == proteins.stat().st_size
    # the same bytes piped again: nothing to do, nothing duplicated
    again = _cli("ingest", "-", "--atlas", str(tmp_path / "piped"), "--model", str(tiny_esm),
                 *FAST, "--json", stdin=proteins.read_bytes())
    assert again.returncode == 0, again.stderr.decode()
    report = json.loads(again.stdout)
    assert report["units_scored"] == 0 and report["units_skipped"] == 1
    assert seqatlas.Atlas(tmp_path / "piped").positions().equals(expected)
    # repair cannot read a stream again, and says so
    [problem] = seqatlas.verify(tmp_path / "piped")["inputs"]
    assert "read from a stream" in problem["problem"]


def test_ingest_reads_a_fifo_and_dev_stdin(tmp_path, tiny_esm, proteins):
    expected = seqatlas.ingest(proteins, atlas=tmp_path / "file", model=str(tiny_esm),
                               workers=0, progress=False, window=20)
    assert expected.positions_scored == sum(len(s) for s in RECORDS.values())
    fifo = tmp_path / "named.pipe"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(proteins.read_bytes()))
    writer.start()
    report = seqatlas.ingest(fifo, atlas=tmp_path / "fifo", model=str(tiny_esm), workers=0,
                             progress=False, window=20)
    writer.join(timeout=60)
    assert report.positions_scored == expected.positions_scored
    assert seqatlas.Atlas(tmp_path / "fifo").positions().equals(
        seqatlas.Atlas(tmp_path / "file").positions())
    assert seqatlas.info(tmp_path / "fifo")["inputs"][0]["path"] == str(fifo)
    # /dev/stdin of a child whose stdin is the file: a stream, read once
    done = _cli("ingest", "/dev/stdin", "--atlas", str(tmp_path / "dev"), "--model",
                str(tiny_esm), *FAST, stdin=proteins.read_bytes())
    assert done.returncode == 0, done.stderr.decode()
    assert seqatlas.Atlas(tmp_path / "dev").positions().equals(
        seqatlas.Atlas(tmp_path / "file").positions())


def test_bad_fasta_on_stdin_is_named_stdin_and_writes_nothing(tmp_path, tiny_esm):
    done = _cli("ingest", "-", "--atlas", str(tmp_path / "bad"), "--model", str(tiny_esm),
                *FAST, stdin=b">ok\nACDEF\n>broken\nAC1DE\n")
    err = done.stderr.decode()
    assert done.returncode == 1 and "Traceback" not in err
    assert err.startswith("Error: <stdin>, line 4, record 'broken'")
    assert "seqatlas-input-" not in err  # the temporary copy is never named
    assert not (tmp_path / "bad").exists()


def test_stdin_twice_or_from_a_terminal_is_refused(tmp_path, tiny_esm, proteins):
    done = _cli("ingest", "-", "-", "--atlas", str(tmp_path / "twice"), "--model",
                str(tiny_esm), *FAST, stdin=proteins.read_bytes())
    assert done.returncode == 1 and "given twice" in done.stderr.decode()
    assert not (tmp_path / "twice").exists()


def test_annotate_reads_stdin(tmp_path):
    import numpy as np

    from tests.query_data import make_atlas

    seqs = {"chrA": "ACGT" * 25, "chrB": "TTGCA" * 12}
    bed = b"chrA\t10\t30\tAT_rich\nchrB\t5\t20\t(CA)n\n"
    atlases = {}
    for name in ("file", "piped"):
        atlases[name] = make_atlas(tmp_path / name, seqs, {k: np.full(len(v), -1.0)
                                                          for k, v in seqs.items()})
    (tmp_path / "r.bed").write_bytes(bed)
    assert seqatlas.annotate(tmp_path / "r.bed", atlas=atlases["file"])["repeats"] == 2
    done = _cli("annotate", "-", "--atlas", str(atlases["piped"]), "--json", stdin=bed)
    assert done.returncode == 0, done.stderr.decode()
    summary = json.loads(done.stdout)
    assert summary["file"] == "<stdin>" and summary["format"] == "bed"
    columns = ["seq_id", "start", "end", "name"]
    assert seqatlas.Atlas(atlases["piped"]).repeats(columns).equals(
        seqatlas.Atlas(atlases["file"]).repeats(columns))
    manifest = json.loads((atlases["piped"] / "atlas.json").read_text())
    assert [u["repeats_file"] for u in manifest["units"].values() if "repeats_file" in u] \
        == ["<stdin>"]
    bad = _cli("annotate", "-", "--atlas", str(atlases["piped"]), "--format", "bed",
               stdin=b"chrA\t10\t30\tok\nchrA\t40\t35\tbackwards\n")
    err = bad.stderr.decode()
    assert bad.returncode == 1 and err.startswith("Error: <stdin>") and "line 2" in err
    assert "seqatlas-input-" not in err


# -- extending an atlas without retyping its settings --------------------------------------


def test_adding_a_file_reuses_the_atlas_settings(tmp_path, tiny_esm, proteins):
    atlas = tmp_path / "atlas"
    assert main(["ingest", str(proteins), "--atlas", str(atlas), "--model", str(tiny_esm),
                 "--likelihood", "unmasked", "--embeddings", "none", *FAST]) == 0
    before = json.loads((atlas / "atlas.json").read_text())
    more = write_fasta(tmp_path / "more.fa", {"extra": random_protein(44, seed=9)})
    # no --model, --likelihood, --embeddings, --window: the atlas's own
    assert main(["ingest", str(more), "--atlas", str(atlas), "--workers", "0",
                 "--no-progress"]) == 0
    after = json.loads((atlas / "atlas.json").read_text())
    assert after["scoring"] == before["scoring"] and after["model"] == before["model"]
    positions = seqatlas.Atlas(atlas).positions(["seq_id", "logp_unmasked"]).to_pydict()
    assert positions["seq_id"].count("extra") == 44
    assert all(v is not None for v in positions["logp_unmasked"])
    # the same with the Python API
    third = write_fasta(tmp_path / "third.fa", {"third": random_protein(25, seed=10)})
    report = seqatlas.ingest(third, atlas=atlas, workers=0, progress=False)
    assert report.positions_scored == 25
    # a setting given that differs from the atlas is still refused, naming it
    fourth = write_fasta(tmp_path / "fourth.fa", {"fourth": random_protein(25, seed=11)})
    with pytest.raises(AtlasMismatchError, match="likelihood: atlas 'unmasked', "
                       "now 'exact'"):
        seqatlas.ingest(fourth, atlas=atlas, likelihood="exact", workers=0, progress=False)


# -- a Ray address that does not answer ------------------------------------------------------


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("via_environment", [False, True])
def test_an_unreachable_ray_address_fails_at_once(monkeypatch, via_environment):
    """--address auto with a stale session (here RAY_ADDRESS naming a closed port) or a
    host:port nobody listens on: an error naming it within seconds, not Ray's retries."""
    import time

    from seqatlas.errors import ConfigError
    from seqatlas.util import _check_reachable

    port = _closed_port()
    address = "auto" if via_environment else f"127.0.0.1:{port}"
    if via_environment:
        monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(ConfigError, match=rf"Ray at {address}.* does not answer .*ray stop"):
        _check_reachable(address, error=ConfigError, fallback="use --workers 0")
    assert time.monotonic() - started < 10


def test_readme_figures_match_the_code():
    """Numbers the README states about the code's behaviour are the code's constants."""
    import re

    from seqatlas.index.build import CALIBRATION_QUERIES

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    [queries] = re.findall(r"During the build, ([\d,]+) of the atlas's own vectors", readme)
    assert int(queries.replace(",", "")) == CALIBRATION_QUERIES


def test_query_sql_help_lists_every_view(tmp_path, capsys, monkeypatch):
    """Each view a query can read (tables, repeats_global, the anomaly views) is named in
    `query sql --help`."""
    import numpy as np

    from seqatlas.query.engine import Engine
    from tests.query_data import make_atlas

    atlas = make_atlas(tmp_path / "a", {"chrA": "ACGT" * 10}, {"chrA": np.full(40, -1.0)})
    with Engine(atlas) as sandbox:  # the engine of `query sql`
        views = sandbox.fetch_internal("SELECT view_name FROM duckdb_views() WHERE NOT "
                                       "internal").column(0).to_pylist()
    assert {"positions", "repeats_global", "position_z", "anomaly_regions"} <= set(views)
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["query", "sql", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for view in views:
        assert view in text, view


def test_extending_an_atlas_built_from_a_relative_checkpoint_path(tmp_path, tiny_esm,
                                                                  proteins, monkeypatch):
    """The atlas records the checkpoint's absolute path; a file added later, from another
    directory and without --model, is scored by the same weights (not refused by name)."""
    import shutil

    shutil.copytree(tiny_esm, tmp_path / "ckpt")
    monkeypatch.chdir(tmp_path)
    assert main(["ingest", str(proteins), "--atlas", "atlas", "--model", "ckpt", *FAST]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    more = write_fasta(tmp_path / "more.fa", {"extra": random_protein(33, seed=12)})
    assert main(["ingest", str(more), "--atlas", str(tmp_path / "atlas"), "--workers", "0",
                 "--progress", "none"]) == 0
    manifest = json.loads((tmp_path / "atlas" / "atlas.json").read_text())
    assert manifest["model"]["name"] == "ckpt"
    assert seqatlas.Atlas(tmp_path / "atlas").positions(["seq_id"]).column(0).to_pylist() \
        .count("extra") == 33
