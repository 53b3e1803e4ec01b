"""The SQL sandbox: what may run (an allow-list on DuckDB's own parse), cancelling (timeout,
Ctrl-C, queries DuckDB cannot interrupt), resource limits, and CSV/TSV of nested values."""

from __future__ import annotations

import _thread
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import seqatlas
from seqatlas.cli.main import main
from seqatlas.errors import ConfigError, QueryError
from seqatlas.query import Engine, SqlConfig
from seqatlas.query import sandbox as sandbox_module
from seqatlas.query.output import csv_ready
from seqatlas.util import machine_threads
from tests.conftest import sigint_default
from tests.query_data import make_atlas

ROOT = Path(__file__).resolve().parents[1]
SEQS = {"chrA": "ACGT" * 30, "chrB": "TTGCA" * 20}
REPEATS = [("chrA", 10, 30, "AluY", "SINE", "Alu"), ("chrB", 5, 25, "L1HS", "LINE", "L1")]
# DuckDB checks for a cancel only between chunks of work: this single chunk (120 rows, each a
# regex over a 10 MB string) ignores con.interrupt() for seconds
STUBBORN = ("SELECT count(*) FROM range(120) a, (SELECT repeat('a', 10000000) s) "
            "WHERE regexp_matches(s, '(a*)*b' || a.range::VARCHAR)")
# a cross join that would run for hours, and that DuckDB interrupts at once
LONG = "SELECT count(*) FROM range(100000000) a, range(1000000) b WHERE a.range + b.range = 7"


def _atlas(path: Path) -> Path:
    scores = {k: np.linspace(-2.0, 0.0, len(v)) for k, v in SEQS.items()}
    return make_atlas(path, SEQS, scores, repeats=REPEATS)


@pytest.fixture(scope="module")
def atlas(tmp_path_factory) -> Path:
    return _atlas(tmp_path_factory.mktemp("sandbox") / "atlas")


def _hashes(root: Path) -> dict:
    """Every path under ``root`` with its content hash (directories and links too)."""
    found = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            found[key] = "link " + os.readlink(path)
        elif path.is_file():
            found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            found[key] = "dir"
    return found


# -- what may run ------------------------------------------------------------------------

