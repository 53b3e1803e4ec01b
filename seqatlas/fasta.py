"""Streaming, validating FASTA reader (plain, gzip or bgzip, detected by magic bytes).

Every problem raises :class:`FastaError` naming the file, the record and the line.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import os
import re
import zlib
from dataclasses import dataclass
from typing import IO, Iterator

import numpy as np

from seqatlas.errors import FastaError, InputError

__all__ = [
    "PROTEIN_LETTERS", "NUCLEOTIDE_LETTERS", "KINDS", "FastaRecord", "RecordInfo",
    "FastaSummary", "FastaScan", "KindGuess", "soft_mask", "open_text_stream", "detect_kind",
    "sniff_kind", "classify_letters", "read_fasta", "scan_fasta",
]

PROTEIN_LETTERS = "ACDEFGHIKLMNPQRSTVWY" + "XBZUOJ"
NUCLEOTIDE_LETTERS = "ACGTUN" + "RYSWKMBDHV"
KINDS = ("protein", "dna", "rna")

PathArg = str | os.PathLike

_CHUNK = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_WS = b" \t\r\n"
_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)
_BINARY_RE = re.compile(rb"[\x00\x80-\xff]")
_CONTENT_RE = re.compile(rb"[^ \t\r\n]")


def _both_cases(letters: str) -> bytes:
    return (letters.upper() + letters.lower()).encode("ascii")


# '*' is accepted by the fast check for proteins; its position is checked separately.
_ALLOWED = {
    "protein": _both_cases(PROTEIN_LETTERS) + b"*",
    "dna": _both_cases(NUCLEOTIDE_LETTERS),
    "rna": _both_cases(NUCLEOTIDE_LETTERS),
}
_ILLEGAL_RE = {k: re.compile(b"[^" + re.escape(v + _WS) + b"]") for k, v in _ALLOWED.items()}
_NON_LETTERS = bytes(b for b in range(256) if not bytes([b]).isalpha())


@dataclass(frozen=True)
class FastaRecord:
    """One sequence; ``sequence`` keeps the original case (lowercase = soft-masked)."""

    id: str
    description: str
    sequence: bytes
    line: int
    ordinal: int

    @property
    def length(self) -> int:
        return len(self.sequence)


@dataclass(frozen=True)
class RecordInfo:
    """A record's metadata without its sequence."""

    id: str
    description: str
    length: int
    line: int
    ordinal: int


@dataclass(frozen=True)
class FastaSummary:
    """Result of one full validating pass over a file."""

    path: str
    size: int
    sha256: str
    kind: str
    kind_detected: bool
    records: list[RecordInfo]


def soft_mask(sequence: bytes) -> np.ndarray:
    """Boolean array, True where the residue is lowercase (soft-masked)."""
    codes = np.frombuffer(sequence, dtype=np.uint8)
    return (codes >= ord("a")) & (codes <= ord("z"))


def _fail(path: str, line: int, problem: str, fix: str, record: str | None = None) -> FastaError:
    where = f"{path}, line {line}" + (f", record '{record}'" if record is not None else "")
    return FastaError(f"{where}: {problem}; {fix}")


def _binary(path: str, line: int, what: str, record: str | None = None) -> FastaError:
    return _fail(path, line, f"binary or non-FASTA input ({what})",
                 "provide a plain-text FASTA file, optionally gzip/bgzip-compressed (headers "
                 "may hold UTF-8 text; sequence lines only letters)", record)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise FastaError(f"unknown sequence kind {kind!r}; choose one of {', '.join(KINDS)}")


def _open_raw(path: PathArg, buffering: int = -1) -> IO[bytes]:
    try:
        return open(path, "rb", buffering=buffering)
    except FileNotFoundError:
        raise InputError(f"{os.fspath(path)}: file not found; check the path") from None
    except OSError as exc:
        raise InputError(f"{os.fspath(path)}: cannot open ({exc.strerror or exc}); "
                         "check that it is a readable file") from None


