"""Pooled embeddings: one vector per sequence or per fixed bin of a sequence, from the same
forward passes as the token embeddings (no second pass).

Definition (the README's "Pooled embeddings"):

- ``mean`` of the bin [s, e) of a sequence (``level`` "bin"; [0, length) for ``level``
  "sequence"): the mean, accumulated in float64 and stored in float16, of the stored float16
  embeddings of the tokens that *start* in [s, e), each as the window that owns it computed
  it. Bins are [0, B), [B, 2B), ... with the last one cut at the sequence's end. A bin cut by
  a window boundary pools tokens of two windows; it differs from the same bin scored inside
  one window only by how each token's own embedding depends on the window around it (the
  model's context effect), never by a token counted twice or missed. A bin where no token
  starts (all N, or a k-mer tokenizer's last bases) has no row.
- ``bos``: the hidden state of the BOS/CLS token of the window that starts the sequence (its
  first ``window`` residues, as ESM's ``extract.py`` reads ``<cls>`` of a sequence cut to
  the context), for masked LMs that put one before the residues; whole sequences only.

Workers pool the bins that their unit covers whole; a bin split between two units is pooled
after both are committed, from the stored tokens (:func:`pool_missing`), by the same
arithmetic, so every row equals the mean over the stored token embeddings.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa

from seqatlas import schema
from seqatlas.errors import AtlasDamagedError, ConfigError
from seqatlas.progress import Meter
from seqatlas.store import AtlasReader, AtlasWriter

DNA_BIN = 1000  # default bases per bin for DNA/RNA; proteins: one row per sequence
CHUNK_ROWS = 8192  # token rows converted to float64 at a time
READ_POSITIONS = 2_000_000  # sequences read together by pool_missing, in bases


@dataclass(frozen=True)
class PoolSpec:
    """What to pool: bases per bin (0: whole sequences), poolings, stored layers and their
    tokens columns."""

    bin: int
    poolings: tuple[str, ...]
    layers: tuple[int, ...]
    columns: tuple[str, ...]

    @property
    def level(self) -> str:
        return "bin" if self.bin else "sequence"

    def record(self) -> dict:
        """The manifest's ``pooling`` record."""
        return {"bin": self.bin, "level": self.level, "poolings": list(self.poolings),
                "layers": list(self.layers)}

    @classmethod
    def from_record(cls, record: dict, columns: dict[int, str]) -> PoolSpec:
        layers = tuple(int(x) for x in record["layers"])
        unknown = [x for x in layers if x not in columns]
        if unknown or not set(record["poolings"]) <= set(schema.POOLINGS):
            raise AtlasDamagedError(
                f"atlas.json's pooling record {record!r} names what the atlas does not store "
                f"(stored layers: {', '.join(map(str, columns)) or 'none'}); restore "
                "atlas.json from a backup, or `seqatlas pool --replace` to pool again")
        return cls(int(record["bin"]), tuple(record["poolings"]), layers,
                   tuple(columns[x] for x in layers))


def check_bin(bin_size, option: str = "--pool-bin") -> int:
    """A valid bin size: an integer >= 0 (0: one vector per sequence)."""
    if isinstance(bin_size, bool) or not isinstance(bin_size, int) or bin_size < 0:
        raise ConfigError(f"{option} must be a number of bases >= 1, or 0 for one vector per "
                          f"sequence, not {bin_size!r}")
    return bin_size


def default_bin(kind: str) -> int:
    return 0 if kind == "protein" else DNA_BIN


def pool_start(starts: np.ndarray, bin_size: int) -> np.ndarray:
    """The start of the bin each token start falls in (0 for whole sequences)."""
    return starts - starts % bin_size if bin_size else np.zeros_like(starts)


def bin_end(start: int, length: int, bin_size: int) -> int:
    return min(start + bin_size, length) if bin_size else length


def bins_of(length: int, bin_size: int) -> list[tuple[int, int]]:
    """The bins [s, e) of a sequence of ``length``."""
    if not bin_size:
        return [(0, length)] if length else []
    return [(s, min(s + bin_size, length)) for s in range(0, length, bin_size)]


