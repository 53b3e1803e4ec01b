"""FAISS indexes over an atlas's token embeddings: build (streamed, sharded on Ray, GPU when
present), checked loading and search. Ids are the atlas ``token_id`` values.

The names below load on first use, so that reading an index (``seqatlas.index.store``, used
by queries) never loads the build machinery. Nothing imports ray unless a sharded build runs.
"""

from __future__ import annotations

import importlib

__all__ = ["IndexConfig", "LoadedIndex", "Plan", "build_index", "choose_index", "list_indexes",
           "load_index", "plan_index"]

_HOME = {"IndexConfig": "build", "Plan": "build", "build_index": "build",
         "choose_index": "build", "plan_index": "build", "LoadedIndex": "store",
         "list_indexes": "store", "load_index": "store"}


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(f"seqatlas.index.{_HOME[name]}"), name)
    raise AttributeError(f"module 'seqatlas.index' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
