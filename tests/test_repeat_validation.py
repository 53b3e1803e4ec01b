"""Repeat importers validate every line: a malformed one is an InputError naming the file and
the line, never a traceback or a silently wrong row. One table of bad lines per format, the
edge cases that must still parse (CRLF, byte order mark, comments, '.' scores, GFF3
percent-escapes), and a fuzz test per format that allows only valid rows or an InputError."""

from __future__ import annotations

import gzip
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqatlas.errors import InputError
from seqatlas.repeats import formats
from seqatlas.repeats.formats import FORMATS, detect_format, parse_repeats, read_repeats

MAX_COORD = 2 ** 62
ONE_BASED = {"repeatmasker", "trf-dat", "trf-ngs", "gff3"}


@dataclass(frozen=True)
class Spec:
    """A format: a valid file, one of its data lines split into columns, and which column is
    which (None: the format has no such column on its data lines)."""

    file_name: str
    header: str  # the lines before the data lines
    fields: tuple[str, ...]  # one valid data line
    sep: str  # "\t" or " "
    counts: tuple[int, int | None]  # the fewest and most columns allowed (None: no limit)
    start: int
    end: int
    seq: int | None
    name: int | None
    score: int | None = None
    strand: int | None = None

    @property
    def line(self) -> str:
        return self.sep.join(self.fields)

    @property
    def text(self) -> str:
        return self.header + self.line + "\n"

    def with_fields(self, changes: dict[int, str]) -> str:
        return self.sep.join(changes.get(i, f) for i, f in enumerate(self.fields))


RM_HEADER = (
    "   SW   perc perc perc  query     position in query    matching  repeat          "
    "position in repeat\n"
    "score   div. del. ins.  sequence  begin end   (left)   repeat    class/family  begin  end "
    " (left)  ID\n\n")
TRF_PREAMBLE = ("Tandem Repeats Finder Program written by:\n\nGary Benson\nProgram in "
                "Bioinformatics\nBoston University\nVersion 4.09\n\n\n")
TRF_DAT_HEADER = (TRF_PREAMBLE + "Sequence: chr7 some description\n\n\n\n"
                  "Parameters: 2 7 7 80 10 50 500\n\n\n")

SPECS = {
    "repeatmasker": Spec(
        "a.out", RM_HEADER,
        ("3612", "11.4", "21.5", "1.3", "chr1", "10469", "11447", "(248945)", "C", "TAR1",
         "Satellite/telo", "(399)", "1712", "483", "2", "*"),
        " ", (15, 16), start=5, end=6, seq=4, name=9, score=0, strand=8),
    "ucsc-rmsk": Spec(
        "rmsk.txt",
        "#bin\tswScore\tmilliDiv\tmilliDel\tmilliIns\tgenoName\tgenoStart\tgenoEnd\tgenoLeft\t"
        "strand\trepName\trepClass\trepFamily\trepStart\trepEnd\trepLeft\tid\n",
        ("585", "3612", "114", "215", "13", "chr1", "10468", "11447", "-248945", "-", "TAR1",
         "Satellite", "telo", "-399", "1712", "483", "2"),
        "\t", (17, 17), start=6, end=7, seq=5, name=10, score=1, strand=9),
    "ucsc-simplerepeat": Spec(
        "simpleRepeat.txt", "",
        ("585", "chr1", "10000", "10468", "trf", "6", "77.2", "6", "95", "3", "789", "33", "51",
         "0", "15", "1.43", "TAACCC"),
        "\t", (17, 17), start=2, end=3, seq=1, name=16, score=10),
    "trf-dat": Spec(
        "x.dat", TRF_DAT_HEADER,
        ("11", "46", "6", "6.0", "6", "100", "0", "72", "33", "50", "0", "16", "1.46", "CACCCA",
         "CACCCACACCCACACCCACACCCACACCCACACCCA"),
        " ", (15, 15), start=0, end=1, seq=None, name=13, score=7),
    "trf-ngs": Spec(
        "x.ngs", "@chrX  gi|224589822|ref|NC_000023.10|\n",
        ("60001", "60038", "6", "6.3", "6", "100", "0", "76", "31", "50", "0", "18", "1.47",
         "CTAACC", "CTAACCCTAACCCTAACCCTAACCCTAACCCTAACCCT", ".", "ACGT"),
        " ", (17, 17), start=0, end=1, seq=None, name=13, score=7),
    "tantan-f4": Spec(
        "t.tsv", "", ("chr2", "100", "140", "4", "10", "ACGT", "ACGT,ACGT"),
        "\t", (6, 7), start=1, end=2, seq=0, name=5),
    "tantan-f3": Spec(
        "x.tantan.bed", "", ("s1", "105", "221"), "\t", (3, 3), start=1, end=2, seq=0,
        name=None),
    "bed": Spec(
        "r.bed", "track name=reps\nbrowser position chr3:1-100\n# a comment\n",
        ("chr3", "30", "60", "AluY", "900", "-"),
        "\t", (3, None), start=1, end=2, seq=0, name=3, score=4, strand=5),
    "gff3": Spec(
        "r.gff3", "##gff-version 3\n##sequence-region chr4 1 1000\n",
        ("chr4", "RepeatMasker", "repeat_region", "101", "200", "350", "+", ".",
         "ID=r1;Name=L2;rpt_type=LINE;rpt_family=L2"),
        "\t", (9, 9), start=3, end=4, seq=0, name=8, score=5, strand=6),
}