class MeanAccumulator:
    """Sums and counts of token vectors per (pool id, layer), fed in token_id order."""

    def __init__(self, n_layers: int):
        self.sums: list[dict[int, np.ndarray]] = [{} for _ in range(n_layers)]
        self.counts: dict[int, int] = {}
        self.where: dict[int, tuple[str, int]] = {}  # pool id -> (seq_id, bin start)

    def add(self, seq_ids: np.ndarray, starts: np.ndarray, token_ids: np.ndarray,
            vectors: list[pa.Array], bin_size: int) -> None:
        """Add token rows (sorted by token_id) with their per-layer fixed-size-list vectors."""
        if not len(token_ids):
            return
        first = pool_start(starts, bin_size)
        pool_ids = token_ids - (starts - first)
        change = np.nonzero(np.diff(pool_ids))[0] + 1
        heads = np.concatenate([[0], change])
        counts = np.diff(np.concatenate([heads, [len(pool_ids)]]))
        for h, c in zip(heads, counts):
            key = int(pool_ids[h])
            self.counts[key] = self.counts.get(key, 0) + int(c)
            self.where.setdefault(key, (str(seq_ids[h]), int(first[h])))
        for layer, column in enumerate(vectors):
            dim = column.type.list_size
            for lo in range(0, len(token_ids), CHUNK_ROWS):
                chunk = column.slice(lo, CHUNK_ROWS)
                x = chunk.flatten().to_numpy(zero_copy_only=False).reshape(len(chunk), dim)
                ids = pool_ids[lo : lo + len(chunk)]
                cut = np.concatenate([[0], np.nonzero(np.diff(ids))[0] + 1])
                sums = np.add.reduceat(x.astype(np.float64), cut, axis=0)
                store = self.sums[layer]
                for key, total in zip(ids[cut].tolist(), sums):
                    if key in store:
                        store[key] += total
                    else:
                        store[key] = total

    def rows(self, keys: Iterable[int]) -> Iterator[tuple[int, str, int, int, list[np.ndarray]]]:
        """(pool id, seq_id, bin start, tokens, per-layer mean float16) of ``keys``."""
        for key in keys:
            n = self.counts[key]
            seq_id, start = self.where[key]
            yield key, seq_id, start, n, [(s[key] / n).astype(np.float16) for s in self.sums]


def pooled_table(rows: list[tuple], dim: int) -> pa.Table:
    """The pooled table of ``(seq_id, start, end, level, pooling, layer, tokens, pool_id,
    vector)`` rows, sorted by pooling, layer and pool id."""
    arrow_schema = schema.pooled_schema(dim)
    rows = sorted(rows, key=lambda r: (r[4], r[5], r[7]))
    columns = list(zip(*rows)) if rows else [[] for _ in arrow_schema]
    arrays = [pa.array(list(values), f.type) for values, f in zip(columns[:8], arrow_schema)]
    vectors = np.stack(columns[8]).astype(np.float16) if rows else np.zeros((0, dim), np.float16)
    arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float16()),
                                                    dim))
    return pa.Table.from_arrays(arrays, schema=arrow_schema)


def mean_rows(acc: MeanAccumulator, keys: Iterable[int], spec: PoolSpec,
              lengths: dict[str, int]) -> list[tuple]:
    out = []
    for key, seq_id, start, n, means in acc.rows(keys):
        end = bin_end(start, lengths[seq_id], spec.bin)
        for layer, vector in zip(spec.layers, means):
            out.append((seq_id, start, end, spec.level, "mean", layer, n, key, vector))
    return out


def _sorted_tokens(tokens: pa.Table, columns: tuple[str, ...]) -> pa.Table:
    tokens = tokens.select(["token_id", "seq_id", "start", *columns])
    ids = tokens.column("token_id").to_numpy()
    if len(ids) > 1 and np.any(np.diff(ids) < 0):
        tokens = tokens.take(pa.array(np.argsort(ids, kind="stable")))
    return tokens


def accumulate(acc: MeanAccumulator, tokens: pa.Table, spec: PoolSpec) -> None:
    """Add a tokens table (any order) to ``acc``."""
    tokens = _sorted_tokens(tokens, spec.columns)
    acc.add(tokens.column("seq_id").to_numpy(zero_copy_only=False),
            tokens.column("start").to_numpy(), tokens.column("token_id").to_numpy(),
            [tokens.column(c).combine_chunks() for c in spec.columns], spec.bin)


