"""Readers of variant files for zero-shot variant effect scoring.

Inputs, each read once (``-`` is standard input), plain or gzip/bgzip (told by the magic
bytes, never by the name), strict UTF-8 (a byte order mark at the start is allowed):

* mutant strings, the ESM / ProteinGym convention: ``A123G``, several sites of one variant
  joined by ``:`` (``A123G:K140R``); case-insensitive; ``*`` is a stop;
* mutant tables, CSV or TSV (ProteinGym DMS files as they are: ``mutant``,
  ``mutated_sequence``, ``DMS_score``, ``DMS_score_bin``);
* VCF 4.x (``CHROM POS ID REF ALT ...``);
* variant TSVs with the columns ``chrom pos ref alt``.

Coordinates are kept as the input writes them: 1-based (the mutant's number, VCF ``POS``);
a :class:`Site` holds the position of the one residue or base it changes.

Two kinds of trouble, kept apart:

* an **error** (:class:`~seqatlas.errors.InputError`): the file is malformed (a mutant that
  does not parse, a ``POS`` of 0, a missing column, bytes that are not UTF-8, a truncated
  gzip stream). The message starts ``path:LINE:`` (``<stdin>`` for ``-``) and says what was
  expected; nothing is returned.
* a **problem** (:attr:`VariantRecord.problem`): a well-formed record that cannot be scored as
  substitutions (an indel, a symbolic allele, a stop codon, no alternate allele). It is
  returned, so a report can list it with its reason.

A record equal to an earlier one of the same input (same sequence name and the same sites,
in any order; for a record without sites the same position, REF and ALT) points to it with
:attr:`VariantRecord.duplicate_of`. Bad options raise :class:`~seqatlas.errors.ConfigError`.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
import re
import sys
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from typing import IO, Iterable, Iterator

from seqatlas.errors import ConfigError, InputError
from seqatlas.util import STDIN, stream_name

__all__ = [
    "Site", "VariantRecord", "FORMATS", "parse_mutant", "read_mutant_table", "read_vcf",
    "read_variant_tsv", "read_variants", "mutant_records", "match_seq_ids", "read_chrom_map",
]

FORMATS = ("auto", "vcf", "mutants", "tsv")
ARGUMENTS = "<arguments>"
MAX_LINE_BYTES = 256 * 2 ** 20
MAX_POSITION = 2 ** 62
MUTANT_FORM = ("expected the form A123G (reference letter, 1-based position, alternate "
               "letter; '*' for a stop), several sites joined by ':' as in A123G:K140R")
STOP_PROBLEM = "stop codon: no residue letter"
MISSING_NUMBERS = frozenset({"", "na", "nan", "-nan", "n/a", "#n/a", "null", "none"})
VCF_SUFFIXES = (".vcf", ".vcf.gz", ".vcf.bgz")
TSV_COLUMNS = ("chrom", "pos", "ref", "alt")
PROTEINGYM_SCORE, PROTEINGYM_BIN, PROTEINGYM_SEQUENCE = (
    "DMS_score", "DMS_score_bin", "mutated_sequence")

_GZIP_MAGIC = b"\x1f\x8b"
_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)
_OTHER_COMPRESSION = {b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd",
                      b"PK\x03\x04": "zip"}
_LINE_BAD = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\ufeff]")
_SITE = re.compile(r"([A-Z*])([0-9]+)([A-Z*])")
_SITE_LOOSE = re.compile(r"([A-Z*])([+-]?[0-9.]+)([A-Z*])")
_WHITESPACE = re.compile(r"\s")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_MITOCHONDRION = frozenset({"chrm", "chrmt", "mt", "m"})


@dataclass(frozen=True)
class Site:
    """One substituted residue or base, at the input's own 1-based coordinate."""

    position: int
    ref: str
    alt: str


@dataclass(frozen=True)
class VariantRecord:
    """One variant of an input: its sites, or the problem that keeps it from being scored."""

    source: str
    line: int | None
    variant_id: str
    seq_id: str | None
    sites: tuple[Site, ...]
    problem: str | None = None
    score: float | None = None
    bin: int | None = None
    mutated_sequence: str | None = None
    duplicate_of: int | None = None


class _Bad(Exception):
    """A field that does not parse; the caller adds the file and the line."""


class _Duplicates:
    """The first line (or argument) of each variant seen in one input."""

    def __init__(self) -> None:
        self.first: dict[tuple, int] = {}

    def earlier(self, key: tuple, line: int) -> int | None:
        first = self.first.setdefault(key, line)
        return first if first != line else None


