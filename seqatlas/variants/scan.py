"""Saturation mutagenesis in silico: every substitution at every position of a region, read
from the distributions an atlas stores (``letter_logp``, ingest's ``--distributions``); no
model runs.

At each position with a distribution whose ref is one of the kind's standard letters
(``scoring.distribution_letters``: 20 amino acids, or ACGT / ACGU), each other letter is a
substitution: 19 rows per residue, 3 per base, in letter order. Their columns
(:data:`seqatlas.schema.SCAN`) follow ``variants score`` (:mod:`seqatlas.variants.score`):

- ``llr_fwd = letter_logp[alt] - letter_logp[ref]`` (nats); ``llr_rc`` the same on
  ``letter_logp_rc`` (the reverse strand's distribution in forward letters) with
  ``--strands both``, else null; ``llr`` their mean with both strands (GPN's convention;
  null where the reverse strand has no distribution), else ``llr_fwd``;
- ``p_alt`` and ``rank_alt`` (1 = the model's top letter; ties share the better rank) under
  the position's distribution: ``exp(letter_logp)``, with both strands the mean of the two
  strands' probabilities;
- ``entropy``, ``copy_offset`` and ``copy_strand``: the positions row's.

Positions that give **no rows**: those without a distribution (``letter_logp`` null: e.g. in
a long N run) and those whose ref is not a standard letter (X, N, B, ...).

A region is ``SEQ:START-END`` in the atlas's own coordinates, 0-based and half-open, as
``seqatlas plot track --region`` reads it (commas and underscores in numbers are ignored; the
last colon separates the coordinates); ``pos`` is 0-based and ``position = pos + 1``.
"""

from __future__ import annotations


import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqatlas import schema
from seqatlas.errors import ConfigError
from seqatlas.query.tracks import require_distributions
from seqatlas.store import AtlasReader
from seqatlas.util import region_span

_READ = ["seq_id", "pos", "ref", "entropy", "copy_offset", "copy_strand",
         *schema.LETTER_COLUMNS]
_RANK_CHUNK = 65536  # positions ranked at once (an (n, letters, letters) comparison)


def _reader(atlas) -> AtlasReader:
    return atlas if isinstance(atlas, AtlasReader) else AtlasReader(atlas)


def _lengths(reader: AtlasReader) -> dict[str, int]:
    rows = reader.sequences(columns=["seq_id", "length"])
    return dict(zip(rows["seq_id"].to_pylist(), rows["length"].to_pylist()))


def _unknown(reader: AtlasReader, seq_id: str, lengths: dict[str, int], what: str) -> str:
    shown = ", ".join(f"{s}:0-{n}" for s, n in list(lengths.items())[:5])
    more = f" and {len(lengths) - 5} more" if len(lengths) > 5 else ""
    holds = f"its sequences are {shown}{more}" if lengths else "it holds no sequences"
    return f"{what}: {reader.path} has no sequence {seq_id!r}; {holds}"


def resolve_span(atlas, *, region: str | None = None,
                 seq_id: str | None = None) -> tuple[str, int, int]:
    """``(seq_id, start, end)`` (0-based, half-open) of exactly one of ``region``
    (``SEQ:START-END`` as ``plot track --region`` takes it; ``SEQ`` alone: the whole
    sequence) or ``seq_id`` (the whole sequence), checked against the atlas; the error names
    what is wrong and the valid range."""
    if (region is None) == (seq_id is None):
        given = "both were given" if region is not None else "neither was given"
        raise ConfigError("give exactly one of region (SEQ:START-END, 0-based and half-open; "
                          f"--region) and seq_id (a whole sequence; --seq-id): {given}")
    reader = _reader(atlas)
    lengths = _lengths(reader)
    if seq_id is not None:
        if seq_id not in lengths:
            raise ConfigError(_unknown(reader, seq_id, lengths, f"seq_id {seq_id!r}"))
        return seq_id, 0, lengths[seq_id]
    return region_span(region, lengths, atlas=reader.path)


def _read_rows(reader: AtlasReader, seq_id: str, start: int, end: int) -> pa.Table:
    """The positions rows of ``[start, end)`` of ``seq_id`` (only those are read), by pos."""
    import pyarrow.dataset as ds

    arrow_schema = reader.manifest.positions_schema()
    paths = reader.part_paths("positions", region=(seq_id, start, end))
    if not paths:
        return arrow_schema.empty_table().select(_READ)
    where = (ds.field("seq_id") == seq_id) & (ds.field("pos") >= start) & \
        (ds.field("pos") < end)
    table = reader.dataset(paths, arrow_schema).to_table(columns=_READ, filter=where)
    return table.sort_by("pos")


