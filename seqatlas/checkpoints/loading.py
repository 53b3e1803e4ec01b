"""Model resolution (driver side, no weights loaded) and loading (worker side).

:func:`resolve_model` reads a checkpoint's config and vocabulary and hashes its weight
files, so the driver can plan windows and check the atlas manifest without holding the
weights. :class:`LoadedModel` is what a scoring worker builds from the resulting spec.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from seqatlas.errors import ModelError
from seqatlas.checkpoints.digests import remembered_facts, weights_sha256
from seqatlas.checkpoints.tokenizers import (
    SpecialTokens,
    TokenizerFamily,
    detect_family,
    make_tokenizer,
    read_tokenizer_json,
    read_vocab_txt,
    specials_from_vocab,
)

# Letters the predictive distribution is normalised over, per kind of sequence.
SCORED_LETTERS = {"protein": "ACDEFGHIKLMNPQRSTVWY", "dna": "ACGT", "rna": "ACGU"}
# Other letters that name one residue: scored as themselves where the vocabulary has them
# (ESM's U, selenocysteine), null where it does not; never scored as another letter. An RNA's
# U read by a DNA model is the exception, recorded as the model's ``letter_map``
# (seqatlas.checkpoints.tokenizers).
EXTRA_LETTERS = {"protein": "UO", "dna": "U", "rna": "T"}

# Models whose positions are offset by the padding index use two fewer slots.
_OFFSET_POSITION_TYPES = {"esm", "roberta", "xlm-roberta", "camembert"}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
_NOT_WEIGHTS = {"training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth"}


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    description: str
    kinds: tuple[str, ...]
    directory: str  # inside the antiberty package ("antiberty:...") or seqatlas ("seqatlas:...")
    domain: str = ""  # what it was trained on, when narrower than its kinds (for warnings)


EMBEDDED_MODELS = {
    "antiberty": EmbeddedModel(
        name="antiberty",
        description="AntiBERTy (Ruffolo et al. 2021), BERT MLM trained on 558M antibody "
        "sequences; shipped in the antiberty==0.1.3 wheel. An antibody model: out of domain "
        "for general proteins (exact mean logp -3.19, top-1 accuracy 0.07 on 20 UniProt "
        "proteins, below the uniform -3.00; -0.44 and 0.89 on 20 antibody domains); for "
        "those pass --model with an ESM-2 checkpoint",
        kinds=("protein",),
        directory="antiberty:trained_models/AntiBERTy_md_smooth",
        domain="AntiBERTy is an antibody model, trained on antibody variable domains only",
    ),
    "dnabert6-tiny": EmbeddedModel(
        name="dnabert6-tiny",
        description="tiny DNABERT-format model (overlapping 6-mers) trained by seqatlas on "
        "human chrX (GRCh37); see its MODEL_CARD.md",
        kinds=("dna", "rna"),
        directory="seqatlas:checkpoints/embedded/dnabert6_tiny",
    ),
}


@dataclass(frozen=True)
class ModelSpec:
    """Everything a worker needs to load a model; picklable and cheap to send."""

    name: str
    source: str  # "embedded", "directory" or "hub"
    path: str  # local checkpoint directory
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

    def tokenizer(self) -> TokenizerFamily:
        return make_tokenizer(self.family, vocab=self.vocab, specials=self.specials,
                              letters=SCORED_LETTERS[self.kind], k=self.k,
                              tokenizer_json=self.tokenizer_json,
                              extra=EXTRA_LETTERS.get(self.kind, ""))

    def describe(self) -> dict:
        """The manifest's record of the model. ``letter_map`` (only when there is one: an
        RNA scored with a DNA model gives ``{"U": "T"}``) says which of the kind's letters
        are read as another vocabulary letter; it sits beside ``tokenizer``, not in it, so
        that the tokenizer record of every atlas written before it stays what it was."""
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
        return record


def embedded_directory(model: EmbeddedModel) -> Path:
    package, _, relative = model.directory.partition(":")
    # found, not imported: importing antiberty imports torch and transformers (seconds)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:  # pragma: no cover - declared
        raise ModelError(f"the embedded model {model.name!r} needs the {package!r} package")
    return Path(list(spec.submodule_search_locations)[0]) / relative


def _checkpoint_dir(name: str) -> tuple[Path, str]:
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve(), "directory"
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(f"model {name!r}: not a checkpoint directory "
                         f"(embedded models: {', '.join(EMBEDDED_MODELS)})")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(
            name, allow_patterns=["*.json", "*.txt", "*.safetensors", "*.bin", "*.model"])
    except Exception as exc:
        raise ModelError(
            f"model {name!r} is neither an embedded model ({', '.join(EMBEDDED_MODELS)}), "
            f"a checkpoint directory, nor a reachable Hugging Face hub id ({type(exc).__name__}). "
            "Download it where you have network (huggingface-cli download NAME --local-dir DIR) "
            "and pass the directory."
        ) from None
    return Path(local), "hub"


def _weights_files(directory: Path) -> list[Path]:
    files = sorted(p for p in directory.iterdir()
                   if p.suffix in _WEIGHT_SUFFIXES and p.name not in _NOT_WEIGHTS)
    safetensors = [p for p in files if p.suffix == ".safetensors"]
    return safetensors or files


def _count_parameters(config) -> int:
    import torch
    from transformers import AutoModelForMaskedLM, BertForMaskedLM

    with torch.device("meta"):
        try:
            model = AutoModelForMaskedLM.from_config(config)
        except ValueError:
            model = BertForMaskedLM(config)
    return sum(p.numel() for p in model.parameters())


# What resolve_model draws from a checkpoint's config (see _read_config_facts).
_CONFIG_FACTS = frozenset({"model_type", "hidden_size", "num_layers", "positions",
                           "declared_context", "declared_tokenizer", "kmer", "parameters"})


def _read_config_facts(directory: Path, name: str) -> dict:
    """The config's facts resolve_model needs, read through transformers (and refused when
    the config is not a masked LM's). Remembered between runs (checkpoints.digests), so a
    re-run imports neither transformers nor torch."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(directory)
    require_masked_lm(config, name)
    kmer = getattr(config, "kmer", None)
    declared_context = getattr(config, "seqatlas_context_tokens", None)
    declared_tokenizer = getattr(config, "seqatlas_tokenizer", None)
    return {
        "model_type": getattr(config, "model_type", "bert"),
        "hidden_size": int(config.hidden_size),
        "num_layers": int(config.num_hidden_layers),
        "positions": int(getattr(config, "max_position_embeddings", 512)),
        "declared_context": int(declared_context) if declared_context else None,
        "declared_tokenizer": str(declared_tokenizer) if declared_tokenizer else None,
        "kmer": int(kmer) if kmer else None,
        "parameters": _count_parameters(config),
    }


