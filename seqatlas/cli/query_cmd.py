"""``seqatlas query sql|anomalies|enrichment|knn|identity`` and
``seqatlas export bedgraph|bed|bigwig``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from seqatlas.cli.options import (ATLAS, COLUMN, FORMAT, MAX_GAP, MIN_LENGTH, OUTPUT,
                                  SCORE_COLUMN, SMOOTH, TAIL, Z, AblationMethod, By, Format,
                                  Tail)
from seqatlas.cli.options import (ABLATION_METHOD, IDENTITY_INDEX, IDENTITY_K, IDENTITY_LAYER,
                                  IDENTITY_NPROBE, IDENTITY_SAMPLE, IDENTITY_SEED, ChromNames,
                                  SortOrder, anomaly_params)
from seqatlas.cli.options import Metric, Pooling
from seqatlas.cli.tables import FittedTable, arrow_rich_table, note, print_table

query_app = typer.Typer(help="Query an atlas with DuckDB: SQL, likelihood anomalies, "
                        "enrichment in repeats, nearest k-mers in embedding space.",
                        no_args_is_help=True)
export_app = typer.Typer(help="Export tracks for genome browsers (bedGraph, bigWig) and "
                         "anomalous regions (BED).", no_args_is_help=True)

TIMEOUT = typer.Option(None, "--timeout", help="Cancel the query after this many seconds.")
SQL_REGION = typer.Option(None, "--region", "-r", help="SEQ:START-END (0-based, half-open; "
                          "SEQ alone: the whole sequence): the views positions, tokens, "
                          "repeats, ablations and variants hold only the region's rows, read "
                          "from the parts and row groups that hold it; z keeps the whole "
                          "atlas's statistics.")
EXPORT_REGION = typer.Option(None, "--region", "-r", help="SEQ:START-END (0-based, half-open; "
                             "SEQ alone: the whole sequence): export only this region (a "
                             "track cut to it; for bed, the anomalous regions overlapping it), "
                             "reading only the parts and row groups that hold it.")




# `query anomalies|enrichment` took the score column as --column, which `export bedgraph|bigwig`
# use for the column they write: --score-column now, as in those, and --column a hidden alias
DEPRECATED_COLUMN = typer.Option(None, "--column", hidden=True,
                                 help="Deprecated name of --score-column.")


def _score_column(score: Optional[str], column: Optional[str]) -> Optional[str]:
    """--score-column, or the deprecated --column given instead."""
    if column is None:
        return score
    if score is not None and score != column:
        from seqatlas.errors import ConfigError

        raise ConfigError(f"--column {column} and --score-column {score} disagree; --column "
                          "is the deprecated name of --score-column: give only that")
    note("Note: --column is deprecated here; use --score-column (the same option).")
    return column


def _emit(table, format: Format, output: Optional[Path], what: str, title: str = "",
          render=None) -> None:
    """A result to --output (in the format --format or the file's suffix names, see
    :func:`seqatlas.query.output.file_format`) or to stdout (:func:`print_table`)."""
    if output is not None:
        from seqatlas.query.output import file_format, write_result

        rows = write_result(table, output, format.value)
        note(f"{rows:,} {what} written to {output} ({file_format(output, format.value)}).")
        return
    print_table(table, format, title=title, what=what, render=render)


@query_app.command("sql")
def sql(
    query: str = typer.Argument(..., help="One SELECT over the views sequences, positions, "
                                "tokens, repeats, ablations, variants, pooled (one vector "
                                "per sequence or bin); repeats_global "
                                "(repeats with genome-wide gstart/gend, for fast interval "
                                "joins); robust_stats, position_z, anomalies, "
                                "anomaly_regions, icl_regions (the anomaly model of `query "
                                "anomalies`); variant_scores (stored variant sets with their "
                                "LLRs, where the atlas stores distributions)."),
    atlas: str = ATLAS,
    format: Format = FORMAT,
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the result to "
                                          "this file (the only file a query may write)."),
    timeout: Optional[float] = TIMEOUT,
    memory_limit: Optional[str] = typer.Option(None, "--memory-limit", help="DuckDB memory "
                                               "limit, e.g. 8GB (default: 75% of RAM)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Default: all CPUs."),
    ablation_method: Optional[AblationMethod] = ABLATION_METHOD,
    region: Optional[str] = SQL_REGION,
) -> None:
    """Run one read-only SELECT over an atlas's views, sandboxed (only the atlas is readable)."""
    from seqatlas.query import AnomalyParams, SqlConfig
    from seqatlas.query import sql as run_sql

    config = SqlConfig(timeout=timeout, memory_limit=memory_limit, threads=threads)
    params = AnomalyParams(ablation_method=ablation_method.value if ablation_method else None)
    if output is not None:  # streamed from DuckDB into the file
        from seqatlas.query.output import file_format

        rows = run_sql(atlas, query, output=output, format=format.value, params=params,
                       config=config, region=region)
        note(f"{rows:,} rows written to {output} ({file_format(output, format.value)}).")
        return
    print_table(run_sql(atlas, query, params=params, config=config, region=region), format,
                what="rows")


