"""seqatlas.plot: every figure is a real PNG/SVG of the requested size, and what it draws is
what the atlas holds (checked through the returned Figure's artists), on synthetic atlases."""

from __future__ import annotations

import hashlib
import math
import re
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from seqatlas import plot, schema
from seqatlas.atlas import Atlas
from seqatlas.cli.plot_cmd import plot_app
from seqatlas.errors import AtlasIndexError, ConfigError, InputError
from seqatlas.query import AnomalyParams, anomalies, enrichment, identity, sql
from seqatlas.store import AtlasReader, AtlasWriter
from tests.embedding_data import make_token_atlas, one_hot, random_dna
from tests.query_data import MODEL, _table, add_ablations, make_atlas
from tests.query_data import doubling_table as make_doubling_table

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SEQS = {"chrA": random_dna(600, 1), "chrB": random_dna(300, 2)}
REPEATS = [("chrA", 95, 115, "(CA)n", "Simple_repeat", "Simple_repeat"),
           ("chrA", 40, 450, "L1", "LINE", "L1"),
           ("chrA", 500, 520, "AluY", "SINE", "Alu"),
           ("chrA", 100, 110, "copy", "in_context_copy", "copy"),
           ("chrA", 160, 170, "(TA)n", "Simple_repeat", "Simple_repeat"),
           ("chrB", 200, 260, "AluY", "SINE", "Alu")]


def _ablation_rows(method: str, seed: int, positions, slope: float) -> list[dict]:
    return [{"seq_id": "chrA", "pos": p, "target_start": 100, "target_end": 110,
             "partner_start": 300, "partner_end": 310, "control_start": 320,
             "control_end": 330, "control_rule": "nearest", "copy_strand": "+",
             "window_start": 0, "window_end": 600, "method": method, "seed": seed,
             "logp_intact": -6.0, "logp_partner": -6.5 - slope * (p - 100),
             "logp_control": -6.1} for p in positions]


