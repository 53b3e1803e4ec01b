"""What a worker needs to load and score with a model: :class:`ModelSpec`, picklable, cheap
to send, built on the driver by a model adapter (:mod:`seqatlas.checkpoints.adapter`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from seqatlas.checkpoints.tokenizers import SpecialTokens, TokenizerFamily, make_tokenizer

# Letters the predictive distribution is normalised over, per kind of sequence.
SCORED_LETTERS = {"protein": "ACDEFGHIKLMNPQRSTVWY", "dna": "ACGT", "rna": "ACGU"}
# Other letters that name one residue: scored as themselves where the vocabulary has them
# (ESM's U, selenocysteine), null where it does not; never scored as another letter. An RNA's
# U read by a DNA model is the exception, recorded as the model's ``letter_map``
# (seqatlas.checkpoints.tokenizers).
EXTRA_LETTERS = {"protein": "UO", "dna": "U", "rna": "T"}

OBJECTIVES = ("masked", "causal")


@dataclass(frozen=True)
class ModelSpec:
    """Everything a worker needs to load a model; picklable and cheap to send."""

    name: str
    source: str  # "embedded", "directory", "file" or "hub"
    path: str  # the local checkpoint (a directory, or a file such as a fair-esm .pt)
    vocab: dict = field(repr=False)
    specials: SpecialTokens
    family: str
    k: int
    model_type: str
    hidden_size: int
    num_layers: int
    context_tokens: int
    parameters: int
    weights_sha256: str
    kind: str
    tokenizer_json: str | None = field(default=None, repr=False)
    adapter: str = "transformers"  # the adapter that resolved it and loads it
    objective: str = "masked"  # masked: predicts a hidden token; causal: the next token
    code_sha256: str | None = None  # the hash of code that travels with the weights
    trust_remote_code: bool = False  # the checkpoint's own code runs (transformers)
    options: dict = field(default_factory=dict, repr=False)  # adapter-specific, JSON values

    @property
    def causal(self) -> bool:
        return self.objective == "causal"

    def tokenizer(self) -> TokenizerFamily:
        return make_tokenizer(self.family, vocab=self.vocab, specials=self.specials,
                              letters=SCORED_LETTERS[self.kind], k=self.k,
                              tokenizer_json=self.tokenizer_json,
                              extra=EXTRA_LETTERS.get(self.kind, ""))

    def describe(self) -> dict:
        """The manifest's record of the model. ``letter_map`` (only when there is one: an
        RNA scored with a DNA model gives ``{"U": "T"}``) says which of the kind's letters
        are read as another vocabulary letter; it sits beside ``tokenizer``, not in it, so
        that the tokenizer record of every atlas written before it stays what it was.
        ``adapter``, ``objective`` and ``code_sha256`` appear when they are not the
        transformers masked-LM defaults."""
        tokenizer = self.tokenizer()
        record = {
            "name": self.name,
            "source": self.source,
            "path": self.path if self.source != "embedded" else None,
            "model_type": self.model_type,
            "tokenizer": tokenizer.describe(),
            "parameters": self.parameters,
            "weights_sha256": self.weights_sha256,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "context_tokens": self.context_tokens,
        }
        if tokenizer.letter_map:
            record["letter_map"] = dict(tokenizer.letter_map)
        # only where they differ from what every atlas written before adapters had, so those
        # records (and their content keys) stay as they were
        if self.adapter != "transformers":
            record["adapter"] = self.adapter
        if self.objective != "masked":
            record["objective"] = self.objective
        if self.code_sha256:
            record["code_sha256"] = self.code_sha256
        return record