# Every kind of statement DuckDB has that writes, changes the session or reads outside the
# atlas; {part} is a committed part (allowed_paths makes it writable to DuckDB).
WRITES = [
    "COPY (SELECT * FROM positions) TO '{part}' (FORMAT parquet, USE_TMP_FILE false)",
    "COPY (SELECT * FROM sequences) TO '{seqpart}' (USE_TMP_FILE false)",
    "COPY (SELECT 1 AS x) TO '{manifest}' (FORMAT json, USE_TMP_FILE false)",
    "COPY (SELECT 1 AS x) TO '{out}'",
    "COPY positions TO '{out}' (FORMAT csv)",
    "COPY positions FROM '{part}'",
    "COPY FROM DATABASE memory TO memory",
    "CREATE TABLE t AS SELECT 1 AS x",
    "CREATE TEMP TABLE t AS SELECT * FROM positions",
    "CREATE OR REPLACE VIEW positions AS SELECT 1 AS x",
    "CREATE VIEW v AS SELECT 1 AS x",
    "CREATE MACRO m(a) AS a",
    "CREATE MACRO tm() AS TABLE SELECT 1 AS x",
    "CREATE SEQUENCE s",
    "CREATE TYPE ty AS ENUM ('a', 'b')",
    "CREATE SCHEMA sc",
    "CREATE SECRET sec (TYPE s3, KEY_ID 'k', SECRET 's')",
    "CREATE INDEX ix ON positions (pos)",
    "INSERT INTO positions SELECT * FROM positions",
    "INSERT INTO t VALUES (1)",
    "UPDATE positions SET pos = 0",
    "DELETE FROM positions",
    "TRUNCATE positions",
    "MERGE INTO positions USING positions p2 ON false WHEN NOT MATCHED THEN DO NOTHING",
    "DROP VIEW positions",
    "DROP TABLE IF EXISTS t",
    "DROP SECRET IF EXISTS sec",
    "ALTER VIEW positions RENAME TO p2",
    "COMMENT ON VIEW positions IS 'x'",
    "ATTACH '{db}' AS other",
    "ATTACH ':memory:' AS other",
    "DETACH memory",
    "USE memory",
    "EXPORT DATABASE '{outdir}'",
    "IMPORT DATABASE '{atlas}'",
    "INSTALL httpfs",
    "FORCE INSTALL httpfs",
    "LOAD httpfs",
    "UPDATE EXTENSIONS",
    "PRAGMA database_list",
    "PRAGMA enable_profiling",
    "SET threads = 1",
    "SET enable_external_access = true",
    "SET VARIABLE v = 1",
    "RESET threads",
    "RESET VARIABLE v",
    "CALL pragma_version()",
    "CALL enable_logging(storage := 'file', storage_path := '{outdir}')",
    "CHECKPOINT",
    "FORCE CHECKPOINT",
    "VACUUM",
    "ANALYZE",
    "PREPARE p AS SELECT 1",
    "EXECUTE p",
    "DEALLOCATE p",
    "BEGIN TRANSACTION",
    "COMMIT",
    "ROLLBACK",
    "PIVOT positions ON ref USING count(*)",  # MULTI: creates an enum type first
    # SELECTs to DuckDB that write (a WITH entry may be DML or COPY), run SQL text, change
    # the session or read files
    "WITH x AS (COPY (SELECT * FROM positions) TO '{part}' (USE_TMP_FILE false, "
    "RETURN_FILES)) SELECT * FROM x",
    "WITH x AS (COPY (SELECT 1 AS x) TO '{out}' (RETURN_FILES)) SELECT 1",
    "WITH x AS MATERIALIZED (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM x",
    "WITH x AS (UPDATE positions SET pos = 0 RETURNING *) SELECT count(*) FROM x",
    "WITH x AS (DELETE FROM positions RETURNING *) SELECT 1 UNION ALL SELECT 2",
    "SELECT * FROM query('COPY (SELECT 1) TO ''{out}''')",
    "SELECT * FROM query('SELECT 1')",
    "SELECT * FROM query_table('positions')",
    "SELECT * FROM json_execute_serialized_sql(json_serialize_sql('SELECT 1'))",
    "SELECT * FROM checkpoint()",
    "SELECT * FROM force_checkpoint()",
    "SELECT * FROM enable_logging(storage := 'file', storage_path := '{outdir}')",
    "SELECT * FROM truncate_duckdb_logs()",
    "SELECT * FROM duckdb_secrets()",
    "SELECT * FROM duckdb_extensions()",
    "SELECT * FROM arrow_scan(0, 0, 0)",
    "SELECT * FROM read_text('{part}')",
    "SELECT * FROM read_blob('{manifest}')",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_json('{manifest}')",
    "SELECT * FROM glob('{atlas}/*')",
    "SELECT * FROM sniff_csv('/etc/passwd')",
    "SELECT * FROM read_parquet('{outside}')",
    "SELECT * FROM '{manifest}'",
    "SELECT * FROM '{outside}'",
    "SELECT nextval('s')",
    "SELECT write_log('x')",
]
WRAPPERS = [
    "{}", "EXPLAIN {}", "EXPLAIN ANALYZE {}", "explain analyse {}",
    "/* c */ EXPLAIN /* c */ ANALYZE -- c\n {}", "EXPLAIN (ANALYZE) {}",
    "EXPLAIN (ANALYZE, FORMAT json) {}", "EXPLAIN ANALYZE (FORMAT json) {}",
    "EXPLAIN ANALYZE ({})", " ;; \n\t{};", "-- comment\n{}", "SELECT 1; {}", "{}; SELECT 1",
    "EXPLAIN ANALYZE SELECT 1; EXPLAIN ANALYZE {}",
]


def _mixed_case(sql: str) -> str:
    head, _, rest = sql.partition(" ")
    return "".join(c.upper() if i % 2 else c.lower() for i, c in enumerate(head)) + " " + rest


def _attempts(paths: dict) -> list[str]:
    attempts = []
    for base in WRITES:
        base = base.format(**paths)
        attempts += [wrapper.replace("{}", base) for wrapper in WRAPPERS]
        attempts += [_mixed_case(base), "EXPLAIN ANALYZE " + _mixed_case(base)]
    return attempts


