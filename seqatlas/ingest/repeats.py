"""Repeat-annotation importers: every common format to the ``repeats`` table.

All coordinates become 0-based half-open. Each malformed line raises :class:`InputError`
naming the file and the line. Formats: RepeatMasker ``.out``, UCSC ``rmsk`` and
``simpleRepeat`` tables, Tandem Repeats Finder ``.dat`` and ``-ngs``, tantan ``-f4`` and
``-f3``, BED3/BED6+ and GFF3 ``repeat_region``/``tandem_repeat`` features. Running tantan or
TRF on an atlas's own sequences is in :mod:`seqatlas.ingest.repeat_finders`.
"""

from __future__ import annotations

import io
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, TextIO

import numpy as np
import pyarrow as pa

from seqatlas import schema
from seqatlas.errors import ConfigError, InputError
from seqatlas.ingest.fasta import _GZIP_ERRORS, open_text_stream

Row = tuple  # (seq_id, start, end, strand, name, class, family, score)
FORMATS = ("repeatmasker", "ucsc-rmsk", "ucsc-simplerepeat", "trf-dat", "trf-ngs",
           "tantan-f4", "tantan-f3", "bed", "gff3")


class _Bad(Exception):
    """A line that does not parse; turned into an InputError with file and line."""


@contextmanager
def _open(path: Path) -> Iterator[TextIO]:
    """The file as text, gunzipped when compressed; a corrupt gzip stream is an InputError."""
    with io.TextIOWrapper(open_text_stream(path), encoding="utf-8", errors="replace") as fh:
        try:
            yield fh
        except _GZIP_ERRORS as exc:
            raise InputError(f"{path}: corrupt or truncated gzip file ({exc})") from None


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise _Bad(f"{what} {text!r} is not an integer") from None


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _interval(start: int, end: int) -> tuple[int, int]:
    if start < 0 or end < start:
        raise _Bad(f"interval [{start}, {end}) is empty or negative")
    return start, end


def _repeatmasker(lines) -> Iterator[tuple[int, Row | None]]:
    for number, line in lines:
        fields = line.split()
        if not fields or fields[0] in ("SW", "score") or not fields[0][0].isdigit():
            yield number, None  # the three header lines, blank lines
            continue
        if len(fields) < 14:
            raise _Bad(f"expected at least 14 columns, found {len(fields)}")
        start, end = _interval(_int(fields[5], "begin") - 1, _int(fields[6], "end"))
        strand = "-" if fields[8] == "C" else "+"
        repeat_class, _, family = fields[10].partition("/")
        yield number, (fields[4], start, end, strand, fields[9], repeat_class, family or None,
                       _float(fields[0]))


def _ucsc_rmsk(lines) -> Iterator[tuple[int, Row | None]]:
    for number, line in lines:
        if line.startswith("#") or not line.strip():
            yield number, None
            continue
        f = line.rstrip("\n").split("\t")
        if len(f) < 13:
            raise _Bad(f"expected 17 tab-separated columns, found {len(f)}")
        start, end = _interval(_int(f[6], "genoStart"), _int(f[7], "genoEnd"))
        yield number, (f[5], start, end, f[9] if f[9] in ("+", "-") else None, f[10], f[11],
                       f[12] if f[12] != f[11] else None, _float(f[1]))


def _ucsc_simple(lines) -> Iterator[tuple[int, Row | None]]:
    for number, line in lines:
        if line.startswith("#") or not line.strip():
            yield number, None
            continue
        f = line.rstrip("\n").split("\t")
        if len(f) < 17:
            raise _Bad(f"expected 17 tab-separated columns, found {len(f)}")
        start, end = _interval(_int(f[2], "chromStart"), _int(f[3], "chromEnd"))
        yield number, (f[1], start, end, None, f[16], "Simple_repeat",
                       f"period_{f[5]}", _float(f[10]))


def _trf(lines, *, ngs: bool) -> Iterator[tuple[int, Row | None]]:
    seq_id = None
    marker = "@" if ngs else "Sequence:"
    for number, line in lines:
        stripped = line.strip()
        if stripped.startswith(marker):
            words = stripped[len(marker):].split()
            if not words:
                raise _Bad("sequence header without a name")
            seq_id = words[0]
            yield number, None
            continue
        fields = stripped.split()
        if len(fields) < 14 or not fields[0].isdigit() or not fields[1].isdigit():
            yield number, None  # TRF's preamble and parameter lines
            continue
        if seq_id is None:
            raise _Bad(f"repeat before any {marker!r} line")
        start, end = _interval(_int(fields[0], "start") - 1, _int(fields[1], "end"))
        yield number, (seq_id, start, end, None, fields[13], "Tandem_repeat",
                       f"period_{fields[2]}", _float(fields[7]))


