"""The ``carp`` adapter: CARP (Yang et al. 2022), the dilated-CNN protein masked LMs of
``sequence-models``, from the ``.pt`` files its ``pretrained`` module downloads
(``carp_600k.pt``, ``carp_38M.pt``, ``carp_76M.pt``, ``carp_640M.pt``).

CARP reads residues with no start or end token, over ``PROTEIN_ALPHABET`` (the mask is
``#``, padding ``-``). It has no positional limit; the context is the 1024 residues it was
trained on. A block's convolution zeroes its padded inputs (``input_mask``, as the
package's ``CARP`` wrapper does), so padding never reaches real positions. The final hidden
state is the last block's output (the package's final representation); the head is the
final layer norm and the decoder.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

from seqatlas.checkpoints.adapter import (ModelAdapter, ModelRequest, ScoringModel, pick_layers,
                                          require_protein,
                                          wanted_layers)
from seqatlas.checkpoints.digests import weights_sha256
from seqatlas.checkpoints.spec import ModelSpec
from seqatlas.checkpoints.tokenizers import SpecialTokens
from seqatlas.errors import ModelError

CONTEXT_TOKENS = 1024  # the sequence length CARP was trained on
# the checkpoint's architecture fields, as sequence_models.pretrained.load_carp reads them
_ARCHITECTURE = ("d_embed", "d_model", "n_layers", "kernel_size", "r", "slim", "activation")
_SUFFIXES = (".pt", ".pth")
_LAYOUT_MARKERS = (b"model_state_dict", b"embedder.up_embedder")
_SCAN_BYTES = 8 << 20  # a checkpoint's pickled structure (tensor data apart) is far smaller


def _pickle_bytes(path: Path) -> bytes:
    """The pickled structure of a torch checkpoint (tensor data excluded where the format
    keeps it apart), read without unpickling anything."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
            if name is None:
                return b""
            with archive.open(name) as fh:
                return fh.read(_SCAN_BYTES)
    with open(path, "rb") as fh:  # legacy format: the object's pickle comes first
        return fh.read(_SCAN_BYTES)


def _read_checkpoint(path: Path) -> dict:
    """The checkpoint's dict, tensors memory-mapped where the format allows."""
    import torch

    def load(weights_only: bool):
        try:
            return torch.load(path, map_location="cpu", mmap=True, weights_only=weights_only)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            return torch.load(path, map_location="cpu", weights_only=weights_only)

    try:
        try:
            data = load(True)
        except pickle.UnpicklingError:
            # an object torch's safe loader does not allow: the package's loader unpickled
            # such files whole before torch 2.6
            data = load(False)
    except Exception as exc:
        raise ModelError(f"cannot read the CARP checkpoint {path}: {type(exc).__name__}: "
                         f"{exc}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} is not a CARP checkpoint (it holds a {type(data).__name__}, "
                         "not the dict sequence_models.pretrained saves)")
    return data


def _architecture(data: dict, path: Path) -> dict:
    """The architecture fields of a CARP checkpoint dict, checked."""
    model = str(data.get("model", ""))
    if "bigcarp" in model:
        raise ModelError(f"{path} is a BiGCARP checkpoint ({model}), a model of Pfam domains "
                         "in biosynthetic gene clusters, not of protein sequences")
    missing = [k for k in (*_ARCHITECTURE, "model_state_dict") if k not in data]
    if "carp" not in model or missing:
        raise ModelError(f"{path} is not a CARP checkpoint (model {model or 'unnamed'!r}"
                         + (f"; no {', '.join(missing)}" if missing else "") + ")")
    options = {k: data[k] for k in _ARCHITECTURE}
    options = {k: v.item() if hasattr(v, "item") else v for k, v in options.items()}
    return {"model": model, **options}


