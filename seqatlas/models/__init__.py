"""Model adapters: resolving checkpoints, tokenizer families, loading for scoring."""

from seqatlas.models.loading import EMBEDDED_MODELS, LoadedModel, ModelSpec, resolve_model

__all__ = ["EMBEDDED_MODELS", "LoadedModel", "ModelSpec", "resolve_model"]