def _session(engine) -> dict:
    """What a statement could change in the connection, as queries report it."""
    queries = {
        "tables": "SELECT database_name, schema_name, table_name FROM duckdb_tables() "
                  "ORDER BY ALL",
        "views": "SELECT database_name, schema_name, view_name, sql FROM duckdb_views() "
                 "ORDER BY ALL",
        "databases": "SELECT database_name FROM duckdb_databases() ORDER BY ALL",
        "schemas": "SELECT database_name, schema_name FROM duckdb_schemas() ORDER BY ALL",
        "types": "SELECT count(*) FROM duckdb_types()",
        "sequences": "SELECT count(*) FROM duckdb_sequences()",
        "variables": "SELECT count(*) FROM duckdb_variables()",
        "settings": "SELECT name, value FROM duckdb_settings() WHERE name IN ('threads', "
                    "'enable_external_access', 'lock_configuration', 'allowed_paths', "
                    "'memory_limit', 'enable_logging') ORDER BY name",
        "rows": "SELECT (SELECT count(*) FROM positions), (SELECT count(*) FROM sequences)",
    }
    return {name: engine.run(sql).to_pylist() for name, sql in queries.items()}


def test_every_kind_of_write_is_refused_and_nothing_changes(tmp_path):
    atlas = _atlas(tmp_path / "atlas")
    (tmp_path / "outside.parquet").write_bytes(
        next((atlas / "positions").iterdir()).read_bytes())
    paths = {"atlas": atlas, "part": sorted((atlas / "positions").iterdir())[0],
             "seqpart": sorted((atlas / "sequences").iterdir())[0],
             "manifest": atlas / "atlas.json", "out": tmp_path / "out.csv",
             "outdir": tmp_path / "export", "db": tmp_path / "x.duckdb",
             "outside": tmp_path / "outside.parquet"}
    attempts = _attempts(paths)
    assert len(attempts) > 1000
    before = _hashes(tmp_path)
    let_through = []
    with Engine(atlas) as engine:
        session = _session(engine)
        for sql in attempts:
            try:
                engine.run(sql)
            except QueryError:
                continue
            let_through.append(sql)
        assert _session(engine) == session
    assert let_through == []
    assert _hashes(tmp_path) == before


def test_without_the_check_duckdb_would_run_them(tmp_path):
    """Why the allow-list is on DuckDB's parse of the whole statement: EXPLAIN ANALYZE runs the
    statement it explains, a WITH entry may COPY or INSERT, and allowed_paths lets DuckDB
    write the committed parts it may read."""
    atlas = _atlas(tmp_path / "atlas")
    part = sorted((atlas / "positions").iterdir())[0]
    original = part.read_bytes()
    with Engine(atlas) as engine:
        raw = engine.con
        raw.sql(f"EXPLAIN ANALYZE COPY (SELECT 1 AS x) TO '{part}' "
                "(FORMAT parquet, USE_TMP_FILE false)").fetchall()
        assert pq.read_table(part).column_names == ["x"]
        part.write_bytes(original)
        raw.sql(f"WITH w AS (COPY (SELECT 2 AS y) TO '{part}' (FORMAT parquet, "
                "USE_TMP_FILE false, RETURN_FILES)) SELECT * FROM w").fetchall()
        assert pq.read_table(part).column_names == ["y"]
        part.write_bytes(original)
        raw.sql("EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1 AS x").fetchall()
        raw.sql("WITH i AS (INSERT INTO t VALUES (2) RETURNING *) SELECT * FROM i").fetchall()
        assert raw.sql("SELECT count(*) FROM t").fetchall() == [(2,)]
        raw.sql("EXPLAIN ANALYZE DROP VIEW repeats_global").fetchall()
        assert "repeats_global" not in {r[0] for r in raw.sql(
            "SELECT view_name FROM duckdb_views()").fetchall()}