@query_app.command("anomalies")
def anomalies(
    atlas: str = ATLAS,
    z: float = Z, tail: Tail = TAIL, min_length: int = MIN_LENGTH, max_gap: int = MAX_GAP,
    smooth: int = SMOOTH, score: Optional[str] = SCORE_COLUMN,
    column: Optional[str] = DEPRECATED_COLUMN,
    with_repeats: bool = typer.Option(False, "--with-repeats", help="Add the repeat classes "
                                      "and names each region overlaps."),
    ablation_method: Optional[AblationMethod] = ABLATION_METHOD,
    format: Format = FORMAT,
    output: Optional[Path] = OUTPUT,
) -> None:
    """Regions of anomalously likely or unlikely positions, and what may explain them."""
    from seqatlas.query import anomalies as find

    table = find(atlas, params=anomaly_params(_score_column(score, column), z, tail, smooth,
                                              min_length, max_gap, ablation_method),
                 with_repeats=with_repeats)
    _emit(table, format, output, "regions",
          f"anomalous regions (|z| >= {z:g}, tail {tail.value})")


@query_app.command("enrichment")
def enrichment(
    atlas: str = ATLAS,
    by: By = typer.Option(By.class_, "--by", help="Group repeats by class, family or name; or "
                          "compare positions with an in-context copy to those without."),
    z: float = Z, tail: Tail = TAIL, smooth: int = SMOOTH,
    score: Optional[str] = SCORE_COLUMN, column: Optional[str] = DEPRECATED_COLUMN,
    ablation_method: Optional[AblationMethod] = ABLATION_METHOD,
    format: Format = FORMAT,
    output: Optional[Path] = OUTPUT,
) -> None:
    """Odds ratio, Fisher p and BH q of anomalies inside vs outside each repeat group."""
    from seqatlas.query import enrichment as run

    table = run(atlas, by=by.value, params=anomaly_params(
        _score_column(score, column), z, tail, smooth, 1, 0, ablation_method))
    if table.num_rows and not any(table.column("anomalous_inside").to_pylist()) \
            and not table.column("anomalous_outside")[0].as_py():
        note(f"Note: no position has |z| >= {z:g} in the {tail.value} tail, so no odds "
             "ratio can be estimated; lower --z or use --tail both.")
    _emit(table, format, output, "groups",
          f"enrichment of anomalies (|z| >= {z:g}, tail {tail.value}) by {by.value}")


def _export(format: str, atlas, output, column, params, sort, chrom_names, region) -> None:
    from seqatlas.query import export

    result = export(atlas, format=format, output=output, column=column, params=params,
                    sort=sort.value, chrom_names=chrom_names.value, region=region)
    where = f", region {result['region']}" if result["region"] else ""
    typer.echo(f"{result['intervals']:,} intervals written to {result['output']} (sorted "
               f"{result['sort']}, names {result['chrom_names']}{where}).", err=True)


