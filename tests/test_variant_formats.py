"""Variant file readers: mutant strings, mutant tables (ProteinGym CSV/TSV), VCF, variant TSVs,
sequence-name matching; malformed input is an InputError naming file:line, never a traceback
(hypothesis fuzz); read_vcf agrees with vcfpy on random valid VCFs."""

from __future__ import annotations

import gzip
import io
import re
import sys
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqatlas.errors import ConfigError, InputError
from seqatlas.variants.formats import (Site, VariantRecord, match_seq_ids, mutant_records,
                                       parse_mutant, read_chrom_map, read_mutant_table,
                                       read_variant_tsv, read_variants, read_vcf)

VCF_HEADER = "##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
PROTEINGYM = ("mutant,mutated_sequence,DMS_score,DMS_score_bin\n"
              "M1A,AKLV,-0.5,0\n"
              "K2R:L3P,MRPV,1.25,1\n"
              "V4*,MKL*,NA,\n")
FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def write(tmp_path, name: str, data: str | bytes):
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def vcf(*records: str) -> str:
    return VCF_HEADER + "".join(r + "\n" for r in records)


def alleles(records: list[VariantRecord]) -> list[tuple]:
    return [(r.seq_id, r.line, r.sites, r.problem) for r in records]


def raises_at(where: str, *words: str):
    """pytest.raises for an InputError whose message starts at ``where`` and holds ``words``."""
    return pytest.raises(InputError, match=re.escape(where) + ".*" +
                         ".*".join(re.escape(w) for w in words))


# ---------------------------------------------------------------------------------------------
# mutant strings


def test_parse_mutant_forms():
    assert parse_mutant("A123G") == (Site(123, "A", "G"),)
    assert parse_mutant("A123G:K140R") == (Site(123, "A", "G"), Site(140, "K", "R"))
    assert parse_mutant("a123g:k140r") == parse_mutant("A123G:K140R")
    assert parse_mutant("  A123G : K140R \t") == parse_mutant("A123G:K140R")
    assert parse_mutant("A5A") == (Site(5, "A", "A"),)  # synonymous
    assert parse_mutant("W7*") == (Site(7, "W", "*"),)


@pytest.mark.parametrize("text, reason", [
    ("A12", "not a reference letter"), ("123G", "not a reference letter"),
    ("AG", "not a reference letter"), ("A0G", "1-based"), ("A-1G", "sign"),
    ("A+1G", "sign"), ("A1.5G", "whole number"), ("A12G:A12T", "appears twice"),
    ("", "empty"), ("  ", "empty"), ("A1G::K2R", "empty site"), ("A1G:", "empty site"),
    ("AB12G", "not a reference letter"), ("p.Ala12Gly", "HGVS"), ("Å1G", "ASCII"),
])
def test_parse_mutant_malformed(text, reason):
    with raises_at("data.csv:7: mutant", reason, "expected the form A123G"):
        parse_mutant(text, source="data.csv", line=7)


def test_mutant_records_arguments():
    records = mutant_records(["A1G", "k2r:a1g", "W3*", "A1G", "a1g"], seq_id="P1")
    assert [r.variant_id for r in records] == ["A1G", "K2R:A1G", "W3*", "A1G", "A1G"]
    assert {r.source for r in records} == {"<arguments>"}
    assert {r.line for r in records} == {None}
    assert [r.duplicate_of for r in records] == [None, None, None, 1, 1]
    assert records[2].problem == "stop codon: no residue letter"
    assert records[0].seq_id == "P1" and records[0].problem is None
    with pytest.raises(InputError, match=r"<arguments>: argument 2, mutant 'A12'"):
        mutant_records(["A1G", "A12"])


# ---------------------------------------------------------------------------------------------
# mutant tables


def check_proteingym(records: list[VariantRecord], source: str):
    assert [r.variant_id for r in records] == ["M1A", "K2R:L3P", "V4*"]
    assert [r.line for r in records] == [2, 3, 4]
    assert [r.score for r in records] == [-0.5, 1.25, None]
    assert [r.bin for r in records] == [0, 1, None]
    assert [r.mutated_sequence for r in records] == ["AKLV", "MRPV", "MKL*"]
    assert records[1].sites == (Site(2, "K", "R"), Site(3, "L", "P"))
    assert [r.problem for r in records] == [None, None, "stop codon: no residue letter"]
    assert {r.source for r in records} == {source} and {r.seq_id for r in records} == {None}


