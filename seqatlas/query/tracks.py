"""Genome-browser exports: bedGraph and bigWig tracks of a per-position column, BED of
anomalous regions.

Besides the positions columns and robust ``z``, a track may hold a per-position constraint
summary computed from the stored distributions (``letter_logp``, ingest's
``--distributions``): ``mean_llr``, the mean LLR of the position's substitutions (the
kind's other standard letters), and ``min_llr``, the most damaging one, where the LLR of
ref -> alt is ``letter_logp[alt] - letter_logp[ref]`` (with ``--strands both`` the mean of
that and the same on ``letter_logp_rc``, null where the reverse strand has none). Positions
without a distribution, or whose ref is not one of the letters, have no value. These are the
numbers :func:`seqatlas.variants.scan.constraint_track` gives.

Tracks hold one interval per run of consecutive positions with the same value (positions
without a value, e.g. in long N runs, are left out). Sequence names are written as the atlas
has them or in UCSC/Ensembl style (:func:`seqatlas.repeats.importer.chrom_name`), and the
intervals are sorted by the names as written, then by start:

- ``lexicographic`` (default): the byte order of the names, what ``LC_ALL=C sort -k1,1
  -k2,2n`` gives and what UCSC's ``bedGraphToBigWig`` and ``bedToBigBed`` require;
- ``natural``: karyotype order: chr1, chr2, ..., chr10, ... (a number's unplaced pieces such
  as chr1_KI270706v1_random right after it), chrX, chrY, chrM, then every other name in
  natural order (runs of digits compared as numbers), a leading ``chr`` ignored.

A bigWig's header lists the sequences in the same order as its data (pyBigWig requires it).
Files are written under a temporary name and renamed when complete.

With a region (``SEQ:START-END``, 0-based half-open; ``SEQ``: a whole sequence) only the
parts and row groups around it are read, and a track holds the region's positions: the
whole atlas's track cut to the region (runs of equal values cut at its edges; z with the
whole atlas's statistics and smoothing, see :func:`seqatlas.query.engine.region_engine`); a
BED holds the anomalous regions, as the whole atlas has them, that overlap the region.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pyarrow as pa

from seqatlas.errors import ConfigError
from seqatlas.query.sandbox import REGION_KEYS, arrow_reader, region_predicate, sql_string
from seqatlas.query.engine import Engine, region_engine
from seqatlas.query.views import AnomalyParams, require_scores
from seqatlas.util import CHROM_STYLES, check_output, chrom_name, output_file

EXPORT_FORMATS = ("bedgraph", "bed", "bigwig")
SORT_ORDERS = ("lexicographic", "natural")
# per-position summaries of the substitutions' LLRs, from the stored distributions
LLR_COLUMNS = ("mean_llr", "min_llr")
TRACK_COLUMNS = ("z", "logp", "logp_unmasked", "logp_rc", "logp_unmasked_rc", "logp_mean",
                 "logp_unmasked_mean", "entropy", "rank") + LLR_COLUMNS


def require_distributions(atlas, what: str) -> str:
    """The letters of ``atlas``'s stored distributions (an AtlasReader), in ``letter_logp``
    order; a ConfigError saying that ``what`` needs them when the atlas stores none."""
    scoring = atlas.manifest.scoring
    if scoring is None or not scoring.stores_distributions():
        raise ConfigError(f"{atlas.path} stores no per-position distributions (letter_logp), "
                          f"which {what} needs: re-ingest with --distributions float32 into a "
                          "new --atlas, or use `seqatlas variants score`, which rescores "
                          "sites on demand")
    return scoring.distribution_letters


def substitution_rows_sql(letters: str, where: str = "") -> str:
    """The positions rows with a distribution whose ref is one of ``letters``: seq_id, pos,
    ref, copy_offset, copy_strand, ``ref_index`` (1-based, into ``letters``), ``f``
    (letter_logp) and ``r`` (letter_logp_rc); ``where`` adds a condition."""
    lit = sql_string(letters)
    extra = f" AND ({where})" if where else ""
    return f"""
        SELECT seq_id, pos, ref, copy_offset, copy_strand, instr({lit}, ref) AS ref_index,
               letter_logp AS f, letter_logp_rc AS r
        FROM positions
        WHERE letter_logp IS NOT NULL AND length(ref) = 1 AND instr({lit}, ref) > 0{extra}"""


def substitution_llr_sql(k: int, both: bool) -> str:
    """The LLR of the substitution to letter ``k`` (1-based) of a row of
    :func:`substitution_rows_sql`: null at the ref; with ``both`` strands the strand mean
    (null where the reverse strand has no distribution)."""
    fwd = f"(f[{k}]::DOUBLE - f[ref_index]::DOUBLE)"
    llr = f"({fwd} + (r[{k}]::DOUBLE - r[ref_index]::DOUBLE)) / 2" if both else fwd
    return f"CASE WHEN ref_index = {k} THEN NULL ELSE {llr} END"


def constraint_sql(letters: str, both: bool) -> dict[str, str]:
    """``mean_llr`` and ``min_llr`` as SQL over rows of :func:`substitution_rows_sql` (see
    the module docstring)."""
    each = [substitution_llr_sql(k, both) for k in range(1, len(letters) + 1)]
    return {"mean_llr": f"list_avg([{', '.join(each)}])", "min_llr": f"least({', '.join(each)})"}


def _runs_query(column: str, letters: str | None = None, both: bool = False,
                where: str = "") -> str:
    """Runs of equal values of ``column`` (``where``: a condition on the positions)."""
    extra = f" AND ({where})" if where else ""
    if column == "z":
        source = f"SELECT seq_id, pos, z AS value FROM position_z WHERE z IS NOT NULL{extra}"
    elif column in LLR_COLUMNS:
        source = (f"SELECT * FROM (SELECT seq_id, pos, {constraint_sql(letters, both)[column]}"
                  f" AS value FROM ({substitution_rows_sql(letters, where)})) "
                  "WHERE value IS NOT NULL")
    else:
        source = (f'SELECT seq_id, pos, "{column}"::DOUBLE AS value FROM positions '
                  f'WHERE "{column}" IS NOT NULL{extra}')
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
        SELECT any_value(c.chrom) AS chrom, min(n.pos) AS start, max(n.pos) + 1 AS "end",
               any_value(n.value) AS value
        FROM numbered n JOIN export_chroms c USING (seq_id)
        GROUP BY n.seq_id, c.rank, n.run
        ORDER BY c.rank, start"""


