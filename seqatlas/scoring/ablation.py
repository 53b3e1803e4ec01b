"""Corrupting a region of a window and rescoring chosen bases: pure functions, no model.

Used by ``probe icl`` (corrupt an in-context copy, or a matched control region, and rescore
the target) and ``probe doubling`` (corrupt copy 2 of S+S). Three corruptions:

- ``mask``: every model token containing at least one base of the region is masked. For
  single-residue tokenizers that is the region's residues; for k-mer and BPE tokenizers it
  also hides the bases that share a token with the region's edge bases (an overlapping
  k-mer model masks the region's tokens plus the k - 1 tokens straddling each edge).
- ``shuffle``: the region's residues are permuted (seeded); the window is then tokenized
  again, so every token overlapping a moved base changes.
- ``substitute``: each base of the region is drawn (seeded, independently) from the letter
  composition of the sequence it belongs to (its standard letters); tokenized again as for
  ``shuffle``.

The bases being scored are never inside a corrupted region, and their letters are the
original ones. For tokenizers whose token boundaries depend on the residues (non-overlapping
k-mers around N, BPE), a residue corruption can move the boundaries of tokens straddling the
region's edges; the passes are then planned on the corrupted window's own tokens.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from seqatlas import schema
from seqatlas.errors import ConfigError

METHODS = schema.ABLATION_METHODS
# the modes a probe rescores in: masked (exact, fast) or, for a causal model, causal
RESCORE_LIKELIHOODS = ("exact", "fast", "causal")


@dataclass(frozen=True)
class RescoreTask:
    """One window as the model sees it, and the bases whose masked logp is read.

    Coordinates are window-local. ``own_start``/``own_end`` are the bases the window owned
    at ingest (fast mode deals their mask units into passes exactly as ingest did).
    """

    residues: bytes  # after any residue-level corruption (shuffle, substitute)
    own_start: int
    own_end: int
    bases: np.ndarray = field(repr=False)  # int64, the bases to score
    masked_regions: tuple[tuple[int, int], ...] = ()  # tokens touching these are masked


def region_tokens(starts: np.ndarray, ends: np.ndarray, regions) -> np.ndarray:
    """Indices of the tokens that contain at least one base of any ``(start, end)`` region."""
    hit = np.zeros(len(starts), dtype=bool)
    for lo, hi in regions:
        if hi > lo:
            hit |= (starts < hi) & (ends > lo)
    return np.flatnonzero(hit).astype(np.int64)


def region_rng(seed: int, *parts) -> np.random.Generator:
    """A generator determined by ``seed`` and what is corrupted (sequence, interval, role),
    so a region's corruption never depends on how the work was batched or split."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return np.random.default_rng([int(seed), int.from_bytes(hashlib.sha256(text).digest()[:16],
                                                            "little")])


def corrupt(residues: bytes, start: int, end: int, *, method: str,
            rng: np.random.Generator | None = None, composition: bytes = b""
            ) -> tuple[bytes, tuple[tuple[int, int], ...]]:
    """``residues`` with ``[start, end)`` corrupted by ``method``: the new residues and the
    regions whose tokens must be masked (``mask``; else none).

    ``composition``: the letters substitution draws from, with their frequencies (the
    sequence's standard letters); case follows the replaced residue.
    """
    if method not in METHODS:
        raise ConfigError(f"--method must be one of {', '.join(METHODS)}, not {method!r}")
    if end <= start:
        return residues, ()
    if method == "mask":
        return residues, ((start, end),)
    data = np.frombuffer(residues, dtype=np.uint8).copy()
    region = data[start:end]
    if method == "shuffle":
        data[start:end] = region[rng.permutation(len(region))]
    else:
        pool = np.frombuffer(composition.upper(), dtype=np.uint8)
        if not len(pool):
            raise ConfigError("cannot substitute: the sequence has no standard letters")
        drawn = pool[rng.integers(0, len(pool), size=len(region))]
        lower = (region >= ord("a")) & (region <= ord("z"))
        data[start:end] = np.where(lower, drawn + 32, drawn)
    return data.tobytes(), ()


def standard_letters(residues: bytes, letters: str) -> bytes:
    """The residues that are standard letters of the kind (uppercase), for substitution."""
    upper = np.frombuffer(residues.upper(), dtype=np.uint8)
    keep = np.isin(upper, np.frombuffer(letters.upper().encode(), dtype=np.uint8))
    if set(letters.upper()) == set("ACGT"):  # RNA read as DNA letters: U counts as T
        # (never in a protein, whose T is threonine and whose U is selenocysteine)
        keep |= upper == ord("U")
    return upper[keep].tobytes()