EXPORT_OUTPUT = typer.Option(..., "--output", "-o", help="File to write.")
TRACK_COLUMN = typer.Option("z", "--column", help="z, logp, logp_unmasked, logp_mean, "
                            "entropy, rank, ...; or, for an atlas that stores distributions "
                            "(ingest --distributions), mean_llr or min_llr: the mean or the "
                            "lowest LLR of the position's substitutions (a constraint track).")
EXPORT_SORT = typer.Option(SortOrder.lexicographic, "--sort", help="lexicographic: byte "
                           "order of the names, then start (LC_ALL=C sort -k1,1 -k2,2n, what "
                           "bedGraphToBigWig needs); natural: chr1, chr2, ..., chr10, chrX, "
                           "chrY, chrM, then the rest.")
EXPORT_NAMES = typer.Option(ChromNames.as_is, "--chrom-names", help="ucsc: chrX, chrM (adds "
                            "chr, MT -> chrM); ensembl: X, MT (strips chr, chrM -> MT); "
                            "as-is: the atlas's ids. --sort orders the names as written.")


@export_app.command("bedgraph")
def bedgraph(atlas: str = ATLAS, output: Path = EXPORT_OUTPUT, column: str = TRACK_COLUMN,
             smooth: int = SMOOTH, score: Optional[str] = SCORE_COLUMN,
             sort: SortOrder = EXPORT_SORT, chrom_names: ChromNames = EXPORT_NAMES,
             region: Optional[str] = EXPORT_REGION) -> None:
    """A bedGraph of a per-position column (runs of equal values merged).

    Example: seqatlas export bedgraph --atlas my_atlas --column logp --chrom-names ucsc
    -o logp.bedgraph"""
    _export("bedgraph", atlas, output, column,
            anomaly_params(score, 3.0, Tail.both, smooth, 1, 0), sort, chrom_names, region)


@export_app.command("bigwig")
def bigwig(atlas: str = ATLAS, output: Path = EXPORT_OUTPUT, column: str = TRACK_COLUMN,
           smooth: int = SMOOTH, score: Optional[str] = SCORE_COLUMN,
           sort: SortOrder = EXPORT_SORT, chrom_names: ChromNames = EXPORT_NAMES,
           region: Optional[str] = EXPORT_REGION) -> None:
    """A bigWig of a per-position column (needs pyBigWig); --column mean_llr or min_llr
    writes a constraint track from the stored distributions.

    Example: seqatlas export bigwig --atlas my_atlas --column z --chrom-names ucsc -o z.bw

    Example: seqatlas export bigwig --atlas my_atlas --column mean_llr -o constraint.bw"""
    _export("bigwig", atlas, output, column,
            anomaly_params(score, 3.0, Tail.both, smooth, 1, 0), sort, chrom_names, region)


@export_app.command("bed")
def bed(atlas: str = ATLAS, output: Path = EXPORT_OUTPUT, z: float = Z, tail: Tail = TAIL,
        min_length: int = MIN_LENGTH, max_gap: int = MAX_GAP, smooth: int = SMOOTH,
        column: Optional[str] = COLUMN, sort: SortOrder = EXPORT_SORT,
        chrom_names: ChromNames = EXPORT_NAMES, region: Optional[str] = EXPORT_REGION) -> None:
    """A BED6 of anomalous regions: name = tail, score = 100 x |peak z| (at most 1000).

    Example: seqatlas export bed --atlas my_atlas --z 2.5 --chrom-names ucsc -o regions.bed"""
    _export("bed", atlas, output, "z",
            anomaly_params(column, z, tail, smooth, min_length, max_gap), sort, chrom_names,
            region)