# what each valid file above reads as: (seq_id, start, end, strand, name, class, family, score)
EXPECTED = {
    "repeatmasker": ("chr1", 10468, 11447, "-", "TAR1", "Satellite", "telo", 3612.0),
    "ucsc-rmsk": ("chr1", 10468, 11447, "-", "TAR1", "Satellite", "telo", 3612.0),
    "ucsc-simplerepeat": ("chr1", 10000, 10468, None, "TAACCC", "Simple_repeat", "period_6",
                          789.0),
    "trf-dat": ("chr7", 10, 46, None, "CACCCA", "Tandem_repeat", "period_6", 72.0),
    "trf-ngs": ("chrX", 60000, 60038, None, "CTAACC", "Tandem_repeat", "period_6", 76.0),
    "tantan-f4": ("chr2", 100, 140, None, "ACGT", "Tandem_repeat", "period_4", None),
    "tantan-f3": ("s1", 105, 221, None, None, "Tandem_repeat", None, None),
    "bed": ("chr3", 30, 60, "-", "AluY", None, None, 900.0),
    "gff3": ("chr4", 100, 200, "+", "L2", "LINE", "L2", 350.0),
}

COLUMNS = ("seq_id", "start", "end", "strand", "name", "class", "family", "score")


def _rows(table) -> list[tuple]:
    return [tuple(r[c] for c in COLUMNS) for r in table.to_pylist()]


