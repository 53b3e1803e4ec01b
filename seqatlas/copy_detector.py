"""The in-context copy detector: for each position, the nearest other occurrence of its
surrounding k-mer inside the window it was scored from. Pure numpy, no model.

Masked language models give anomalously high likelihood to a residue whose motif is
repeated elsewhere in the input, because they look the masked residue up in the other
copy (Kantroo, Wagner & Machta 2025). The detector finds those copies at ingest, so a query
can separate the positions that had a copy in their context from those that did not.

Definition (window-local coordinates; the window is the scoring window of the position,
``[window_start, window_end)`` of its ``positions`` row, of length ``L``):

- **Letters.** Matching is case-insensitive (soft-masked lowercase equals uppercase). DNA and
  RNA match A, C, G and T/U (T equals U); proteins match the 20 standard amino acids plus U
  and O. Any other letter (N, X, the ambiguity codes B/Z/J and R/Y/...) matches nothing, so a
  k-mer containing one is never matched, as query or as copy.
- **Surrounding k-mer** of position ``i``: the k-mer starting at
  ``a = clamp(i - (k - 1) // 2, 0, L - k)``: centred on ``i`` (for even ``k``, one more
  residue right of ``i`` than left), shifted inward at the window's edges so it stays
  inside the window. A window shorter than ``k`` has no k-mers: its positions get no copy.
- **Occurrences.** A *direct* occurrence is a k-mer at ``b`` (inside the window, ``0 <= b <=
  L - k``) equal to the surrounding k-mer; a *reverse-complement* occurrence (DNA/RNA only) is
  one equal to its reverse complement. The residue of the occurrence that corresponds to
  ``i`` is ``b + (i - a)`` for a direct one and the mirror position ``b + (k - 1) - (i - a)``
  for a reverse complement (the base ``i`` pairs with).
- **Offset** = corresponding residue - ``i`` (positive: the copy lies downstream). The
  occurrence at the position itself (``b = a`` direct, offset 0) does not count (no base is
  its own complement, so no reverse-complement occurrence has offset 0). Every other one
  does, including overlapping shifted occurrences, as in a tandem repeat (period ``p`` gives
  offset ``±p``), and the reverse complement of the surrounding k-mer at the same place when
  it is a palindrome like GAATTC (offsets mirror ``i`` about the palindrome's centre).
- **Nearest**: the smallest ``|offset|``; ties go to the direct occurrence, then to the
  upstream one (negative offset).

The result per position is ``(offset, strand)``: offset int32, strand +1 (direct) or -1
(reverse complement); ``(0, 0)`` means no copy (stored as nulls in ``copy_offset`` and
``copy_strand``).

Implementation: letters are coded into 2 bits (DNA) or base-22 digits (protein) and each
k-mer packed into an int64 (k-mers too long for one int64 are packed in chunks and ranked).
The windows are laid end to end with k invalid letters between them, every valid k-mer
start ``g`` becomes the sort key ``key * G + g``, and one binary search per position and
orientation finds the nearest occurrence on either side of the target start.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa

from seqatlas.errors import ConfigError

DEFAULT_K = {"dna": 12, "rna": 12, "protein": 6}
DEFINITION_VERSION = 1  # bump when the definition above changes: re-detection then re-runs

_INVALID = 255
_NUCLEIC_LETTERS = "ACGT"
_PROTEIN_LETTERS = "ACDEFGHIKLMNPQRSTVWYUO"


def _lookup(nucleic: bool) -> np.ndarray:
    table = np.full(256, _INVALID, dtype=np.uint8)
    letters = _NUCLEIC_LETTERS if nucleic else _PROTEIN_LETTERS
    for code, letter in enumerate(letters):
        table[ord(letter)] = table[ord(letter.lower())] = code
    if nucleic:
        table[ord("U")] = table[ord("u")] = 3
    return table


_LOOKUP = {True: _lookup(True), False: _lookup(False)}


def default_copy_k(kind: str) -> int:
    """The detector's default k-mer length: 12 for DNA/RNA, 6 for proteins."""
    return DEFAULT_K[kind]


