"""ProteinGym-style zero-shot metrics (seqatlas.variants.evaluation) against direct computations."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import spearmanr

from seqatlas.variants.evaluation import METRICS, evaluate, evaluate_groups

# --- independent reference computations ------------------------------------------------------


def ref_auc(pred, labels):
    """ROC AUC by counting positive/negative pairs (a tie counts 1/2)."""
    pos = [p for p, y in zip(pred, labels) if y]
    neg = [p for p, y in zip(pred, labels) if not y]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def ref_mcc(pred, labels):
    """MCC of labels against pred >= median(pred), from the confusion matrix."""
    cut = statistics.median(pred)
    tp = tn = fp = fn = 0
    for p, y in zip(pred, labels):
        called = p >= cut
        if called and y:
            tp += 1
        elif called:
            fp += 1
        elif y:
            fn += 1
        else:
            tn += 1
    return (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))


def ref_ndcg(pred, meas):
    """ProteinGym's calc_ndcg as a loop; the stable sort ranks the earlier of tied rows first."""
    n = len(meas)
    k = (n * 10) // 100
    lo, hi = min(meas), max(meas)
    gains = [(m - lo) / (hi - lo) for m in meas]
    order = sorted(range(n), key=lambda i: -pred[i])
    dcg = 0.0
    for rank, i in enumerate(order, start=1):
        if rank <= k and gains[i] != 0:
            dcg += gains[i] / math.log2(rank + 1)
    idcg = 0.0
    for rank, g in enumerate(sorted(gains, reverse=True), start=1):
        if rank <= k and g != 0:
            idcg += g / math.log2(rank + 1)
    return dcg / idcg


def percentile_linear(values, q):
    """The q-th percentile with linear interpolation between order statistics."""
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def ref_recall(pred, meas):
    """Fraction of the true top 10% (ties kept) found in the predicted top 10%."""
    t_cut, p_cut = percentile_linear(meas, 90), percentile_linear(pred, 90)
    true_top = {i for i, m in enumerate(meas) if m >= t_cut}
    pred_top = {i for i, p in enumerate(pred) if p >= p_cut}
    return len(true_top & pred_top) / len(true_top)


def tied_data(seed, n):
    rng = np.random.default_rng(seed)
    pred = rng.integers(0, 15, n).astype(float) + rng.choice([0.0, 0.5], n)
    meas = rng.integers(-5, 6, n).astype(float) + 0.1 * rng.integers(0, 3, n)
    pred[-1], meas[-1] = pred[0], meas[0]  # at least one tie in each
    return pred, meas


# --- each metric against its reference -------------------------------------------------------


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("n", [11, 37, 200])
def test_metrics_match_independent_computations(seed, n):
    pred, meas = tied_data(seed, n)
    assert len(set(pred)) < n and len(set(meas)) < n  # ties present
    out = evaluate(pred, meas)
    labels = [m >= statistics.median(meas.tolist()) for m in meas]
    assert out["n"] == n
    assert out["spearman"] == pytest.approx(spearmanr(meas, pred)[0], abs=1e-12)
    assert out["auc"] == pytest.approx(ref_auc(pred, labels), abs=1e-12)
    assert out["mcc"] == pytest.approx(ref_mcc(pred.tolist(), labels), abs=1e-12)
    assert out["ndcg"] == pytest.approx(ref_ndcg(pred.tolist(), meas.tolist()), abs=1e-12)
    assert out["top10_recall"] == pytest.approx(ref_recall(pred, meas), abs=1e-12)


@pytest.mark.parametrize("seed", range(8))
def test_given_bins_are_used_for_auc_and_mcc(seed):
    pred, meas = tied_data(seed, 60)
    bins = (np.random.default_rng(seed + 100).random(60) < 0.3).astype(int)
    out = evaluate(pred, meas, bins=bins)
    labels = bins.astype(bool).tolist()
    assert out["auc"] == pytest.approx(ref_auc(pred, labels), abs=1e-12)
    assert out["mcc"] == pytest.approx(ref_mcc(pred.tolist(), labels), abs=1e-12)
    assert out == evaluate(pred, meas, bins=bins.astype(bool))
    # the other metrics do not depend on the bins
    plain = evaluate(pred, meas)
    for key in ("n", "spearman", "ndcg", "top10_recall"):
        assert out[key] == plain[key]


# --- hand-made cases --------------------------------------------------------------------------