def _matrix(column, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A list column as ``(rows, width)`` float64 (NaN rows where null) and its validity."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    valid = np.asarray(array.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    out = np.full((len(array), width), np.nan)
    if valid.any():
        values = pc.list_flatten(array.filter(pa.array(valid))).to_numpy(zero_copy_only=False)
        out[valid] = np.asarray(values, dtype=np.float64).reshape(-1, width)
    return out, valid


def _ranks(probs: np.ndarray) -> np.ndarray:
    """Per row and letter, 1 + the number of letters more probable (ties share a rank)."""
    out = np.empty(probs.shape, dtype=np.int16)
    for lo in range(0, len(probs), _RANK_CHUNK):
        block = probs[lo:lo + _RANK_CHUNK]
        out[lo:lo + _RANK_CHUNK] = 1 + (block[:, None, :] > block[:, :, None]).sum(axis=2)
    return out


def _nullable(values: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
    """``values`` with NaN as null."""
    return pa.array(values, type=arrow_type, mask=np.isnan(values))


def scan_rows(rows: pa.Table, letters: str, *, both_strands: bool) -> pa.Table:
    """The :data:`~seqatlas.schema.SCAN` table of positions ``rows`` (columns seq_id, pos,
    ref, entropy, copy_offset, copy_strand, letter_logp and letter_logp_rc, the lists fixed
    size or not, in any float type), in row order; ``letters`` in ``letter_logp`` order,
    ``both_strands`` as the atlas was scored (see the module docstring)."""
    width = len(letters)
    ref_index = pc.index_in(rows["ref"], value_set=pa.array(list(letters), pa.string()))
    fwd, has_fwd = _matrix(rows[schema.LETTER_COLUMNS[0]], width)
    keep = has_fwd & np.asarray(pc.is_valid(ref_index).to_numpy(zero_copy_only=False), bool)
    take = np.flatnonzero(keep)
    ref = np.asarray(pc.fill_null(ref_index, 0).to_numpy(zero_copy_only=False),
                     dtype=np.int64)[take]
    fwd = fwd[take]
    n, here = len(take), np.arange(len(take))
    llr_fwd = fwd - fwd[here, ref][:, None]
    probs = np.exp(fwd)
    if both_strands:
        rc = _matrix(rows[schema.LETTER_COLUMNS[1]], width)[0][take]
        llr_rc = rc - rc[here, ref][:, None]
        llr = (llr_fwd + llr_rc) / 2
        probs = (probs + np.exp(rc)) / 2
    else:
        llr_rc = np.full_like(llr_fwd, np.nan)
        llr = llr_fwd
    alts = np.ones((n, width), dtype=bool)
    alts[here, ref] = False  # row-major: per position, its alternatives in letter order
    row_of = pa.array(np.repeat(take, width - 1), pa.int64())
    alt_index = np.nonzero(alts)[1]
    ranks = _ranks(probs)[alts]
    positions = pc.take(rows["pos"], row_of).cast(pa.int64())
    columns = {
        "seq_id": pc.take(rows["seq_id"], row_of).cast(pa.string()),
        "pos": positions,
        "position": pc.add(positions, 1),
        "ref": pc.take(rows["ref"], row_of).cast(pa.string()),
        "alt": pa.array(np.array(list(letters), dtype=object)[alt_index], pa.string()),
        "llr": _nullable(llr[alts], pa.float64()),
        "llr_fwd": _nullable(llr_fwd[alts], pa.float64()),
        "llr_rc": _nullable(llr_rc[alts], pa.float64()),
        "p_alt": _nullable(probs[alts], pa.float64()),
        "rank_alt": pa.array(ranks, pa.int16(), mask=np.isnan(probs[alts])),
        "entropy": pc.take(rows["entropy"], row_of).cast(pa.float32()),
        "copy_offset": pc.take(rows["copy_offset"], row_of).cast(pa.int32()),
        "copy_strand": pc.take(rows["copy_strand"], row_of).cast(pa.string()),
    }
    return pa.Table.from_arrays([_chunk(columns[f.name]) for f in schema.SCAN],
                                schema=schema.SCAN)


def _chunk(array) -> pa.Array:
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


def _strands(reader: AtlasReader) -> bool:
    return reader.manifest.scoring.strands == "both"


def scan_variants(atlas, *, region: str | None = None, seq_id: str | None = None,
                  max_positions: int | None = None) -> pa.Table:
    """Every substitution at every position of ``region`` (``SEQ:START-END``, 0-based and
    half-open; ``SEQ`` alone: the whole sequence) or of the whole sequence ``seq_id`` (give
    exactly one), from the atlas's stored distributions: a :data:`seqatlas.schema.SCAN`
    table ordered by pos, then alt in letter order (see the module docstring for the
    columns and for the positions that give no rows). ``max_positions`` refuses a longer
    region. Only the region's positions rows are read."""
    reader = _reader(atlas)
    letters = require_distributions(reader, "a variant scan")
    if max_positions is not None and (isinstance(max_positions, bool) or
                                      not isinstance(max_positions, int) or max_positions < 1):
        raise ConfigError(f"max_positions must be a whole number, 1 or more, not "
                          f"{max_positions!r}")
    name, start, end = resolve_span(reader, region=region, seq_id=seq_id)
    if max_positions is not None and end - start > max_positions:
        raise ConfigError(f"{name}:{start}-{end} holds {end - start:,} positions, more than "
                          f"max_positions={max_positions:,}: scan a shorter region, or raise "
                          "max_positions")
    return scan_rows(_read_rows(reader, name, start, end), letters,
                     both_strands=_strands(reader))


def scan_first(atlas, *, max_positions: int) -> tuple[pa.Table, int]:
    """The scan of the atlas's first ``max_positions`` positions in atlas order (sequences
    by ordinal, then pos), and how many positions that covered (fewer when the atlas holds
    fewer): a bounded sample of a large atlas, as the HTML report draws it."""
    import pyarrow.dataset as ds

    reader = _reader(atlas)
    letters = require_distributions(reader, "a variant scan")
    spans, total = [], 0
    for seq_id, length in _lengths(reader).items():
        if total >= max_positions:
            break
        take = min(length, max_positions - total)
        spans.append((seq_id, take))
        total += take
    paths = reader.part_paths("positions")
    arrow_schema = reader.manifest.positions_schema()
    if not spans or not paths:
        return scan_rows(arrow_schema.empty_table().select(_READ), letters,
                         both_strands=_strands(reader)), 0
    (last, cut), whole = spans[-1], [s for s, _ in spans[:-1]]
    where = (ds.field("seq_id") == last) & (ds.field("pos") < cut)
    if whole:
        where = where | ds.field("seq_id").isin(whole)
    rows = reader.dataset(paths, arrow_schema).to_table(columns=_READ, filter=where)
    order = {seq_id: i for i, (seq_id, _) in enumerate(spans)}
    rank = pa.array([order[s] for s in rows["seq_id"].to_pylist()], pa.int64())
    rows = rows.append_column("_order", rank).sort_by([("_order", "ascending"),
                                                       ("pos", "ascending")])
    return scan_rows(rows.drop_columns(["_order"]), letters,
                     both_strands=_strands(reader)), total


def constraint_rows(scan: pa.Table) -> pa.Table:
    """Per position of a :func:`scan_variants` table: ``mean_llr`` and ``min_llr`` of its
    substitutions (null where their LLRs are), a :data:`seqatlas.schema.CONSTRAINT` table."""
    if not scan.num_rows:
        return schema.CONSTRAINT.empty_table()
    seq = scan["seq_id"].to_numpy(zero_copy_only=False)
    pos = scan["pos"].to_numpy()
    llr = np.asarray(scan["llr"].to_numpy(zero_copy_only=False), dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, (pos[1:] != pos[:-1]) | (seq[1:] != seq[:-1])])
    finite = ~np.isnan(llr)
    sums = np.add.reduceat(np.where(finite, llr, 0.0), starts)
    defined = np.add.reduceat(finite.astype(np.int64), starts)
    lows = np.minimum.reduceat(np.where(finite, llr, np.inf), starts)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(defined > 0, sums / np.maximum(defined, 1), np.nan)
    low = np.where(defined > 0, lows, np.nan)
    return pa.Table.from_arrays(
        [pa.array(seq[starts], pa.string()), pa.array(pos[starts], pa.int64()),
         _nullable(mean, pa.float64()), _nullable(low, pa.float64())],
        schema=schema.CONSTRAINT)


def constraint_track(atlas, *, seq_id: str | None = None,
                     region: str | None = None) -> pa.Table:
    """Per position of ``region`` or of the whole sequence ``seq_id`` (give exactly one, as
    :func:`scan_variants` takes them): ``mean_llr``, the mean LLR of the position's
    substitutions (its constraint summary), and ``min_llr``, the most damaging one; the
    values ``seqatlas export bigwig --column mean_llr|min_llr`` writes. Positions that
    give no scan rows are absent."""
    return constraint_rows(scan_variants(atlas, region=region, seq_id=seq_id))