def test_proteingym_csv_plain_gzip_tsv_bom(tmp_path):
    plain = write(tmp_path, "dms.csv", PROTEINGYM)
    check_proteingym(read_mutant_table(plain), str(plain))
    zipped = write(tmp_path, "dms.csv.txt", gzip.compress(PROTEINGYM.encode()))  # not by name
    check_proteingym(read_mutant_table(zipped), str(zipped))
    tsv = write(tmp_path, "dms.tsv", PROTEINGYM.replace(",", "\t"))
    check_proteingym(read_mutant_table(tsv), str(tsv))
    bom = write(tmp_path, "bom.csv", "\ufeff" + PROTEINGYM.replace("\n", "\r\n") + "\n\n")
    check_proteingym(read_mutant_table(bom), str(bom))
    check_proteingym(read_variants(plain), str(plain))


def test_quoted_csv_seq_ids_missing_scores_duplicates(tmp_path):
    path = write(tmp_path, "t.csv", 'id,"mutant",score,seq_id,note\n'
                                    '1,"A1G",nan,P1,"a, b"\n'
                                    '2,A1G,,P2,\n'
                                    '3,"a1g",N/A,P1,"say ""hi"""\n'
                                    '4,A1G:C2D,7,P1,x\n'
                                    '5,C2D:A1G,1e2,P1,x\n')
    records = read_mutant_table(path, score_column="score")
    assert [r.seq_id for r in records] == ["P1", "P2", "P1", "P1", "P1"]
    assert [r.score for r in records] == [None, None, None, 7.0, 100.0]
    assert [r.duplicate_of for r in records] == [None, None, 2, None, 5]
    assert {r.bin for r in records} == {None} and {r.mutated_sequence for r in records} == {None}
    other = read_mutant_table(path, seq_id_column="id", mutant_column="mutant")
    assert [r.seq_id for r in other] == ["1", "2", "3", "4", "5"]


@pytest.mark.parametrize("content, options, where, words", [
    (PROTEINGYM, {"score_column": "fitness"}, "t.csv:1:", ("'fitness'", "'mutant'",
                                                          "'DMS_score_bin'")),
    (PROTEINGYM, {"mutant_column": "variant"}, "t.csv:1:", ("'variant'", "'DMS_score'")),
    (PROTEINGYM, {"seq_id_column": "protein"}, "t.csv:1:", ("'protein'",)),
    ("mutated_sequence,DMS_score\nAK,1\n", {}, "t.csv:1:", ("no column 'mutant'",)),
    ("mutant,DMS_score\nA1G,1\n,2\n", {}, "t.csv:3:", ("empty cell",)),
    ("mutant,DMS_score\nA1G,1\nA1,2\n", {}, "t.csv:3:", ("'A1'", "expected the form")),
    ("mutant,DMS_score\nA1G,high\n", {}, "t.csv:2:", ("score 'high' is not a number",)),
    ("mutant,DMS_score\nA1G,inf\n", {}, "t.csv:2:", ("score",)),
    ("mutant,DMS_score_bin\nA1G,0.5\n", {}, "t.csv:2:", ("bin '0.5'",)),
    ("mutant,DMS_score\nA1G,1,2\n", {}, "t.csv:2:", ("3 columns where the header has 2",)),
    ('mutant,DMS_score\nA1G,"1\n', {}, "t.csv:2:", ("not valid CSV",)),
    ("mutant,seq_id\nA1G,\n", {}, "t.csv:2:", ("empty cell", "'seq_id'")),
    ("", {}, "t.csv:1:", ("empty file", "'mutant'")),
])
def test_mutant_table_errors(tmp_path, content, options, where, words):
    path = write(tmp_path, "t.csv", content)
    with raises_at(f"{path.parent}/{where}", *words):
        read_mutant_table(path, **options)


def test_stdin_is_read_once(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(gzip.compress(
        PROTEINGYM.encode()))))
    check_proteingym(read_variants("-"), "<stdin>")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(vcf("1\t5\t.\tA\tG").encode())))
    assert alleles(read_variants("-")) == [("1", 3, (Site(5, "A", "G"),), None)]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"mutant\nA1\n")))
    with raises_at("<stdin>:2:", "'A1'"):
        read_mutant_table("-")


