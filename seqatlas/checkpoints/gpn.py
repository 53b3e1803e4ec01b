"""The ``gpn`` adapter: GPN (Benegas et al. 2023, the Genomic Pre-trained Network), DNA masked
LMs from the ``gpn`` package, whose Hugging Face checkpoints (config.json with model_type
``GPN``, ``ConvNet`` or ``GPNRoFormer``, weights, a tokenizer) load through transformers once
gpn has registered its classes.

Quirks handled here:

- registration: gpn 0.9 registers its classes with transformers' Auto classes only when
  ``gpn.register_auto_classes`` is called (older releases did it on ``import gpn.model``);
  it is called before transformers reads a config or loads weights, on the driver and in
  every worker.
- the vocabulary: ``[PAD]`` ``[MASK]`` ``[UNK]`` and LOWERCASE ``a c g t`` (a BPE
  tokenizer.json without merges and a lowercasing normaliser). The spec's vocabulary is that
  one with the nucleotide tokens uppercased, ids unchanged, because seqatlas's tokenizer
  families build residue tokens from uppercase tokens; one token per base (family
  ``single``), no [CLS]/[SEP].
- no padding mask: GPN's models take no attention mask (a convolution or attention over
  [PAD] tokens changes the real tokens near them), so :meth:`GpnScoringModel.encode` runs the
  rows of each real length together, unpadded, as the package runs one sequence.
- context: a RoFormer encoder reads at most ``max_position_embeddings`` tokens; the
  convolutional ones (ConvNet, ByteNet) have no position limit, and get 512 tokens, the
  window GPN was trained on (a config's ``seqatlas_context_tokens`` overrides either).
- refused: GPN-MSA checkpoints (``n_aux_features`` > 0: they read an alignment beside the
  sequence), GPN-Star (``GPNStar``: an alignment too), and fine-tuned checkpoints without an
  MLM head.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import replace
from pathlib import Path

from seqatlas.checkpoints.adapter import (ModelAdapter, ModelRequest, ScoringModel,
                                          pick_layers, wanted_layers)
from seqatlas.checkpoints.digests import remembered_facts, weights_sha256
from seqatlas.checkpoints.hf_common import config_json, read_vocab, weights_files
from seqatlas.checkpoints.hf_masked import TransformersMaskedModel
from seqatlas.checkpoints.spec import ModelSpec
from seqatlas.checkpoints.tokenizers import specials_from_vocab
from seqatlas.errors import ModelError

CONVOLUTIONAL_CONTEXT = 512  # tokens per window for models without a position limit
# what resolve draws from the config (distinct from the transformers adapter's facts, which
# share the cache's keys)
_FACTS = frozenset({"model_type", "encoder", "hidden_size", "num_layers", "positions",
                    "declared_context", "parameters"})


def register_gpn() -> None:
    """Register gpn's configs and models with transformers' Auto classes."""
    import gpn

    register = getattr(gpn, "register_auto_classes", None)
    if register is not None:
        register("gpn")
    else:  # releases before 0.9 register on import
        import gpn.model  # noqa: F401


def is_gpn_config(config: dict | None) -> bool:
    model_type = str((config or {}).get("model_type") or "")
    return model_type.startswith("GPN") or model_type == "ConvNet"


def uppercase_vocab(vocab: dict[str, int]) -> dict[str, int]:
    """GPN's vocabulary with its lowercase nucleotide tokens uppercased (ids unchanged), the
    spelling seqatlas's tokenizer families look residues up by."""
    out = {}
    for token, token_id in vocab.items():
        upper = token.upper() if len(token) == 1 and token.isalpha() else token
        if upper != token and upper in vocab:
            upper = token  # the vocabulary has both: keep each as it is
        out[upper] = token_id
    return out


def _encoder_name(config) -> str:
    if config.model_type == "ConvNet":
        return "convnet"
    if config.model_type == "GPNRoFormer":
        return "roformer"
    return str(getattr(config, "encoder", "convnet"))


def _count_parameters(config) -> int:
    import torch
    from transformers import AutoModelForMaskedLM

    with torch.device("meta"), contextlib.redirect_stdout(io.StringIO()):
        model = AutoModelForMaskedLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def _read_facts(directory: Path) -> dict:
    from transformers import AutoConfig

    register_gpn()
    config = AutoConfig.from_pretrained(directory)
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layers")
    declared = getattr(config, "seqatlas_context_tokens", None)
    positions = getattr(config, "max_position_embeddings", None)
    return {
        "model_type": config.model_type,
        "encoder": _encoder_name(config),
        "hidden_size": int(config.hidden_size),
        "num_layers": int(layers),
        "positions": int(positions) if positions else None,
        "declared_context": int(declared) if declared else None,
        "parameters": _count_parameters(config),
    }