def _scores(seed: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = {s: rng.normal(-1.4, 0.05, len(r)).astype(np.float32) for s, r in SEQS.items()}
    scores["chrA"][100:110] = -6.0  # low tail, inside repeats and at copies
    scores["chrA"][300:305] = -0.2  # high tail
    return scores


def _copies() -> dict[str, np.ndarray]:
    copies = {s: np.zeros(len(r), dtype=int) for s, r in SEQS.items()}
    copies["chrA"][100:110] = 200  # direct: make_atlas gives positive offsets strand +
    copies["chrA"][150:160] = -40  # reverse complement
    return copies


@pytest.fixture(scope="module")
def atlas(tmp_path_factory) -> Path:
    """Scores with a low and a high anomalous run, repeats, copies, one ablation run."""
    path = make_atlas(tmp_path_factory.mktemp("plot") / "atlas", SEQS, _scores(),
                      copies=_copies(), repeats=REPEATS)
    return add_ablations(path, _ablation_rows("mask", 0, range(100, 110), 0.01))


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> Path:
    """The same, with ablations of two methods and seeds."""
    path = make_atlas(tmp_path_factory.mktemp("plot") / "two_runs", SEQS, _scores(),
                      copies=_copies(), repeats=REPEATS)
    add_ablations(path, _ablation_rows("mask", 0, range(100, 110), 0.01))
    return add_ablations(path, _ablation_rows("shuffle", 1, range(100, 105), 0.03))


@pytest.fixture(scope="module")
def bare(tmp_path_factory) -> Path:
    """Scores only: no repeats, no ablations, no embeddings."""
    return make_atlas(tmp_path_factory.mktemp("plot") / "bare", SEQS, _scores())


@pytest.fixture(scope="module")
def stranded(tmp_path_factory) -> Path:
    """Both strands scored (logp, logp_rc, logp_mean) with entropy."""
    path = tmp_path_factory.mktemp("plot") / "stranded"
    residues = SEQS["chrB"]
    n = len(residues)
    rng = np.random.default_rng(9)
    forward = rng.normal(-1.2, 0.1, n).astype(np.float32)
    reverse = rng.normal(-1.3, 0.1, n).astype(np.float32)
    scoring = {"likelihood": "exact", "embeddings": False, "strands": "both", "window": 100,
               "overlap": 25, "embedding_dtype": None, "layer": None}
    with AtlasWriter(path, kind="dna", model=MODEL, scoring=scoring) as writer:
        writer.commit(hashlib.sha256(b"chrB").hexdigest(), {
            "sequences": _table(schema.SEQUENCES, {
                "seq_id": ["chrB"], "ordinal": [0], "length": [n], "description": [""],
                "source": ["synthetic"], "sha1": [""], "global_start": [0],
                "token_offset": [0]}),
            "positions": _table(schema.POSITIONS, {
                "seq_id": ["chrB"] * n, "pos": np.arange(n), "ref": list(residues),
                "soft_masked": [False] * n, "logp": forward, "logp_rc": reverse,
                "logp_mean": (forward + reverse) / 2,
                "entropy": rng.uniform(0.5, 1.4, n).astype(np.float32)})})
    return path


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    """12,000 positions with dense copies and repeats closer together than a bin."""
    n = 12_000
    rng = np.random.default_rng(11)
    scores = rng.normal(-1.4, 0.2, n).astype(np.float32)
    scores[3000:3020] = -8.0
    copies = np.zeros(n, dtype=int)
    copies[1000:4000] = 500
    copies[6000:6600] = -300
    repeats = [("big", 100, 110, "a", "Simple", "a"), ("big", 115, 130, "b", "Simple", "b"),
               ("big", 1000, 1010, "c", "Simple", "c"), ("big", 5000, 5200, "L1", "LINE", "L1")]
    return make_atlas(tmp_path_factory.mktemp("plot") / "big", {"big": random_dna(n, 3)},
                      {"big": scores}, copies={"big": copies}, repeats=repeats)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> Path:
    """Token embeddings in two layers, one-hot by base plus a little noise."""
    vocabulary = list("ACGT")
    return make_token_atlas(
        tmp_path_factory.mktemp("plot") / "embedded",
        {"s1": random_dna(400, 5), "s2": random_dna(300, 6)},
        lambda layer, texts, ids: one_hot(texts, vocabulary) * (1 + layer / 10)
        + 0.05 * np.sin(ids * layer)[:, None], dim=4, layers=(3, 6))


# -- helpers ------------------------------------------------------------------------------

def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _svg_size(path: Path) -> tuple[str, str]:
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg") and root.get("viewBox")
    return root.get("width"), root.get("height")


def _axes(figure, label: str):
    found = [ax for ax in figure.axes if ax.get_label() == label]
    assert len(found) == 1, [ax.get_label() for ax in figure.axes]
    return found[0]


def _labels(figure) -> list[str]:
    return [ax.get_label() for ax in figure.axes]


def _line(ax, gid: str):
    found = [line for line in ax.get_lines() if line.get_gid() == gid]
    assert len(found) == 1, [line.get_gid() for line in ax.get_lines()]
    return found[0]


def _collection(ax, gid: str):
    found = [c for c in ax.collections if c.get_gid() == gid]
    assert len(found) == 1, [c.get_gid() for c in ax.collections]
    return found[0]


def _gids(ax) -> set:
    return {a.get_gid() for a in [*ax.get_lines(), *ax.collections, *ax.patches, *ax.texts]}


def _extents(collection) -> list[tuple[float, float]]:
    return [(float(p.vertices[:, 0].min()), float(p.vertices[:, 0].max()))
            for p in collection.get_paths()]


def _texts(ax, gid: str) -> list[str]:
    return [t.get_text() for t in ax.texts if t.get_gid() == gid]


def _positions(path: Path, seq_id: str) -> dict[str, np.ndarray]:
    table = AtlasReader(path).positions()
    mine = table.filter(pc.equal(table["seq_id"], seq_id)).sort_by("pos")
    return {name: mine[name].to_numpy(zero_copy_only=False) for name in mine.column_names}


def _robust_z(path: Path, column: str = "logp") -> dict[str, np.ndarray]:
    """z per sequence from numpy: (x - median) / (1.4826 MAD) per reference letter."""
    table = AtlasReader(path).positions(columns=["seq_id", "pos", "ref", column])
    values = table[column].to_numpy(zero_copy_only=False).astype(np.float64)
    refs = np.array(table["ref"].to_pylist())
    z = np.full(len(values), np.nan)
    for ref in set(refs):
        mine = (refs == ref) & np.isfinite(values)
        median = np.median(values[mine])
        z[mine] = (values[mine] - median) / (1.4826 * np.median(np.abs(values[mine] - median)))
    seq_ids, pos = np.array(table["seq_id"].to_pylist()), table["pos"].to_numpy()
    out = {}
    for seq_id in set(seq_ids):
        mine = seq_ids == seq_id
        order = np.argsort(pos[mine])
        out[seq_id] = z[mine][order]
    return out


# -- track --------------------------------------------------------------------------------

def test_track_draws_what_the_atlas_holds(atlas, tmp_path):
    params = AnomalyParams(z=2.5)
    out = tmp_path / "track.png"
    figure = plot.track(atlas, region="chrA:50-350", params=params, output=out, size=(640, 480))
    assert _png_size(out) == (640, 480)
    assert _labels(figure) == ["likelihood", "z", "repeats", "copies", "net_gain"]
    stored = _positions(atlas, "chrA")
    logp = _line(_axes(figure, "likelihood"), "logp")
    np.testing.assert_array_equal(logp.get_xdata(), np.arange(50, 350))
    np.testing.assert_array_equal(logp.get_ydata(), stored["logp"][50:350].astype(np.float64))
    z_axes = _axes(figure, "z")
    np.testing.assert_allclose(_line(z_axes, "z").get_ydata(), _robust_z(atlas)["chrA"][50:350],
                               rtol=1e-5, atol=1e-5)
    assert list(_line(z_axes, "threshold:high").get_ydata()) == [2.5, 2.5]
    assert list(_line(z_axes, "threshold:low").get_ydata()) == [-2.5, -2.5]
    assert _axes(figure, "likelihood").get_xlim() == (50.0, 350.0)
    # anomalous regions shaded where query anomalies finds them, on every data panel
    regions = [r for r in anomalies(atlas, params=params).to_pylist()
               if r["seq_id"] == "chrA" and r["end"] > 50 and r["start"] < 350]
    assert {(r["start"], r["end"], r["tail"]) for r in regions} >= {(100, 110, "low"),
                                                                   (300, 305, "high")}
    for panel in ("likelihood", "z"):
        for tail in ("high", "low"):
            assert _extents(_collection(_axes(figure, panel), f"anomalies:{tail}")) == \
                [(r["start"], r["end"]) for r in regions if r["tail"] == tail]
    # repeats overlapping the region, one box each at its stored extent, by class
    repeats_axes = _axes(figure, "repeats")
    for name in ("Simple_repeat", "LINE", "in_context_copy"):
        expected = sorted((s, e) for seq, s, e, _, cls, _ in REPEATS if seq == "chrA"
                          and cls == name and e > 50 and s < 350)
        assert _extents(_collection(repeats_axes, f"repeats:{name}")) == expected
    assert "repeats:SINE" not in _gids(repeats_axes)  # chrA:500-520 is outside
    legend = [t.get_text() for t in repeats_axes.get_legend().get_texts()]
    assert legend == ["LINE", "Simple_repeat", "in_context_copy"]
    # arcs from pos to pos + copy_offset: direct above the axis, reverse complement below
    copies = _axes(figure, "copies")
    for gid, positions, offset, sign in (("copies:+", range(100, 110), 200, 1),
                                         ("copies:-", range(150, 160), -40, -1)):
        segments = _collection(copies, gid).get_segments()
        assert [(s[0, 0], s[-1, 0]) for s in segments] == [(p, p + offset) for p in positions]
        assert all((sign * s[:, 1] >= 0).all() and (sign * s[:, 1]).max() > 0 for s in segments)
    # net_gain of the one run, per probed position
    gains = _line(_axes(figure, "net_gain"), "net_gain:mask:0")
    np.testing.assert_array_equal(gains.get_xdata(), np.arange(100, 110))
    f32 = np.float32
    expected = [f32(f32(-6.0) - f32(-6.5 - 0.01 * k)) - f32(f32(-6.0) - f32(-6.1))
                for k in range(10)]
    np.testing.assert_allclose(gains.get_ydata(), np.array(expected, dtype=np.float32),
                               rtol=1e-6)
    assert "mask, seed 0" in _axes(figure, "net_gain").get_ylabel()
    assert "binned" not in figure.get_suptitle()


def test_smoothed_z_at_the_region_edges_uses_positions_outside_it(atlas):
    params = AnomalyParams(smooth=5)
    figure = plot.track(atlas, region="chrA:98-320", params=params)
    whole = sql(atlas, "SELECT z FROM position_z WHERE seq_id = 'chrA' ORDER BY pos",
                params=params)["z"].to_numpy()
    np.testing.assert_array_equal(_line(_axes(figure, "z"), "z").get_ydata(), whole[98:320])
    smoothed = np.convolve(_robust_z(atlas)["chrA"], np.ones(5) / 5, mode="same")
    np.testing.assert_allclose(whole[98:320], smoothed[98:320], rtol=1e-5, atol=1e-5)


def test_track_names_each_ablation_run_and_can_choose_one(two_runs):
    figure = plot.track(two_runs, region="chrA:90-120")
    panel = _axes(figure, "net_gain")
    assert len(_line(panel, "net_gain:mask:0").get_xdata()) == 10
    np.testing.assert_array_equal(_line(panel, "net_gain:shuffle:1").get_xdata(),
                                  np.arange(100, 105))
    assert [t.get_text() for t in panel.get_legend().get_texts()] == ["mask, seed 0",
                                                                      "shuffle, seed 1"]
    chosen = plot.track(two_runs, region="chrA:90-120",
                        params=AnomalyParams(ablation_method="shuffle"))
    assert {line.get_gid() for line in _axes(chosen, "net_gain").get_lines()} == \
        {None, "net_gain:shuffle:1"}
    with pytest.raises(ConfigError, match="no 'substitute' ablations"):
        plot.track(two_runs, region="chrA:90-120",
                   params=AnomalyParams(ablation_method="substitute"))


def test_track_draws_both_strands_and_entropy(stranded):
    figure = plot.track(stranded, region="chrB:20-120")
    assert _labels(figure) == ["likelihood", "z", "entropy"]  # no repeats, copies, ablations
    stored = _positions(stranded, "chrB")
    panel = _axes(figure, "likelihood")
    for column in ("logp", "logp_rc", "logp_mean"):
        np.testing.assert_array_equal(_line(panel, column).get_ydata(),
                                      stored[column][20:120].astype(np.float64))
    np.testing.assert_array_equal(_line(_axes(figure, "entropy"), "entropy").get_ydata(),
                                  stored["entropy"][20:120].astype(np.float64))
    # z is the strand mean's, the atlas's score column with --strands both
    np.testing.assert_allclose(_line(_axes(figure, "z"), "z").get_ydata(),
                               _robust_z(stranded, "logp_mean")["chrB"][20:120], rtol=1e-5,
                               atol=1e-5)
    rc_only = plot.track(Atlas(stranded), region="chrB", column="logp_rc")  # an Atlas too
    assert _axes(rc_only, "likelihood").get_xlim() == (0.0, 300.0)
    np.testing.assert_allclose(_line(_axes(rc_only, "z"), "z").get_ydata(),
                               _robust_z(stranded, "logp_rc")["chrB"], rtol=1e-5, atol=1e-5)


def test_a_long_region_is_binned(big):
    figure = plot.track(big, region="big:5-12,000", max_positions=500, max_arcs=50)
    per_bin = math.ceil(11_995 / 500)
    assert per_bin == 24
    assert f"binned: {per_bin} positions per bin" in figure.get_suptitle()
    logp = _positions(big, "big")["logp"].astype(np.float64)[5:]
    bins = [logp[i:i + per_bin] for i in range(0, len(logp), per_bin)]
    assert len(bins) == 500 and len(bins[-1]) == 11_995 - 499 * 24  # the last bin is shorter
    line = _line(_axes(figure, "likelihood"), "logp")
    np.testing.assert_allclose(line.get_ydata(), [b.mean() for b in bins], rtol=1e-12)
    starts = 5 + per_bin * np.arange(500)
    np.testing.assert_array_equal(line.get_xdata(),
                                  (starts + np.minimum(starts + per_bin, 12_000) - 1) / 2)
    band = _collection(_axes(figure, "likelihood"), "logp:range")
    ys = np.concatenate([p.vertices[:, 1] for p in band.get_paths()])
    assert np.isin([b.min() for b in bins], ys).all() and np.isin([b.max() for b in bins],
                                                                  ys).all()
    assert "z:range" in _gids(_axes(figure, "z"))
    # repeats of one class less than a bin apart merge into one box
    panel = _axes(figure, "repeats")
    assert _extents(_collection(panel, "repeats:Simple")) == [(100, 130), (1000, 1010)]
    assert _extents(_collection(panel, "repeats:LINE")) == [(5000, 5200)]
    # 3,600 copies thinned to every 72nd, in position order
    copies = _axes(figure, "copies")
    stride = math.ceil(3600 / 50)
    expected = [p for i, p in enumerate([*range(1000, 4000), *range(6000, 6600)])
                if i % stride == 0]
    drawn = sorted(s[0, 0] for gid in ("copies:+", "copies:-")
                   for s in _collection(copies, gid).get_segments())
    assert drawn == expected and len(drawn) <= 50
    assert _texts(copies, "arcs-note") == [f"arcs: 1 in {stride} of 3,600 copies shown "
                                           f"({len(expected)})"]


@pytest.mark.parametrize("region,message", [
    ("chrZ:0-10", r"region 'chrZ:0-10': .* has no sequence 'chrZ'; its sequences are "
                  r"chrA:0-600, chrB:0-300"),
    ("chrA:50-50", r"region 'chrA:50-50' is empty: START must be below END; the valid range "
                   r"is chrA:0-600"),
    ("chrA:400-100", r"region 'chrA:400-100' is empty"),
    ("chrA:0-601", r"region 'chrA:0-601' ends past the end of chrA \(600 positions\): the "
                   r"valid range is chrA:0-600"),
    ("chrA:10", r"region 'chrA:10' is not SEQ:START-END"),
    ("chrA:-5-10", r"region 'chrA:-5-10' is not SEQ:START-END"),
    ("chrA:1e3-2e3", r"region 'chrA:1e3-2e3' is not SEQ:START-END"),
    ("", r"region '' is not SEQ:START-END"),
])
def test_region_errors_name_the_region_and_the_valid_range(atlas, region, message):
    with pytest.raises(InputError, match=message):
        plot.track(atlas, region=region)


def test_track_refuses_bad_limits(atlas):
    for name in ("max_positions", "max_arcs"):
        with pytest.raises(ConfigError, match=f"--{name.replace('_', '-')}"):
            plot.track(atlas, region="chrA:0-10", **{name: 0})


# -- output -------------------------------------------------------------------------------

@pytest.mark.parametrize("options,message", [
    ({"size": (0, 100)}, r"out of range: give \(width, height\) in whole pixels"),
    ({"size": (100,)}, "not a \\(width, height\\) pair"),
    ({"size": (640.0, 480)}, "--width 1200 --height 800"),
    ({"size": (100, 9000)}, "from 100 to 8000"),
    ({"format": "jpg"}, "give --format png or --format svg"),
    ({"output": "figure.jpg"}, "name it .png or .svg"),
    ({"output": "figure.png", "format": "svg"}, "rename it .svg or drop --format"),
])
def test_bad_sizes_and_formats_say_how_to_fix_them(atlas, tmp_path, options, message):
    if "output" in options:
        options = {**options, "output": tmp_path / options["output"]}
    with pytest.raises(ConfigError, match=message):
        plot.distribution(atlas, **options)
    assert list(tmp_path.iterdir()) == []


def test_svg_has_the_requested_size(atlas, tmp_path):
    plot.track(atlas, region="chrA:0-100", output=tmp_path / "t.svg", size=(900, 500))
    assert _svg_size(tmp_path / "t.svg") == ("900px", "500px")
    plot.enrichment(atlas, output=tmp_path / "plot.out", format="svg", size=(400, 300))
    assert _svg_size(tmp_path / "plot.out") == ("400px", "300px")
    # the same figure gives the same bytes
    plot.track(atlas, region="chrA:0-100", output=tmp_path / "again.svg", size=(900, 500))
    assert (tmp_path / "again.svg").read_bytes() == (tmp_path / "t.svg").read_bytes()


def test_output_is_atomic_never_inside_the_atlas_and_dash_is_stdout(atlas, tmp_path,
                                                                   capfdbinary):
    target = tmp_path / "kept.png"
    target.write_bytes(b"old")
    with pytest.raises(InputError):
        plot.track(atlas, region="chrA:0-900", output=target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["kept.png"]  # no temporary left
    with pytest.raises(ConfigError, match="inside the atlas"):
        plot.distribution(atlas, output=atlas / "figure.png")
    assert not (atlas / "figure.png").exists()
    capfdbinary.readouterr()
    plot.distribution(atlas, output="-", size=(640, 400))
    data = capfdbinary.readouterr().out
    assert data[:8] == PNG_SIGNATURE and struct.unpack(">II", data[16:24]) == (640, 400)


# -- enrichment ---------------------------------------------------------------------------

def test_enrichment_draws_the_odds_ratios_intervals_and_q_values(atlas, tmp_path):
    out = tmp_path / "enrichment.png"
    figure = plot.enrichment(atlas, output=out, size=(800, 600))
    assert _png_size(out) == (800, 600)
    rows = enrichment(atlas).to_pylist()
    ax = _axes(figure, "enrichment")
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_yticklabels()] == [r["group"] for r in rows]
    finite = [(i, r) for i, r in enumerate(rows) if math.isfinite(r["odds_ratio"])
              and r["odds_ratio"] > 0]
    assert finite  # LINE and Simple_repeat
    (container,) = ax.containers
    data, _, (bars,) = container.lines
    np.testing.assert_allclose(data.get_xdata(), [r["odds_ratio"] for _, r in finite])
    np.testing.assert_array_equal(data.get_ydata(), [i for i, _ in finite])
    np.testing.assert_allclose([(s[0, 0], s[1, 0]) for s in bars.get_segments()],
                               [(r["ci_low"], r["ci_high"]) for _, r in finite], rtol=1e-12)
    # in_context_copy: every position inside is anomalous, so the odds ratio is infinite
    infinite = [i for i, r in enumerate(rows) if r["odds_ratio"] == math.inf]
    assert [rows[i]["group"] for i in infinite] == ["in_context_copy"]
    clipped = _line(ax, "odds_ratio:clipped")
    assert list(clipped.get_ydata()) == infinite and clipped.get_marker() == ">"
    assert clipped.get_xdata()[0] < ax.get_xlim()[1]
    ci = _collection(ax, "ci:clipped").get_segments()
    np.testing.assert_allclose([(s[0, 0], s[1, 0]) for s in ci],
                               [(rows[i]["ci_low"], rows[i]["ci_high"]) for i in infinite])
    assert _texts(ax, "q-value") == [f"q = {r['q_value']:.3g}" for r in rows]
    assert list(_line(ax, "no-effect").get_xdata()) == [1.0, 1.0]


def test_enrichment_of_a_table_with_infinite_zero_and_nan_odds_ratios(atlas):
    table = pa.table({"group": ["inf", "zero", "nan", "two"],
                      "odds_ratio": [math.inf, 0.0, math.nan, 2.0],
                      "ci_low": [3.0, 0.01, math.nan, 1.5], "ci_high": [90.0, 0.5, math.nan, 3.0],
                      "q_value": [0.01, 0.2, 1.0, None]})
    ax = _axes(plot.enrichment(atlas, table=table), "enrichment")
    markers = sorted((line.get_marker(), tuple(line.get_ydata()))
                     for line in ax.get_lines() if line.get_gid() == "odds_ratio:clipped")
    assert markers == [("<", (1.0,)), (">", (0.0,))]
    assert len(_texts(ax, "not-estimable")) == 1
    data = ax.containers[0].lines[0]
    assert list(data.get_xdata()) == [2.0] and list(data.get_ydata()) == [3.0]
    assert _texts(ax, "q-value") == ["q = 0.01", "q = 0.2", "q = 1", "q = n/a"]
    many = pa.table({"group": [f"g{i}" for i in range(12)], "odds_ratio": [2.0] * 12,
                     "ci_low": [1.0] * 12, "ci_high": [4.0] * 12, "q_value": [0.5] * 12})
    figure = plot.enrichment(atlas, table=many, max_groups=5)
    assert len(_texts(_axes(figure, "enrichment"), "q-value")) == 5
    assert "the first 5 of 12 groups" in figure.get_suptitle()
    with pytest.raises(InputError, match="lacks the column\\(s\\) q_value"):
        plot.enrichment(atlas, table=table.drop_columns(["q_value"]))


def test_enrichment_needs_repeats(bare):
    with pytest.raises(ConfigError, match="has no repeats: import some with `seqatlas "
                                          "annotate"):
        plot.enrichment(bare)


# -- distribution -------------------------------------------------------------------------

def test_distribution_histograms_hold_every_scored_position(atlas, tmp_path):
    out = tmp_path / "distribution.svg"
    figure = plot.distribution(atlas, output=out, params=AnomalyParams(z=2.0), bins=30,
                               size=(1000, 700))
    assert _svg_size(out) == ("1000px", "700px")
    table = AtlasReader(atlas).positions(columns=["ref", "logp"])
    refs = np.array(table["ref"].to_pylist())
    logp = table["logp"].to_numpy().astype(np.float64)
    # z as the engine computes it (test_track checks it against numpy): bins by its values
    scored = sql(atlas, "SELECT ref, z FROM position_z WHERE z IS NOT NULL")
    z, z_refs = scored["z"].to_numpy(), np.array(scored["ref"].to_pylist())
    assert sorted(_labels(figure)) == sorted(f"{k}:{r}" for k in ("score", "z") for r in "ACGT")
    for ref in "ACGT":
        ax = _axes(figure, f"score:{ref}")
        (step,) = [p for p in ax.patches if p.get_gid() == "histogram"]
        counts, edges, _ = step.get_data()
        values = logp[refs == ref]
        assert len(edges) == 31
        inside = values[(values >= edges[0]) & (values <= edges[-1])]
        np.testing.assert_array_equal(counts, np.histogram(inside, bins=edges)[0])
        # the far outliers (-6.0, -0.2) are counted beside the axis, not dropped
        below, above = int((values < edges[0]).sum()), int((values > edges[-1]).sum())
        assert counts.sum() + below + above == len(values) and below + above > 0
        outside = [f"{n:,} {k}" for n, k in ((below, "below"), (above, "above")) if n]
        assert _texts(ax, "outside") == [" / ".join(outside) + " the axis"]
        median = np.median(values)
        scale = 1.4826 * np.median(np.abs(values - median))
        assert _line(ax, "median").get_xdata()[0] == pytest.approx(median, rel=1e-6)
        assert sorted(line.get_xdata()[0] for line in ax.get_lines()
                      if line.get_gid() == "scale") == pytest.approx(
            [median - scale, median + scale], rel=1e-5)
        fit = _line(ax, "fit")  # the normal, scaled to the counts
        width = edges[1] - edges[0]
        assert fit.get_ydata().max() == pytest.approx(
            len(values) * width / (scale * math.sqrt(2 * math.pi)), rel=1e-2)
        zax = _axes(figure, f"z:{ref}")
        (zstep,) = [p for p in zax.patches if p.get_gid() == "histogram"]
        zcounts, zedges, _ = zstep.get_data()
        zvalues = z[z_refs == ref]
        zinside = zvalues[(zvalues >= zedges[0]) & (zvalues <= zedges[-1])]
        np.testing.assert_array_equal(zcounts, np.histogram(zinside, bins=zedges)[0])
        assert list(_line(zax, "threshold:high").get_xdata()) == [2.0, 2.0]
        assert list(_line(zax, "threshold:low").get_xdata()) == [-2.0, -2.0]


def test_distribution_needs_scores(tmp_path):
    path = make_atlas(tmp_path / "unscored", {"s": "ACGT"}, {"s": np.zeros(4)},
                      likelihood="none")
    with pytest.raises(ConfigError, match="--likelihood none.*`plot distribution`"):
        plot.distribution(path)


# -- identity -----------------------------------------------------------------------------

def test_identity_draws_each_measure_and_its_chance(embedded, tmp_path):
    table = identity(embedded, sample=80, k=4)
    out = tmp_path / "identity.png"
    figure = plot.identity(embedded, table=table, output=out, size=(700, 400))
    assert _png_size(out) == (700, 400)
    rows = sorted(table.to_pylist(), key=lambda r: r["layer"])
    ax = _axes(figure, "identity")
    for measure in ("identity", "context", "next", "prev"):
        line = _line(ax, measure)
        np.testing.assert_array_equal(line.get_xdata(), [3, 6])
        np.testing.assert_array_equal(line.get_ydata(), [r[measure] for r in rows])
        chance = _line(ax, f"{measure}_chance")
        assert chance.get_linestyle() == "--"
        np.testing.assert_array_equal(chance.get_ydata(), [r[f"{measure}_chance"] for r in rows])
    computed = plot.identity(embedded, sample=80, k=4, layers=[6])
    line = _line(_axes(computed, "identity"), "identity")
    assert list(line.get_ydata()) == [rows[1]["identity"]]
    assert len(_line(_axes(computed, "identity"), "identity_chance").get_xdata()) == 2
    with pytest.raises(ConfigError, match="pass them or table=, not both"):
        plot.identity(embedded, table=table, sample=10)


def test_identity_needs_embeddings(bare):
    with pytest.raises(ConfigError, match="stores no embeddings, which `plot identity` needs.*"
                                          "`seqatlas ingest FASTA --atlas NEW_DIR --embeddings "
                                          "float16`"):
        plot.identity(bare)


# -- icl ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def doubling_table() -> pa.Table:
    return make_doubling_table()


def test_icl_draws_targets_and_the_doubling_probe(two_runs, doubling_table, tmp_path):
    parquet = tmp_path / "doubling.parquet"
    pq.write_table(doubling_table, parquet)
    out = tmp_path / "icl.png"
    figure = plot.icl(two_runs, doubling=parquet, output=out, size=(900, 450))
    assert _png_size(out) == (900, 450)
    assert _labels(figure) == ["icl", "doubling"]
    ax = _axes(figure, "icl")
    f32 = np.float32
    for method, seed, count, slope in (("mask", 0, 10, 0.01), ("shuffle", 1, 5, 0.03)):
        icl_gain = [f32(f32(-6.0) - f32(-6.5 - slope * k)) for k in range(count)]
        control = f32(f32(-6.0) - f32(-6.1))
        offsets = _collection(ax, f"icl:+:{method}:{seed}").get_offsets()
        np.testing.assert_allclose(offsets, [[control, np.mean(icl_gain, dtype=np.float64)]],
                                   rtol=1e-6)
    diagonal = _line(ax, "diagonal")
    assert list(diagonal.get_xdata()) == list(diagonal.get_ydata())
    assert "mask, seed 0; shuffle, seed 1" in ax.get_title()
    doubling = _axes(figure, "doubling")
    rows = doubling_table.to_pylist()
    for variant in ("original", "shuffled"):
        np.testing.assert_array_equal(
            _collection(doubling, f"doubling:{variant}").get_offsets(),
            [[r["control_gain"], r["icl_gain"]] for r in rows if r["variant"] == variant])
    csv = tmp_path / "doubling.csv"
    pacsv.write_csv(doubling_table, csv)
    from_csv = plot.icl(two_runs, doubling=csv)
    np.testing.assert_array_equal(
        _collection(_axes(from_csv, "doubling"), "doubling:original").get_offsets(),
        _collection(doubling, "doubling:original").get_offsets())


def test_icl_without_ablations(bare, doubling_table, tmp_path):
    with pytest.raises(ConfigError, match="has no ablations: run `seqatlas probe icl --atlas"):
        plot.icl(bare)
    figure = plot.icl(bare, doubling=doubling_table)
    assert _labels(figure) == ["doubling"]
    with pytest.raises(InputError, match="no such file"):
        plot.icl(bare, doubling=tmp_path / "missing.parquet")
    with pytest.raises(InputError, match="lacks the column\\(s\\) icl_gain"):
        plot.icl(bare, doubling=doubling_table.drop_columns(["icl_gain"]))
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(InputError, match="not a probe doubling table"):
        plot.icl(bare, doubling=tmp_path / "junk.parquet")


# -- calibration --------------------------------------------------------------------------

def test_calibration_draws_the_recall_curve_recorded_at_build(embedded, tmp_path):
    from seqatlas.index.build import build_index
    from seqatlas.index.store import read_meta

    build_index(embedded, name="ivf", type="ivf-flat", metric="l2", nlist=8)
    search = read_meta(AtlasReader(embedded), "ivf")["search"]
    figure = plot.calibration(embedded, index="ivf", output=tmp_path / "c.png", size=(500, 400))
    assert _png_size(tmp_path / "c.png") == (500, 400)
    ax = _axes(figure, "calibration")
    curve = sorted((float(k), v) for k, v in search["curve"].items())
    np.testing.assert_array_equal(_line(ax, "recall").get_xdata(), [k for k, _ in curve])
    np.testing.assert_array_equal(_line(ax, "recall").get_ydata(), [v for _, v in curve])
    assert _line(ax, "chosen").get_xdata()[0] == search[search["parameter"]]
    with pytest.raises(AtlasIndexError, match="no index named 'missing'"):
        plot.calibration(embedded, index="missing")


# -- CLI ----------------------------------------------------------------------------------

def test_every_command_ends_its_help_with_an_example():
    names = [info.name for info in plot_app.registered_commands]
    assert names == ["track", "enrichment", "distribution", "identity", "icl",
                     "calibration", "mutagenesis", "embedding"]
    for info in plot_app.registered_commands:
        last = info.callback.__doc__.strip().splitlines()[-1].strip()
        assert last.startswith(f"Example: seqatlas plot {info.name} --atlas "), last


def test_cli_commands_write_their_images(atlas, embedded, doubling_table, tmp_path):
    from seqatlas.index.build import build_index
    from seqatlas.index.store import list_indexes

    if "ivf" not in {i["name"] for i in list_indexes(embedded)}:
        build_index(embedded, name="ivf", type="ivf-flat", metric="l2", nlist=8)
    runner = CliRunner()
    csv = tmp_path / "doubling.csv"
    pacsv.write_csv(doubling_table, csv)
    cases = [
        ("track.png", ["track", "--atlas", str(atlas), "--region", "chrA:50-350", "--z",
                       "2.5", "--max-positions", "100"]),
        ("enrichment.svg", ["enrichment", "--atlas", str(atlas), "--by", "family"]),
        ("distribution.png", ["distribution", "--atlas", str(atlas), "--bins", "20"]),
        ("identity.png", ["identity", "--atlas", str(embedded), "--sample", "40", "-k", "3",
                          "--layer", "6"]),
        ("icl.png", ["icl", "--atlas", str(atlas), "--doubling", str(csv)]),
        ("recall.png", ["calibration", "--atlas", str(embedded), "--index", "ivf"]),
    ]
    for name, args in cases:
        out = tmp_path / name
        result = runner.invoke(plot_app, [*args, "-o", str(out), "--width", "420", "--height",
                                          "300"])
        assert result.exit_code == 0, (name, result.output, result.exception)
        if name.endswith(".png"):
            assert _png_size(out) == (420, 300)
        else:
            assert _svg_size(out) == ("420px", "300px")
        assert f"Wrote {out} (420x300 px, {out.suffix[1:].upper()})" in result.output
    for format, says in (("svg", "rename it .svg"), ("jpg", "give --format png or --format svg")):
        result = runner.invoke(plot_app, ["track", "--atlas", str(atlas), "--region",
                                          "chrA:0-10", "-o", str(tmp_path / "x.png"), "--format",
                                          format])
        assert result.exit_code == 1 and isinstance(result.exception, ConfigError)
        assert says in str(result.exception) and not (tmp_path / "x.png").exists()


@pytest.fixture
def seqatlas_main():
    """``seqatlas`` itself (cli.main.main, its error handling included)."""
    from seqatlas.cli import main as entry

    return entry.main


def test_cli_bad_region_exits_1_with_an_error_and_no_traceback(atlas, tmp_path, capsys,
                                                               seqatlas_main):
    out = tmp_path / "track.png"
    code = seqatlas_main(["plot", "track", "--atlas", str(atlas), "--region", "chrA:0-9999",
                          "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 1 and not out.exists()
    assert captured.err.startswith("Error: region 'chrA:0-9999' ends past the end of chrA")
    assert "chrA:0-600" in captured.err and "Traceback" not in captured.err + captured.out
    result = CliRunner().invoke(plot_app, ["track", "--atlas", str(atlas), "--region", "nope:1-2",
                                           "-o", str(out)])
    assert result.exit_code == 1 and isinstance(result.exception, InputError)
    assert re.search(r"no sequence 'nope'", str(result.exception))
    assert seqatlas_main(["plot", "track", "--atlas", str(atlas), "--region", "chrA:0-60",
                          "-o", str(out), "--width", "300", "--height", "200"]) == 0
    assert _png_size(out) == (300, 200)
