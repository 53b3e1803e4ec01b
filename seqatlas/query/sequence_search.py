"""Sequence search over pooled embeddings: the sequences (or genomic bins) nearest a query.

A query is a stored sequence (``seq_id``, or ``SEQ:START-END`` for the bins overlapping that
span) or new residues (``sequence``, ``fasta``), embedded with the atlas's own model and
settings: the same windows, layers and pooling as its ingest (:mod:`seqatlas.scoring.pooling`),
so residues identical to a stored sequence get its stored vector (up to float16 rounding).
A bin-level atlas gives one query per bin of the residues.

Candidates are the pooled rows of one pooling and layer. They are searched exhaustively
(exact, the default), or through a pooled index (``index``: rows added since its build are
searched exhaustively too). ``where`` filters the candidates *before* ranking (an SQL
condition over the hit columns below): the filtered rows are searched exhaustively, so the
result is exactly the filtered brute-force top k, whatever the index.

Hits are joined to ``sequences`` (length, description), to the repeats overlapping them
(``repeat_class``: their classes; ``repeat_fraction``: the share of the hit's bases inside
any repeat, whatever the annotation's format) and to their positions (``logp``: the mean score; ``n_anomalous``: the
positions with |z| >= 3, the robust z of ``query anomalies``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from seqatlas import schema
from seqatlas.errors import ConfigError
from seqatlas.fasta import NUCLEOTIDE_LETTERS, PROTEIN_LETTERS
from seqatlas.store import AtlasReader
from seqatlas.index.search import METRICS, exact_search
from seqatlas.index.vectors import prepare, resolve_layer, to_float32
from seqatlas.query.neighbours import check_predicate, filter_statement
from seqatlas.query.views import AnomalyParams, repeat_overlaps_sql

OUTPUT_COLUMNS = ("query", "rank", "seq_id", "start", "end", "distance", "length",
                  "description", "tokens", "repeat_class", "repeat_fraction", "logp",
                  "n_anomalous")
HIT_COLUMNS = ("pool_id", "seq_id", "start", "end", "level", "tokens", "length", "description",
               "repeat_class")


@dataclass
class SimilarConfig:
    """How many hits, over which pooled vectors, searched how."""

    k: int = 10
    where: str | None = None  # SQL condition over the hit columns, applied before ranking
    layer: int | None = None  # a stored layer (default: the first); negative: from the last
    pooling: str = "mean"  # mean | bos
    index: str | None = None  # a pooled index's name; None: exhaustive search
    metric: str = "cosine"  # exhaustive search's metric (an index uses its own)
    nprobe: int | None = None
    model: str | None = None  # checkpoint to embed new residues with; None: the atlas's

    def validate(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ConfigError(f"-k must be a positive number of hits, not {self.k!r}")
        if self.pooling not in schema.POOLINGS:
            raise ConfigError(f"--pooling must be one of {', '.join(schema.POOLINGS)}, not "
                              f"{self.pooling!r}")
        if self.metric not in METRICS:
            raise ConfigError(f"--metric must be one of {', '.join(METRICS)}, not "
                              f"{self.metric!r}")
        if self.where is not None:
            check_predicate(self.where)


@dataclass
class Queries:
    labels: list[str]
    vectors: np.ndarray  # (n, dim) float32
    exclude: list[int | None]  # a stored query's own pool_id, left out of its hits


# -- candidates ------------------------------------------------------------------------------

def _require_pooled(atlas: AtlasReader, config: SimilarConfig) -> int:
    """The resolved layer; refuses an atlas without pooled rows of it."""
    if not atlas.manifest.pooling or not atlas.count("pooled"):
        raise ConfigError(f"{atlas.path} has no pooled embeddings; make them from its stored "
                          f"token embeddings with `seqatlas pool --atlas {atlas.path}`")
    layer = resolve_layer(atlas, config.layer if config.layer is not None else
                          atlas.manifest.pooling["layers"][0])
    pooling = atlas.manifest.pooling
    if layer not in pooling["layers"] or config.pooling not in pooling["poolings"]:
        raise ConfigError(f"{atlas.path} pools {', '.join(pooling['poolings'])} of layer(s) "
                          f"{', '.join(map(str, pooling['layers']))}; choose one of those "
                          f"(--pooling {config.pooling}, --layer {layer} is not stored)")
    return layer


def candidate_vectors(atlas: AtlasReader, layer: int, pooling: str,
                      allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(pool_ids int64, float32 vectors) of the pooled rows of ``pooling`` and ``layer`` (only
    ``allowed`` ids, sorted, when given), in pool_id order."""
    import pyarrow.compute as pc

    table = atlas.pooled(["pool_id", "pooling", "layer", "vector"])
    keep = pc.and_(pc.equal(table.column("pooling"), pooling),
                   pc.equal(table.column("layer"), layer))
    table = table.filter(keep)
    ids = table.column("pool_id").to_numpy()
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    if allowed is not None:
        chosen = np.isin(ids, allowed)
        order, ids = order[chosen], ids[chosen]
    column = table.column("vector").combine_chunks().take(pa.array(order))
    dim = atlas.manifest.model.hidden_size
    return ids, to_float32(column, dim, atlas.path / "pooled") if len(ids) else \
        np.empty((0, dim), np.float32)