def resolve_model(name: str, *, kind: str, tokenizer: str | None = None) -> ModelSpec:
    """Find a model by embedded name, directory or hub id, without loading its weights."""
    embedded = EMBEDDED_MODELS.get(name)
    if embedded is not None:
        if kind not in embedded.kinds:
            raise ModelError(f"model {name!r} is a {'/'.join(embedded.kinds)} model but the input "
                             f"is {kind}: pass --model with a checkpoint for {kind}")
        directory, source = embedded_directory(embedded), "embedded"
    else:
        directory, source = _checkpoint_dir(name)
    try:  # before the vocabulary: a causal LM may have none seqatlas reads
        facts = remembered_facts(directory / "config.json",
                                 lambda: _read_config_facts(directory, name),
                                 fields=_CONFIG_FACTS)
        config_error = None
    except ModelError:
        raise
    except Exception as exc:
        facts, config_error = None, exc
    vocab, is_bpe, tokenizer_json = _read_vocab(directory)
    if facts is None:
        raise ModelError(f"model {name!r}: cannot read config.json in {directory} "
                         f"({config_error})") from None
    weights = _weights_files(directory)
    if not weights:
        raise ModelError(f"model {name!r}: no weight files (*.safetensors, *.bin) in {directory}")
    declared = tokenizer or facts["declared_tokenizer"]
    family, k = detect_family(vocab, declared=declared, bpe=is_bpe)
    k = int(facts["kmer"] or k) if family.endswith("kmer") else k
    model_type = facts["model_type"]
    positions = facts["positions"]
    context = positions - 2 if model_type in _OFFSET_POSITION_TYPES else positions
    # a checkpoint may declare the context it was trained on, shorter than its table
    context = facts["declared_context"] or context
    spec = ModelSpec(
        name=name,
        source=source,
        path=os.path.abspath(directory),
        vocab=vocab,
        specials=specials_from_vocab(vocab),
        family=family,
        k=k,
        model_type=model_type,
        hidden_size=facts["hidden_size"],
        num_layers=facts["num_layers"],
        context_tokens=context,
        parameters=facts["parameters"],
        weights_sha256=weights_sha256(weights),
        kind=kind,
        tokenizer_json=tokenizer_json if family == "bpe" else None,
    )
    spec.tokenizer()  # fails early when the vocabulary does not fit the kind
    return spec


