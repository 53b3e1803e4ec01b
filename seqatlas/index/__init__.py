"""FAISS indexes over an atlas's token embeddings: build (streamed, sharded on Ray, GPU when
present), checked loading and search. Ids are the atlas ``token_id`` values.

Nothing here imports ray unless a sharded build runs.
"""

from __future__ import annotations

from seqatlas.index.build import IndexConfig, Plan, build_index, choose_index, plan_index
from seqatlas.index.store import LoadedIndex, list_indexes, load_index

__all__ = ["IndexConfig", "LoadedIndex", "Plan", "build_index", "choose_index", "list_indexes",
           "load_index", "plan_index"]