def unit_pooled(tokens: pa.Table | None, jobs: list, spec: PoolSpec,
                bos: dict[str, list[np.ndarray]], dim: int) -> pa.Table:
    """The pooled rows one scored unit can complete: every bin its windows own whole, and
    the ``bos`` vectors of the sequences whose first window it scored."""
    owned: dict[str, list[tuple[int, int]]] = {}
    lengths, offsets = {}, {}
    for job in jobs:
        owned.setdefault(job.seq_id, []).append((job.own_start, job.own_end))
        lengths[job.seq_id], offsets[job.seq_id] = job.seq_length, job.token_offset
    owned = {seq_id: _merged(ranges) for seq_id, ranges in owned.items()}
    rows = []
    if tokens is not None and tokens.num_rows:
        acc = MeanAccumulator(len(spec.layers))
        accumulate(acc, tokens, spec)
        whole = [key for key, (seq_id, start) in acc.where.items()
                 if _covers(owned[seq_id], start, bin_end(start, lengths[seq_id], spec.bin))]
        rows += mean_rows(acc, whole, spec, lengths)
    if "bos" in spec.poolings:
        for seq_id, vectors in bos.items():
            for layer, vector in zip(spec.layers, vectors):
                rows.append((seq_id, 0, lengths[seq_id], spec.level, "bos", layer, 1,
                             offsets[seq_id], vector.astype(np.float16)))
    return pooled_table(rows, dim)


def _covers(ranges: list[tuple[int, int]], start: int, end: int) -> bool:
    """Whether sorted, disjoint, non-touching half-open ``ranges`` (:func:`_merged`) cover
    [start, end): one of them must hold it whole."""
    import bisect

    at = bisect.bisect_right(ranges, (start, float("inf"))) - 1
    return at >= 0 and ranges[at][0] <= start and ranges[at][1] >= end


def split_bins(units_owned: list[dict[str, list[tuple[int, int]]]], lengths: dict[str, int],
               bin_size: int) -> dict[str, list[tuple[int, int]]]:
    """The bins that no single unit owns whole (a unit boundary falls inside them), by
    sequence; ``units_owned``: per unit, seq_id -> its owned ranges. These are pooled from
    the stored tokens once every unit is committed."""
    by_seq: dict[str, list[list[tuple[int, int]]]] = {}
    for owned in units_owned:  # a unit's windows touch: merged, its few spans remain
        for seq_id, ranges in owned.items():
            by_seq.setdefault(seq_id, []).append(_merged(ranges))
    out: dict[str, list[tuple[int, int]]] = {}
    for seq_id, per_unit in by_seq.items():
        if len(per_unit) < 2:
            continue
        length = lengths[seq_id]
        edges = {e for ranges in per_unit for r in ranges for e in r if 0 < e < length}
        starts = sorted({(e - e % bin_size) if bin_size else 0 for e in edges})
        split = [(s, bin_end(s, length, bin_size)) for s in starts]
        split = [(s, e) for s, e in split
                 if not any(_covers(ranges, s, e) for ranges in per_unit)]
        if split:
            out[seq_id] = split
    return out


# -- pooling from the stored tokens --------------------------------------------------------

def stored_spec(reader: AtlasReader, *, bin_size: int | None = None) -> PoolSpec:
    """The pooling of ``reader``'s atlas: as recorded, or (no record) mean pooling of every
    stored layer with ``bin_size`` (default: per sequence for proteins, 1 kb for DNA/RNA)."""
    manifest = reader.manifest
    scoring = manifest.scoring
    columns = scoring.embedding_columns() if scoring else {}
    if not columns:
        raise ConfigError(f"{reader.path} stores no token embeddings (ingested with "
                          "--embeddings none), so there is nothing to pool; re-ingest with "
                          "--embeddings float16 into a new --atlas")
    if manifest.pooling:
        recorded = PoolSpec.from_record(manifest.pooling, columns)
        if bin_size is not None and check_bin(bin_size, "--bin") != recorded.bin:
            raise ConfigError(
                f"{reader.path} pools {_describe_bin(recorded.bin)}; --bin {bin_size} would "
                "mix two binnings in one table. Pool into the same binning, or add --replace "
                "to drop the pooled table and pool again")
        return recorded
    size = default_bin(manifest.kind or "protein") if bin_size is None else \
        check_bin(bin_size, "--bin")
    layers = tuple(columns)
    return PoolSpec(size, ("mean",), layers, tuple(columns[x] for x in layers))


