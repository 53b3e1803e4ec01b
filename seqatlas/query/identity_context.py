"""Does an embedding encode a token's identity or its context? (Sanabria et al. 2024)

For a random sample of tokens and each stored layer: the k nearest neighbours of each
sampled token (itself left out) and

- ``identity``: the fraction of neighbours whose token text equals the query's;
- ``next`` / ``prev``: the fraction whose next non-overlapping token (the one starting at
  the neighbour's ``end``) equals the query's next token, or whose preceding one (the one
  ending at its ``start``) equals the query's preceding token (both must exist);
- ``context``: the fraction where either of these holds.

Chance levels are what a random pair of tokens (a, b), drawn independently from all tokens
of the atlas, scores: ``identity_chance = Σ_t f_t²`` with f_t the frequency of token text t;
``next_chance = Σ_u (n_u / N)²`` with n_u the number of tokens whose next token is u (N: all
tokens), ``prev_chance`` likewise, and ``context_chance = next_chance + prev_chance −
Σ_(p,u) (m_pu / N)²`` (inclusion-exclusion; m_pu counts tokens whose preceding token is p and
next is u). Neighbours come from a built index over the layer's column when there is one,
else from an exact in-memory FAISS Flat over that column, filled from the parts one batch
at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from seqatlas.store import AtlasReader
from seqatlas.errors import ConfigError
from seqatlas.index.search import METRICS, exact_search
from seqatlas.index.store import list_indexes, load_index
from seqatlas.index.vectors import (EmbeddingSource, column_layer, prepare, resolve_layer,
                                    stored_layers, to_float32)
from seqatlas.query.sandbox import Sandbox
from seqatlas.query.neighbours import require_embeddings

_CONTEXT_JOINS = """
    LEFT JOIN tokens nx ON nx.token_id = t.token_id + (t."end" - t.start)
                       AND nx.start = t."end"
    LEFT JOIN tokens pv ON pv.token_id + (pv."end" - pv.start) = t.token_id
                       AND pv."end" = t.start"""
# token_id = the sequence's global_start + start, so the token starting at t.end of the same
# sequence has token_id t.token_id + (t.end - t.start); the start/end equalities rule out a
# token of the neighbouring sequence. Integer keys keep both joins plain hash joins.


@dataclass
class IdentityConfig:
    """Sample size, neighbours and layers of the diagnostic."""

    sample: int = 1000  # tokens sampled (all of them when the atlas has fewer)
    k: int = 10  # neighbours per sampled token
    layers: list[int] | None = None  # stored layers to test; None: all of them
    seed: int = 0
    index: str | None = None  # use this index; None: any built index over the layer's column
    nprobe: int | None = None
    metric: str = "cosine"  # of the exact in-memory search (a built index keeps its own)

    def validate(self) -> None:
        if self.sample < 1 or self.k < 1:
            raise ConfigError("--sample and -k must be 1 or more")
        if self.metric not in METRICS:
            raise ConfigError(f"--metric must be one of {', '.join(METRICS)}, not "
                              f"{self.metric!r}")


def sample_rows(source: EmbeddingSource, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and float32 vectors of ``n`` tokens drawn uniformly without replacement,
    by rank in token_id order (so the sample does not depend on how the rows are laid out
    in parts: compaction keeps it), reading only the row groups that hold them."""
    total = source.total
    picks = np.sort(np.random.default_rng(seed).choice(total, size=min(n, total),
                                                       replace=False))
    groups = _groups_by_token_id(source)
    if groups is None:  # row groups overlap in token_id: one merged group per part
        return _sample_by_reading_all_ids(source, picks)
    ids, vectors, base = [], [], 0
    for path, handle, g, rows in groups:
        mine = picks[(picks >= base) & (picks < base + rows)] - base
        base += rows
        if not len(mine):
            continue
        table = handle.read_row_group(g, columns=["token_id", source.column])
        table = table.take(np.argsort(table["token_id"].to_numpy(), kind="stable")[mine])
        ids.append(table["token_id"].to_numpy())
        vectors.append(to_float32(table[source.column], source.dim, path))
    return np.concatenate(ids), np.concatenate(vectors)