class _OwningGzip(gzip.GzipFile):
    """GzipFile that also closes the file object it was given."""

    def close(self) -> None:
        inner = self.fileobj
        try:
            super().close()
        finally:
            if inner is not None:
                inner.close()


def _wrap(buffered: io.BufferedReader) -> IO[bytes]:
    if buffered.peek(2)[:2] == _GZIP_MAGIC:
        return _OwningGzip(fileobj=buffered, mode="rb")
    return buffered


def open_text_stream(path: PathArg) -> IO[bytes]:
    """Open ``path`` for binary reading, gunzipping when it starts with the gzip magic."""
    return _wrap(_open_raw(path))  # type: ignore[arg-type]


class _HashingRaw(io.RawIOBase):
    """Raw reader that hashes the on-disk bytes as they are read."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.sha256 = hashlib.sha256()
        self.nbytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[override]
        n = self._raw.readinto(buf) or 0  # type: ignore[attr-defined]
        if n:
            self.sha256.update(memoryview(buf)[:n])
            self.nbytes += n
        return n

    def drain(self) -> None:
        buf = bytearray(_CHUNK)
        while self.readinto(buf):
            pass

    def close(self) -> None:
        self._raw.close()
        super().close()


def _read(stream: IO[bytes], path: str, line: int, size: int | None = None) -> bytes:
    try:
        return stream.read(size or _CHUNK)
    except _GZIP_ERRORS as exc:
        raise _binary(path, line, f"corrupt or truncated gzip stream: {exc}") from None


@dataclass(frozen=True)
class KindGuess:
    """What :func:`sniff_kind` saw: the kind, and the sample it was guessed from."""

    kind: str
    letters: int  # residue letters sampled
    nucleotide: int  # of them A, C, G, T, U or N
    has_t: bool
    has_u: bool

    def evidence(self) -> str:
        """The sample in words, e.g. "98.2% of its first 1,200 letters are A/C/G/T/U/N"."""
        share = 100.0 * self.nucleotide / self.letters if self.letters else 0.0
        text = f"{share:.1f}% of its first {self.letters:,} letters are A/C/G/T/U/N"
        if self.kind != "protein":
            text += ", with " + {(True, False): "T and no U", (False, True): "U and no T",
                                 (True, True): "both T and U",
                                 (False, False): "neither T nor U"}[(self.has_t, self.has_u)]
        return text


def detect_kind(path: PathArg, *, sample_letters: int = 100_000) -> str:
    """Guess "protein", "dna" or "rna" from the first ``sample_letters`` residues."""
    return sniff_kind(path, sample_letters=sample_letters).kind


def sniff_kind(path: PathArg, *, sample_letters: int = 100_000) -> KindGuess:
    """The kind of the first ``sample_letters`` residues, with the evidence. Headers may hold
    UTF-8 text; a NUL byte, invalid UTF-8 in a header, or a byte outside ASCII in a sequence
    line is refused as binary (naming the line)."""
    return classify_letters(_sample_letters(os.fspath(path), sample_letters))


def classify_letters(sample: bytes) -> KindGuess:
    """The kind of a sample of uppercase residue letters (:func:`sniff_kind`'s rule)."""
    nucleotide = not sample.translate(None, NUCLEOTIDE_LETTERS.encode())
    acgtun = len(sample) - len(sample.translate(None, b"ACGTUN"))
    has_t, has_u = b"T" in sample, b"U" in sample
    kind = "protein"
    if nucleotide and acgtun >= 0.9 * len(sample):
        kind = "rna" if has_u and not has_t else "dna"
    return KindGuess(kind, len(sample), acgtun, has_t, has_u)


def _sample_letters(name: str, sample_letters: int) -> bytes:
    """The first ``sample_letters`` residue letters (uppercase), every line up to them
    checked for binary content."""
    letters = bytearray()
    lineno, at_start, in_header, seen_header, seen_content = 1, True, False, False, False
    header = codecs.getincrementaldecoder("utf-8")()
    headers = 0
    with open_text_stream(name) as stream:
        while len(letters) < sample_letters:
            chunk = _read(stream, name, lineno)
            if not chunk:
                break
            parts = chunk.split(b"\n")
            for i, part in enumerate(parts):
                last = i == len(parts) - 1
                if at_start and part.startswith(b">"):
                    in_header = seen_header = seen_content = True
                    headers += 1
                    header.reset()
                    _header_piece(header, name, lineno, part[1:], headers, final=not last)
                elif in_header:  # the rest of a header begun in the previous chunk
                    _header_piece(header, name, lineno, part, headers, final=not last)
                else:
                    bad = _BINARY_RE.search(part)
                    if bad:
                        raise _binary(name, lineno, f"byte {part[bad.start()]:#04x} in a "
                                      f"sequence line of record number {headers}")
                    if part.strip():
                        if not seen_header:
                            raise _fail(name, lineno, f"no FASTA header before line {lineno}",
                                        "the file must start with a '>' header line")
                        letters += part.translate(None, _NON_LETTERS)
                if not last:
                    lineno, at_start, in_header = lineno + 1, True, False
                else:
                    at_start = at_start and not part
    if in_header:
        _header_piece(header, name, lineno, b"", headers, final=True)
    if not seen_content:
        raise _fail(name, lineno, "no FASTA records", "the file is empty or holds only blank lines")
    if not letters:
        raise _fail(name, 1, "no sequence residues after the headers",
                    "add sequences under the '>' header lines")
    return bytes(letters[:sample_letters]).upper()


def _header_piece(decoder, name: str, lineno: int, piece: bytes, number: int, *,
                  final: bool) -> None:
    """Check one piece of the header of record ``number``: UTF-8 text without NUL."""
    if b"\x00" in piece:
        raise _binary(name, lineno, f"NUL byte in the header of record number {number}")
    try:
        decoder.decode(piece, final)
    except UnicodeDecodeError as exc:
        raise _binary(name, lineno, f"invalid UTF-8 in the header of record number {number}: "
                      f"{exc.reason}") from None


class _RecordParser:
    """The state of one validating pass; :func:`_records` feeds it chunks that never end
    inside a header."""

    __slots__ = ("path", "kind", "seen_ids", "allowed", "illegal_re", "protein", "first_line",
                 "rec_id", "desc", "rec_line", "ordinal", "seq", "star", "lineno", "carry")

    def __init__(self, path: str, kind: str, seen_ids: set[str] | None) -> None:
        self.path, self.kind, self.seen_ids = path, kind, seen_ids
        self.allowed, self.illegal_re = _ALLOWED[kind], _ILLEGAL_RE[kind]
        self.protein = kind == "protein"
        self.first_line: dict[str, int] = {}
        self.rec_id: str | None = None
        self.desc, self.rec_line, self.ordinal = "", 0, 0
        self.seq = bytearray()
        self.star: tuple[int, int] | None = None  # (line, column) of a '*' legal only at the end
        self.lineno = 1
        # Long lines are processed in pieces (no quadratic re-joining); ``carry`` counts the
        # bytes of the current line already consumed, so a chunk starting with carry > 0 is
        # mid-line.
        self.carry = 0

    def partial_header_at(self, data: bytes, *, eof: bool) -> int:
        """Where an unfinished header at the end of ``data`` starts; ``len(data)`` if none."""
        tail = data.rfind(b"\n") + 1
        if not eof and tail < len(data) and data[tail] == 0x3E and (tail or not self.carry):
            return tail
        return len(data)

    def feed(self, data: bytes) -> Iterator[FastaRecord]:
        """Parse ``data``, yielding each record completed by a following header."""
        pos, n = 0, len(data)
        while pos < n:
            if data[pos] == 0x3E and (pos or not self.carry):  # '>' at a line start
                end = data.find(b"\n", pos)
                end = n if end < 0 else end
                text = self._header_text(data[pos + 1:end])
                if self.rec_id is not None:
                    yield self._finish()
                self._start_record(text)
                self.lineno, pos = self.lineno + 1, end + 1
                continue
            nxt = data.find(b"\n>", pos)
            stop = n if nxt < 0 else nxt + 1
            self._body(data[pos:stop], at_start=pos == 0)
            pos = stop
        if n:
            last_nl = data.rfind(b"\n")
            self.carry = n - last_nl - 1 + (self.carry if last_nl < 0 else 0)

    def last_record(self) -> FastaRecord:
        if self.rec_id is None:
            raise _fail(self.path, self.lineno, "no FASTA records",
                        "the file is empty or holds only blank lines")
        return self._finish()

    def _header_text(self, header: bytes) -> str:
        # Headers may carry UTF-8 text (names with accents, Greek letters); a NUL byte or
        # invalid UTF-8 means the file is not FASTA.
        number = self.ordinal + (self.rec_id is not None) + 1
        try:
            text = header.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _binary(self.path, self.lineno, f"byte {header[exc.start]:#04x}, invalid "
                          f"UTF-8, in the header of record number {number}") from None
        if "\x00" in text:
            raise _binary(self.path, self.lineno,
                          f"NUL byte in the header of record number {number}")
        return text

    def _start_record(self, text: str) -> None:
        path, lineno = self.path, self.lineno
        words = text.split(None, 1)
        if not words:
            raise _fail(path, lineno, "header line has no record id",
                        "write an id right after '>', e.g. '>seq1 description'")
        rec_id = words[0]
        if rec_id in self.first_line:
            raise _fail(path, lineno, f"duplicate record id (first seen at line "
                        f"{self.first_line[rec_id]})", "make every record id unique", rec_id)
        if self.seen_ids is not None:
            if rec_id in self.seen_ids:
                raise _fail(path, lineno, "record id already used in another input file",
                            "make record ids unique across all inputs", rec_id)
            self.seen_ids.add(rec_id)
        self.first_line[rec_id] = lineno
        self.rec_id, self.rec_line = rec_id, lineno
        self.desc = words[1].strip() if len(words) > 1 else ""

    def _finish(self) -> FastaRecord:
        if not self.seq:
            raise _fail(self.path, self.rec_line, "empty record (header without sequence)",
                        "add its sequence or remove the header", self.rec_id)
        record = FastaRecord(self.rec_id, self.desc, bytes(self.seq),  # type: ignore[arg-type]
                             self.rec_line, self.ordinal)
        self.ordinal += 1
        self.seq, self.star = bytearray(), None
        return record

    def _body(self, body: bytes, *, at_start: bool) -> None:
        residues = body.translate(None, _WS)
        if residues:
            if self.rec_id is None or residues.translate(None, self.allowed):
                raise self._rejection(body, at_start=at_start)
            if self.star is not None or (self.protein and b"*" in residues):
                residues = self._without_stop(body, residues, at_start=at_start)
            self.seq += residues
        self.lineno += body.count(b"\n")

    def _locate(self, body: bytes, offset: int, *, at_start: bool) -> tuple[int, int]:
        nl = body.rfind(b"\n", 0, offset)
        column = offset - nl + (self.carry if nl < 0 and at_start else 0)
        return self.lineno + body.count(b"\n", 0, offset), column

    def _rejection(self, body: bytes, *, at_start: bool) -> FastaError:
        """The error for content outside a record or a letter ``kind`` does not allow."""
        # The first offending byte decides the message: binary, headerless or illegal.
        pattern = _CONTENT_RE if self.rec_id is None else self.illegal_re
        off = pattern.search(body).start()  # type: ignore[union-attr]
        line, col = self._locate(body, off, at_start=at_start)
        if _BINARY_RE.match(body, off):
            return _binary(self.path, line, f"byte {body[off]:#04x} in a sequence line",
                           self.rec_id)
        if self.rec_id is None:
            return _fail(self.path, line, f"no FASTA header before line {line}",
                         "the file must start with a '>' header line")
        return _fail(self.path, line, f"illegal character {chr(body[off])!r} at column {col} "
                     f"for kind '{self.kind}'",
                     "fix the sequence or choose the right kind (protein, dna, rna)", self.rec_id)

    def _without_stop(self, body: bytes, residues: bytes, *, at_start: bool) -> bytes:
        """``residues`` without a protein's trailing '*'; a '*' anywhere else is an error."""
        if self.star is None:
            self.star = self._locate(body, body.find(b"*"), at_start=at_start)
            if residues.find(b"*") == len(residues) - 1:
                return residues[:-1]
        raise _fail(self.path, self.star[0], f"'*' at column {self.star[1]} is not at the "
                    "end of the record", "only a single trailing '*' (stop) is allowed",
                    self.rec_id)


def _records(stream: IO[bytes], path: str, kind: str,
             seen_ids: set[str] | None) -> Iterator[FastaRecord]:
    parser = _RecordParser(path, kind, seen_ids)
    pending, eof = b"", False
    while not eof:
        chunk = _read(stream, path, parser.lineno)
        eof = not chunk
        data = pending + chunk if pending else chunk
        # Only a header must be complete before it is parsed: hold back a partial one.
        cut = parser.partial_header_at(data, eof=eof)
        data, pending = (data[:cut], data[cut:]) if cut < len(data) else (data, b"")
        yield from parser.feed(data)
    yield parser.last_record()


def _check_exists(path: PathArg) -> str:
    name = os.fspath(path)
    if not os.path.exists(name):
        raise InputError(f"{name}: file not found; check the path")
    return name


def read_fasta(path: PathArg, *, kind: str,
               seen_ids: set[str] | None = None) -> Iterator[FastaRecord]:
    """Yield validated records one by one; kind and existence are checked at call time."""
    _check_kind(kind)
    name = _check_exists(path)

    def generate() -> Iterator[FastaRecord]:
        with open_text_stream(name) as stream:
            yield from _records(stream, name, kind, seen_ids)

    return generate()


class FastaScan:
    """Validated records of one file, read once while hashing its bytes on disk (compressed
    or not); ``size`` and ``sha256`` are set when the iteration completes, and ``guess``:
    the kind its first residues look like (:func:`sniff_kind`'s rule), to check a kind the
    user gave against the content without reading the file again."""

    SAMPLE_LETTERS = 100_000

    def __init__(self, path: PathArg, *, kind: str, seen_ids: set[str] | None = None) -> None:
        _check_kind(kind)
        self.path = _check_exists(path)
        self.kind, self.seen_ids = kind, seen_ids
        self.size: int | None = None
        self.sha256: str | None = None
        self.guess: KindGuess | None = None

    def __iter__(self) -> Iterator[FastaRecord]:
        hashing = _HashingRaw(_open_raw(self.path, buffering=0))
        sample = bytearray()
        with _wrap(io.BufferedReader(hashing, 1 << 20)) as stream:
            for record in _records(stream, self.path, self.kind, self.seen_ids):
                if len(sample) < self.SAMPLE_LETTERS:
                    sample += record.sequence[:self.SAMPLE_LETTERS - len(sample)].upper()
                yield record
            hashing.drain()
        self.size, self.sha256 = hashing.nbytes, hashing.sha256.hexdigest()
        self.guess = classify_letters(bytes(sample))


def scan_fasta(path: PathArg, *, kind: str | None = None,
               seen_ids: set[str] | None = None) -> FastaSummary:
    """Validate the whole file in one pass, hashing its on-disk bytes along the way."""
    name = _check_exists(path)
    detected = kind is None
    if kind is None:
        kind = detect_kind(name)
    scan = FastaScan(name, kind=kind, seen_ids=seen_ids)
    records = [RecordInfo(r.id, r.description, r.length, r.line, r.ordinal) for r in scan]
    return FastaSummary(os.path.abspath(name), scan.size, scan.sha256,  # type: ignore[arg-type]
                        kind, detected, records)
