"""The ``transformers`` adapter: masked LMs that transformers implements (BERT, ESM-2,
RoBERTa, DNABERT, Nucleotide Transformer, ...), or that a checkpoint's own code implements
(``--trust-remote-code``)."""

from __future__ import annotations

import os
from pathlib import Path

from seqatlas.checkpoints.adapter import ModelAdapter, ModelRequest, ScoringModel
from seqatlas.checkpoints.digests import remembered_facts, weights_sha256
from seqatlas.checkpoints.hf_common import (check_remote_code, config_json, declares_causal,
                                            quiet_transformers, read_vocab, run_body,
                                            weights_files)
from seqatlas.checkpoints.spec import ModelSpec
from seqatlas.checkpoints.tokenizers import detect_family, specials_from_vocab
from seqatlas.errors import ModelError

# Models whose positions are offset by the padding index use two fewer slots.
_OFFSET_POSITION_TYPES = {"esm", "roberta", "xlm-roberta", "camembert"}
# What resolve draws from a checkpoint's config (see _read_config_facts).
_CONFIG_FACTS = frozenset({"model_type", "hidden_size", "num_layers", "positions",
                           "declared_context", "declared_tokenizer", "kmer", "parameters"})


def _count_parameters(config, *, trust_remote_code: bool = False) -> int:
    import torch
    from transformers import AutoModelForMaskedLM, BertForMaskedLM

    with torch.device("meta"):
        try:
            model = AutoModelForMaskedLM.from_config(config, trust_remote_code=trust_remote_code)
        except ValueError:
            model = BertForMaskedLM(config)
    return sum(p.numel() for p in model.parameters())


