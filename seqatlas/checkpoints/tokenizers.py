"""Tokenizer families: how residues become model tokens, which tokens hide a residue, and
how a masked token's predicted distribution becomes a distribution over one residue.

Every family is built from the checkpoint's vocabulary directly: generic tokenizer classes
are not trusted to split residues (transformers 5's BertTokenizer maps AntiBERTy's residues
to [UNK]). Families:

- ``single``: one token per residue or base (ESM2, AntiBERTy, single-nucleotide models).
- ``overlapping_kmer``: DNABERT; token j is bases j..j+k-1. Base i is hidden by masking the
  k tokens that contain it. p(base i = b) is the arithmetic mean, over those k masked tokens,
  of the probability that the token's letter at i's offset is b (each token's distribution
  over the 4^k k-mers is marginalised to that offset).
- ``nonoverlapping_kmer``: Nucleotide Transformer; greedy k-mers from the window start, a
  single-base token where a k-mer would include a non-ACGT base or run past the end. Base i
  is hidden by masking its token, which also hides the token's other bases.
- ``bpe``: DNABERT-2-like; a ``tokenizers`` BPE model gives variable-length tokens and their
  offsets. Masking and marginalisation as for non-overlapping k-mers; the masked token's
  distribution is taken over the vocabulary tokens of the same length.

For a masked token of length l, the candidates are the vocabulary tokens of length l made
only of scored letters; their probabilities are renormalised, so special tokens and
ambiguity codes never take probability mass.

Letters, per kind and per vocabulary (:class:`TokenizerFamily`):

- the kind's standard letters (``letters``: 20 amino acids, ACGT, ACGU) are the distribution;
- a nucleic acid's T or U is read as the vocabulary's other one only when the vocabulary has
  no token with it and has the other (RNA with a DNA model: U is tokenized as T and the
  model's T is the distribution's U); that map is ``letter_map`` and is recorded in the
  manifest's model record (``model.letter_map``);
- other letters that name one residue (a protein's U and O, DNA's U, RNA's T) are scored as
  themselves when the vocabulary has them (ESM's U), against the standard letters plus that
  letter, and are never scored as another letter;
- a residue letter the model has no token for (U with AntiBERTy, U in DNA with a DNA model)
  gets null logp, entropy and rank (:data:`UNSCORABLE`); ambiguity codes (N, X, B, Z, ...)
  get null logp and rank (:data:`NOT_A_LETTER`) and the entropy of the standard letters.
"""

from __future__ import annotations

import itertools
import json
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seqatlas.errors import ModelError

FAST_MASK_RATE = 0.15  # tokens masked per pass in fast mode, as in BERT training
# Overlapping k-mers hide a base only by masking the k tokens holding it, so a pass masks
# contiguous k-token spans. For 6-mers, spans 20 bases apart (30% of tokens) kept per-base
# logp at Spearman 0.997 with exact on held-out chrX (40: 0.999, 24: 0.998, 16: 0.996) for
# 5x fewer passes than exact per 100-base owned span; the head's readouts are the same in
# both modes, so 20 (not 24) is what keeps fast mode >= 4x exact
# (python benchmarks/genome_scale.py --part fast --strides 40,24,16 measures it).
OVERLAPPING_KMER_MASK_RATE = 0.3

# letter_index values that are not an index into ``scored_letters``
NOT_A_LETTER = -1  # an ambiguity code or other non-residue letter: null logp and rank
UNSCORABLE = -2  # a residue letter the model has no token for: null logp, entropy, rank


@dataclass(frozen=True)
class SpecialTokens:
    prefix: tuple[int, ...]  # ids placed before the residues (e.g. [CLS])
    suffix: tuple[int, ...]  # ids placed after them (e.g. [SEP] / <eos>)
    mask: int
    pad: int
    unk: int