def test_perfect_ranking():
    meas = np.arange(20.0)
    out = evaluate(meas * 3 + 1, meas)
    assert out == {"n": 20, "spearman": 1.0, "auc": 1.0, "mcc": 1.0, "ndcg": 1.0,
                   "top10_recall": 1.0}


def test_reversed_ranking():
    meas = np.arange(20.0)
    out = evaluate(-meas, meas)
    assert out["spearman"] == pytest.approx(-1.0)
    assert out["auc"] == 0.0
    assert out["mcc"] == pytest.approx(-1.0)
    assert out["top10_recall"] == 0.0
    # k = 2: the two lowest measurements (gains 0 and 1/19) against the two highest (1, 18/19)
    expected = (1 / 19 / math.log2(3)) / (1 + 18 / 19 / math.log2(3))
    assert out["ndcg"] == pytest.approx(expected, abs=1e-15)


def test_known_auc_and_mcc():
    # sklearn's roc_auc_score documentation example
    assert evaluate([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])["auc"] == pytest.approx(0.75)
    # median 1, ties with the median are called 1: called [1, 0, 1, 1] vs labels [1, 1, 1, 0]
    assert evaluate([1, 0, 1, 1], [0, 0, 0, 0], bins=[1, 1, 1, 0])["mcc"] == pytest.approx(-1 / 3)
    # called [0, 1, 1, 1] vs labels [0, 0, 1, 1]: tp 2, tn 1, fp 1, fn 0
    got = evaluate([0, 1, 1, 1], [0, 0, 1, 1])["mcc"]
    assert got == pytest.approx(2 / math.sqrt(12))


def test_measured_bin_is_at_or_above_the_median():
    # measured median 1: bins [0, 1, 1, 1]; a prediction ranking row 0 last has AUC 1
    assert evaluate([0, 1, 2, 3], [0, 1, 1, 1])["auc"] == 1.0
    assert evaluate([0, 1, 2, 3], [0, 1, 1, 1], bins=[0, 0, 1, 1])["auc"] == 1.0
    assert evaluate([1, 3, 2, 0], [0, 1, 1, 1])["auc"] == pytest.approx(2 / 3)


def test_ndcg_known_value_and_tie_break():
    # n = 10, k = 1: the top prediction is row 2 with measured 5 of range 0..10
    meas = [0, 10, 5, 1, 2, 3, 4, 6, 7, 8]
    pred = [0, 1, 9, 2, 3, 4, 5, 6, 7, 8]
    assert evaluate(pred, meas)["ndcg"] == pytest.approx(0.5)
    # tied top predictions: the earlier row ranks first
    assert evaluate([9, 9, 0, 1, 2, 3, 4, 5, 6, 7], meas)["ndcg"] == 0.0
    assert evaluate([9, 9, 0, 1, 2, 3, 4, 5, 6, 7], meas[1:] + meas[:1])["ndcg"] == 1.0


def test_top_recall_keeps_ties_at_the_cut():
    # 90th percentile of measured is 9 (linear); rows 9, 10 and 11 tie at 9 -> true top is 3
    meas = list(range(9)) + [9, 9, 9]
    pred = list(range(12))  # predicted top: p >= 9.9 -> rows 10, 11
    assert evaluate(pred, meas)["top10_recall"] == pytest.approx(2 / 3)


# --- missing values and undefined metrics -----------------------------------------------------


def test_missing_values_are_dropped_and_counted_out():
    pred, meas = tied_data(3, 80)
    pred_m = pred.astype(object)
    meas_m = meas.copy()
    pred_m[[1, 7, 30]] = None
    meas_m[[7, 12]] = np.nan
    meas_m[40] = np.inf
    keep = np.ones(80, bool)
    keep[[1, 7, 30, 12, 40]] = False
    out = evaluate(list(pred_m), meas_m)
    assert out["n"] == 75
    assert out == evaluate(pred[keep], meas[keep])


def test_missing_bins_drop_rows():
    pred, meas = tied_data(4, 50)
    bins = (meas > 0).astype(float)
    bins[[0, 5]] = np.nan
    keep = ~np.isnan(bins)
    out = evaluate(pred, meas, bins=bins)
    assert out["n"] == 48
    assert out == evaluate(pred[keep], meas[keep], bins=bins[keep])


@pytest.mark.parametrize("pred, meas", [([], []), ([1.0], [2.0]), ([np.nan, 1.0], [1.0, 2.0])])
def test_too_few_rows_gives_none(pred, meas):
    out = evaluate(pred, meas)
    assert out["n"] == len([p for p, m in zip(pred, meas) if not np.isnan(p)])
    assert all(out[key] is None for key in METRICS[1:])