def _create_candidates(engine, layer: int, pooling: str) -> None:
    """The temp view ``similar_candidates``: pooled rows of one layer and pooling with the
    hit columns (no vector)."""
    overlaps = repeat_overlaps_sql(
        f"SELECT pool_id, seq_id, start, \"end\" FROM pooled WHERE layer = {int(layer)} "
        f"AND pooling = '{pooling}'")
    engine.fetch_internal(f"""CREATE OR REPLACE TEMP VIEW similar_candidates AS
        WITH rc AS (SELECT pool_id, string_agg(DISTINCT repeat_class, ',' ORDER BY repeat_class)
                           AS repeat_class FROM ({overlaps}) GROUP BY pool_id)
        SELECT p.pool_id, p.seq_id, p.start, p."end", p.level, p.tokens, s.length,
               s.description, rc.repeat_class
        FROM pooled p JOIN sequences s USING (seq_id) LEFT JOIN rc USING (pool_id)
        WHERE p.layer = {int(layer)} AND p.pooling = '{pooling}'""")


def allowed_ids(engine, predicate: str) -> np.ndarray:
    """Sorted pool_ids of the candidates passing ``predicate`` (checked to be one plain
    condition, run in the sandbox)."""
    engine.fetch_internal("CREATE OR REPLACE TEMP VIEW hits_joined AS "
                          "SELECT * FROM similar_candidates")
    rows = engine.run(filter_statement(engine, predicate))
    return np.unique(rows.column("pool_id").to_numpy())


# -- queries ---------------------------------------------------------------------------------

def parse_span(text: str) -> tuple[str, int | None, int | None]:
    """``ID`` or ``ID:START-END`` (0-based, half-open)."""
    seq_id, sep, span = text.rpartition(":")
    if sep and "-" in span:
        lo, _, hi = span.partition("-")
        if lo.strip().isdigit() and hi.strip().isdigit() and int(lo) < int(hi):
            return seq_id, int(lo), int(hi)
    return text, None, None


def stored_queries(engine, atlas: AtlasReader, ids: list[str], layer: int,
                   pooling: str) -> Queries:
    """The stored pooled vectors of ``ids`` (whole sequences, or the bins overlapping
    ``ID:START-END``), looked up in one pass whatever their number."""
    spans = [parse_span(text) for text in ids]
    engine.con.register("similar_wanted", pa.table({
        "seq_id": pa.array(sorted({s for s, _, _ in spans}), pa.string())}))
    lengths = dict(engine.execute_internal(
        "SELECT seq_id, length FROM sequences SEMI JOIN similar_wanted USING (seq_id)"
    ).fetchall())
    rows: dict[str, list[tuple[int, int, int]]] = {}
    for seq_id, pool_id, start, end in engine.execute_internal(
            "SELECT p.seq_id, p.pool_id, p.start, p.\"end\" FROM pooled p SEMI JOIN "
            "similar_wanted USING (seq_id) WHERE p.layer = ? AND p.pooling = ? "
            "ORDER BY p.seq_id, p.start", [layer, pooling]).fetchall():
        rows.setdefault(seq_id, []).append((pool_id, start, end))
    labels, wanted = [], []
    for text, (seq_id, lo, hi) in zip(ids, spans):
        if seq_id not in lengths:
            raise ConfigError(f"--seq-id {text}: no sequence {seq_id!r} in {atlas.path}")
        lo, hi = (0, lengths[seq_id]) if lo is None else (lo, min(hi, lengths[seq_id]))
        found = [r for r in rows.get(seq_id, []) if r[1] < hi and r[2] > lo]
        if not found:
            raise ConfigError(f"--seq-id {text}: {seq_id!r} has no pooled vector there (no "
                              "token starts in it: all N, or shorter than one token)")
        for pool_id, start, end in found:
            labels.append(seq_id if atlas.manifest.pooling["bin"] == 0
                          else f"{seq_id}:{start}-{end}")
            wanted.append(pool_id)
    ids_sorted, vectors = candidate_vectors(atlas, layer, pooling,
                                            np.unique(np.asarray(wanted, np.int64)))
    at = np.searchsorted(ids_sorted, np.asarray(wanted, np.int64))
    return Queries(labels, vectors[at], list(wanted))