ALLOWED = [
    "EXPLAIN SELECT count(*) FROM positions",
    "EXPLAIN ANALYZE SELECT seq_id, count(*) AS n FROM positions GROUP BY seq_id",
    "explain analyse select * from anomalies",
    "EXPLAIN ANALYZE SELECT * FROM anomaly_regions",
    "/* why */ EXPLAIN -- the plan\n ANALYZE (SELECT 1)",
    "EXPLAIN (FORMAT json) SELECT * FROM repeats_global",
    "EXPLAIN ANALYZE (FORMAT json) WITH a AS (SELECT pos FROM positions) SELECT max(pos) FROM a",
    "EXPLAIN (ANALYZE, FORMAT json) FROM positions",
    "EXPLAIN SUMMARIZE positions",
    " ;; EXPLAIN ANALYZE SELECT 1;",
    "EXPLAIN ANALYZE SELECT 1 UNION ALL SELECT 2",
    "SELECT 1 UNION ALL SELECT 2",
    "VALUES (1), (2)",
    "FROM positions SELECT pos LIMIT 1",
    "SUMMARIZE positions",
    "DESCRIBE positions",
    "SHOW TABLES",
    "PIVOT positions ON ref IN ('A', 'C') USING count(*)",
    "UNPIVOT (SELECT 1 AS a, 2 AS b) ON a, b INTO NAME n VALUE v",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) "
    "SELECT * FROM r",
    "WITH a AS MATERIALIZED (SELECT * FROM positions) SELECT count(*) FROM a",
    "SELECT * FROM range(3)",
    "SELECT * FROM duckdb_settings() WHERE name = 'threads'",
    "SELECT count(*) AS n FROM parquet_metadata('{part}')",
    "SELECT count(*) AS n FROM read_parquet('{part}')",
    "SELECT current_setting('allowed_paths') AS paths",
    "SELECT setseed(0.5) AS s",
    "SELECT [x * 2 FOR x IN [1, 2]] AS l, list_transform([1], lambda y: y + 1) AS m",
    "-- a comment\nSELECT 'EXPLAIN ANALYZE COPY' AS text;",
]


def test_selects_and_explains_of_selects_run(atlas):
    part = sorted((atlas / "positions").iterdir())[0]
    with Engine(atlas) as engine:
        for sql in ALLOWED:
            assert engine.run(sql.format(part=part)).num_rows >= 1, sql
        plan = engine.run("EXPLAIN ANALYZE SELECT count(*) FROM positions").to_pylist()[0]
        assert list(plan.values())[0] == "analyzed_plan"
    assert main(["query", "sql", "EXPLAIN ANALYZE SELECT count(*) FROM positions",
                 "--atlas", str(atlas), "-f", "json"]) == 0


def test_refusals_say_what_to_do(atlas):
    with Engine(atlas) as engine:
        with pytest.raises(QueryError, match="EXPLAIN is allowed only of a SELECT"):
            engine.run("EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1")
        with pytest.raises(QueryError, match="may not run INSERT"):
            engine.run("WITH x AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM x")
        with pytest.raises(QueryError, match="read_text.*not allowed in the sandbox"):
            engine.run("SELECT * FROM read_text('/etc/hostname')")
        with pytest.raises(QueryError, match=r"IN \(\.\.\.\)"):
            engine.run("PIVOT positions ON ref USING count(*)")
        with pytest.raises(QueryError, match="not allowed: queries are read-only"):
            engine.run("UPDATE EXTENSIONS")


# -- cancelling ----------------------------------------------------------------------------

def test_an_interruptible_query_is_cancelled_at_the_timeout(atlas):
    with Engine(atlas, SqlConfig(timeout=0.5)) as engine:
        start = time.monotonic()
        with pytest.raises(QueryError, match="timeout") as caught:
            engine.run(LONG)
        assert time.monotonic() - start < 0.5 + 3
        assert "abandoned" not in str(caught.value)
        assert engine.run("SELECT 41 + 1 AS x").to_pylist() == [{"x": 42}]


def test_a_query_that_ignores_the_interrupt_is_abandoned_at_the_timeout(atlas, tmp_path,
                                                                        monkeypatch):
    monkeypatch.setattr(sandbox_module, "CANCEL_GRACE", 0.3)
    timeout, out = 0.5, tmp_path / "never.csv"
    engines = [Engine(atlas, SqlConfig(timeout=timeout)) for _ in range(2)]
    spills = [engine._spill for engine in engines]
    calls = [lambda e: e.run(STUBBORN), lambda e: e.run_to_file(STUBBORN, out, "csv")]
    for engine, call in zip(engines, calls):
        start = time.monotonic()
        with pytest.raises(QueryError, match="timeout.*abandoned"):
            call(engine)
        assert time.monotonic() - start < timeout + 3
        with pytest.raises(QueryError, match="open a new one"):
            engine.run("SELECT 1")
        with pytest.raises(QueryError, match="open a new one"):
            engine.fetch_internal("SELECT 1")
        engine.close()
        engine.close()  # safe, twice, while the abandoned query still runs
    for engine in engines:  # when DuckDB returns, the worker releases the connection
        engine._orphan.join(120)
        assert engine.con is None
    assert not any(Path(spill).exists() for spill in spills)
    assert list(tmp_path.iterdir()) == []  # the cancelled output was never committed
    assert not sandbox_module._ABANDONED
    with Engine(atlas) as engine:
        assert engine.run("SELECT 42 AS x").to_pylist() == [{"x": 42}]