def _variant_key(seq_id: str | None, sites: tuple[Site, ...], *allele: object) -> tuple:
    if len(sites) == 1:
        return (seq_id, sites[0].position, sites[0].ref, sites[0].alt)
    if sites:
        return (seq_id, tuple(sorted((s.position, s.ref, s.alt) for s in sites)))
    return (seq_id, "allele", *allele)


# ---------------------------------------------------------------------------------------------
# reading lines


def _open_bytes(path: str | os.PathLike, name: str) -> tuple[IO[bytes], IO[bytes] | None]:
    """(the input's bytes, gunzipped when they start with the gzip magic; the file to close,
    None for standard input)."""
    if os.fspath(path) == STDIN:
        if sys.stdin is None:
            raise InputError(f"{name}: there is no standard input to read")
        raw = sys.stdin.buffer
        buffered, owned = (raw if hasattr(raw, "peek") else io.BufferedReader(raw)), None
    else:
        try:
            buffered = owned = open(path, "rb")
        except FileNotFoundError:
            raise InputError(f"{name}: file not found; check the path") from None
        except OSError as exc:
            raise InputError(f"{name}: cannot open ({exc.strerror or exc})") from None
    try:
        head = buffered.peek(6)[:6]
    except OSError as exc:
        raise InputError(f"{name}: cannot read ({exc.strerror or exc})") from None
    for magic, kind in _OTHER_COMPRESSION.items():
        if head.startswith(magic):
            raise InputError(f"{name}: {kind}-compressed; only plain text, gzip or bgzip is "
                             "read: decompress it first")
    if head.startswith(_GZIP_MAGIC):
        return gzip.GzipFile(fileobj=buffered, mode="rb"), owned
    return buffered, owned


def _decoded(raw: bytes, name: str, number: int) -> str:
    """A raw line as text, its line ending removed; anything that is not clean text is an
    InputError."""
    if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
        raise InputError(f"{name}:{number}: line longer than {MAX_LINE_BYTES:,} bytes; is this "
                         "a variant file?")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{name}:{number}: not UTF-8 text: byte {raw[exc.start]:#04x} at "
                         f"column {exc.start + 1}; the file must be UTF-8 or ASCII text "
                         "(binary file?)") from None
    text = text[:-1] if text.endswith("\n") else text
    text = text[:-1] if text.endswith("\r") else text
    if number == 1 and text.startswith("\ufeff"):
        text = text[1:]
    bad = _LINE_BAD.search(text)
    if bad:
        char = bad.group()
        what = ("a NUL byte (binary file?)" if char == "\x00" else
                "a carriage return inside the line" if char == "\r" else
                "a byte order mark after the start of the file" if char == "\ufeff" else
                f"the control character U+{ord(char):04X}")
        raise InputError(f"{name}:{number}: {what} at column {bad.start() + 1}; expected "
                         "plain text")
    return text