def read_residues(sequence: str | list[str] | None, fasta: str | os.PathLike | None,
                  kind: str) -> list[tuple[str, bytes]]:
    """(label, residues) of the ``sequence`` strings and the ``fasta`` file's records."""
    from seqatlas.fasta import read_fasta

    out = []
    for i, text in enumerate([sequence] if isinstance(sequence, str) else sequence or []):
        data = "".join(text.split()).encode()
        if not data:
            raise ConfigError("--sequence is empty; give the residues to search with")
        out.append((f"sequence{i + 1}" if len(data) > 40 else data.decode().upper(), data))
    if fasta is not None:
        records = list(read_fasta(Path(fasta), kind=kind))
        if not records:
            raise ConfigError(f"{fasta}: no FASTA records to search with")
        out += [(r.id, bytes(r.sequence)) for r in records]
    return out


def embedded_queries(atlas: AtlasReader, residues: list[tuple[str, bytes]], layer: int,
                     pooling: str, model: str | None = None) -> Queries:
    """Pooled vectors of new residues, embedded with the atlas's model, windows and layers
    and pooled as its ingest pooled (:func:`seqatlas.scoring.pooling.unit_pooled`)."""
    import pyarrow.compute as pc

    from seqatlas.checkpoints.loading import load_model
    from seqatlas.checkpoints.recorded import atlas_model_spec
    from seqatlas.scoring.plan import n_runs
    from seqatlas.scoring.pooling import PoolSpec, unit_pooled
    from seqatlas.scoring.scorer import Scorer, WindowJob
    from seqatlas.scoring.windows import tile_record

    manifest = atlas.manifest
    scoring = manifest.scoring
    spec = atlas_model_spec(atlas, model)
    tokenizer = spec.tokenizer()
    # what an ingest into this atlas accepts (N and ambiguity codes included, embedded as
    # the ingest embeds them), and at least one letter the model scores
    allowed = set((PROTEIN_LETTERS if manifest.kind == "protein" else NUCLEOTIDE_LETTERS)
                  .encode())
    for label, data in residues:
        upper = data.upper()
        bad = sorted({chr(b) for b in set(upper) - allowed})
        if bad:
            raise ConfigError(f"query {label!r} has letters a {manifest.kind} atlas does not "
                              f"hold ({''.join(bad)}); its model scores {tokenizer.letters}: "
                              f"give a {manifest.kind} sequence")
        if not (tokenizer.letter_index(upper) >= 0).any():
            raise ConfigError(f"query {label!r} has no letter the atlas's model scores "
                              f"({tokenizer.letters})")
    pool = PoolSpec.from_record(manifest.pooling, scoring.embedding_columns())
    context = "left" if scoring.likelihood == "causal" else "centred"
    jobs, offset = [], 0
    for i, (label, data) in enumerate(residues):
        key = f"query{i}"  # token ids (offset + start) are unique across queries, as in an atlas
        skips = n_runs(data, scoring.skip_n_runs or 0) if manifest.kind != "protein" else []
        for w in tile_record(len(data), scoring.window, scoring.overlap, skips, context):
            jobs.append(WindowJob(seq_id=key, token_offset=offset, start=w.start, end=w.end,
                                  own_start=w.own_start, own_end=w.own_end,
                                  residues=data[w.start : w.end], scored=w.scored,
                                  seq_length=len(data)))
        offset += len(data)
    scorer = Scorer(load_model(spec, device="cpu"), likelihood="none", embeddings=True,
                    layer=list(pool.layers))
    _, tokens = scorer.score(jobs)
    pooled = unit_pooled(tokens, jobs, pool, scorer.bos_vectors, spec.hidden_size)
    pooled = pooled.filter(pc.and_(pc.equal(pooled.column("pooling"), pooling),
                                   pc.equal(pooled.column("layer"), layer)))
    which = [int(key[len("query"):]) for key in pooled.column("seq_id").to_pylist()]
    starts, ends = pooled.column("start").to_pylist(), pooled.column("end").to_pylist()
    order = sorted(range(len(which)), key=lambda j: (which[j], starts[j]))
    missing = sorted(set(range(len(residues))) - set(which))
    if missing:
        raise ConfigError(f"query {residues[missing[0]][0]!r} is shorter than one model token "
                          "(or all N): it has no pooled vector")
    labels = [residues[which[j]][0] if pool.bin == 0 else
              f"{residues[which[j]][0]}:{starts[j]}-{ends[j]}" for j in order]
    vectors = to_float32(pooled.column("vector"), spec.hidden_size, "the query")
    return Queries(labels, vectors[order], [None] * len(order))


