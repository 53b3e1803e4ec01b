"""Finding a model (driver side, no weights loaded) and loading it (worker side).

:func:`resolve_model` locates the checkpoint (an embedded name, a directory, a file, a hub
id), picks its adapter (:mod:`seqatlas.checkpoints.adapter`: the one named, else the first
that claims the checkpoint) and returns the adapter's :class:`ModelSpec`, so the driver can
plan windows and check the atlas manifest without holding the weights.
:func:`load_model` is what a scoring worker calls with that spec.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from seqatlas.checkpoints.adapter import ModelRequest, ScoringModel
from seqatlas.checkpoints.registry import all_adapters, get_adapter
from seqatlas.checkpoints.spec import EXTRA_LETTERS, SCORED_LETTERS, ModelSpec
from seqatlas.errors import ModelError

__all__ = ["EMBEDDED_MODELS", "EXTRA_LETTERS", "SCORED_LETTERS", "ModelSpec", "list_models",
           "load_model", "resolve_model"]


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


def embedded_directory(model: EmbeddedModel) -> Path:
    package, _, relative = model.directory.partition(":")
    # found, not imported: importing antiberty imports torch and transformers (seconds)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:  # pragma: no cover - declared
        raise ModelError(f"the embedded model {model.name!r} needs the {package!r} package")
    return Path(list(spec.submodule_search_locations)[0]) / relative


def _locate(name: str) -> tuple[Path, str]:
    """A checkpoint directory or file, and its source (directory, file or hub)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve(), "directory"
    if path.is_file():
        return path.resolve(), "file"
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(f"model {name!r}: not a checkpoint directory or file "
                         f"(embedded models: {', '.join(EMBEDDED_MODELS)})")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(name, allow_patterns=[
            "*.json", "*.txt", "*.safetensors", "*.bin", "*.model", "*.py"])
    except Exception as exc:
        raise ModelError(
            f"model {name!r} is neither an embedded model ({', '.join(EMBEDDED_MODELS)}), "
            "a checkpoint directory or file, nor a reachable Hugging Face hub id "
            f"({type(exc).__name__}). Download it where you have network (huggingface-cli "
            "download NAME --local-dir DIR) and pass the directory."
        ) from None
    return Path(local), "hub"


def _detect_adapter(path: Path, name: str):
    for adapter in all_adapters():
        if adapter.claims(path):
            return adapter
    if path.is_dir():  # the generic adapter says what the directory lacks
        return get_adapter("transformers")
    raise ModelError(f"model {name!r}: no adapter recognises {path} (a Hugging Face checkpoint "
                     "directory has a config.json; a fair-esm or CARP checkpoint is a .pt "
                     "file); name one with --adapter (seqatlas models lists them)")


def resolve_model(name: str, *, kind: str, tokenizer: str | None = None,
                  adapter: str | None = None, trust_remote_code: bool = False) -> ModelSpec:
    """Find a model by embedded name, directory, file or hub id, without loading its weights;
    ``adapter`` names the adapter (None: the first that claims the checkpoint)."""
    embedded = EMBEDDED_MODELS.get(name)
    if embedded is not None:
        if kind not in embedded.kinds:
            raise ModelError(f"model {name!r} is a {'/'.join(embedded.kinds)} model but the input "
                             f"is {kind}: pass --model with a checkpoint for {kind}")
        path, source = embedded_directory(embedded), "embedded"
    else:
        path, source = _locate(name)
    chosen = get_adapter(adapter) if adapter else \
        get_adapter("transformers") if embedded else _detect_adapter(path, name)
    chosen.require()
    spec = chosen.resolve(ModelRequest(name=name, path=path, source=source, kind=kind,
                                       tokenizer=tokenizer,
                                       trust_remote_code=trust_remote_code))
    spec.tokenizer()  # fails early when the vocabulary does not fit the kind
    return spec


def load_model(spec: ModelSpec, *, device: str = "cpu") -> ScoringModel:
    """The model of ``spec``, loaded by the adapter that resolved it."""
    adapter = get_adapter(spec.adapter)
    adapter.require()
    return adapter.load(spec, device=device)


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


def list_adapters() -> list[dict]:
    """Every model adapter (shipped and plugins): what it loads, whether what it needs is
    installed, and how to install it when not."""
    return [adapter.summary() for adapter in all_adapters()]
