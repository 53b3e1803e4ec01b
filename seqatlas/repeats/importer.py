"""Importing a repeat file into an atlas: sequence-name mapping, bounds checks, commit."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa

from seqatlas import schema
from seqatlas.errors import ConfigError, InputError
from seqatlas.repeats.formats import detect_format, read_repeats
from seqatlas.store import AtlasReader, AtlasWriter
from seqatlas.util import file_sha256


def _name_map(names: set[str], known: set[str], mode: str) -> dict[str, str]:
    """Map annotation sequence names onto atlas ids ('auto': chrX <-> X, chrM <-> MT)."""
    mapping = {}
    for name in names - known:
        if mode != "auto":
            continue
        candidates = [name[3:] if name.startswith("chr") else "chr" + name]
        candidates += {"chrM": ["MT"], "MT": ["chrM"], "M": ["MT", "chrM"]}.get(name, [])
        for candidate in candidates:
            if candidate in known:
                mapping[name] = candidate
                break
    return mapping


def _by_name(table: pa.Table) -> tuple[list[str], np.ndarray]:
    """The distinct ``seq_id`` of ``table``, and each row's index into them."""
    ids = table["seq_id"].combine_chunks().dictionary_encode()
    return ids.dictionary.to_pylist(), ids.indices.to_numpy(zero_copy_only=False)


def _renamed(table: pa.Table, mapping: dict[str, str]) -> pa.Table:
    """``table`` with its ``seq_id`` mapped through ``mapping``."""
    names, index = _by_name(table)
    seq_ids = pa.array([mapping.get(s, s) for s in names], pa.string()).take(pa.array(index))
    return table.set_column(0, schema.REPEATS.field("seq_id"), seq_ids)


def check_within(table: pa.Table, lengths: dict[str, int], label: str) -> None:
    """Refuse repeats that run past the end of their sequence."""
    names, index = _by_name(table)
    limit = np.array([lengths[s] for s in names], dtype=np.int64)[index]
    past = np.flatnonzero(table["end"].to_numpy() > limit)
    if len(past):
        row = table.slice(int(past[0]), 1).to_pylist()[0]
        raise InputError(f"{label}: repeat {row['seq_id']}:{row['start']}-{row['end']} runs "
                         f"past the end of the sequence ({lengths[row['seq_id']]:,} long); "
                         "was it made for another assembly?")


def commit_repeats(atlas: str | Path, key: str, table: pa.Table, unit: dict) -> bool:
    """Commit ``table`` as the repeats unit ``key``; False when it was committed already."""
    with AtlasWriter(atlas) as writer:
        if key in writer.committed_units:
            return False
        writer.commit(key, {"repeats": table}, unit=unit)
    return True


def import_file(path: Path, *, atlas: str | Path, format: str | None, names: str) -> dict:
    if names not in ("auto", "exact"):
        raise ConfigError(f"--names must be 'auto' or 'exact', not {names!r}")
    lengths = {r["seq_id"]: r["length"]
               for r in AtlasReader(atlas).sequences(columns=["seq_id", "length"]).to_pylist()}
    fmt = (format or detect_format(path)) if path.is_file() else format
    table = read_repeats(path, format=fmt)
    found = set(_by_name(table)[0])
    mapping = _name_map(found, set(lengths), names)
    if mapping:
        table = _renamed(table, mapping)
    unknown = sorted({mapping.get(s, s) for s in found} - set(lengths))
    if unknown:
        raise InputError(
            f"{path}: {len(unknown)} sequence name(s) are not in the atlas "
            f"({', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}); the atlas has "
            f"{', '.join(sorted(lengths)[:5])}{' ...' if len(lengths) > 5 else ''}. "
            "Rename them, or use --names auto for chrX <-> X style differences.")
    check_within(table, lengths, str(path))
    digest = file_sha256(path)
    key = "repeats-" + hashlib.sha256(f"{digest}:{fmt}:{sorted(mapping.items())}".encode()) \
        .hexdigest()
    done = not commit_repeats(atlas, key, table,
                              {"repeats_file": str(path.resolve()), "format": fmt,
                               "sha256": digest, "renamed": mapping})
    return {"file": str(path), "format": fmt, "repeats": table.num_rows,
            "renamed": mapping, "already_imported": done}