@pytest.mark.parametrize("method, sql", [
    ("run", LONG),
    ("fetch_internal", f"CREATE OR REPLACE TEMP TABLE slow AS {LONG}"),
])
def test_ctrl_c_while_waiting_cancels_duckdb_and_propagates(atlas, method, sql,
                                                           sigint_delivered):
    with Engine(atlas) as engine:
        timer = threading.Timer(0.5, _thread.interrupt_main)
        start = time.monotonic()
        timer.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                getattr(engine, method)(sql)
        finally:
            timer.cancel()
        assert time.monotonic() - start < 3
        # DuckDB stopped within the grace: the engine still answers
        assert engine.run("SELECT 42 AS x").to_pylist() == [{"x": 42}]


def test_close_from_another_thread_while_a_query_runs(atlas):
    """DuckDB refuses to close a connection busy on another thread (ResourceInUse, which
    was the traceback on Ctrl-C): close() interrupts the query instead and leaves the release
    to the worker."""
    engine = Engine(atlas)
    spill, errors = engine._spill, []

    def query():
        try:
            engine.run(LONG)
        except QueryError as exc:
            errors.append(exc)

    runner = threading.Thread(target=query)
    runner.start()
    time.sleep(0.5)
    engine.close()  # no ResourceInUseException
    runner.join(10)
    assert not runner.is_alive()
    assert len(errors) == 1 and "interrupted" in str(errors[0])
    assert engine.con is None and not Path(spill).exists()
    engine.close()
    with pytest.raises(QueryError, match="closed"):
        engine.run("SELECT 1")


def _cli(args: list[str], tmp_path: Path, *, interrupt: bool, wrapper: bool = False,
         settle: float = 1.0) -> tuple[int, str, float]:
    """Run the CLI in a subprocess; once its engine is up (its spill directory appears) and
    ``settle`` seconds more, send SIGINT if ``interrupt``. Returns the exit status, stderr
    and the seconds from then to its exit."""
    spill_root = tmp_path / "tmp"
    spill_root.mkdir()
    if wrapper:  # the CLI entry point as it should end: exit_if_abandoned before exiting
        command = [sys.executable, "-c",
                   "import sys; from seqatlas.cli.main import main; "
                   "from seqatlas.query.sandbox import exit_if_abandoned; "
                   "code = main(sys.argv[1:]); exit_if_abandoned(code); sys.exit(code)", *args]
    else:
        command = [sys.executable, "-m", "seqatlas.cli.main", *args]
    proc = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "TMPDIR": str(spill_root)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=sigint_default)
    try:
        deadline = time.monotonic() + 120
        while not any(spill_root.glob("seqatlas-duckdb-*")):
            if proc.poll() is not None:
                pytest.fail(f"exited early: {proc.communicate()}")
            assert time.monotonic() < deadline, "the engine never started"
            time.sleep(0.02)
        time.sleep(settle)
        since = time.monotonic()
        if interrupt:
            proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        elapsed = time.monotonic() - since
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert not any(spill_root.glob("seqatlas-duckdb-*"))  # the spill directory is removed
    return proc.returncode, err, elapsed


def test_ctrl_c_in_query_sql_exits_130_promptly(atlas, tmp_path):
    code, err, elapsed = _cli(["query", "sql", LONG, "--atlas", str(atlas)], tmp_path,
                              interrupt=True)
    assert code == 130 and "Interrupted" in err and "Traceback" not in err, err
    assert elapsed < 5


@pytest.fixture(scope="module")
def knn_atlas(tmp_path_factory):
    from seqatlas.index import build_index
    from tests.embedding_data import make_token_atlas, random_dna

    def embed(layer, texts, ids):
        return np.stack([np.random.default_rng(int(i)).normal(size=8) for i in ids])

    path = make_token_atlas(tmp_path_factory.mktemp("knn") / "atlas",
                            {"a": random_dna(60, 1), "b": random_dna(40, 2)}, embed, dim=8,
                            k=3)
    build_index(seqatlas.Atlas(path), name="default", type="flat", metric="ip")
    return path


def test_ctrl_c_in_query_knn_where_exits_130_promptly(knn_atlas, tmp_path):
    where = f"({LONG}) >= 0"
    code, err, elapsed = _cli(["query", "knn", "--atlas", str(knn_atlas), "--at", "a:5",
                               "--where", where], tmp_path, interrupt=True, settle=1.5)
    assert code == 130 and "Interrupted" in err and "Traceback" not in err, err
    assert elapsed < 5


