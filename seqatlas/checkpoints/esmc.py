"""The ``esmc`` adapter: EvolutionaryScale's ESM C (``esm.models.esmc.ESMC``, from the ``esm``
package on PyPI), read from the state-dict file ``esm.pretrained`` downloads
(``data/weights/esmc_300m_2024_12_v0.pth``, ``esmc_600m_2024_12_v0.pth``) or from a directory
that holds one (the download's own layout, ``data/weights/esmc_*.pth``, or ``esmc_*.pth``).

EvolutionaryScale's ``esm`` and ``fair-esm`` install the same top-level module ``esm``: they
cannot share one environment, and this adapter says so when it finds fair-esm's.
"""

from __future__ import annotations

import importlib.util
import os
import zipfile
from importlib import metadata
from pathlib import Path

from seqatlas.checkpoints.adapter import (ModelAdapter, ModelRequest, ScoringModel, pick_layers,
                                          require_protein,
                                          wanted_layers)
from seqatlas.checkpoints.digests import weights_sha256
from seqatlas.checkpoints.spec import ModelSpec
from seqatlas.checkpoints.tokenizers import SpecialTokens
from seqatlas.errors import ModelError

# ESM C's training context (its second stage ran at 2048 tokens); the model itself (rotary
# positions) sets no limit
CONTEXT_TOKENS = 2048
# the head dimension of both released models (960 / 15, 1152 / 18); the state dict does not
# record the number of heads (rotary buffers are not saved)
HEAD_DIM = 64
WEIGHT_SUFFIXES = (".pth", ".pt")
# top-level keys of an ESMC state dict, as they are framed in the pickle of torch.save's zip
# (protocol 2: BINUNICODE; later protocols: SHORT_BINUNICODE); ESM3's keys differ
_KEYS = ("embed.weight", "transformer.norm.weight", "sequence_head.3.weight")
_MAX_PICKLE_BYTES = 64 << 20


def _framed(key: str) -> tuple[bytes, bytes]:
    raw = key.encode()
    return b"X" + len(raw).to_bytes(4, "little") + raw, b"\x8c" + bytes([len(raw)]) + raw


def _has_esmc_keys(path: Path) -> bool:
    """Whether the torch.save zip at ``path`` pickles a dict with ESM C's keys (its data.pkl
    is read, no tensor and nothing unpickled)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        pickles = [i for i in archive.infolist() if i.filename.endswith("/data.pkl")]
        if len(pickles) != 1 or pickles[0].file_size > _MAX_PICKLE_BYTES:
            return False
        data = archive.read(pickles[0])
    return all(any(f in data for f in _framed(key)) for key in _KEYS)


def _directory_weights(directory: Path) -> list[Path]:
    found = []
    for where in (directory / "data" / "weights", directory):
        if where.is_dir():
            found += sorted(p for p in where.iterdir() if p.is_file()
                            and p.name.lower().startswith("esmc") and p.suffix in WEIGHT_SUFFIXES)
    return found


def weights_file(path: Path, name: str) -> Path:
    """The state-dict file of a checkpoint given as a file or a directory."""
    path = Path(path)
    if not path.is_dir():
        return path
    found = _directory_weights(path)
    if len(found) != 1:
        what = "no ESM C weights" if not found else \
            f"several ESM C weight files ({', '.join(p.name for p in found)}): pass one"
        raise ModelError(f"model {name!r}: {what} in {path} (expected data/weights/esmc_*.pth, "
                         "as esm.pretrained downloads it)")
    return found[0]


def read_state_dict(path: Path, name: str) -> dict:
    """The checkpoint's state dict (memory-mapped where the file allows), checked to be ESM C's."""
    import torch

    try:
        try:
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError:  # not a zip (legacy torch.save): mmap is not possible
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"model {name!r}: cannot read the ESM C weights file {path} "
                         f"({type(exc).__name__}: {exc})") from None
    lacking = [key for key in _KEYS if not isinstance(state, dict) or key not in state]
    if lacking:
        raise ModelError(f"model {name!r}: {path} is not an ESM C state dict (it lacks "
                         f"{', '.join(lacking)})")
    return state


def architecture(state: dict, path: Path, name: str) -> dict:
    """d_model, n_heads and n_layers of an ESM C state dict."""
    d_model = int(state["embed.weight"].shape[1])
    blocks = {int(key.split(".")[2]) for key in state if key.startswith("transformer.blocks.")}
    if not blocks or blocks != set(range(len(blocks))) or d_model % HEAD_DIM:
        raise ModelError(f"model {name!r}: {path} does not have ESM C's layout (blocks "
                         f"{sorted(blocks)}, d_model {d_model}, heads of {HEAD_DIM})")
    return {"d_model": d_model, "n_heads": d_model // HEAD_DIM, "n_layers": len(blocks)}


def esmc_importable() -> bool:
    """Whether EvolutionaryScale's ``esm.models.esmc`` is importable; fair-esm's ``esm`` is
    not imported to find out (it imports torch)."""
    try:
        spec = importlib.util.find_spec("esm")
    except (ImportError, ValueError):
        return False
    if spec is None:
        return False
    locations = list(spec.submodule_search_locations or [])
    if locations:
        return any((Path(loc) / "models" / "esmc.py").is_file() for loc in locations)
    try:
        return importlib.util.find_spec("esm.models.esmc") is not None
    except (ImportError, ValueError):
        return False


def _other_esm() -> str:
    """What the importable ``esm`` module is, when it is not EvolutionaryScale's."""
    try:
        metadata.distribution("fair-esm")
        return "fair-esm's"
    except metadata.PackageNotFoundError:
        return "another package's (it has no esm.models.esmc)"


