"""The DuckDB sandbox: views over an atlas's committed Parquet parts, and user SQL.

The sandbox, in DuckDB's own terms: external access is off and only the committed part files
(resolved, each inside the atlas) are on ``allowed_paths``; extension install, load and
autoload are off, and so are Python replacement scans; the configuration is locked; spills go
to a private temporary directory removed on close. Results are written by seqatlas (never by
DuckDB) to an explicit output file, atomically.

What runs is allow-listed on DuckDB's own parse of the whole statement (:meth:`Sandbox.check`):
one ``SELECT`` (WITH, UNION, VALUES, FROM-first, PIVOT ... IN, SUMMARIZE, DESCRIBE and SHOW are
SELECTs to DuckDB) whose every query node is a select (DuckDB lets a WITH entry be an INSERT,
UPDATE, DELETE or COPY ... TO, which runs) and whose table functions are on
:data:`TABLE_FUNCTIONS`; or ``EXPLAIN [ANALYZE]`` of such a SELECT (EXPLAIN ANALYZE executes the
statement it explains: a COPY, CREATE or DROP under it would run). Allowed paths are writable
to DuckDB, so this list, not the file sandbox, is what keeps committed parts intact.

Queries run on a worker thread (:meth:`Sandbox._with_timeout`) so that a timeout or Ctrl-C
cancels them: DuckDB is interrupted, and a query that does not stop within
:data:`CANCEL_GRACE` seconds (DuckDB checks for cancellation only between chunks of work, so
one long function call can ignore it) is abandoned: its result is discarded, the sandbox is
unusable from then on, and the worker closes the connection when DuckDB returns.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from seqatlas import schema
from seqatlas.store import AtlasReader
from seqatlas.errors import AtlasError, ConfigError, QueryError
from seqatlas.util import check_output, machine_memory_bytes, machine_threads, region_span
from seqatlas.query.output import write_result

TABLE_SCHEMAS = {"sequences": schema.SEQUENCES, "positions": schema.POSITIONS,
                 "repeats": schema.REPEATS, "ablations": schema.ABLATIONS,
                 "variants": schema.VARIANTS}
# the tables a region restricts, and how: "pos" rows at a position, "interval" rows spanning
# start..end (see :func:`region_predicate`); sequences are always read whole
REGION_KEYS = {"positions": "pos", "tokens": "interval", "repeats": "interval",
               "pooled": "interval",
               "ablations": "pos", "variants": "pos"}
ALLOWED_STATEMENTS = ("SELECT", "EXPLAIN")
# query nodes a statement may hold anywhere in its parse tree (not INSERT/UPDATE/DELETE/COPY)
SELECT_NODES = frozenset({"SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE", "CTE_NODE"})
# table functions a query may call: generators, unnesting, catalog introspection, parquet
# metadata (of the committed parts: other paths are refused). Left out on purpose: file
# readers other than parquet, those running SQL text (query, query_table,
# json_execute_serialized_sql), and those changing the session (checkpoint, logging, ...).
TABLE_FUNCTIONS = frozenset({
    "range", "generate_series", "unnest", "repeat", "repeat_row", "summary", "json_each",
    "json_tree", "read_parquet", "parquet_scan", "parquet_metadata", "parquet_schema",
    "parquet_file_metadata", "parquet_kv_metadata", "parquet_bloom_probe", "duckdb_columns",
    "duckdb_constraints", "duckdb_databases", "duckdb_dependencies", "duckdb_functions",
    "duckdb_indexes", "duckdb_keywords", "duckdb_memory", "duckdb_optimizers",
    "duckdb_schemas", "duckdb_sequences", "duckdb_settings", "duckdb_tables",
    "duckdb_temporary_files", "duckdb_types", "duckdb_variables", "duckdb_views",
    "pragma_table_info", "pragma_version", "pragma_show", "pragma_platform",
    "pragma_database_size", "pragma_storage_info", "pragma_collations", "test_all_types",
    "test_vector_types", "histogram", "histogram_values", "pg_timezone_names",
    "icu_calendar_names"})
# scalar functions with side effects
REFUSED_FUNCTIONS = frozenset({"nextval", "setval", "write_log"})
CANCEL_GRACE = 1.0  # seconds DuckDB gets to stop after an interrupt before the query is abandoned
_POLL = 0.1  # the waiting thread wakes this often, so Ctrl-C and the timeout act promptly
MIN_MEMORY = 16 << 20  # below this DuckDB cannot even open a connection
_SIZE_UNITS = {"b": 1, "byte": 1, "bytes": 1, "k": 10**3, "kb": 10**3, "m": 10**6,
               "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(%|[a-z]+)\s*", re.IGNORECASE)
_MEMORY_EXAMPLE = "give a number and a unit, e.g. 8GB, 512MiB, or 75% of this machine's memory"


def memory_limit_bytes(text: str) -> int:
    """The bytes a DuckDB memory limit such as ``8GB``, ``512MiB`` or ``75%`` (of this
    machine's memory) stands for; a ConfigError naming ``--memory-limit`` otherwise.

    Units: B, KB/MB/GB/TB (powers of 1000; K/M/G/T alike) and KiB/MiB/GiB/TiB (powers of
    1024), case-insensitive, as DuckDB reads them; at least 16 MiB, a percentage at most 100.
    """
    match = _SIZE.fullmatch(text) if isinstance(text, str) else None
    unit = match.group(2).lower() if match else None
    if unit is None or (unit != "%" and unit not in _SIZE_UNITS):
        raise ConfigError(f"--memory-limit {text!r} is not a size: {_MEMORY_EXAMPLE}")
    number = float(match.group(1))
    if unit == "%":
        if not 0 < number <= 100:
            raise ConfigError(f"--memory-limit {text!r}: a percentage of the machine's memory "
                              f"must be above 0 and at most 100; {_MEMORY_EXAMPLE}")
        size = int(machine_memory_bytes() * number / 100)
    else:
        size = int(number * _SIZE_UNITS[unit])
    if size < MIN_MEMORY:
        raise ConfigError(f"--memory-limit {text!r} is below the {MIN_MEMORY >> 20} MiB DuckDB "
                          f"needs; {_MEMORY_EXAMPLE}")
    if size >= 2**62:
        raise ConfigError(f"--memory-limit {text!r} is too large; {_MEMORY_EXAMPLE}")
    return size


@dataclass
class SqlConfig:
    """Resources and limits of one engine; None follows the machine.

    ``threads`` above the CPUs this process may use (:func:`seqatlas.util.machine_threads`)
    is capped at them, silently: more DuckDB threads than CPUs only cost memory.
    """

    timeout: float | None = None  # seconds per query; None = no limit
    memory_limit: str | None = None  # DuckDB size string; None = 75% of the machine's memory
    threads: int | None = None  # None = the CPUs this process may use; capped at them

    def validate(self) -> None:
        timeout = self.timeout
        if timeout is not None and (isinstance(timeout, bool)
                                    or not isinstance(timeout, (int, float))
                                    or not math.isfinite(timeout) or timeout <= 0):
            raise ConfigError(f"--timeout must be a positive, finite number of seconds, "
                              f"not {timeout!r}")
        threads = self.threads
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                    or threads < 1):
            raise ConfigError(f"--threads must be a whole number, 1 or more, not {threads!r}")
        if self.memory_limit is not None:
            memory_limit_bytes(self.memory_limit)

    def duckdb_threads(self) -> int:
        """The DuckDB threads to use: ``threads`` capped at the machine's CPUs."""
        cpus = machine_threads()
        return min(self.threads, cpus) if self.threads else cpus


def _duckdb_type(arrow_type: pa.DataType) -> str:
    if pa.types.is_string(arrow_type):
        return "VARCHAR"
    if pa.types.is_boolean(arrow_type):
        return "BOOLEAN"
    if pa.types.is_integer(arrow_type):
        return {8: "TINYINT", 16: "SMALLINT", 32: "INTEGER", 64: "BIGINT"}[arrow_type.bit_width]
    if pa.types.is_floating(arrow_type):
        return {16: "FLOAT", 32: "FLOAT", 64: "DOUBLE"}[arrow_type.bit_width]
    if pa.types.is_fixed_size_list(arrow_type):
        return f"FLOAT[{arrow_type.list_size}]"
    raise TypeError(f"no DuckDB type for {arrow_type}")


def _empty_select(arrow_schema: pa.Schema) -> str:
    columns = ", ".join(f'CAST(NULL AS {_duckdb_type(f.type)}) AS "{f.name}"'
                        for f in arrow_schema)
    return f"SELECT {columns} WHERE false"


def arrow_table(result) -> pa.Table:
    """A DuckDB result as an Arrow table (DuckDB 2 renamed fetch_arrow_table)."""
    method = getattr(result, "to_arrow_table", None) or result.fetch_arrow_table
    return method()


def arrow_reader(result, batch_rows: int = 65536) -> pa.RecordBatchReader:
    """A DuckDB result as a stream of Arrow record batches."""
    method = getattr(result, "to_arrow_reader", None) or result.fetch_record_batch
    return method(batch_rows)


def _select_list(arrow_schema: pa.Schema, part: str) -> str:
    """The table's columns in schema order; those an older part lacks read as null."""
    import pyarrow.parquet as pq

    present = set(pq.read_schema(part).names)
    return ", ".join(f'"{f.name}"' if f.name in present else
                     f'CAST(NULL AS {_duckdb_type(f.type)}) AS "{f.name}"' for f in arrow_schema)


def sequence_lengths(atlas: AtlasReader) -> dict[str, int]:
    """Each sequence's length, in the atlas's order (read from the sequences table only)."""
    rows = atlas.sequences(columns=["seq_id", "length"])
    return dict(zip(rows["seq_id"].to_pylist(), rows["length"].to_pylist()))


def resolve_region(atlas: AtlasReader, region, lengths: dict[str, int] | None = None
                   ) -> tuple[str, int, int]:
    """``(seq_id, start, end)``, 0-based half-open, of ``region``: ``SEQ:START-END`` or
    ``SEQ`` (the whole sequence) as text, or such a tuple; checked against the atlas's
    sequences (``lengths`` when the caller has read them): an InputError names the region and
    the valid range when the sequence is unknown, the region empty or out of range."""
    if isinstance(region, (tuple, list)):
        if len(region) != 3:
            raise ConfigError(f"region {region!r}: give (seq_id, start, end) or "
                              "'SEQ:START-END'")
        seq_id, start, end = region
        region = f"{seq_id}:{start}-{end}"
    if lengths is None:
        lengths = sequence_lengths(atlas)
    return region_span(region, lengths, atlas=atlas.path)


def region_predicate(kind: str, region: tuple[str, int, int], alias: str = "") -> str:
    """SQL keeping the rows inside ``region`` of a relation of ``kind`` (a value of
    :data:`REGION_KEYS`; ``alias`` qualifies the columns): ``pos`` rows, ``seq_id = S AND
    pos >= START AND pos < END``; ``interval`` rows (``start``, ``end``) sharing a base with
    it, ``seq_id = S AND start < END AND "end" > START``."""
    seq_id, start, end = region
    a = f"{alias}." if alias else ""
    if kind == "pos":
        return (f"{a}seq_id = {sql_string(seq_id)} AND {a}pos >= {int(start)} "
                f"AND {a}pos < {int(end)}")
    if kind == "interval":
        return (f"{a}seq_id = {sql_string(seq_id)} AND {a}start < {int(end)} "
                f'AND {a}"end" > {int(start)}')
    raise ValueError(f"no region predicate for {kind!r}")


def sql_string(text: str) -> str:
    """``text`` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


# queries abandoned by any sandbox of this process and still running: thread -> spill directory
_ABANDONED: dict[threading.Thread, str | None] = {}
_ABANDONED_NOTE = (" DuckDB did not stop within {grace:g} s of the cancel (it checks for it only "
                   "between chunks of work, and one function call can run long), so the query "
                   "was abandoned and this engine closed.")


def exit_if_abandoned(code: int) -> None:
    """End the process now, with exit status ``code``, if a query it abandoned still runs.

    An abandoned query's thread is not a daemon (a daemon thread returning from DuckDB while
    the interpreter shuts down aborts the process), so a normal exit would wait for DuckDB's
    current chunk of work. A command-line entry point, about to exit anyway, calls this last:
    stdout and stderr are flushed, the abandoned queries' spill directories removed, and the
    process ends at once (``os._exit``). Does nothing when no abandoned query is running.
    """
    running = list(_ABANDONED.values())  # a worker removes itself when DuckDB returns
    if not running:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    for spill in running:
        if spill:
            shutil.rmtree(spill, ignore_errors=True)
    os._exit(code)


def _type_name(statement) -> str:
    """A parsed statement's type; ``UNNAMED`` for one the Python client has no name for (it
    raises ValueError for UPDATE EXTENSIONS, for one)."""
    try:
        return statement.type.name
    except ValueError:
        return "UNNAMED"


def _refusal(tree) -> str | None:
    """Why the parse tree (json_serialize_sql) of a SELECT may not run, or None."""
    stack = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
            continue
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if isinstance(kind, str):
            # every query node carries a cte_map; DuckDB's non-select ones end in _NODE
            if (kind.endswith("_NODE") or "cte_map" in item) and kind not in SELECT_NODES:
                what = kind.removesuffix("_NODE").removesuffix("_QUERY").replace("_", " ")
                return (f"a WITH clause or subquery may not run {what} (only SELECT); "
                        "queries are read-only")
            if kind == "TABLE_FUNCTION":
                function = item.get("function")
                name = str(function.get("function_name", "")).lower() \
                    if isinstance(function, dict) else ""
                if name not in TABLE_FUNCTIONS:
                    return (f"table function {name or '?'}() is not allowed in the sandbox (it "
                            "reads files, runs SQL text or changes the session); read the "
                            "views, or use one of: " + ", ".join(sorted(TABLE_FUNCTIONS)))
        name = item.get("function_name")
        if isinstance(name, str) and name.lower() in REFUSED_FUNCTIONS:
            return f"{name.lower()}() changes the session and is not allowed in the sandbox"
        stack.extend(item.values())
    return None


class Sandbox:
    """A DuckDB connection whose only readable files are one atlas's committed parts.

    Views: ``sequences``, ``positions``, ``tokens``, ``repeats``, ``ablations``,
    ``variants`` and ``repeats_global``. The anomaly views are added by
    :class:`seqatlas.query.engine.Engine`. User SQL goes through :meth:`run` or
    :meth:`run_to_file` (checked, cancellable); seqatlas's own SQL through
    :meth:`fetch_internal` (cancellable) or :meth:`execute_internal` (a lazy relation).

    ``region`` (``SEQ:START-END``, ``SEQ``, or ``(seq_id, start, end)``, 0-based half-open;
    see :func:`resolve_region`): every table of :data:`REGION_KEYS` is built only from the
    parts whose key statistics can hold rows of the region
    (:meth:`~seqatlas.store.AtlasReader.part_paths`) and its view keeps only the region's
    rows (:func:`region_predicate`), a filter DuckDB pushes into the Parquet scan, so that
    inside a compacted file only the row groups holding the region are read. ``sequences``
    stays whole. ``view_parts`` lists the parts each view reads.
    """

    def __init__(self, atlas: AtlasReader | str | os.PathLike, config: SqlConfig | None = None,
                 *, region=None):
        import duckdb

        self.con = None
        self._spill: str | None = None
        self._lock = threading.Lock()
        self._running: threading.Thread | None = None  # the worker running a query now
        self._orphan: threading.Thread | None = None  # a query that ignored its cancel
        self._closed = False
        self.atlas = atlas if isinstance(atlas, AtlasReader) else AtlasReader(atlas)
        self.config = config or SqlConfig()
        self.config.validate()
        self.region = None if region is None else resolve_region(self.atlas, region)
        self.view_parts: dict[str, list] = {}  # table: the committed parts its view reads
        self._whole: dict[str, str] = {}  # table: SQL over all its parts (region sandboxes)
        # a local atlas: DuckDB reads its part files, and only those (allowed_paths); a remote
        # one: pyarrow datasets of its parts, registered here, and no file access at all
        self.remote = self.atlas.filesystem is not None
        self.root = None if self.remote else Path(os.path.realpath(self.atlas.path))
        self._spill = tempfile.mkdtemp(prefix="seqatlas-duckdb-")
        memory = self.config.memory_limit.strip() if self.config.memory_limit else \
            f"{int(machine_memory_bytes() * 0.75) >> 20}MB"
        try:
            self.con = duckdb.connect(":memory:", config={
                "threads": self.config.duckdb_threads(),
                "memory_limit": memory,
                "temp_directory": self._spill,
                "autoinstall_known_extensions": False,
                "autoload_known_extensions": False,
                "allow_community_extensions": False,
                "allow_unsigned_extensions": False,
                "python_enable_replacements": False,  # no scans of the caller's variables
            })
        except duckdb.Error as exc:
            self.close()
            if self.config.memory_limit is None:
                raise
            raise ConfigError(f"--memory-limit {self.config.memory_limit!r}: DuckDB cannot run "
                              f"with it ({str(exc).splitlines()[0]}); {_MEMORY_EXAMPLE}") from None
        try:
            allowed = self._create_views()
            if allowed:
                self.con.execute(f"SET allowed_paths=[{', '.join(map(sql_string, allowed))}]")
            self.con.execute("SET enable_external_access=false")
            self.con.execute("SET lock_configuration=true")
        except duckdb.OutOfMemoryException as exc:
            self.close()
            raise ConfigError(f"--memory-limit {memory!r} is too small to open the atlas "
                              f"({str(exc).splitlines()[0]}); {_MEMORY_EXAMPLE}") from None
        except BaseException:
            self.close()
            raise

    def _safe_part(self, path: Path) -> str:
        resolved = Path(os.path.realpath(path))
        if not resolved.is_relative_to(self.root) or not resolved.is_file():
            raise AtlasError(f"{path} resolves to {resolved}, outside the atlas {self.root} "
                             "(or not a file); refusing to read it. Remove the link.")
        return str(resolved)

    def _register_dataset(self, name: str, parts: list, arrow_schema: pa.Schema) -> str:
        """A remote table: a pyarrow dataset of its committed parts (read through the atlas's
        filesystem, page checksums verified), registered as ``name``; returns the view's
        body. Columns an older part lacks read as null (the dataset's schema)."""
        # DuckDB scans no Arrow float16: fp16 embeddings read as FLOAT[], as from Parquet
        readable = pa.schema([pa.field(f.name, pa.list_(pa.float32()), f.nullable)
                              if pa.types.is_fixed_size_list(f.type) and
                              pa.types.is_float16(f.type.value_type) else f
                              for f in arrow_schema])
        self.con.register(name, self.atlas.dataset(parts, readable))
        columns = ", ".join(f'"{f.name}"' for f in arrow_schema)
        return f'SELECT {columns} FROM "{name}"'

    def _table_schemas(self) -> dict[str, pa.Schema]:
        return {**TABLE_SCHEMAS, "tokens": self.atlas.manifest.tokens_schema(),
                "pooled": self.atlas.manifest.pooled_schema(),
                "positions": self.atlas.manifest.positions_schema()}

    def _body(self, table: str, paths: list, arrow_schema: pa.Schema,
              dataset: str) -> tuple[str, list[str]]:
        """(SQL reading ``paths``, the local files DuckDB may read for it)."""
        if not paths:
            return _empty_select(arrow_schema), []
        if self.remote:
            return self._register_dataset(dataset, paths, arrow_schema), []
        parts = [self._safe_part(p) for p in paths]
        files = ", ".join(map(sql_string, parts))
        return (f"SELECT {_select_list(arrow_schema, parts[0])} FROM read_parquet([{files}])",
                parts)

    def _create_views(self) -> list[str]:
        allowed = []
        schemas = self._table_schemas()
        for table in schema.TABLES:
            restrict = self.region is not None and table in REGION_KEYS
            paths = self.atlas.part_paths(table, region=self.region if restrict else None)
            self.view_parts[table] = list(paths)
            body, files = self._body(table, paths, schemas[table], f"_{table}_parts")
            allowed += files
            if restrict:
                body = f"SELECT * FROM ({body}) WHERE " \
                       f"{region_predicate(REGION_KEYS[table], self.region)}"
            self.con.execute(f'CREATE VIEW "{table}" AS {body}')
        # Global coordinates (sequence offset + position) keep interval joins pure
        # inequalities, which DuckDB runs as a range join instead of a per-sequence hash join.
        self.con.execute("""CREATE VIEW repeats_global AS
            SELECT r.*, s.global_start + r.start AS gstart, s.global_start + r."end" AS gend
            FROM repeats r JOIN sequences s USING (seq_id)""")
        return allowed

    def _add_whole(self, table: str) -> list[str]:
        """In a region sandbox, prepare :meth:`whole_table` of ``table`` (all its parts; called
        while the views are created, before the readable paths are fixed); returns the files
        it reads."""
        body, files = self._body(table, self.atlas.part_paths(table),
                                 self._table_schemas()[table], f"_{table}_all_parts")
        self._whole[table] = body
        return files

    def whole_table(self, table: str) -> str:
        """SQL naming every row of ``table``: its view, or in a region sandbox the relation
        over all its parts that the sandbox prepared for seqatlas's own whole-atlas
        statistics (e.g. the robust z statistics, the ablation methods)."""
        if self.region is None or table not in REGION_KEYS:
            return f'"{table}"'
        if table not in self._whole:
            raise RuntimeError(f"this region sandbox did not prepare the whole {table} table")
        return f"({self._whole[table]})"

    @property
    def position_columns(self) -> list[str]:
        return [f.name for f in self.atlas.manifest.positions_schema()]

    def execute_internal(self, sql: str, params=None):
        """Run seqatlas's own (trusted) SQL as a relation; user SQL goes through :meth:`run`.

        It runs on the caller's thread, where neither Ctrl-C nor the timeout can stop it: use
        :meth:`fetch_internal` for anything that may take long."""
        self._require_usable()
        return self.con.sql(sql, params=params)

    def fetch_internal(self, sql: str, params=None) -> pa.Table | None:
        """Run seqatlas's own (trusted, unchecked) SQL like :meth:`run` runs user SQL (on a
        worker, cancelled by the timeout or Ctrl-C); its whole result as an Arrow table, or
        None for a statement without one (CREATE ...)."""
        def work(cancelled):
            relation = self.con.sql(sql, params=params)
            return None if relation is None else arrow_table(relation)

        return self._with_timeout(work)

    # -- what may run ----------------------------------------------------------------------

    def check(self, query: str) -> None:
        """Refuse anything but one SELECT, or EXPLAIN [ANALYZE] of one, as DuckDB parses it;
        a QueryError says why. See the module docstring."""
        self._require_usable()
        statements = self._statements(query)
        if len(statements) != 1:
            raise QueryError(f"give exactly one SQL statement, not {len(statements)}")
        statement = statements[0]
        kind = _type_name(statement)
        if kind == "SELECT":
            self._check_select(statement.query)
        elif kind == "EXPLAIN":
            for explained in self._explained(statement.query):
                self._check_select(explained)
        elif kind == "MULTI":
            raise QueryError("this statement runs several (a PIVOT without IN first creates a "
                             "type): list the values, PIVOT ... ON column IN (...)")
        else:
            what = "that statement is" if kind == "UNNAMED" else f"{kind} statements are"
            raise QueryError(f"{what} not allowed: queries are read-only "
                             "(SELECT, or EXPLAIN [ANALYZE] of a SELECT). Use --output to save "
                             "a result.")

    def _statements(self, text: str) -> list:
        import duckdb

        try:
            return self.con.extract_statements(text)
        except duckdb.Error as exc:
            raise QueryError(f"SQL does not parse: {exc}") from None

    def _kind(self, text: str) -> str | None:
        """The type of the one statement ``text`` parses as; None when it does not parse."""
        import duckdb

        try:
            statements = self.con.extract_statements(text)
        except duckdb.Error:
            return None
        return _type_name(statements[0]) if len(statements) == 1 else "SEVERAL"

    def _explained(self, text: str) -> list[str]:
        """The SELECT that ``text``, an EXPLAIN statement, explains (as candidate texts, each
        checked by the caller); a QueryError unless it is one SELECT.

        DuckDB's Python API does not expose the explained statement, so the candidates are
        the texts after each place the prefix EXPLAIN [ANALYZE] [(options)] can end, found
        with DuckDB's tokenizer (comments skipped). Every candidate DuckDB parses must be one
        SELECT, and at least one must, whichever reading DuckDB took.
        """
        import duckdb

        tokens = duckdb.tokenize(text)
        ends = [start for start, _ in tokens[1:]] + [len(text)]
        words = [(start, text[start:end].strip().lower(), kind)
                 for (start, kind), end in zip(tokens, ends)
                 if kind != duckdb.token_type.comment]
        refusal = QueryError("EXPLAIN is allowed only of a SELECT (EXPLAIN ANALYZE runs the "
                             "statement it explains); queries are read-only")
        if not words or words[0][1] != "explain":
            raise refusal
        starts = [1]
        if len(words) > 2 and words[1][2] == duckdb.token_type.keyword \
                and words[1][1] in ("analyze", "analyse"):
            starts.append(2)
        candidates = []
        for i in starts:
            if i >= len(words):
                continue
            candidates.append(text[words[i][0]:])
            if words[i][1] != "(":
                continue
            depth = 0
            for j in range(i, len(words)):
                word = words[j][1] if words[j][2] == duckdb.token_type.operator else ""
                if word in ("(", ")"):
                    depth += 1 if word == "(" else -1
                    if depth == 0:
                        if j + 1 < len(words):
                            candidates.append(text[words[j + 1][0]:])
                        break
                elif "(" in word or ")" in word:  # an operator holding a parenthesis: no guess
                    break
        kinds = [self._kind(candidate) for candidate in candidates]
        if "SELECT" not in kinds or any(k not in (None, "SELECT") for k in kinds):
            raise refusal
        return [c for c, k in zip(candidates, kinds) if k == "SELECT"]

    def _check_select(self, text: str) -> None:
        """Refuse a SELECT whose parse tree holds a query node that is not a select (a WITH
        entry may be INSERT, UPDATE, DELETE or COPY ... TO), a table function off
        :data:`TABLE_FUNCTIONS` or a function of :data:`REFUSED_FUNCTIONS`."""
        tree = json.loads(self.con.sql("SELECT json_serialize_sql(?)",
                                       params=[text]).fetchall()[0][0])
        if tree.get("error") or len(tree.get("statements") or []) != 1:
            raise QueryError("the sandbox cannot check this statement "
                             f"({tree.get('error_message') or 'not one SELECT'}); only SELECT "
                             "statements run")
        problem = _refusal(tree["statements"][0])
        if problem:
            raise QueryError(f"refused by the sandbox: {problem}")

    # -- running ---------------------------------------------------------------------------

    def run_to_file(self, query: str, output: str | os.PathLike, format: str,
                    parameters=None) -> int:
        """Check ``query`` and stream its result into ``output``; returns the row count. A
        cancelled query leaves ``output`` as it was."""
        self.check(query)
        check_output(output)

        def work(cancelled):
            reader = arrow_reader(self.con.sql(query, params=parameters))
            return write_result(_until(reader, cancelled), output, format)

        return self._with_timeout(work)

    def run(self, query: str, parameters=None) -> pa.Table:
        """Check and run ``query``; the whole result as an Arrow table."""
        self.check(query)
        return self._with_timeout(
            lambda cancelled: arrow_table(self.con.sql(query, params=parameters)))

    def _require_usable(self) -> None:
        if self._orphan is not None:
            raise QueryError("this engine was closed after a query ignored its cancel (DuckDB "
                             "checks for it only between chunks of work); open a new one")
        if self.con is None or self._closed:
            raise QueryError("this engine is closed; open a new one")

    def _with_timeout(self, work):
        """``work(cancelled)`` (DuckDB calls on this connection; ``cancelled`` an Event set on
        a cancel) run on a worker thread, waited for in short slices so that the timeout and
        Ctrl-C act promptly. Both interrupt DuckDB and give it :data:`CANCEL_GRACE` seconds to
        stop; a query still running then is abandoned (its result never used, this engine
        closed, the worker releasing the connection when DuckDB returns). The timeout raises
        a QueryError, a KeyboardInterrupt is re-raised.

        The wait is on an Event the worker sets, never ``Thread.join``: on Python 3.11 a
        KeyboardInterrupt inside ``join`` marks the thread stopped while it still runs."""
        import duckdb

        self._require_usable()
        timeout = self.config.timeout
        outcome: dict = {}
        cancelled, done = threading.Event(), threading.Event()

        def target():
            try:
                outcome["value"] = work(cancelled)
            except BaseException as exc:  # re-raised in the caller's thread
                outcome["error"] = exc
            finally:
                self._finished()
                done.set()

        # not a daemon: a daemon thread coming back from DuckDB during interpreter shutdown
        # aborts the process (see exit_if_abandoned)
        thread = threading.Thread(target=target, name="seqatlas-duckdb-query")
        with self._lock:
            self._running = thread
        started = False
        try:
            thread.start()
            started = True
            deadline = None if timeout is None else time.monotonic() + timeout
            while not done.is_set():
                left = _POLL if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    stopped = self._cancel(thread, cancelled, done)
                    raise QueryError(
                        f"query cancelled after the {timeout:g} s timeout; raise --timeout or "
                        "narrow the query." + ("" if stopped else
                                               _ABANDONED_NOTE.format(grace=CANCEL_GRACE)))
                done.wait(min(_POLL, left))
        except KeyboardInterrupt:
            if started and not done.is_set() and self._orphan is not thread:
                self._cancel(thread, cancelled, done)
            raise
        finally:
            if not started:
                with self._lock:
                    self._running = None
        error = outcome.get("error")
        if isinstance(error, duckdb.InterruptException):
            raise QueryError("query interrupted") from None
        if isinstance(error, duckdb.PermissionException):
            raise QueryError(f"refused by the sandbox: {error}. Queries read only this atlas's "
                             "views (sequences, positions, tokens, repeats, anomalies, ...).") \
                from None
        if isinstance(error, duckdb.Error):
            raise QueryError(f"{type(error).__name__}: {error}") from None
        if error is not None:
            raise error
        return outcome.get("value")

    def _cancel(self, thread: threading.Thread, cancelled: threading.Event,
                done: threading.Event) -> bool:
        """Interrupt DuckDB and wait up to CANCEL_GRACE s for the worker; abandon it if it is
        still running then (or a second Ctrl-C ends the wait). True when it stopped."""
        cancelled.set()
        con = self.con
        if con is not None:
            con.interrupt()
        end = time.monotonic() + CANCEL_GRACE
        try:
            while not done.is_set() and (left := end - time.monotonic()) > 0:
                done.wait(min(_POLL, left))
        finally:
            abandoned = not done.is_set() and self._abandon(thread)
        return not abandoned

    def _abandon(self, thread: threading.Thread) -> bool:
        with self._lock:
            if self._running is not thread:
                return False  # it finished meanwhile
            self._orphan = thread
            _ABANDONED[thread] = self._spill
            return True

    def _finished(self) -> None:
        """The worker's last step: release the connection if the engine was closed or gave
        the query up while it ran."""
        with self._lock:
            self._running = None
            release = self._closed or self._orphan is not None
            _ABANDONED.pop(threading.current_thread(), None)
        if release:
            self._release()

    def _release(self) -> None:
        import duckdb

        with self._lock:
            con, self.con = self.con, None
            spill, self._spill = self._spill, None
        if con is not None:
            try:
                con.close()
            except duckdb.Error:
                pass
        if spill:
            shutil.rmtree(spill, ignore_errors=True)

    def close(self) -> None:
        """Close the connection and remove the spill directory; safe to call twice, and while
        an abandoned query still runs (its worker releases them when DuckDB returns)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            busy = self._running is not None
        if busy:
            con = self.con
            if con is not None:
                con.interrupt()
            return
        self._release()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _until(reader: pa.RecordBatchReader, cancelled: threading.Event) -> pa.RecordBatchReader:
    """``reader``'s batches until ``cancelled`` is set; then (even after the last batch) a
    QueryError, so a cancelled query's output is never committed."""
    def batches():
        for batch in reader:
            if cancelled.is_set():
                break
            yield batch
        if cancelled.is_set():
            raise QueryError("query cancelled")

    return pa.RecordBatchReader.from_batches(reader.schema, batches())