def test_a_cli_that_ends_with_exit_if_abandoned_keeps_the_timeout(atlas, tmp_path):
    code, err, elapsed = _cli(["query", "sql", STUBBORN, "--atlas", str(atlas),
                               "--timeout", "0.5"], tmp_path, interrupt=False, wrapper=True,
                              settle=0)
    assert code == 1 and "Error:" in err and "abandoned" in err and "Traceback" not in err, err
    assert elapsed < 0.5 + sandbox_module.CANCEL_GRACE + 3


def test_ctrl_c_on_a_query_that_ignores_it_exits_130_promptly(atlas, tmp_path):
    code, err, elapsed = _cli(["query", "sql", STUBBORN, "--atlas", str(atlas)], tmp_path,
                              interrupt=True, wrapper=True, settle=0.5)
    assert code == 130 and "Interrupted" in err and "Traceback" not in err, err
    assert elapsed < sandbox_module.CANCEL_GRACE + 3


# -- limits --------------------------------------------------------------------------------

def _setting(engine, name: str) -> str:
    return engine.run(f"SELECT current_setting('{name}') AS v").to_pylist()[0]["v"]


def test_threads_are_capped_at_the_machines_cpus(atlas, capsys):
    cpus = machine_threads()
    assert SqlConfig(threads=100000).duckdb_threads() == cpus
    assert SqlConfig().duckdb_threads() == cpus
    with Engine(atlas, SqlConfig(threads=100000)) as engine:
        assert 1 <= int(_setting(engine, "threads")) <= cpus
    with Engine(atlas, SqlConfig(threads=1)) as engine:
        assert int(_setting(engine, "threads")) == 1
    assert main(["query", "sql", "SELECT current_setting('threads') AS t", "--atlas",
                 str(atlas), "--threads", "100000", "-f", "json"]) == 0
    assert int(json.loads(capsys.readouterr().out)[0]["t"]) <= cpus


@pytest.mark.parametrize("options, message", [
    ({"timeout": math.nan}, "--timeout"), ({"timeout": math.inf}, "--timeout"),
    ({"timeout": -math.inf}, "--timeout"), ({"timeout": -1}, "--timeout"),
    ({"timeout": 0}, "--timeout"), ({"timeout": True}, "--timeout"),
    ({"timeout": "2"}, "--timeout"),
    ({"threads": 0}, "--threads"), ({"threads": -1}, "--threads"),
    ({"threads": True}, "--threads"), ({"threads": 1.5}, "--threads"),
    *[({"memory_limit": text}, "--memory-limit.*e.g. 8GB") for text in
      ["foo", "", "  ", "10XB", "0", "100000", "0GB", "-1GB", "1KB", "150%", "0%", "-5%",
       "none", "unlimited", "8GBB", "GB", "1PB", "1_000MB", "1000000000000000GB"]],
])
def test_bad_limits_are_config_errors(atlas, options, message):
    with pytest.raises(ConfigError, match=message):
        SqlConfig(**options).validate()
    with pytest.raises(ConfigError, match=message):
        Engine(atlas, SqlConfig(**options))


@pytest.mark.parametrize("text, shown", [("8GB", "GiB"), ("512MiB", "512.0 MiB"),
                                         ("75%", "B"), ("1.5GB", "GiB"), (" 4 gib ", "4.0 GiB"),
                                         ("100mb", "MiB"), ("64M", "MiB")])
def test_sizes_duckdb_reads_are_accepted(atlas, text, shown):
    with Engine(atlas, SqlConfig(memory_limit=text)) as engine:
        assert shown in _setting(engine, "memory_limit")


@pytest.mark.parametrize("args, message", [
    (["--memory-limit", "foo"], "--memory-limit"), (["--memory-limit", ""], "--memory-limit"),
    (["--memory-limit", "10XB"], "--memory-limit"), (["--timeout=-1"], "--timeout"),
    (["--timeout", "0"], "--timeout"), (["--threads", "0"], "--threads"),
    (["--timeout", "nan"], "nan"), (["--timeout", "inf"], "inf"),
])
def test_bad_limits_on_the_command_line_are_clean_errors(atlas, capsys, args, message):
    code = main(["query", "sql", "SELECT 1", "--atlas", str(atlas), *args])
    err = capsys.readouterr().err
    assert code in (1, 2) and message in err and "Traceback" not in err, err