@query_app.command("knn")
def knn(
    atlas: str = ATLAS,
    kmer: Optional[list[str]] = typer.Option(
        None, "--kmer", help="A k-mer, embedded alone between the model's special tokens "
        "(neutral context); the query is the token nearest its centre. Repeatable."),
    at: Optional[list[str]] = typer.Option(
        None, "--at", help="SEQ:POS (0-based): the stored embedding of the token starting "
        "there; the token itself is left out of the hits. Repeatable."),
    sequence: Optional[list[str]] = typer.Option(
        None, "--sequence", help="A sequence embedded as given (your context); the query "
        "is the token nearest its centre, or the one at --offset. Repeatable."),
    offset: Optional[int] = typer.Option(None, "--offset", help="--sequence: query the token "
                                         "covering this 0-based base (for DNABERT, the k-mer "
                                         "starting there)."),
    k: int = typer.Option(10, "-k", "--k", help="Neighbours per query."),
    nprobe: Optional[int] = typer.Option(None, "--nprobe", help="IVF lists searched "
                                         "(default: the index's own)."),
    where: Optional[str] = typer.Option(
        None, "--where", help="SQL condition on the hits' columns (query, token_id, seq_id, "
        "start, \"end\", token, distance, logp, repeat_class), e.g. \"repeat_class IS NOT "
        "NULL\"; k rows that pass are returned when they exist."),
    index: str = typer.Option("default", "--index", help="Index name (seqatlas index build "
                              "--name)."),
    model: Optional[str] = typer.Option(None, "--model", help="Checkpoint to embed --kmer / "
                                        "--sequence with, when the one the atlas records has "
                                        "moved (its weights sha256 must match)."),
    format: Format = FORMAT,
    output: Optional[Path] = OUTPUT,
) -> None:
    """Nearest tokens of a k-mer, a stored token or a sequence in embedding space, with
    their place, likelihood and repeat class."""
    from seqatlas.query.neighbours import knn as run

    table = run(atlas, kmer=kmer, at=at, sequence=sequence, k=k, nprobe=nprobe, where=where,
                index=index, offset=offset, model=model)
    _note_pending(table)
    _emit(table, format, output, "hits", render=_print_knn)


def _note_pending(table) -> None:
    """The note a search leaves in its result's metadata (rows searched beside an index)."""
    text = (table.schema.metadata or {}).get(b"note", b"").decode()
    if text:
        note(f"Note: {text}.")


def _print_knn(table, console) -> None:
    _print_per_query(table, console, ["rank", "seq_id", "start", "end", "token", "distance",
                                      "logp", "repeat_class"], "nearest tokens of")


def _print_per_query(table, console, shown: list[str], title: str) -> None:
    """One rich table per query, without the columns its title already says."""
    import pyarrow.compute as pc

    queries = table.column("query")
    for query in dict.fromkeys(queries.to_pylist()):
        hits = table.filter(pc.equal(queries, query)).select(shown)
        console.print(arrow_rich_table(hits, f"{title} {query}"))