# ---------------------------------------------------------------------------------------------
# VCF


SAMPLE_VCF = vcf(
    "chr1\t5\t.\tA\tG,t\t50\tPASS\t.",      # multi-allelic, lowercase ALT
    "chr1\t9\trs7\tn\ta\t.\t.\t.",          # N reference, an ID
    "chrX\t3\t.\tA\t<DEL>,*,.\t.\t.\t.",    # symbolic, spanning deletion, none
    "chrX\t7\t.\tAC\tA,ACGT\t.\t.\t.",      # indels
    "chrX\t20\t.\tACG\tTCA\t.\t.\t.",       # MNP: two differing bases
    "chrX\t21\t.\tC\tC\t.\t.\t.",           # ALT equals REF
    "chrX\t30\t.\tG\tG]17:198982],.A\t.\t.\t.",  # breakends
    "chr1\t5\tdup\ta\tg\t.\t.\t.",          # a duplicate of line 3's first ALT
    "chrX\t20\t.\tA\tT\t.\t.\t.",           # the MNP's first base again
    "chrX\t3\t.\tA\t<DEL>\t.\t.\t.",        # a duplicate problem row
)


def test_vcf_records(tmp_path):
    records = read_vcf(write(tmp_path, "s.vcf", SAMPLE_VCF))
    assert alleles(records) == [
        ("chr1", 3, (Site(5, "A", "G"),), None),
        ("chr1", 3, (Site(5, "A", "T"),), None),
        ("chr1", 4, (Site(9, "N", "A"),), None),
        ("chrX", 5, (), "symbolic allele <DEL>"),
        ("chrX", 5, (), "spanning deletion allele *"),
        ("chrX", 5, (), "no alternate allele"),
        ("chrX", 6, (), "indel (REF len 2, ALT len 1)"),
        ("chrX", 6, (), "indel (REF len 2, ALT len 4)"),
        ("chrX", 7, (Site(20, "A", "T"), Site(22, "G", "A")), None),
        ("chrX", 8, (), "ALT equals REF"),
        ("chrX", 9, (), "symbolic allele G]17:198982]"),
        ("chrX", 9, (), "symbolic allele .A"),
        ("chr1", 10, (Site(5, "A", "G"),), None),
        ("chrX", 11, (Site(20, "A", "T"),), None),
        ("chrX", 12, (), "symbolic allele <DEL>"),
    ]
    assert [r.variant_id for r in records[:4]] == ["chr1:5:A>G", "chr1:5:A>T", "rs7",
                                                   "chrX:3:A><DEL>"]
    assert records[12].variant_id == "dup"
    assert [r.duplicate_of for r in records] == [None] * 12 + [3, None, 5]
    assert {r.source for r in records} == {str(tmp_path / "s.vcf")}


def test_vcf_gzip_bgzip_and_auto(tmp_path):
    expected = alleles(read_vcf(write(tmp_path, "s.vcf", SAMPLE_VCF)))
    data = SAMPLE_VCF.encode()
    bgzip = gzip.compress(data[:100]) + gzip.compress(data[100:]) + gzip.compress(b"")
    for name, content in [("a.vcf.gz", gzip.compress(data)), ("b.vcf.bgz", bgzip),
                          ("c.dat", bgzip), ("d.txt", data)]:
        path = write(tmp_path, name, content)
        assert alleles(read_vcf(path)) == expected
        assert alleles(read_variants(path)) == expected  # by name, else by content