# -- CSV and TSV of nested values ----------------------------------------------------------

NESTED = """SELECT pos, [pos / 10, 0.5, 'nan'::FLOAT, NULL]::FLOAT[] AS floats,
        [ref, seq_id, NULL, 'tab' || chr(9) || 'x', 'q"uote,'] AS texts,
        {'pos': pos, 'ref': ref, 'inner': {'l': [pos, NULL]}} AS record,
        map([ref, 'k'], [pos, NULL]) AS mapping, [pos, pos + 1]::INTEGER[2] AS pair,
        [[pos], [], NULL] AS nested, CASE WHEN pos = 1 THEN NULL ELSE [pos] END AS maybe,
        [1e20::DOUBLE, 1e-7, 1 / 3] AS doubles, current_setting('allowed_paths') AS paths
    FROM positions WHERE seq_id = 'chrA' AND pos < 4 ORDER BY pos"""


def _reference(value, kind: pa.DataType):
    """What the JSON of ``value`` (of Arrow type ``kind``) should read back as."""
    if value is None:
        return None
    if pa.types.is_map(kind):
        return {str(k): _reference(v, kind.item_type) for k, v in value}
    if pa.types.is_struct(kind):
        return {f.name: _reference(value[f.name], f.type) for f in kind}
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) \
            or pa.types.is_fixed_size_list(kind):
        return [_reference(v, kind.value_type) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


def _same(got, want, kind: pa.DataType) -> bool:
    """Equal, float32 values compared as float32 (their JSON is the shortest text that
    reads back as the same float32)."""
    if want is None or got is None:
        return got is None and want is None
    if pa.types.is_map(kind):
        return got.keys() == want.keys() and all(_same(got[k], want[k], kind.item_type)
                                                 for k in want)
    if pa.types.is_struct(kind):
        return got.keys() == want.keys() and all(_same(got[f.name], want[f.name], f.type)
                                                 for f in kind)
    if isinstance(want, list):
        return len(got) == len(want) and all(_same(g, w, kind.value_type)
                                             for g, w in zip(got, want))
    if pa.types.is_float32(kind) or pa.types.is_float16(kind):
        return np.float32(got) == np.float32(want)
    return got == want and type(got) is type(want)


def _check_texts(expected: pa.Table, rows: list[dict]) -> None:
    assert len(rows) == expected.num_rows
    for field in expected.schema:
        values = expected.column(field.name).to_pylist()
        for value, row in zip(values, rows):
            text = row[field.name]
            if not pa.types.is_nested(field.type):
                assert text == (None if value is None else str(value)), field.name
                continue
            assert (text is None) == (value is None), (field.name, text)
            if text is not None:
                assert _same(json.loads(text), _reference(value, field.type), field.type), \
                    (field.name, text, value)


def _read_csv(path: Path, names: list[str]) -> list[dict]:
    options = pacsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                   strings_can_be_null=True)
    return pacsv.read_csv(path, convert_options=options).to_pylist()


def _read_tsv(text: str) -> list[dict]:
    header, *lines = text.splitlines()
    names = header.split("\t")
    return [{n: (v or None) for n, v in zip(names, line.split("\t"))} for line in lines]


def test_nested_columns_are_written_as_json_in_csv_and_tsv(atlas, tmp_path, capsys):
    with Engine(atlas) as engine:
        expected = engine.run(NESTED)
        for fmt in ("csv", "tsv"):
            assert engine.run_to_file(NESTED, tmp_path / f"r.{fmt}", fmt) == 4
    assert pa.types.is_list(expected.schema.field("floats").type)
    assert pa.types.is_fixed_size_list(expected.schema.field("pair").type)
    assert pa.types.is_struct(expected.schema.field("record").type)
    assert pa.types.is_map(expected.schema.field("mapping").type)
    _check_texts(expected, _read_csv(tmp_path / "r.csv", expected.column_names))
    _check_texts(expected, _read_tsv((tmp_path / "r.tsv").read_text()))
    first = _read_tsv((tmp_path / "r.tsv").read_text())[0]
    assert first["floats"] == "[0, 0.5, null, null]"
    assert json.loads(first["texts"])[3] == "tab\tx"  # JSON escapes the tab TSV cannot carry
    assert json.loads(first["mapping"]) == {"A": 0, "k": None}
    # the CLI: --output and TSV to stdout go through the same writers
    assert main(["query", "sql", NESTED, "--atlas", str(atlas), "-f", "csv",
                 "-o", str(tmp_path / "cli.csv")]) == 0
    _check_texts(expected, _read_csv(tmp_path / "cli.csv", expected.column_names))
    capsys.readouterr()
    assert main(["query", "sql", NESTED, "--atlas", str(atlas), "-f", "tsv"]) == 0
    _check_texts(expected, _read_tsv(capsys.readouterr().out))


