"""What the CLI prints: TSV when stdout is not a terminal (header and rows, nothing else; counts
and notes on stderr), every --format read back to the values the API gives, rich tables that
never truncate, and a closed pipe that ends quietly."""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import seqatlas
from seqatlas.cli import main as cli_main
from seqatlas.cli.main import app, main
from seqatlas.index import build_index
from seqatlas.query.output import OUTPUT_FORMATS
from seqatlas.store import AtlasWriter
from tests.embedding_data import make_token_atlas
from tests.query_data import make_atlas

ROOT = Path(__file__).resolve().parents[1]
LONG_ID = "chrUn_KI270302v1_alternate_locus_of_a_very_long_contig_name"
LONG_INPUT = ("/data/genomes/GRCh38/an/assembly/directory/with/a/long/name/"
              "GCA_000001405.15_GRCh38_no_alt_analysis_set.fna")
RNG = np.random.default_rng(3)
SEQS = {LONG_ID: "".join(RNG.choice(list("ACGT"), 700)),
        "s2": "".join(RNG.choice(list("ACGT"), 40))}
QUERY = ("SELECT seq_id, pos, ref, logp FROM positions WHERE pos IN (0, 1, 2, 650) "
         "ORDER BY seq_id, pos")


def _scores():
    scores = {k: np.random.default_rng(4).normal(-1.3, 0.1, len(v)) for k, v in SEQS.items()}
    scores[LONG_ID][600:640] = -6.0  # one region at 600..640 (numbers rich used to cut: 600…)
    scores["s2"][1] = np.nan  # a null logp
    return scores


@pytest.fixture(scope="module")
def atlas(tmp_path_factory) -> Path:
    path = make_atlas(tmp_path_factory.mktemp("out") / "atlas", SEQS, _scores())
    record = {"path": LONG_INPUT, "size": 123_456, "sha256": "ab" * 32, "kind": "dna",
              "records": 2, "residues": 740, "first_ordinal": 0}
    with AtlasWriter(path) as writer:
        writer.commit("i" * 24, {}, inputs=[record])
    return path


def _cli(*args: str) -> subprocess.CompletedProcess:
    """The CLI in a child process, its stdout a pipe."""
    return subprocess.run([sys.executable, "-m", "seqatlas.cli.main", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def _invoke(*args: str, columns: int = 200):
    """The CLI through Typer's runner (stdout not a terminal), ``columns`` wide."""
    result = CliRunner(env={"COLUMNS": str(columns)}).invoke(app, list(args))
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def _tsv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE))


def test_models_piped_is_tsv_with_the_full_names():
    done = _invoke("models")  # stdout is not a terminal (seqatlas.models() loads torch: not
    assert done.stderr == ""  # in a child process)
    rows = {r["name"]: r for r in _tsv(done.stdout)}
    assert set(rows) == {"dnabert6-tiny", "antiberty"}
    api = {r["name"]: r for r in seqatlas.models()}
    assert rows["dnabert6-tiny"]["description"] == api["dnabert6-tiny"]["description"]
    assert int(rows["antiberty"]["parameters"]) == api["antiberty"]["parameters"]
    assert json.loads(rows["dnabert6-tiny"]["kinds"]) == ["dna", "rna"]
    # --json is --format json: every field as the API gives it
    assert json.loads(_invoke("models", "--json").stdout) == json.loads(json.dumps(
        seqatlas.models()))
    assert _invoke("models", "--format", "json").stdout == _invoke("models", "--json").stdout


def test_query_sql_piped_prints_header_and_rows_only(atlas):
    done = _cli("query", "sql", QUERY, "--atlas", str(atlas))
    assert done.returncode == 0, done.stderr
    api = seqatlas.query.sql(atlas, QUERY).to_pylist()
    lines = done.stdout.splitlines()
    assert lines[0] == "seq_id\tpos\tref\tlogp" and len(lines) == 1 + len(api) == 1 + 7
    assert [r["seq_id"] for r in _tsv(done.stdout)] == [r["seq_id"] for r in api]
    assert LONG_ID in lines[1]
    assert done.stderr == "7 rows\n"


def _values(rows: list[dict]) -> list[tuple]:
    """(seq_id, pos, ref, logp) rows, logp as the float32 it is stored as."""
    return [(r["seq_id"], int(r["pos"]), r["ref"],
             None if r["logp"] is None else np.float32(float(r["logp"]))) for r in rows]


