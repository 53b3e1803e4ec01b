"""The ``fair-esm`` adapter: ESM-1, ESM-1b, ESM-1v and ESM-2 from the ``.pt`` files torch hub
caches for the ``fair-esm`` package (``~/.cache/torch/hub/checkpoints/esm2_t33_650M_UR50D.pt``,
``esm1b_t33_650M_UR50S.pt``, ``esm1v_t33_650M_UR90S_1.pt``), built by the package's own loader.

A file is a dict: ``model`` (the state dict) and ``args`` (an argparse Namespace: ESM-1,
ESM-1b, ESM-1v) or ``cfg`` (ESM-2). The companion ``-contact-regression.pt`` only feeds the
contact head, which scoring never reads, so it is neither needed nor read (fair-esm's
``load_model_and_alphabet_local`` requires it, and with torch >= 2.6 cannot unpickle the
Namespace; this adapter reads the file itself and hands it to ``load_model_and_alphabet_core``).

Tokens are the package's ``Alphabet``: ``<cls>`` before the residues, ``<eos>`` after them
(ESM-1 has no ``<eos>``), padding by ``padding_idx``, which the package's forward masks out
of attention (and of ESM-1b's learned positions). ESM-2 and ESM-1b rescale the embeddings by
the share of ``<mask>`` tokens in a row (token dropout): the package's forward does it, and
is what :meth:`FairEsmModel.encode` runs. The final hidden state is the package's last
representation (after ``emb_layer_norm_after`` for ESM-1b and ESM-2), the one its LM head
reads. The context is 1024 tokens, specials included: what ESM-2 and ESM-1b were trained on,
and ESM-1b's learned positions (``max_positions``) go no further.
"""

from __future__ import annotations

import io
import os
import pickletools
import warnings
import zipfile
from pathlib import Path

from seqatlas.checkpoints.adapter import (ModelAdapter, ModelRequest, ScoringModel, pick_layers,
                                          require_protein,
                                          wanted_layers)
from seqatlas.checkpoints.digests import weights_sha256
from seqatlas.checkpoints.spec import ModelSpec
from seqatlas.checkpoints.tokenizers import SpecialTokens
from seqatlas.errors import ModelError

CONTEXT_TOKENS = 1024  # ESM-2's and ESM-1b's training length, <cls> and <eos> included
_NAME_PREFIXES = ("esm1", "esm2")  # esm1_, esm1b_, esm1v_, esm2_ as torch hub names them
_COMPANION = "-contact-regression.pt"
_SCAN_BYTES = 64 << 20  # the pickle of a checkpoint (no tensor data) is far smaller
_ARCHITECTURES = {"roberta_large": "esm1b", "protein_bert_base": "esm1"}
_MODELS = "ESM-1, ESM-1b, ESM-1v and ESM-2"


def _pickled_strings(path: Path) -> set[str]:
    """The strings in a torch checkpoint's pickle (keys, argument names), read without
    unpickling anything."""
    strings: set[str] = set()

    def scan(stream) -> None:
        for _, arg, _ in pickletools.genops(stream):
            if isinstance(arg, str):
                strings.add(arg)

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
            if name is not None:
                with archive.open(name) as fh:
                    scan(io.BytesIO(fh.read(_SCAN_BYTES)))
    else:
        with open(path, "rb") as fh:  # legacy format: magic, protocol, system info, object
            for _ in range(4):
                scan(fh)
    return strings


def _looks_like_fair_esm(path: Path) -> bool:
    strings = _pickled_strings(path)
    return "model" in strings and bool(strings & {"args", "cfg"}) and any(
        s.endswith("embed_tokens.weight") for s in strings)


def _read_checkpoint(path: Path) -> dict:
    """The checkpoint's dict, tensors memory-mapped where the format allows."""
    import torch

    def load(mmap: bool):
        # the args/cfg are argparse Namespaces, which torch's safe loader refuses
        return torch.load(path, map_location="cpu", mmap=mmap, weights_only=False)

    try:
        try:
            data = load(True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            data = load(False)  # a legacy (not zip) file cannot be memory-mapped
    except Exception as exc:
        raise ModelError(f"cannot read the fair-esm checkpoint {path}: {type(exc).__name__}: "
                         f"{str(exc)[:300]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict) or not (
            "args" in data or "cfg" in data):
        what = f"a dict with keys {sorted(map(str, data))[:8]}" if isinstance(data, dict) \
            else f"a {type(data).__name__}"
        raise ModelError(f"{path} is not a fair-esm checkpoint: it holds {what}, not the dict "
                         "of 'model' and 'args' or 'cfg' that fair-esm's .pt files are")
    return data


def _model_type(data: dict, path: Path) -> str:
    """esm2, esm1b, esm1v or esm1; other fair-esm architectures are refused."""
    if "cfg" in data:
        cfg = data["cfg"]
        model = cfg.get("model") if isinstance(cfg, dict) else getattr(cfg, "model", None)
        if getattr(model, "encoder_layers", None) is None:
            raise ModelError(f"{path} has a 'cfg' but not the model config of an ESM-2 "
                             "checkpoint (cfg['model'].encoder_layers): the fair-esm adapter "
                             f"reads {_MODELS} language models")
        return "esm2"
    arch = getattr(data["args"], "arch", None)
    if arch == "msa_transformer":
        raise ModelError(f"{path} is an MSA Transformer checkpoint: it reads multiple sequence "
                         f"alignments, and seqatlas scores single sequences ({_MODELS})")
    if arch not in _ARCHITECTURES:
        raise ModelError(f"{path}: the fair-esm architecture {arch!r} is not one of the "
                         f"single-sequence language models the fair-esm adapter reads ({_MODELS})")
    model_type = _ARCHITECTURES[arch]
    # ESM-1v is ESM-1b's architecture trained on UniRef90: only the file name tells them apart
    return "esm1v" if model_type == "esm1b" and path.name.startswith("esm1v") else model_type


def _build(data: dict, model_type: str, path: Path):
    """The package's model and alphabet, by its own loader (which upgrades the state dict
    and checks its keys)."""
    import esm.pretrained

    try:
        with warnings.catch_warnings():
            # the contact regression weights are not there: the contact head goes unused
            warnings.simplefilter("ignore")
            # the loader picks ESM-2's builder by a name starting with "esm2", else args.arch
            return esm.pretrained.load_model_and_alphabet_core(model_type, data, None)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"fair-esm cannot build a model from {path}: {type(exc).__name__}: "
                         f"{str(exc)[:300]}") from None