class GpnAdapter(ModelAdapter):
    name = "gpn"
    description = ("GPN (the Genomic Pre-trained Network, Benegas et al. 2023): the gpn "
                   "package's DNA masked LMs (ConvNet, GPN, GPNRoFormer)")
    extra = "gpn"
    packages = ("gpn",)
    checkpoint = "a GPN Hugging Face checkpoint directory (config.json, weights, tokenizer) or hub id"

    def claims(self, path: Path) -> bool:
        try:
            return Path(path).is_dir() and is_gpn_config(config_json(path))
        except Exception:
            return False

    def resolve(self, request: ModelRequest) -> ModelSpec:
        directory, name = Path(request.path), request.name
        config = config_json(directory)
        if config is None:
            raise ModelError(f"model {name!r}: cannot read {directory / 'config.json'} "
                             "(missing, or not a JSON object)")
        if request.kind == "protein":
            raise ModelError(f"model {name!r} is a GPN model, a DNA language model, but the "
                             "input is protein: pass a protein model, or --kind dna for DNA")
        model_type = str(config.get("model_type") or "")
        if model_type == "GPNStar":
            raise ModelError(f"model {name!r} is a GPN-Star model, which reads a multiple "
                             "alignment of species beside each sequence; seqatlas scores "
                             "single sequences (use a single-sequence GPN model)")
        architectures = config.get("architectures") or []
        if architectures and not any(str(a).endswith("ForMaskedLM") for a in architectures):
            raise ModelError(f"model {name!r} ({', '.join(map(str, architectures))}) has no "
                             "masked-LM head: seqatlas needs a GPN ...ForMaskedLM checkpoint")
        aux = config.get("n_aux_features")
        if isinstance(aux, int) and aux > 0:
            raise ModelError(f"model {name!r} is a GPN-MSA model ({aux} auxiliary features "
                             "per base: an alignment of other species), which seqatlas cannot "
                             "supply; use a single-sequence GPN model")
        if request.tokenizer not in (None, "single"):
            raise ModelError(f"model {name!r}: GPN reads one token per base (tokenizer family "
                             f"'single'), not {request.tokenizer!r}")
        try:
            facts = remembered_facts(directory / "config.json",
                                     lambda: _read_facts(directory), fields=_FACTS)
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(f"model {name!r}: cannot read {directory / 'config.json'} as a "
                             f"GPN config ({type(exc).__name__}: {exc})") from None
        vocab, _, _ = read_vocab(directory)
        vocab = uppercase_vocab(vocab)
        weights = weights_files(directory)
        if not weights:
            raise ModelError(f"model {name!r}: no weight files (*.safetensors, *.bin) in "
                             f"{directory}")
        if facts["encoder"] == "roformer" and facts["positions"]:
            context = facts["positions"]
        else:
            context = CONVOLUTIONAL_CONTEXT
        context = facts["declared_context"] or context
        return ModelSpec(
            name=name, source=request.source, path=os.path.abspath(directory), vocab=vocab,
            specials=specials_from_vocab(vocab), family="single", k=1,
            model_type=facts["model_type"], hidden_size=facts["hidden_size"],
            num_layers=facts["num_layers"], context_tokens=context,
            parameters=facts["parameters"], weights_sha256=weights_sha256(weights),
            kind=request.kind, adapter=self.name)

    def load(self, spec: ModelSpec, *, device: str = "cpu") -> ScoringModel:
        return GpnScoringModel(spec, device=device)


class GpnScoringModel(TransformersMaskedModel):
    """A GPN masked LM: the body (``model.model``) and the MLM head (``model.cls``)."""

    def __init__(self, spec: ModelSpec, *, device: str = "cpu"):
        register_gpn()
        # gpn's encoders print their dilation schedule when built
        with contextlib.redirect_stdout(io.StringIO()):
            super().__init__(replace(spec, trust_remote_code=False), device=device)
        self.spec = spec
        embedding = getattr(self.encoder, "embeddings", None) or \
            getattr(self.encoder, "embedding", None)
        body = self.encoder.encoder
        blocks = list(getattr(body, "layer", body))
        if embedding is None or len(blocks) != spec.num_layers:
            raise ModelError(f"model {spec.name!r}: unexpected GPN layout "
                             f"({type(self.encoder).__name__}: {len(blocks)} layers, "
                             f"{spec.num_layers} declared)")
        self._modules_by_layer = [embedding, *blocks]

    def encode(self, input_ids, attention_mask, layers):
        import torch

        wanted = wanted_layers(layers)
        lengths = attention_mask.sum(dim=1)
        width = input_ids.shape[1]
        if bool((lengths == width).all()):
            last, hidden = self._forward(input_ids, wanted)
        else:  # unpadded, one length at a time: GPN has no padding mask
            last, hidden = None, {}
            for length in sorted({int(n) for n in lengths.tolist()} - {0}):
                rows = torch.nonzero(lengths == length).squeeze(1)
                part_last, part_hidden = self._forward(input_ids[rows, :length], wanted)
                for key, part in [(None, part_last), *part_hidden.items()]:
                    full = last if key is None else hidden.get(key)
                    if full is None:
                        full = part.new_zeros((input_ids.shape[0], width, part.shape[-1]))
                        if key is None:
                            last = full
                        else:
                            hidden[key] = full
                    full[rows, :length] = part
        return last, pick_layers(layers, lambda layer: hidden[layer])

    def _forward(self, input_ids, wanted: list[int]):
        """The body's final hidden states and those of the ``wanted`` layers (0: the input
        embeddings, ``num_layers``: the final states the head reads)."""
        captured, hooks = {}, []
        n = self.spec.num_layers
        for layer in {layer for layer in wanted if layer != n}:
            def keep(_module, _inputs, output, layer=layer):
                captured[layer] = output[0] if isinstance(output, tuple) else output
            hooks.append(self._modules_by_layer[layer].register_forward_hook(keep))
        try:
            with self.autocast():
                last = self.encoder(input_ids=input_ids).last_hidden_state
        finally:
            for hook in hooks:
                hook.remove()
        captured[n] = last
        return last, {layer: captured[layer] for layer in wanted}