def _regions_bed(where: str = "") -> str:
    """The BED rows of the anomalous regions (``where``: a condition on them, alias r)."""
    return f"""
        SELECT c.chrom, r.start, r."end", r.tail AS name,
               least(1000, round(abs(r.peak_z) * 100))::INTEGER AS score, '.' AS strand
        FROM anomaly_regions r JOIN export_chroms c USING (seq_id)
        {f"WHERE {where}" if where else ""}
        ORDER BY c.rank, r.start, r.tail"""

_DIGITS = re.compile(r"([0-9]+)")
_KARYOTYPE = {"X": 1, "Y": 2, "M": 3, "MT": 3}


def _natural(text: str) -> list:
    """``text`` with its runs of digits as numbers: a10 after a9."""
    return [int(piece) if i % 2 else piece for i, piece in enumerate(_DIGITS.split(text))]


def natural_key(name: str) -> tuple:
    """The ``natural`` sort key of a sequence name (see the module docstring)."""
    body = name[3:] if name[:3].lower() == "chr" else name
    main, _, rest = body.partition("_")
    if main.isascii() and main.isdigit():
        group = (0, int(main), _natural(rest))
    elif main.upper() in _KARYOTYPE:
        group = (_KARYOTYPE[main.upper()], 0, _natural(rest))
    else:
        group = (4, 0, _natural(body))
    return (*group, name.encode())


def _export_chroms(sizes: list[tuple[str, int]], sort: str, names: str) -> pa.Table:
    """seq_id, chrom (the name as written), rank (its place in the output) and length of
    every sequence, in output order; refuses two sequences written alike."""
    written = {seq_id: chrom_name(seq_id, names) for seq_id, _ in sizes}
    seen: dict[str, str] = {}
    for seq_id, chrom in written.items():
        if chrom in seen:
            raise ConfigError(f"--chrom-names {names}: sequences {seen[chrom]!r} and {seq_id!r} "
                              f"would both be written {chrom!r}; export them as-is")
        seen[chrom] = seq_id
    key = (lambda item: item[1].encode()) if sort == "lexicographic" else \
        (lambda item: natural_key(item[1]))
    order = sorted(((seq_id, written[seq_id], length) for seq_id, length in sizes), key=key)
    return pa.table({"seq_id": pa.array([o[0] for o in order], pa.string()),
                     "chrom": pa.array([o[1] for o in order], pa.string()),
                     "rank": pa.array(range(len(order)), pa.int64()),
                     "length": pa.array([o[2] for o in order], pa.int64())})