class CarpAdapter(ModelAdapter):
    name = "carp"
    description = "CARP, the dilated-CNN protein masked LMs of sequence-models (Yang et al. 2022)"
    extra = "carp"
    packages = ("sequence_models",)
    checkpoint = "a CARP .pt file as sequence_models.pretrained downloads it (carp_640M.pt)"

    def claims(self, path: Path) -> bool:
        try:
            path = Path(path)
            if not path.is_file() or path.suffix not in _SUFFIXES:
                return False
            if path.name.lower().startswith("carp"):
                return True
            head = _pickle_bytes(path)
            return all(marker in head for marker in _LAYOUT_MARKERS)
        except Exception:
            return False

    def resolve(self, request: ModelRequest) -> ModelSpec:
        from sequence_models.constants import MASK, PAD, PROTEIN_ALPHABET

        path = Path(request.path)
        require_protein(request, "CARP, a protein model")
        if not path.is_file():
            raise ModelError(f"model {request.name!r}: a CARP checkpoint is a .pt file, and "
                             f"{path} is not a file")
        data = _read_checkpoint(path)
        options = _architecture(data, path)
        state = data["model_state_dict"]
        try:
            n_tokens = int(state["embedder.embedder.weight"].shape[0])
            parameters = sum(int(t.numel()) for t in state.values())
        except Exception as exc:
            raise ModelError(f"{path} is not a CARP checkpoint: its model_state_dict has no "
                             f"token embedding ({type(exc).__name__}: {exc})") from None
        if n_tokens != len(PROTEIN_ALPHABET):
            raise ModelError(f"{path} embeds {n_tokens} tokens, not the {len(PROTEIN_ALPHABET)} "
                             "of sequence_models' PROTEIN_ALPHABET: not a protein CARP")
        vocab = {token: i for i, token in enumerate(PROTEIN_ALPHABET)}
        specials = SpecialTokens(prefix=(), suffix=(), mask=vocab[MASK], pad=vocab[PAD],
                                 unk=vocab.get("X", vocab[MASK]))
        return ModelSpec(
            name=request.name, source=request.source, path=os.path.abspath(path), vocab=vocab,
            specials=specials, family="single", k=1, model_type="carp",
            hidden_size=int(options["d_model"]), num_layers=int(options["n_layers"]),
            context_tokens=CONTEXT_TOKENS, parameters=parameters,
            weights_sha256=weights_sha256([path]), kind=request.kind, adapter=self.name,
            options=options)

    def load(self, spec: ModelSpec, *, device: str = "cpu") -> ScoringModel:
        return CarpModel(spec, device=device)


class CarpModel(ScoringModel):
    """A CARP ByteNetLM split into its blocks (the body) and final norm plus decoder (head)."""

    def __init__(self, spec: ModelSpec, *, device: str = "cpu"):
        import torch
        from sequence_models.pretrained import load_carp

        path = Path(spec.path)
        data = _read_checkpoint(path)
        found = _architecture(data, path)
        if found != spec.options:
            raise ModelError(f"the CARP checkpoint {path} changed since it was resolved "
                             f"({spec.options} then, {found} now)")
        try:
            carp = load_carp(data)  # the package's CARP wrapper around its ByteNetLM
        except Exception as exc:
            raise ModelError(f"sequence_models cannot load the CARP checkpoint {path}: "
                             f"{type(exc).__name__}: {exc}") from None
        self.spec = spec
        self.device = torch.device(device)
        self.net = carp.model.eval().to(self.device)
        self.autocast_dtype = torch.bfloat16 if self.device.type == "cuda" else None

    def encode(self, input_ids, attention_mask, layers):
        wanted = set(wanted_layers(layers))
        # as the package's CARP wrapper: each block's convolution zeroes padded inputs
        input_mask = (attention_mask != 0).unsqueeze(-1)
        body = self.net.embedder
        kept = {}
        with self.autocast():
            x = body._embed(input_ids)
            if 0 in wanted:
                kept[0] = x
            for i, block in enumerate(body.layers, start=1):
                x = block(x, input_mask=input_mask)
                if i in wanted:
                    kept[i] = x
        return x, pick_layers(layers, lambda layer: kept[layer])

    def head_logits(self, hidden):
        # the decoder is a 1x1 convolution over (batch, length, dim)
        return self.net.decoder(self.net.last_norm(hidden).unsqueeze(0)).squeeze(0)