def _write(tmp_path: Path, name: str, data: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _bad_lines(fmt: str) -> list[tuple[str, bytes]]:
    """(what is wrong, the line) for every class of malformed line that applies to ``fmt``."""
    spec = SPECS[fmt]
    tabs = spec.sep == "\t"

    def line(**changes) -> bytes:
        return spec.with_fields({getattr(spec, k): v for k, v in changes.items()}).encode()

    def raw(index: int, value: bytes) -> bytes:
        fields = [f.encode() for f in spec.fields]
        fields[index] = value
        return spec.sep.encode().join(fields)

    cases = [
        ("start after end", line(start="200", end="100")),
        ("end 10**20 (past int64)", line(end="1" + "0" * 20)),
        ("end 2**62", line(end=str(MAX_COORD))),
        ("end 2**63", line(end=str(2 ** 63))),
        ("end with 5000 digits", line(end="9" * 5000)),
        ("negative start", line(start="-5")),
        ("negative end", line(end="-5")),
    ]
    if fmt in ONE_BASED:
        cases += [("start 0 in a 1-based format", line(start="0", end="10")),
                  ("one past: start = end + 1", line(start="101", end="100"))]
    elif fmt != "tantan-f4":  # tantan -f4 keeps a zero-length repeat (tests/test_repeats.py)
        cases.append(("empty interval: start == end", line(start="100", end="100")))
    for text in ["1e5", "12.0", "+12", "0x10", "1_000", "\u0661\u0662", "twelve", "12a"] + \
            ([" 12", "12 ", ""] if tabs else []):
        cases.append((f"coordinate {text!r}", line(start=text)))
        cases.append((f"coordinate {text!r} as end", line(end=text)))
    if spec.score is not None:
        for text in ["high", "nan", "inf", "-inf", "1e999", "0x1p3", "1,5"] + \
                (["", " 1"] if tabs else []):
            cases.append((f"score {text!r}", line(score=text)))
    if spec.strand is not None:
        for text in ["X", "++", "+-"] + ([""] if tabs else []):
            cases.append((f"strand {text!r}", line(strand=text)))
        cases.append(("strand from another format's alphabet",
                      line(strand={"repeatmasker": "-", "ucsc-rmsk": "."}.get(fmt, "C"))))
    if spec.seq is not None:
        cases.append(("NUL in the sequence name", raw(spec.seq, b"chr\x001")))
        cases.append(("invalid UTF-8 in the sequence name", raw(spec.seq, b"chr\xff1")))
        if tabs:
            cases.append(("empty sequence name", line(seq="")))
            cases.append(("sequence name with a space", line(seq="chr 1")))
    named = spec.name if spec.name is not None else spec.seq
    cases += [
        ("invalid UTF-8 in the name", raw(named, spec.fields[named].encode() + b"\xc3")),
        ("an encoded surrogate (not UTF-8)", raw(named, b"A\xed\xa0\x80")),
        ("overlong UTF-8", raw(named, b"A\xc0\xaf")),
        ("a lone CR inside the line", raw(named, spec.fields[named].encode() + b"\rX")),
        ("a NUL byte", raw(named, b"\x00")),
        ("a byte order mark inside the file", raw(named, b"\xef\xbb\xbf" +
                                                   spec.fields[named].encode())),
        ("a control character", raw(named, b"A\x1bB")),
    ]
    fewest, most = spec.counts
    cases.append((f"{fewest - 1} columns", spec.sep.join(spec.fields[:fewest - 1]).encode()))
    if most is not None:
        extra = spec.fields + ("x",) * (most + 1 - len(spec.fields))
        cases.append((f"{most + 1} columns", spec.sep.join(extra).encode()))
    if tabs:
        cases.append(("spaces instead of tabs", spec.line.replace("\t", " ").encode()))
    cases += {
        "repeatmasker": lambda: [
            ("a 16th column that is not '*'", spec.line.replace(" *", " x").encode()),
            ("14 columns (no ID)", " ".join(spec.fields[:14]).encode()),
            ("query (left) not in parentheses", raw(7, b"248945")),
            ("perc div. not a number", raw(1, b"high")),
            ("text in the score, line not skipped as a header", raw(0, b"abc")),
            ("ID not a number", raw(14, b"x")),
        ],
        "ucsc-rmsk": lambda: [("bin not a number", raw(0, b"x")), ("genoLeft text", raw(8, b"x")),
                      ("repStart text", raw(13, b"1.5"))],
        "ucsc-simplerepeat": lambda: [("period 0", raw(5, b"0")), ("period text", raw(5, b"six")),
                              ("copyNum text", raw(6, b"many"))],
        "trf-dat": lambda: [("13 columns", b" ".join(f.encode() for f in spec.fields[:13])),
                    ("an -ngs line (17 columns)", spec.line.encode() + b" . ACGT"),
                    ("period 0", raw(2, b"0")), ("entropy text", raw(12, b"high")),
                    ("text where a repeat line belongs", b"Repeats follow: 3"),
                    ("a header without a name", b"Sequence:   ")],
        "trf-ngs": lambda: [("a .dat line (15 columns)", " ".join(spec.fields[:15]).encode()),
                    ("a .dat header in -ngs output", b"Sequence: chr7"),
                    ("an '@' header without a name", b"@"),
                    ("text where a repeat line belongs", b"Parameters: 2 7 7 80 10 50 500")],
        "tantan-f4": lambda: [("period 0", raw(3, b"0")), ("copies text", raw(4, b"many")),
                      ("empty unit", raw(5, b""))],
        "tantan-f3": lambda: [("tantan -f4 line", SPECS["tantan-f4"].line.encode())],
        "bed": lambda: [("2 columns", b"chr3\t30")],
        "gff3": lambda: [
            ("phase 3", raw(7, b"3")),
            ("attribute without '='", raw(8, b"ID=r1;Name")),
            ("attribute without a tag", raw(8, b"ID=r1;=L2")),
            ("invalid percent-escape %ZZ", raw(8, b"Name=Alu%ZZ")),
            ("truncated percent-escape", raw(8, b"Name=Alu%4")),
            ("a lone %", raw(8, b"Name=100%")),
            ("escapes that are not UTF-8", raw(8, b"Name=Alu%FF")),
            ("an escaped tab in the name", raw(8, b"Name=Alu%09Y")),
            ("an escaped space in the seqid", raw(0, b"chr%204")),
            ("a non-repeat feature with start after end",
             b"chr4\tmaker\tgene\t500\t100\t.\t+\t.\tID=g1"),
            ("a non-repeat feature with strand X", b"chr4\tmaker\tgene\t1\t100\t.\tX\t.\tID=g1"),
        ],
    }[fmt]()
    return cases


BAD = [(fmt, what, bad) for fmt in FORMATS for what, bad in _bad_lines(fmt)]


@pytest.mark.parametrize(("fmt", "what", "bad"), BAD,
                         ids=[f"{fmt}: {what}" for fmt, what, _ in BAD])
def test_bad_line_names_file_and_line(tmp_path, fmt, what, bad):
    spec = SPECS[fmt]
    good = spec.text.encode()
    # the bad line between two good ones: the error must name it, not the end of the file
    path = _write(tmp_path, "bad-" + spec.file_name, good + bad + b"\n" + spec.line.encode()
                  + b"\n")
    line = spec.text.count("\n") + 1
    with pytest.raises(InputError) as exc:
        read_repeats(path, format=fmt)
    message = str(exc.value)
    assert str(path) in message and f"line {line}:" in message, message
    # the same line as a program's output (str lines, as the finders stream them)
    lines = (good + bad).decode("utf-8", "surrogateescape").split("\n")
    with pytest.raises(InputError, match=rf"^the output of `x`, line {line}: "):
        parse_repeats(lines, format=fmt, label="the output of `x`")


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_reads_its_valid_file(tmp_path, fmt):
    spec = SPECS[fmt]
    path = _write(tmp_path, spec.file_name, spec.text)
    assert detect_format(path) == fmt
    assert _rows(read_repeats(path)) == [EXPECTED[fmt]]
    assert read_repeats(path)["source"].to_pylist() == [fmt]


@pytest.mark.parametrize("fmt", FORMATS)
def test_crlf_bom_blank_lines_and_gzip_read_the_same(tmp_path, fmt):
    spec = SPECS[fmt]
    expected = [EXPECTED[fmt]] * 2
    text = spec.text + "\n" + spec.line + "\n"
    variants = {
        "crlf": text.replace("\n", "\r\n").encode(),
        "bom": b"\xef\xbb\xbf" + text.encode(),
        "bom-crlf": b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode(),
        "no-final-newline": text.rstrip("\n").encode(),
        "gzip": gzip.compress(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode()),
    }
    for variant, data in variants.items():
        path = _write(tmp_path, f"{variant}.{spec.file_name}", data)
        assert detect_format(path) == fmt, variant
        assert _rows(read_repeats(path, format=fmt)) == expected, variant


def test_invalid_utf8_in_gzip_names_the_line(tmp_path):
    data = gzip.compress(b"chr1\t1\t5\tok\nchr1\t5\t9\tAlu\xe9Y\n")
    path = _write(tmp_path, "latin1.bed.gz", data)
    with pytest.raises(InputError, match=r"latin1\.bed\.gz, line 2: not UTF-8 text: byte 0xe9"):
        read_repeats(path, format="bed")
    with pytest.raises(InputError, match=r"latin1\.bed, line 2: not UTF-8"):
        detect_format(_write(tmp_path, "latin1.bed", b"chr1\t1\t5\nchr1\t5\t9\tAlu\xe9Y\n"))


def test_utf8_names_are_kept(tmp_path):
    path = _write(tmp_path, "u.bed", "chr1\t1\t5\tAlu\u00e9\u4e00\U0001F9EC\t.\t+\n")
    assert _rows(read_repeats(path)) == [("chr1", 1, 5, "+", "Alu\u00e9\u4e00\U0001F9EC", None,
                                          None, None)]


def test_largest_coordinate_is_accepted(tmp_path):
    path = _write(tmp_path, "big.bed", f"chr1\t{MAX_COORD - 2}\t{MAX_COORD - 1}\n")
    assert _rows(read_repeats(path)) == [("chr1", MAX_COORD - 2, MAX_COORD - 1, None, None,
                                          None, None, None)]
    path = _write(tmp_path, "zeros.bed", "chr1\t0000000000000000000000005\t0010\n")
    assert _rows(read_repeats(path))[0][1:3] == (5, 10)


def test_bed_edge_lines(tmp_path):
    text = ("browser hide all\n"
            "track name=reps description=\"x\"\n"
            "#chrom\tstart\tend\n"
            "\n"
            "track1\t0\t10\n"  # a sequence called track1, not a track line
            "chr1\t5\t20\t.\t.\t.\n"
            "chr1\t5\t20\tR\t12.5\t+\n"
            "chr1\t5\t20\tR\t1e3\t-\t5\t20\t0,0,0\n"
            "chr1\t5\t20\tR\t-3\t.\textra\tcolumns\n"
            "chr1\t5\t20\t\n")  # an empty name
    rows = _rows(read_repeats(_write(tmp_path, "e.bed", text)))
    assert rows == [("track1", 0, 10, None, None, None, None, None),
                    ("chr1", 5, 20, None, None, None, None, None),
                    ("chr1", 5, 20, "+", "R", None, None, 12.5),
                    ("chr1", 5, 20, "-", "R", None, None, 1000.0),
                    ("chr1", 5, 20, None, "R", None, None, -3.0),
                    ("chr1", 5, 20, None, None, None, None, None)]


def test_gff3_edge_lines(tmp_path):
    text = ("##gff-version 3\n"
            "##sequence-region chr%3B4 1 1000\n"
            "chr%3B4\tRM\trepeat_region\t1\t1\t.\t?\t.\tID=r1;Name=Alu%3BY\n"
            "chr4\tRM\ttandem_repeat\t10\t20\t1.5e2\t-\t.\tName=a%2Cb%3Dc%26d%25e;"
            "rpt_type=Simple%20repeat;rpt_family=%E4%B8%80; \n"
            "###\n"
            "chr4\tRM\tdispersed_repeat\t30\t40\t.\t.\t0\tID=r%3D3\n"
            "chr4\tmaker\tgene\t1\t1000\t.\t+\t.\tID=g1;Name=a%09tab;Note=any %2C\n"
            "chr4\tRM\tmicrosatellite\t50\t60\t.\t+\t.\t.\n"
            "##FASTA\n>chr4\nACGT\tnot a feature\n")
    rows = _rows(read_repeats(_write(tmp_path, "e.gff3", text)))
    assert rows == [
        ("chr;4", 0, 1, None, "Alu;Y", "repeat_region", None, None),
        ("chr4", 9, 20, "-", "a,b=c&d%e", "Simple repeat", "\u4e00", 150.0),
        ("chr4", 29, 40, None, "r=3", "dispersed_repeat", None, None),
        ("chr4", 49, 60, "+", None, "microsatellite", None, None)]
    # a FASTA section that starts without ##FASTA: parsing stops at the first '>'
    fasta = "##gff-version 3\n" + SPECS["gff3"].line + "\n>chr4\nACGT\n"
    assert _rows(read_repeats(_write(tmp_path, "f.gff3", fasta))) == [EXPECTED["gff3"]]


def test_repeatmasker_edge_lines(tmp_path):
    spec = SPECS["repeatmasker"]
    plus = "  463   1.3  0.0  0.0  chr1  10001 10468 (248946) +  (CCCTAA)n Simple_repeat  1 " \
           " 463    (0)    1"
    text = RM_HEADER + plus + "\n" + spec.line + "\n\t\n" + RM_HEADER + plus + "\n"
    rows = _rows(read_repeats(_write(tmp_path, "e.out", text)))
    assert rows == [("chr1", 10000, 10468, "+", "(CCCTAA)n", "Simple_repeat", None, 463.0),
                    EXPECTED["repeatmasker"],
                    ("chr1", 10000, 10468, "+", "(CCCTAA)n", "Simple_repeat", None, 463.0)]
    nothing = "There were no repetitive sequences detected in /data/x.fa\n"
    assert read_repeats(_write(tmp_path, "n.out", nothing), format="repeatmasker") \
        .num_rows == 0


def test_ucsc_edge_lines(tmp_path):
    spec = SPECS["ucsc-rmsk"]
    same = spec.with_fields({9: "+", 12: "Satellite"})  # family = class is no family
    rows = _rows(read_repeats(_write(tmp_path, "e.rmsk", spec.header + same + "\n")))
    assert rows == [("chr1", 10468, 11447, "+", "TAR1", "Satellite", None, 3612.0)]
    simple = SPECS["ucsc-simplerepeat"]
    header = "#bin\tchrom\tchromStart\tchromEnd\tname\tperiod\tcopyNum\tconsensusSize\t" \
             "perMatch\tperIndel\tscore\tA\tC\tG\tT\tentropy\tsequence\n"
    path = _write(tmp_path, "simpleRepeat.txt", header + simple.line + "\n")
    assert detect_format(path) == "ucsc-simplerepeat"
    assert _rows(read_repeats(path)) == [EXPECTED["ucsc-simplerepeat"]]


def test_trf_edge_lines(tmp_path):
    spec = SPECS["trf-dat"]
    text = spec.text + "\n\nSequence: chr8\n\n\n\nParameters: 2 7 7 80 10 50 500\n\n\n" \
        "1 10 2 5.0 2 100 0 20 50 50 0 0 1.00 AC ACACACACAC\n\n\nSequence: chr9\n\n\n\n" \
        "Parameters: 2 7 7 80 10 50 500\n\n\n"  # chr9: no repeats
    rows = _rows(read_repeats(_write(tmp_path, "e.dat", text)))
    assert rows == [EXPECTED["trf-dat"],
                    ("chr8", 0, 10, None, "AC", "Tandem_repeat", "period_2", 20.0)]
    with pytest.raises(InputError, match=r"before\.dat, line 9: repeat before any "
                                         r"'Sequence:' line"):
        read_repeats(_write(tmp_path, "before.dat", TRF_PREAMBLE + spec.line + "\n"),
                     format="trf-dat")
    with pytest.raises(InputError, match=r"before\.ngs, line 1: repeat before any '@' line"):
        read_repeats(_write(tmp_path, "before.ngs", SPECS["trf-ngs"].line + "\n"),
                     format="trf-ngs")


def test_tantan_keeps_a_zero_length_repeat(tmp_path):
    """The one exception to start < end, pinned by tests/test_repeats.py."""
    path = _write(tmp_path, "z.tsv", "chr2\t200\t200\t1\t0\tA\t\n")
    assert _rows(read_repeats(path, format="tantan-f4")) == [
        ("chr2", 200, 200, None, "A", "Tandem_repeat", "period_1", None)]
    with pytest.raises(InputError, match=r"z\.tantan, line 1: interval \[200, 200\) is empty"):
        read_repeats(_write(tmp_path, "z.tantan", "chr2\t200\t200\n"), format="tantan-f3")


def test_an_overlong_line_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "MAX_LINE_BYTES", 100)
    ok = "chr1\t1\t5\t" + "A" * 91 + "\n"  # 100 bytes before the newline
    path = _write(tmp_path, "long.bed", ok + "chr1\t1\t5\t" + "A" * 10_000 + "\n" + ok)
    with pytest.raises(InputError, match=r"long\.bed, line 2: line longer than 100 bytes"):
        read_repeats(path, format="bed")
    assert read_repeats(_write(tmp_path, "ok.bed", ok * 3), format="bed").num_rows == 3


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(InputError, match="unknown repeat format 'fasta'"):
        read_repeats(_write(tmp_path, "r.bed", "chr1\t1\t5\n"), format="fasta")
    with pytest.raises(InputError, match="no such file"):
        detect_format(tmp_path / "nothing.bed")
    with pytest.raises(InputError, match="no such file"):
        read_repeats(tmp_path)


