"""Tokenizer families: how residues become model tokens and how tokens map back to residues.

Character tokenizers are built from the vocabulary directly: generic tokenizer classes
are not trusted to split residues (transformers 5's BertTokenizer maps AntiBERTy's
residues to [UNK]). Each family answers the same questions, so k-mer and BPE families
slot in beside :class:`SingleResidueTokenizer`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from seqatlas.errors import ModelError


@dataclass(frozen=True)
class SpecialTokens:
    prefix: tuple[int, ...]  # ids placed before the residues (e.g. [CLS])
    suffix: tuple[int, ...]  # ids placed after them (e.g. [SEP] / <eos>)
    mask: int
    pad: int
    unk: int


class SingleResidueTokenizer:
    """One token per residue or base (ESM2, AntiBERTy, single-nucleotide DNA models)."""

    family = "single"

    def __init__(self, vocab: dict[str, int], specials: SpecialTokens, alphabet: str):
        self.vocab = dict(vocab)
        self.specials = specials
        self.id_to_token = {i: t for t, i in vocab.items()}
        # Letters the model can name; the predictive distribution is normalised over them.
        self.letters = "".join(c for c in alphabet if c in vocab)
        if not self.letters:
            raise ModelError(
                f"the model vocabulary has none of the letters {alphabet!r}: "
                "is this a model for another kind of sequence (check --kind)?"
            )
        self.letter_ids = np.array([vocab[c] for c in self.letters], dtype=np.int64)
        # byte -> token id (uppercase and lowercase), unknown letters -> unk
        self._byte_to_id = np.full(256, specials.unk, dtype=np.int64)
        # byte -> index into self.letters, -1 when the model has no such letter
        self._byte_to_letter = np.full(256, -1, dtype=np.int64)
        for c, token in vocab.items():
            if len(c) == 1 and c.isalpha() and c.upper() == c:
                for b in (ord(c), ord(c.lower())):
                    self._byte_to_id[b] = token
        for k, c in enumerate(self.letters):
            for b in (ord(c), ord(c.lower())):
                self._byte_to_letter[b] = k

    @property
    def n_special(self) -> int:
        return len(self.specials.prefix) + len(self.specials.suffix)

    def residues_per_window(self, context_tokens: int) -> int:
        """Largest number of residues whose tokens fit the model context."""
        return context_tokens - self.n_special

    def encode(self, residues: bytes) -> np.ndarray:
        """Token ids of a window, special tokens included."""
        body = self._byte_to_id[np.frombuffer(residues, dtype=np.uint8)]
        return np.concatenate(
            [np.array(self.specials.prefix, dtype=np.int64), body,
             np.array(self.specials.suffix, dtype=np.int64)]
        )

    def letter_index(self, residues: bytes) -> np.ndarray:
        """Index of each residue into :attr:`letters` (-1 where the model lacks it)."""
        return self._byte_to_letter[np.frombuffer(residues, dtype=np.uint8)]

    def token_texts(self, residues: bytes) -> list[str]:
        ids = self._byte_to_id[np.frombuffer(residues, dtype=np.uint8)]
        return [self.id_to_token[int(i)] for i in ids]

    def describe(self) -> dict:
        return {
            "family": self.family,
            "letters": self.letters,
            "prefix_ids": list(self.specials.prefix),
            "suffix_ids": list(self.specials.suffix),
            "mask_id": self.specials.mask,
        }


FAMILIES = {"single": SingleResidueTokenizer}

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


def specials_from_vocab(vocab: dict[str, int]) -> SpecialTokens:
    """BERT/ESM-style layout ([CLS] x [SEP] or <cls> x <eos>) read from token names."""
    found = {role: _find(vocab, role) for role in _SPECIAL_NAMES}
    if found["mask"] is None:
        raise ModelError("the vocabulary has no mask token ([MASK] or <mask>): not a masked LM")
    unk = found["unk"] if found["unk"] is not None else found["mask"]
    pad = found["pad"] if found["pad"] is not None else unk
    prefix = (found["cls"],) if found["cls"] is not None else ()
    suffix = (found["eos"],) if found["eos"] is not None else ()
    return SpecialTokens(prefix=prefix, suffix=suffix, mask=found["mask"], pad=pad, unk=unk)


def detect_family(vocab: dict[str, int]) -> str:
    """Name of the tokenizer family implied by a vocabulary."""
    words = [t for t in vocab if not (t.startswith("[") or t.startswith("<")) and t.strip()]
    multi = [t for t in words if len(t) > 1 and t.isalpha()]
    if len(multi) > len(words) / 2:
        raise ModelError(
            f"this vocabulary holds multi-letter tokens (e.g. {multi[0]!r}): k-mer and BPE "
            "tokenizers are not supported yet; use a single-residue model (ESM2, AntiBERTy)"
        )
    return "single"


def read_vocab_txt(path) -> dict[str, int]:
    with open(path, encoding="utf-8") as fh:
        # ids are line numbers, so a blank line still takes an id
        vocab = {line.rstrip("\r\n"): i for i, line in enumerate(fh)}
    vocab.pop("", None)
    return vocab