def _export_engine(atlas, format: str, column: str, params, config, region):
    """(engine, region or None): the whole atlas's, or a region engine; z and the anomalous
    regions need the padded one of :func:`region_engine`, other columns only the region."""
    if region is None:
        return Engine(atlas, config, anomaly_params=params, robust_pass=True), None
    if format == "bed" or column == "z":
        return region_engine(atlas, region, config, params, regions=format == "bed")
    engine = Engine(atlas, config, anomaly_params=params, anomaly_views=False, region=region)
    return engine, engine.region


def export(atlas, *, format: str, output: str | os.PathLike, column: str = "z",
           params=None, config=None, sort: str = "lexicographic",
           chrom_names: str = "as-is", region=None) -> dict:
    """Write a bedGraph/bigWig track of ``column`` or a BED of anomalous regions.

    ``column`` is a positions column, ``z``, or ``mean_llr``/``min_llr`` (from the stored
    distributions; see the module docstring). ``params``
    (:class:`~seqatlas.query.views.AnomalyParams`) defines z and the regions.
    ``sort`` ("lexicographic" or "natural") orders the intervals by sequence name as
    written, then start; ``chrom_names`` ("as-is", "ucsc" or "ensembl") writes the names
    (see the module docstring). ``region`` (``SEQ:START-END`` or ``SEQ``): only the
    region's track, or the anomalous regions overlapping it (see the module docstring); an
    InputError names a region the atlas does not have. Returns ``{"output", "format",
    "column", "intervals", "sort", "chrom_names", "region"}``.
    """

    if format not in EXPORT_FORMATS:
        raise ConfigError(f"format must be one of {', '.join(EXPORT_FORMATS)}, not {format!r}")
    if format != "bed" and column not in TRACK_COLUMNS:
        raise ConfigError(f"--column must be one of {', '.join(TRACK_COLUMNS)}, not {column!r}")
    if sort not in SORT_ORDERS:
        raise ConfigError(f"--sort must be one of {', '.join(SORT_ORDERS)}, not {sort!r}")
    if chrom_names not in CHROM_STYLES:
        raise ConfigError(f"--chrom-names must be one of {', '.join(CHROM_STYLES)}, not "
                          f"{chrom_names!r}")
    check_output(output)
    params = params or AnomalyParams()
    engine, span = _export_engine(atlas, format, column, params, config, region)
    with engine:
        if column == "z" or format == "bed":
            require_scores(engine, "`export bed`" if format == "bed" else
                           f"`export {format} --column z`")
        letters = require_distributions(engine.atlas, f"`export {format} --column {column}`") \
            if format != "bed" and column in LLR_COLUMNS else None
        both = engine.atlas.manifest.scoring is not None and \
            engine.atlas.manifest.scoring.strands == "both"
        chroms = _export_chroms(engine.execute_internal(
            "SELECT seq_id, length FROM sequences ORDER BY ordinal").fetchall(), sort,
            chrom_names)
        engine.con.register("export_chroms", chroms)
        sizes = list(zip(chroms["chrom"].to_pylist(), chroms["length"].to_pylist()))
        if format == "bed":
            query = _regions_bed(region_predicate("interval", span, "r") if span else "")
        else:
            query = _runs_query(column, letters, both,
                                region_predicate(REGION_KEYS["positions"], span) if span else "")
        reader = arrow_reader(engine.execute_internal(query), 262144)
        with output_file(output) as tmp:
            if format == "bigwig":
                intervals = _write_bigwig(reader, tmp, sizes)
            else:
                intervals = _write_tsv(reader, tmp)
    return {"output": str(output), "format": format,
            "column": None if format == "bed" else column, "intervals": intervals,
            "sort": sort, "chrom_names": chrom_names,
            "region": f"{span[0]}:{span[1]}-{span[2]}" if span else None}


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