def require_masked_lm(config, name: str) -> None:
    """Refuse a config that is not a masked language model (a causal LM such as GPT-2, a
    decoder, a sequence-to-sequence model), from the config alone: no weights are read."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES)

    model_type = getattr(config, "model_type", None) or "unknown"
    decoder = getattr(config, "is_decoder", False) is True
    architectures = getattr(config, "architectures", None) or []
    if not decoder and (model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES or any(
            str(a).endswith("ForMaskedLM") for a in architectures)):  # custom-code MLMs
        return
    if decoder or model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        what = "causal LM"
    elif model_type in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
        what = "sequence-to-sequence model"
    else:
        what = "not a masked language model"
    raise ModelError(f"{name} is a{'n' if model_type[0] in 'aeiou' else ''} {model_type} model "
                     f"({what}); seqatlas needs a masked language model (BERT, ESM, RoBERTa, "
                     "...): pass --model with a masked-LM checkpoint")


def _read_vocab(directory: Path) -> tuple[dict[str, int], bool, str | None]:
    """Vocabulary, whether it is a BPE model, and the tokenizer.json text when present."""
    tokenizer_json = directory / "tokenizer.json"
    if tokenizer_json.exists():
        vocab, is_bpe, text = read_tokenizer_json(tokenizer_json)
        if vocab and (is_bpe or not (directory / "vocab.txt").exists()):
            return vocab, is_bpe, text
    for candidate in (directory / "vocab.txt", directory.parent / "vocab.txt"):
        if candidate.exists():  # AntiBERTy keeps vocab.txt beside its checkpoint folder
            return read_vocab_txt(candidate), False, None
    raise ModelError(f"no vocabulary (vocab.txt or tokenizer.json) in {directory}")


class LoadedModel:
    """A masked LM split into encoder and MLM head, so the head runs only where needed."""

    def __init__(self, spec: ModelSpec, *, device: str = "cpu"):
        import torch
        import transformers
        from transformers import AutoModelForMaskedLM, BertForMaskedLM

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        logging.getLogger("transformers").setLevel(logging.ERROR)
        # AntiBERTy's config names its own class; its weights load as BertForMaskedLM
        cls = BertForMaskedLM if spec.model_type == "bert" else AutoModelForMaskedLM
        try:
            model = cls.from_pretrained(spec.path, attn_implementation="sdpa")
        except (ValueError, ImportError):
            model = cls.from_pretrained(spec.path)  # architectures without SDPA support
        self.spec = spec
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.encoder = model.base_model
        self.head = getattr(model, "cls", None) or getattr(model, "lm_head", None)
        if self.head is None:
            raise ModelError(f"model {spec.name!r} ({type(model).__name__}) has no MLM head "
                             "(cls or lm_head): is it a masked language model?")
        self.autocast_dtype = torch.bfloat16 if self.device.type == "cuda" else None

    def encode(self, input_ids, attention_mask, layers):
        """Final hidden states, and those of ``layers`` (an int, a list of ints, or None when
        not needed): one tensor for an int, a list for a list. 0 = the input embeddings."""
        import torch

        wanted = [] if layers is None else [layers] if isinstance(layers, int) else list(layers)
        need_all = any(layer != self.spec.num_layers for layer in wanted)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype,
                            enabled=self.autocast_dtype is not None):
            out = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                               output_hidden_states=need_all)
        last = out.last_hidden_state
        if layers is None:
            return last, None
        hidden = [out.hidden_states[layer] if layer != self.spec.num_layers else last
                  for layer in wanted]
        return last, hidden[0] if isinstance(layers, int) else hidden

    def token_logits(self, hidden, token_ids):
        """MLM logits restricted to ``token_ids`` (a sorted id tensor), in float32."""
        import torch

        with torch.autocast(self.device.type, dtype=self.autocast_dtype,
                            enabled=self.autocast_dtype is not None):
            logits = self.head(hidden)
        first, last = int(token_ids[0]), int(token_ids[-1])
        if last - first + 1 == len(token_ids):  # contiguous ids (k-mer blocks): no copy
            return logits[:, first : last + 1].float()
        return logits[:, token_ids].float()



def list_models() -> list[dict]:
    """Every embedded model: name, kinds, tokenizer family, size, alphabet and context."""
    rows = []
    for model in EMBEDDED_MODELS.values():
        spec = resolve_model(model.name, kind=model.kinds[0])
        tokenizer = spec.tokenizer()
        rows.append({
            "name": model.name,
            "kinds": list(model.kinds),
            "family": spec.family,
            "k": spec.k,
            "parameters": spec.parameters,
            "hidden_size": spec.hidden_size,
            "layers": spec.num_layers,
            "alphabet": tokenizer.letters,
            "context_tokens": spec.context_tokens,
            "window_residues": tokenizer.residues_per_window(spec.context_tokens),
            "description": model.description,
        })
    return rows