def test_a_bad_line_commits_nothing(tmp_path, tiny_esm):
    import seqatlas
    from tests.conftest import random_protein, write_fasta

    fasta = write_fasta(tmp_path / "p.fa", {"X": random_protein(80, 1)})
    seqatlas.ingest(fasta, atlas=tmp_path / "a", model=str(tiny_esm), workers=0,
                    progress=False)
    bed = _write(tmp_path, "r.bed", "X\t5\t20\nX\t30\t40\nX\t50\t50\nX\t60\t70\n")
    with pytest.raises(InputError, match=r"r\.bed, line 3: interval \[50, 50\) is empty"):
        seqatlas.annotate(bed, atlas=tmp_path / "a")
    assert seqatlas.Atlas(tmp_path / "a").count("repeats") == 0
    assert not any(k.startswith("repeats-") for k in seqatlas.Atlas(tmp_path / "a")
                   .manifest["units"])


# ---------------------------------------------------------------------------------------------
# fuzz: arbitrary and mutated lines -> valid rows or an InputError, never anything else


SPECIAL = ["", ".", "-1", "0", "1", "nan", "inf", "-inf", "1e5", "1e999", "12.0", " 12", "+12",
           "\u0661\u0662", "0x10", "1_000", "*", "C", "+", "-", "?", "X", "%ZZ", "%3B", "%FF",
           "%", "%09", "a=b", ";", "=", str(MAX_COORD - 1), str(MAX_COORD), str(2 ** 63),
           str(10 ** 20), "9" * 30, "\u00e9", "\u00a0", "\u2028", "\ufeff", "\x00", "\t", " ",
           "\r", "Sequence:", "@", "#", "track", "##FASTA", ">x", "(12)", "(0);", "SW", "score",
           "Parameters:"]