def _numbered_lines(stream: IO[bytes], name: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) for each line of the stream."""
    number = 0
    while True:
        try:
            raw = stream.readline(MAX_LINE_BYTES + 1)
        except _GZIP_ERRORS as exc:
            raise InputError(f"{name}:{number + 1}: corrupt or truncated gzip data ({exc}); "
                             "is the file complete?") from None
        except OSError as exc:
            raise InputError(f"{name}:{number + 1}: cannot read ({exc.strerror or exc})"
                             ) from None
        if not raw:
            return
        number += 1
        yield number, _decoded(raw, name, number)


@contextmanager
def _input_lines(path: str | os.PathLike) -> Iterator[tuple[str, Iterator[tuple[int, str]]]]:
    """(the input's name for messages and records, its numbered lines)."""
    name = stream_name(path)
    stream, owned = _open_bytes(path, name)
    try:
        yield name, _numbered_lines(stream, name)
    finally:
        for closable in (stream, owned) if owned is not None else ():
            try:
                closable.close()
            except (*_GZIP_ERRORS, OSError):
                pass


# ---------------------------------------------------------------------------------------------
# mutant strings


def _site(text: str) -> Site:
    match = _SITE.fullmatch(text)
    if match is None:
        loose = _SITE_LOOSE.fullmatch(text)
        if loose is None:
            raise _Bad(f"site {text!r} is not a reference letter, a position and an "
                       "alternate letter")
        raise _Bad(f"position {loose.group(2)!r} of site {text!r} is not a whole number "
                   "without a sign")
    ref, digits, alt = match.groups()
    if len(digits) > 18 or int(digits) >= MAX_POSITION:
        raise _Bad(f"position {digits} of site {text!r} is out of range")
    if int(digits) == 0:
        raise _Bad(f"position 0 in site {text!r}: positions are 1-based (the first residue "
                   "is 1)")
    return Site(int(digits), ref, alt)


def _sites(text: str) -> tuple[Site, ...]:
    """The sites of one mutant string, or _Bad saying why not."""
    clean = text.strip()
    if not clean:
        raise _Bad("empty mutant")
    if not clean.isascii():
        raise _Bad("it contains a character that is not ASCII")
    if clean.upper().startswith("P."):
        raise _Bad("HGVS notation is not read")
    sites: list[Site] = []
    seen: dict[int, str] = {}
    for part in clean.upper().split(":"):
        part = part.strip()
        if not part:
            raise _Bad("an empty site between ':' separators")
        site = _site(part)
        if site.position in seen:
            raise _Bad(f"position {site.position} appears twice ({seen[site.position]} and "
                       f"{part}); give each position once")
        seen[site.position] = part
        sites.append(site)
    return tuple(sites)


def _mutant_id(text: str) -> str:
    return ":".join(part.strip() for part in text.strip().upper().split(":"))


def parse_mutant(text: str, *, source: str = ARGUMENTS, line: int | None = None
                 ) -> tuple[Site, ...]:
    """The sites of a mutant string such as ``A123G`` or ``A123G:K140R`` (1-based)."""
    where = f"{source}:{line}" if line is not None else source
    try:
        return _sites(text)
    except _Bad as exc:
        raise InputError(f"{where}: mutant {text!r} is malformed: {exc}; {MUTANT_FORM}"
                         ) from None


def _stop_problem(sites: tuple[Site, ...]) -> str | None:
    return STOP_PROBLEM if any("*" in (s.ref, s.alt) for s in sites) else None


def mutant_records(texts: list[str], *, seq_id: str | None = None) -> list[VariantRecord]:
    """Records of mutant strings given as arguments; ``duplicate_of`` is a 1-based index."""
    records: list[VariantRecord] = []
    duplicates = _Duplicates()
    for index, text in enumerate(texts, start=1):
        try:
            sites = _sites(text)
        except _Bad as exc:
            raise InputError(f"{ARGUMENTS}: argument {index}, mutant {text!r}, is malformed: "
                             f"{exc}; {MUTANT_FORM}") from None
        records.append(VariantRecord(
            ARGUMENTS, None, _mutant_id(text), seq_id, sites, _stop_problem(sites),
            duplicate_of=duplicates.earlier(_variant_key(seq_id, sites), index)))
    return records


# ---------------------------------------------------------------------------------------------
# mutant tables


def _number(text: str, what: str) -> float | None:
    """A finite number, or None for an empty cell, NA or nan."""
    text = text.strip()
    if text.lower() in MISSING_NUMBERS:
        return None
    if not _NUMBER.fullmatch(text):
        raise _Bad(f"{what} {text!r} is not a number (or empty, NA, nan for none)")
    value = float(text)
    if not math.isfinite(value):
        raise _Bad(f"{what} {text!r} is out of range")
    return value


def _binary_class(text: str, what: str) -> int | None:
    value = _number(text, what)
    if value is None:
        return None
    if value != int(value):
        raise _Bad(f"{what} {text.strip()!r} is not a whole number (a class such as 0 or 1)")
    return int(value)


def _header_fields(text: str) -> tuple[list[str], str]:
    """The header's column names and the delimiter: a tab when the line holds one, else ','."""
    delimiter = "\t" if "\t" in text else ","
    try:
        fields = next(csv.reader([text], delimiter=delimiter, strict=True), [])
    except csv.Error as exc:
        raise _Bad(f"header line is not valid CSV ({exc})") from None
    return [field.strip() for field in fields], delimiter


def _column(names: list[str], wanted: str, option: str, *, required: bool) -> int | None:
    if names.count(wanted) > 1:
        raise _Bad(f"the header names the column {wanted!r} twice")
    if wanted in names:
        return names.index(wanted)
    if required:
        raise _Bad(f"no column {wanted!r} ({option}); the header has the columns "
                   f"{', '.join(repr(n) for n in names)}")
    return None


def _table_columns(names: list[str], mutant: str, seq_id: str | None, score: str | None,
                   binary: str | None) -> dict[str, int | None]:
    """Where each column is: the named ones must exist, the ProteinGym defaults may not."""
    return {
        "mutant": _column(names, mutant, "mutant column", required=True),
        "seq_id": _column(names, seq_id or "seq_id", "seq-id column", required=bool(seq_id)),
        "score": _column(names, score or PROTEINGYM_SCORE, "score column",
                         required=bool(score)),
        "bin": _column(names, binary or PROTEINGYM_BIN, "bin column", required=bool(binary)),
        "sequence": _column(names, PROTEINGYM_SEQUENCE, "", required=False),
    }


def _cell(row: list[str], index: int | None) -> str | None:
    return None if index is None else row[index].strip()


def _table_record(name: str, number: int, row: list[str], columns: dict[str, int | None],
                  names: list[str], duplicates: _Duplicates) -> VariantRecord:
    mutant_name = names[columns["mutant"]]  # type: ignore[index]
    text = _cell(row, columns["mutant"]) or ""
    if not text:
        raise _Bad(f"empty cell in the mutant column {mutant_name!r}")
    try:
        sites = _sites(text)
    except _Bad as exc:
        raise _Bad(f"mutant {text!r} (column {mutant_name!r}) is malformed: {exc}; "
                   f"{MUTANT_FORM}") from None
    seq_id = _cell(row, columns["seq_id"])
    if seq_id == "":
        raise _Bad(f"empty cell in the sequence id column {names[columns['seq_id']]!r}")
    score_text, bin_text = _cell(row, columns["score"]), _cell(row, columns["bin"])
    score = None if score_text is None else _number(score_text, "score")
    binary = None if bin_text is None else _binary_class(bin_text, "bin")
    sequence = _cell(row, columns["sequence"])
    return VariantRecord(name, number, _mutant_id(text), seq_id, sites, _stop_problem(sites),
                         score, binary, sequence.upper() if sequence else None,
                         duplicates.earlier(_variant_key(seq_id, sites), number))


def _next_content(lines: Iterator[tuple[int, str]]) -> tuple[int, str] | None:
    """The next line that is not blank."""
    for number, text in lines:
        if text.strip():
            return number, text
    return None


def _tracked(lines: Iterable[tuple[int, str]], where: list[int]) -> Iterator[str]:
    """The lines that are not blank, their number kept in ``where[0]`` for messages."""
    for number, text in lines:
        if text.strip():
            where[0] = number
            yield text


def _parse_mutant_table(name: str, lines: Iterator[tuple[int, str]], *,
                        mutant_column: str = "mutant", seq_id_column: str | None = None,
                        score_column: str | None = None, bin_column: str | None = None
                        ) -> list[VariantRecord]:
    header = _next_content(lines)
    if header is None:
        raise InputError(f"{name}:1: empty file; expected a CSV or TSV header line with a "
                         f"{mutant_column!r} column")
    number = header[0]
    where = [number]
    try:
        names, delimiter = _header_fields(header[1])
        columns = _table_columns(names, mutant_column, seq_id_column, score_column, bin_column)
        records, duplicates = [], _Duplicates()
        for row in csv.reader(_tracked(lines, where), delimiter=delimiter, strict=True):
            number = where[0]
            if len(row) != len(names):
                hint = "tabs" if delimiter == "\t" else \
                    "commas; a CSV field that holds a comma must be quoted"
                raise _Bad(f"{len(row)} columns where the header has {len(names)} "
                           f"(separated by {hint})")
            records.append(_table_record(name, number, row, columns, names, duplicates))
    except _Bad as exc:
        raise InputError(f"{name}:{number}: {exc}") from None
    except csv.Error as exc:
        raise InputError(f"{name}:{where[0]}: not valid CSV ({exc})") from None
    return records


def read_mutant_table(path: str | os.PathLike, *, mutant_column: str = "mutant",
                      seq_id_column: str | None = None, score_column: str | None = None,
                      bin_column: str | None = None) -> list[VariantRecord]:
    """A CSV or TSV of mutant strings (ProteinGym DMS files as they are).

    Columns left as None take their ProteinGym or conventional name when present
    (``seq_id``, ``DMS_score``, ``DMS_score_bin``); ``mutated_sequence`` is read when present.
    """
    with _input_lines(path) as (name, lines):
        return _parse_mutant_table(name, lines, mutant_column=mutant_column,
                                   seq_id_column=seq_id_column, score_column=score_column,
                                   bin_column=bin_column)


# ---------------------------------------------------------------------------------------------
# VCF and variant TSVs


def _position(text: str, what: str) -> int:
    if not (text.isascii() and text.isdigit()):
        if re.fullmatch(r"-[0-9]+", text):
            raise _Bad(f"{what} {text} is negative: {what} is 1-based (the first base is 1); "
                       "0-based coordinates need 1 added")
        raise _Bad(f"{what} {text!r} is not a whole number ({what} is the 1-based position "
                   "of the first REF base)")
    position = int(text) if len(text) <= 19 else MAX_POSITION
    if position >= MAX_POSITION:
        raise _Bad(f"{what} {text} is out of range")
    if position == 0:
        raise _Bad(f"{what} 0: {what} is 1-based (the first base is 1); 0-based coordinates "
                   "need 1 added")
    return position


def _allele(position: int, ref: str, alt: str) -> tuple[tuple[Site, ...], str | None]:
    """(sites, problem) of one ALT allele against REF (REF uppercase letters, ALT as written)."""
    if not (alt.isascii() and alt.isalpha()):
        if alt == ".":
            return (), "no alternate allele"
        if alt == "*":
            return (), "spanning deletion allele *"
        if alt.startswith("<") or "[" in alt or "]" in alt or \
                (len(alt) > 1 and (alt.startswith(".") or alt.endswith("."))):
            return (), f"symbolic allele {alt}"
        if alt == "-" or ref == "-":  # ANNOVAR-style tables' '-' (TSV only: REF is checked)
            return (), f"indel (REF {ref}, ALT {alt})"
        raise _Bad(f"ALT allele {alt!r} is not bases, '.', '*', a symbolic <ID> or a breakend")
    alt = alt.upper()
    if len(ref) != len(alt):
        return (), f"indel (REF len {len(ref)}, ALT len {len(alt)})"
    if ref == alt:
        return (), "ALT equals REF"
    if len(ref) == 1:
        return (Site(position, ref, alt),), None
    return tuple(Site(position + i, r, a) for i, (r, a) in enumerate(zip(ref, alt))
                 if r != a), None


def _allele_records(name: str, number: int, chrom: str, pos_text: str, variant_id: str,
                    ref: str, alts: str, duplicates: _Duplicates, *, tsv: bool = False
                    ) -> list[VariantRecord]:
    """One record per comma-separated ALT allele of a VCF or TSV line."""
    if not chrom or _WHITESPACE.search(chrom):
        raise _Bad(f"sequence name {chrom!r} is empty or holds whitespace")
    position = _position(pos_text, "pos" if tsv else "VCF POS")
    if not (ref.isascii() and ref.isalpha()) and not (tsv and ref == "-"):
        raise _Bad(f"REF {ref!r} is not bases (letters)")
    ref = ref.upper()
    records = []
    for alt in alts.split(","):
        if not alt:
            raise _Bad(f"empty ALT allele in {alts!r}; write '.' for none")
        sites, problem = _allele(position, ref, alt)
        if not variant_id:
            shown = alt if problem and problem.startswith("symbolic") else alt.upper()
        earlier = duplicates.earlier(_variant_key(chrom, sites, position, ref, alt.upper()),
                                     number)
        records.append(VariantRecord(
            name, number, variant_id or f"{chrom}:{position}:{ref}>{shown}", chrom, sites,
            problem, duplicate_of=earlier))
    return records


def _tab_fields(text: str, least: int, expected: str, *, limit: int = -1) -> list[str]:
    fields = text.split("\t", limit)
    if len(fields) < least:
        spaces = "; its columns are separated by spaces: use tabs" \
            if len(fields) == 1 and " " in text.strip() else ""
        raise _Bad(f"expected {expected}, found {len(fields)} column"
                   f"{'s' if len(fields) != 1 else ''}{spaces}")
    return fields


def _parse_vcf(name: str, lines: Iterable[tuple[int, str]]) -> list[VariantRecord]:
    records: list[VariantRecord] = []
    duplicates = _Duplicates()
    header_seen, number = False, 0
    try:
        for number, text in lines:
            if text.startswith("#"):
                header_seen = header_seen or text.split("\t")[0].split(" ")[0].upper() == \
                    "#CHROM"
                continue
            if not text.strip():
                continue
            if not header_seen:
                raise _Bad("record before the '#CHROM' header line; a VCF needs the line "
                           "'#CHROM<TAB>POS<TAB>ID<TAB>REF<TAB>ALT...' before its records")
            fields = _tab_fields(text, 5, "at least 5 tab-separated VCF columns (CHROM POS ID "
                                          "REF ALT)", limit=5)
            chrom, pos, vid, ref, alts = fields[:5]
            records += _allele_records(name, number, chrom, pos, "" if vid in ("", ".")
                                       else vid, ref, alts, duplicates)
    except _Bad as exc:
        raise InputError(f"{name}:{number}: {exc}") from None
    if not header_seen:
        raise InputError(f"{name}:{number + 1}: no '#CHROM' header line; expected a VCF (a "
                         "'#CHROM POS ID REF ALT ...' line, then tab-separated records)")
    return records


def read_vcf(path: str | os.PathLike) -> list[VariantRecord]:
    """A VCF's variants, one record per ALT allele; positions 1-based as in ``POS``."""
    with _input_lines(path) as (name, lines):
        return _parse_vcf(name, lines)


def _tsv_header(text: str) -> dict[str, int] | None:
    """Column indexes of a chrom/pos/ref/alt header (names case-insensitive, an optional
    leading '#'), or None when the line is not one."""
    names = [n.strip().lower() for n in text.removeprefix("#").split("\t")]
    if not set(TSV_COLUMNS) <= set(names):
        return None
    return {n: names.index(n) for n in (*TSV_COLUMNS, "id") if n in names} | {"": len(names)}


def _parse_variant_tsv(name: str, lines: Iterable[tuple[int, str]]) -> list[VariantRecord]:
    records: list[VariantRecord] = []
    duplicates = _Duplicates()
    columns: dict[str, int] | None = None
    number = 0
    try:
        for number, text in lines:
            if not text.strip() or (text.startswith("#") and
                                    (columns is not None or _tsv_header(text) is None)):
                continue
            if columns is None:
                columns = _tsv_header(text)
                if columns is None:
                    raise _Bad("expected a header line with the tab-separated columns chrom, "
                               f"pos, ref, alt; found {text[:80]!r}")
                continue
            fields = _tab_fields(text, columns[""], f"{columns['']} tab-separated columns "
                                 "like the header")
            if len(fields) != columns[""]:
                raise _Bad(f"{len(fields)} columns where the header has {columns['']}")
            vid = fields[columns["id"]].strip() if "id" in columns else ""
            chrom, pos, ref, alt = (fields[columns[c]].strip() for c in TSV_COLUMNS)
            records += _allele_records(name, number, chrom, pos, "" if vid == "." else vid,
                                       ref, alt, duplicates, tsv=True)
    except _Bad as exc:
        raise InputError(f"{name}:{number}: {exc}") from None
    if columns is None:
        raise InputError(f"{name}:{number + 1}: no header line; expected the tab-separated "
                         "columns chrom, pos, ref, alt")
    return records


def read_variant_tsv(path: str | os.PathLike) -> list[VariantRecord]:
    """A TSV with the columns chrom, pos (1-based), ref, alt (an id column is used)."""
    with _input_lines(path) as (name, lines):
        return _parse_variant_tsv(name, lines)


# ---------------------------------------------------------------------------------------------
# any variant file


def _sniff(name: str, path: str, lines: Iterator[tuple[int, str]], mutant_column: str
           ) -> tuple[str, list[tuple[int, str]]]:
    """(the format, the lines read to tell it) from the name or the first lines."""
    if path.lower().endswith(VCF_SUFFIXES):
        return "vcf", []
    head: list[tuple[int, str]] = []
    for number, text in lines:
        head.append((number, text))
        if not text.strip():
            continue
        if text.startswith("##fileformat=VCF") or \
                text.split("\t")[0].split(" ")[0].upper() == "#CHROM":
            return "vcf", head
        try:
            if mutant_column in _header_fields(text)[0]:
                return "mutants", head
        except _Bad:
            pass
        if _tsv_header(text) is not None:
            return "tsv", head
        if not text.startswith("#"):
            break
    found = f"; its first line is {head[-1][1][:80]!r}" if head else "; it is empty"
    raise InputError(f"{name}: cannot tell the variant format: looked for a VCF (a .vcf, "
                     ".vcf.gz or .vcf.bgz name, '##fileformat=VCF' or a '#CHROM' line), a "
                     f"mutant table (a header with a {mutant_column!r} column) and a variant "
                     f"TSV (a header with chrom, pos, ref, alt){found}; give the format "
                     "(vcf, mutants, tsv)")


def read_variants(path: str | os.PathLike, *, format: str = "auto", **table_options
                  ) -> list[VariantRecord]:
    """Variants of a VCF, mutant table or variant TSV; ``format`` auto tells them apart.

    ``table_options`` are :func:`read_mutant_table`'s keyword options; given with a file
    that is not a mutant table they are a ConfigError.
    """
    if format not in FORMATS:
        raise ConfigError(f"variant format {format!r} is not one of {', '.join(FORMATS)}")
    known = ("mutant_column", "seq_id_column", "score_column", "bin_column")
    unknown = sorted(set(table_options) - set(known))
    if unknown:
        raise ConfigError(f"unknown mutant table option {unknown[0]!r}; the options are "
                          f"{', '.join(known)}")
    mutant_column = table_options.get("mutant_column") or "mutant"
    with _input_lines(path) as (name, lines):
        head: list[tuple[int, str]] = []
        if format == "auto":
            format, head = _sniff(name, os.fspath(path), lines, mutant_column)
        lines = chain(head, lines)
        if format == "mutants":
            options = {k: v for k, v in table_options.items() if v is not None}
            return _parse_mutant_table(name, lines, **options)
        given = [k for k, v in table_options.items()
                 if v is not None and not (k == "mutant_column" and v == "mutant")]
        if given:
            raise ConfigError(f"{given[0].replace('_', '-')} applies to mutant tables; {name} "
                              f"is read as {'a VCF' if format == 'vcf' else 'a variant TSV'}")
        return _parse_vcf(name, lines) if format == "vcf" else _parse_variant_tsv(name, lines)


# ---------------------------------------------------------------------------------------------
# sequence names


def _loose_name(name: str) -> str:
    """The name without a 'chr' prefix (any case); the mitochondrion's names as one."""
    if name.lower() in _MITOCHONDRION:
        return "\0mitochondrion"
    return name[3:] if name[:3].lower() == "chr" else name


def match_seq_ids(names: list[str], atlas_ids: list[str], *,
                  chrom_map: dict[str, str] | None = None) -> dict[str, str | None]:
    """Each input name -> the atlas id it means (None: none): the map first, then the exact
    name, then with or without 'chr' (chrM, chrMT, MT and M are one). Two candidates is a
    ConfigError."""
    atlas = set(atlas_ids)
    loose: dict[str, list[str]] = {}
    for atlas_id in dict.fromkeys(atlas_ids):
        loose.setdefault(_loose_name(atlas_id), []).append(atlas_id)
    matched: dict[str, str | None] = {}
    for name in names:
        if chrom_map and name in chrom_map:
            if chrom_map[name] not in atlas:
                raise ConfigError(f"--chrom-map maps {name!r} to {chrom_map[name]!r}, which is "
                                  "not a sequence of the atlas")
            matched[name] = chrom_map[name]
        elif name in atlas:
            matched[name] = name
        else:
            candidates = loose.get(_loose_name(name), [])
            if len(candidates) > 1:
                raise ConfigError(f"sequence name {name!r} could mean the atlas sequence "
                                  f"{candidates[0]!r} or {candidates[1]!r}; say which with "
                                  "--chrom-map")
            matched[name] = candidates[0] if candidates else None
    return matched


def read_chrom_map(path: str | os.PathLike) -> dict[str, str]:
    """A two-column 'input_name atlas_id' file (tabs or spaces; '#' comments)."""
    mapping: dict[str, str] = {}
    first_line: dict[str, int] = {}
    with _input_lines(path) as (name, lines):
        for number, text in lines:
            fields = text.split()
            if not fields or text.lstrip().startswith("#"):
                continue
            if len(fields) != 2:
                raise InputError(f"{name}:{number}: expected two columns, an input name and "
                                 f"the atlas sequence it means; found {len(fields)}")
            alias, target = fields
            if mapping.get(alias, target) != target:
                raise InputError(f"{name}:{number}: {alias!r} is mapped to {target!r} here and "
                                 f"to {mapping[alias]!r} on line {first_line[alias]}")
            mapping[alias] = target
            first_line.setdefault(alias, number)
    return mapping