@dataclass
class WindowTokens:
    """A tokenized window: ids with special tokens, and each token's window-local span."""

    ids: np.ndarray  # int64, special tokens included
    starts: np.ndarray  # int64, per non-special token
    ends: np.ndarray
    prefix: int

    @property
    def n_tokens(self) -> int:
        return len(self.starts)


@dataclass(frozen=True)
class Candidates:
    """Vocabulary tokens of one length and the one-hot map to (offset, letter)."""

    token_ids: np.ndarray  # (C,)
    letter_at: np.ndarray  # (C, length): index into the scored letters


_COMPLEMENT = bytes.maketrans(b"ACGTUNRYSWKMBDHVacgtunryswkmbdhv",
                              b"TGCAANYRSWMKVHDBtgcaanyrswmkvhdb")
_RNA_COMPLEMENT = bytes.maketrans(b"ACGTUNRYSWKMBDHVacgtunryswkmbdhv",
                                  b"UGCAANYRSWMKVHDBugcaanyrswmkvhdb")


def reverse_complement(residues: bytes, *, rna: bool = False) -> bytes:
    """The reverse complement; ``rna``: A pairs with U (else T)."""
    return residues.translate(_RNA_COMPLEMENT if rna else _COMPLEMENT)[::-1]


def vocabulary_letters(vocab: dict[str, int]) -> set[str]:
    """The (uppercase) letters the vocabulary's non-special tokens are made of."""
    return {c for w in _words(vocab) for c in w.upper() if c.isalpha()}


def thymine_uracil_map(letters: str, vocab_letters: set[str]) -> dict[str, str]:
    """``{kind letter: vocabulary letter}`` for a nucleic acid whose T (DNA) or U (RNA) the
    vocabulary lacks while it has the other: RNA with a DNA model gives ``{"U": "T"}``."""
    for mine, other in (("T", "U"), ("U", "T")):
        if mine in letters and other not in letters and mine not in vocab_letters \
                and other in vocab_letters:
            return {mine: other}
    return {}