def _describe_bin(bin_size: int) -> str:
    return f"{bin_size}-base bins" if bin_size else "whole sequences"


def _sequences(reader: AtlasReader) -> list[tuple[str, int, int]]:
    """(seq_id, length, token_offset) of every sequence, in atlas order."""
    table = reader.sequences(["seq_id", "length", "token_offset"])
    return list(zip(table.column("seq_id").to_pylist(), table.column("length").to_pylist(),
                    table.column("token_offset").to_pylist()))


def present_ids(reader: AtlasReader, pooling: str = "mean") -> set[int]:
    """pool_id of every committed pooled row of ``pooling``."""
    if not reader.manifest.table_parts("pooled"):
        return set()
    table = reader.pooled(["pool_id", "pooling"])
    keep = np.asarray(table.column("pooling").to_pylist(), dtype=object) == pooling
    return set(table.column("pool_id").to_numpy()[keep].tolist())


def read_tokens(reader: AtlasReader, spans: dict[str, list[tuple[int, int]]],
                columns: tuple[str, ...]) -> pa.Table:
    """The stored token rows of each sequence of ``spans`` whose start lies in one of its
    sorted, disjoint spans [lo, hi), reading only the parts, and in them the row groups,
    whose key statistics may hold such rows."""
    names = ["token_id", "seq_id", "start", *columns]
    records = reader.manifest.table_parts("tokens")
    tables = []
    for path in reader.part_paths("tokens"):
        record = records.get(path.name)
        if record is not None and record.stats and not any(
                record.may_hold(s, bins[0][0], bins[-1][1]) for s, bins in spans.items()):
            continue
        handle = reader.open_part(path)
        groups = _row_groups(handle, spans)
        if not groups:
            continue
        table = handle.read_row_groups(groups, columns=names)
        seq = np.asarray(table.column("seq_id").to_pylist(), dtype=object)
        start = table.column("start").to_numpy()
        keep = np.zeros(len(seq), dtype=bool)
        for seq_id, bins in spans.items():
            mine = np.nonzero(seq == seq_id)[0]
            if not len(mine):
                continue
            lo = np.array([b[0] for b in bins])
            hi = np.array([b[1] for b in bins])
            at = np.searchsorted(lo, start[mine], side="right") - 1
            keep[mine] = (at >= 0) & (start[mine] < hi[np.maximum(at, 0)])
        if keep.any():
            tables.append(table.filter(pa.array(keep)))
    if not tables:
        arrow_schema = reader.manifest.tokens_schema()
        return pa.table({n: pa.array([], arrow_schema.field(n).type) for n in names})
    return pa.concat_tables(tables)


def _row_groups(handle, spans: dict[str, list[tuple[int, int]]]) -> list[int]:
    """The row groups of a tokens part whose seq_id and start statistics may hold a row of
    ``spans`` (all of them where statistics are missing)."""
    meta = handle.metadata
    arrow_names = handle.schema_arrow.names
    seq_col, start_col = arrow_names.index("seq_id"), arrow_names.index("start")
    chosen = []
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        seq_stats = group.column(seq_col).statistics
        start_stats = group.column(start_col).statistics
        if seq_stats is None or not seq_stats.has_min_max or start_stats is None or \
                not start_stats.has_min_max:
            chosen.append(g)
            continue
        for seq_id, bins in spans.items():
            if not seq_stats.min <= seq_id <= seq_stats.max:
                continue
            if seq_stats.min != seq_stats.max or any(
                    lo <= start_stats.max and start_stats.min < hi for lo, hi in bins):
                chosen.append(g)
                break
    return chosen


def pool_from_store(reader: AtlasReader, spec: PoolSpec,
                    wanted: dict[str, list[tuple[int, int]]],
                    progress: bool | str = False) -> Iterator[pa.Table]:
    """Pooled ``mean`` rows of the bins in ``wanted`` (seq_id -> bins) from the stored
    tokens, in tables of at most ~2M positions of sequences."""
    sequences = _sequences(reader)
    lengths = {s: n for s, n, _ in sequences}
    dim = reader.manifest.model.hidden_size
    batches: list[list[str]] = [[]]
    size = 0
    for seq_id, length, _ in sequences:
        if seq_id not in wanted:
            continue
        if size >= READ_POSITIONS and batches[-1]:
            batches.append([])
            size = 0
        batches[-1].append(seq_id)
        size += length
    meter = Meter(label="pooling", unit="sequences", total=sum(map(len, batches)),
                  progress=progress)
    with meter:
        for batch in batches:
            if not batch:
                continue
            acc = MeanAccumulator(len(spec.layers))
            spans = {s: _merged(wanted[s]) for s in batch}
            accumulate(acc, read_tokens(reader, spans, spec.columns), spec)
            chosen = {(s, lo) for s in batch for lo, _ in wanted[s]}
            keys = [k for k in acc.where if acc.where[k] in chosen]
            rows = mean_rows(acc, sorted(keys), spec, lengths)
            meter.advance(len(batch))
            if rows:
                yield pooled_table(rows, dim)


