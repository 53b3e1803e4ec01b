"""What the transformers adapters share: the checkpoint directory's vocabulary, weight files,
config (read as JSON, cheap) and the code that travels with it (``trust_remote_code``)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from seqatlas.checkpoints.adapter import pick_layers, wanted_layers
from seqatlas.checkpoints.tokenizers import read_tokenizer_json, read_vocab_txt
from seqatlas.errors import ModelError

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
_NOT_WEIGHTS = {"training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth"}
_CAUSAL_ARCHITECTURE_ENDINGS = ("ForCausalLM", "LMHeadModel")


def weights_files(directory: Path) -> list[Path]:
    files = sorted(p for p in directory.iterdir()
                   if p.suffix in _WEIGHT_SUFFIXES and p.name not in _NOT_WEIGHTS)
    safetensors = [p for p in files if p.suffix == ".safetensors"]
    return safetensors or files


def config_json(directory: Path) -> dict | None:
    """``config.json`` as a dict; None when there is none or it is not a JSON object."""
    try:
        data = json.loads((Path(directory) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def declares_causal(config: dict) -> bool:
    """Whether a config's JSON names a causal LM (architectures, or ``is_decoder``)."""
    architectures = config.get("architectures") or []
    return config.get("is_decoder") is True or any(
        str(a).endswith(_CAUSAL_ARCHITECTURE_ENDINGS) for a in architectures)


def code_files(directory: Path) -> list[Path]:
    """The Python files a checkpoint ships (what ``trust_remote_code`` would run)."""
    return sorted(p for p in Path(directory).iterdir() if p.suffix == ".py" and p.is_file())


def ships_code(directory: Path, config: dict | None) -> bool:
    """A checkpoint whose config maps its classes to its own code (``auto_map``)."""
    return bool(config and config.get("auto_map"))


def code_sha256(directory: Path) -> str:
    """The sha256 of the checkpoint's code files, names and bytes: changed code (or a file
    added or removed) is a different model."""
    digest = hashlib.sha256()
    for path in code_files(directory):
        data = path.read_bytes()
        digest.update(f"{path.name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def check_remote_code(directory: Path, config: dict | None, name: str, *,
                      trust_remote_code: bool) -> str | None:
    """The code's hash when the checkpoint ships code and the user trusts it; refused with
    a message naming the flag when it ships code and they have not; None when it ships none."""
    if not ships_code(directory, config):
        return None
    files = ", ".join(p.name for p in code_files(directory)) or "modules named in auto_map"
    if not trust_remote_code:
        raise ModelError(
            f"model {name!r} ships its own code ({files}), which seqatlas runs only when "
            "asked: pass --trust-remote-code (Python: trust_remote_code=True) if you trust "
            "it. Its hash becomes part of the model's identity in the atlas.")
    return code_sha256(directory)


def read_vocab(directory: Path) -> tuple[dict[str, int], bool, str | None]:
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


def run_body(model, body, input_ids, attention_mask, layers, **kwargs):
    """``ScoringModel.encode`` for a transformers body: hidden states of every layer are
    asked for only when a layer other than the last is wanted."""
    last_layer = model.spec.num_layers
    need_all = any(layer != last_layer for layer in wanted_layers(layers))
    with model.autocast():
        out = body(input_ids=input_ids, attention_mask=attention_mask,
                   output_hidden_states=need_all, **kwargs)
    last = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return last, pick_layers(layers, lambda layer: last if layer == last_layer
                             else out.hidden_states[layer])


def quiet_transformers() -> None:
    """No progress bars or warnings from transformers in a scoring worker."""
    import logging

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)
