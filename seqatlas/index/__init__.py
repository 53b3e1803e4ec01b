"""FAISS indexes over an atlas's token embeddings (or its pooled rows): build (streamed,
sharded on Ray, GPU when present), checked loading and search (with the rows added since the
build searched exactly beside the index), and updates that fold those rows in. Ids are the
atlas ``token_id`` values (pooled: ``pool_id``).

The names below load on first use, so that reading an index (``seqatlas.index.store``, used
by queries) never loads the build machinery. Nothing imports ray unless a sharded build runs.
"""

from __future__ import annotations

import importlib

__all__ = ["IndexConfig", "LoadedIndex", "Plan", "build_index", "choose_index", "list_indexes",
           "load_index", "plan_index", "update_index"]

_HOME = {"IndexConfig": "build", "Plan": "build", "build_index": "build",
         "choose_index": "build", "plan_index": "build", "LoadedIndex": "store",
         "list_indexes": "store", "load_index": "store", "update_index": "update"}


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(f"seqatlas.index.{_HOME[name]}"), name)
    raise AttributeError(f"module 'seqatlas.index' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