# -- search and join -------------------------------------------------------------------------

def _exact(queries: Queries, ids: np.ndarray, vectors: np.ndarray, k: int, metric: str
           ) -> tuple[np.ndarray, np.ndarray]:
    """Exhaustive top-k (plus one for a stored query's own row) in the index's terms."""
    want = min(k + any(e is not None for e in queries.exclude), len(ids))
    q = prepare(queries.vectors, metric)
    # cosine and ip: inner products (of unit vectors for cosine), larger is nearer, as an
    # index reports them; l2: squared distances
    distances, hits = exact_search(q, [(ids, prepare(vectors, metric))], want, metric)
    return distances.astype(np.float32), hits


def _ranked_hits(queries: Queries, distances: np.ndarray, hits: np.ndarray, k: int
                 ) -> pa.Table:
    qn, rank, pid, dist = [], [], [], []
    for q in range(len(queries.labels)):
        kept = [(d, h) for d, h in zip(distances[q], hits[q])
                if h >= 0 and h != queries.exclude[q]][:k]
        for r, (d, h) in enumerate(kept, start=1):
            qn.append(q)
            rank.append(r)
            pid.append(int(h))
            dist.append(float(d))
    return pa.table({"query_no": pa.array(qn, pa.int64()), "rank": pa.array(rank, pa.int32()),
                     "pool_id": pa.array(pid, pa.int64()),
                     "distance": pa.array(dist, pa.float32())})


def _join(engine, hits: pa.Table, labels: list[str]) -> pa.Table:
    engine.con.register("similar_hits", hits)
    engine.con.register("similar_labels", pa.table({
        "query_no": np.arange(len(labels)), "query": pa.array(labels, pa.string())}))
    score = engine.anomaly_column
    summary = ("avg(z.score)::DOUBLE AS logp, count(*) FILTER (WHERE z.tail IS NOT NULL) "
               "AS n_anomalous") if score else "NULL::DOUBLE AS logp, NULL::BIGINT AS n_anomalous"
    source = "position_z" if score else "(SELECT NULL::VARCHAR AS seq_id, NULL::BIGINT AS pos)"
    return engine.fetch_internal(f"""
        WITH hit_rows AS (
            SELECT DISTINCT c.* FROM similar_candidates c SEMI JOIN similar_hits h USING (pool_id)),
        summary AS (
            SELECT c.pool_id, {summary}
            FROM hit_rows c JOIN {source} z ON z.seq_id = c.seq_id AND z.pos >= c.start
                 AND z.pos < c."end" GROUP BY c.pool_id),
        covered AS (  -- bases of each hit inside any repeat (overlapping repeats once)
            SELECT pool_id, count(DISTINCT b) AS bases FROM (
                SELECT o.pool_id, unnest(range(greatest(o.start, o.repeat_start),
                                               least(o."end", o.repeat_end))) AS b
                FROM ({repeat_overlaps_sql('SELECT pool_id, seq_id, start, "end" FROM hit_rows')}) o)
            GROUP BY pool_id)
        SELECT l.query, h.rank, c.seq_id, c.start, c."end", h.distance, c.length,
               c.description, c.tokens, c.repeat_class,
               coalesce(cv.bases, 0) / (c."end" - c.start)::DOUBLE AS repeat_fraction, s.logp,
               coalesce(s.n_anomalous, 0)::BIGINT AS n_anomalous
        FROM similar_hits h JOIN similar_labels l USING (query_no)
             JOIN hit_rows c USING (pool_id) LEFT JOIN summary s USING (pool_id)
             LEFT JOIN covered cv USING (pool_id)
        ORDER BY h.query_no, h.rank""")


