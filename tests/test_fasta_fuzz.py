"""Fuzzing the FASTA reader: arbitrary bytes and mutations of valid FASTA (unicode, NUL and
invalid UTF-8 in headers, '>' alone, empty records, lowercase, '*' stops, gzip, CRLF, lines
longer than the reader's chunk, whitespace and digits inside sequence lines) give records or
a FastaError naming the file and the line, never another exception."""

from __future__ import annotations

import gzip
import hashlib
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqatlas.errors import FastaError
from seqatlas.fasta import (KINDS, NUCLEOTIDE_LETTERS, PROTEIN_LETTERS, detect_kind, read_fasta,
                            scan_fasta)

CHUNK = 1 << 20  # the reader's read size: long lines must cross it

HEADER_TEXT = st.text(alphabet=st.one_of(
    st.sampled_from(list("abcXYZ019_|.-:; \t=")),
    st.sampled_from(list("éαβ🧬中\u00a0\u2028\x85")),  # UTF-8, odd unicode whitespace
    st.characters(codec="utf-8")), max_size=24)
SEQ_LETTERS = st.sampled_from(list(PROTEIN_LETTERS + NUCLEOTIDE_LETTERS + "acgtunxmkv*-.0123 \t"))


@st.composite
def valid_fasta(draw) -> bytes:
    """FASTA-like text: mostly valid, with the odd characters valid files do not have."""
    newline = draw(st.sampled_from([b"\n", b"\r\n"]))
    width = draw(st.integers(1, 80))
    out = []
    for _ in range(draw(st.integers(0, 5))):
        header = draw(HEADER_TEXT).replace("\n", " ").replace("\r", " ")
        out.append(b">" + header.encode("utf-8", "surrogatepass") + newline)
        sequence = draw(st.text(alphabet=SEQ_LETTERS, max_size=200))
        if draw(st.booleans()):  # mostly clean residues
            sequence = "".join(c for c in sequence if c.isalpha())
        for i in range(0, len(sequence), width):
            out.append(sequence[i:i + width].encode() + newline)
        if draw(st.integers(0, 9)) == 0:
            out.append(newline)  # a blank line
    return b"".join(out)


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(valid_fasta()))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["insert", "delete", "replace", "gt", "long", "truncate",
                                   "duplicate"]))
        at = draw(st.integers(0, len(data)))
        if op == "insert":
            data[at:at] = draw(st.sampled_from([b"\x00", b"\xff", b"\xc3", b"\xe2\x82",
                                                b">", b">\n", b"\n>", b"\r", b"*", b"1",
                                                b" ", b"\t", b"\x0b", b"\n\n", "é".encode()]))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 20))]
        elif op == "replace" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif op == "gt":
            data[at:at] = b"\n>\n"
        elif op == "long":  # one line longer than the reader's chunk
            piece = draw(st.sampled_from([b"ACGT", b"acgtN", b"MKV", "é".encode(), b"x"]))
            data[at:at] = piece * (CHUNK // len(piece) + draw(st.integers(-2, 50)))
        elif op == "truncate":
            del data[at:]
        elif op == "duplicate":
            data += data[:at]
    if draw(st.integers(0, 4)) == 0:
        packed = gzip.compress(bytes(data), compresslevel=1)
        damage = draw(st.sampled_from(["none", "none", "truncate", "flip", "trailing"]))
        if damage == "truncate":
            packed = packed[:draw(st.integers(0, len(packed)))]
        elif damage == "flip":
            at = draw(st.integers(0, len(packed) - 1))
            packed = packed[:at] + bytes([packed[at] ^ 0xFF]) + packed[at + 1:]
        elif damage == "trailing":
            packed += draw(st.binary(max_size=12))
        return packed
    return bytes(data)


INPUTS = st.one_of(st.binary(max_size=400), mutated(), mutated(),
                   st.binary(max_size=40).map(lambda b: gzip.compress(b)))


def _allowed(kind: str) -> set[int]:
    letters = PROTEIN_LETTERS if kind == "protein" else NUCLEOTIDE_LETTERS
    return set((letters + letters.lower()).encode())


def _check_error(exc: FastaError, path) -> None:
    message = str(exc)
    assert str(path) in message, message
    assert re.search(r"\bline \d+", message), message


def _read_all(path, data: bytes) -> None:
    sha256 = hashlib.sha256(data).hexdigest()
    readable = False
    for kind in KINDS:
        try:
            records = list(read_fasta(path, kind=kind))
        except FastaError as exc:
            _check_error(exc, path)
            records = None
        try:
            summary = scan_fasta(path, kind=kind)
        except FastaError as exc:
            _check_error(exc, path)
            assert records is None, "read_fasta accepted what scan_fasta refused"
            continue
        assert records is not None, "scan_fasta accepted what read_fasta refused"
        readable = True
        assert (summary.sha256, summary.size) == (sha256, len(data))
        assert [(r.id, r.length) for r in summary.records] == \
            [(r.id, r.length) for r in records]
        allowed = _allowed(kind)
        assert records and len({r.id for r in records}) == len(records)
        for r in records:
            assert r.id and not any(c.isspace() for c in r.id) and "\x00" not in r.id
            assert r.length > 0 and set(r.sequence) <= allowed, r.sequence[:50]
    try:
        kind = detect_kind(path)
    except FastaError as exc:
        _check_error(exc, path)
        assert not readable, f"a readable file was refused by detect_kind: {exc}"
    else:
        assert kind in KINDS
        try:
            assert scan_fasta(path).kind == kind
        except FastaError as exc:
            _check_error(exc, path)


@settings(max_examples=2000, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.large_base_example])
@given(data=INPUTS)
def test_the_reader_gives_records_or_a_fasta_error(tmp_path_factory, data):
    path = tmp_path_factory.getbasetemp() / "fuzz.fa"
    path.write_bytes(data)
    _read_all(path, data)