def _merged(bins: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted bins with touching or overlapping ones merged."""
    out: list[list[int]] = []
    for lo, hi in sorted(bins):
        if out and lo <= out[-1][1]:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return [(lo, hi) for lo, hi in out]


def pool_missing(writer: AtlasWriter, spec: PoolSpec,
                 wanted: dict[str, list[tuple[int, int]]] | None = None, *,
                 progress: bool | str = False) -> int:
    """Pool, from the stored tokens, the ``mean`` rows of ``wanted`` (seq_id -> bins; None:
    every bin of every sequence) that the pooled table lacks, and commit them; returns the
    rows added. Each commit is a unit keyed by what it pooled, so an interrupted run resumes."""
    reader = AtlasReader(writer.path)
    present = present_ids(reader)
    sequences = _sequences(reader)
    offsets = {s: off for s, _, off in sequences}
    if wanted is None:  # every bin not pooled yet (bins where no token starts included)
        wanted = {s: bins_of(length, spec.bin) for s, length, _ in sequences}
    # only bins without a row: pool_from_store yields no other
    wanted = {s: [b for b in bins if offsets[s] + b[0] not in present]
              for s, bins in wanted.items() if s in offsets}
    wanted = {s: bins for s, bins in wanted.items() if bins}
    if not wanted:
        return 0
    added = 0
    for table in pool_from_store(reader, spec, wanted, progress=progress):
        ids = table.column("pool_id").to_numpy()
        # unique per commit (the log version): a pooled table dropped by --replace and
        # pooled again never reuses a part name
        key = "pool-" + hashlib.sha256(json.dumps(
            [spec.record(), writer.version, sorted(set(ids.tolist()))]).encode()
        ).hexdigest()
        # no "seq_ids" in the record: that key marks the units of scoring runs
        writer.commit(key, {"pooled": table},
                      unit={"command": "pool", "pooled_rows": table.num_rows,
                            "pooled_sequences": len(set(table.column("seq_id").to_pylist()))})
        added += table.num_rows
    return added


def pool(atlas, *, bin: int | None = None, replace: bool = False,
         progress: bool | str = False) -> dict:
    """Pool the stored token embeddings of ``atlas`` into its ``pooled`` table (what ingest
    does as it scores): the mean per sequence (proteins) or per ``bin`` bases (DNA/RNA,
    default 1000), for every stored layer. Rows already there are kept; ``replace`` drops
    the pooled table first (to change the binning). Returns what it did."""
    from seqatlas.progress import check_progress

    check_progress(progress)
    if bin is not None:
        check_bin(bin, "--bin")
    path = atlas.path if isinstance(atlas, AtlasReader) else atlas
    with AtlasWriter(path) as writer:
        reader = AtlasReader(writer.path)
        if replace:
            names = sorted(writer.manifest.table_parts("pooled"))
            if names:
                writer.replace_parts("pooled", names, {}, operation="drop the pooled table")
            writer.set_pooling(None)
            reader = AtlasReader(writer.path)
        spec = stored_spec(reader, bin_size=bin)
        if not reader.manifest.table_parts("tokens"):
            raise ConfigError(f"{reader.path} has no tokens yet; run `seqatlas ingest` first")
        writer.set_pooling(spec.record() if not writer.manifest.pooling else
                           writer.manifest.pooling)
        added = pool_missing(writer, spec, progress=progress)
        total = AtlasReader(writer.path).count("pooled")
    return {"atlas": str(path), "level": spec.level, "bin": spec.bin,
            "poolings": list(spec.poolings), "layers": list(spec.layers),
            "rows_added": added, "rows": total}
