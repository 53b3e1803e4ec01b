"""Genome-browser conventions: exports sorted as `LC_ALL=C sort -k1,1 -k2,2n` (or naturally),
sequence names written UCSC/Ensembl style, and genome-wide annotations against partial
atlases (annotate --on-mismatch)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import seqatlas
from seqatlas.cli.main import main
from seqatlas.errors import ConfigError, InputError
from seqatlas.query.tracks import natural_key
from seqatlas.repeats.importer import _spellings, chrom_name
from tests.query_data import make_atlas

# FASTA order chr2, chr10, chr1, X, MT: neither byte order nor karyotype order
LENGTHS = {"chr2": 60, "chr10": 50, "chr1": 70, "X": 40, "MT": 30}
PLANTED = {"chr2": 20, "chr10": 5, "chr1": 40, "X": 12, "MT": 3}  # a high run of 8 there


def _scores() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    scores = {}
    for seq_id, n in LENGTHS.items():
        values = rng.normal(-1.3, 0.2, n).round(2)
        values[PLANTED[seq_id]:PLANTED[seq_id] + 8] = 0.0
        values[n - 4:n - 2] = np.nan  # unscored
        scores[seq_id] = values
    return scores


@pytest.fixture(scope="module")
def atlas(tmp_path_factory) -> Path:
    rng = np.random.default_rng(5)
    seqs = {k: "".join(rng.choice(list("ACGT"), n)) for k, n in LENGTHS.items()}
    return make_atlas(tmp_path_factory.mktemp("conv") / "atlas", seqs, _scores())


def _rows(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()]


def _chrom_order(rows: list[list[str]]) -> list[str]:
    return list(dict.fromkeys(r[0] for r in rows))


def _check_track(rows: list[list[str]], written: dict[str, str]) -> None:
    """The per-base values rebuilt from a bedGraph equal the atlas's scores."""
    scores = _scores()
    assert {r[0] for r in rows} == set(written.values())
    for seq_id, chrom in written.items():
        track = np.full(LENGTHS[seq_id], np.nan)
        for name, start, end, value in rows:
            if name == chrom:
                track[int(start):int(end)] = float(value)
        np.testing.assert_allclose(track, scores[seq_id].astype(np.float32), rtol=1e-6)


def test_bedgraph_is_in_lc_all_c_sort_order(atlas, tmp_path, capsys):
    out = tmp_path / "logp.bedgraph"
    assert main(["export", "bedgraph", "--atlas", str(atlas), "--column", "logp",
                 "-o", str(out)]) == 0
    assert "sorted lexicographic" in capsys.readouterr().err
    rows = _rows(out)
    assert _chrom_order(rows) == ["MT", "X", "chr1", "chr10", "chr2"]  # bytes: 'M' < 'X' < 'c'
    assert rows == sorted(rows, key=lambda r: (r[0].encode(), int(r[1])))
    _check_track(rows, {k: k for k in LENGTHS})
    assert ["chr1", "40", "48", "0"] in rows  # the planted run, one interval
    if shutil.which("sort"):
        done = subprocess.run(["sort", "-k1,1", "-k2,2n", str(out)], capture_output=True,
                              env={**os.environ, "LC_ALL": "C"}, check=True)
        assert done.stdout == out.read_bytes()


def test_natural_order(atlas, tmp_path):
    out = tmp_path / "natural.bedgraph"
    result = seqatlas.export(atlas, format="bedgraph", output=out, column="logp",
                             sort="natural")
    rows = _rows(out)
    assert result["sort"] == "natural" and result["intervals"] == len(rows)
    assert _chrom_order(rows) == ["chr1", "chr2", "chr10", "X", "MT"]
    for chrom in LENGTHS:
        starts = [int(r[1]) for r in rows if r[0] == chrom]
        assert starts == sorted(starts) and len(starts) > 1
    _check_track(rows, {k: k for k in LENGTHS})
    names = ["chrUn_GL000220v1", "chrM", "chr10", "GL000008.2", "chrY", "chr2",
             "chr1_KI270706v1_random", "chrX", "chr1", "chr22"]
    assert sorted(names, key=natural_key) == [
        "chr1", "chr1_KI270706v1_random", "chr2", "chr10", "chr22", "chrX", "chrY", "chrM",
        "GL000008.2", "chrUn_GL000220v1"]