@query_app.command("similar")
def similar(
    atlas: str = ATLAS,
    seq_id: Optional[list[str]] = typer.Option(
        None, "--seq-id", help="A stored sequence (ID), or ID:START-END for the bins "
        "overlapping that span; its own row is left out of its hits. Repeatable."),
    sequence: Optional[list[str]] = typer.Option(
        None, "--sequence", help="Residues, embedded and pooled with the atlas's own model, "
        "windows and layers. Repeatable."),
    fasta: Optional[Path] = typer.Option(None, "--fasta", help="A FASTA file: each record is "
                                         "a query, embedded as --sequence."),
    k: int = typer.Option(10, "-k", "--k", help="Hits per query."),
    where: Optional[str] = typer.Option(
        None, "--where", help="SQL condition on the candidates (seq_id, start, \"end\", level, "
        "tokens, length, description, repeat_class), applied before ranking: the hits are "
        "exactly the filtered brute-force top k."),
    layer: Optional[int] = typer.Option(None, "--layer", help="A pooled layer (default: the "
                                        "first stored; negative counts back from the last)."),
    pooling: Pooling = typer.Option(Pooling.mean, "--pooling", help="mean, or bos (the "
                                    "BOS/CLS state, where the atlas pooled it)."),
    index: Optional[str] = typer.Option(None, "--index", help="A pooled index (`index build "
                                        "--level pooled`); default: exhaustive search."),
    metric: Metric = typer.Option(Metric.cosine, "--metric", help="cosine, ip or l2 for the "
                               "exhaustive search (an index keeps its own)."),
    nprobe: Optional[int] = typer.Option(None, "--nprobe", help="IVF lists searched "
                                         "(default: the index's own)."),
    model: Optional[str] = typer.Option(None, "--model", help="Checkpoint to embed --sequence "
                                        "/ --fasta with, when the one the atlas records has "
                                        "moved (its weights sha256 must match)."),
    format: Format = FORMAT,
    output: Optional[Path] = OUTPUT,
) -> None:
    """Nearest sequences (or genomic bins) of a sequence in pooled-embedding space, with
    their length, description, repeats and likelihood summary."""
    from seqatlas.query.sequence_search import similar as run

    table = run(atlas, seq_id=seq_id, sequence=sequence, fasta=fasta, k=k, where=where,
                layer=layer, pooling=pooling.value, index=index, metric=metric.value,
                nprobe=nprobe,
                model=model)
    note(f"searched: {(table.schema.metadata or {}).get(b'search', b'').decode()}")
    _note_pending(table)
    _emit(table, format, output, "hits", render=_print_similar)


def _print_similar(table, console) -> None:
    _print_per_query(table, console, ["rank", "seq_id", "start", "end", "distance", "length",
                                      "description", "repeat_class", "repeat_fraction",
                                      "logp", "n_anomalous"], "nearest of")


@query_app.command("identity")
def identity(
    atlas: str = ATLAS,
    sample: int = IDENTITY_SAMPLE, layer: Optional[list[int]] = IDENTITY_LAYER,
    k: int = IDENTITY_K, seed: int = IDENTITY_SEED, index: Optional[str] = IDENTITY_INDEX,
    nprobe: Optional[int] = IDENTITY_NPROBE,
    metric: str = typer.Option("cosine", "--metric", help="cosine, ip or l2, for the exact "
                               "in-memory search (a built index keeps its own)."),
    format: Format = FORMAT,
    output: Optional[Path] = OUTPUT,
) -> None:
    """Do neighbours in embedding space share the token (identity) or its neighbouring
    tokens (context)? Measured per stored layer, beside chance levels."""
    from seqatlas.query.identity_context import identity as run

    table = run(atlas, sample=sample, layers=list(layer) if layer else None, k=k, seed=seed,
                index=index, nprobe=nprobe, metric=metric)
    _emit(table, format, output, "layers", render=_print_identity)


def _print_identity(table, console) -> None:
    """Measured fractions beside their chance levels, one row per layer."""
    rows = table.to_pylist()
    first = rows[0] if rows else {"k": 0, "sample": 0}
    measures = ("identity", "context", "next", "prev")
    console.print(FittedTable(
        ("layer", *measures),
        ([str(row["layer"]), *(f"{row[m]:.3f} ({row[m + '_chance']:.3f})" for m in measures)]
         for row in rows),
        title=f"{first['k']} neighbours of {first['sample']:,} sampled tokens: measured "
        "(chance)", right=("layer", *measures)))
    for row in rows:
        console.print(f"layer {row['layer']}: column {row['column']}, neighbours from "
                      f"{row['neighbours']}", highlight=False)
    console.print("identity: neighbours with the same token; next/prev: with the same next "
                  "(preceding) non-overlapping token; context: either. Chance: random token "
                  "pairs, identity = sum_t f_t^2 over token frequencies, context = "
                  "P(next equal) + P(prev equal) - P(both).", highlight=False)