def _sample_by_reading_all_ids(source: EmbeddingSource, picks: np.ndarray
                               ) -> tuple[np.ndarray, np.ndarray]:
    """The tokens at ranks ``picks`` in token_id order, reading every token_id."""
    every = [(path, source.atlas.open_part(path)) for path in source.parts]
    all_ids = np.concatenate([h.read(columns=["token_id"])["token_id"].to_numpy()
                              for _, h in every])
    chosen = set(all_ids[np.argsort(all_ids, kind="stable")[picks]].tolist())
    ids, vectors = [], []
    for path, handle in every:
        table = handle.read(columns=["token_id", source.column])
        mask = np.isin(table["token_id"].to_numpy(), list(chosen))
        if mask.any():
            table = table.filter(pa.array(mask))
            ids.append(table["token_id"].to_numpy())
            vectors.append(to_float32(table[source.column], source.dim, path))
    order = np.argsort(np.concatenate(ids), kind="stable")
    return np.concatenate(ids)[order], np.concatenate(vectors)[order]


def _groups_by_token_id(source: EmbeddingSource) -> list[tuple] | None:
    """Every row group of the tokens parts as (path, handle, index, rows), in token_id
    order: row groups of an ingest hold disjoint token_id ranges, so ordering them by their
    statistics orders the rows; None when ranges overlap."""
    groups = []
    for path in source.parts:
        handle = source.atlas.open_part(path)
        column = handle.schema_arrow.get_field_index("token_id")
        for g in range(handle.num_row_groups):
            meta = handle.metadata.row_group(g)
            stats = meta.column(column).statistics
            low, high = (stats.min, stats.max) if stats is not None and stats.has_min_max \
                else (None, None)
            groups.append((low, high, str(path), path, handle, g, meta.num_rows))
    groups.sort(key=lambda x: (x[0] is None, x[0] if x[0] is not None else 0, x[2], x[5]))
    for before, after in zip(groups, groups[1:]):
        if before[1] is None or after[0] is None or before[1] >= after[0]:
            return None
    return [(path, handle, g, rows) for _, _, _, path, handle, g, rows in groups]