@pytest.mark.parametrize("content, where, words", [
    ("##fileformat=VCFv4.2\nchr1\t5\t.\tA\tG\n", ":2:", ("before the '#CHROM' header",)),
    ("##fileformat=VCFv4.2\n", ":2:", ("no '#CHROM' header line",)),
    ("", ":1:", ("no '#CHROM' header line",)),
    (vcf("chr1\t0\t.\tA\tG"), ":3:", ("VCF POS 0", "1-based", "0-based")),
    (vcf("chr1\t-4\t.\tA\tG"), ":3:", ("VCF POS -4", "1-based")),
    (vcf("chr1\t1.5\t.\tA\tG"), ":3:", ("'1.5' is not a whole number", "1-based")),
    (vcf("chr1\tten\t.\tA\tG"), ":3:", ("'ten' is not a whole number",)),
    (vcf("chr1\t5\t.\tA"), ":3:", ("at least 5", "found 4 columns")),
    (vcf("chr1 5 . A G"), ":3:", ("found 1 column", "tabs")),
    (vcf("chr1\t5\t.\tA1\tG"), ":3:", ("REF 'A1'",)),
    (vcf("chr1\t5\t.\t.\tG"), ":3:", ("REF '.'",)),
    (vcf("chr1\t5\t.\tA\tG,,T"), ":3:", ("empty ALT allele",)),
    (vcf("chr1\t5\t.\tA\tG-1"), ":3:", ("ALT allele 'G-1'",)),
    (vcf("\t5\t.\tA\tG"), ":3:", ("sequence name",)),
    (vcf("chr1\t5\t.\tA\tG\x00"), ":3:", ("NUL",)),
    (vcf("chr1\t5\t.\tA\tG\rchr1\t6\t.\tA\tG"), ":3:", ("carriage return",)),
])
def test_vcf_errors(tmp_path, content, where, words):
    path = write(tmp_path, "bad.vcf", content)
    with raises_at(f"{path}{where}", *words):
        read_vcf(path)