def test_other_columns_csv_cannot_carry_become_text(atlas, tmp_path):
    sql = ("SELECT INTERVAL 1 DAY + INTERVAL 90 MINUTE AS i, INTERVAL 2 MONTH AS months, "
           "'x\\xAA'::BLOB AS b, 'ok'::BLOB AS c, union_value(k := 1) AS u, 1 AS n")
    with Engine(atlas) as engine:
        engine.run_to_file(sql, tmp_path / "r.csv", "csv")
        engine.run_to_file(sql, tmp_path / "r.tsv", "tsv")
    row = _read_csv(tmp_path / "r.csv", ["i", "months", "b", "c", "u", "n"])[0]
    assert row == {"i": "1 day 01:30:00", "months": "2 months", "b": "x\\xaa", "c": "ok",
                   "u": "1", "n": "1"}
    assert _read_tsv((tmp_path / "r.tsv").read_text()) == [row]


def test_csv_ready_keeps_slices_chunks_and_plain_columns():
    record = pa.struct([("a", pa.list_(pa.int64())), ("b", pa.string())])
    table = pa.table({
        "n": pa.array([1, 2, 3, 4]),
        "fixed": pa.FixedSizeListArray.from_arrays(pa.array(range(8), pa.float32()), 2),
        "record": pa.array([{"a": [1], "b": "x"}, None, {"a": None, "b": None},
                            {"a": [], "b": "é"}], record),
        "mapping": pa.array([[("a", 1)], [], None, [("b", 2), ("c", None)]],
                            pa.map_(pa.string(), pa.int32())),
        "dict": pa.array(["u", "v", None, "u"]).dictionary_encode(),
    })
    chunked = pa.concat_tables([table, table]).slice(3, 4)
    ready = csv_ready(chunked)
    assert ready.schema.field("n") == chunked.schema.field("n")
    assert ready["n"].equals(chunked["n"]) and ready["dict"].equals(chunked["dict"])
    assert all(ready.schema.field(n).type == pa.string() for n in ("fixed", "record", "mapping"))
    nested = ["fixed", "record", "mapping"]
    _check_texts(chunked.select(nested), ready.to_pylist())
    plain = table.select(["n", "dict"])
    assert csv_ready(plain) is plain
    batch = table.to_batches()[0].slice(1)
    converted = csv_ready(batch)
    assert isinstance(converted, pa.RecordBatch)
    _check_texts(pa.Table.from_batches([batch]).select(nested), converted.to_pylist())


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.one_of(st.none(), st.lists(st.one_of(
           st.none(), st.floats(width=32)), max_size=4)), min_size=1, max_size=8),
       words=st.lists(st.one_of(st.none(), st.lists(st.lists(st.text(max_size=4), max_size=2),
                                                    max_size=3)), min_size=8, max_size=8),
       cut=st.integers(0, 8))
def test_csv_ready_json_reads_back_as_the_values(rows, words, cut):
    n = len(rows)
    table = pa.table({"floats": pa.array(rows, pa.list_(pa.float32())),
                      "words": pa.array(words[:n], pa.list_(pa.list_(pa.string())))})
    data = pa.concat_tables([table, table]).slice(min(cut, n))  # sliced, and two chunks
    _check_texts(data, csv_ready(data).to_pylist())


def test_the_ctrl_c_tests_pass_when_the_suite_is_started_with_sigint_ignored():
    """``nohup python -m pytest &`` starts pytest with SIGINT ignored: the tests that simulate
    Ctrl-C install Python's handler for their duration, so they pass instead of hanging."""
    def ignore_sigint():
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout", "120",
         "tests/test_sandbox.py::test_ctrl_c_while_waiting_cancels_duckdb_and_propagates",
         "tests/test_sandbox.py::test_ctrl_c_in_query_sql_exits_130_promptly"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, preexec_fn=ignore_sigint)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "3 passed" in done.stdout