def test_constant_inputs_and_one_class():
    meas = np.arange(30.0)
    const = evaluate(np.ones(30), meas)
    assert const["spearman"] is None and const["ndcg"] is None and const["top10_recall"] is None
    assert const["mcc"] is None  # binarised prediction is all 1
    assert const["auc"] == 0.5  # one threshold: the ROC diagonal, as in sklearn
    flat = evaluate(meas, np.full(30, 2.0))
    assert flat["spearman"] is None and flat["ndcg"] is None and flat["top10_recall"] is None
    assert flat["auc"] is None and flat["mcc"] is None  # measured >= median: one class
    one = evaluate(meas, meas, bins=np.zeros(30))
    assert one["auc"] is None and one["mcc"] is None and one["spearman"] == 1.0
    few = evaluate([1, 2, 3, 4, 5], [1, 3, 2, 5, 4])
    assert few["ndcg"] is None and few["spearman"] == pytest.approx(0.8)


def test_results_are_plain_python_numbers():
    out = evaluate(*tied_data(0, 40))
    assert list(out) == list(METRICS)
    assert type(out["n"]) is int
    assert all(type(out[key]) is float for key in METRICS[1:])


def test_bad_input_raises():
    with pytest.raises(ValueError):
        evaluate([1, 2, 3], [1, 2])
    with pytest.raises(ValueError):
        evaluate([1, 2, 3], [1, 2, 3], bins=[0, 1])
    with pytest.raises(ValueError):
        evaluate([1, 2, 3], [1, 2, 3], bins=[0, 1, 2])
    with pytest.raises(ValueError):
        evaluate([[1, 2]], [[1, 2]])


# --- groups -----------------------------------------------------------------------------------


def test_groups():
    pred, meas = tied_data(5, 90)
    pred[3] = np.nan
    groups = ["outside_copy", "in_copy", None] * 30
    bins = (meas > 0).astype(int)
    rows = evaluate_groups(pred, meas, groups, bins=bins)
    assert [r["group"] for r in rows] == ["all", "in_copy", "outside_copy"]
    assert rows[0] == {"group": "all", **evaluate(pred, meas, bins=bins)}
    labels = np.array(groups, dtype=object)
    for row in rows[1:]:
        sel = labels == row["group"]
        assert row == {"group": row["group"], **evaluate(pred[sel], meas[sel], bins=bins[sel])}
    assert rows[0]["n"] == 89 and rows[1]["n"] == 30 and rows[2]["n"] == 29


def test_group_edge_cases():
    rows = evaluate_groups([1.0, np.nan, 3.0], [1.0, 2.0, 3.0], ["b", "a", "b"])
    assert [(r["group"], r["n"]) for r in rows] == [("all", 2), ("a", 0), ("b", 2)]
    assert rows[1]["spearman"] is None
    with pytest.raises(ValueError):
        evaluate_groups([1.0, 2.0], [1.0, 2.0], ["all", "x"])
    with pytest.raises(ValueError):
        evaluate_groups([1.0, 2.0], [1.0, 2.0], ["x"])


# --- property test ----------------------------------------------------------------------------

VALUES = st.one_of(st.integers(-3, 3).map(float), st.floats(-1e6, 1e6), st.just(float("nan")),
                   st.just(float("inf")))


@st.composite
def inputs(draw):
    n = draw(st.integers(0, 60))
    pred = draw(st.lists(VALUES, min_size=n, max_size=n))
    meas = draw(st.lists(VALUES, min_size=n, max_size=n))
    bins = draw(st.one_of(st.none(), st.lists(st.sampled_from([0, 1, float("nan")]),
                                              min_size=n, max_size=n)))
    return pred, meas, bins


@settings(max_examples=300, deadline=None, database=None)
@given(data=inputs())
def test_property_outputs_in_range(data):
    pred, meas, bins = data
    out = evaluate(pred, meas, bins=bins)
    assert list(out) == list(METRICS)
    assert 0 <= out["n"] <= len(pred)
    bounds = {"spearman": (-1, 1), "auc": (0, 1), "mcc": (-1, 1), "ndcg": (0, 1),
              "top10_recall": (0, 1)}
    for key, (lo, hi) in bounds.items():
        value = out[key]
        assert value is None or (isinstance(value, float) and lo <= value <= hi), (key, value)
