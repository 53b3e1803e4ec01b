"""Whether a model fits its input: the kind its vocabulary is for, the letters it can score,
and how its likelihoods compare with a model that knows nothing.

Checked before anything is scored or written (:func:`check_model_fit`):

- **Kind.** A vocabulary's kind is read from its tokens (:func:`vocabulary_kind`):
  single-letter tokens for at least :data:`PROTEIN_VOCABULARY_LETTERS` of the 20 standard
  amino acids make a protein vocabulary; tokens spelled only in nucleotide letters (ACGTUN
  and the IUPAC codes: k-mers, BPE pieces, single bases) make a nucleic-acid one; anything
  else is not judged. Embedded models declare their kinds. DNA or RNA is never scored by a
  protein vocabulary (its A, C, G and T are alanine, cysteine, glycine and threonine), nor a
  protein by a nucleic-acid one.
- **Alphabet.** Each of the kind's core letters needs a token: DNA's ACGT and RNA's ACGU
  always (an RNA's U read as a DNA vocabulary's T, and the other way round: the tokenizer's
  ``letter_map``), a protein's 20 standard amino acids where they occur in the input. Other
  letters (X, B, Z, U, O in proteins; N and the IUPAC codes in DNA) keep null scores where
  the model has no token for them.

The input's letters are counted only when the model lacks a core letter or is for another
kind (to decide, and to say how often each missing letter occurs): a model that fits costs
no extra read of the input.

After an ingest, :func:`likelihood_warning` compares the mean logp over the scored positions
(the atlas's likelihood column) with the uniform baseline log(1/20) for proteins, log(1/4)
for DNA and RNA: a model below it predicts the input worse than knowing nothing, and is
probably out of domain.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Iterable, Mapping

import numpy as np
import pyarrow.compute as pc

from seqatlas.checkpoints.loading import EMBEDDED_MODELS, SCORED_LETTERS
from seqatlas.errors import ModelError
from seqatlas.store import AtlasReader

if TYPE_CHECKING:
    from seqatlas.checkpoints.loading import ModelSpec
    from seqatlas.checkpoints.tokenizers import TokenizerFamily

PROTEIN_VOCABULARY_LETTERS = 18  # of the 20 amino acids, as single-letter tokens
NUCLEOTIDE_SPELLING = set("ACGTUN" + "RYSWKMBDHV")  # letters of a nucleic-acid vocabulary
LOW_LIKELIHOOD = "low_likelihood"  # the manifest warning's code
_AMINO_NAMES = {"A": "alanine", "C": "cysteine", "G": "glycine", "T": "threonine",
                "U": "selenocysteine", "N": "asparagine"}
_KIND_NAMES = {"protein": "protein", "dna": "DNA", "rna": "RNA"}
_A_KIND = {"protein": "a protein", "dna": "a DNA", "rna": "an RNA"}


def vocabulary_kind(vocab: Mapping[str, int]) -> tuple[str | None, str]:
    """``("protein" | "nucleic" | None, the evidence in words)`` from the tokens alone."""
    words = {t.upper() for t in vocab if t and not t.startswith(("[", "<")) and t.isalpha()}
    amino = {w for w in words if len(w) == 1} & set(SCORED_LETTERS["protein"])
    if len(amino) >= PROTEIN_VOCABULARY_LETTERS:
        share = "all 20" if len(amino) == 20 else f"{len(amino)} of the 20"
        return "protein", f"single-letter tokens for {share} amino acids"
    letters = set("".join(words))
    if words and letters <= NUCLEOTIDE_SPELLING:
        lengths = sorted({len(w) for w in words})
        shape = ("single-letter tokens" if lengths == [1] else
                 f"{lengths[0]}-mer tokens" if len(lengths) == 1 else
                 f"tokens of {lengths[0]}-{lengths[-1]} letters")
        return "nucleic", f"{shape} over {''.join(sorted(letters))}"
    return None, ""


def _model_kinds(spec: ModelSpec) -> tuple[set[str] | None, str]:
    """The kinds the model is for (None: not judged) and why."""
    embedded = EMBEDDED_MODELS.get(spec.name) if spec.source == "embedded" else None
    if embedded is not None:
        return set(embedded.kinds), f"an embedded {'/'.join(embedded.kinds)} model"
    kind, evidence = vocabulary_kind(spec.vocab)
    if kind is None:
        return None, ""
    return ({"protein"} if kind == "protein" else {"dna", "rna"}), evidence


def count_letters(sequences: Iterable[bytes], letters: str) -> dict[str, int]:
    """How often each of ``letters`` occurs in ``sequences`` (either case)."""
    counts = np.zeros(256, dtype=np.int64)
    for sequence in sequences:
        counts += np.bincount(np.frombuffer(sequence, dtype=np.uint8), minlength=256)
    return {c: int(counts[ord(c.upper())] + counts[ord(c.lower())]) for c in letters}


def _other_models(kind: str) -> str:
    names = [m.name for m in EMBEDDED_MODELS.values() if kind in m.kinds]
    examples = {"protein": "an ESM-2 checkpoint directory",
                "dna": "a DNABERT or Nucleotide Transformer checkpoint directory",
                "rna": "a DNA or RNA checkpoint directory"}[kind]
    embedded = f"the embedded {', '.join(names)}, or " if names else ""
    return f"{embedded}{examples}"


def _listing(letters: list[str], counts: Mapping[str, int]) -> str:
    """``"K, L (occurrences in the input: K 3, L 1)"``."""
    return (f"{', '.join(letters)} (occurrences in the input: "
            + ", ".join(f"{c} {counts.get(c, 0):,}" for c in letters) + ")")


def check_model_fit(spec: ModelSpec, count: Callable[[str], Mapping[str, int]], *,
                    tokenizer: TokenizerFamily | None = None) -> None:
    """Refuse, with a :class:`ModelError` that says what to do, a model that cannot score an
    input of ``spec.kind``: one for another kind, or one without a token for a core letter
    (module docstring). ``count(letters)`` gives the input's count of each letter; it is
    called only when the model lacks a letter or is for another kind."""
    tokenizer = tokenizer or spec.tokenizer()
    kind = spec.kind
    kinds, evidence = _model_kinds(spec)
    core = tokenizer.letters
    lacking = [c for c in core if int(tokenizer.letter_index(c.encode())[0]) < 0]
    wrong_kind = kinds is not None and kind not in kinds
    if not wrong_kind and not lacking:
        return
    counts = dict(count("".join(lacking))) if lacking else {}
    occurring = [c for c in lacking if counts.get(c)]
    if not wrong_kind and kind == "protein" and not occurring:
        return  # the amino acids it lacks do not occur in this input
    name, what = spec.name, _KIND_NAMES[kind]
    wrong_kind_hint = (f"or pass --kind {'dna or rna' if kind == 'protein' else 'protein'} "
                       f"if the input is not {what} (its kind was detected or given as {kind})")
    if wrong_kind:
        mine = "protein" if "protein" in kinds else "DNA/RNA"
        if kind == "protein":
            damage = (f"it has no token for {_listing(occurring or lacking, counts)}"
                      if lacking else "it cannot read amino acids")
        else:
            shared = [c for c in core if c in _AMINO_NAMES]
            damage = ("it would score " + ", ".join(shared) + " as the amino acids "
                      + ", ".join(_AMINO_NAMES[c] for c in shared))
        raise ModelError(
            f"model {name!r} is a {mine} model ({evidence}) and the input is {what}: {damage}. "
            f"Nothing was scored or written. Pass --model with {_A_KIND[kind]} checkpoint "
            f"({_other_models(kind)}), {wrong_kind_hint}.")
    missing = occurring if kind == "protein" else lacking
    raise ModelError(
        f"model {name!r} has no token for {_listing(missing, counts)} of the {what} "
        f"alphabet {core}, so it cannot score those positions. Nothing was scored or "
        f"written. Pass --model with {_A_KIND[kind]} checkpoint whose vocabulary has every "
        f"letter of {core} ({_other_models(kind)}), {wrong_kind_hint}.")


def uniform_logp(kind: str) -> float:
    """log(1 / alphabet size): the mean logp of a model that knows nothing."""
    return -math.log(len(SCORED_LETTERS[kind]))


def mean_likelihood(reader: AtlasReader) -> tuple[str, float, int] | None:
    """``(column, mean, positions)``: the mean of the atlas's likelihood column over its
    committed rows with a finite value; None when it stores no likelihood or no such row."""
    scoring = reader.manifest.scoring
    column = scoring.likelihood_column() if scoring else None
    paths = reader.part_paths("positions") if column else []
    if not paths:
        return None
    total, n = 0.0, 0
    for batch in reader.dataset(paths).to_batches(columns=[column]):
        values = batch.column(0)
        finite = pc.filter(values, pc.is_finite(values))
        n += len(finite)
        total += float(pc.sum(finite, min_count=0).as_py() or 0.0)
    return (column, total / n, n) if n else None


def likelihood_warning(reader: AtlasReader) -> dict | None:
    """The manifest warning (code :data:`LOW_LIKELIHOOD`) when the model's mean logp over
    the atlas's scored positions is below the uniform baseline, else None."""
    found = mean_likelihood(reader)
    manifest = reader.manifest
    if found is None or manifest.model is None or manifest.kind not in SCORED_LETTERS:
        return None
    column, mean, n = found
    baseline = uniform_logp(manifest.kind)
    if mean >= baseline:
        return None
    name = manifest.model.name
    embedded = EMBEDDED_MODELS.get(name) if manifest.model.extra.get("source") == "embedded" \
        else None
    domain = f" ({embedded.domain})" if embedded is not None and embedded.domain else ""
    size = len(SCORED_LETTERS[manifest.kind])
    digits = 2 if round(mean, 2) < round(baseline, 2) else 4  # never "-3.00, below -3.00"
    message = (f"model {name!r} may be out of domain for these sequences{domain}: its mean "
               f"{column} over the {n:,} scored positions is {mean:.{digits}f}, below the "
               f"uniform baseline log(1/{size}) = {baseline:.{digits}f} of a model that knows nothing. Its "
               "likelihoods (and anomalies read from them) say little here; pass --model "
               f"with {_A_KIND[manifest.kind]} checkpoint trained on sequences like "
               "these.")
    return {"code": LOW_LIKELIHOOD, "message": message, "model": name, "column": column,
            "mean_logp": round(mean, 4), "baseline": round(baseline, 4), "positions": n}
