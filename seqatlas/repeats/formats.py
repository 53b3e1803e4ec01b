"""Repeat-annotation importers: every common format to the ``repeats`` table.

All coordinates become 0-based half-open. Each malformed line raises :class:`InputError`
naming the file and the line. Formats: RepeatMasker ``.out``, UCSC ``rmsk`` and
``simpleRepeat`` tables, Tandem Repeats Finder ``.dat`` and ``-ngs``, tantan ``-f4`` and
``-f3``, BED3/BED6+ and GFF3 ``repeat_region``/``tandem_repeat`` features. Running tantan or
TRF on an atlas's own sequences is in :mod:`seqatlas.repeats.finders`.
"""

from __future__ import annotations

import io
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, TextIO

import pyarrow as pa

from seqatlas import schema
from seqatlas.errors import InputError
from seqatlas.fasta import _GZIP_ERRORS, open_text_stream

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
