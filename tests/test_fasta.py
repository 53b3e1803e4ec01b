"""Tests for seqatlas.fasta."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest

from seqatlas.errors import FastaError, InputError
from seqatlas import fasta as fasta_module
from seqatlas.fasta import (
    KINDS,
    NUCLEOTIDE_LETTERS,
    PROTEIN_LETTERS,
    FastaRecord,
    FastaScan,
    detect_kind,
    open_text_stream,
    read_fasta,
    scan_fasta,
    soft_mask,
)

PROTEINS = b">sp|P1|A first protein\nMKVL\nAAGW\n>P2\nMSTNP\n"


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def records(path: Path, kind: str = "protein") -> list[FastaRecord]:
    return list(read_fasta(path, kind=kind))


def assert_error(exc: pytest.ExceptionInfo, path: Path, line: int,
                 record: str | None = None) -> str:
    msg = str(exc.value)
    assert path.name in msg
    assert f"line {line}" in msg
    if record is not None:
        assert f"'{record}'" in msg
    return msg


def test_constants() -> None:
    assert KINDS == ("protein", "dna", "rna")
    assert PROTEIN_LETTERS == "ACDEFGHIKLMNPQRSTVWYXBZUOJ"
    assert set(NUCLEOTIDE_LETTERS) == set("ACGTUNRYSWKMBDHV")


def test_multi_record_wrapped(tmp_path: Path) -> None:
    recs = records(write(tmp_path, "p.fa", PROTEINS))
    assert [r.id for r in recs] == ["sp|P1|A", "P2"]
    assert [r.description for r in recs] == ["first protein", ""]
    assert [r.sequence for r in recs] == [b"MKVLAAGW", b"MSTNP"]
    assert [r.line for r in recs] == [1, 4]
    assert [r.ordinal for r in recs] == [0, 1]
    assert recs[0].length == 8


def test_crlf_blank_lines_spaces(tmp_path: Path) -> None:
    data = b"\r\n\n>a  some  text \r\nAC GT\r\n\tNN\r\n\r\n\n>b\r\nacg\r\n\n"
    recs = records(write(tmp_path, "c.fa", data), "dna")
    assert [(r.id, r.description, r.sequence, r.line) for r in recs] == [
        ("a", "some  text", b"ACGTNN", 3), ("b", "", b"acg", 8)]


def test_lowercase_preserved_and_soft_mask(tmp_path: Path) -> None:
    (rec,) = records(write(tmp_path, "m.fa", b">x\nACgtN\nnA\n"), "dna")
    assert rec.sequence == b"ACgtNnA"
    mask = soft_mask(rec.sequence)
    assert mask.dtype == np.bool_
    assert mask.tolist() == [False, False, True, True, False, True, False]


def test_no_final_newline(tmp_path: Path) -> None:
    (rec,) = records(write(tmp_path, "n.fa", b">x\nMK\nVL"))
    assert rec.sequence == b"MKVL"


@pytest.mark.parametrize("name", ["p.fa.gz", "p.fa"])
def test_gzip_by_magic(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, name, gzip.compress(PROTEINS))
    assert [r.sequence for r in records(path)] == [b"MKVLAAGW", b"MSTNP"]
    with open_text_stream(path) as stream:
        assert stream.read() == PROTEINS


def test_multi_member_gzip(tmp_path: Path) -> None:
    data = gzip.compress(b">a\nMK\nV") + gzip.compress(b"L\n>b\nWW\n")
    path = write(tmp_path, "bg.fa.gz", data)
    assert [(r.id, r.sequence) for r in records(path)] == [("a", b"MKVL"), ("b", b"WW")]


def test_trailing_stop_dropped(tmp_path: Path) -> None:
    recs = records(write(tmp_path, "s.fa", b">a\nMKV\nL*\n\n>b\nMW*\n"))
    assert [r.sequence for r in recs] == [b"MKVL", b"MW"]


def test_detect_kind(tmp_path: Path) -> None:
    assert detect_kind(write(tmp_path, "p.fa", PROTEINS)) == "protein"
    assert detect_kind(write(tmp_path, "d.fa", b">a\nACGTNacgtACGTACGTRY\n>b\nGGCC\n")) == "dna"
    assert detect_kind(write(tmp_path, "r.fa", b">a\nACGUacgu\n")) == "rna"
    assert detect_kind(write(tmp_path, "g.fa.gz", gzip.compress(b">a\nACGT\n"))) == "dna"
    # fewer than 90% ACGTUN: a protein made of IUPAC-looking letters
    assert detect_kind(write(tmp_path, "x.fa", b">a\nMKVWSSSSDDDD\n")) == "protein"


def test_detect_kind_sample_limit(tmp_path: Path) -> None:
    path = write(tmp_path, "l.fa", b">a\n" + b"ACGT\n" * 10 + b">b\nMEEPQ\n")
    assert detect_kind(path, sample_letters=40) == "dna"
    assert detect_kind(path) == "protein"


@pytest.mark.parametrize("data", [b"", b"\n\n", b"hello\n", b">a\n\n"])
def test_detect_kind_rejects(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(FastaError):
        detect_kind(write(tmp_path, "e.fa", data))


def test_header_without_id(tmp_path: Path) -> None:
    path = write(tmp_path, "h.fa", b">a\nMK\n>   \nMK\n")
    with pytest.raises(FastaError) as exc:
        records(path)
    assert "no record id" in assert_error(exc, path, 3)


def test_content_before_header(tmp_path: Path) -> None:
    path = write(tmp_path, "t.txt", b"\n\nsome plain text\n>a\nMK\n")
    with pytest.raises(FastaError) as exc:
        records(path)
    assert "no FASTA header before line 3" in assert_error(exc, path, 3)


@pytest.mark.parametrize(("data", "record", "line"), [
    (b">a\nMK\n>b\n>c\nMK\n", "b", 3),
    (b">a\nMK\n>b\n\n", "b", 3),
    (b">a\nMK\n>b\n*\n", "b", 3),
])
def test_empty_record(tmp_path: Path, data: bytes, record: str, line: int) -> None:
    path = write(tmp_path, "e.fa", data)
    with pytest.raises(FastaError) as exc:
        records(path)
    assert "empty record" in assert_error(exc, path, line, record)


def test_duplicate_within_file(tmp_path: Path) -> None:
    path = write(tmp_path, "d.fa", b">a\nMK\n>b\nMK\n>a x\nMK\n")
    with pytest.raises(FastaError) as exc:
        records(path)
    assert "line 1" in assert_error(exc, path, 5, "a")


def test_duplicate_across_files(tmp_path: Path) -> None:
    seen: set[str] = set()
    one = write(tmp_path, "one.fa", b">a\nMK\n>b\nMK\n")
    two = write(tmp_path, "two.fa", b">c\nMK\n>b\nMK\n")
    assert len(records_seen(one, seen)) == 2
    assert seen == {"a", "b"}
    with pytest.raises(FastaError) as exc:
        records_seen(two, seen)
    assert_error(exc, two, 3, "b")


def records_seen(path: Path, seen: set[str]) -> list[FastaRecord]:
    return list(read_fasta(path, kind="protein", seen_ids=seen))


@pytest.mark.parametrize(("kind", "data", "char", "line", "column"), [
    ("dna", b">chr1\nACGT\nACXT\n", "'X'", 3, 3),
    ("rna", b">r\r\nACGU\r\nAC-U\r\n", "'-'", 3, 3),
    ("protein", b">p\nMKV\n  MK1V\n", "'1'", 3, 5),
    ("protein", b">p\nMK*V\n", "'*'", 2, 3),
    ("protein", b">p\nMK*\nV\n", "'*'", 2, 3),
    ("protein", b">p\nMK**\n", "'*'", 2, 3),
    ("dna", b">p\nACGT*\n", "'*'", 2, 5),
])
def test_illegal_character(tmp_path: Path, kind: str, data: bytes, char: str,
                           line: int, column: int) -> None:
    path = write(tmp_path, "i.fa", data)
    with pytest.raises(FastaError) as exc:
        records(path, kind)
    msg = assert_error(exc, path, line, data[1:].split()[0].decode())
    assert char in msg and f"column {column}" in msg


@pytest.mark.parametrize(("data", "line"), [
    (b">a\nMK\nM\x00K\n", 3),
    (b">a\nMK\nM\xc3\xa9K\n", 3),
    (b">a caf\xe9\nMK\n", 1),  # Latin-1, not UTF-8
    (b"\x89PNG\r\n\x1a\n\x00\x00", 1),
])
def test_binary_input(tmp_path: Path, data: bytes, line: int) -> None:
    path = write(tmp_path, "b.fa", data)
    with pytest.raises(FastaError) as exc:
        records(path)
    assert "binary or non-FASTA input" in assert_error(exc, path, line)


def test_utf8_header_is_kept(tmp_path: Path) -> None:
    path = write(tmp_path, "u.fa", ">a caf\xc3\xa9 \xce\xb1-helix\nMK\n".encode("latin-1"))
    (record,) = records(path)
    assert record.description == "café α-helix"


def test_corrupt_gzip(tmp_path: Path) -> None:
    body = b">a\nMK\n" + b">b\n" + b"MKVL\n" * 1000
    whole = gzip.compress(body)
    path = write(tmp_path, "z.fa.gz", whole[: len(whole) // 2])
    with pytest.raises(FastaError) as exc:
        records(path)
    assert "binary or non-FASTA input" in assert_error(exc, path, 1)
    garbage = write(tmp_path, "g.fa.gz", b"\x1f\x8b" + b"\xff" * 50)
    with pytest.raises(FastaError) as exc:
        records(garbage)
    assert "binary or non-FASTA input" in assert_error(exc, garbage, 1)


@pytest.mark.parametrize("data", [b"", b"\n \n\r\n"])
def test_no_records(tmp_path: Path, data: bytes) -> None:
    path = write(tmp_path, "empty.fa", data)
    with pytest.raises(FastaError) as exc:
        records(path)
    assert "no FASTA records" in str(exc.value) and path.name in str(exc.value)


def test_bad_kind_and_missing_file(tmp_path: Path) -> None:
    path = write(tmp_path, "p.fa", PROTEINS)
    with pytest.raises(FastaError, match="kind"):
        read_fasta(path, kind="peptide")
    with pytest.raises(FastaError, match="kind"):
        scan_fasta(path, kind="DNAX")
    missing = tmp_path / "nope.fa"
    for call in (lambda: read_fasta(missing, kind="dna"), lambda: scan_fasta(missing),
                 lambda: detect_kind(missing), lambda: open_text_stream(missing)):
        with pytest.raises(InputError, match="nope.fa"):
            call()


def test_streaming_is_lazy(tmp_path: Path) -> None:
    path = write(tmp_path, "lazy.fa", b">a\nMK\n>b\nVL\n>c\nM?K\n")
    it = read_fasta(path, kind="protein")
    assert next(it).id == "a"
    assert next(it).id == "b"
    with pytest.raises(FastaError) as exc:
        next(it)
    assert_error(exc, path, 6, "c")


@pytest.mark.parametrize("compress", [False, True])
def test_scan_fasta(tmp_path: Path, compress: bool) -> None:
    data = b">x one\nACGT\nAC\n>y\nacgtnn\n"
    raw = gzip.compress(data) if compress else data
    path = write(tmp_path, "s.fa.gz" if compress else "s.fa", raw)
    summary = scan_fasta(path)
    assert summary.path == str(path.resolve())
    assert summary.size == len(raw)
    assert summary.sha256 == hashlib.sha256(raw).hexdigest()
    assert (summary.kind, summary.kind_detected) == ("dna", True)
    assert [(r.id, r.description, r.length, r.line, r.ordinal) for r in summary.records] == [
        ("x", "one", 6, 1, 0), ("y", "", 6, 4, 1)]
    forced = scan_fasta(path, kind="protein")
    assert (forced.kind, forced.kind_detected) == ("protein", False)


def test_fasta_scan_yields_sequences_and_hashes_the_bytes_on_disk(tmp_path: Path) -> None:
    raw = gzip.compress(b">a x\nACgt\n>b\nNNA\n")
    scan = FastaScan(write(tmp_path, "s.fa.gz", raw), kind="dna")
    assert (scan.size, scan.sha256) == (None, None)  # nothing is read before iterating
    assert [(r.id, r.description, r.sequence) for r in scan] == [("a", "x", b"ACgt"),
                                                                 ("b", "", b"NNA")]
    assert (scan.size, scan.sha256) == (len(raw), hashlib.sha256(raw).hexdigest())


def test_scan_fasta_large_hash_and_seen_ids(tmp_path: Path) -> None:
    seq = b"ACGT" * 600_000  # spans several read chunks
    data = b">big\n" + b"\n".join(seq[i:i + 80] for i in range(0, len(seq), 80)) + b"\n>s\nA\n"
    path = write(tmp_path, "big.fa", data)
    seen: set[str] = set()
    summary = scan_fasta(path, kind="dna", seen_ids=seen)
    assert summary.sha256 == hashlib.sha256(data).hexdigest()
    assert [r.length for r in summary.records] == [len(seq), 1]
    assert [r.line for r in summary.records] == [1, 2 + len(seq) // 80]
    assert seen == {"big", "s"}
    with pytest.raises(FastaError):
        scan_fasta(path, kind="dna", seen_ids=seen)


def test_long_single_line_record(tmp_path: Path) -> None:
    seq = b"ACGT" * 700_000  # one line longer than a read chunk
    path = write(tmp_path, "one.fa", b">a\n" + seq + b"\n>b\nAC*\n")
    with pytest.raises(FastaError) as exc:
        list(read_fasta(path, kind="dna"))
    assert "column 3" in assert_error(exc, path, 4, "b")
    path = write(tmp_path, "two.fa", b">a\n" + seq)
    (rec,) = records(path, "dna")
    assert rec.sequence == seq


@pytest.mark.parametrize("chunk", [1, 2, 3, 7])
def test_tiny_read_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    monkeypatch.setattr(fasta_module, "_CHUNK", chunk)
    data = b"\n>first one\r\nMKV\r\nLL*\n>second\nAC DE\n\n>third x\nWW"
    recs = records(write(tmp_path, "t.fa", data))
    assert [(r.id, r.description, r.sequence, r.line) for r in recs] == [
        ("first", "one", b"MKVLL", 2), ("second", "", b"ACDE", 5), ("third", "x", b"WW", 8)]
    path = write(tmp_path, "u.fa", b">a\nMKVLAAGW>x\n")
    with pytest.raises(FastaError) as exc:
        records(path)
    assert "'>' at column 9" in assert_error(exc, path, 2, "a")
    assert detect_kind(write(tmp_path, "d.fa", b">a b\nACGT\n>c\nACGU\n")) == "dna"
