"""In-silico saturation mutagenesis (seqatlas.variants.scan) on tiny ingested atlases: every
value recomputed here from the stored positions table; the constraint track as a table and as
a bigWig; the mutagenesis heatmap's data; the report's variants section."""

from __future__ import annotations

import math
import re
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import seqatlas
from seqatlas import plot, schema
from seqatlas.cli.main import main
from seqatlas.errors import ConfigError, SeqAtlasError
from seqatlas.html_report import report
from seqatlas.util import parse_region
from seqatlas.query import export
from seqatlas.store import AtlasReader, AtlasWriter
from seqatlas.variants.scan import constraint_track, resolve_span, scan_first, scan_variants
from tests.conftest import AMINO, random_protein, write_fasta
from tests.dna_models import make_single

UNIT = "GATTACAGGC"  # repeated inside one window: in-context copies
DNA = {"d1": "ACGTTGCAAC" + UNIT + "TTAG" + UNIT + "CCNNNNGTACGGATCA" + "TGCAGT" * 3,
       "d2": "TTGACCGTAGCA" + UNIT}
PROTEIN = {"p1": random_protein(20, 1) + "X" + random_protein(6, 2) + "WHEEL" + "K" + "WHEEL",
           "p2": random_protein(15, 3)}
REPEATS = [("d1", 10, 20, "unit", "Tandem"), ("d1", 50, 60, "tgca", "Simple_repeat"),
           ("d2", 0, 4, "x", "Tandem")]
# random tiny models: ingest warns that their likelihoods are near the uniform baseline
pytestmark = pytest.mark.filterwarnings("ignore:model .* may be out of domain:UserWarning")


def _add_repeats(path: Path, rows) -> None:
    n = len(rows)
    table = pa.table({"seq_id": [r[0] for r in rows], "start": [r[1] for r in rows],
                      "end": [r[2] for r in rows], "strand": ["+"] * n,
                      "name": [r[3] for r in rows], "class": [r[4] for r in rows],
                      "family": [r[4] for r in rows], "source": ["bed"] * n,
                      "score": [None] * n}, schema=schema.REPEATS)
    with AtlasWriter(path) as writer:
        writer.commit("repeats-test", {"repeats": table})