BAD_BYTES = [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"\x00", b"\r", b"\xef\xbb\xbf",
             b"\x85", b"\xe9"]

field_values = st.one_of(
    st.sampled_from(SPECIAL).map(str.encode),
    st.text(max_size=12).map(str.encode),
    st.integers(-(2 ** 70), 2 ** 70).map(lambda n: str(n).encode()),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda x: repr(x).encode()),
    st.binary(max_size=6),
    st.sampled_from(BAD_BYTES),
)


@st.composite
def mutated_line(draw, fmt: str) -> bytes:
    """A valid data line of ``fmt`` with one to three mutations."""
    spec = SPECS[fmt]
    fields = [f.encode() for f in spec.fields]
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["replace", "replace", "replace", "drop", "duplicate",
                                   "swap", "append", "insert_bytes", "separator"]))
        i = draw(st.integers(0, len(fields) - 1)) if fields else 0
        if op == "replace" and fields:
            fields[i] = draw(field_values)
        elif op == "drop" and fields:
            del fields[i]
        elif op == "duplicate" and fields:
            fields.insert(i, fields[i])
        elif op == "swap" and len(fields) > 1:
            j = draw(st.integers(0, len(fields) - 1))
            fields[i], fields[j] = fields[j], fields[i]
        elif op == "append":
            fields.append(draw(field_values))
        elif op == "insert_bytes" and fields:
            at = draw(st.integers(0, len(fields[i])))
            fields[i] = fields[i][:at] + draw(st.sampled_from(BAD_BYTES)) + fields[i][at:]
        elif op == "separator" and fields:  # a tab for a space, a space for a tab, two spaces
            fields[i] += draw(st.sampled_from([b" ", b"\t", b"  "]))
    return spec.sep.encode().join(fields)


