"""``seqatlas index build|update|list``: FAISS indexes over an atlas's token (or pooled)
embeddings."""

from __future__ import annotations

import json
from typing import Optional

import pyarrow as pa
import typer
from rich.console import Console

from seqatlas.cli.options import (ATLAS, NO_PROGRESS, PROGRESS, IndexType, Level, Metric,
                                  Pooling, Progress, address_option, json_option)
from seqatlas.cli.options import LIST_FORMAT, Format
from seqatlas.cli.tables import FittedTable, chosen_format, note, print_table
from seqatlas.util import format_size


index_app = typer.Typer(help="Nearest-neighbour indexes (FAISS) over the token or pooled "
                        "embeddings.", no_args_is_help=True)


@index_app.command("build")
def build(
    atlas: str = ATLAS,
    name: str = typer.Option("default", "--name", help="Index name: its files go in the "
                             "atlas, under index/NAME."),
    type: IndexType = typer.Option(IndexType.auto, "--type", help="auto: Flat below 1M "
                                   "vectors, else IVF-PQ sized to the machine's memory."),
    metric: Metric = typer.Option(Metric.cosine, "--metric", help="cosine (inner product of "
                                  "normalised vectors), ip, or l2 (squared distances)."),
    column: str = typer.Option("embedding", "--column", help="Tokens embedding column "
                               "(embedding_layer_L for a further stored layer L); with "
                               "--level pooled, the layer whose pooled rows are indexed."),
    level: Level = typer.Option(Level.tokens, "--level", help="tokens: one vector per token "
                                "(ids: token_id); pooled: the pooled rows of --pooling and "
                                "the --column layer (ids: pool_id; see `seqatlas pool`)."),
    pooling: Pooling = typer.Option(Pooling.mean, "--pooling", help="--level pooled: mean "
                                    "or bos rows."),
    nlist: Optional[int] = typer.Option(None, "--nlist", help="IVF lists (default ~4 sqrt(N))."),
    m: Optional[int] = typer.Option(None, "--m", help="ivf-pq: code bytes per vector (default "
                                    "48; vectors are PCA-rotated to 2 m dimensions when "
                                    "wider); hnsw: neighbours per node (default 32)."),
    nbits: int = typer.Option(8, "--nbits", help="ivf-pq: bits per PQ sub-quantizer code."),
    efconstruction: int = typer.Option(40, "--efconstruction", help="hnsw: build-time beam."),
    sample: Optional[int] = typer.Option(None, "--sample", help="Training vectors (default "
                                         "max(65,536, 40 nlist))."),
    recall_target: float = typer.Option(0.95, "--recall-target", help="Search settings are "
                                        "calibrated to reach this recall@10."),
    gpu: Optional[bool] = typer.Option(None, "--gpu/--no-gpu", help="Train and add on GPUs "
                                       "(default: when FAISS sees one; `gpu` extra)."),
    shards: Optional[int] = typer.Option(None, "--shards", help="Add the tokens parts in this "
                                         "many parallel Ray tasks, then merge."),
    address: Optional[str] = address_option("Ray cluster address for --shards (default: a "
                                            "local Ray)."),
    progress: Progress = PROGRESS,
    no_progress: bool = NO_PROGRESS,
    as_json: bool = json_option("Print the index meta as JSON."),
) -> None:
    """Build (or rebuild) an embedding index from scratch; token_ids (pooled: pool_ids) are
    its vector ids."""
    from seqatlas.index import build_index

    meta = build_index(atlas, name=name, type=type.value, metric=metric.value, column=column,
                       level=level.value, pooling=pooling.value,
                       nlist=nlist, m=m, nbits=nbits, efconstruction=efconstruction,
                       sample=sample, recall_target=recall_target, gpu=gpu, shards=shards,
                       address=address,
                       progress="none" if as_json else progress)
    if as_json:
        print(json.dumps(meta, indent=1, sort_keys=True))
        return
    print_build(meta)


def print_build(meta: dict, console: Console | None = None) -> None:
    """What a build made: type, size, why, the calibrated recall."""
    console = console or Console()
    _print_header(meta, console)
    console.print(f"why: {meta['reason']}", highlight=False)
    _print_recall(meta, f"built in {meta['build_seconds']:.1f} s on {meta['device']}", console)


