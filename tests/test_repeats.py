"""Repeat importers: every format's quirks on hand-written files, and real tool output."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from seqatlas.errors import InputError
from seqatlas.repeats.formats import detect_format, read_repeats

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

REPEATMASKER = """\
   SW   perc perc perc  query     position in query    matching  repeat          position in repeat
score   div. del. ins.  sequence  begin end   (left)   repeat    class/family  begin  end  (left)  ID

  463   1.3  0.0  0.0  chr1        10001 10468 (248946); +  (CCCTAA)n Simple_repeat       1  463    (0)    1
 3612  11.4 21.5  1.3  chr1        10469 11447 (248945); C  TAR1      Satellite/telo   (399) 1712    483    2 *
  484  25.1 13.2  0.0  chr1        11505 11675 (248771); C  L1MC5a    LINE/L1         (2382) 5648   5452    3
  239  29.4  1.9  1.0  chr1        11678 11780 (248666); C  MER5B     DNA/hAT-Charlie  (74)  104      1    4
"""

UCSC_RMSK = ("585\t463\t13\t0\t0\tchr1\t10000\t10468\t-248946\t+\t(CCCTAA)n\tSimple_repeat\t"
             "Simple_repeat\t1\t463\t0\t1\n"
             "585\t3612\t114\t215\t13\tchr1\t10468\t11447\t-248945\t-\tTAR1\tSatellite\ttelo"
             "\t-399\t1712\t483\t2\n")

SIMPLE = ("585\tchr1\t10000\t10468\ttrf\t6\t77.2\t6\t95\t3\t789\t33\t51\t0\t15\t1.43\t"
          "TAACCC\n")

TRF_DAT = """\
Tandem Repeats Finder Program written by:

Sequence: chr7 some description

Parameters: 2 7 7 80 10 50 500


11 46 6 6.0 6 100 0 72 33 50 0 16 1.46 CACCCA CACCCACACCCACACCCACACCCACACCCACACCCA
Sequence: chr8