class FairEsmAdapter(ModelAdapter):
    name = "fair-esm"
    description = f"{_MODELS}, the protein masked LMs of Meta's fair-esm package"
    extra = "fair-esm"
    packages = ("esm",)
    checkpoint = ("a fair-esm .pt file as torch hub caches it "
                  "(~/.cache/torch/hub/checkpoints/esm2_t33_650M_UR50D.pt)")

    def claims(self, path: Path) -> bool:
        try:
            path = Path(path)
            if not path.is_file() or path.suffix != ".pt" or path.name.endswith(_COMPANION):
                return False
            if path.name.lower().startswith(_NAME_PREFIXES):
                return True
            return _looks_like_fair_esm(path)
        except Exception:
            return False

    def resolve(self, request: ModelRequest) -> ModelSpec:
        import torch

        path = Path(request.path)
        require_protein(request, "a fair-esm protein model")
        if not path.is_file():
            raise ModelError(f"model {request.name!r}: a fair-esm checkpoint is a .pt file, and "
                             f"{path} is not a file")
        data = _read_checkpoint(path)
        model_type = _model_type(data, path)
        with torch.device("meta"):  # the architecture without its weights
            model, alphabet = _build(data, model_type, path)
        if model_type == "esm2":
            context = CONTEXT_TOKENS
        elif model_type == "esm1":  # sinusoidal positions: the length it was trained on
            context = min(CONTEXT_TOKENS, int(getattr(data["args"], "max_positions",
                                                      CONTEXT_TOKENS)))
        else:  # learned positions: none beyond the table
            context = min(CONTEXT_TOKENS, int(model.embed_positions.max_positions))
        specials = SpecialTokens(
            prefix=(alphabet.cls_idx,) if alphabet.prepend_bos else (),
            suffix=(alphabet.eos_idx,) if alphabet.append_eos else (),
            mask=alphabet.mask_idx, pad=alphabet.padding_idx, unk=alphabet.unk_idx)
        return ModelSpec(
            name=request.name, source=request.source, path=os.path.abspath(path),
            vocab=dict(alphabet.tok_to_idx), specials=specials, family="single", k=1,
            model_type=model_type, hidden_size=int(model.embed_tokens.embedding_dim),
            num_layers=len(model.layers), context_tokens=context,
            parameters=sum(p.numel() for p in model.parameters()),
            weights_sha256=weights_sha256([path]), kind=request.kind, adapter=self.name)

    def load(self, spec: ModelSpec, *, device: str = "cpu") -> ScoringModel:
        return FairEsmModel(spec, device=device)


class FairEsmModel(ScoringModel):
    """The package's model: its forward is the body, its LM head the head."""

    def __init__(self, spec: ModelSpec, *, device: str = "cpu"):
        import torch

        path = Path(spec.path)
        self.spec = spec
        self.device = torch.device(device)
        data = _read_checkpoint(path)
        with self.device:  # built where it runs: the weights are copied once, from the file
            model, alphabet = _build(data, _model_type(data, path), path)
        del data  # the memory-mapped file: the model holds copies
        if alphabet.padding_idx != spec.specials.pad or len(model.layers) != spec.num_layers:
            raise ModelError(f"the fair-esm checkpoint {path} changed since it was resolved")
        self.model = model.eval().to(self.device)
        self.autocast_dtype = torch.bfloat16 if self.device.type == "cuda" else None

    def encode(self, input_ids, attention_mask, layers):
        # padding is the package's padding_idx (spec.specials.pad), which its forward masks
        last_layer = self.spec.num_layers
        wanted = sorted(set(wanted_layers(layers)) | {last_layer})
        with self.autocast():
            representations = self.model(input_ids, repr_layers=wanted)["representations"]
        return representations[last_layer], pick_layers(layers,
                                                       lambda layer: representations[layer])

    def head_logits(self, hidden):
        import torch.nn.functional as F

        model = self.model
        if hasattr(model, "lm_head"):
            return model.lm_head(hidden)
        return F.linear(hidden, model.embed_out, model.embed_out_bias)  # ESM-1's output layer