def similar(atlas, *, seq_id: str | list[str] | None = None,
            sequence: str | list[str] | None = None, fasta: str | os.PathLike | None = None,
            config: SimilarConfig | None = None, **options) -> pa.Table:
    """The ``k`` nearest sequences or bins of each query; see the module docstring.

    Give ``seq_id`` (ids, or ``ID:START-END``), ``sequence`` (residues) or ``fasta`` (a file).
    ``options`` are :class:`SimilarConfig` fields. Columns: query, rank, seq_id, start, end,
    distance (cosine/ip: similarity, larger is nearer; l2: squared distance), length,
    description, tokens, repeat_class, repeat_fraction, logp, n_anomalous. The result's schema metadata
    says how it searched (``search``) and, with an index, the rows it searched exhaustively
    because they were added after the build (``pending_rows``).
    """
    from seqatlas.query.engine import Engine

    config = config or SimilarConfig(**options)
    config.validate()
    given = [name for name, value in (("seq_id", seq_id), ("sequence", sequence),
                                      ("fasta", fasta)) if value]
    if len(given) != 1:
        raise ConfigError("give one kind of query: --seq-id, --sequence or --fasta")
    atlas = atlas if isinstance(atlas, AtlasReader) else AtlasReader(atlas)
    layer = _require_pooled(atlas, config)
    index = None
    if config.index is not None:
        index = _pooled_index(atlas, config, layer)
    metric = index.metric if index is not None else config.metric
    with Engine(atlas, anomaly_params=AnomalyParams(), robust_pass=False) as engine:
        _create_candidates(engine, layer, config.pooling)
        if seq_id:
            queries = stored_queries(engine, atlas, [seq_id] if isinstance(seq_id, str)
                                     else list(seq_id), layer, config.pooling)
        else:
            queries = embedded_queries(atlas, read_residues(sequence, fasta, atlas.manifest.kind),
                                       layer, config.pooling, config.model)
        allowed = allowed_ids(engine, config.where) if config.where else None
        if index is None or allowed is not None:
            ids, vectors = candidate_vectors(atlas, layer, config.pooling, allowed)
            distances, hits = _exact(queries, ids, vectors, config.k, metric)
            how = (f"exhaustive over the {len(ids):,} rows passing --where" if allowed is not None
                   else f"exhaustive over {len(ids):,} rows")
            pending, note = 0, None
        else:
            want = config.k + any(e is not None for e in queries.exclude)
            distances, hits = index.search(queries.vectors, want, nprobe=config.nprobe)
            pending, note = index.pending_rows, index.pending_note()
            how = f"index {config.index!r} ({index.meta['type']})"
        result = _join(engine, _ranked_hits(queries, distances, hits, config.k), queries.labels)
    result = result.select(list(OUTPUT_COLUMNS))
    return result.replace_schema_metadata({"search": how, "metric": metric,
                                           "pending_rows": str(pending), "note": note or ""})


def _pooled_index(atlas: AtlasReader, config: SimilarConfig, layer: int):
    """The pooled index ``config.index``, checked to hold this layer and pooling."""
    from seqatlas.errors import AtlasIndexError
    from seqatlas.index.store import load_index
    from seqatlas.index.vectors import column_layer

    index = load_index(atlas, name=config.index)
    meta = index.meta
    if meta.get("level", "tokens") != "pooled":
        raise AtlasIndexError(f"index {config.index!r} indexes tokens; build a pooled one "
                              f"with `seqatlas index build --atlas {atlas.path} --level pooled "
                              f"--name NAME`")
    built_layer = meta.get("layer", column_layer(atlas, meta.get("column")))
    if built_layer != layer or meta.get("pooling", "mean") != config.pooling:
        raise AtlasIndexError(f"index {config.index!r} holds {meta.get('pooling', 'mean')} "
                              f"vectors of layer {built_layer}, not {config.pooling} of "
                              f"layer {layer}; pass --layer/--pooling to match, or build one")
    return index