def test_vcf_bytes_errors(tmp_path):
    path = write(tmp_path, "u.vcf", vcf("chr1\t5\t.\tA\tG").encode() + b"chr\xe91\t6\t.\tA\tG\n")
    with raises_at(f"{path}:4:", "not UTF-8", "0xe9"):
        read_vcf(path)
    whole = gzip.compress(vcf(*["chr1\t5\t.\tA\tG"] * 2000).encode())
    truncated = write(tmp_path, "t.vcf.gz", whole[: len(whole) // 2])
    with raises_at(f"{truncated}:", "truncated gzip"):
        read_vcf(truncated)
    garbage = write(tmp_path, "g.vcf.gz", b"\x1f\x8b" + bytes(range(256)))
    with raises_at(f"{garbage}:1:", "gzip"):
        read_vcf(garbage)
    binary = write(tmp_path, "b.vcf", bytes(range(256)) * 4)
    with pytest.raises(InputError, match=re.escape(str(binary))):
        read_vcf(binary)
    with raises_at(f"{tmp_path / 'missing.vcf'}:", "not found"):
        read_vcf(tmp_path / "missing.vcf")
    with raises_at(f"{tmp_path}:", "cannot open"):
        read_vcf(tmp_path)
    bz = write(tmp_path, "x.vcf.bz2", b"BZh91AY&SY")
    with raises_at(f"{bz}:", "bzip2"):
        read_vcf(bz)


# ---------------------------------------------------------------------------------------------
# variant TSVs and format detection


def test_variant_tsv(tmp_path):
    path = write(tmp_path, "v.tsv", "# made by hand\n"
                                    "Chrom\tPos\tRef\tAlt\tgene\tID\n"
                                    "1\t5\ta\tg,T\tX\t.\n"
                                    "# a comment\n\n"
                                    "1\t9\tA\t-\tX\tdel1\n"
                                    "1\t5\tA\tG\tY\tagain\n")
    records = read_variant_tsv(path)
    assert alleles(records) == [("1", 3, (Site(5, "A", "G"),), None),
                                ("1", 3, (Site(5, "A", "T"),), None),
                                ("1", 6, (), "indel (REF A, ALT -)"),
                                ("1", 7, (Site(5, "A", "G"),), None)]
    assert [r.variant_id for r in records] == ["1:5:A>G", "1:5:A>T", "del1", "again"]
    assert records[3].duplicate_of == 3
    assert alleles(read_variants(path)) == alleles(records)
    hashed = write(tmp_path, "h.tsv", "#chrom\tpos\tref\talt\nchr2\t1\tC\tT\n")
    assert alleles(read_variants(hashed, format="tsv")) == [("chr2", 2, (Site(1, "C", "T"),),
                                                            None)]


@pytest.mark.parametrize("content, where, words", [
    ("chrom\tposition\tref\talt\n1\t1\tA\tG\n", ":1:", ("header", "chrom, pos, ref, alt")),
    ("chrom\tpos\tref\talt\n1\t0\tA\tG\n", ":2:", ("pos 0", "1-based")),
    ("chrom\tpos\tref\talt\n1\t1\tA\n", ":2:", ("found 3 columns",)),
    ("chrom\tpos\tref\talt\n1\t1\tA\tG\tx\n", ":2:", ("5 columns where the header has 4",)),
    ("# nothing\n", ":2:", ("no header line",)),
])
def test_variant_tsv_errors(tmp_path, content, where, words):
    path = write(tmp_path, "v.tsv", content)
    with raises_at(f"{path}{where}", *words):
        read_variant_tsv(path)


def test_read_variants_formats_and_options(tmp_path):
    table = write(tmp_path, "m.txt", "variant;x\nA1G;1\n".replace(";", "\t"))
    assert read_variants(table, mutant_column="variant")[0].sites == (Site(1, "A", "G"),)
    assert read_variants(table, format="mutants", mutant_column="variant")[0].line == 2
    with raises_at(f"{table}:", "cannot tell the variant format", "'mutant'", "chrom, pos"):
        read_variants(table)
    headerless = write(tmp_path, "h.txt", "##INFO=<ID=X>\n#CHROM\tPOS\tID\tREF\tALT\n"
                                          "1\t2\t.\tA\tC\n")
    assert read_variants(headerless)[0].sites == (Site(2, "A", "C"),)
    with pytest.raises(ConfigError, match="score-column applies to mutant tables"):
        read_variants(headerless, score_column="DMS_score")
    with pytest.raises(ConfigError, match="not one of"):
        read_variants(headerless, format="bed")
    with pytest.raises(ConfigError, match="unknown mutant table option"):
        read_variants(headerless, mutant_col="x")
    with raises_at(f"{table}:1:", "no column 'mutant'"):
        read_variants(table, format="mutants")
    empty = write(tmp_path, "e.txt", "")
    with raises_at(f"{empty}:", "it is empty"):
        read_variants(empty)


# ---------------------------------------------------------------------------------------------
# sequence names


def test_match_seq_ids():
    ucsc = ["chr1", "chr2", "chrX", "chrM"]
    assert match_seq_ids(["1", "X", "MT", "chr2", "7"], ucsc) == \
        {"1": "chr1", "X": "chrX", "MT": "chrM", "chr2": "chr2", "7": None}
    ensembl = ["1", "X", "MT"]
    assert match_seq_ids(["chr1", "Chr1", "CHRX", "chrM", "M", "chrMT"], ensembl) == \
        {"chr1": "1", "Chr1": "1", "CHRX": "X", "chrM": "MT", "M": "MT", "chrMT": "MT"}
    assert match_seq_ids(["chrx"], ensembl) == {"chrx": None}  # only the prefix ignores case
    both = ["chr1", "1", "2"]
    assert match_seq_ids(["1", "chr1", "chr2"], both) == {"1": "1", "chr1": "chr1",
                                                          "chr2": "2"}
    assert match_seq_ids(["NC_000001.11", "1"], both,
                         chrom_map={"NC_000001.11": "chr1", "1": "chr1", "unused": "chr9"}) == \
        {"NC_000001.11": "chr1", "1": "chr1"}
    with pytest.raises(ConfigError, match="'chr9'.*not a sequence of the atlas"):
        match_seq_ids(["NC"], both, chrom_map={"NC": "chr9"})
    with pytest.raises(ConfigError, match="'chrM' or 'MT'.*--chrom-map"):
        match_seq_ids(["M"], ["chrM", "MT"])
    with pytest.raises(ConfigError, match="'Chr3' or 'chr3'.*--chrom-map"):
        match_seq_ids(["3"], ["Chr3", "chr3"])


def test_read_chrom_map(tmp_path):
    path = write(tmp_path, "alias.txt", "# alias\tsequence\nNC_000001.11\tchr1\n\n"
                                        "1 chr1\n  MT    chrM\n1\tchr1\n")
    assert read_chrom_map(path) == {"NC_000001.11": "chr1", "1": "chr1", "MT": "chrM"}
    bad = write(tmp_path, "bad.txt", "a\tb\nc\n")
    with raises_at(f"{bad}:2:", "two columns"):
        read_chrom_map(bad)
    twice = write(tmp_path, "twice.txt", "a\tb\na\tc\n")
    with raises_at(f"{twice}:2:", "'a'", "line 1"):
        read_chrom_map(twice)


# ---------------------------------------------------------------------------------------------
# fuzz: a value or an InputError, never another exception


READERS = [read_vcf, read_mutant_table, read_variant_tsv, read_variants, read_chrom_map]


def only_input_errors(call) -> None:
    try:
        call()
    except InputError as exc:
        assert re.match(r"\S", str(exc))


@FUZZ
@given(st.text(max_size=40))
def test_fuzz_parse_mutant(text):
    only_input_errors(lambda: parse_mutant(text, source="f", line=1))
    only_input_errors(lambda: mutant_records([text, text]))


@FUZZ
@given(data=st.binary(max_size=300), compress=st.booleans())
def test_fuzz_bytes(tmp_path, data, compress):
    path = write(tmp_path, "fuzz", gzip.compress(data) if compress else data)
    for reader in READERS:
        only_input_errors(lambda: reader(path))


FIELD = st.one_of(
    st.sampled_from(["chr1", "1", "", ".", "A", "a", "AC", "G,T", "<DEL>", "*", "0", "-1",
                     "5", "1.5", "N", "G]1:5]", ".A", "A.", "G,", ",", "é", "\x00", " ", "#",
                     "99999999999999999999999", "mutant", "pos", "A1G", "NA", "\ufeff"]),
    st.text(max_size=6))
LINE = st.lists(FIELD, min_size=0, max_size=9).map("\t".join)


@FUZZ
@given(lines=st.lists(LINE, max_size=6), head=st.sampled_from(
    [VCF_HEADER, "#CHROM\tPOS\tID\tREF\tALT\n", "chrom\tpos\tref\talt\n", "mutant,score\n",
     "mutant\tDMS_score\tDMS_score_bin\tseq_id\n", ""]))
def test_fuzz_near_valid(tmp_path, lines, head):
    path = write(tmp_path, "near.txt", (head + "\n".join(lines)).encode("utf-8",
                                                                         "surrogatepass"))
    for reader in READERS:
        only_input_errors(lambda: reader(path))
    only_input_errors(lambda: read_mutant_table(path, score_column="score"))


# ---------------------------------------------------------------------------------------------
# oracle: vcfpy reads random valid VCFs the same way


BASES = st.text(alphabet="ACGTN", min_size=1, max_size=4)
ALT = st.one_of(BASES, BASES, st.sampled_from(["<DEL>", "<INS:ME>", "*", "G]2:100]",
                                               "[chr3:5[T", ".A", "C."]))


@st.composite
def vcf_records(draw) -> list[tuple[str, int, str, list[str]]]:
    records = []
    for _ in range(draw(st.integers(1, 8))):
        ref = draw(BASES)
        alts = draw(st.one_of(st.just(["."]), st.lists(ALT, min_size=1, max_size=3)))
        records.append((draw(st.sampled_from(["chr1", "2", "chrUn_x"])),
                        draw(st.integers(1, 10 ** 9)), ref, alts))
    return records


@FUZZ
@given(vcf_records())
def test_oracle_vcfpy(tmp_path, records):
    vcfpy = pytest.importorskip("vcfpy")
    path = write(tmp_path, "o.vcf", vcf(*(f"{c}\t{p}\t.\t{r}\t{','.join(a)}\t.\t.\t."
                                          for c, p, r, a in records)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = [(rec.CHROM, rec.POS, rec.REF, alt.serialize() if alt else ".")
                    for rec in vcfpy.Reader.from_path(str(path))
                    for alt in (rec.ALT or [None])]
    ours = read_vcf(path)
    seen = []
    for record in ours:
        pos, _, change = record.variant_id[len(record.seq_id) + 1:].partition(":")
        ref, _, alt = change.partition(">")
        seen.append((record.seq_id, int(pos), ref, alt))
        if record.sites:
            assert len(ref) == len(alt) and record.problem is None
            assert record.sites == tuple(Site(int(pos) + i, r, a)
                                         for i, (r, a) in enumerate(zip(ref, alt)) if r != a)
        else:
            assert record.problem
    assert seen == expected