1 10 2 5.0 2 100 0 20 50 50 0 0 1.00 AC ACACACACAC
"""

TRF_NGS = """\
@chrX  gi|224589822|ref|NC_000023.10|
60001 60038 6 6.3 6 100 0 76 31 50 0 18 1.47 CTAACC CTAACCCTAACCCTAACCCTAACCCTAACCCTAACCCT NNNN ACGT
@chrY
5 9 1 5.0 1 100 0 10 100 0 0 0 0.00 A AAAAA ACGT GGGG
"""

TANTAN = ("chr2\t100\t140\t4\t10\tACGT\tACGT,ACGT\n"
          "chr2\t200\t200\t1\t0\tA\t\n")  # a zero-length repeat is kept

# real `tantan -f3` output: plain BED3 of the masked regions (later copies of each unit)
TANTAN_F3 = "s1\t105\t221\ns2\t49\t111\ns2\t193\t214\n"

# real `tantan -p -f4` output on a protein: the unit is amino acids
TANTAN_PROTEIN = "P1\t10\t34\t6\t4\tQLKEAL\tQLKEAL,QLKEAL,QLKEAL,QLKEAL\n"

BED = ("track name=reps\n"
       "chr3\t5\t20\n"
       "chr3\t30\t60\tAluY\t900\t-\textra\tcolumns\n")

GFF = """\
##gff-version 3
chr4\tRepeatMasker\trepeat_region\t101\t200\t350\t+\t.\tID=r1;Name=L2;rpt_type=LINE;rpt_family=L2
chr4\tTRF\ttandem_repeat\t301\t330\t60\t.\t.\tID=t1;rpt_unit_seq=CAG
chr4\tmaker\tgene\t1\t1000\t.\t+\t.\tID=g1
"""


def _write(tmp_path, name, text, compress=False):
    path = tmp_path / name
    if compress:
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize(("name", "text", "fmt"), [
    ("a.out", REPEATMASKER, "repeatmasker"), ("rmsk.txt.gz", UCSC_RMSK, "ucsc-rmsk"),
    ("simpleRepeat.txt", SIMPLE, "ucsc-simplerepeat"), ("x.dat", TRF_DAT, "trf-dat"),
    ("x.ngs", TRF_NGS, "trf-ngs"), ("t.tsv", TANTAN, "tantan-f4"), ("r.bed", BED, "bed"),
    ("r.gff3", GFF, "gff3"), ("p.tsv", TANTAN_PROTEIN, "tantan-f4"),
    # tantan -f3 is BED3: the file name decides, and BED is the safe reading otherwise
    ("reads.tantan.bed", TANTAN_F3, "tantan-f3"), ("masked.bed", TANTAN_F3, "bed"),
])
def test_format_is_detected(tmp_path, name, text, fmt):
    assert detect_format(_write(tmp_path, name, text, compress=name.endswith(".gz"))) == fmt


def test_repeatmasker_out_quirks(tmp_path):
    rows = read_repeats(_write(tmp_path, "a.out", REPEATMASKER)).to_pylist()
    assert [(r["seq_id"], r["start"], r["end"], r["strand"]) for r in rows] == [
        ("chr1", 10000, 10468, "+"), ("chr1", 10468, 11447, "-"), ("chr1", 11504, 11675, "-"),
        ("chr1", 11677, 11780, "-")]
    assert [(r["name"], r["class"], r["family"]) for r in rows] == [
        ("(CCCTAA)n", "Simple_repeat", None), ("TAR1", "Satellite", "telo"),
        ("L1MC5a", "LINE", "L1"), ("MER5B", "DNA", "hAT-Charlie")]
    assert rows[1]["score"] == 3612


def test_ucsc_rmsk_and_repeatmasker_agree(tmp_path):
    ucsc = read_repeats(_write(tmp_path, "rmsk.txt.gz", UCSC_RMSK, compress=True)).to_pylist()
    out = read_repeats(_write(tmp_path, "a.out", REPEATMASKER)).to_pylist()
    for a, b in zip(ucsc, out[:2]):
        assert (a["seq_id"], a["start"], a["end"], a["strand"], a["name"], a["class"]) == \
            (b["seq_id"], b["start"], b["end"], b["strand"], b["name"], b["class"])
    assert ucsc[0]["family"] is None and ucsc[1]["family"] == "telo"


def test_tandem_formats(tmp_path):
    dat = read_repeats(_write(tmp_path, "x.dat", TRF_DAT)).to_pylist()
    assert [(r["seq_id"], r["start"], r["end"], r["name"]) for r in dat] == [
        ("chr7", 10, 46, "CACCCA"), ("chr8", 0, 10, "AC")]
    ngs = read_repeats(_write(tmp_path, "x.ngs", TRF_NGS)).to_pylist()
    assert [(r["seq_id"], r["start"], r["end"], r["family"]) for r in ngs] == [
        ("chrX", 60000, 60038, "period_6"), ("chrY", 4, 9, "period_1")]
    simple = read_repeats(_write(tmp_path, "s.txt", SIMPLE)).to_pylist()
    assert (simple[0]["seq_id"], simple[0]["start"], simple[0]["end"], simple[0]["name"]) == \
        ("chr1", 10000, 10468, "TAACCC")
    tantan = read_repeats(_write(tmp_path, "t.tsv", TANTAN)).to_pylist()
    assert [(r["start"], r["end"], r["score"]) for r in tantan] == [(100, 140, None),
                                                                   (200, 200, None)]
    f3 = read_repeats(_write(tmp_path, "x.tantan", TANTAN_F3), format="tantan-f3").to_pylist()
    assert [(r["seq_id"], r["start"], r["end"], r["class"], r["source"]) for r in f3] == [
        ("s1", 105, 221, "Tandem_repeat", "tantan-f3"), ("s2", 49, 111, "Tandem_repeat",
                                                          "tantan-f3"),
        ("s2", 193, 214, "Tandem_repeat", "tantan-f3")]
    protein = read_repeats(_write(tmp_path, "p.tsv", TANTAN_PROTEIN)).to_pylist()
    assert (protein[0]["start"], protein[0]["end"], protein[0]["name"]) == (10, 34, "QLKEAL")


def test_bed_and_gff3(tmp_path):
    bed = read_repeats(_write(tmp_path, "r.bed", BED)).to_pylist()
    assert [(r["start"], r["end"], r["name"], r["strand"], r["score"]) for r in bed] == [
        (5, 20, None, None, None), (30, 60, "AluY", "-", 900.0)]
    gff = read_repeats(_write(tmp_path, "r.gff3", GFF)).to_pylist()
    assert [(r["start"], r["end"], r["name"], r["class"], r["family"]) for r in gff] == [
        (100, 200, "L2", "LINE", "L2"), (300, 330, "CAG", "tandem_repeat", None)]


def test_gff3_stops_at_its_fasta_section(tmp_path):
    text = GFF + "##FASTA\n>chr1\nACGTACGT\n"
    rows = read_repeats(_write(tmp_path, "prokka.gff3", text), format="gff3").to_pylist()
    assert [(r["start"], r["end"]) for r in rows] == [(100, 200), (300, 330)]


def test_truncated_gzip_is_a_clear_error(tmp_path):
    whole = gzip.compress(BED.encode() * 2000)
    path = tmp_path / "cut.bed.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputError, match="cut.bed.gz: corrupt or truncated gzip"):
        read_repeats(path, format="bed")


def test_rename_maps_sequence_names(tmp_path):
    rows = read_repeats(_write(tmp_path, "r.bed", BED), rename={"chr3": "3"}).to_pylist()
    assert {r["seq_id"] for r in rows} == {"3"}


@pytest.mark.parametrize(("name", "text", "fmt", "line"), [
    ("bad.bed", "chr1\t5\t20\nchr1\tfive\t20\n", "bed", 2),
    ("bad.out", REPEATMASKER + "  12 1.0 0 0 chr1 x 20 (1) + A Simple_repeat 1 2 (0) 5\n",
     "repeatmasker", 8),
    ("neg.bed", "chr1\t50\t20\n", "bed", 1),
    ("short.tsv", "chr2\t1\t5\n", "tantan-f4", 1),
    ("f4.tantan", TANTAN_F3 + TANTAN, "tantan-f3", 4),
    ("bad.tantan", "s1\t5\t20\ns1\t30\tx\n", "tantan-f3", 2),
])
def test_malformed_lines_name_file_and_line(tmp_path, name, text, fmt, line):
    path = _write(tmp_path, name, text)
    with pytest.raises(InputError) as exc:
        read_repeats(path, format=fmt)
    assert name in str(exc.value) and f"line {line}" in str(exc.value)


@pytest.mark.skipif(not (SHARED / "hs37_chrX_70Mb.fa.gz").exists(),
                    reason="needs ../shared/data (real chrX and its tantan/TRF output)")
def test_real_tantan_and_trf_output_match_the_sequence():
    from seqatlas.fasta import read_fasta

    (chrx,) = read_fasta(SHARED / "hs37_chrX_70Mb.fa.gz", kind="dna")
    tantan = read_repeats(SHARED / "hs37_chrX_70Mb.tantan-f4.tsv.gz").slice(0, 50).to_pylist()
    trf = read_repeats(SHARED / "hs37_chrX_70Mb.trf-ngs.dat.gz").slice(0, 50).to_pylist()
    identities = []
    for row in tantan + trf:
        region = chrx.sequence[row["start"] : row["end"]].decode().upper()
        period = int(row["family"].removeprefix("period_"))
        # a tandem repeat matches itself shifted by one period (random DNA: about 0.3)
        pairs = list(zip(region, region[period:]))
        identities.append(sum(a == b for a, b in pairs) / len(pairs))
    assert min(identities) > 0.5 and sum(identities) / len(identities) > 0.8
    assert (tantan[0]["start"], tantan[0]["end"]) == (trf[0]["start"], trf[0]["end"])


def test_annotate_into_an_atlas_cli_and_api(tmp_path, tiny_esm, capsys):
    import json

    import seqatlas
    from seqatlas.cli.main import main
    from tests.conftest import random_protein, write_fasta

    fasta = write_fasta(tmp_path / "p.fa", {"X": random_protein(80, 1), "Y": "MKTAYIAK"})
    for name in ("cli", "api"):
        seqatlas.ingest(fasta, atlas=tmp_path / name, model=str(tiny_esm), workers=0,
                        progress=False)
    bed = _write(tmp_path, "r.bed", "chrX\t5\t20\tR1\nchrX\t30\t80\tR2\t3\t+\nY\t0\t8\n")
    assert main(["annotate", str(bed), "--atlas", str(tmp_path / "cli"), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    summary = seqatlas.annotate(bed, atlas=tmp_path / "api")
    assert shown == json.loads(json.dumps(summary))
    assert summary["renamed"] == {"chrX": "X"} and summary["repeats"] == 3
    for name in ("cli", "api"):
        rows = seqatlas.Atlas(tmp_path / name).repeats().sort_by("start").to_pylist()
        assert [(r["seq_id"], r["start"], r["end"]) for r in rows] == [
            ("Y", 0, 8), ("X", 5, 20), ("X", 30, 80)]
    again = seqatlas.annotate(bed, atlas=tmp_path / "api")
    assert again["already_imported"] and seqatlas.Atlas(tmp_path / "api").count("repeats") == 3
    assert seqatlas.info(tmp_path / "api")["tables"]["repeats"]["rows"] == 3
    with pytest.raises(InputError, match="not in the atlas"):
        seqatlas.annotate(bed, atlas=tmp_path / "api", names="exact")
    past = _write(tmp_path, "past.bed", "X\t70\t81\n")
    with pytest.raises(InputError, match="past the end"):
        seqatlas.annotate(past, atlas=tmp_path / "api")
    assert main(["annotate", str(past), "--atlas", str(tmp_path / "cli")]) == 1
    assert "Error:" in capsys.readouterr().err