@st.composite
def fuzz_file(draw, fmt: str) -> bytes:
    """A file of ``fmt``: its header (or not), then valid, mutated and random lines, with LF
    or CRLF endings, sometimes a byte order mark, sometimes gzipped (sometimes cut short)."""
    spec = SPECS[fmt]
    header = [line.encode() for line in spec.header.split("\n")[:-1]]
    valid = [spec.line.encode()] + ([] if fmt != "gff3" else [
        b"chr4\tmaker\tgene\t1\t1000\t.\t+\t.\tID=g1", b"##FASTA", b">chr4"])
    line = st.one_of(st.sampled_from(valid), mutated_line(fmt), mutated_line(fmt),
                     st.binary(max_size=40), st.text(max_size=40).map(str.encode),
                     st.sampled_from(header or [b""]))
    body = draw(st.lists(line, max_size=4))
    lines = (header if draw(st.booleans()) else []) + body + [spec.line.encode()]
    ending = draw(st.sampled_from([b"\n", b"\r\n"]))
    data = ending.join(lines) + draw(st.sampled_from([b"", ending]))
    extra = draw(st.integers(0, 19))
    if extra == 0:
        data = b"\xef\xbb\xbf" + data
    elif extra == 1:
        data = gzip.compress(data)
    elif extra == 2:
        data = gzip.compress(data)
        data = data[:draw(st.integers(0, len(data)))]  # cut short: corrupt or truncated
    return data