def _read(fmt: str, data: bytes) -> list[tuple]:
    """A result as --format wrote it, parsed back."""
    if fmt == "parquet":
        rows = pq.read_table(io.BytesIO(data)).to_pylist()
    elif fmt == "json":
        rows = json.loads(data)
    elif fmt == "jsonl":
        rows = [json.loads(line) for line in data.decode().splitlines()]
    elif fmt == "csv":
        options = pacsv.ConvertOptions(column_types=dict.fromkeys(
            ("seq_id", "pos", "ref", "logp"), pa.string()), strings_can_be_null=True)
        rows = pacsv.read_csv(io.BytesIO(data), convert_options=options).to_pylist()
    else:
        rows = [{k: v or None for k, v in r.items()} for r in _tsv(data.decode())]
    return _values(rows)


@pytest.mark.parametrize("fmt", ["tsv", "csv", "json", "jsonl", "parquet"])
def test_every_format_reads_back_to_the_api_values(atlas, tmp_path, fmt):
    expected = _values(seqatlas.query.sql(atlas, QUERY).to_pylist())
    assert len(expected) == 7 and any(r[3] is None for r in expected)  # a null travels too
    stdout = _invoke("query", "sql", QUERY, "--atlas", str(atlas), "--format", fmt)
    assert _read(fmt, stdout.stdout_bytes) == expected
    assert stdout.stderr == "7 rows\n"
    out = tmp_path / f"result.{fmt}"  # --output: the same writer
    written = _invoke("query", "sql", QUERY, "--atlas", str(atlas), "-f", fmt, "-o", str(out))
    assert out.read_bytes() == stdout.stdout_bytes or fmt == "parquet"
    assert _read(fmt, out.read_bytes()) == expected
    assert written.stdout == "" and f"7 rows written to {out} ({fmt})" in written.stderr
    # auto with --output: the suffix names the format
    auto = tmp_path / "auto" / f"result.{fmt}"
    auto.parent.mkdir()
    _invoke("query", "sql", QUERY, "--atlas", str(atlas), "-o", str(auto))
    assert _read(fmt, auto.read_bytes()) == expected


def test_auto_output_without_a_known_suffix_is_parquet(atlas, tmp_path):
    out = tmp_path / "result.data"
    written = _invoke("query", "sql", QUERY, "--atlas", str(atlas), "-o", str(out))
    assert pq.read_table(out).num_rows == 7 and "(parquet)" in written.stderr


