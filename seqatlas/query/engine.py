"""The sandboxed DuckDB engine: views over an atlas's committed Parquet parts, and user SQL.

The sandbox, in DuckDB's own terms: external access is off and only the committed part files
(resolved, each inside the atlas) are on ``allowed_paths``; extension install, load and
autoload are off; the configuration is locked; only ``SELECT``/``EXPLAIN`` statements run;
spills go to a private temporary directory removed on close. Results are written by seqatlas
(never by DuckDB) to an explicit output file, atomically.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from seqatlas import schema
from seqatlas.store import AtlasReader
from seqatlas.errors import AtlasError, ConfigError, QueryError
from seqatlas.util import machine_memory_bytes, machine_threads, replacing

TABLE_SCHEMAS = {"sequences": schema.SEQUENCES, "positions": schema.POSITIONS,
                 "repeats": schema.REPEATS, "ablations": schema.ABLATIONS}
ALLOWED_STATEMENTS = ("SELECT", "EXPLAIN")
OUTPUT_FORMATS = ("table", "csv", "tsv", "json", "parquet")


@dataclass
class SqlConfig:
    """Resources and limits of one engine; None follows the machine."""

    timeout: float | None = None  # seconds per query; None = no limit
    memory_limit: str | None = None  # DuckDB size string; None = 75% of the machine's memory
    threads: int | None = None  # None = the CPUs this process may use

    def validate(self) -> None:
        if self.timeout is not None and self.timeout <= 0:
            raise ConfigError("--timeout must be a positive number of seconds")
        if self.threads is not None and self.threads < 1:
            raise ConfigError("--threads must be 1 or more")


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


def sql_string(text: str) -> str:
    """``text`` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


class Sandbox:
    """A DuckDB connection whose only readable files are one atlas's committed parts.

    Views: ``sequences``, ``positions``, ``tokens``, ``repeats`` and ``repeats_global``. The
    anomaly views are added by :class:`seqatlas.query.views.Engine`.
    """

    def __init__(self, atlas: AtlasReader | str | os.PathLike, config: SqlConfig | None = None):
        import duckdb

        self.atlas = atlas if isinstance(atlas, AtlasReader) else AtlasReader(atlas)
        self.config = config or SqlConfig()
        self.config.validate()
        self.root = Path(os.path.realpath(self.atlas.path))
        self._spill = tempfile.mkdtemp(prefix="seqatlas-duckdb-")
        memory = self.config.memory_limit or f"{int(machine_memory_bytes() * 0.75) >> 20}MB"
        self.con = duckdb.connect(":memory:", config={
            "threads": self.config.threads or machine_threads(),
            "memory_limit": memory,
            "temp_directory": self._spill,
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "allow_community_extensions": False,
            "allow_unsigned_extensions": False,
        })
        try:
            allowed = self._create_views()
            if allowed:
                self.con.execute(f"SET allowed_paths=[{', '.join(map(sql_string, allowed))}]")
            self.con.execute("SET enable_external_access=false")
            self.con.execute("SET lock_configuration=true")
        except BaseException:
            self.close()
            raise

    def _safe_part(self, path: Path) -> str:
        resolved = Path(os.path.realpath(path))
        if not resolved.is_relative_to(self.root) or not resolved.is_file():
            raise AtlasError(f"{path} resolves to {resolved}, outside the atlas {self.root} "
                             "(or not a file); refusing to read it. Remove the link.")
        return str(resolved)

    def _create_views(self) -> list[str]:
        allowed = []
        schemas = {**TABLE_SCHEMAS, "tokens": self.atlas.manifest.tokens_schema()}
        for table in schema.TABLES:
            parts = [self._safe_part(p) for p in self.atlas.part_paths(table)]
            allowed += parts
            if parts:
                files = ", ".join(map(sql_string, parts))
                body = f"SELECT {_select_list(schemas[table], parts[0])} " \
                       f"FROM read_parquet([{files}])"
            else:
                body = _empty_select(schemas[table])
            self.con.execute(f'CREATE VIEW "{table}" AS {body}')
        # Global coordinates (sequence offset + position) keep interval joins pure
        # inequalities, which DuckDB runs as a range join instead of a per-sequence hash join.
        self.con.execute("""CREATE VIEW repeats_global AS
            SELECT r.*, s.global_start + r.start AS gstart, s.global_start + r."end" AS gend
            FROM repeats r JOIN sequences s USING (seq_id)""")
        return allowed

    @property
    def position_columns(self) -> list[str]:
        return [f.name for f in schema.POSITIONS]

    def execute_internal(self, sql: str, params=None):
        """Run seqatlas's own (trusted) SQL as a relation; user SQL goes through :meth:`run`."""
        return self.con.sql(sql, params=params)

    def check(self, query: str) -> None:
        """Refuse anything but a single SELECT or EXPLAIN statement."""
        import duckdb

        try:
            statements = self.con.extract_statements(query)
        except duckdb.Error as exc:
            raise QueryError(f"SQL does not parse: {exc}") from None
        if len(statements) != 1:
            raise QueryError(f"give exactly one SQL statement, not {len(statements)}")
        kind = statements[0].type.name
        if kind not in ALLOWED_STATEMENTS:
            raise QueryError(f"{kind} statements are not allowed: queries are read-only "
                             "(SELECT or EXPLAIN). Use --output to save a result.")

    def run_to_file(self, query: str, output: str | os.PathLike, format: str,
                    parameters=None) -> int:
        """Check ``query`` and stream its result into ``output``; returns the row count."""
        self.check(query)
        return self._with_timeout(lambda: write_result(
            arrow_reader(self.con.sql(query, params=parameters)), output, format))

    def run(self, query: str, parameters=None) -> pa.Table:
        """Check and run ``query``; the whole result as an Arrow table."""
        self.check(query)
        return self._with_timeout(lambda: arrow_table(self.con.sql(query, params=parameters)))

    def _with_timeout(self, work):
        import duckdb

        outcome: dict = {}

        def target():
            try:
                outcome["value"] = work()
            except BaseException as exc:  # re-raised in the caller's thread
                outcome["error"] = exc

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        thread.join(self.config.timeout)
        if thread.is_alive():
            self.con.interrupt()
            thread.join()
            raise QueryError(f"query cancelled after the {self.config.timeout:g} s timeout; "
                             "raise --timeout or narrow the query")
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
        return outcome["value"]

    def close(self) -> None:
        con = getattr(self, "con", None)
        if con is not None:
            con.close()
            self.con = None
        shutil.rmtree(self._spill, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def json_record(record: dict) -> str:
    """One row as JSON; NaN becomes null (JSON has no NaN)."""
    import json
    import math

    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v)
             for k, v in record.items()}
    return json.dumps(clean, default=str)