@st.composite
def clean_records(draw):
    ids = draw(st.lists(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=(
        "Zs", "Zl", "Zp", "Cc", "Cs")), min_size=1, max_size=12).filter(
        lambda t: not t.startswith(">") and not any(c.isspace() for c in t)),
        min_size=1, max_size=4, unique=True))
    kind = draw(st.sampled_from(KINDS))
    letters = {"protein": PROTEIN_LETTERS, "dna": "ACGTN", "rna": "ACGUN"}[kind]
    records = [(i, draw(HEADER_TEXT.map(lambda t: " ".join(t.replace("\x00", "").split()))),
                draw(st.text(alphabet=st.sampled_from(list(letters + letters.lower())),
                             min_size=1, max_size=150))) for i in ids]
    return kind, records, draw(st.sampled_from(["\n", "\r\n"])), draw(st.integers(1, 70)), \
        draw(st.booleans())


@settings(max_examples=300, deadline=None, database=None)
@given(case=clean_records())
def test_valid_fasta_reads_back_exactly(tmp_path_factory, case):
    kind, records, newline, width, packed = case
    text = "".join(f">{i}{' ' + d if d else ''}{newline}" + "".join(
        s[k:k + width] + newline for k in range(0, len(s), width)) for i, d, s in records)
    data = text.encode()
    path = tmp_path_factory.getbasetemp() / "clean.fa.gz"
    path.write_bytes(gzip.compress(data) if packed else data)
    got = list(read_fasta(path, kind=kind))
    assert [(r.id, r.description, r.sequence.decode()) for r in got] == \
        [(i, d, s) for i, d, s in records]


@pytest.mark.parametrize("data, line", [
    (b">ok\nACGT\n>bad\x00id\nACGT\n", 3),
    (b">ok\nACGT\n>caf\xe9\nACGT\n", 3),  # Latin-1, not UTF-8
    (b">ok\nACGT\n>x\nAC\x00GT\n", 4),
    (b">ok\nAC\xc3\xa9GT\n", 2),  # UTF-8 is for headers only
])
def test_binary_is_refused_naming_file_and_line(tmp_path, data, line):
    path = tmp_path / "b.fa"
    for payload in (data, gzip.compress(data)):
        path.write_bytes(payload)
        for call in (lambda: list(read_fasta(path, kind="dna")), lambda: scan_fasta(path),
                     lambda: detect_kind(path)):
            with pytest.raises(FastaError, match=rf"{re.escape(str(path))}, line {line}\b"):
                call()


def test_gzip_damage_is_a_fasta_error(tmp_path):
    packed = gzip.compress(b">a\n" + b"ACGT" * 5000 + b"\n")
    path = tmp_path / "d.fa.gz"
    for broken in (packed[:-9], packed[:30], packed[:12] + bytes(40) + packed[52:],
                   packed + b"\x1f\x8bjunk"):
        path.write_bytes(broken)
        with pytest.raises(FastaError, match="gzip|binary"):
            scan_fasta(path, kind="dna")
