"""Model checkpoints: the adapter protocol, resolving checkpoints, loading them for scoring."""

from seqatlas.checkpoints.loading import EMBEDDED_MODELS, ModelSpec, load_model, resolve_model

__all__ = ["EMBEDDED_MODELS", "ModelSpec", "load_model", "resolve_model"]
