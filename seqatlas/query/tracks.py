"""Genome-browser exports: bedGraph and bigWig tracks of a per-position column, BED of
anomalous regions.

Tracks hold one interval per run of consecutive positions with the same value (positions
without a value, e.g. in long N runs, are left out), in the atlas's sequence order. Files
are written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from seqatlas.errors import ConfigError
from seqatlas.query.engine import arrow_reader
from seqatlas.query.views import AnomalyParams, Engine, require_scores
from seqatlas.util import check_output, output_file

EXPORT_FORMATS = ("bedgraph", "bed", "bigwig")
TRACK_COLUMNS = ("z", "logp", "logp_unmasked", "logp_rc", "logp_unmasked_rc", "logp_mean",
                 "logp_unmasked_mean", "entropy", "rank")


def _runs_query(column: str) -> str:
    source = ("SELECT seq_id, pos, z AS value FROM position_z WHERE z IS NOT NULL"
              if column == "z" else
              f'SELECT seq_id, pos, "{column}"::DOUBLE AS value FROM positions '
              f'WHERE "{column}" IS NOT NULL')
    return f"""
        WITH v AS ({source}),
        marked AS (
            SELECT *, CASE WHEN pos = lag(pos) OVER w + 1 AND value = lag(value) OVER w
                           THEN 0 ELSE 1 END AS new_run
            FROM v WINDOW w AS (PARTITION BY seq_id ORDER BY pos)),
        numbered AS (
            SELECT *, sum(new_run) OVER (PARTITION BY seq_id ORDER BY pos
                                         ROWS UNBOUNDED PRECEDING) AS run
            FROM marked)
        SELECT n.seq_id AS chrom, min(n.pos) AS start, max(n.pos) + 1 AS "end",
               any_value(n.value) AS value
        FROM numbered n JOIN sequences s USING (seq_id)
        GROUP BY n.seq_id, s.ordinal, n.run
        ORDER BY s.ordinal, start"""


REGIONS_BED = """
    SELECT r.seq_id AS chrom, r.start, r."end", r.tail AS name,
           least(1000, round(abs(r.peak_z) * 100))::INTEGER AS score, '.' AS strand
    FROM anomaly_regions r JOIN sequences s USING (seq_id)
    ORDER BY s.ordinal, r.start, r.tail"""


def export(atlas, *, format: str, output: str | os.PathLike, column: str = "z",
           params=None, config=None) -> dict:
    """Write a bedGraph/bigWig track of ``column`` or a BED of anomalous regions.

    ``params`` (:class:`~seqatlas.query.views.AnomalyParams`) defines z and the regions.
    Returns ``{"output", "format", "column", "intervals"}``.
    """

    if format not in EXPORT_FORMATS:
        raise ConfigError(f"format must be one of {', '.join(EXPORT_FORMATS)}, not {format!r}")
    if format != "bed" and column not in TRACK_COLUMNS:
        raise ConfigError(f"--column must be one of {', '.join(TRACK_COLUMNS)}, not {column!r}")
    check_output(output)
    params = params or AnomalyParams()
    with Engine(atlas, config, anomaly_params=params, robust_pass=True) as engine:
        if column == "z" or format == "bed":
            require_scores(engine, "`export bed`" if format == "bed" else
                           f"`export {format} --column z`")
        sizes = engine.execute_internal(
            "SELECT seq_id, length FROM sequences ORDER BY ordinal").fetchall()
        query = REGIONS_BED if format == "bed" else _runs_query(column)
        reader = arrow_reader(engine.execute_internal(query), 262144)
        with output_file(output) as tmp:
            if format == "bigwig":
                intervals = _write_bigwig(reader, tmp, sizes)
            else:
                intervals = _write_tsv(reader, tmp)
    return {"output": str(output), "format": format,
            "column": None if format == "bed" else column, "intervals": intervals}


def _write_tsv(reader: pa.RecordBatchReader, path: Path) -> int:
    import pyarrow.csv as pacsv

    options = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    rows = 0
    with pacsv.CSVWriter(path, reader.schema, write_options=options) as writer:
        for batch in reader:
            writer.write_batch(batch)
            rows += batch.num_rows
    return rows


def _write_bigwig(reader: pa.RecordBatchReader, path: Path, sizes: list[tuple]) -> int:
    try:
        import pyBigWig
    except ImportError:
        raise ConfigError("bigWig export needs pyBigWig (pip install pyBigWig); bedGraph "
                          "works without it") from None
    bw = pyBigWig.open(str(path), "w")
    rows = 0
    try:
        bw.addHeader([(name, int(length)) for name, length in sizes])
        for batch in reader:
            if batch.num_rows:
                bw.addEntries(batch.column("chrom").to_pylist(),
                              batch.column("start").to_pylist(),
                              ends=batch.column("end").to_pylist(),
                              values=[float(v) for v in batch.column("value").to_pylist()])
                rows += batch.num_rows
    finally:
        bw.close()
    return rows
