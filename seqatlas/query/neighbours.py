"""Nearest neighbours of k-mers in an atlas's embedding space, joined back to the atlas.

A query becomes one vector in the space of the index's column (the same hidden layer):

- ``kmer``: the k-mer alone between the model's special tokens ([CLS] kmer [SEP], or
  <cls> kmer <eos>), a neutral context; the vector is the token whose centre is nearest the
  k-mer's centre (for a DNABERT k-mer of length k, its single token).
- ``sequence``: the sequence as given (the user's context), the same rule, or with
  ``offset`` the token covering that base that starts last (for DNABERT, the k-mer starting
  there).
- ``at``: ``SEQ:POS`` (0-based), the stored embedding of the token starting at POS; the
  token itself is left out of its own hits.

Queries are embedded with the atlas's own model, on the CPU in float32; the checkpoint must
have the weights sha256 the manifest records. Hits are joined through the DuckDB engine to
``tokens`` (seq_id, start, end, token), ``positions`` (logp: the mean of the atlas's score
column over the token's bases) and ``repeats`` (repeat_class: the classes overlapping the
token, comma-separated). ``where`` filters the joined hits; the search over-fetches (4 k,
doubling up to the whole index) until k rows per query pass it, or none are left.

Token rows ingested after the index was built are searched exhaustively beside it (see
:func:`~seqatlas.index.store.load_index`); the result's schema metadata says how many
(``pending_rows``), and a note on stderr says so and how to fold them in
(``seqatlas index update``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from seqatlas.store import AtlasReader
from seqatlas.checkpoints.loading import load_model
from seqatlas.checkpoints.recorded import atlas_model_spec
from seqatlas.errors import AtlasIndexError, ConfigError, QueryError
from seqatlas.index.store import load_index
from seqatlas.index.vectors import column_layer, stored_layers
from seqatlas.query.sandbox import Sandbox
from seqatlas.query.views import default_column, repeat_overlaps_sql

OUTPUT_COLUMNS = ("query", "rank", "token_id", "seq_id", "start", "end", "token", "distance",
                  "logp", "repeat_class")
OVERFETCH = 4  # hits fetched per wanted row when --where filters them


@dataclass
class KnnConfig:
    """How many neighbours, from which index, filtered how."""

    k: int = 10
    nprobe: int | None = None  # IVF lists searched; None: the index's default
    where: str | None = None  # SQL predicate over the output columns
    index: str = "default"  # name given to `seqatlas index build`
    offset: int | None = None  # sequence queries: the base the query token covers
    model: str | None = None  # checkpoint to embed with; None: the one the atlas records

    def validate(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ConfigError(f"-k must be a positive number of neighbours, not {self.k!r}")
        if self.nprobe is not None and self.nprobe < 1:
            raise ConfigError("--nprobe must be 1 or more")
        if self.offset is not None and self.offset < 0:
            raise ConfigError("--offset must be 0 or more (0-based, within the sequence)")
        if self.where is not None:
            check_predicate(self.where)


def check_predicate(predicate: str) -> None:
    """Refuse a ``--where`` that is not one self-contained expression.

    Outside string literals it may hold no ``;`` and no comment, and its parentheses must
    balance without ever closing more than they opened, so it cannot end the
    ``WHERE (...)`` it is placed in; the whole statement is then checked to be one SELECT.
    """
    if not predicate.strip():
        raise ConfigError("--where is empty; give an SQL condition such as \"seq_id = 'chr1'\"")
    depth, i, n = 0, 0, len(predicate)
    while i < n:
        c = predicate[i]
        if c in "'\"":
            end = i + 1
            while True:  # a doubled quote inside a literal escapes it
                end = predicate.find(c, end)
                if end < 0:
                    raise QueryError(f"--where has an unterminated {c} quote")
                if predicate[end + 1 : end + 2] == c:
                    end += 2
                    continue
                break
            i = end + 1
            continue
        if c == ";" or predicate.startswith(("--", "/*"), i):
            raise QueryError("--where must be one SQL condition (no ';' and no comments "
                             "outside quotes)")
        depth += {"(": 1, ")": -1}.get(c, 0)
        if depth < 0:
            raise QueryError("--where closes a parenthesis it did not open")
        i += 1
    if depth:
        raise QueryError("--where leaves a parenthesis open")


def filter_statement(engine, predicate: str) -> str:
    """``SELECT * FROM hits_joined WHERE (predicate)``, after DuckDB's own parse tree shows
    it is exactly that: one plain SELECT of ``*`` from hits_joined with a WHERE and nothing
    else (no set operation, CTE, grouping, ordering or limit)."""
    import json

    statement = f"SELECT * FROM hits_joined WHERE (\n{predicate}\n)"
    tree = json.loads(engine.execute_internal("SELECT json_serialize_sql(?)",
                                              [statement]).fetchall()[0][0])
    if tree.get("error"):
        raise QueryError(f"--where does not parse: {tree.get('error_message', '')}")
    node = tree["statements"][0]["node"] if len(tree["statements"]) == 1 else {}
    table = node.get("from_table") or {}
    plain = (node.get("type") == "SELECT_NODE" and not node.get("modifiers")
             and not (node.get("cte_map") or {}).get("map")
             and [e.get("type") for e in node.get("select_list", [])] == ["STAR"]
             and table.get("type") == "BASE_TABLE" and table.get("table_name") == "hits_joined"
             and not node.get("group_expressions") and not node.get("group_sets")
             and not node.get("having") and not node.get("sample")
             and not node.get("qualify") and node.get("where_clause"))
    if not plain:
        raise QueryError("--where must be one SQL condition on the hits' columns; it may not "
                         "add clauses or queries around it")
    return statement


def parse_at(text: str) -> tuple[str, int]:
    """``SEQ:POS`` -> (seq_id, pos); the last colon splits, so ids may contain colons."""
    seq_id, sep, pos = text.rpartition(":")
    if not sep or not seq_id or not pos.strip().isdigit():
        raise ConfigError(f"--at {text!r}: expected SEQ:POS with a 0-based position, "
                          "e.g. chrX:1000")
    return seq_id, int(pos)


# -- the atlas's model -------------------------------------------------------------------

def query_token(starts: np.ndarray, ends: np.ndarray, length: int,
                offset: int | None = None) -> int:
    """Index of the query token: the one whose centre is nearest the residues' centre (the
    earlier on a tie), or, with ``offset``, the latest-starting token covering that base."""
    if offset is None:
        return int(np.argmin(np.abs((starts + ends) - length)))
    covering = np.nonzero((starts <= offset) & (ends > offset))[0]
    if not len(covering):
        raise ConfigError(f"--offset {offset}: no token covers that base (the sequence has "
                          f"{length} residues)")
    return int(covering[np.argmax(starts[covering])])


def embed_residues(spec, residues: list[str], layer: int, *, offset: int | None = None
                   ) -> np.ndarray:
    """Float32 query vectors (n, hidden) of ``residues`` at hidden ``layer``, one per string:
    each embedded alone between the special tokens, read at its query token."""
    import torch

    tokenizer = spec.tokenizer()
    queries = []  # every string checked before the weights are loaded
    for text in residues:
        data = text.strip().upper().encode()
        if not data:
            raise ConfigError("an empty k-mer or sequence cannot be embedded")
        bad = sorted({chr(b) for b, ok in zip(data, tokenizer.letter_index(data) >= 0)
                      if not ok})
        if bad:
            raise ConfigError(f"{text!r} has letters the model does not score "
                              f"({''.join(bad)}); use {tokenizer.letters}")
        tokens = tokenizer.tokenize(data)
        if tokens.n_tokens == 0:
            raise ConfigError(f"{text!r} is shorter than one model token "
                              f"({getattr(tokenizer, 'k', 1)} residues)")
        if len(tokens.ids) > spec.context_tokens:
            raise ConfigError(f"{text!r} needs {len(tokens.ids)} tokens, more than the "
                              f"model's context of {spec.context_tokens}")
        queries.append((tokens, query_token(tokens.starts, tokens.ends, len(data), offset)))
    model = load_model(spec, device="cpu")
    vectors = []
    for tokens, j in queries:
        ids = torch.from_numpy(tokens.ids).unsqueeze(0)
        with torch.inference_mode():
            _, hidden = model.encode(ids, torch.ones_like(ids), layer)
        vectors.append(hidden[0, j + tokens.prefix].float().cpu().numpy())
    return np.stack(vectors).astype(np.float32)


# -- the search and the join ---------------------------------------------------------------

def require_embeddings(atlas: AtlasReader) -> None:
    if not stored_layers(atlas):
        raise ConfigError(f"{atlas.path} stores no embeddings (ingested with --embeddings none); "
                          "re-ingest with --embeddings float16 into a new --atlas to look up "
                          "neighbours")


def stored_vectors(engine, column: str, at: list[str]) -> tuple[np.ndarray, list[int]]:
    """Stored embeddings (float32) and token ids of the tokens starting at ``SEQ:POS``."""
    vectors, ids = [], []
    for text in at:
        seq_id, pos = parse_at(text)
        known = engine.execute_internal(
            "SELECT length, global_start FROM sequences WHERE seq_id = ?", [seq_id]).fetchall()
        if not known:
            raise ConfigError(f"--at {text}: no sequence {seq_id!r} in {engine.atlas.path}")
        # token_id = global_start + start: a filter the parts' statistics can prune on
        row = engine.execute_internal(
            f'SELECT token_id, "{column}" FROM tokens '
            "WHERE token_id = ? AND seq_id = ? AND start = ?",
            [known[0][1] + pos, seq_id, pos]).fetchall()
        if not row:
            raise ConfigError(f"--at {text}: no token starts at {pos} in {seq_id} (length "
                              f"{known[0][0]}; positions are 0-based, and a sequence's last "
                              "bases start no token with k-mer tokenizers)")
        if row[0][1] is None:
            raise ConfigError(f"--at {text}: the token has no stored {column}")
        ids.append(int(row[0][0]))
        vectors.append(np.asarray(row[0][1], dtype=np.float32))
    return np.stack(vectors), ids


def _hits_table(labels, distances, token_ids, exclude) -> pa.Table:
    qn, hn, tid, dist = [], [], [], []
    for q in range(len(labels)):
        keep = token_ids[q] >= 0
        if exclude[q] is not None:
            keep &= token_ids[q] != exclude[q]
        where = np.nonzero(keep)[0]
        qn.append(np.full(len(where), q, dtype=np.int64))
        hn.append(where.astype(np.int64))
        tid.append(token_ids[q][where].astype(np.int64))
        dist.append(distances[q][where].astype(np.float32))
    return pa.table({"query_no": np.concatenate(qn), "hit_no": np.concatenate(hn),
                     "token_id": np.concatenate(tid), "distance": np.concatenate(dist)})


def _join_hits(engine, hits: pa.Table, labels: list[str]) -> None:
    """(Re)create the temp table ``hits_joined`` from the registered hits (on the engine's
    worker, so Ctrl-C cancels the join)."""
    engine.con.register("knn_hits", hits)
    engine.con.register("knn_labels", pa.table({"query_no": np.arange(len(labels)),
                                                "query": pa.array(labels, pa.string())}))
    column = default_column(engine.atlas.manifest.scoring)
    score = f'avg(p."{column}")' if column else "NULL::DOUBLE"
    engine.fetch_internal("""CREATE OR REPLACE TEMP TABLE knn_tokens AS
        SELECT DISTINCT t.token_id, t.seq_id, t.start, t."end", t.token
        FROM tokens t SEMI JOIN knn_hits h ON t.token_id = h.token_id""")
    overlaps = repeat_overlaps_sql('SELECT token_id, seq_id, start, "end" FROM knn_tokens')
    engine.fetch_internal(f"""CREATE OR REPLACE TEMP TABLE hits_joined AS
        WITH bases AS (  -- one row per base of each hit: an equality join, no fan-out
            SELECT token_id, seq_id, unnest(range(start, "end")) AS pos FROM knn_tokens),
        lp AS (
            SELECT b.token_id, {score} AS logp
            FROM bases b JOIN positions p ON p.seq_id = b.seq_id AND p.pos = b.pos
            GROUP BY b.token_id),
        rc AS (
            SELECT token_id, string_agg(DISTINCT repeat_class, ',' ORDER BY repeat_class)
                   AS repeat_class
            FROM ({overlaps}) GROUP BY token_id)
        SELECT h.query_no AS _query_no, h.hit_no AS _hit_no, l.query, h.token_id, t.seq_id,
               t.start, t."end", t.token, h.distance, lp.logp::DOUBLE AS logp, rc.repeat_class
        FROM knn_hits h JOIN knn_labels l USING (query_no) JOIN knn_tokens t USING (token_id)
        LEFT JOIN lp USING (token_id) LEFT JOIN rc USING (token_id)""")


def _ranked(table: pa.Table, k: int, n_queries: int) -> tuple[pa.Table, np.ndarray]:
    """The first k rows per query in index order, ranked 1..k; and the rows per query."""
    table = table.sort_by([("_query_no", "ascending"), ("_hit_no", "ascending")])
    query_no = table["_query_no"].to_numpy()
    first = np.searchsorted(query_no, np.arange(n_queries))
    rank = np.arange(len(query_no)) - first[query_no] + 1 if len(query_no) else \
        np.zeros(0, dtype=np.int64)
    keep = rank <= k
    counts = np.bincount(query_no[keep], minlength=n_queries)
    table = table.filter(pa.array(keep)).append_column("rank", pa.array(rank[keep],
                                                                         pa.int32()))
    return table.select(list(OUTPUT_COLUMNS)), counts


def knn(atlas, *, kmer: str | list[str] | None = None, at: str | list[str] | None = None,
        sequence: str | list[str] | None = None, config: KnnConfig | None = None,
        **options) -> pa.Table:
    """The k nearest tokens of each query, joined to the atlas; see the module docstring.

    Give exactly one of ``kmer``, ``at`` or ``sequence`` (a string or a list); ``options``
    are :class:`KnnConfig` fields. Columns: query, rank, token_id, seq_id, start, end,
    token, distance (as the index's metric reports it: for ip and cosine the similarity,
    higher is nearer), logp, repeat_class.
    """

    config = config or KnnConfig(**options)
    config.validate()
    given = {name: ([v] if isinstance(v, str) else list(v))
             for name, v in (("kmer", kmer), ("at", at), ("sequence", sequence)) if v}
    if len(given) != 1:
        raise ConfigError("give one kind of query: --kmer, --at or --sequence")
    (kind, texts), = given.items()
    if config.offset is not None and kind != "sequence":
        raise ConfigError("--offset applies to --sequence queries only")
    atlas = atlas if isinstance(atlas, AtlasReader) else AtlasReader(atlas)
    require_embeddings(atlas)
    index = load_index(atlas, name=config.index)  # a missing one: says how to build it
    if index.level != "tokens":
        raise AtlasIndexError(f"index {config.index!r} is over {index.level} vectors, not "
                              "tokens; knn looks up tokens: build a tokens index with "
                              f"`seqatlas index build --atlas {atlas.path} --name NAME` and "
                              "pass --index NAME")
    layer = column_layer(atlas, index.column)
    if layer is None:
        raise AtlasIndexError(f"index {config.index!r} is over {index.column!r}, which "
                              f"{atlas.path} does not store; rebuild it with "
                              "`seqatlas index build`")
    with Sandbox(atlas) as engine:
        if kind == "at":
            vectors, exclude = stored_vectors(engine, index.column, texts)
            labels = texts
        else:
            spec = atlas_model_spec(atlas, config.model)
            vectors = embed_residues(spec, texts, layer,
                                     offset=config.offset if kind == "sequence" else None)
            exclude = [None] * len(texts)
            labels = [t.strip().upper() + (f"@{config.offset}" if config.offset is not None
                                           else "") for t in texts]
        statement = filter_statement(engine, config.where) if config.where else None
        ntotal = index.total  # the index's vectors and the rows added since its build
        want = config.k + (kind == "at")
        fetch = min(ntotal, want * (OVERFETCH if config.where else 1))
        while True:
            distances, token_ids = index.search(vectors, fetch, nprobe=config.nprobe)
            _join_hits(engine, _hits_table(labels, distances, token_ids, exclude), labels)
            if config.where is None:
                rows = engine.fetch_internal("SELECT * FROM hits_joined")
            else:
                rows = engine.run(statement)
            result, counts = _ranked(rows, config.k, len(labels))
            if config.where is None or counts.min() >= config.k or fetch >= ntotal:
                return _reported(result, index)
            fetch = min(ntotal, fetch * 2)


def _reported(result: pa.Table, index) -> pa.Table:
    """``result`` with the index and the rows searched beside it in its schema metadata
    (``index``, ``pending_rows``, and ``note``, what to tell the user about them)."""
    return result.replace_schema_metadata({"index": index.meta["name"],
                                           "pending_rows": str(index.pending_rows),
                                           "note": index.pending_note() or ""})
