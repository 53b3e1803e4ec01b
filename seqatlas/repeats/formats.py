"""Repeat-annotation importers: every common format to the ``repeats`` table.

All coordinates become 0-based half-open. Each malformed line raises :class:`InputError`
naming the file and the line. Formats: RepeatMasker ``.out``, UCSC ``rmsk`` and
``simpleRepeat`` tables, Tandem Repeats Finder ``.dat`` and ``-ngs``, tantan ``-f4`` and
``-f3``, BED3/BED6+ and GFF3 ``repeat_region``/``tandem_repeat`` features. Running tantan or
TRF on an atlas's own sequences is in :mod:`seqatlas.repeats.finders`.

How a line is checked, in three layers shared by every format:

* :func:`_decoded` turns each raw line into text: strict UTF-8 (a UTF-8 byte order mark is
  allowed at the start of the file), the ``\\n`` or ``\\r\\n`` ending removed, no control
  character other than tab, no line over :data:`MAX_LINE_BYTES`.
* each format's parser checks its own columns: the exact column count where the format fixes
  it, whole numbers (ASCII digits, nothing else) for coordinates and counts, finite numbers for
  scores, the format's strand alphabet; then converts to 0-based half-open.
* :func:`_checked_row` checks every row of every format the same way before it is stored:
  ``0 <= start < end < 2**62`` (tantan ``-f4`` alone may report a zero-length repeat),
  a non-empty sequence name without whitespace, strand ``+``, ``-`` or null, a finite score,
  no control characters in any text.
"""

from __future__ import annotations

import math
import re
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator
from urllib.parse import unquote

import pyarrow as pa

from seqatlas import schema
from seqatlas.errors import InputError
from seqatlas.fasta import _GZIP_ERRORS, open_text_stream

Row = tuple  # (seq_id, start, end, strand, name, class, family, score)
FORMATS = ("repeatmasker", "ucsc-rmsk", "ucsc-simplerepeat", "trf-dat", "trf-ngs",
           "tantan-f4", "tantan-f3", "bed", "gff3")

MAX_COORD = 2 ** 62  # every end is below this (int64 with room to add lengths)
MAX_LINE_BYTES = 256 * 2 ** 20  # TRF and tantan lines hold the repeat itself: megabases
EMPTY_INTERVAL_OK = frozenset({"tantan-f4"})  # tantan -f4 may report a zero-length repeat
ONE_BASED = frozenset({"repeatmasker", "trf-dat", "trf-ngs", "gff3"})  # 1-based inclusive


class _Bad(Exception):
    """A line that does not parse; turned into an InputError with file and line."""


class _Where:
    """The number of the line being read, for the error message."""

    number = 0


# ---------------------------------------------------------------------------------------------
# lines


_LINE_BAD = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\ufeff\ud800-\udfff]")
_TEXT_BAD = re.compile("[\x00-\x1f\x7f-\x9f\ufeff\ud800-\udfff]")


def _describe_char(char: str) -> str:
    if char == "\r":
        return "a carriage return (CR) inside the line (old Mac line endings?)"
    if char == "\x00":
        return "a NUL byte (is this a binary file?)"
    if char == "\ufeff":
        return "a byte order mark (U+FEFF) after the start of the file (concatenated files?)"
    if "\ud800" <= char <= "\udfff":
        return f"an unpaired surrogate U+{ord(char):04X} (not valid text)"
    return f"the control character U+{ord(char):04X}"


def _decoded(lines: Iterable[str | bytes], where: _Where) -> Iterator[tuple[int, str]]:
    """(line number, text without its line ending); a line that is not clean UTF-8 is _Bad."""
    for number, line in enumerate(lines, start=1):
        where.number = number
        if isinstance(line, bytes):
            if len(line) - line.endswith(b"\n") > MAX_LINE_BYTES:
                raise _Bad(f"line longer than {MAX_LINE_BYTES:,} bytes; is this a repeat "
                           "annotation file?")
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _Bad(f"not UTF-8 text: byte {line[exc.start]:#04x} at column "
                           f"{exc.start + 1} ({exc.reason}); the file must be UTF-8 or ASCII"
                           ) from None
        if line.endswith("\n"):
            line = line[:-1]
        if line.endswith("\r"):
            line = line[:-1]
        if number == 1 and line.startswith("\ufeff"):
            line = line[1:]  # a UTF-8 byte order mark
        bad = _LINE_BAD.search(line)
        if bad:
            raise _Bad(f"{_describe_char(bad.group())} at column {bad.start() + 1}")
        yield number, line