def _tantan(lines) -> Iterator[tuple[int, Row | None]]:
    for number, line in lines:
        if not line.strip() or line.startswith("#"):
            yield number, None
            continue
        f = line.rstrip("\n").split("\t")
        if len(f) < 6:
            raise _Bad(f"expected tantan -f4 columns (name start end period copies unit ...), "
                       f"found {len(f)}")
        start, end = _interval(_int(f[1], "start"), _int(f[2], "end"))
        # tantan reports no score; the copy number is not one
        yield number, (f[0], start, end, None, f[5], "Tandem_repeat", f"period_{f[3]}", None)


def _tantan_f3(lines) -> Iterator[tuple[int, Row | None]]:
    """tantan -f3: the masked regions as BED3 (name, start, end); no period or unit."""
    for number, line in lines:
        if not line.strip() or line.startswith("#"):
            yield number, None
            continue
        f = line.rstrip("\r\n").split("\t")
        if len(f) != 3:
            hint = "; this looks like tantan -f4 output: use --format tantan-f4" \
                if len(f) >= 6 else ""
            raise _Bad(f"expected the 3 tab-separated columns of tantan -f3 (name start end), "
                       f"found {len(f)}{hint}")
        start, end = _interval(_int(f[1], "start"), _int(f[2], "end"))
        yield number, (f[0], start, end, None, None, "Tandem_repeat", None, None)


def _bed(lines) -> Iterator[tuple[int, Row | None]]:
    for number, line in lines:
        if not line.strip() or line.startswith(("#", "track", "browser")):
            yield number, None
            continue
        f = line.rstrip("\n").split("\t")
        if len(f) < 3:
            raise _Bad(f"a BED line needs at least 3 tab-separated columns, found {len(f)}")
        start, end = _interval(_int(f[1], "start"), _int(f[2], "end"))
        name = f[3] if len(f) > 3 and f[3] not in ("", ".") else None
        score = _float(f[4]) if len(f) > 4 else None
        strand = f[5] if len(f) > 5 and f[5] in ("+", "-") else None
        yield number, (f[0], start, end, strand, name, None, None, score)


def _gff3(lines) -> Iterator[tuple[int, Row | None]]:
    for number, line in lines:
        if line.startswith("##FASTA"):
            return  # the rest of the file is the sequences (as in Prokka's output)
        if not line.strip() or line.startswith("#"):
            yield number, None
            continue
        f = line.rstrip("\n").split("\t")
        if len(f) != 9:
            raise _Bad(f"a GFF3 line has 9 tab-separated columns, found {len(f)}")
        if f[2] not in ("repeat_region", "tandem_repeat", "dispersed_repeat",
                        "microsatellite", "inverted_repeat"):
            yield number, None
            continue
        attributes = dict(a.split("=", 1) for a in f[8].split(";") if "=" in a)
        start, end = _interval(_int(f[3], "start") - 1, _int(f[4], "end"))
        name = attributes.get("Name") or attributes.get("rpt_unit_seq") or attributes.get("ID")
        yield number, (f[0], start, end, f[6] if f[6] in ("+", "-") else None, name,
                       attributes.get("rpt_type", f[2]), attributes.get("rpt_family"),
                       _float(f[5]))


_PARSERS: dict[str, Callable] = {
    "repeatmasker": _repeatmasker,
    "ucsc-rmsk": _ucsc_rmsk,
    "ucsc-simplerepeat": _ucsc_simple,
    "trf-dat": lambda lines: _trf(lines, ngs=False),
    "trf-ngs": lambda lines: _trf(lines, ngs=True),
    "tantan-f4": _tantan,
    "tantan-f3": _tantan_f3,
    "bed": _bed,
    "gff3": _gff3,
}


def detect_format(path: str | Path) -> str:
    """The format of a repeat annotation file, from its first non-blank lines."""
    path = Path(path)
    with _open(path) as fh:
        head = [line for line in (fh.readline() for _ in range(40)) if line.strip()
                and not line.startswith(("track", "browser"))]
    if not head:
        raise InputError(f"{path}: empty repeat annotation file")
    first = head[0]
    fields = first.rstrip("\n").split("\t")
    if first.startswith("##gff-version"):
        return "gff3"
    if first.lstrip().startswith(("SW", "score")) and "perc" in first + "".join(head[1:2]):
        return "repeatmasker"
    if first.startswith("@"):
        return "trf-ngs"
    if any(line.startswith("Sequence:") for line in head) or first.startswith("Tandem Repeats"):
        return "trf-dat"
    if len(fields) >= 17 and fields[0].isdigit():
        if fields[6].isdigit() and fields[9] in ("+", "-"):
            return "ucsc-rmsk"
        if fields[2].isdigit() and fields[3].isdigit():
            return "ucsc-simplerepeat"
    # tantan -f4: name start end period copies unit (DNA or protein letters) [copies]
    if len(fields) >= 6 and all(x.isdigit() for x in fields[1:4]) and \
            _float(fields[4]) is not None and fields[5].isalpha():
        return "tantan-f4"
    if len(fields) >= 3 and fields[1].isdigit() and fields[2].isdigit():
        # tantan -f3 output is plain BED3: only the file name can tell them apart
        if len(fields) == 3 and "tantan" in path.name.lower():
            return "tantan-f3"
        return "bed"
    raise InputError(f"{path}: cannot tell the repeat annotation format; pass --format "
                     f"({', '.join(FORMATS)})")