def test_parquet_to_a_terminal_is_refused(atlas, capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert main(["query", "sql", QUERY, "--atlas", str(atlas), "--format", "parquet"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("Error: --format parquet writes binary Parquet")


def test_jsonl_and_json_of_no_rows(atlas):
    empty = "SELECT seq_id FROM sequences WHERE false"
    assert _invoke("query", "sql", empty, "--atlas", str(atlas), "-f", "jsonl").stdout == ""
    assert _invoke("query", "sql", empty, "--atlas", str(atlas), "-f", "json").stdout == "[]\n"
    assert _invoke("query", "sql", empty, "--atlas", str(atlas), "-f", "tsv").stdout == \
        "seq_id\n"


def test_anomalies_piped_give_whole_numbers_and_ids(atlas):
    api = seqatlas.query.anomalies(atlas).to_pylist()
    assert [(r["seq_id"], r["start"], r["end"]) for r in api] == [(LONG_ID, 600, 640)]
    result = _invoke("query", "anomalies", "--atlas", str(atlas), columns=60)
    (row,) = _tsv(result.stdout)
    assert (row["seq_id"], row["start"], row["end"]) == (LONG_ID, "600", "640")
    assert float(row["mean_z"]) == pytest.approx(api[0]["mean_z"])
    assert result.stderr == "1 regions\n"


def test_score_column_and_its_deprecated_alias(atlas, capsys):
    new = _invoke("query", "anomalies", "--atlas", str(atlas), "--score-column", "logp")
    old = _invoke("query", "anomalies", "--atlas", str(atlas), "--column", "logp")
    assert old.stdout == new.stdout and _tsv(new.stdout)[0]["start"] == "600"
    assert "--column is deprecated" in old.stderr and "deprecated" not in new.stderr
    assert "--column" not in _invoke("query", "anomalies", "--help").stdout.replace(
        "--score-column", "")
    assert main(["query", "enrichment", "--atlas", str(atlas), "--column", "logp",
                 "--score-column", "logp_mean"]) == 1
    assert capsys.readouterr().err.startswith("Error: --column logp and --score-column")


def test_rich_table_keeps_every_value_whole(atlas):
    """--format table (what a terminal gets) never cuts a value: wide enough, a table with
    the id and numbers whole; too narrow, one block of `column value` lines per row."""
    wide = _invoke("query", "anomalies", "--atlas", str(atlas), "-f", "table", columns=200)
    (row,) = [line for line in wide.stdout.splitlines() if LONG_ID in line]
    assert [cell.strip() for cell in row.split("│")[1:5]] == [LONG_ID, "600", "640", "low"]
    assert wide.stderr == "1 regions\n"  # the count is on stderr in a terminal too
    narrow = _invoke("query", "anomalies", "--atlas", str(atlas), "-f", "table", columns=60)
    lines = narrow.stdout.splitlines()
    assert max(len(line) for line in lines) <= 60 and "…" not in narrow.stdout
    assert lines[1].startswith("row 1 ─")
    fields = dict(line.split(None, 1) for line in lines[2:] if len(line.split(None, 1)) == 2
                  and not line.startswith(" "))
    assert (fields["start"].strip(), fields["end"].strip(), fields["tail"].strip()) == \
        ("600", "640", "low")
    assert LONG_ID in "".join(narrow.stdout.split())  # folded onto two lines, not cut
    models = _invoke("models", "--format", "table", columns=80).stdout
    assert "│ dnabert6-tiny │" in models and "Hugging Face" in models and "…" not in models


def test_info_shows_a_long_input_path_whole_at_80_columns(atlas):
    result = _invoke("info", str(atlas), columns=80)
    assert len(LONG_INPUT) > 80
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("input ")]
    assert line == f"input {LONG_INPUT}: 2 records, 740 residues, 120.6 KiB, sha256 " \
        "abababababab…"
    assert f"atlas {atlas}  (kind: dna" in result.stdout


def test_index_list_formats(tmp_path):
    path = make_token_atlas(tmp_path / "a", {"a": "ACGTACGTAC" * 3}, lambda layer, texts, ids:
                            np.random.default_rng(0).normal(size=(len(texts), 4)), dim=4)
    empty = _invoke("index", "list", "--atlas", str(path))
    assert empty.stdout.splitlines() == [
        "name\ttype\tmetric\tcolumn\tdim\tntotal\tbytes\tbytes_per_vector\tbuilt"]
    assert "no indexes; build one with" in empty.stderr
    assert _invoke("index", "list", "--atlas", str(path), "--format", "json").stdout == "[]\n"
    build_index(path, name="flat-ip", type="flat", metric="ip")
    api = seqatlas.index.list_indexes(path)
    (row,) = _tsv(_invoke("index", "list", "--atlas", str(path)).stdout)
    assert list(row) == list(api[0])
    assert (row["name"], row["type"], row["metric"], row["column"], row["built"]) == \
        ("flat-ip", "flat", "ip", "embedding", api[0]["built"])
    assert [int(row[k]) for k in ("dim", "ntotal", "bytes")] == [4, 30, api[0]["bytes"]]
    assert float(row["bytes_per_vector"]) == api[0]["bytes_per_vector"]
    for args in (["--format", "json"], ["--json"]):
        assert json.loads(_invoke("index", "list", "--atlas", str(path), *args).stdout) == api
    table = _invoke("index", "list", "--atlas", str(path), "-f", "table").stdout
    assert "flat-ip" in table and "embedding" in table


@pytest.mark.parametrize("argv", [
    ["query", "sql", "SELECT range AS i, 'x' || range AS s FROM range(300000)"],
    ["query", "sql", "SELECT range AS i, repeat('x', 60) AS s FROM range(3000)", "-f", "table"],
], ids=["tsv", "rich-table"])
def test_a_closed_pipe_ends_quietly(atlas, argv):
    """`seqatlas ... | head -1`: exit 0 (under pipefail), no traceback, no "Exception
    ignored" at exit; the results are far larger than a pipe's buffer."""
    argv = [sys.executable, "-m", "seqatlas.cli.main", *argv, "--atlas", str(atlas)]
    # buffered stdout, as a user has it (unbuffered, a write cut short by the closed pipe
    # returns the bytes it wrote and raises nothing, so nothing is seen to end early)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    done = subprocess.run(["bash", "-o", "pipefail", "-c", f"{shlex.join(argv)} | head -1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert (done.returncode, done.stderr) == (0, "")
    assert len(done.stdout.splitlines()) == 1


def test_a_broken_pipe_elsewhere_is_not_taken_for_stdout():
    """An EPIPE while stdout is still read (a child's stdin closed) stays an error."""
    before = cli_main._stdout_identity()
    assert not cli_main._closed_stdout(BrokenPipeError(errno.EPIPE, "Broken pipe"), before)
    try:
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")
    except BrokenPipeError:
        exit_1 = SystemExit(1)  # as Typer and rich raise it, the EPIPE as its context
        exit_1.__context__ = sys.exc_info()[1]
    assert not cli_main._closed_stdout(exit_1, before)


def test_format_choices_include_auto_and_jsonl():
    assert OUTPUT_FORMATS[:2] == ("auto", "table") and "jsonl" in OUTPUT_FORMATS
    help_text = _invoke("query", "sql", "--help").stdout
    assert "auto" in help_text and "jsonl" in help_text and "[default: auto]" in help_text
    for command in (["models"], ["index", "list"]):
        assert "jsonl" in _invoke(*command, "--help").stdout
