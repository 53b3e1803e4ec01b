"""Model checkpoints: resolving them, their tokenizer families, loading them for scoring."""

from seqatlas.checkpoints.loading import EMBEDDED_MODELS, LoadedModel, ModelSpec, resolve_model

__all__ = ["EMBEDDED_MODELS", "LoadedModel", "ModelSpec", "resolve_model"]