def parse_repeats(lines: Iterable[str], *, format: str, label: str, source: str | None = None,
                  rename: dict[str, str] | None = None) -> pa.Table:
    """Parse annotation lines (a file, a program's stdout) into the ``repeats`` table.

    Errors name ``label`` and the line; ``source`` fills the source column (default: the
    format); ``rename`` maps sequence names.
    """
    if format not in _PARSERS:
        raise InputError(f"unknown repeat format {format!r}; choose one of {', '.join(FORMATS)}")
    columns: dict[str, list] = {name: [] for name in schema.REPEATS.names}
    rows = _PARSERS[format](enumerate(lines, start=1))
    rename, source = rename or {}, source or format
    number = 0
    try:
        for number, row in rows:
            if row is None:
                continue
            seq_id, start, end, strand, name, repeat_class, family, score = row
            columns["seq_id"].append(rename.get(seq_id, seq_id))
            columns["start"].append(start)
            columns["end"].append(end)
            columns["strand"].append(strand)
            columns["name"].append(name)
            columns["class"].append(repeat_class)
            columns["family"].append(family)
            columns["source"].append(source)
            columns["score"].append(score)
    except _Bad as exc:
        raise InputError(f"{label}, line {number + 1}: {exc} (format {format})") from None
    return pa.Table.from_pydict(columns, schema=schema.REPEATS)


def read_repeats(path: str | Path, *, format: str | None = None,
                 rename: dict[str, str] | None = None) -> pa.Table:
    """Parse a repeat annotation file into the ``repeats`` table (0-based half-open)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    fmt = format or detect_format(path)
    with _open(path) as fh:
        return parse_repeats(fh, format=fmt, label=str(path), rename=rename)


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
    from seqatlas.atlas import AtlasWriter

    with AtlasWriter(atlas) as writer:
        if key in writer.committed_units:
            return False
        writer.commit(key, {"repeats": table}, unit=unit)
    return True


def annotate(path: str | Path | None = None, *, atlas: str | Path, format: str | None = None,
             names: str = "auto", run: str | None = None, run_args: str | None = None,
             progress: bool = True, detect: bool = False) -> dict:
    """Import repeats into an atlas's ``repeats`` table, from a file or by running a finder.

    Exactly one of ``path`` (a repeat annotation file), ``run`` ("tantan" or "trf", run on
    the atlas's own sequences with ``run_args`` replacing its default parameters; see
    :func:`seqatlas.ingest.repeat_finders.run_repeat_finder`) and ``detect=True`` (the
    in-context copies found at ingest; :func:`seqatlas.ingest.copies.annotate_copies`). File sequence names must match
    the atlas's ids; ``names="auto"`` also maps ``chrX`` <-> ``X`` and ``chrM`` <-> ``MT``.
    Importing the same file or run again is a no-op. Returns a summary.
    """
    sources = [flag for flag, value in (("FILE", path), ("--run", run),
                                        ("--detect", detect or None)) if value is not None]
    if len(sources) != 1:
        raise ConfigError("give exactly one source of repeats: a FILE to import, --run "
                          "tantan|trf to find them, or --detect for the in-context copies "
                          f"found at ingest (got {' and '.join(sources) or 'none'})")
    if detect:
        from seqatlas.ingest.copies import annotate_copies

        return annotate_copies(atlas)
    if run is not None:
        if format is not None:
            raise ConfigError("--format describes a FILE; with --run seqatlas reads the "
                              "program's own output")
        from seqatlas.ingest.repeat_finders import run_repeat_finder

        return run_repeat_finder(atlas, run, args=run_args, progress=progress)
    if run_args is not None:
        raise ConfigError("--run-args goes with --run (tantan or trf)")
    return _import_file(Path(path), atlas=atlas, format=format, names=names)


def _import_file(path: Path, *, atlas: str | Path, format: str | None, names: str) -> dict:
    import hashlib

    from seqatlas.atlas import Atlas
    from seqatlas.ingest.plan import file_sha256

    if names not in ("auto", "exact"):
        raise ConfigError(f"--names must be 'auto' or 'exact', not {names!r}")
    lengths = {r["seq_id"]: r["length"]
               for r in Atlas(atlas).sequences(columns=["seq_id", "length"]).to_pylist()}
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
