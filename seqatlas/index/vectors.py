"""Embeddings streamed from the committed ``tokens`` parts (one vector per token, id
``token_id``) or ``pooled`` parts (the rows of one pooling and layer, id ``pool_id``), batch
by batch, as float32.

Memory stays at one batch (plus a training sample), whatever the size of the atlas.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa

from seqatlas import schema
from seqatlas.store import AtlasReader
from seqatlas.errors import AtlasIndexError, ConfigError

BATCH_ROWS = 65536
LEVELS = ("tokens", "pooled")  # the table an index is built over
ID_COLUMNS = {"tokens": "token_id", "pooled": "pool_id"}
POOLED_VECTORS = "vector"  # the pooled table's vector column


def table_fingerprint(atlas: AtlasReader, table: str) -> str:
    """sha256 of what ``table`` holds: the units whose rows it holds and its row count, so
    that compaction (which rewrites the parts, not the rows) keeps an index."""
    parts = atlas.manifest.table_parts(table).values()
    units = sorted(u for meta in parts for u in meta.covered_units())
    text = "\n".join(units) + f"\nrows\t{sum(meta.rows for meta in parts)}"
    return "units:" + hashlib.sha256(text.encode()).hexdigest()


def tokens_fingerprint(atlas: AtlasReader) -> str:
    """:func:`table_fingerprint` of the tokens table."""
    return table_fingerprint(atlas, "tokens")


def legacy_tokens_fingerprint(atlas: AtlasReader) -> str:
    """The fingerprint index builds recorded before compaction existed (part names, rows
    and bytes): an index built then is still current while its parts are unchanged."""
    parts = atlas.manifest.table_parts("tokens")
    text = "\n".join(f"{name}\t{meta.rows}\t{meta.bytes}"
                     for name, meta in sorted(parts.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def stored_layers(atlas: AtlasReader) -> dict[int, str]:
    """Stored hidden layer -> tokens column, in the order the layers were requested (the
    first is ``embedding``); empty when the atlas stores no embeddings."""
    scoring = atlas.manifest.scoring
    return scoring.embedding_columns() if scoring else {}


def column_layer(atlas: AtlasReader, column: str | None) -> int | None:
    """The hidden layer stored in tokens column ``column`` (``embedding``: the first
    requested layer); None when the atlas stores no such column."""
    return next((layer for layer, name in stored_layers(atlas).items() if name == column), None)


def resolve_layer(atlas: AtlasReader, layer: int) -> int:
    """The stored layer that ``layer`` names (negative: counted back from the model's last,
    -1 being the last); its column is ``stored_layers(atlas)[layer]``.

    Raises ConfigError naming the stored layers when the atlas does not store it.
    """
    columns = stored_layers(atlas)
    num_layers = atlas.manifest.model.num_layers if atlas.manifest.model else None
    resolved = layer + num_layers + 1 if layer < 0 and num_layers is not None else layer
    if resolved not in columns:
        stored = f"layer(s) {', '.join(map(str, columns))} only" if columns else \
            "no embeddings"
        raise ConfigError(f"--layer {layer}: {atlas.path} stores {stored}")
    return resolved


@dataclass
class EmbeddingSource:
    """The vectors of one embedding column of an atlas's tokens table, or (``table``
    "pooled") the pooled rows of one pooling and layer (``where``)."""

    atlas: AtlasReader
    column: str
    dim: int
    parts: list[Path]
    rows: list[int]  # vectors per part (tokens: from the manifest)
    table: str = "tokens"
    id_column: str = "token_id"
    where: tuple[str, int] | None = None  # pooled: (pooling, layer) of the rows

    @classmethod
    def open(cls, atlas: AtlasReader, column: str = "embedding", *, level: str = "tokens",
             pooling: str = "mean") -> EmbeddingSource:
        """The vectors of tokens ``column``, or with ``level`` "pooled" the ``pooling`` rows
        of the layer that ``column`` stores."""
        if level not in LEVELS:
            raise ConfigError(f"--level {level!r}: choose one of {', '.join(LEVELS)}")
        if not (atlas.manifest.scoring and atlas.manifest.scoring.embeddings):
            raise AtlasIndexError(f"{atlas.path} stores no embeddings; ingest with "
                                  "`--embeddings float16` to build an index")
        if level == "pooled":
            return cls._open_pooled(atlas, column, pooling)
        parts = atlas.part_paths("tokens")
        if not parts:
            raise AtlasIndexError(f"{atlas.path} has no tokens yet; run `seqatlas ingest` first")
        arrow_schema = atlas.open_part(parts[0]).schema_arrow
        names = [f.name for f in arrow_schema if pa.types.is_fixed_size_list(f.type)]
        if column not in names:
            raise AtlasIndexError(f"tokens has no embedding column {column!r}; "
                                  f"choose one of: {', '.join(names) or '(none)'}")
        dim = arrow_schema.field(column).type.list_size
        counts = atlas.manifest.table_parts("tokens")
        return cls(atlas, column, dim, parts, [counts[p.name].rows for p in parts])

    @classmethod
    def _open_pooled(cls, atlas: AtlasReader, column: str, pooling: str) -> EmbeddingSource:
        if pooling not in schema.POOLINGS:
            raise ConfigError(f"--pooling {pooling!r}: choose one of "
                              f"{', '.join(schema.POOLINGS)}")
        layer = column_layer(atlas, column)
        if layer is None:
            names = ", ".join(stored_layers(atlas).values()) or "(none)"
            raise AtlasIndexError(f"tokens has no embedding column {column!r}; "
                                  f"choose one of: {names}")
        pool = f"`seqatlas pool --atlas {atlas.path}`"
        parts = atlas.part_paths("pooled")
        if not parts:
            raise AtlasIndexError(f"{atlas.path} has no pooled embeddings yet; compute them "
                                  f"with {pool} first")
        field = atlas.open_part(parts[0]).schema_arrow
        if POOLED_VECTORS not in field.names or \
                not pa.types.is_fixed_size_list(field.field(POOLED_VECTORS).type):
            raise AtlasIndexError(f"{parts[0]}: the pooled rows have no vectors; pool an "
                                  "atlas that stores embeddings")
        dim = field.field(POOLED_VECTORS).type.list_size
        source = cls(atlas, POOLED_VECTORS, dim, parts, [], table="pooled",
                     id_column=ID_COLUMNS["pooled"], where=(pooling, layer))
        source.rows = [int(source._mask(atlas.open_part(p).read(
            columns=["pooling", "layer"])).sum()) for p in parts]
        if not source.total:
            raise AtlasIndexError(f"{atlas.path} has no {pooling}-pooled rows of layer {layer} "
                                  f"({column}); compute them with {pool} first")
        return source

    @property
    def total(self) -> int:
        return sum(self.rows)

    @property
    def noun(self) -> str:
        """What a row is, for messages: "token" or "pooled"."""
        return "token" if self.table == "tokens" else self.table

    def units(self) -> list[str]:
        """Every unit whose rows the parts hold (the manifest's records), sorted."""
        records = self.atlas.manifest.table_parts(self.table)
        return sorted({u for p in self.parts for u in records[p.name].covered_units()})

    def _mask(self, batch) -> np.ndarray:
        """Which rows of ``batch`` (with pooling, layer columns) are this source's."""
        import pyarrow.compute as pc

        pooling, layer = self.where
        return pc.and_(pc.equal(batch.column("pooling"), pooling),
                       pc.equal(batch.column("layer"), layer)).to_numpy(zero_copy_only=False)

    def _handle(self, path: Path):
        handle = self.atlas.open_part(path)
        field = handle.schema_arrow.field(self.column) \
            if self.column in handle.schema_arrow.names else None
        if field is None or getattr(field.type, "list_size", None) != self.dim:
            raise AtlasIndexError(f"{path}: no {self.dim}-d column {self.column!r}; the "
                                  "atlas's parts disagree, re-ingest it")
        return handle

    def ids(self, path: Path) -> np.ndarray:
        """The ids of this source's rows in part ``path``, in row order."""
        columns = [self.id_column] + (["pooling", "layer"] if self.where else [])
        table = self.atlas.open_part(path).read(columns=columns)
        ids = table.column(0).to_numpy()
        return ids[self._mask(table)] if self.where else ids

    def batches(self, parts: list[Path] | None = None, batch_rows: int = BATCH_ROWS
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids int64, vectors float32 (n, dim)) per batch, parts in order."""
        columns = [self.id_column, self.column] + (["pooling", "layer"] if self.where else [])
        for path in self.parts if parts is None else parts:
            handle = self._handle(path)
            for batch in handle.iter_batches(batch_size=batch_rows, columns=columns):
                if self.where:
                    batch = batch.filter(pa.array(self._mask(batch)))
                    if not batch.num_rows:
                        continue
                yield batch.column(0).to_numpy(), to_float32(batch.column(1), self.dim, path)

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` vectors drawn uniformly without replacement (all of them if fewer)."""
        total = self.total
        if n >= total:
            return np.concatenate([x for _, x in self.batches()]) if total else \
                np.empty((0, self.dim), np.float32)
        chosen = np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False))
        out = np.empty((n, self.dim), np.float32)
        filled, offset = 0, 0
        for _, x in self.batches():
            lo = np.searchsorted(chosen, offset)
            hi = np.searchsorted(chosen, offset + len(x))
            out[filled : filled + hi - lo] = x[chosen[lo:hi] - offset]
            filled += hi - lo
            offset += len(x)
            if filled == n:
                break
        return out


def to_float32(column: pa.Array, dim: int, where: Path | str = "") -> np.ndarray:
    """A fixed_size_list<float16> column as a C-contiguous (n, dim) float32 array."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if column.null_count:
        raise AtlasIndexError(f"{where}: {column.null_count} token rows have no embedding; "
                              "re-ingest with `--embeddings float16`")
    values = column.flatten().to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(values.reshape(len(column), dim), dtype=np.float32)


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), float32."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1).astype(np.float32)


def prepare(x: np.ndarray, metric: str) -> np.ndarray:
    """Vectors as an index of ``metric`` holds and is searched with them: C-contiguous
    float32, rows normalised for cosine."""
    return normalise(x) if metric == "cosine" else np.ascontiguousarray(x, dtype=np.float32)