def test_chrom_name_styles_and_the_import_mapping_share_one_rule():
    cases = {"chrX": ("chrX", "X"), "X": ("chrX", "X"), "10": ("chr10", "10"),
             "chr10": ("chr10", "10"), "MT": ("chrM", "MT"), "chrM": ("chrM", "MT"),
             "M": ("chrM", "MT"), "chrMT": ("chrM", "MT"), "scaffold_7": ("chrscaffold_7",
                                                                         "scaffold_7")}
    for name, (ucsc, ensembl) in cases.items():
        assert (chrom_name(name, "ucsc"), chrom_name(name, "ensembl"),
                chrom_name(name, "as-is")) == (ucsc, ensembl, name)
    assert _spellings("chrX") == ["X"] and _spellings("X") == ["chrX"]
    assert _spellings("chrM") == ["MT", "chrMT", "M"] and _spellings("MT")[0] == "chrM"
    with pytest.raises(ConfigError, match="--chrom-names must be one of"):
        chrom_name("X", "refseq")


@pytest.mark.parametrize("style, written, order", [
    ("ucsc", {"chr2": "chr2", "chr10": "chr10", "chr1": "chr1", "X": "chrX", "MT": "chrM"},
     ["chr1", "chr10", "chr2", "chrM", "chrX"]),
    ("ensembl", {"chr2": "2", "chr10": "10", "chr1": "1", "X": "X", "MT": "MT"},
     ["1", "10", "2", "MT", "X"]),
    ("as-is", {k: k for k in LENGTHS}, ["MT", "X", "chr1", "chr10", "chr2"]),
])
def test_chrom_names_in_bedgraph_bed_and_bigwig(atlas, tmp_path, style, written, order):
    import pyBigWig

    common = ["--atlas", str(atlas), "--chrom-names", style]
    assert main(["export", "bedgraph", *common, "--column", "logp",
                 "-o", str(tmp_path / "t.bg")]) == 0
    rows = _rows(tmp_path / "t.bg")
    assert _chrom_order(rows) == order
    _check_track(rows, written)

    assert main(["export", "bed", *common, "-o", str(tmp_path / "r.bed")]) == 0
    bed = _rows(tmp_path / "r.bed")
    assert [(r[0], int(r[1]), int(r[2]), r[3]) for r in bed] == sorted(
        ((written[k], PLANTED[k], PLANTED[k] + 8, "high") for k in LENGTHS),
        key=lambda r: r[0].encode())

    assert main(["export", "bigwig", *common, "--column", "logp",
                 "-o", str(tmp_path / "t.bw")]) == 0
    bw = pyBigWig.open(str(tmp_path / "t.bw"))
    try:
        assert list(bw.chroms().items()) == [
            (chrom, LENGTHS[next(k for k, v in written.items() if v == chrom)])
            for chrom in order]  # the header in the data's order
        scores = _scores()
        for seq_id, chrom in written.items():
            np.testing.assert_allclose(np.array(bw.values(chrom, 0, LENGTHS[seq_id])),
                                       scores[seq_id].astype(np.float32), rtol=1e-6)
    finally:
        bw.close()


def test_natural_bigwig_with_ucsc_names(atlas, tmp_path):
    import pyBigWig

    result = seqatlas.export(atlas, format="bigwig", output=tmp_path / "n.bw",
                             column="logp", sort="natural", chrom_names="ucsc")
    bw = pyBigWig.open(str(tmp_path / "n.bw"))
    try:
        assert list(bw.chroms()) == ["chr1", "chr2", "chr10", "chrX", "chrM"]
        assert result["intervals"] == sum(len(bw.intervals(c)) for c in bw.chroms())
        assert bw.intervals("chrX", 12, 20) == ((12, 20, 0.0),)
    finally:
        bw.close()