def surrounding_kmer_start(i, length, k: int):
    """Start of the k-mer centred on position ``i`` of a window ``length`` long, shifted
    inside the window (``i`` and ``length`` may be arrays)."""
    return np.clip(np.asarray(i) - (k - 1) // 2, 0, np.maximum(np.asarray(length) - k, 0))


def _pack(codes: np.ndarray, k: int, base: int, n: int) -> np.ndarray:
    """Base-``base`` value of the k-mer at each of the first ``n`` starts."""
    key = np.zeros(n, dtype=np.int64)
    for j in range(k):
        key *= base
        key += codes[j : j + n]
    return key


def _kmer_keys(codes: np.ndarray, k: int, base: int) -> np.ndarray:
    """An int64 per k-mer start, equal iff the k-mers are equal (codes < base).

    One int64 holds up to 62 bits of letters; longer k-mers are packed in chunks whose
    tuples are ranked, so keys stay exact for any k.
    """
    n = len(codes) - k + 1
    per_chunk = int(62 // np.log2(base))
    if k <= per_chunk:
        return _pack(codes, k, base, n)
    chunks = [_pack(codes[s:], min(per_chunk, k - s), base, n) for s in range(0, k, per_chunk)]
    order = np.lexsort(chunks[::-1])
    changed = np.zeros(n, dtype=bool)
    for chunk in chunks:
        ordered = chunk[order]
        changed[1:] |= ordered[1:] != ordered[:-1]
    keys = np.empty(n, dtype=np.int64)
    keys[order] = np.cumsum(changed)
    return keys


def window_copies(windows: Sequence[bytes], owned: Sequence[tuple[int, int]], *, k: int,
                  nucleic: bool) -> tuple[np.ndarray, np.ndarray]:
    """Nearest in-context copy of every owned position of every window (module docstring).

    ``windows`` are the windows' residues; ``owned[w] = (lo, hi)`` are window-local bounds of
    the positions to report for window ``w``. Returns ``(offset, strand)`` over those
    positions, window after window: int32 offsets and int8 strands (+1 direct, -1 reverse
    complement), both 0 where a position has no copy.
    """
    if k < 1:
        raise ConfigError(f"the copy detector's k must be at least 1, not {k}")
    lengths = np.array([len(w) for w in windows], dtype=np.int64)
    lo = np.array([o[0] for o in owned], dtype=np.int64).reshape(-1)
    hi = np.array([o[1] for o in owned], dtype=np.int64).reshape(-1)
    counts = hi - lo
    total = int(counts.sum())
    offset = np.zeros(total, dtype=np.int32)
    strand = np.zeros(total, dtype=np.int8)
    if total == 0 or not (lengths >= k).any():
        return offset, strand

    codes = _laid_end_to_end(windows, k, nucleic)
    size = len(codes)  # G: every global start and target lies in [0, G)
    digits, valid = _digits(codes, k)
    keys, rc_keys = _kmer_and_rc_keys(digits, k, nucleic)
    keys, rc_keys = _leave_room_for_starts(keys, rc_keys, size)
    table = _start_table(keys, valid, size)
    query, g_a, g_i, first_start, last_start = _targets(lengths, lo, counts, valid, k)
    best = _nearest(table, size, keys[g_a], g_a, first_start, last_start)
    best_strand = np.where(best != 0, 1, 0).astype(np.int8)
    if nucleic:
        rc = _nearest(table, size, rc_keys[g_a], 2 * g_i - g_a - k + 1, first_start,
                      last_start)
        closer = (rc != 0) & ((best == 0) | (np.abs(rc) < np.abs(best)))
        best = np.where(closer, rc, best)
        best_strand = np.where(closer, -1, best_strand).astype(np.int8)
    offset[query] = best
    strand[query] = best_strand
    return offset, strand


def _laid_end_to_end(windows: Sequence[bytes], k: int, nucleic: bool) -> np.ndarray:
    """Letter codes of the windows end to end, k invalid letters before, between and after
    them (window ``w`` starts at :func:`_window_starts`)."""
    separator = b"\0" * k
    data = separator + separator.join(windows) + separator
    return _LOOKUP[nucleic][np.frombuffer(data, dtype=np.uint8)]


def _window_starts(lengths: np.ndarray, k: int) -> np.ndarray:
    """Global index of each window's first letter in :func:`_laid_end_to_end`."""
    return k + np.concatenate([[0], np.cumsum(lengths + k)[:-1]])


def _digits(codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """int64 digits (invalid letters as 0) and, per k-mer start, whether its k-mer holds
    only valid letters."""
    n = len(codes) - k + 1
    bad = codes == _INVALID
    invalid = np.concatenate([[0], np.cumsum(bad, dtype=np.int64)])
    valid = invalid[k : k + n] == invalid[:n]
    return np.where(bad, 0, codes).astype(np.int64), valid


def _kmer_and_rc_keys(digits: np.ndarray, k: int,
                      nucleic: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Key of the k-mer at each start and (DNA/RNA) of its reverse complement, comparable
    with each other; ``None`` for proteins."""
    base = 4 if nucleic else len(_PROTEIN_LETTERS)
    keys = _kmer_keys(digits, k, base)
    if not nucleic:
        return keys, None
    size = len(digits)
    n = size - k + 1
    complement = 3 - digits
    if k * 2 > 62:  # rank forward and reverse-complement k-mers together
        both = np.concatenate([digits, np.zeros(k, np.int64), complement[::-1]])
        joint = _kmer_keys(both, k, 4)
        return joint[:n], joint[2 * size - np.arange(n)]
    rc_keys = np.zeros(n, dtype=np.int64)
    for j in reversed(range(k)):
        rc_keys *= 4
        rc_keys += complement[j : j + n]
    return keys, rc_keys


def _leave_room_for_starts(keys: np.ndarray, rc_keys: np.ndarray | None,
                           size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Keys small enough that ``key * G + g < 2**63``: ranked densely when they are not."""
    bits_needed = int(max(keys.max(), rc_keys.max() if rc_keys is not None else 0)).bit_length()
    if bits_needed + int(size).bit_length() <= 62:
        return keys, rc_keys
    n = len(keys)
    everything = keys if rc_keys is None else np.concatenate([keys, rc_keys])
    _, dense = np.unique(everything, return_inverse=True)
    return dense[:n], (dense[n:] if rc_keys is not None else None)


def _start_table(keys: np.ndarray, valid: np.ndarray, size: int) -> np.ndarray:
    """The sorted ``key * G + g`` of every valid k-mer start ``g``."""
    starts = np.flatnonzero(valid)
    return np.sort(keys[starts] * size + starts)


def _targets(lengths: np.ndarray, lo: np.ndarray, counts: np.ndarray, valid: np.ndarray,
             k: int) -> tuple[np.ndarray, ...]:
    """One query per owned position: the mask of positions that have a valid surrounding
    k-mer and, for those, the global surrounding k-mer start, the position and the first
    and last k-mer start of its window."""
    n = len(valid)
    window = np.repeat(np.arange(len(lengths)), counts)
    first = np.cumsum(counts) - counts  # index of each window's first owned position
    local = np.arange(int(counts.sum())) - first[window] + lo[window]
    length = lengths[window]
    first_start = _window_starts(lengths, k)[window]
    g_a = first_start + surrounding_kmer_start(local, length, k)
    g_i = first_start + local
    last_start = first_start + length - k
    query = (length >= k) & valid[np.minimum(g_a, n - 1)]
    return query, g_a[query], g_i[query], first_start[query], last_start[query]


def _nearest(table: np.ndarray, size: int, key: np.ndarray, target: np.ndarray,
             first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Per query, ``b - target`` for the start ``b != target`` of ``key`` in
    ``[first, last]`` nearest to ``target`` (ties upstream); 0 when there is none."""
    probe = key * size + target
    order = np.argsort(probe)  # sorted probes: the searches walk the table in order
    probe, key = probe[order], key[order]
    first, last = first[order], last[order]
    left = np.searchsorted(table, probe, side="left")  # first entry >= probe
    at = table[np.minimum(left, len(table) - 1)] == probe
    right = left + at  # first entry > probe
    before = table[np.maximum(left - 1, 0)]
    before_ok = (left > 0) & (before >= key * size + first)
    after = table[np.minimum(right, len(table) - 1)]
    after_ok = (right < len(table)) & (after <= key * size + last)
    up = np.where(before_ok, before - probe, 0)  # negative
    down = np.where(after_ok, after - probe, 0)  # positive
    take_down = after_ok & (~before_ok | (down < -up))
    nearest = np.empty(len(probe), dtype=np.int32)
    nearest[order] = np.where(take_down, down, up)
    return nearest


def nearest_copies(residues: str | bytes, *, k: int, nucleic: bool, start: int = 0,
                   end: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`window_copies` of one window ``residues``, for its positions ``[start, end)``."""
    data = residues.encode() if isinstance(residues, str) else bytes(residues)
    end = len(data) if end is None else end
    return window_copies([data], [(start, end)], k=k, nucleic=nucleic)


def copy_columns(offset: np.ndarray, strand: np.ndarray) -> tuple[pa.Array, pa.Array]:
    """The ``copy_offset`` (int32) and ``copy_strand`` ("+"/"-") columns; null: no copy."""
    none = strand == 0
    letters = pa.array(["+", "-"], pa.string())
    index = pa.array(np.where(strand < 0, 1, 0).astype(np.int8), mask=none)
    return pa.array(offset, pa.int32(), mask=none), letters.take(index)
