"""seqatlas: per-position likelihoods and per-token embeddings of masked sequence language
models over whole proteomes and genomes, stored as a queryable Parquet atlas.

Heavy modules (torch, ray, transformers) load only when a function that needs them runs.
"""

from __future__ import annotations

from seqatlas._version import __version__ as __version__

__all__ = [
    "Atlas",
    "annotate",
    "build_index",
    "compact",
    "IngestConfig",
    "IngestReport",
    "SeqAtlasError",
    "demo",
    "export",
    "info",
    "ingest",
    "load_index",
    "log",
    "models",
    "adapters",
    "pool",
    "probe_doubling",
    "probe_icl",
    "repair",
    "score_variants",
    "update_index",
    "upgrade",
    "verify",
]

_LAZY = {
    "Atlas": ("seqatlas.atlas", "Atlas"),
    "annotate": ("seqatlas.repeats", "annotate"),
    "build_index": ("seqatlas.index.build", "build_index"),
    "load_index": ("seqatlas.index.store", "load_index"),
    "update_index": ("seqatlas.index.update", "update_index"),
    "IngestConfig": ("seqatlas.scoring.pipeline", "IngestConfig"),
    "IngestReport": ("seqatlas.scoring.pipeline", "IngestReport"),
    "SeqAtlasError": ("seqatlas.errors", "SeqAtlasError"),
    "demo": ("seqatlas.examples", "demo"),
    "info": ("seqatlas.atlas", "info"),
    "verify": ("seqatlas.atlas", "verify"),
    "repair": ("seqatlas.atlas", "repair"),
    "log": ("seqatlas.atlas", "log"),
    "compact": ("seqatlas.atlas", "compact"),
    "upgrade": ("seqatlas.atlas", "upgrade"),
    "pool": ("seqatlas.scoring.pooling", "pool"),
    "export": ("seqatlas.query.tracks", "export"),
    "probe_icl": ("seqatlas.probe.icl", "probe_icl"),
    "probe_doubling": ("seqatlas.probe.doubling", "probe_doubling"),
    "score_variants": ("seqatlas.variants.score", "score_variants"),
}


def ingest(fasta, *, atlas, **options):
    """Score FASTA file(s) into the atlas directory ``atlas``.

    Options are the fields of :class:`seqatlas.IngestConfig` (model, kind, likelihood,
    embeddings, layer, window, overlap, batch_tokens, unit_tokens, workers, ...).
    Re-running the same call skips committed work; a crashed run resumes where it stopped.
    Returns an :class:`seqatlas.IngestReport`.
    """
    from seqatlas.scoring import pipeline

    return pipeline.ingest(fasta, atlas=atlas, **options)


def models() -> list[dict]:
    """The embedded models (name, kinds, tokenizer family, parameters, alphabet, context).

    Any checkpoint an adapter reads works too (:func:`adapters`).
    """
    from seqatlas.checkpoints.loading import list_models

    return list_models()


def adapters() -> list[dict]:
    """The model adapters (transformers masked and causal LMs, fair-esm, ESM C, CARP, GPN and
    installed plugins): what each loads, whether it is installed, how to install it."""
    from seqatlas.checkpoints.loading import list_adapters

    return list_adapters()


def __getattr__(name: str):
    if name == "query":
        import importlib

        return importlib.import_module("seqatlas.query")
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'seqatlas' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
