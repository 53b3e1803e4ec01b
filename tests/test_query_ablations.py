"""The ablation (``probe icl``) columns of the query layer: icl_regions, position_z,
anomaly_regions, anomalies --with-repeats and enrichment, checked against numpy."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

import seqatlas
from seqatlas.cli.main import app, main
from seqatlas.errors import ConfigError, QueryError
from seqatlas.query import AnomalyParams
from tests.query_data import add_ablations, make_atlas

RNG = np.random.default_rng(17)
SEQS = {"chrA": "".join(RNG.choice(list("ACGT"), 400)),
        "chrB": "".join(RNG.choice(list("ACGT"), 300))}
ORDER = list(SEQS)



def approx(expected, **tolerance):
    """``pytest.approx`` that also accepts None (equal only to None): pytest 9.2 refuses
    ``approx(None)`` with a relative tolerance."""
    return None if expected is None else pytest.approx(expected, **tolerance)

def _scores():
    rng = np.random.default_rng(4)
    scores = {k: rng.normal(-1.3, 0.2, len(v)) for k, v in SEQS.items()}
    scores["chrA"][100:112] = 0.0  # anomalously likely, its copy 100 bases on
    scores["chrB"][50:56] = 0.0  # anomalously likely, a reverse-complement copy
    scores["chrB"][200:204] = -6.0  # anomalously unlikely, never probed
    scores["chrB"][10:20] = np.nan  # unscored
    return scores


def _copies():
    copies = {k: np.zeros(len(v), dtype=int) for k, v in SEQS.items()}
    copies["chrA"][100:112] = 100
    copies["chrB"][50:56] = -90
    copies["chrB"][250:256] = 20
    return copies


REPEATS = [("chrA", 95, 120, "(ACG)n", "Simple_repeat", None),
           ("chrA", 105, 108, "AluY", "SINE", "Alu"),
           ("chrA", 100, 112, "copy", "in_context_copy", None),  # the copy detector's own
           ("chrB", 40, 60, "L1HS", "LINE", "L1"),
           ("chrB", 250, 270, "MIR", "SINE", "MIR")]

# targets: (seq_id, target, partner, control, control_rule, copy_strand, window, seeds)
TARGETS = [("chrA", (100, 110), (200, 210), (300, 310), "mirror", "+", (0, 400), (0, 1)),
           ("chrB", (50, 54), (140, 144), (None, None), "none", "-", (0, 300), (0, 1)),
           ("chrB", (250, 256), (270, 276), (280, 286), "nearest", "+", (0, 300), (0,))]


def _rows(method: str, shift: float = 0.0) -> list[dict]:
    """Ablation rows of every target, dyadic values (exact in float32)."""
    rows = []
    for t, (seq, (ts, te), (ps, pe), (cs, ce), rule, strand, (ws, we), seeds) in \
            enumerate(TARGETS):
        for seed in seeds:
            for pos in range(ts, te):
                i = pos - ts
                intact = -0.5 - 0.125 * i - 0.25 * seed
                icl = 1.0 + 0.25 * i + 0.5 * seed + 0.125 * t + shift
                control = None if rule == "none" else 0.125 * ((i + seed) % 3)
                rows.append({"seq_id": seq, "pos": pos, "target_start": ts, "target_end": te,
                             "partner_start": ps, "partner_end": pe, "control_start": cs,
                             "control_end": ce, "control_rule": rule, "copy_strand": strand,
                             "window_start": ws, "window_end": we, "method": method,
                             "seed": seed, "logp_intact": intact, "logp_partner": intact - icl,
                             "logp_control": None if control is None else intact - control})
    return rows


def _make(path, *methods: str):
    make_atlas(path, SEQS, _scores(), repeats=REPEATS, copies=_copies())
    for k, method in enumerate(methods):
        add_ablations(path, _rows(method, shift=2.0 * k))
    return path


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    return _make(tmp_path_factory.mktemp("abl") / "atlas", "mask")


@pytest.fixture(scope="module")
def two_methods(tmp_path_factory):
    return _make(tmp_path_factory.mktemp("abl2") / "atlas", "mask", "shuffle")


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return _make(tmp_path_factory.mktemp("plain") / "atlas")


# --- the same, computed with numpy -------------------------------------------------------------

def _expected_positions(rows: list[dict]) -> dict:
    """(seq_id, pos) -> score, excess, z, tail, copy, and the seed means of the ablation rows."""
    scores = {k: v.astype(np.float32).astype(float) for k, v in _scores().items()}
    refs = {k: np.array(list(v)) for k, v in SEQS.items()}
    copies = _copies()
    out = {}
    for letter in "ACGT":
        pooled = np.concatenate([scores[k][refs[k] == letter] for k in ORDER])
        pooled = pooled[~np.isnan(pooled)]
        median = np.median(pooled)
        scale = 1.4826 * np.median(np.abs(pooled - median))
        for k in ORDER:
            for pos in np.flatnonzero((refs[k] == letter) & ~np.isnan(scores[k])):
                excess = scores[k][pos] - median
                z = excess / scale
                out[(k, int(pos))] = {"excess": excess, "z": z,
                                      "tail": "high" if z >= 3 else "low" if z <= -3 else None,
                                      "copy": copies[k][pos] != 0}
    by_position: dict = {}
    for r in rows:
        by_position.setdefault((r["seq_id"], r["pos"]), []).append(r)
    for key, value in out.items():
        group = by_position.get(key, [])
        for column in ("icl_gain", "control_gain", "net_gain"):
            values = [r[column] for r in group if r.get(column) is not None]
            value[column] = float(np.mean(values)) if values else None
    return out


def _with_gains(rows):
    """The rows as add_ablations stores them (the gains filled in)."""
    out = []
    for r in rows:
        r = dict(r)
        r["icl_gain"] = r["logp_intact"] - r["logp_partner"]
        r["control_gain"] = None if r["logp_control"] is None else \
            r["logp_intact"] - r["logp_control"]
        r["net_gain"] = None if r["control_gain"] is None else r["icl_gain"] - r["control_gain"]
        out.append(r)
    return out


# --- icl_regions --------------------------------------------------------------------------------

def test_icl_regions_one_row_per_target_and_seed(atlas):
    got = seqatlas.Atlas(atlas).sql(
        "SELECT * FROM icl_regions ORDER BY seq_id, target_start, seed").to_pylist()
    rows = _with_gains(_rows("mask"))
    expected = []
    classes = {("chrA", 100): "SINE,Simple_repeat", ("chrB", 50): "LINE", ("chrB", 250): "SINE"}
    for seq, (ts, te), (ps, pe), (cs, ce), rule, strand, (ws, we), seeds in TARGETS:
        for seed in seeds:
            mine = [r for r in rows if r["seq_id"] == seq and r["target_start"] == ts
                    and r["seed"] == seed]

            def mean(column):
                values = [r[column] for r in mine if r[column] is not None]
                return float(np.mean(values)) if values else None

            expected.append({
                "seq_id": seq, "target_start": ts, "target_end": te, "method": "mask",
                "seed": seed, "length": te - ts, "n_probed": te - ts, "partner_start": ps,
                "partner_end": pe, "copy_strand": strand, "copy_distance": ps - ts,
                "control_start": cs, "control_end": ce, "control_rule": rule,
                "window_start": ws, "window_end": we,
                "mean_logp_intact": mean("logp_intact"), "mean_icl_gain": mean("icl_gain"),
                "mean_control_gain": mean("control_gain"), "mean_net_gain": mean("net_gain"),
                "repeat_classes": classes[(seq, ts)]})
    assert got == expected
    # without repeats overlapping (or only the copy detector's): null
    bare = make_atlas(atlas.parent / "bare", SEQS, _scores(),
                      repeats=[("chrA", 100, 112, "copy", "in_context_copy", None)])
    add_ablations(bare, _rows("mask"))
    classes = seqatlas.Atlas(bare).sql("SELECT DISTINCT repeat_classes FROM icl_regions")
    assert classes.to_pylist() == [{"repeat_classes": None}]


def test_icl_regions_is_empty_without_ablations(plain):
    table = seqatlas.Atlas(plain).sql("SELECT * FROM icl_regions")
    assert table.num_rows == 0 and "mean_net_gain" in table.column_names


# --- position_z ---------------------------------------------------------------------------------

def _position_z(atlas, **params):
    table = seqatlas.query.sql(atlas, "SELECT * FROM position_z", params=AnomalyParams(**params))
    return {(r["seq_id"], r["pos"]): r for r in table.to_pylist()}


def test_position_z_carries_the_seed_means_and_the_excess(atlas):
    got = _position_z(atlas)
    expected = _expected_positions(_with_gains(_rows("mask")))
    assert set(got) == set(expected)
    probed = 0
    for key, want in expected.items():
        row = got[key]
        assert row["excess"] == approx(want["excess"], abs=1e-5)
        for column in ("icl_gain", "control_gain", "net_gain"):
            if want[column] is None:
                assert row[column] is None, (key, column)
            else:
                assert row[column] == approx(want[column], abs=1e-6), (key, column)
        probed += want["icl_gain"] is not None
    assert probed == 10 + 4 + 6
    # two seeds averaged: chrA:100 has seeds 0 and 1
    assert got[("chrA", 100)]["icl_gain"] == approx((1.0 + 1.5) / 2)
    # control_rule none: icl_gain, but no control_gain or net_gain
    row = got[("chrB", 50)]
    assert row["icl_gain"] is not None and row["control_gain"] is None and \
        row["net_gain"] is None


def test_no_ablations_gives_null_columns_and_the_same_old_values(atlas, plain):
    without, with_ = _position_z(plain), _position_z(atlas)
    assert set(without) == set(with_)
    for key, row in without.items():
        assert row["icl_gain"] is row["control_gain"] is row["net_gain"] is None
        other = with_[key]
        assert {k: v for k, v in row.items() if k not in ("icl_gain", "control_gain",
                                                          "net_gain")} == \
            {k: v for k, v in other.items() if k not in ("icl_gain", "control_gain",
                                                         "net_gain")}
    regions = seqatlas.query.anomalies(plain, with_repeats=True).to_pylist()
    assert regions and all(r["n_probed"] == 0 and r["net_gain"] is None and
                           r["explained_fraction"] is None and r["explained_by_lookup"] is None
                           for r in regions)
    old = ("seq_id", "start", "end", "tail", "n_anomalous", "mean_z", "peak_z", "copy_fraction",
           "explained_by_copy", "repeat_classes", "repeat_names")
    probed = seqatlas.query.anomalies(atlas, with_repeats=True).to_pylist()
    assert [[r[c] for c in old] for r in regions] == [[r[c] for c in old] for r in probed]
    rows = seqatlas.query.enrichment(plain).to_pylist()
    assert all(r["probed_anomalous_inside"] == 0 and r["mean_net_gain"] is None and
               r["explained_fraction"] is None for r in rows)


# --- regions ------------------------------------------------------------------------------------

def _expected_region(expected: dict, region: dict) -> dict:
    inside = [v for (seq, pos), v in expected.items() if seq == region["seq_id"]
              and region["start"] <= pos < region["end"] and v["tail"] == region["tail"]]
    assert len(inside) == region["n_anomalous"]
    probed = [v for v in inside if v["net_gain"] is not None]
    gain = sum(v["net_gain"] for v in probed)
    excess = sum(v["excess"] for v in probed)
    return {"n_probed": len(probed), "net_gain": gain / len(probed) if probed else None,
            "explained_fraction": gain / excess if probed and excess else None}


def test_regions_say_how_much_the_lookup_explains(atlas):
    expected = _expected_positions(_with_gains(_rows("mask")))
    regions = seqatlas.query.anomalies(atlas, with_repeats=True).to_pylist()
    by_start = {(r["seq_id"], r["start"]): r for r in regions}
    assert {("chrA", 100), ("chrB", 50), ("chrB", 200)} <= set(by_start)
    for region in regions:
        want = _expected_region(expected, region)
        assert region["n_probed"] == want["n_probed"]
        for column in ("net_gain", "explained_fraction"):
            assert region[column] == approx(want[column], rel=1e-6)
        fraction = want["explained_fraction"]
        assert region["explained_by_lookup"] == (None if fraction is None else fraction >= 0.5)
    high = by_start[("chrA", 100)]
    assert (high["end"], high["n_anomalous"], high["n_probed"]) == (112, 12, 10)
    assert high["explained_by_copy"] is True and high["explained_fraction"] > 0.5
    assert by_start[("chrB", 50)]["n_probed"] == 0  # control_rule none: no net_gain
    assert by_start[("chrB", 200)]["explained_by_lookup"] is None
    plain_columns = seqatlas.query.anomalies(atlas).column_names
    assert plain_columns[-3:] == ["n_probed", "net_gain", "explained_fraction"]


# --- enrichment ---------------------------------------------------------------------------------

SPANS = {"class": {"Simple_repeat": [("chrA", 95, 120)],
                   "SINE": [("chrA", 105, 108), ("chrB", 250, 270)],
                   "in_context_copy": [("chrA", 100, 112)], "LINE": [("chrB", 40, 60)]}}


def _expected_group(expected: dict, inside) -> tuple:
    probed = [v for key, v in expected.items() if inside(key) and v["tail"] is not None
              and v["net_gain"] is not None]
    gain = sum(v["net_gain"] for v in probed)
    excess = sum(v["excess"] for v in probed)
    return (len(probed), gain / len(probed) if probed else None,
            gain / excess if probed and excess else None)


def _check_group(row, want):
    assert row["probed_anomalous_inside"] == want[0]
    assert row["mean_net_gain"] == approx(want[1], rel=1e-6)
    assert row["explained_fraction"] == approx(want[2], rel=1e-6)


def test_enrichment_by_class_adds_the_lookup_columns(atlas):
    from seqatlas.query.repeat_enrichment import RESULT_COLUMNS

    expected = _expected_positions(_with_gains(_rows("mask")))
    table = seqatlas.query.enrichment(atlas, by="class")
    assert tuple(table.column_names) == RESULT_COLUMNS
    assert RESULT_COLUMNS[RESULT_COLUMNS.index("q_value") + 1:] == (
        "probed_anomalous_inside", "mean_net_gain", "explained_fraction")
    rows = {r["group"]: r for r in table.to_pylist()}
    assert set(rows) == set(SPANS["class"])
    for group, spans in SPANS["class"].items():
        want = _expected_group(expected, lambda key: any(
            key[0] == s and a <= key[1] < b for s, a, b in spans))
        _check_group(rows[group], want)
    assert rows["Simple_repeat"]["probed_anomalous_inside"] == 10
    assert rows["LINE"]["probed_anomalous_inside"] == 0  # probed, but no net_gain


def test_enrichment_by_copy_adds_the_lookup_columns(atlas):
    expected = _expected_positions(_with_gains(_rows("mask")))
    copies = _copies()
    rows = {r["group"]: r for r in seqatlas.query.enrichment(atlas, by="copy").to_pylist()}
    strands = {"in-context copy, any": (lambda o: o != 0),
               "in-context copy, direct": (lambda o: o > 0),
               "in-context copy, reverse complement": (lambda o: o < 0)}
    assert set(rows) == set(strands)
    for group, test in strands.items():
        _check_group(rows[group], _expected_group(expected,
                                                  lambda key: test(copies[key[0]][key[1]])))
    assert rows["in-context copy, direct"]["probed_anomalous_inside"] == 10


# --- choosing the method ------------------------------------------------------------------------

def test_several_methods_need_a_choice(two_methods):
    for call in (lambda: seqatlas.query.anomalies(two_methods),
                 lambda: seqatlas.query.enrichment(two_methods)):
        with pytest.raises(ConfigError, match=r"several methods \(mask, shuffle\).*"
                                              r"--ablation-method"):
            call()
    # query sql: the other columns read, the ablation ones say what to do
    engine_sql = seqatlas.Atlas(two_methods).sql
    assert engine_sql("SELECT count(z) AS n FROM position_z").to_pylist()[0]["n"] == 690
    with pytest.raises(QueryError, match="--ablation-method"):
        engine_sql("SELECT net_gain FROM position_z")
    # export reads the anomaly views and needs no method
    seqatlas.export(two_methods, format="bed", output=two_methods.parent / "r.bed")


def test_the_chosen_method_gives_its_own_values(two_methods):
    for method, shift in (("mask", 0.0), ("shuffle", 2.0)):
        expected = _expected_positions(_with_gains(_rows(method, shift)))
        got = _position_z(two_methods, ablation_method=method)
        for key, want in expected.items():
            if want["icl_gain"] is not None:
                assert got[key]["icl_gain"] == approx(want["icl_gain"]), key
        regions = seqatlas.query.anomalies(
            two_methods, params=AnomalyParams(ablation_method=method)).to_pylist()
        for region in regions:
            assert region["net_gain"] == approx(
                _expected_region(expected, region)["net_gain"], rel=1e-6)
    icl = seqatlas.Atlas(two_methods).sql("SELECT method, count(*) AS n FROM icl_regions "
                                          "GROUP BY method ORDER BY method").to_pylist()
    assert icl == [{"method": "mask", "n": 5}, {"method": "shuffle", "n": 5}]


def test_a_method_the_atlas_lacks_is_refused(atlas, plain):
    with pytest.raises(ConfigError, match=re.escape("has no 'shuffle' ablations (it has mask)")):
        seqatlas.query.anomalies(atlas, params=AnomalyParams(ablation_method="shuffle"))
    with pytest.raises(ConfigError, match="probe icl"):
        seqatlas.query.enrichment(plain, params=AnomalyParams(ablation_method="mask"))
    with pytest.raises(ConfigError, match="--ablation-method must be one of mask, shuffle, "
                                          "substitute"):
        AnomalyParams(ablation_method="mutate").validate()


# --- CLI ----------------------------------------------------------------------------------------

def test_cli_ablation_method(two_methods, capsys):
    runner = CliRunner()
    result = runner.invoke(app, ["query", "anomalies", "--atlas", str(two_methods),
                                 "--ablation-method", "mask", "--with-repeats",
                                 "--format", "json"])
    assert result.exit_code == 0, result.output
    cli = json.loads(result.stdout)
    api = seqatlas.query.anomalies(two_methods, params=AnomalyParams(ablation_method="mask"),
                                   with_repeats=True).to_pylist()
    assert cli and [(r["start"], r["n_probed"], r["net_gain"], r["explained_by_lookup"])
                    for r in cli] == \
        [(r["start"], r["n_probed"], r["net_gain"], r["explained_by_lookup"]) for r in api]
    result = runner.invoke(app, ["query", "enrichment", "--atlas", str(two_methods),
                                 "--ablation-method", "shuffle", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert "probed_anomalous_inside" in json.loads(result.stdout)[0]
    assert main(["query", "anomalies", "--atlas", str(two_methods)]) == 1
    assert "--ablation-method" in capsys.readouterr().err
    assert main(["query", "anomalies", "--atlas", str(two_methods), "--ablation-method",
                 "mutate"]) == 2
    assert "'mutate' is not one of 'mask', 'shuffle', 'substitute'" in capsys.readouterr().err
    assert main(["query", "sql", "SELECT count(net_gain) AS n FROM position_z", "--atlas",
                 str(two_methods), "--ablation-method", "shuffle", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"n": 16}]