def _check_invariants(table, fmt: str) -> None:
    for row in table.to_pylist():
        start, end = row["start"], row["end"]
        assert 0 <= start <= end < MAX_COORD, row
        assert start < end or fmt == "tantan-f4", row
        assert row["strand"] in ("+", "-", None), row
        assert isinstance(row["seq_id"], str) and row["seq_id"], row
        assert not any(c.isspace() for c in row["seq_id"]), row
        for column in ("seq_id", "name", "class", "family"):
            text = row[column]
            assert text is None or (isinstance(text, str) and text), row
            if text is not None:
                assert not re.search("[\x00-\x1f\x7f-\x9f\ufeff\ud800-\udfff]", text), row
                text.encode("utf-8")  # valid text: no surrogates
        assert row["score"] is None or math.isfinite(row["score"]), row
        assert row["source"] == fmt


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
@settings(max_examples=2000, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(data=st.data())
def test_fuzz_only_valid_rows_or_input_error(tmp_path, fmt, data):
    content = data.draw(fuzz_file(fmt))
    path = tmp_path / f"fuzz-{SPECS[fmt].file_name}"
    path.write_bytes(content)
    n_lines = content.count(b"\n") + 1
    for call in (lambda: read_repeats(path, format=fmt), lambda: detect_format(path)):
        try:
            result = call()
        except InputError as exc:
            message = str(exc)
            assert message.startswith(str(path)), message
            numbers = re.findall(r"^[^:]*, line (\d+): ", message)
            if numbers:  # gzip errors and "cannot tell the format" are about the whole file
                assert 1 <= int(numbers[0]) <= n_lines or content[:2] == b"\x1f\x8b", message
            continue
        if isinstance(result, str):
            assert result in FORMATS
        else:
            _check_invariants(result, fmt)