def _byte_lines(stream: IO[bytes]) -> Iterator[bytes]:
    """The stream's lines, each cut at MAX_LINE_BYTES + 1 (so _decoded sees it is too long)."""
    while True:
        line = stream.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        yield line
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            return  # _decoded has refused it


@contextmanager
def _open(path: Path) -> Iterator[IO[bytes]]:
    """The file's bytes, gunzipped when compressed; a corrupt gzip stream is an InputError."""
    try:
        stream = open_text_stream(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    with stream:
        try:
            yield stream
        except _GZIP_ERRORS as exc:
            raise InputError(f"{path}: corrupt or truncated gzip file ({exc})") from None
        except OSError as exc:
            raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None


_SPACES = re.compile(r"[ \t]+")


def _words(line: str) -> list[str]:
    """The line split on runs of spaces and tabs (only those: never other Unicode spaces)."""
    line = line.strip(" \t")
    return _SPACES.split(line) if line else []


def _tabs(line: str, expected: str) -> list[str]:
    fields = line.split("\t")
    if len(fields) == 1 and " " in line.strip(" "):
        raise _Bad(f"expected {expected}; this line has no tab: its columns must be separated "
                   "by tabs, not spaces")
    return fields


# ---------------------------------------------------------------------------------------------
# fields


_UNSIGNED = re.compile(r"[0-9]+")
_SIGNED = re.compile(r"-?[0-9]+")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _int(text: str, what: str, *, signed: bool = False, limit: int = 2 ** 63) -> int:
    """A whole number in ASCII digits (a leading '-' when ``signed``), below ``limit``."""
    if not (_SIGNED if signed else _UNSIGNED).fullmatch(text):
        if not signed and _SIGNED.fullmatch(text):
            raise _Bad(f"{what} {text} is negative")
        raise _Bad(f"{what} {text!r} is not a whole number")
    if len(text.lstrip("-0")) > 19 or abs(int(text)) >= limit:
        raise _Bad(f"{what} {text} is out of range (at most {limit - 1:,})")
    return int(text)


def _coord(text: str, what: str) -> int:
    """A coordinate: a whole number from 0 to MAX_COORD - 1."""
    return _int(text, what, limit=MAX_COORD)


def _count(text: str, what: str) -> int:
    """A positive whole number (a period, a unit size)."""
    value = _int(text, what)
    if value < 1:
        raise _Bad(f"{what} {text} must be at least 1")
    return value


def _number(text: str, what: str, *, missing: tuple[str, ...] = ()) -> float | None:
    """A finite decimal number (None for the spellings in ``missing``); never nan or inf."""
    if text in missing:
        return None
    if not _NUMBER.fullmatch(text):
        none = f" or {' '.join(repr(m) for m in missing)} for none" if missing else ""
        raise _Bad(f"{what} {text!r} is not a number{none}")
    value = float(text)
    if not math.isfinite(value):
        raise _Bad(f"{what} {text} is out of range")
    return value


def _strand(text: str, alphabet: dict[str, str | None], what: str = "strand") -> str | None:
    if text not in alphabet:
        raise _Bad(f"{what} {text!r} is not one of {', '.join(repr(a) for a in alphabet)}")
    return alphabet[text]


def _match(pattern: re.Pattern, text: str, what: str) -> None:
    if not pattern.fullmatch(text):
        raise _Bad(f"{what} {text!r} is malformed")


def _checked_row(row: Row, fmt: str) -> Row:
    """The rules every row of every format obeys, the row normalised (empty text -> None)."""
    seq_id, start, end, strand, name, repeat_class, family, score = row
    if not isinstance(seq_id, str) or not seq_id:
        raise _Bad("empty sequence name")
    if any(c.isspace() for c in seq_id):
        raise _Bad(f"sequence name {seq_id!r} contains whitespace")
    texts = []
    for what, text in (("sequence name", seq_id), ("name", name), ("class", repeat_class),
                       ("family", family)):
        if text is not None:
            if not isinstance(text, str):
                raise _Bad(f"{what} {text!r} is not text")
            bad = _TEXT_BAD.search(text)
            if bad:
                raise _Bad(f"{what} {text!r} contains {_describe_char(bad.group())}")
        texts.append(text or None)
    if type(start) is not int or type(end) is not int:
        raise _Bad(f"coordinates {start!r}, {end!r} are not whole numbers")
    if start < 0:
        raise _Bad("start 0: this format's coordinates start at 1" if fmt in ONE_BASED
                   else f"start {start} is negative")
    if end >= MAX_COORD:
        raise _Bad(f"end {end} is out of range (coordinates must be below 2**62)")
    if end < start or (end == start and fmt not in EMPTY_INTERVAL_OK):
        if fmt in ONE_BASED:  # the file's own numbers, 1-based inclusive
            raise _Bad(f"start {start + 1} is after end {end}")
        raise _Bad(f"interval [{start}, {end}) is "
                   f"{'empty: start equals end' if end == start else 'reversed: start after end'}"
                   " (0-based, half-open)")
    if strand not in ("+", "-", None):
        raise _Bad(f"strand {strand!r} is not '+', '-' or none")
    if score is not None:
        if isinstance(score, bool) or not isinstance(score, (int, float)) or \
                not math.isfinite(score):
            raise _Bad(f"score {score!r} is not a finite number")
        score = float(score)
    return (texts[0], start, end, strand, texts[1], texts[2], texts[3], score)


# ---------------------------------------------------------------------------------------------
# the formats: each parser takes (number, line) pairs and yields (number, row or None)


_RM_LEFT = re.compile(r"\([0-9]+\);?")  # some copies of .out files add a ';'
_RM_REPEAT_POS = re.compile(r"\(?-?[0-9]+\)?")


def _repeatmasker(lines) -> Iterator[tuple[int, Row | None]]:
    """RepeatMasker ``.out``: 15 columns separated by spaces, a 16th '*' when a higher-scoring
    match overlaps; 1-based inclusive; strand '+' or 'C'."""
    for number, line in lines:
        fields = _words(line)
        if not fields or (fields[0] == "SW" and "perc" in fields) or \
                (fields[0] == "score" and "div." in fields) or \
                line.startswith("There were no repetitive sequences detected"):
            yield number, None  # the header lines, blank lines, the empty result
            continue
        if len(fields) not in (15, 16):
            raise _Bad(f"a RepeatMasker .out line has 15 columns (16 with the overlap mark "
                       f"'*'), found {len(fields)}")
        if len(fields) == 16 and fields[15] != "*":
            raise _Bad(f"the 16th column can only be the overlap mark '*', not {fields[15]!r}")
        score = _number(fields[0], "SW score")
        for i, what in ((1, "perc div."), (2, "perc del."), (3, "perc ins.")):
            _number(fields[i], what)
        begin, end = _coord(fields[5], "begin"), _coord(fields[6], "end")
        _match(_RM_LEFT, fields[7], "query (left)")
        strand = _strand(fields[8], {"+": "+", "C": "-"})
        for i, what in ((11, "repeat begin"), (12, "repeat end"), (13, "repeat (left)")):
            _match(_RM_REPEAT_POS, fields[i], what)
        _int(fields[14], "ID")
        repeat_class, _, family = fields[10].partition("/")
        yield number, (fields[4], begin - 1, end, strand, fields[9], repeat_class, family,
                       score)


def _ucsc_rmsk(lines) -> Iterator[tuple[int, Row | None]]:
    """UCSC ``rmsk``: 17 tab-separated columns, bin first; 0-based half-open."""
    for number, line in lines:
        if line.startswith("#") or not line.strip():
            yield number, None
            continue
        f = _tabs(line, "17 tab-separated columns")
        if len(f) != 17:
            raise _Bad(f"a UCSC rmsk line has 17 tab-separated columns (bin swScore milliDiv "
                       f"milliDel milliIns genoName genoStart genoEnd genoLeft strand repName "
                       f"repClass repFamily repStart repEnd repLeft id), found {len(f)}")
        _int(f[0], "bin")
        score = _number(f[1], "swScore")
        for i, what in ((2, "milliDiv"), (3, "milliDel"), (4, "milliIns")):
            _int(f[i], what)
        start, end = _coord(f[6], "genoStart"), _coord(f[7], "genoEnd")
        _int(f[8], "genoLeft", signed=True)
        strand = _strand(f[9], {"+": "+", "-": "-"})
        for i, what in ((13, "repStart"), (14, "repEnd"), (15, "repLeft")):
            _int(f[i], what, signed=True)
        _int(f[16], "id")
        yield number, (f[5], start, end, strand, f[10], f[11],
                       f[12] if f[12] != f[11] else None, score)


def _ucsc_simple(lines) -> Iterator[tuple[int, Row | None]]:
    """UCSC ``simpleRepeat``: 17 tab-separated columns, bin first; 0-based half-open."""
    for number, line in lines:
        if line.startswith("#") or not line.strip():
            yield number, None
            continue
        f = _tabs(line, "17 tab-separated columns")
        if len(f) != 17:
            raise _Bad(f"a UCSC simpleRepeat line has 17 tab-separated columns (bin chrom "
                       f"chromStart chromEnd name period copyNum consensusSize perMatch "
                       f"perIndel score A C G T entropy sequence), found {len(f)}")
        _int(f[0], "bin")
        start, end = _coord(f[2], "chromStart"), _coord(f[3], "chromEnd")
        period = _count(f[5], "period")
        _number(f[6], "copyNum")
        _int(f[7], "consensusSize")
        _number(f[8], "perMatch")
        _number(f[9], "perIndel")
        score = _number(f[10], "score")
        for i, base in zip(range(11, 15), "ACGT"):
            _int(f[i], base)
        _number(f[15], "entropy")
        yield number, (f[1], start, end, None, f[16], "Simple_repeat", f"period_{period}",
                       score)


def _trf(lines, *, ngs: bool) -> Iterator[tuple[int, Row | None]]:
    """Tandem Repeats Finder ``.dat`` (15 columns a repeat, after a 'Sequence: name' line) or
    ``-ngs`` (17 columns: the flanks added, after an '@name' line); 1-based inclusive."""
    seq_id = None
    marker = "@" if ngs else "Sequence:"
    width = 17 if ngs else 15
    kind = "-ngs" if ngs else ".dat"
    for number, line in lines:
        stripped = line.strip(" \t")
        if stripped.startswith(marker):
            words = _words(stripped[len(marker):])
            if not words:
                raise _Bad("sequence header without a name")
            seq_id = words[0]
            yield number, None
            continue
        fields = _words(stripped)
        if not fields:
            yield number, None
            continue
        if not _UNSIGNED.fullmatch(fields[0]):
            if not ngs and (seq_id is None or fields[0] == "Parameters:"):
                yield number, None  # TRF's preamble, the parameter line of each sequence
                continue
            raise _Bad(f"expected a {marker!r} line or a repeat line of {width} columns (start "
                       f"end period ...) in TRF {kind} output")
        if seq_id is None:
            raise _Bad(f"repeat before any {marker!r} line")
        if len(fields) != width:
            raise _Bad(f"a TRF {kind} repeat line has {width} columns, found {len(fields)}")
        start, end = _coord(fields[0], "start"), _coord(fields[1], "end")
        period = _count(fields[2], "period")
        _number(fields[3], "copy number")
        _int(fields[4], "consensus size")
        for i, what in ((5, "percent matches"), (6, "percent indels")):
            _number(fields[i], what)
        score = _number(fields[7], "score")
        for i, base in zip(range(8, 12), "ACGT"):
            _int(fields[i], f"percent {base}")
        _number(fields[12], "entropy")
        yield number, (seq_id, start - 1, end, None, fields[13], "Tandem_repeat",
                       f"period_{period}", score)


def _tantan(lines) -> Iterator[tuple[int, Row | None]]:
    """tantan ``-f4``: name start end period copies unit [the copies], tab-separated,
    0-based half-open."""
    for number, line in lines:
        if not line.strip() or line.startswith("#"):
            yield number, None
            continue
        f = _tabs(line, "tantan -f4 columns")
        if len(f) not in (6, 7):
            raise _Bad(f"expected the 7 tab-separated columns of tantan -f4 (name start end "
                       f"period copies unit copies-list), found {len(f)}")
        start, end = _coord(f[1], "start"), _coord(f[2], "end")
        period = _count(f[3], "period")
        _number(f[4], "copy number")
        if not f[5]:
            raise _Bad("empty repeat unit")
        # tantan reports no score; the copy number is not one
        yield number, (f[0], start, end, None, f[5], "Tandem_repeat", f"period_{period}", None)


def _tantan_f3(lines) -> Iterator[tuple[int, Row | None]]:
    """tantan -f3: the masked regions as BED3 (name, start, end); no period or unit."""
    for number, line in lines:
        if not line.strip() or line.startswith("#"):
            yield number, None
            continue
        f = _tabs(line, "3 tab-separated columns")
        if len(f) != 3:
            hint = "; this looks like tantan -f4 output: use --format tantan-f4" \
                if len(f) >= 6 else ""
            raise _Bad(f"expected the 3 tab-separated columns of tantan -f3 (name start end), "
                       f"found {len(f)}{hint}")
        start, end = _coord(f[1], "start"), _coord(f[2], "end")
        yield number, (f[0], start, end, None, None, "Tandem_repeat", None, None)


_BED_HEADER = re.compile(r"(?:track|browser)(?:[ \t]|$)")


def _bed(lines) -> Iterator[tuple[int, Row | None]]:
    """BED3 to BED12 and BED6+N: tab-separated, 0-based half-open; score a number or '.',
    strand '+', '-' or '.'."""
    for number, line in lines:
        if not line.strip() or line.startswith("#") or _BED_HEADER.match(line):
            yield number, None
            continue
        f = _tabs(line, "at least 3 tab-separated columns")
        if len(f) < 3:
            raise _Bad(f"a BED line needs at least 3 tab-separated columns, found {len(f)}")
        start, end = _coord(f[1], "chromStart"), _coord(f[2], "chromEnd")
        name = f[3] if len(f) > 3 and f[3] not in ("", ".") else None
        score = _number(f[4], "score", missing=(".",)) if len(f) > 4 else None
        strand = _strand(f[5], {"+": "+", "-": "-", ".": None}) if len(f) > 5 else None
        yield number, (f[0], start, end, strand, name, None, None, score)


_GFF_REPEATS = ("repeat_region", "tandem_repeat", "dispersed_repeat", "microsatellite",
                "inverted_repeat")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _unescape(text: str, what: str) -> str:
    """GFF3 percent-decoding (RFC 3986 %XX, UTF-8); an invalid escape is _Bad."""
    if "%" not in text:
        return text
    bad = _BAD_ESCAPE.search(text)
    if bad:
        raise _Bad(f"{what} {text!r}: {text[bad.start():bad.start() + 3]!r} is not a "
                   "percent-escape (GFF3 writes a literal '%' as %25)")
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise _Bad(f"{what} {text!r}: its percent-escapes are not UTF-8") from None


def _gff_attributes(text: str) -> dict[str, str]:
    """Column 9: tag=value pairs separated by ';', each tag and value percent-decoded."""
    attributes: dict[str, str] = {}
    if text == ".":
        return attributes
    for item in text.split(";"):
        if not item.strip(" "):
            continue  # a trailing ';', or '; ' between pairs
        tag, equals, value = item.partition("=")
        tag = tag.strip(" ")
        if not equals or not tag:
            raise _Bad(f"attribute {item!r} is not tag=value (GFF3 column 9)")
        attributes[_unescape(tag, "attribute tag")] = _unescape(value, f"attribute {tag}")
    return attributes


def _gff3(lines) -> Iterator[tuple[int, Row | None]]:
    """GFF3: 9 tab-separated columns, 1-based inclusive; strand '+', '-', '.' or '?'."""
    for number, line in lines:
        if line.startswith(("##FASTA", ">")):
            return  # the rest of the file is the sequences (as in Prokka's output)
        if not line.strip() or line.startswith("#"):
            yield number, None
            continue
        f = _tabs(line, "9 tab-separated columns")
        if len(f) != 9:
            raise _Bad(f"a GFF3 line has 9 tab-separated columns, found {len(f)}")
        seq_id = _unescape(f[0], "seqid")
        start, end = _coord(f[3], "start"), _coord(f[4], "end")
        score = _number(f[5], "score", missing=(".",))
        strand = _strand(f[6], {"+": "+", "-": "-", ".": None, "?": None})
        if f[7] not in (".", "0", "1", "2"):
            raise _Bad(f"phase {f[7]!r} is not one of '.', '0', '1', '2'")
        attributes = _gff_attributes(f[8])
        name = attributes.get("Name") or attributes.get("rpt_unit_seq") or attributes.get("ID")
        row = (seq_id, start - 1, end, strand, name, attributes.get("rpt_type", f[2]),
               attributes.get("rpt_family"), score)
        if f[2] not in _GFF_REPEATS:  # not imported; its place still follows the rules
            _checked_row((seq_id, start - 1, end, strand, None, None, None, score), "gff3")
            yield number, None
            continue
        yield number, row


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


def _digits(text: str) -> bool:
    return bool(_UNSIGNED.fullmatch(text))


def detect_format(path: str | Path) -> str:
    """The format of a repeat annotation file, from its first non-blank lines."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    head: list[str] = []
    where = _Where()
    with _open(path) as stream:
        try:
            for number, line in _decoded(_byte_lines(stream), where):
                if number > 40:
                    break
                if line.strip() and not _BED_HEADER.match(line) and \
                        (not line.startswith("#") or line.startswith("##gff-version")):
                    head.append(line)
        except _Bad as exc:
            raise InputError(f"{path}, line {where.number}: {exc}") from None
    if not head:
        raise InputError(f"{path}: empty repeat annotation file")
    first = head[0]
    fields = first.split("\t")
    if first.startswith("##gff-version"):
        return "gff3"
    if first.lstrip().startswith(("SW", "score")) and "perc" in first + "".join(head[1:2]):
        return "repeatmasker"
    if first.startswith("@"):
        return "trf-ngs"
    if any(line.startswith("Sequence:") for line in head) or first.startswith("Tandem Repeats"):
        return "trf-dat"
    if len(fields) >= 17 and _digits(fields[0]):
        if _digits(fields[6]) and fields[9] in ("+", "-"):
            return "ucsc-rmsk"
        if _digits(fields[2]) and _digits(fields[3]):
            return "ucsc-simplerepeat"
    # tantan -f4: name start end period copies unit (DNA or protein letters) [copies]
    if len(fields) >= 6 and all(_digits(x) for x in fields[1:4]) and \
            _NUMBER.fullmatch(fields[4]) and fields[5].isalpha():
        return "tantan-f4"
    if len(fields) >= 3 and _digits(fields[1]) and _digits(fields[2]):
        # tantan -f3 output is plain BED3: only the file name can tell them apart
        if len(fields) == 3 and "tantan" in path.name.lower():
            return "tantan-f3"
        return "bed"
    raise InputError(f"{path}: cannot tell the repeat annotation format; pass --format "
                     f"({', '.join(FORMATS)})")


def parse_repeats(lines: Iterable[str | bytes], *, format: str, label: str,
                  source: str | None = None, rename: dict[str, str] | None = None) -> pa.Table:
    """Parse annotation lines (a file, a program's stdout) into the ``repeats`` table.

    ``lines`` are text or bytes (decoded as strict UTF-8), with or without their line endings.
    Errors name ``label`` and the line; ``source`` fills the source column (default: the
    format); ``rename`` maps sequence names. Nothing is returned unless every line is valid.
    """
    if format not in _PARSERS:
        raise InputError(f"unknown repeat format {format!r}; choose one of {', '.join(FORMATS)}")
    columns: dict[str, list] = {name: [] for name in schema.REPEATS.names}
    where = _Where()
    rows = _PARSERS[format](_decoded(lines, where))
    rename, source = rename or {}, source or format
    try:
        for number, row in rows:
            if row is None:
                continue
            where.number = number
            seq_id, start, end, strand, name, repeat_class, family, score = \
                _checked_row(row, format)
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
        raise InputError(f"{label}, line {where.number}: {exc} (format {format})") from None
    return pa.Table.from_pydict(columns, schema=schema.REPEATS)


def read_repeats(path: str | Path, *, format: str | None = None,
                 rename: dict[str, str] | None = None) -> pa.Table:
    """Parse a repeat annotation file into the ``repeats`` table (0-based half-open)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    fmt = format or detect_format(path)
    with _open(path) as stream:
        return parse_repeats(_byte_lines(stream), format=fmt, label=str(path), rename=rename)
