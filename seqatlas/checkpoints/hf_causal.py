"""The ``transformers-causal`` adapter: any ``AutoModelForCausalLM`` checkpoint (GPT-2,
Llama, Mistral, GPT-NeoX, Mamba, ProGen2 with --trust-remote-code, ...).

A causal model predicts each token from those before it: it is scored in likelihood mode
``causal`` (one pass per window) and cannot mask. Its special tokens: the BOS token
(``bos_token_id`` of the config, when the vocabulary has it) is placed before the residues,
so the first residue of a sequence is predicted from BOS alone; without one, the first token
of a sequence has no prediction and stays null. Nothing is placed after the residues.
"""

from __future__ import annotations

import os
from pathlib import Path

from seqatlas.checkpoints.adapter import ModelAdapter, ModelRequest, ScoringModel
from seqatlas.checkpoints.digests import weights_sha256
from seqatlas.checkpoints.hf_common import (check_remote_code, config_json, declares_causal,
                                            quiet_transformers, read_vocab, run_body,
                                            weights_files)
from seqatlas.checkpoints.spec import ModelSpec
from seqatlas.checkpoints.tokenizers import SpecialTokens, detect_family
from seqatlas.errors import ModelError

# the context a causal config states, in the order they are looked for
_CONTEXT_KEYS = ("seqatlas_context_tokens", "max_position_embeddings", "n_positions", "n_ctx")
DEFAULT_CONTEXT = 2048  # for architectures without a position limit (Mamba): stated in docs
_HIDDEN_KEYS = ("hidden_size", "n_embd", "d_model", "dim")
_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


def _first(config: dict, keys: tuple[str, ...]):
    return next((config[k] for k in keys if isinstance(config.get(k), int)), None)


def _causal_config(directory: Path, name: str, *, trust_remote_code: bool):
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = AutoConfig.from_pretrained(directory, trust_remote_code=trust_remote_code)
    model_type = getattr(config, "model_type", None) or "unknown"
    auto_map = getattr(config, "auto_map", None) or {}
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and \
            "AutoModelForCausalLM" not in auto_map and not declares_causal(config.to_dict()):
        raise ModelError(f"{name} is a {model_type} model that transformers cannot load as a "
                         "causal LM (AutoModelForCausalLM); pass --adapter transformers for a "
                         "masked LM")
    return config


def _count_parameters(config, *, trust_remote_code: bool) -> int:
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return sum(p.numel() for p in model.parameters())


def causal_specials(vocab: dict[str, int], config: dict) -> SpecialTokens:
    """BOS before the residues (when the config names one the vocabulary has), nothing
    after, no mask (-1); padding by the config's pad, else EOS, else BOS, else 0."""
    ids = set(vocab.values())

    def known(value):
        return value if isinstance(value, int) and value in ids else None

    bos, eos, pad = (known(config.get(k)) for k in ("bos_token_id", "eos_token_id",
                                                     "pad_token_id"))
    padding = next((v for v in (pad, eos, bos) if v is not None), 0)
    unk = next((vocab[t] for t in ("<unk>", "[UNK]", "<|unk|>") if t in vocab), padding)
    return SpecialTokens(prefix=(bos,) if bos is not None else (), suffix=(), mask=-1,
                         pad=padding, unk=unk)


class TransformersCausalAdapter(ModelAdapter):
    name = "transformers-causal"
    description = ("autoregressive LMs transformers loads as AutoModelForCausalLM (GPT-2, "
                   "Llama, Mistral, GPT-NeoX, Mamba, ...; with --trust-remote-code, ones that "
                   "ship their own code such as ProGen2); scored with --likelihood causal")
    checkpoint = "a Hugging Face causal-LM checkpoint directory or hub id"

    def claims(self, path: Path) -> bool:
        config = config_json(path) if Path(path).is_dir() else None
        return config is not None and declares_causal(config)

    def resolve(self, request: ModelRequest) -> ModelSpec:
        directory, name = request.path, request.name
        raw = config_json(directory)
        if raw is None:
            raise ModelError(f"model {name!r}: no readable config.json in {directory}")
        trust = request.trust_remote_code
        code = check_remote_code(directory, raw, name, trust_remote_code=trust)
        try:
            config = _causal_config(directory, name, trust_remote_code=trust)
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(f"model {name!r}: cannot read config.json in {directory} "
                             f"({type(exc).__name__}: {exc})") from None
        facts = config.to_dict()
        vocab, is_bpe, tokenizer_json = read_vocab(directory)
        weights = weights_files(directory)
        if not weights:
            raise ModelError(f"model {name!r}: no weight files (*.safetensors, *.bin) in "
                             f"{directory}")
        family, k = detect_family(vocab, declared=request.tokenizer, bpe=is_bpe)
        if family == "overlapping_kmer":
            raise ModelError(f"model {name!r} has an overlapping k-mer vocabulary: each base "
                             "is in k tokens, and a causal model's prediction of one of them "
                             "sees the others' bases, so no per-base score is defined")
        hidden, layers = _first(facts, _HIDDEN_KEYS), _first(facts, _LAYER_KEYS)
        if hidden is None or layers is None:
            raise ModelError(f"model {name!r}: its config states no hidden size or layer count")
        return ModelSpec(
            name=name, source=request.source, path=os.path.abspath(directory), vocab=vocab,
            specials=causal_specials(vocab, facts), family=family, k=k,
            model_type=str(facts.get("model_type", "unknown")), hidden_size=int(hidden),
            num_layers=int(layers), context_tokens=int(_first(facts, _CONTEXT_KEYS)
                                                       or DEFAULT_CONTEXT),
            parameters=_count_parameters(config, trust_remote_code=trust),
            weights_sha256=weights_sha256(weights), kind=request.kind,
            tokenizer_json=tokenizer_json if family == "bpe" else None, adapter=self.name,
            objective="causal", code_sha256=code, trust_remote_code=trust)

    def load(self, spec: ModelSpec, *, device: str = "cpu") -> ScoringModel:
        return TransformersCausalModel(spec, device=device)


class TransformersCausalModel(ScoringModel):
    """A causal LM split into body and LM head. Hidden state t predicts token t + 1."""

    def __init__(self, spec: ModelSpec, *, device: str = "cpu"):
        import torch
        from transformers import AutoModelForCausalLM

        quiet_transformers()
        kwargs = {"trust_remote_code": True} if spec.trust_remote_code else {}
        try:
            model = AutoModelForCausalLM.from_pretrained(spec.path, attn_implementation="sdpa",
                                                         **kwargs)
        except (ValueError, ImportError, TypeError):
            model = AutoModelForCausalLM.from_pretrained(spec.path, **kwargs)
        self.spec = spec
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.body = model.base_model
        self.head = model.get_output_embeddings()
        if self.head is None:
            raise ModelError(f"model {spec.name!r} ({type(model).__name__}) has no LM head")
        self.autocast_dtype = torch.bfloat16 if self.device.type == "cuda" else None

    def encode(self, input_ids, attention_mask, layers):
        return run_body(self, self.body, input_ids, attention_mask, layers, use_cache=False)

    def head_logits(self, hidden):
        return self.head(hidden)