@pytest.fixture(scope="module")
def dna_atlas(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scan_dna")
    model = make_single(root / "single", context_tokens=40)
    atlas = root / "dna"
    seqatlas.ingest(write_fasta(root / "d.fa", DNA), atlas=str(atlas), model=str(model),
                    likelihood="exact", strands="both", copy_k=6, workers=0, progress=False)
    _add_repeats(atlas, REPEATS)
    return atlas


@pytest.fixture(scope="module")
def protein_atlas(tmp_path_factory, tiny_esm) -> Path:
    root = tmp_path_factory.mktemp("scan_protein")
    atlas = root / "prot"
    seqatlas.ingest(write_fasta(root / "p.fa", PROTEIN), atlas=str(atlas), model=str(tiny_esm),
                    likelihood="exact", copy_k=4, workers=0, progress=False)
    return atlas


@pytest.fixture(scope="module")
def plain_atlas(tmp_path_factory, tiny_esm) -> Path:
    """Scored, but without stored distributions."""
    root = tmp_path_factory.mktemp("scan_plain")
    atlas = root / "plain"
    seqatlas.ingest(write_fasta(root / "p.fa", {"q1": random_protein(25, 7)}), atlas=str(atlas),
                    model=str(tiny_esm), likelihood="exact", distributions="none", workers=0,
                    progress=False)
    return atlas


def _stored(atlas: Path, seq_id: str) -> dict:
    """The positions rows of one sequence, by pos, with the distributions as arrays."""
    reader = AtlasReader(atlas)
    rows = reader.positions().to_pylist()
    rows = sorted((r for r in rows if r["seq_id"] == seq_id), key=lambda r: r["pos"])
    return {"rows": rows, "letters": reader.manifest.scoring.distribution_letters}


def _expected(atlas: Path, seq_id: str, both: bool) -> list[dict]:
    """The scan recomputed row by row from the stored positions table."""
    stored = _stored(atlas, seq_id)
    letters, out = stored["letters"], []
    for row in stored["rows"]:
        if row["letter_logp"] is None or row["ref"] not in letters:
            continue
        f = np.array(row["letter_logp"], dtype=np.float64)
        r = np.array(row["letter_logp_rc"], dtype=np.float64) if both else None
        probs = np.exp(f) if not both else (np.exp(f) + np.exp(r)) / 2
        i = letters.index(row["ref"])
        for k, alt in enumerate(letters):
            if k == i:
                continue
            fwd = f[k] - f[i]
            rc = r[k] - r[i] if both else None
            out.append({"seq_id": seq_id, "pos": row["pos"], "position": row["pos"] + 1,
                        "ref": row["ref"], "alt": alt,
                        "llr": (fwd + rc) / 2 if both else fwd, "llr_fwd": fwd, "llr_rc": rc,
                        "p_alt": probs[k], "rank_alt": int(1 + (probs > probs[k]).sum()),
                        "entropy": row["entropy"], "copy_offset": row["copy_offset"],
                        "copy_strand": row["copy_strand"]})
    return out


def _same_rows(table: pa.Table, expected: list[dict]) -> None:
    got = table.to_pylist()
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        for key, value in b.items():
            if isinstance(value, float) and key != "entropy":
                assert a[key] == pytest.approx(value, rel=1e-12, abs=1e-12), (key, a, b)
            elif key == "entropy":
                assert a[key] == pytest.approx(value, rel=1e-6), key
            else:
                assert a[key] == value, (key, a, b)


# -- the scan -------------------------------------------------------------------------------

def test_protein_scan_is_the_stored_distribution_19_per_residue(protein_atlas):
    scan = scan_variants(protein_atlas, seq_id="p1")
    assert scan.schema == schema.SCAN
    assert scan.column_names == ["seq_id", "pos", "position", "ref", "alt", "llr", "llr_fwd",
                                 "llr_rc", "p_alt", "rank_alt", "entropy", "copy_offset",
                                 "copy_strand"]
    _same_rows(scan, _expected(protein_atlas, "p1", both=False))
    counts = {}
    for pos in scan["pos"].to_pylist():
        counts[pos] = counts.get(pos, 0) + 1
    x = PROTEIN["p1"].index("X")
    assert x not in counts  # not a standard letter: no rows
    assert set(counts) == set(range(len(PROTEIN["p1"]))) - {x}
    assert set(counts.values()) == {19}
    assert scan["llr_rc"].null_count == scan.num_rows
    assert scan["llr"].equals(scan["llr_fwd"])
    # per position: the alternatives in letter order, never the ref
    first = scan.slice(0, 19).to_pylist()
    assert [r["alt"] for r in first] == [a for a in AMINO if a != PROTEIN["p1"][0]]
    assert min(scan["rank_alt"].to_pylist()) >= 1 and max(scan["rank_alt"].to_pylist()) <= 20
    assert scan["copy_offset"].null_count < scan.num_rows  # WHEEL K WHEEL: copies


def test_a_float16_atlas_scans_its_stored_values(tiny_esm, tmp_path):
    atlas = tmp_path / "f16"
    seqatlas.ingest(write_fasta(tmp_path / "p.fa", {"h1": random_protein(18, 9)}),
                    atlas=str(atlas), model=str(tiny_esm), likelihood="exact",
                    distributions="float16", workers=0, progress=False)
    assert AtlasReader(atlas).manifest.scoring.letter_dtype == "float16"
    scan = scan_variants(atlas, seq_id="h1")
    _same_rows(scan, _expected(atlas, "h1", both=False))
    graph = tmp_path / "h1.bedgraph"
    export(atlas, format="bedgraph", output=graph, column="mean_llr")
    track = constraint_track(atlas, seq_id="h1").to_pylist()
    values = [float(line.split("\t")[3]) for line in graph.read_text().splitlines()]
    assert values == pytest.approx([r["mean_llr"] for r in track], rel=1e-9)


def test_dna_scan_with_both_strands_is_the_strand_mean_3_per_base(dna_atlas):
    scan = scan_variants(dna_atlas, seq_id="d1")
    _same_rows(scan, _expected(dna_atlas, "d1", both=True))
    llr, fwd, rc = (np.array(scan[c].to_pylist(), dtype=float) for c in
                    ("llr", "llr_fwd", "llr_rc"))
    assert np.allclose(llr, (fwd + rc) / 2) and not np.allclose(fwd, rc)
    positions = scan["pos"].to_pylist()
    assert all(positions.count(p) == 3 for p in set(positions))
    n_run = [i for i, c in enumerate(DNA["d1"]) if c == "N"]
    assert not set(n_run) & set(positions)
    assert set(positions) == set(range(len(DNA["d1"]))) - set(n_run)
    assert {r["copy_strand"] for r in scan.to_pylist() if r["copy_offset"] is not None} <= \
        {"+", "-"}


def test_region_bounds_are_exact_and_read_as_plot_track_reads_them(dna_atlas):
    whole = scan_variants(dna_atlas, seq_id="d1")
    part = scan_variants(dna_atlas, region="d1:5-17")
    positions = part["pos"].to_pylist()
    assert positions[0] == 5 and positions[-1] == 16 and len(positions) == 12 * 3
    assert part["position"].to_pylist()[0] == 6
    mask = [5 <= p < 17 for p in whole["pos"].to_pylist()]
    assert part.equals(whole.filter(pa.array(mask)))
    assert scan_variants(dna_atlas, region="d1:0_5-1,7").equals(part)
    assert scan_variants(dna_atlas, region="d1").equals(whole)
    assert scan_variants(dna_atlas, region=f"d1:0-{len(DNA['d1'])}").equals(whole)
    one = scan_variants(dna_atlas, region="d2:3-4")
    assert one["pos"].to_pylist() == [3, 3, 3]
    known = {"d1", "d2"}
    for text in ("d1:5-17", "d1:0_5-1,7", "d1", "d2:0-1", "d1: 3-9"):
        seq_id, start, end = parse_region(text, known)
        if start is None:
            start, end = 0, len(DNA[seq_id])
        assert resolve_span(dna_atlas, region=text) == (seq_id, start, end), text


@pytest.mark.parametrize("kwargs, says", [
    ({}, "exactly one of region"),
    ({"region": "d1:0-5", "seq_id": "d1"}, "both were given"),
    ({"seq_id": "nope"}, "has no sequence 'nope'"),
    ({"region": "nope:0-5"}, "has no sequence 'nope'"),
    ({"region": "d1:5"}, "not SEQ:START-END"),
    ({"region": "d1:a-b"}, "not SEQ:START-END"),
    ({"region": ""}, "not SEQ:START-END"),
    ({"region": "d1:9-9"}, "is empty"),
    ({"region": "d1:0-1000"}, "ends past the end of d1"),
    ({"region": "d1:0-40", "max_positions": 10}, "more than max_positions=10"),
    ({"seq_id": "d1", "max_positions": 0}, "max_positions must be"),
])
def test_bad_requests_are_errors_that_say_the_fix(dna_atlas, kwargs, says):
    with pytest.raises(SeqAtlasError, match=re.escape(says)):
        scan_variants(dna_atlas, **kwargs)


def test_an_atlas_without_distributions_is_refused_with_the_fix(plain_atlas, tmp_path):
    assert not AtlasReader(plain_atlas).manifest.scoring.stores_distributions()
    for call in (lambda: scan_variants(plain_atlas, seq_id="q1"),
                 lambda: constraint_track(plain_atlas, seq_id="q1"),
                 lambda: export(plain_atlas, format="bigwig", output=tmp_path / "c.bw",
                                column="mean_llr"),
                 lambda: plot.mutagenesis(plain_atlas, seq_id="q1")):
        with pytest.raises(ConfigError) as caught:
            call()
        text = str(caught.value)
        assert "--distributions float32" in text and "seqatlas variants score" in text
    assert not (tmp_path / "c.bw").exists()


def test_scan_first_takes_the_atlas_order_up_to_the_cap(protein_atlas):
    p1 = len(PROTEIN["p1"])
    scan, covered = scan_first(protein_atlas, max_positions=p1 + 4)
    assert covered == p1 + 4
    expected = pa.concat_tables([scan_variants(protein_atlas, seq_id="p1"),
                                 scan_variants(protein_atlas, region="p2:0-4")])
    assert scan.equals(expected)
    everything, covered = scan_first(protein_atlas, max_positions=10**6)
    assert covered == p1 + len(PROTEIN["p2"])
    assert everything.num_rows == (covered - 1) * 19  # the X has none


# -- the constraint track -------------------------------------------------------------------

def _by_position(scan: pa.Table) -> dict:
    out: dict = {}
    for row in scan.to_pylist():
        out.setdefault((row["seq_id"], row["pos"]), []).append(row["llr"])
    return out


def test_constraint_track_is_the_mean_and_min_of_each_positions_substitutions(dna_atlas):
    track = constraint_track(dna_atlas, seq_id="d1")
    assert track.schema == schema.CONSTRAINT
    groups = _by_position(scan_variants(dna_atlas, seq_id="d1"))
    assert [(r["seq_id"], r["pos"]) for r in track.to_pylist()] == list(groups)
    for row in track.to_pylist():
        values = groups[(row["seq_id"], row["pos"])]
        assert row["mean_llr"] == pytest.approx(np.mean(values), rel=1e-12)
        assert row["min_llr"] == pytest.approx(min(values), rel=1e-12)
    assert constraint_track(dna_atlas, region="d1:3-9")["pos"].to_pylist() == list(range(3, 9))


@pytest.mark.parametrize("fixture", ["dna_atlas", "protein_atlas"])
def test_bigwig_mean_and_min_llr_read_back_equal_the_constraint_track(fixture, request,
                                                                      tmp_path):
    import pyBigWig

    atlas = request.getfixturevalue(fixture)
    reader = AtlasReader(atlas)
    lengths = dict(zip(*(reader.sequences()[c].to_pylist() for c in ("seq_id", "length"))))
    for column in ("mean_llr", "min_llr"):
        output = tmp_path / f"{column}.bw"
        result = export(atlas, format="bigwig", output=output, column=column)
        assert result["column"] == column and result["intervals"] > 0
        bw = pyBigWig.open(str(output))
        try:
            assert bw.chroms() == lengths
            for seq_id, length in lengths.items():
                track = constraint_track(atlas, seq_id=seq_id)
                expected = np.full(length, np.nan)
                expected[track["pos"].to_numpy()] = track[column].to_numpy(
                    zero_copy_only=False)
                values = np.array(bw.values(seq_id, 0, length), dtype=float)
                assert np.array_equal(np.isnan(values), np.isnan(expected)), seq_id
                ok = ~np.isnan(expected)
                assert np.allclose(values[ok], expected[ok], rtol=1e-6, atol=1e-7)
        finally:
            bw.close()
    # the same through the CLI, and as a bedGraph
    output = tmp_path / "cli.bw"
    assert main(["export", "bigwig", "--atlas", str(atlas), "--column", "mean_llr", "-o",
                 str(output)]) == 0
    assert output.read_bytes()[:4] == (output.parent / "mean_llr.bw").read_bytes()[:4]
    graph = tmp_path / "c.bedgraph"
    export(atlas, format="bedgraph", output=graph, column="min_llr")
    first = graph.read_text().splitlines()[0].split("\t")
    seq_id = first[0]
    track = constraint_track(atlas, seq_id=seq_id).to_pylist()
    at = {r["pos"]: r["min_llr"] for r in track}
    assert float(first[3]) == pytest.approx(at[int(first[1])], rel=1e-6)


# -- the heatmap ------------------------------------------------------------------------------

def _axes(figure, label: str):
    return next(ax for ax in figure.axes if ax.get_label() == label)


def _matrix(scan: pa.Table, letters: str, start: int, size: int) -> np.ndarray:
    matrix = np.full((len(letters), size), np.nan)
    for row in scan.to_pylist():
        matrix[letters.index(row["alt"]), row["pos"] - start] = row["llr"]
    return matrix


def test_mutagenesis_heatmap_draws_the_scan_with_refs_copies_and_repeats(dna_atlas):
    figure = plot.mutagenesis(dna_atlas, region="d1:2-40")
    ax = _axes(figure, "mutagenesis")
    image = ax.get_images()[0]
    assert image.get_gid() == "llr"
    scan = scan_variants(dna_atlas, region="d1:2-40")
    drawn = np.ma.filled(image.get_array().astype(float), np.nan)
    assert np.array_equal(drawn, _matrix(scan, "ACGT", 2, 38), equal_nan=True)
    assert image.get_extent() == [2, 40, 3.5, -0.5]
    norm = image.norm
    assert norm.vcenter == 0 and norm.vmin == -norm.vmax  # diverging, centred at 0
    refs = next(line for line in ax.get_lines() if line.get_gid() == "ref")
    expected = {(p + 0.5, "ACGT".index(DNA["d1"][p])) for p in range(2, 40)
                if DNA["d1"][p] in "ACGT"}
    assert set(zip(refs.get_xdata(), refs.get_ydata())) == expected
    assert [t.get_text() for t in ax.get_yticklabels()] == list("ACGT")
    gids = {c.get_gid() for a in figure.axes for c in a.collections}
    assert "repeats:Tandem" in gids and "repeats:Simple_repeat" not in gids  # 50-60: outside
    assert gids & {"copies:+", "copies:-"}
    assert _axes(figure, "copies") and _axes(figure, "repeats")


def test_a_long_region_is_binned_to_mean_llr_per_letter(protein_atlas):
    figure = plot.mutagenesis(protein_atlas, seq_id="p1", max_positions=10)
    image = _axes(figure, "mutagenesis").get_images()[0]
    length = len(PROTEIN["p1"])
    per_bin = math.ceil(length / 10)
    drawn = np.ma.filled(image.get_array().astype(float), np.nan)
    assert drawn.shape == (20, math.ceil(length / per_bin))
    full = _matrix(scan_variants(protein_atlas, seq_id="p1"), AMINO, 0, length)
    for b in range(drawn.shape[1]):
        block = full[:, b * per_bin:(b + 1) * per_bin]
        counts = (~np.isnan(block)).sum(axis=1)
        means = np.where(counts > 0, np.nansum(block, axis=1) / np.maximum(counts, 1), np.nan)
        assert np.allclose(drawn[:, b], means, equal_nan=True, rtol=1e-9), b
    assert not any(line.get_gid() == "ref" for a in figure.axes for line in a.get_lines())
    assert f"binned: {per_bin:,} positions per bin" in figure.get_suptitle()


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_the_cli_writes_a_png_of_the_requested_size(protein_atlas, tmp_path, capsys):
    output = tmp_path / "scan.png"
    assert main(["plot", "mutagenesis", "--atlas", str(protein_atlas), "--seq-id", "p2",
                 "-o", str(output), "--width", "640", "--height", "420"]) == 0
    assert _png_size(output) == (640, 420)
    assert "Wrote" in capsys.readouterr().err
    region = tmp_path / "region.svg"
    assert main(["plot", "mutagenesis", "--atlas", str(protein_atlas), "--region",
                 "p1:3-12", "-o", str(region)]) == 0
    assert region.read_text().lstrip().startswith("<?xml")
    for argv in (["--region", "p1:3-12", "--seq-id", "p1"], [], ["--region", "p1:9-3"]):
        assert main(["plot", "mutagenesis", "--atlas", str(protein_atlas), *argv, "-o",
                     str(tmp_path / "bad.png")]) == 1
        err = capsys.readouterr().err
        assert "Error:" in err and "Traceback" not in err
    assert not (tmp_path / "bad.png").exists()


# -- the report -------------------------------------------------------------------------------

def _section(text: str, atlas_number: int, name: str) -> str | None:
    found = re.search(rf'<section id="a{atlas_number}-{name}".*?</section>', text, re.S)
    return found.group(0) if found else None


def _cells(section: str) -> list[list[str]]:
    rows = re.findall(r"<tr>(.*?)</tr>", section, re.S)
    return [re.findall(r"<t[dh]>(.*?)</t[dh]>", row, re.S) for row in rows]


def test_the_report_has_a_variants_section_only_with_distributions(dna_atlas, plain_atlas,
                                                                   tmp_path):
    output = tmp_path / "report.html"
    result = report([dna_atlas, plain_atlas], output=output, top_regions=0,
                    variant_positions=60)
    assert "variants" in result["atlases"][str(dna_atlas)]["sections"]
    assert "variants" not in result["atlases"][str(plain_atlas)]["sections"]
    text = output.read_text()
    section = _section(text, 0, "variants")
    assert section is not None and _section(text, 1, "variants") is None
    total = sum(len(s) for s in DNA.values())
    assert f"the first 60 of {total:,} positions" in section
    assert "<img" in section
    scan, covered = scan_first(dna_atlas, max_positions=60)
    rows = {r[0]: r[1:] for r in _cells(section)}
    header = rows.pop("group")
    llr = np.array(scan["llr"].to_pylist(), dtype=float)
    copy = np.array([o is not None for o in scan["copy_offset"].to_pylist()])
    pos = np.array(scan["pos"].to_pylist())
    seq = scan["seq_id"].to_pylist()
    in_repeat = np.array([any(s == r[0] and r[1] <= p < r[2] for r in REPEATS)
                          for s, p in zip(seq, pos)])
    assert copy.any() and in_repeat.any()
    for name, mask in (("all", np.ones(len(llr), bool)), ("in an in-context copy", copy),
                       ("no in-context copy", ~copy), ("in a repeat", in_repeat),
                       ("outside repeats", ~in_repeat)):
        cells = dict(zip(header, rows[name]))
        assert int(cells["substitutions"].replace(",", "")) == mask.sum(), name
        assert float(cells["mean_llr"]) == pytest.approx(llr[mask].mean(), rel=1e-3), name
        assert float(cells["median_llr"]) == pytest.approx(np.median(llr[mask]), rel=1e-3,
                                                            abs=1e-6), name


def test_errors_are_seqatlas_errors(plain_atlas):
    with pytest.raises(SeqAtlasError):
        resolve_span(plain_atlas, region="q1:5-2")
