"""Synthetic atlases with chosen per-token embeddings, written through AtlasWriter."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

from seqatlas import schema
from seqatlas.store import AtlasWriter


def _table(arrow_schema: pa.Schema, columns: dict) -> pa.Table:
    n = len(next(iter(columns.values())))
    arrays = [pa.array(columns[f.name], type=f.type) if f.name in columns
              else pa.nulls(n, type=f.type) for f in arrow_schema]
    return pa.Table.from_arrays(arrays, schema=arrow_schema)


def _vectors(matrix: np.ndarray) -> pa.Array:
    matrix = np.asarray(matrix, dtype=np.float16)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1), pa.float16()),
                                             matrix.shape[1])


def make_token_atlas(path: Path, sequences: dict[str, str],
                     embed: Callable[[int, list[str], np.ndarray], np.ndarray], *,
                     dim: int, k: int = 1, layers: tuple[int, ...] = (6,),
                     repeats: list[tuple] | None = None, parts_per_sequence: int = 1) -> Path:
    """An atlas whose tokens are the overlapping k-mers of each sequence (k=1: residues).

    ``embed(layer, token_texts, global_token_ids)`` gives each token's vector for a layer.
    logp at position p of a sequence is -(p % 7) / 10. ``repeats`` rows are
    (seq_id, start, end, class).
    """
    layers = list(layers)
    model = {"name": "synthetic", "source": "directory", "path": None, "model_type": "bert",
             "parameters": 0, "weights_sha256": "0" * 64, "hidden_size": dim,
             "num_layers": 6, "tokenizer": {"family": "single" if k == 1 else
                                            "overlapping_kmer"}}
    scoring = {"likelihood": "exact", "embeddings": True, "embedding_dtype": "float16",
               "layer": layers[0], "layers": layers, "strands": "forward", "window": 100,
               "overlap": 25}
    token_schema = schema.tokens_schema(dim, extra_layers=layers[1:])
    with AtlasWriter(path, kind="dna", model=model, scoring=scoring) as writer:
        start = 0
        for ordinal, (seq_id, residues) in enumerate(sequences.items()):
            n = len(residues)
            sequence = {"seq_id": [seq_id], "ordinal": [ordinal], "length": [n],
                        "description": [""], "source": ["synthetic"], "sha1": [""],
                        "global_start": [start], "token_offset": [start]}
            writer.commit(hashlib.sha256(b"s" + seq_id.encode()).hexdigest(),
                          {"sequences": _table(schema.SEQUENCES, sequence)})
            bounds = np.linspace(0, n, parts_per_sequence + 1).astype(int)
            for part, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
                pos = np.arange(lo, hi)
                positions = {"seq_id": [seq_id] * len(pos), "pos": pos,
                             "ref": list(residues[lo:hi]), "soft_masked": [False] * len(pos),
                             "logp": -(pos % 7) / 10.0}
                starts = np.arange(lo, min(hi, n - k + 1))
                texts = [residues[s : s + k] for s in starts]
                tokens = {"token_id": start + starts, "seq_id": [seq_id] * len(starts),
                          "start": starts, "end": starts + k, "token": texts}
                for layer in layers:
                    tokens[schema.layer_column(layers, layer)] = _vectors(
                        embed(layer, texts, start + starts))
                key = hashlib.sha256(f"{seq_id}:{part}".encode()).hexdigest()
                writer.commit(key, {"positions": _table(schema.POSITIONS, positions),
                                    "tokens": _table(token_schema, tokens)})
            start += n
        if repeats:
            rows = list(zip(*repeats))
            table = _table(schema.REPEATS, {
                "seq_id": rows[0], "start": rows[1], "end": rows[2], "strand": ["+"] * len(
                    repeats), "name": rows[3], "class": rows[3], "family": rows[3],
                "source": ["bed"] * len(repeats), "score": [None] * len(repeats)})
            writer.commit("r" * 24, {"repeats": table})
    return path


def random_dna(n: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    return "".join(rng.choice(list("ACGT"), size=n))


def one_hot(texts: list[str], vocabulary: list[str]) -> np.ndarray:
    out = np.zeros((len(texts), len(vocabulary)), dtype=np.float32)
    out[np.arange(len(texts)), [vocabulary.index(t) for t in texts]] = 1.0
    return out
