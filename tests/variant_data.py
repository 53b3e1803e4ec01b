"""Helpers of the variant-scoring tests: an independent reference that runs a checkpoint by
hand (tokenizes, masks and marginalises without seqatlas), sequences and VCF writers."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np

from tests.conftest import AMINO, ESM_VOCAB

DNA = "ACGT"
COMPLEMENT = str.maketrans("ACGTN", "TGCAN")
VCF_HEADER = "##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
FAMILIES = ("single", "overlapping_kmer", "nonoverlapping_kmer", "bpe")


def random_dna(length: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(DNA) for _ in range(length))


def reverse_complement(seq: str) -> str:
    return seq.translate(COMPLEMENT)[::-1]


def write_vcf(path: Path, records) -> Path:
    """``records``: (chrom, 1-based pos, ref, alt) tuples, one VCF line each."""
    lines = [VCF_HEADER]
    for chrom, pos, ref, alt in records:
        lines.append(f"{chrom}\t{pos}\t.\t{ref}\t{alt}\t.\t.\t.\n")
    path.write_text("".join(lines))
    return path


def _dna_vocab(directory: Path) -> dict[str, int]:
    if (directory / "tokenizer.json").exists():
        data = json.loads((directory / "tokenizer.json").read_text())
        vocab = dict(data["model"]["vocab"])
        vocab.update({a["content"]: a["id"] for a in data["added_tokens"]})
        return vocab
    lines = (directory / "vocab.txt").read_text().splitlines()
    return {t: i for i, t in enumerate(lines)}


class Reference:
    """A checkpoint run by hand: the masked (or unmasked) distribution over the standard
    letters at one base of a window, for the tokenizer family ``family`` ("protein" for the
    ESM test checkpoint), with every token containing a hidden base replaced by the mask
    token and each masked token's distribution over the vocabulary words of its length
    marginalised to the base's offset (the mean over the tokens containing the base)."""

    def __init__(self, directory: Path, family: str, *, k: int = 3):
        import torch
        from transformers import AutoModelForMaskedLM

        self.torch = torch
        self.family, self.k, self.directory = family, k, Path(directory)
        self.model = AutoModelForMaskedLM.from_pretrained(str(directory)).eval()
        if family == "protein":
            self.vocab = {t: i for i, t in enumerate(ESM_VOCAB)}
            self.letters = AMINO
            self.cls, self.eos, self.mask, self.unk = (self.vocab[t] for t in
                                                       ("<cls>", "<eos>", "<mask>", "<unk>"))
        else:
            self.vocab = _dna_vocab(self.directory)
            self.letters = DNA
            self.cls, self.eos, self.mask, self.unk = (self.vocab[t] for t in
                                                       ("[CLS]", "[SEP]", "[MASK]", "[UNK]"))
        self._memo: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self.candidates: dict[int, list[tuple[int, str]]] = {}
        for word, token_id in sorted(self.vocab.items(), key=lambda item: item[1]):
            if word and set(word) <= set(self.letters):
                self.candidates.setdefault(len(word), []).append((token_id, word))
        if family == "bpe":
            from tokenizers import Tokenizer

            self._bpe = Tokenizer.from_file(str(self.directory / "tokenizer.json"))

    # -- tokens, written out independently of seqatlas --------------------------------------
    def tokens(self, window: str) -> list[tuple[int, int, str]]:
        k = self.k
        if self.family in ("protein", "single"):
            return [(i, i + 1, c) for i, c in enumerate(window)]
        if self.family == "overlapping_kmer":
            return [(j, j + k, window[j : j + k]) for j in range(len(window) - k + 1)]
        if self.family == "nonoverlapping_kmer":
            out, i = [], 0
            while i < len(window):
                chunk = window[i : i + k]
                if len(chunk) == k and set(chunk) <= set(DNA):
                    out.append((i, i + k, chunk))
                    i += k
                else:
                    out.append((i, i + 1, window[i]))
                    i += 1
            return out
        encoding = self._bpe.encode(window, add_special_tokens=False)
        return [(s, e, window[s:e]) for s, e in encoding.offsets]

    # -- the model --------------------------------------------------------------------------
    def distribution(self, window: str, base: int, *, masked_regions=(), also=(),
                     unmasked: bool = False) -> np.ndarray:
        """log p(letter) at ``base`` of ``window``: the tokens containing ``base`` (and
        those containing a base of ``also``, and those touching a ``masked_regions``
        interval) masked; ``unmasked``: the tokens of ``base`` (and ``also``) left as they
        are."""
        torch = self.torch
        tokens = self.tokens(window)
        ids = [self.cls] + [self.vocab.get(t, self.unk) for _, _, t in tokens] + [self.eos]

        def covering(b):
            return [t for t, (s, e, _) in enumerate(tokens) if s <= b < e]

        cover = covering(base)
        assert cover, (window, base)
        hidden = set()
        if not unmasked:
            hidden |= set(cover)
            for b in also:
                hidden |= set(covering(b))
        for lo, hi in masked_regions:
            hidden |= {t for t, (s, e, _) in enumerate(tokens) if s < hi and e > lo}
        for t in hidden:
            ids[t + 1] = self.mask
        with torch.no_grad():
            logits = self.model(input_ids=torch.tensor([ids])).logits[0].double()
        probs = np.zeros(len(self.letters))
        for t in cover:
            start, end, _ = tokens[t]
            cands = self.candidates[end - start]
            p = torch.softmax(logits[t + 1, [i for i, _ in cands]], -1).tolist()
            for (_, word), pw in zip(cands, p):
                probs[self.letters.index(word[base - start])] += pw / len(cover)
        with np.errstate(divide="ignore"):  # a letter no candidate spells: -inf
            return np.log(probs)

    def strands(self, window: str, base: int, *, masked_regions=(), also=(),
                unmasked: bool = False, both: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(forward, reverse) distributions at ``base``, the reverse one computed on the
        reverse complement of the window (``base``, ``also`` and the regions mirrored) and
        read back onto the forward letters: its entry k is the probability of the
        complement of letter k. Reverse is NaN with ``both`` false."""
        key = (window, base, tuple(masked_regions), tuple(also), unmasked, both)
        if key not in self._memo:
            self._memo[key] = self._strands(window, base, masked_regions=masked_regions,
                                            also=also, unmasked=unmasked, both=both)
        return self._memo[key]

    def _strands(self, window, base, *, masked_regions, also, unmasked, both):
        fwd = self.distribution(window, base, masked_regions=masked_regions, also=also,
                                unmasked=unmasked)
        if not both:
            return fwd, np.full_like(fwd, np.nan)
        n = len(window)
        rev = self.distribution(reverse_complement(window), n - 1 - base,
                                masked_regions=[(n - hi, n - lo) for lo, hi in masked_regions],
                                also=[n - 1 - b for b in also], unmasked=unmasked)
        order = [self.letters.index(c.translate(COMPLEMENT)) for c in self.letters]
        return fwd, rev[order]

    def llr(self, dists, ref: str, alt: str) -> tuple[float, float, float]:
        """(llr_fwd, llr_rc, llr) of ``ref`` -> ``alt`` from :meth:`strands`'s pair."""
        fwd, rev = dists
        a, r = self.letters.index(alt), self.letters.index(ref)
        f = float(fwd[a] - fwd[r])
        if np.isnan(rev).all():
            return f, math.nan, f
        b = float(rev[a] - rev[r])
        return f, b, (f + b) / 2
