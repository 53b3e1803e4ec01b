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
from seqatlas.util import MITOCHONDRION_ALIASES, chrom_name, file_sha256


ON_MISMATCH = ("error", "skip", "clip")


def _spellings(name: str) -> list[str]:
    """The other spellings of ``name`` that ``--names auto`` tries, in order."""
    forms = [chrom_name(name, "ensembl"), chrom_name(name, "ucsc")]
    if name in MITOCHONDRION_ALIASES:
        forms += MITOCHONDRION_ALIASES
    return [form for form in dict.fromkeys(forms) if form != name]


def _name_map(names: set[str], known: set[str], mode: str) -> dict[str, str]:
    """Map annotation sequence names onto atlas ids ('auto': chrX <-> X, chrM <-> MT)."""
    mapping = {}
    for name in names - known:
        if mode != "auto":
            continue
        for candidate in _spellings(name):
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


def check_within(table: pa.Table, lengths: dict[str, int], label: str,
                 advice: str = "was it made for another assembly?") -> None:
    """Refuse repeats that run past the end of their sequence."""
    names, index = _by_name(table)
    limit = np.array([lengths[s] for s in names], dtype=np.int64)[index]
    past = np.flatnonzero(table["end"].to_numpy() > limit)
    if len(past):
        row = table.slice(int(past[0]), 1).to_pylist()[0]
        raise InputError(f"{label}: repeat {row['seq_id']}:{row['start']}-{row['end']} runs "
                         f"past the end of the sequence ({lengths[row['seq_id']]:,} long)"
                         f"{f' ({len(past):,} such records)' if len(past) > 1 else ''}; "
                         f"{advice}")


def fit_to_atlas(table: pa.Table, lengths: dict[str, int],
                 mode: str) -> tuple[pa.Table, dict, str]:
    """``table`` without the records on sequences not in ``lengths`` and, by ``mode``:
    skip: without the records that run past the end of their sequence; clip: with those
    clipped to the sequence's length (and without the ones that start at or past it).

    Returns the table; the counts ``skipped_unknown_sequence``, ``skipped_past_end`` and
    ``clipped``; and the mode that names the result: "" when nothing was left out or
    clipped, "skip" when the two modes give the same rows (no record crosses an end),
    else ``mode``. The content key holds that name, so modes that give the same rows share
    a key and modes that do not never do.
    """
    names, index = _by_name(table)
    known = np.array([s in lengths for s in names], dtype=bool)[index]
    limit = np.array([lengths.get(s, 0) for s in names], dtype=np.int64)[index]
    start, end = table["start"].to_numpy(), table["end"].to_numpy()
    past = known & (end > limit)
    dropped = past if mode == "skip" else known & (start >= limit)
    keep = known & ~dropped
    clipped = keep & past
    crossing = bool((past & (start < limit)).any())
    counts = {"skipped_unknown_sequence": int((~known).sum()),
              "skipped_past_end": int(dropped.sum()), "clipped": int(clipped.sum())}
    if clipped.any():
        field = table.schema.field("end")
        table = table.set_column(table.schema.get_field_index("end"), field,
                                 pa.array(np.minimum(end, limit), type=field.type))
    if not keep.all():
        table = table.filter(pa.array(keep))
    outcome = "" if not any(counts.values()) else mode if crossing else "skip"
    return table, counts, outcome


def commit_repeats(atlas: str | Path, key: str, table: pa.Table, unit: dict) -> bool:
    """Commit ``table`` as the repeats unit ``key``; False when it was committed already."""
    with AtlasWriter(atlas) as writer:
        if key in writer.committed_units:
            return False
        writer.commit(key, {"repeats": table}, unit=unit)
    return True


def import_file(path: Path, *, atlas: str | Path, format: str | None, names: str,
                on_mismatch: str = "error", source: str | None = None) -> dict:
    """Import the repeat file ``path``; see :func:`seqatlas.repeats.annotate`. ``source``:
    what the user gave when ``path`` is a copy of a stream (``<stdin>``), recorded instead."""
    if names not in ("auto", "exact"):
        raise ConfigError(f"--names must be 'auto' or 'exact', not {names!r}")
    if on_mismatch not in ON_MISMATCH:
        raise ConfigError(f"--on-mismatch must be one of {', '.join(ON_MISMATCH)}, not "
                          f"{on_mismatch!r}")
    lengths = {r["seq_id"]: r["length"]
               for r in AtlasReader(atlas).sequences(columns=["seq_id", "length"]).to_pylist()}
    fmt = (format or detect_format(path)) if path.is_file() else format
    table = read_repeats(path, format=fmt)
    found = set(_by_name(table)[0])
    mapping = _name_map(found, set(lengths), names)
    if mapping:
        table = _renamed(table, mapping)
    unknown = sorted({mapping.get(s, s) for s in found} - set(lengths))
    if unknown and on_mismatch == "error":
        raise InputError(
            f"{path}: {len(unknown)} sequence name(s) are not in the atlas "
            f"({', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}); the atlas has "
            f"{', '.join(sorted(lengths)[:5])}{' ...' if len(lengths) > 5 else ''}. "
            "Rename them, use --names auto for chrX <-> X style differences, or "
            "--on-mismatch skip (or clip) to leave out the records on sequences the atlas "
            "does not have (a genome-wide file against a partial atlas).")
    if on_mismatch == "error":
        check_within(table, lengths, str(path), "was it made for another assembly? "
                     "--on-mismatch clip clips such records to the sequence, --on-mismatch "
                     "skip leaves them out.")
        counts, outcome = dict.fromkeys(("skipped_unknown_sequence", "skipped_past_end",
                                         "clipped"), 0), ""
    else:
        read = table.num_rows
        table, counts, outcome = fit_to_atlas(table, lengths, on_mismatch)
        if not table.num_rows:
            raise InputError(
                f"{path}: none of its {read:,} records lies within the atlas's sequences "
                f"({counts['skipped_unknown_sequence']:,} on sequences not in the atlas, "
                f"{counts['skipped_past_end']:,} past the end); the atlas has "
                f"{', '.join(sorted(lengths)[:5])}{' ...' if len(lengths) > 5 else ''}. "
                "Is it the file for this assembly? Nothing was imported.")
    digest = file_sha256(path)
    # the mode is part of the key when it changed the rows (see fit_to_atlas), so keys made
    # before --on-mismatch existed still name the same imports
    fit = f":on-mismatch={outcome}" if outcome else ""
    key = "repeats-" + hashlib.sha256(
        f"{digest}:{fmt}:{sorted(mapping.items())}{fit}".encode()).hexdigest()
    done = not commit_repeats(atlas, key, table,
                              {"repeats_file": source or str(path.resolve()), "format": fmt,
                               "sha256": digest, "renamed": mapping,
                               "on_mismatch": on_mismatch, **counts})
    return {"file": source or str(path), "format": fmt, "repeats": table.num_rows,
            "renamed": mapping, "already_imported": done, "on_mismatch": on_mismatch,
            **counts, "skipped_sequences": unknown if on_mismatch != "error" else []}