class EsmCAdapter(ModelAdapter):
    name = "esmc"
    description = "EvolutionaryScale's ESM C (300M, 600M), with its own esm package"
    extra = "esmc"
    packages = ("esm",)
    checkpoint = ("an ESM C .pth state dict (data/weights/esmc_300m_2024_12_v0.pth) or the "
                  "directory esm.pretrained downloads it into")

    def missing(self) -> list[str]:
        return [] if esmc_importable() else ["esm"]

    def require(self) -> None:
        if not self.missing():
            return
        try:
            present = importlib.util.find_spec("esm") is not None
        except (ImportError, ValueError):
            present = False
        if present:
            raise ModelError(
                f"the esmc adapter needs EvolutionaryScale's esm package (esm.models.esmc), "
                f"but the installed esm module is {_other_esm()}; EvolutionaryScale's esm "
                "(pip install 'seqatlas[esmc]') and fair-esm both install the module esm and "
                "cannot share one environment: use a separate one for ESM C")
        super().require()

    def claims(self, path: Path) -> bool:
        try:
            path = Path(path)
            if path.is_dir():
                return bool(_directory_weights(path))
            if not path.is_file() or path.suffix not in WEIGHT_SUFFIXES:
                return False
            return path.name.lower().startswith("esmc") or _has_esmc_keys(path)
        except Exception:
            return False

    def resolve(self, request: ModelRequest) -> ModelSpec:
        name = request.name
        require_protein(request, "ESM C, a protein model")
        file = weights_file(request.path, name)
        state = read_state_dict(file, name)
        options = architecture(state, file, name)
        parameters = sum(int(t.numel()) for t in state.values())  # no buffers are saved
        del state
        self.require()
        from esm.tokenization import get_esmc_model_tokenizers

        tokenizer = get_esmc_model_tokenizers()
        vocab = {str(token): int(i) for token, i in tokenizer.get_vocab().items()}
        specials = SpecialTokens(prefix=(tokenizer.cls_token_id,),
                                 suffix=(tokenizer.eos_token_id,),
                                 mask=tokenizer.mask_token_id, pad=tokenizer.pad_token_id,
                                 unk=tokenizer.unk_token_id)
        return ModelSpec(
            name=name, source=request.source, path=os.path.abspath(request.path), vocab=vocab,
            specials=specials, family="single", k=1, model_type="esmc",
            hidden_size=options["d_model"], num_layers=options["n_layers"],
            context_tokens=CONTEXT_TOKENS, parameters=parameters,
            weights_sha256=weights_sha256([file]), kind=request.kind, adapter=self.name,
            options=options)

    def load(self, spec: ModelSpec, *, device: str = "cpu") -> ScoringModel:
        return EsmCModel(spec, device=device)


class EsmCModel(ScoringModel):
    """ESM C split into body (embedding, blocks, final norm) and sequence head."""

    def __init__(self, spec: ModelSpec, *, device: str = "cpu"):
        import torch
        from esm.models.esmc import ESMC
        from esm.tokenization import get_esmc_model_tokenizers

        file = weights_file(Path(spec.path), spec.name)
        state = read_state_dict(file, spec.name)
        self.device = torch.device(device)
        options = spec.options
        with self.device:
            # flash attention off: its unpadded path needs the flash_attn package; the plain
            # path masks padding out of attention the same way
            model = ESMC(d_model=options["d_model"], n_heads=options["n_heads"],
                         n_layers=options["n_layers"], tokenizer=get_esmc_model_tokenizers(),
                         use_flash_attn=False)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ModelError(f"model {spec.name!r}: the weights in {file} do not fit ESM C "
                             f"with {options}: {exc}") from None
        self.spec = spec
        self.model = model.eval()
        self.autocast_dtype = torch.bfloat16 if self.device.type == "cuda" else None

    def encode(self, input_ids, attention_mask, layers):
        n_layers = self.spec.num_layers
        wanted = [layer + n_layers + 1 if layer < 0 else layer for layer in wanted_layers(layers)]
        with self.autocast():
            # sequence_id: real tokens attend only to real tokens (the package's own default
            # is tokens != pad, the same thing here)
            out = self.model(sequence_tokens=input_ids, sequence_id=attention_mask.bool())
            first = self.model.embed(input_ids) if 0 in wanted else None
        last = out.embeddings  # after the final norm: what the sequence head reads

        def by_layer(layer):
            layer = layer + n_layers + 1 if layer < 0 else layer
            if layer == n_layers:
                return last
            return first if layer == 0 else out.hidden_states[layer - 1]

        return last, pick_layers(layers, by_layer)

    def head_logits(self, hidden):
        return self.model.sequence_head(hidden)