def _read_config_facts(directory: Path, name: str, *, trust_remote_code: bool = False) -> dict:
    """The config's facts resolve needs, read through transformers (and refused when the
    config is not a masked LM's). Remembered between runs (checkpoints.digests), so a re-run
    imports neither transformers nor torch."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(directory, trust_remote_code=trust_remote_code)
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
        "parameters": _count_parameters(config, trust_remote_code=trust_remote_code),
    }


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
        what = "causal LM: the transformers-causal adapter scores it with --likelihood causal"
    elif model_type in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
        what = "sequence-to-sequence model"
    else:
        what = "not a masked language model"
    raise ModelError(f"{name} is a{'n' if model_type[0] in 'aeiou' else ''} {model_type} model "
                     f"({what}); the transformers adapter needs a masked language model "
                     "(BERT, ESM, RoBERTa, ...)")


def transformers_spec(request: ModelRequest, *, adapter: str = "transformers",
                      prepare=None) -> ModelSpec:
    """The spec of a masked-LM checkpoint directory (``prepare``: called before transformers
    reads the config, e.g. to import a package that registers the model's classes)."""
    directory, name = request.path, request.name
    trust = request.trust_remote_code
    code = check_remote_code(directory, config_json(directory), name, trust_remote_code=trust)

    def read_facts() -> dict:
        if prepare is not None:
            prepare()
        return _read_config_facts(directory, name, trust_remote_code=trust)

    try:  # before the vocabulary: a causal LM may have none seqatlas reads
        # facts of code that travels with the weights are not remembered: the code may change
        facts = read_facts() if code else remembered_facts(
            directory / "config.json", read_facts, fields=_CONFIG_FACTS)
        config_error = None
    except ModelError:
        raise
    except Exception as exc:
        facts, config_error = None, exc
    vocab, is_bpe, tokenizer_json = read_vocab(directory)
    if facts is None:
        raise ModelError(f"model {name!r}: cannot read config.json in {directory} "
                         f"({config_error})") from None
    weights = weights_files(directory)
    if not weights:
        raise ModelError(f"model {name!r}: no weight files (*.safetensors, *.bin) in {directory}")
    declared = request.tokenizer or facts["declared_tokenizer"]
    family, k = detect_family(vocab, declared=declared, bpe=is_bpe)
    k = int(facts["kmer"] or k) if family.endswith("kmer") else k
    model_type = facts["model_type"]
    positions = facts["positions"]
    context = positions - 2 if model_type in _OFFSET_POSITION_TYPES else positions
    # a checkpoint may declare the context it was trained on, shorter than its table
    context = facts["declared_context"] or context
    return ModelSpec(
        name=name, source=request.source, path=os.path.abspath(directory), vocab=vocab,
        specials=specials_from_vocab(vocab), family=family, k=k, model_type=model_type,
        hidden_size=facts["hidden_size"], num_layers=facts["num_layers"],
        context_tokens=context, parameters=facts["parameters"],
        weights_sha256=weights_sha256(weights), kind=request.kind,
        tokenizer_json=tokenizer_json if family == "bpe" else None, adapter=adapter,
        code_sha256=code, trust_remote_code=trust)


class TransformersMaskedAdapter(ModelAdapter):
    name = "transformers"
    description = ("masked LMs transformers implements (BERT, ESM-2, RoBERTa, DNABERT, "
                   "Nucleotide Transformer, ...); with --trust-remote-code, masked LMs that "
                   "ship their own code")
    checkpoint = "a Hugging Face checkpoint directory (config.json, weights, vocabulary) or hub id"

    def claims(self, path: Path) -> bool:
        config = config_json(path) if Path(path).is_dir() else None
        return config is not None and not declares_causal(config)

    def resolve(self, request: ModelRequest) -> ModelSpec:
        return transformers_spec(request)

    def load(self, spec: ModelSpec, *, device: str = "cpu") -> ScoringModel:
        return TransformersMaskedModel(spec, device=device)


class TransformersMaskedModel(ScoringModel):
    """A masked LM split into encoder and MLM head, so the head runs only where needed."""

    def __init__(self, spec: ModelSpec, *, device: str = "cpu"):
        import torch
        from transformers import AutoModelForMaskedLM, BertForMaskedLM

        quiet_transformers()
        # AntiBERTy's config names its own class; its weights load as BertForMaskedLM
        cls = BertForMaskedLM if spec.model_type == "bert" else AutoModelForMaskedLM
        kwargs = {"trust_remote_code": True} if spec.trust_remote_code else {}
        try:
            model = cls.from_pretrained(spec.path, attn_implementation="sdpa", **kwargs)
        except (ValueError, ImportError):
            model = cls.from_pretrained(spec.path, **kwargs)  # no SDPA support
        self.spec = spec
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.encoder = model.base_model
        self.head = getattr(model, "cls", None) or getattr(model, "lm_head", None)
        if self.head is None:
            raise ModelError(f"model {spec.name!r} ({type(model).__name__}) has no MLM head "
                             "(cls or lm_head): is it a masked language model?")
        self.autocast_dtype = torch.bfloat16 if self.device.type == "cuda" else None
        self._decoder_rows: dict[tuple, tuple] = {}  # candidate ids -> decoder rows, bias

    def encode(self, input_ids, attention_mask, layers):
        return run_body(self, self.encoder, input_ids, attention_mask, layers)

    def head_logits(self, hidden):
        return self.head(hidden)

    def token_logits(self, hidden, token_ids):
        """A BERT-style head (``predictions.transform`` then ``predictions.decoder``) runs its
        decoder on the rows of ``token_ids`` only: the same dot products, without the
        vocabulary's other columns, into a contiguous block (DNABERT's 4,101-column output
        sliced to its 4,096 k-mers ran at 60% of the speed). Other heads: the whole head."""
        import torch
        import torch.nn.functional as F

        predictions = getattr(self.head, "predictions", None)
        transform = getattr(predictions, "transform", None)
        decoder = getattr(predictions, "decoder", None)
        if transform is None or not isinstance(decoder, torch.nn.Linear):
            return super().token_logits(hidden, token_ids)
        first, last = int(token_ids[0]), int(token_ids[-1])
        key = (first, last) if last - first + 1 == len(token_ids) else \
            tuple(token_ids.tolist())
        rows = self._decoder_rows.get(key)
        if rows is None:
            index = token_ids.to(decoder.weight.device)
            bias = decoder.bias[index].contiguous() if decoder.bias is not None else None
            rows = self._decoder_rows[key] = (decoder.weight[index].contiguous(), bias)
        with self.autocast():
            logits = F.linear(transform(hidden), *rows)
        return logits.float()
