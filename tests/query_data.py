"""Synthetic atlases with chosen scores and repeats, written through AtlasWriter."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa

from seqatlas import schema
from seqatlas.store import AtlasWriter

MODEL = {"name": "synthetic", "model_type": "bert", "parameters": 0, "weights_sha256": "0" * 64,
         "tokenizer": {"family": "single"}, "hidden_size": 8}


def _table(arrow_schema: pa.Schema, columns: dict) -> pa.Table:
    n = len(next(iter(columns.values())))
    arrays = [pa.array(columns[f.name], type=f.type) if f.name in columns
              else pa.nulls(n, type=f.type) for f in arrow_schema]
    return pa.Table.from_arrays(arrays, schema=arrow_schema)


def make_atlas(path: Path, sequences: dict[str, str], scores: dict[str, np.ndarray], *,
               likelihood: str = "exact", repeats: list[tuple] | None = None,
               copies: dict[str, np.ndarray] | None = None) -> Path:
    """One positions part per sequence; ``scores`` go into logp (or logp_unmasked).

    ``repeats`` rows are (seq_id, start, end, name, class, family); ``copies`` gives a
    copy offset per position (0: no copy) for atlases with the copy columns.
    """
    scoring = {"likelihood": likelihood, "embeddings": False, "strands": "forward",
               "window": 100, "overlap": 25, "embedding_dtype": None, "layer": None}
    column = "logp" if likelihood in ("exact", "fast") else "logp_unmasked"
    with AtlasWriter(path, kind="dna", model=MODEL, scoring=scoring) as writer:
        start = 0
        for ordinal, (seq_id, residues) in enumerate(sequences.items()):
            n = len(residues)
            values = np.asarray(scores[seq_id], dtype=np.float32)
            positions = {"seq_id": [seq_id] * n, "pos": np.arange(n), "ref": list(residues),
                         "soft_masked": [False] * n,
                         column: [None if np.isnan(v) else float(v) for v in values]}
            if copies is not None and "copy_offset" in schema.POSITIONS.names:
                offsets = copies[seq_id]
                positions["copy_offset"] = [int(o) if o else None for o in offsets]
                positions["copy_strand"] = ["+" if o > 0 else "-" if o < 0 else None
                                            for o in offsets]
            sequence = {"seq_id": [seq_id], "ordinal": [ordinal], "length": [n],
                        "description": [""], "source": ["synthetic"], "sha1": [""],
                        "global_start": [start], "token_offset": [start]}
            key = hashlib.sha256(seq_id.encode()).hexdigest()
            writer.commit(key, {"sequences": _table(schema.SEQUENCES, sequence),
                                              "positions": _table(schema.POSITIONS, positions)})
            start += n
        if repeats:
            rows = list(zip(*repeats))
            table = _table(schema.REPEATS, {
                "seq_id": rows[0], "start": rows[1], "end": rows[2], "strand": ["+"] * len(
                    repeats), "name": rows[3], "class": rows[4], "family": rows[5],
                "source": ["bed"] * len(repeats), "score": [None] * len(repeats)})
            writer.commit("r" * 24, {"repeats": table})
    return path


def add_ablations(path: Path, rows: list[dict]) -> Path:
    """Commit one ablations part holding ``rows`` (dicts of schema.ABLATIONS columns; a column
    left out is null, except that icl_gain, control_gain and net_gain default to the
    differences of the logp columns, computed in float32 as they are stored)."""
    f32 = np.float32
    filled = []
    for row in rows:
        row = dict(row)
        intact, partner, control = (row.get(k) for k in ("logp_intact", "logp_partner",
                                                          "logp_control"))
        if "icl_gain" not in row and intact is not None and partner is not None:
            row["icl_gain"] = float(f32(intact) - f32(partner))
        if "control_gain" not in row and intact is not None and control is not None:
            row["control_gain"] = float(f32(intact) - f32(control))
        if "net_gain" not in row and row.get("icl_gain") is not None \
                and row.get("control_gain") is not None:
            row["net_gain"] = float(f32(row["icl_gain"]) - f32(row["control_gain"]))
        filled.append(row)
    columns = {f.name: [r.get(f.name) for r in filled] for f in schema.ABLATIONS}
    key = "ablations-" + hashlib.sha256(repr(filled).encode()).hexdigest()
    with AtlasWriter(path) as writer:
        writer.commit(key, {"ablations": _table(schema.ABLATIONS, columns)})
    return path


def doubling_table() -> pa.Table:
    """A ``probe doubling`` table (schema.DOUBLING): 3 sequences x (original, shuffled), the
    gains derived from the logp columns as the probe derives them."""
    rows = [{"seq_id": f"p{i}", "variant": v, "length": 50, "method": "mask", "seed": 0,
             "logp_alone": -100.0, "logp_doubled": -80.0 - i - (v == "shuffled"),
             "logp_partner": -90.0, "logp_control_intact": -95.0, "logp_control": -99.0 + i,
             "scored_copy": 1}
            for i in range(3) for v in ("original", "shuffled")]
    for row in rows:
        row["icl_gain"] = row["logp_doubled"] - row["logp_partner"]
        row["control_gain"] = row["logp_control_intact"] - row["logp_control"]
        row["net_gain"] = row["icl_gain"] - row["control_gain"]
        row["doubling_gain"] = row["logp_doubled"] - row["logp_alone"]
    return pa.Table.from_pylist(rows, schema=schema.DOUBLING)