def test_names_written_alike_are_refused(tmp_path, capsys):
    seqs = {"X": "ACGTACGTAC", "chrX": "ACGTACGTAC"}
    atlas = make_atlas(tmp_path / "dup", seqs, {k: np.full(10, -1.0) for k in seqs})
    out = tmp_path / "t.bg"
    assert main(["export", "bedgraph", "--atlas", str(atlas), "--column", "logp",
                 "--chrom-names", "ucsc", "-o", str(out)]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("Error:") and "'X' and 'chrX' would both be written 'chrX'" in err
    assert not out.exists()
    with pytest.raises(ConfigError, match="--sort must be one of"):
        seqatlas.export(atlas, format="bedgraph", output=out, column="logp", sort="karyotype")
    # as-is they stay apart, in byte order
    assert main(["export", "bedgraph", "--atlas", str(atlas), "--column", "logp",
                 "-o", str(out)]) == 0
    assert _rows(out) == [["X", "0", "10", "-1"], ["chrX", "0", "10", "-1"]]


# --- annotate --on-mismatch --------------------------------------------------------------

ATLAS_LENGTHS = {"X": 100, "Y": 60, "MT": 30}
GENOME_WIDE = ("chr1\t10\t20\tR0\n"        # not in the atlas
               "chrX\t5\t20\tR1\n"         # fine
               "chrX\t90\t110\tR2\n"       # crosses the end: clipped to 100
               "chrX\t100\t120\tR3\n"      # starts at the end: left out
               "chrX\t150\t160\tR4\n"      # past the end: left out
               "chrY\t0\t60\tR5\n"         # ends exactly at the end: fine
               "chrY\t50\t61\tR6\n"        # crosses the end: clipped to 60
               "chrM\t0\t10\tR7\n"         # chrM -> MT
               "chr7\t0\t10\tR8\n")        # not in the atlas


def _partial_atlas(path: Path) -> Path:
    rng = np.random.default_rng(2)
    seqs = {k: "".join(rng.choice(list("ACGT"), n)) for k, n in ATLAS_LENGTHS.items()}
    return make_atlas(path, seqs, {k: np.full(n, -1.0) for k, n in ATLAS_LENGTHS.items()})


def _repeats(atlas: Path) -> list[tuple]:
    rows = seqatlas.Atlas(atlas).repeats().to_pylist()
    return sorted((r["seq_id"], r["start"], r["end"], r["name"]) for r in rows)


@pytest.fixture
def genome_wide(tmp_path) -> Path:
    path = tmp_path / "genome_wide.bed"
    path.write_text(GENOME_WIDE)
    return path


def test_error_mode_names_the_option(tmp_path, genome_wide, capsys):
    atlas = _partial_atlas(tmp_path / "a")
    with pytest.raises(InputError, match=r"not in the atlas \(chr1, chr7\).*--on-mismatch"):
        seqatlas.annotate(genome_wide, atlas=atlas)
    assert main(["annotate", str(genome_wide), "--atlas", str(atlas)]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("Error:") and "--on-mismatch skip (or clip)" in err
    past = tmp_path / "past.bed"
    past.write_text("chrX\t5\t20\nchrX\t90\t110\nchrX\t150\t160\n")
    with pytest.raises(InputError, match=r"X:90-110 runs past the end of the sequence \(100 "
                       r"long\) \(2 such records\).*--on-mismatch clip"):
        seqatlas.annotate(past, atlas=atlas)
    assert seqatlas.Atlas(atlas).count("repeats") == 0


def test_skip_mode(tmp_path, genome_wide, capsys):
    atlas = _partial_atlas(tmp_path / "a")
    assert main(["annotate", str(genome_wide), "--atlas", str(atlas), "--on-mismatch", "skip",
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["skipped_unknown_sequence"], summary["skipped_past_end"],
            summary["clipped"], summary["repeats"]) == (2, 4, 0, 3)
    assert summary["skipped_sequences"] == ["chr1", "chr7"] and summary["renamed"] == {
        "chrX": "X", "chrY": "Y", "chrM": "MT"}
    assert _repeats(atlas) == [("MT", 0, 10, "R7"), ("X", 5, 20, "R1"), ("Y", 0, 60, "R5")]
    again = seqatlas.annotate(genome_wide, atlas=atlas, on_mismatch="skip")
    assert again["already_imported"] and again["skipped_past_end"] == 4
    assert seqatlas.Atlas(atlas).count("repeats") == 3
    # clip gives other rows: a new import, not "already imported"
    clipped = seqatlas.annotate(genome_wide, atlas=atlas, on_mismatch="clip")
    assert not clipped["already_imported"] and seqatlas.Atlas(atlas).count("repeats") == 3 + 5


def test_clip_mode(tmp_path, genome_wide, capsys):
    atlas = _partial_atlas(tmp_path / "a")
    assert main(["annotate", str(genome_wide), "--atlas", str(atlas), "--on-mismatch",
                 "clip"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "5 bed repeats imported" in out
    assert ("--on-mismatch clip: skipped 2 on sequences not in the atlas (chr1, chr7), "
            "skipped 2 past the end, clipped 2.") in out
    rows = _repeats(atlas)
    assert rows == [("MT", 0, 10, "R7"), ("X", 5, 20, "R1"), ("X", 90, 100, "R2"),
                    ("Y", 0, 60, "R5"), ("Y", 50, 60, "R6")]
    assert all(end <= ATLAS_LENGTHS[seq] for seq, _, end, _ in rows)
    again = seqatlas.annotate(genome_wide, atlas=atlas, on_mismatch="clip")
    assert again["already_imported"] and (again["skipped_unknown_sequence"],
                                          again["skipped_past_end"], again["clipped"]) == (2, 2, 2)
    assert seqatlas.Atlas(atlas).count("repeats") == 5


def test_modes_that_change_nothing_share_the_import(tmp_path):
    atlas = _partial_atlas(tmp_path / "a")
    clean = tmp_path / "clean.bed"
    clean.write_text("X\t0\t10\nY\t5\t60\n")
    first = seqatlas.annotate(clean, atlas=atlas)
    assert not first["already_imported"] and first["on_mismatch"] == "error"
    for mode in ("skip", "clip"):  # nothing to leave out or clip: the same rows, the same key
        again = seqatlas.annotate(clean, atlas=atlas, on_mismatch=mode)
        assert again["already_imported"] and again["clipped"] == 0
    unknown_only = tmp_path / "unknown_only.bed"
    unknown_only.write_text("X\t0\t10\nchr3\t5\t60\n")
    assert seqatlas.annotate(unknown_only, atlas=atlas, on_mismatch="clip")["repeats"] == 1
    # skip leaves out the same record clip does: already imported
    assert seqatlas.annotate(unknown_only, atlas=atlas, on_mismatch="skip")["already_imported"]
    assert seqatlas.Atlas(atlas).count("repeats") == 3


def test_nothing_left_and_other_sources_are_refused(tmp_path, capsys):
    atlas = _partial_atlas(tmp_path / "a")
    other = tmp_path / "other.bed"
    other.write_text("chr1\t0\t10\nchr2\t5\t60\n")
    with pytest.raises(InputError, match="none of its 2 records lies within"):
        seqatlas.annotate(other, atlas=atlas, on_mismatch="skip")
    assert main(["annotate", "--detect", "--atlas", str(atlas), "--on-mismatch", "clip"]) == 1
    assert "--on-mismatch describes a FILE" in " ".join(capsys.readouterr().err.split())
    with pytest.raises(ConfigError, match="--on-mismatch must be one of"):
        seqatlas.annotate(other, atlas=atlas, on_mismatch="ignore")
    assert seqatlas.Atlas(atlas).count("repeats") == 0
