"""``seqatlas index build|list``: FAISS indexes over an atlas's token embeddings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from seqatlas.cli.options import ATLAS, IndexType, Metric, address_option, json_option
from seqatlas.util import format_size

index_app = typer.Typer(help="Nearest-neighbour indexes (FAISS) over the token embeddings.",
                        no_args_is_help=True)


@index_app.command("build")
def build(
    atlas: Path = ATLAS,
    name: str = typer.Option("default", "--name", help="Index name (ATLAS/index/NAME/)."),
    type: IndexType = typer.Option(IndexType.auto, "--type", help="auto: Flat below 1M "
                                   "vectors, else IVF-PQ sized to the machine's memory."),
    metric: Metric = typer.Option(Metric.cosine, "--metric", help="cosine (inner product of "
                                  "normalised vectors), ip, or l2 (squared distances)."),
    column: str = typer.Option("embedding", "--column", help="Tokens embedding column "
                               "(embedding_layer_L for a further stored layer L)."),
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
    as_json: bool = json_option("Print the index meta as JSON."),
) -> None:
    """Build (or rebuild) an embedding index; token_ids are its vector ids."""
    from seqatlas.index import build_index

    meta = build_index(atlas, name=name, type=type.value, metric=metric.value, column=column,
                       nlist=nlist, m=m, nbits=nbits, efconstruction=efconstruction,
                       sample=sample, recall_target=recall_target, gpu=gpu, shards=shards,
                       address=address, progress=not as_json)
    if as_json:
        print(json.dumps(meta, indent=1, sort_keys=True))
        return
    print_build(meta)


def print_build(meta: dict, console: Console | None = None) -> None:

    console = console or Console()
    search = meta["search"]
    console.print(f"[bold]index[/] {meta['name']!r}: {meta['type']} ({meta['factory']}), "
                  f"metric {meta['metric']}, {meta['ntotal']:,} vectors of {meta['dim']} "
                  f"from column {meta['column']!r}", highlight=False)
    console.print(f"why: {meta['reason']}", highlight=False)
    tuned = "" if "parameter" not in search else (
        f" at {search['parameter']} {search[search['parameter']]} (calibrated on "
        f"{search['queries']} queries)")
    console.print(f"recall@10 vs exact search: {search['recall_at_10']:.3f}{tuned}; "
                  f"{format_size(meta['bytes'])} on disk, {meta['bytes_per_vector']:.1f} bytes/vector;"
                  f" built in {meta['build_seconds']:.1f} s on {meta['device']}",
                  highlight=False)
    if "warning" in search:
        console.print(f"[yellow]warning:[/] {search['warning']}", highlight=False)


@index_app.command("list")
def list_(
    atlas: Path = ATLAS,
    as_json: bool = json_option("Print as JSON."),
) -> None:
    """The atlas's embedding indexes: name, type, metric, column, vectors, size."""
    from seqatlas.index import list_indexes

    rows = list_indexes(atlas)
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    if not rows:
        print(f"no indexes; build one with `seqatlas index build --atlas {atlas}`")
        return
    header = ("name", "type", "metric", "column", "dim", "vectors", "size", "B/vector")
    lines = [header] + [(r["name"], r["type"], r["metric"], r["column"], str(r["dim"]),
                         f"{r['ntotal']:,}", format_size(r["bytes"]), f"{r['bytes_per_vector']:.1f}")
                        for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(cell.ljust(w) if i < 4 else cell.rjust(w)
                        for i, (cell, w) in enumerate(zip(line, widths))).rstrip())