def _print_header(meta: dict, console: Console) -> None:
    console.print(f"[bold]index[/] {meta['name']!r}: {meta['type']} ({meta['factory']}), "
                  f"metric {meta['metric']}, {meta['ntotal']:,} vectors of {meta['dim']} "
                  f"from column {meta['column']!r}", highlight=False)


def _print_recall(meta: dict, timing: str, console: Console) -> None:
    search = meta["search"]
    tuned = "" if "parameter" not in search else (
        f" at {search['parameter']} {search[search['parameter']]} (calibrated on "
        f"{search['queries']} queries)")
    console.print(f"recall@10 vs exact search: {search['recall_at_10']:.3f}{tuned}; "
                  f"{format_size(meta['bytes'])} on disk, {meta['bytes_per_vector']:.1f} bytes/vector;"
                  f" {timing}", highlight=False)
    if "warning" in search:
        console.print(f"[yellow]warning:[/] {search['warning']}", highlight=False)


@index_app.command("update")
def update(
    atlas: str = ATLAS,
    name: str = typer.Option("default", "--name", help="The index to update."),
    recall_target: Optional[float] = typer.Option(None, "--recall-target", help="Search "
                                                  "settings are calibrated again to reach "
                                                  "this recall@10 (default: the build's)."),
    progress: Progress = PROGRESS,
    no_progress: bool = NO_PROGRESS,
    as_json: bool = json_option("Print the index meta (with `added`) as JSON."),
) -> None:
    """Add the rows ingested since an index was built to it, keeping its training (IVF
    lists, PCA, PQ codebooks; Flat and HNSW append), and calibrate its search again."""
    from seqatlas.index import update_index

    meta = update_index(atlas, name=name, recall_target=recall_target,
                        progress="none" if as_json else progress)
    if as_json:
        print(json.dumps(meta, indent=1, sort_keys=True))
        return
    print_update(meta)


def print_update(meta: dict, console: Console | None = None) -> None:
    """What an update did: nothing (the index was current), or the rows it added."""
    console = console or Console()
    if not meta["added"]:
        console.print(f"index {meta['name']!r} is up to date ({meta['ntotal']:,} vectors); "
                      "nothing was added or written", highlight=False)
        return
    _print_header(meta, console)
    update = meta["last_update"]
    _print_recall(meta, f"{meta['added']:,} rows added in {update['seconds']:.1f} s",
                  console)


@index_app.command("list")
def list_(
    atlas: str = ATLAS,
    format: Format = LIST_FORMAT,
    as_json: bool = json_option("Same as --format json."),
) -> None:
    """The atlas's embedding indexes: name, type, metric, column, dim, ntotal (vectors),
    bytes, bytes_per_vector, built.

    Example: seqatlas index list --atlas my_atlas --format json
    """
    from seqatlas.index import list_indexes

    rows = list_indexes(atlas)
    if not rows:
        note(f"no indexes; build one with `seqatlas index build --atlas {atlas}`")
    print_table(pa.Table.from_pylist(rows, schema=INDEX_LIST_SCHEMA),
                chosen_format(format, as_json), render=_print_indexes)


# the columns of `index list` (seqatlas.index.list_indexes), also when there is no index
INDEX_LIST_SCHEMA = pa.schema([("name", pa.string()), ("type", pa.string()),
                               ("metric", pa.string()), ("column", pa.string()),
                               ("dim", pa.int64()), ("ntotal", pa.int64()),
                               ("bytes", pa.int64()), ("bytes_per_vector", pa.float64()),
                               ("built", pa.string())])


def _print_indexes(table, console) -> None:
    if not table.num_rows:
        return
    numbers = ("dim", "vectors", "size", "B/vector")
    console.print(FittedTable(
        ("name", "type", "metric", "column", *numbers),
        ([r["name"], r["type"], r["metric"], r["column"], str(r["dim"]), f"{r['ntotal']:,}",
          format_size(r["bytes"]), f"{r['bytes_per_vector']:.1f}"] for r in table.to_pylist()),
        title="indexes", right=numbers, keys=("name", "column")))
