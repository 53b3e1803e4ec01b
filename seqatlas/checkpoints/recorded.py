"""What an atlas recorded about how it was built, put back to use: its model, resolved
and checked against the manifest (:func:`atlas_model_spec`), and the ingest options that
reproduce its settings (:func:`recorded_settings`).
"""

from __future__ import annotations

import os
from pathlib import Path

from seqatlas.checkpoints.fit import check_model_fit
from seqatlas.checkpoints.hf_common import code_sha256
from seqatlas.checkpoints.loading import resolve_model
from seqatlas.errors import ModelError
from seqatlas.manifest import Manifest
from seqatlas.store import AtlasReader


def atlas_model_spec(atlas: AtlasReader, model: str | None = None):
    """The atlas's model, resolved (no weights loaded) and checked against the manifest."""
    record = atlas.manifest.model
    if model is None:
        path = record.extra.get("path")
        model = path if path and os.path.exists(path) else record.name
    family = record.tokenizer.get("family")
    try:
        spec = resolve_model(model, kind=atlas.manifest.kind, tokenizer=family,
                             adapter=record.extra.get("adapter"),
                             trust_remote_code=_same_code(record, model))
    except ModelError as exc:
        raise ModelError(f"cannot load the atlas's model {record.name!r} ({exc}); pass "
                         "--model DIR with the checkpoint the atlas was built with") from None
    if spec.weights_sha256 != record.weights_sha256:
        raise ModelError(
            f"the model at {spec.path} has weights sha256 {spec.weights_sha256[:12]}…, but "
            f"{atlas.path} was built with {record.weights_sha256[:12]}… ({record.name}); "
            "query vectors from other weights are not comparable. Pass --model DIR with the "
            "checkpoint the atlas was built with.")
    described = spec.tokenizer().describe()
    if described != record.get("tokenizer", described):
        raise ModelError(f"the model at {spec.path} tokenizes differently from the one "
                         f"{atlas.path} was built with; pass the original checkpoint")
    check_model_fit(spec, lambda letters: _ref_counts(atlas, letters))  # atlases before it
    return spec


def _same_code(record, model: str) -> bool:
    """Whether the checkpoint at ``model`` ships exactly the code the atlas was built with
    (hashed before any of it runs): the consent given at ingest covers that code only."""
    recorded = record.extra.get("code_sha256")
    return bool(recorded) and os.path.isdir(model) and code_sha256(Path(model)) == recorded


def _ref_counts(atlas: AtlasReader, letters: str) -> dict[str, int]:
    """How many positions of the atlas hold each of ``letters``."""
    import pyarrow.compute as pc

    found = {row["values"]: row["counts"]
             for row in pc.value_counts(atlas.positions(["ref"])["ref"]).to_pylist()}
    return {c: int(found.get(c, 0)) for c in letters}


def recorded_engine(scoring, likelihood: str | None = None) -> dict:
    """The scorer settings that reproduce an atlas's values in ``likelihood`` (None: its
    own mode): the forward passes' precision, and fast mode's stride when the atlas was
    scored in fast mode (a probe in another mode uses the tokenizer's default)."""
    mode = likelihood or scoring.likelihood
    stride = scoring.fast.stride if scoring.fast is not None and mode == "fast" else None
    return {"precision": scoring.precision or "float32", "fast_stride": stride}


def recorded_settings(manifest: Manifest) -> dict:
    """The ingest options that reproduce an atlas's recorded settings (its kind included)."""
    model, scoring = manifest.model, manifest.scoring
    source = model.extra.get("source")
    options = {"model": model.name if source == "embedded" or not model.extra.get("path")
               else model.extra["path"],
               "kind": manifest.kind, "likelihood": scoring.likelihood,
               "embeddings": scoring.embeddings, "window": scoring.window,
               "overlap": scoring.overlap, "unit_tokens": scoring.unit_tokens,
               "strands": scoring.strands, "copy_k": scoring.copy_k,
               "tokenizer": model.tokenizer.get("family"),
               "adapter": model.extra.get("adapter")}
    if scoring.embeddings:
        options["layer"] = scoring.stored_layers()
    if scoring.skip_n_runs is not None:
        options["skip_n_runs"] = scoring.skip_n_runs
    if scoring.likelihood != "none":
        options["distributions"] = scoring.letter_dtype or "none"
    options.update({k: v for k, v in recorded_engine(scoring).items() if v != "float32"})
    return {k: v for k, v in options.items() if v is not None}