def write_tsv(reader: pa.RecordBatchReader, sink) -> int:
    """Tab-separated values without quotes (a header line, then one line per row) to the
    binary ``sink``; returns the row count. A value holding a tab or newline is refused."""
    import pyarrow.csv as pacsv

    sink.write(("\t".join(reader.schema.names) + "\n").encode())
    options = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    rows = 0
    for batch in reader:
        try:
            pacsv.write_csv(pa.Table.from_batches([batch]), sink, options)
        except pa.ArrowInvalid:
            raise ConfigError("a value holds a tab or a line break, which TSV cannot carry; "
                              "use --format csv (quoted) or parquet") from None
        rows += batch.num_rows
    return rows


def write_result(batches: pa.RecordBatchReader | pa.Table, output: str | os.PathLike,
                 format: str) -> int:
    """Write a result to ``output`` (temp file then rename); returns the row count."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if format not in ("csv", "tsv", "json", "parquet"):
        raise ConfigError(f"--format {format} cannot be written to a file; use csv, tsv, json "
                          "or parquet with --output")
    output = Path(output)
    if output.is_dir():
        raise ConfigError(f"--output {output} is a directory; give a file name")
    if not output.parent.exists():
        raise ConfigError(f"--output {output}: directory {output.parent} does not exist")
    reader = batches.to_reader() if isinstance(batches, pa.Table) else batches
    rows = 0
    with replacing(output, durable=False) as tmp:
        if format == "parquet":
            with pq.ParquetWriter(tmp, reader.schema, compression="zstd") as writer:
                for batch in reader:
                    writer.write_batch(batch)
                    rows += batch.num_rows
        elif format == "tsv":
            with open(tmp, "wb") as fh:
                rows = write_tsv(reader, fh)
        elif format == "csv":
            with pacsv.CSVWriter(tmp, reader.schema) as writer:
                for batch in reader:
                    writer.write_batch(batch)
                    rows += batch.num_rows
        else:
            with open(tmp, "w") as fh:
                fh.write("[")
                for batch in reader:
                    for record in batch.to_pylist():
                        fh.write(("\n" if rows == 0 else ",\n") + json_record(record))
                        rows += 1
                fh.write("\n]\n" if rows else "]\n")
    return rows