class TokenizerFamily(ABC):
    """Shared machinery; subclasses define tokenization and coverage."""

    family = "base"
    bases_per_token = 1  # tokens masked per hidden base, for the fast-mode stride

    def __init__(self, vocab: dict[str, int], specials: SpecialTokens, letters: str, *,
                 extra: str = ""):
        """``letters``: the kind's standard letters (the distribution); ``extra``: other
        letters naming one residue, scored as themselves when the vocabulary has them."""
        self.vocab = dict(vocab)
        self.specials = specials
        self.id_to_token = {i: t for t, i in vocab.items()}
        self.letters = letters
        have = vocabulary_letters(vocab)
        self.letter_map = thymine_uracil_map(letters, have)
        spelled = {v: k for k, v in self.letter_map.items()}  # vocabulary letter -> kind's
        own = "".join(c for c in extra if c in have and c not in spelled and c not in letters)
        # the standard letters first (indices 0..len(letters)-1), then the extra ones
        self.scored_letters = letters + own
        self._token_letter = {c: self.scored_letters.index(spelled.get(c, c)) for c in have
                              if spelled.get(c, c) in self.scored_letters
                              and c not in self.letter_map}
        pairs = [(k.encode() + k.lower().encode(), v.encode() + v.lower().encode())
                 for k, v in self.letter_map.items()]
        self._to_vocab = bytes.maketrans(b"".join(a for a, _ in pairs),
                                         b"".join(b for _, b in pairs)) if pairs else None
        self.candidates = self._build_candidates()
        if not self.candidates:
            raise ModelError(f"the model vocabulary has no tokens made of {letters!r}: is it a "
                             "model for another kind of sequence (check --kind)?")
        expressible = {int(k) for c in self.candidates.values() for k in np.unique(c.letter_at)}
        # byte -> index into scored_letters, NOT_A_LETTER or UNSCORABLE
        self._byte_to_letter = np.full(256, NOT_A_LETTER, dtype=np.int64)
        for c in extra:
            self._byte_to_letter[[ord(c), ord(c.lower())]] = UNSCORABLE
        for k, c in enumerate(self.scored_letters):
            self._byte_to_letter[[ord(c), ord(c.lower())]] = \
                k if k in expressible else UNSCORABLE

    # -- what every family answers -------------------------------------------------------
    @property
    def n_special(self) -> int:
        return len(self.specials.prefix) + len(self.specials.suffix)

    def residues_per_window(self, context_tokens: int) -> int:
        """Default window in residues whose tokenization always fits the context."""
        return context_tokens - self.n_special

    def min_overlap(self) -> int:
        """Smallest window overlap that keeps every token of an owned base in the window."""
        return 0

    @abstractmethod
    def tokenize(self, residues: bytes) -> WindowTokens:
        """Token ids and window-local spans of a window's residues."""

    def covering(self, tokens: WindowTokens, base: int) -> np.ndarray:
        """Token indices (among non-special tokens) whose masking hides ``base``."""
        token, ok = self._token_of(tokens, np.array([base]))
        return token[ok]

    def cover_pairs(self, tokens: WindowTokens, bases: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Every (token, base) pair with ``base`` in ``bases`` inside ``token``, vectorised."""
        token, ok = self._token_of(tokens, bases)
        return token[ok], bases[ok]

    @staticmethod
    def _token_of(tokens: WindowTokens, bases: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The token containing each base, for families whose tokens do not overlap."""
        token = np.searchsorted(tokens.starts, bases, side="right") - 1
        ok = token >= 0
        ok[ok] &= tokens.ends[token[ok]] > bases[ok]
        return np.maximum(token, 0), ok

    def fast_stride(self) -> int:
        """Mask units per pass are this far apart, so ~15% of tokens are masked per pass."""
        return math.ceil(self.bases_per_token / FAST_MASK_RATE - 1e-9)

    @property
    def n_standard(self) -> int:
        """How many of :attr:`scored_letters` are the kind's standard letters (the first)."""
        return len(self.letters)

    def letter_index(self, residues: bytes) -> np.ndarray:
        """Index of each residue into :attr:`scored_letters` (the standard letters first),
        or :data:`NOT_A_LETTER` / :data:`UNSCORABLE` (both negative)."""
        return self._byte_to_letter[np.frombuffer(residues, dtype=np.uint8)]

    def reverse_complement(self, residues: bytes) -> bytes:
        """The reverse complement in the kind's letters (an RNA's A pairs with U)."""
        return reverse_complement(residues, rna="U" in self.letters and "T" not in self.letters)

    def vocab_spelling(self, residues: bytes) -> bytes:
        """``residues`` in the vocabulary's letters (:attr:`letter_map` applied)."""
        return residues.translate(self._to_vocab) if self._to_vocab else residues

    def token_texts(self, ids: np.ndarray) -> list[str]:
        return [self.id_to_token.get(int(i), "[UNK]") for i in ids]

    def describe(self) -> dict:
        return {"family": self.family, "letters": self.letters,
                "prefix_ids": list(self.specials.prefix),
                "suffix_ids": list(self.specials.suffix), "mask_id": self.specials.mask}

    # -- helpers --------------------------------------------------------------------------
    def _wrap(self, body: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> WindowTokens:
        ids = np.concatenate([np.array(self.specials.prefix, dtype=np.int64),
                              body.astype(np.int64),
                              np.array(self.specials.suffix, dtype=np.int64)])
        return WindowTokens(ids, starts.astype(np.int64), ends.astype(np.int64),
                            len(self.specials.prefix))

    def _build_candidates(self) -> dict[int, Candidates]:
        by_length: dict[int, list[tuple[int, list[int]]]] = {}
        for token, token_id in self.vocab.items():
            if token.startswith(("[", "<")) or not token:
                continue
            letters = [self._token_letter.get(c, -1) for c in token.upper()]
            if token.upper() != token or min(letters) < 0:
                continue
            by_length.setdefault(len(token), []).append((token_id, letters))
        # sorted by id, so a contiguous block of ids can be read as a slice of the logits
        return {length: Candidates(np.array([i for i, _ in sorted(items)], dtype=np.int64),
                                   np.array([l for _, l in sorted(items)], dtype=np.int64))
                for length, items in by_length.items()}


class SingleResidueTokenizer(TokenizerFamily):
    """One token per residue or base."""

    family = "single"

    def __init__(self, vocab, specials, letters, *, extra: str = ""):
        super().__init__(vocab, specials, letters, extra=extra)
        self._byte_to_id = np.full(256, specials.unk, dtype=np.int64)
        for c, token in vocab.items():
            if len(c) == 1 and c.isalpha() and c.upper() == c:
                self._byte_to_id[[ord(c), ord(c.lower())]] = token

    def tokenize(self, residues: bytes) -> WindowTokens:
        n = len(residues)
        body = self._byte_to_id[np.frombuffer(self.vocab_spelling(residues), dtype=np.uint8)]
        return self._wrap(body, np.arange(n), np.arange(1, n + 1))

    def covering(self, tokens, base):
        return np.array([base], dtype=np.int64)

    def cover_pairs(self, tokens, bases):
        return bases.copy(), bases


class OverlappingKmerTokenizer(TokenizerFamily):
    """DNABERT: every k-mer of the window, stride 1."""

    family = "overlapping_kmer"

    def __init__(self, vocab, specials, letters, k: int, *, extra: str = ""):
        self.k = self.bases_per_token = k
        super().__init__(vocab, specials, letters, extra=extra)
        self._code_to_id = np.full(4**k, specials.unk, dtype=np.int64)
        for code, kmer in enumerate(itertools.product("ACGT", repeat=k)):
            self._code_to_id[code] = vocab.get("".join(kmer), specials.unk)
        # the k-mers are spelled in ACGT; an RNA's U reaches them through letter_map
        self._byte_to_code = np.full(256, -1, dtype=np.int64)
        for code, c in enumerate("ACGT"):
            self._byte_to_code[[ord(c), ord(c.lower())]] = code

    def residues_per_window(self, context_tokens: int) -> int:
        return context_tokens - self.n_special + self.k - 1

    def min_overlap(self) -> int:
        # an owned base needs all k tokens containing it, so k - 1 bases of margin each side
        return 2 * self.k - 1

    def fast_stride(self) -> int:
        return math.ceil(self.k / OVERLAPPING_KMER_MASK_RATE - 1e-9)

    def tokenize(self, residues: bytes) -> WindowTokens:
        k, n = self.k, len(residues)
        count = max(0, n - k + 1)
        codes = self._byte_to_code[np.frombuffer(self.vocab_spelling(residues), dtype=np.uint8)]
        if count == 0:
            return self._wrap(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
        valid = codes >= 0
        value = np.zeros(count, dtype=np.int64)
        bad = np.zeros(count, dtype=bool)
        for t in range(k):
            value = value * 4 + np.where(valid[t : t + count], codes[t : t + count], 0)
            bad |= ~valid[t : t + count]
        body = np.where(bad, self.specials.unk, self._code_to_id[value])
        starts = np.arange(count)
        return self._wrap(body, starts, starts + k)

    def covering(self, tokens, base):
        lo = max(0, base - self.k + 1)
        hi = min(base, tokens.n_tokens - 1)
        return np.arange(lo, hi + 1, dtype=np.int64)

    def cover_pairs(self, tokens, bases):
        token = (bases[:, None] - np.arange(self.k)[None, :]).reshape(-1)
        base = np.repeat(bases, self.k)
        ok = (token >= 0) & (token < tokens.n_tokens)
        return token[ok], base[ok]

    def describe(self) -> dict:
        return {**super().describe(), "k": self.k,
                "combine": "mean over the k masked tokens of each token's marginal "
                           "probability of the letter at the base's offset"}


class NonOverlappingKmerTokenizer(TokenizerFamily):
    """Nucleotide Transformer: greedy k-mers, single-base tokens for N and the tail."""

    family = "nonoverlapping_kmer"

    def __init__(self, vocab, specials, letters, k: int, *, extra: str = ""):
        self.k = k
        super().__init__(vocab, specials, letters, extra=extra)
        self._single = np.full(256, specials.unk, dtype=np.int64)
        for c, token in vocab.items():
            if len(c) == 1 and c.isalpha():
                self._single[[ord(c.upper()), ord(c.lower())]] = token
        self._ok = np.zeros(256, dtype=bool)  # bases a k-mer may hold, in vocabulary letters
        for c in letters:
            c = self.letter_map.get(c, c)
            self._ok[[ord(c), ord(c.lower())]] = True

    def residues_per_window(self, context_tokens: int) -> int:
        # half the best case, so short N runs (single-base tokens) still fit the context
        return (context_tokens - self.n_special) * self.k // 2

    def tokenize(self, residues: bytes) -> WindowTokens:
        k, n = self.k, len(residues)
        residues = self.vocab_spelling(residues)
        raw = np.frombuffer(residues, dtype=np.uint8)
        ok = self._ok[raw]
        # a k-mer may start at i when bases i..i+k-1 are all ACGT
        run = np.convolve(ok.astype(np.int64), np.ones(k, dtype=np.int64), "valid") == k \
            if n >= k else np.zeros(0, dtype=bool)
        upper = residues.upper()
        starts, ends, body = [], [], []
        i = 0
        while i < n:
            if i < len(run) and run[i]:
                starts.append(i)
                ends.append(i + k)
                body.append(self.vocab.get(upper[i : i + k].decode(), self.specials.unk))
                i += k
            else:
                starts.append(i)
                ends.append(i + 1)
                body.append(self._single[raw[i]])
                i += 1
        return self._wrap(np.array(body, dtype=np.int64), np.array(starts), np.array(ends))

    def describe(self) -> dict:
        return {**super().describe(), "k": self.k}


class BpeTokenizer(TokenizerFamily):
    """DNABERT-2-like BPE through the ``tokenizers`` library; offsets from the tokenizer."""

    family = "bpe"

    def __init__(self, vocab, specials, letters, tokenizer_json: str, *, extra: str = ""):
        super().__init__(vocab, specials, letters, extra=extra)
        from tokenizers import Tokenizer

        self.tokenizer_json = tokenizer_json
        self._tokenizer = Tokenizer.from_str(tokenizer_json)
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_tokenizer")
        return state

    def __setstate__(self, state):
        from tokenizers import Tokenizer

        self.__dict__.update(state)
        self._tokenizer = Tokenizer.from_str(self.tokenizer_json)

    def tokenize(self, residues: bytes) -> WindowTokens:
        encoding = self._tokenizer.encode(self.vocab_spelling(residues).decode().upper(),
                                          add_special_tokens=False)
        offsets = np.array(encoding.offsets, dtype=np.int64).reshape(-1, 2)
        return self._wrap(np.array(encoding.ids, dtype=np.int64), offsets[:, 0], offsets[:, 1])


FAMILIES = ("single", "overlapping_kmer", "nonoverlapping_kmer", "bpe")

_SPECIAL_NAMES = {
    "mask": ("[MASK]", "<mask>"),
    "pad": ("[PAD]", "<pad>"),
    "unk": ("[UNK]", "<unk>"),
    "cls": ("[CLS]", "<cls>", "<s>"),
    "eos": ("[SEP]", "<eos>", "</s>"),
}


def _find(vocab: dict[str, int], role: str) -> int | None:
    for name in _SPECIAL_NAMES[role]:
        if name in vocab:
            return vocab[name]
    return None


def specials_from_vocab(vocab: dict[str, int], *, suffix: bool = True) -> SpecialTokens:
    """BERT/ESM-style layout ([CLS] x [SEP] or <cls> x <eos>) read from token names."""
    found = {role: _find(vocab, role) for role in _SPECIAL_NAMES}
    if found["mask"] is None:
        raise ModelError("the vocabulary has no mask token ([MASK] or <mask>): not a masked LM")
    unk = found["unk"] if found["unk"] is not None else found["mask"]
    pad = found["pad"] if found["pad"] is not None else unk
    prefix = (found["cls"],) if found["cls"] is not None else ()
    tail = (found["eos"],) if found["eos"] is not None and suffix else ()
    return SpecialTokens(prefix=prefix, suffix=tail, mask=found["mask"], pad=pad, unk=unk)


def _words(vocab: dict[str, int]) -> list[str]:
    return [t for t in vocab if t and not t.startswith(("[", "<"))]


def detect_family(vocab: dict[str, int], *, declared: str | None = None,
                  bpe: bool = False) -> tuple[str, int]:
    """Tokenizer family and k implied by a checkpoint's vocabulary (and declarations)."""
    words = _words(vocab)
    lengths = [len(w) for w in words if w.isalpha()]
    k = max(set(lengths), key=lengths.count) if lengths else 1
    if declared:
        if declared not in FAMILIES:
            raise ModelError(f"unknown tokenizer family {declared!r}; choose one of "
                             f"{', '.join(FAMILIES)}")
        return declared, (k if declared.endswith("kmer") else 1)
    if bpe:
        return "bpe", 1
    if k == 1:
        return "single", 1
    kmers = {w for w in words if len(w) == k and set(w) <= set("ACGT")}
    if len(kmers) < 4**k * 0.9:
        raise ModelError(f"cannot tell the tokenizer family of this vocabulary (most words have "
                         f"length {k} but only {len(kmers)} of the {4**k} {k}-mers are present); "
                         "pass --tokenizer")
    singles = {w for w in words if len(w) == 1}
    return ("nonoverlapping_kmer" if {"A", "C", "G", "T"} <= singles
            else "overlapping_kmer"), k


def make_tokenizer(family: str, *, vocab: dict[str, int], specials: SpecialTokens,
                   letters: str, k: int = 1, tokenizer_json: str | None = None,
                   extra: str = "") -> TokenizerFamily:
    if family == "single":
        return SingleResidueTokenizer(vocab, specials, letters, extra=extra)
    if family == "overlapping_kmer":
        return OverlappingKmerTokenizer(vocab, specials, letters, k, extra=extra)
    if family == "nonoverlapping_kmer":
        return NonOverlappingKmerTokenizer(vocab, specials, letters, k, extra=extra)
    if family == "bpe":
        if tokenizer_json is None:
            raise ModelError("a BPE model needs its tokenizer.json")
        return BpeTokenizer(vocab, specials, letters, tokenizer_json, extra=extra)
    raise ModelError(f"unknown tokenizer family {family!r}; choose one of {', '.join(FAMILIES)}")


def read_vocab_txt(path: Path | str) -> dict[str, int]:
    with open(path, encoding="utf-8") as fh:
        # ids are line numbers, so a blank line still takes an id
        vocab = {line.rstrip("\r\n"): i for i, line in enumerate(fh)}
    vocab.pop("", None)
    return vocab


def read_tokenizer_json(path: Path | str) -> tuple[dict[str, int], bool, str]:
    """Vocabulary, whether the model is BPE, and the raw JSON of a ``tokenizer.json``."""
    text = Path(path).read_text()
    data = json.loads(text)
    model = data.get("model", {})
    vocab = dict(model.get("vocab", {}) or {})
    if isinstance(model.get("vocab"), list):  # unigram: [[token, score], ...]
        vocab = {t: i for i, (t, _) in enumerate(model["vocab"])}
    for added in data.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
    return vocab, model.get("type") == "BPE", text