def _without_self(found: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """Each row's first k ids other than the query's own (-1 where fewer were found)."""
    out = np.full((len(found), k), -1, dtype=np.int64)
    for i, row in enumerate(found):
        rest = row[(row != own[i]) & (row >= 0)][:k]
        out[i, : len(rest)] = rest
    return out


def _context(engine, token_ids: np.ndarray) -> dict[int, tuple]:
    """token_id -> (token, next token, preceding token) for the given ids."""
    engine.con.register("identity_ids", pa.table({"token_id": np.unique(token_ids)}))
    rows = engine.execute_internal(f"""
        SELECT t.token_id, t.token, nx.token, pv.token
        FROM (SELECT t.* FROM tokens t SEMI JOIN identity_ids i ON t.token_id = i.token_id) t
        {_CONTEXT_JOINS}""").fetchall()
    return {r[0]: r[1:] for r in rows}


def chance_levels(engine) -> dict[str, float]:
    """Identity, next, preceding and context agreement of random token pairs."""
    n, identity = engine.execute_internal(
        "SELECT sum(c)::DOUBLE, sum(c * c)::DOUBLE FROM "
        "(SELECT count(*) AS c FROM tokens GROUP BY token)").fetchall()[0]
    engine.execute_internal(f"""CREATE OR REPLACE TEMP TABLE identity_pairs AS
        SELECT nx.token AS next, pv.token AS prev, count(*) AS n FROM tokens t {_CONTEXT_JOINS}
        GROUP BY ALL""")
    next_, prev, both = engine.execute_internal("""SELECT
        (SELECT sum(c * c)::DOUBLE FROM (SELECT sum(n) AS c FROM identity_pairs
                                         WHERE next IS NOT NULL GROUP BY next)),
        (SELECT sum(c * c)::DOUBLE FROM (SELECT sum(n) AS c FROM identity_pairs
                                         WHERE prev IS NOT NULL GROUP BY prev)),
        (SELECT sum(n * n)::DOUBLE FROM identity_pairs
         WHERE next IS NOT NULL AND prev IS NOT NULL)""").fetchall()[0]
    square = n * n
    next_, prev, both = (v or 0.0 for v in (next_, prev, both))
    return {"identity": identity / square, "next": next_ / square, "prev": prev / square,
            "context": (next_ + prev - both) / square}


def _find_index(atlas: AtlasReader, column: str, name: str | None):
    """A built index over ``column`` (the one named, or any), or None."""

    if name is not None:
        index = load_index(atlas, name=name)
        if index.column != column:
            raise ConfigError(f"index {name!r} is over {index.column!r}, not {column!r}; "
                              "choose the layer it was built from, or another --index")
        return name, index
    for meta in list_indexes(atlas):
        if meta.get("column") == column:
            return meta["name"], load_index(atlas, name=meta["name"])
    return None


def identity(atlas, *, config: IdentityConfig | None = None, **options) -> pa.Table:
    """One row per tested layer: identity, next, prev and context agreement of the sampled
    tokens' neighbours, beside their chance levels; see the module docstring."""

    config = config or IdentityConfig(**options)
    config.validate()
    atlas = atlas if isinstance(atlas, AtlasReader) else AtlasReader(atlas)
    require_embeddings(atlas)
    columns = stored_layers(atlas)
    if config.layers is not None:  # in the order given, each once
        layers = list(dict.fromkeys(resolve_layer(atlas, value) for value in config.layers))
    elif config.index is not None:  # the layer the named index was built from
        built = {meta["name"]: meta["column"] for meta in list_indexes(atlas)}
        layer = column_layer(atlas, built.get(config.index))
        layers = list(columns) if layer is None else [layer]
    else:
        layers = list(columns)
    # opened first: an atlas without tokens (or vectors) is an error before any query runs
    sources = {layer: EmbeddingSource.open(atlas, columns[layer]) for layer in layers}
    rows = []
    with Sandbox(atlas) as engine:
        chance = chance_levels(engine)
        for layer in layers:
            column = columns[layer]
            own, queries = sample_rows(sources[layer], config.sample, config.seed)
            built = _find_index(atlas, column, config.index)
            if built is not None:
                name, index = built
                _, found = index.search(queries, config.k + 1, nprobe=config.nprobe)
                source = f"index {name!r} ({index.meta.get('type')}, " \
                         f"{index.meta.get('metric')})"
            else:
                metric = config.metric
                _, found = exact_search(prepare(queries, metric),
                                        ((ids, prepare(x, metric))
                                         for ids, x in sources[layer].batches()),
                                        config.k + 1, metric)
                source = f"exact in-memory Flat ({config.metric})"
            neighbours = _without_self(found, own, config.k)
            info = _context(engine, np.concatenate([own, neighbours[neighbours >= 0]]))
            rows.append({"layer": layer, "column": column, "neighbours": source,
                         "sample": len(own), "k": config.k,
                         **_agreement(info, own, neighbours, chance)})
    return pa.Table.from_pylist(rows)


def _agreement(info: dict, own: np.ndarray, neighbours: np.ndarray, chance: dict) -> dict:
    same = {"identity": [], "next": [], "prev": [], "context": []}
    for q, row in zip(own, neighbours):
        token, nxt, prv = info[int(q)]
        for nb in row[row >= 0]:
            nb_token, nb_next, nb_prev = info[int(nb)]
            next_match = nxt is not None and nb_next == nxt
            prev_match = prv is not None and nb_prev == prv
            same["identity"].append(nb_token == token)
            same["next"].append(next_match)
            same["prev"].append(prev_match)
            same["context"].append(next_match or prev_match)
    out = {}
    for name in ("identity", "context", "next", "prev"):
        out[name] = float(np.mean(same[name])) if same[name] else float("nan")
        out[f"{name}_chance"] = chance[name]
    return out
