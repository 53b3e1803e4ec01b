"""Zero-shot variant effect metrics, computed the way ProteinGym computes them.

Definitions follow ``proteingym/performance_DMS_benchmarks.py`` of OATML-Markslab/ProteinGym
(commit bb685245f8f4bb95a5b54b470396c23826cd6284), re-implemented with numpy/scipy only:

- ``spearman``: ``scipy.stats.spearmanr(DMS_score, model_score)[0]`` (average ranks for ties).
- ``auc``: ``sklearn.metrics.roc_auc_score(DMS_score_bin, model_score)``; computed here as the
  Mann-Whitney U from average ranks, i.e. a tied positive/negative pair counts 1/2.
- ``mcc``: ``matthews_corrcoef(DMS_score_bin, model_bin)`` with
  ``model_bin = 1 if score >= median(score) else 0`` (pandas median: the mean of the two middle
  values for an even count; ties with the median go to 1).
- ``ndcg``: ``calc_ndcg(DMS_score, model_score)`` with its defaults (``quantile=True``,
  ``top=10``): ``k = floor(n * 10 / 100)``; gains are the min-max normalised DMS scores;
  rank ``r`` (1-based) orders the model scores descending; DCG sums ``gain / log2(r + 1)``
  over ``r <= k``; IDCG is the same sum with the variants ordered by gain; NDCG = DCG / IDCG.
- ``top10_recall``: ``calc_toprecall(DMS_score, model_score)``: the true top set is
  ``DMS_score >= np.percentile(DMS_score, 90)``, the predicted one
  ``model_score >= np.percentile(model_score, 90)`` (linear interpolation, ties kept), and the
  recall is ``|true & predicted| / |true|``.

Choices where ProteinGym's code does not decide, or where this API asks for ``None``:

- Rows where the prediction, the measurement or (when given) the bin is missing or not
  finite are dropped from every metric; ``n`` counts the rows used. ProteinGym assumes no
  missing values.
- Without ``bins``, the DMS bin is ``measured >= median(measured)``. ProteinGym's released
  ``DMS_score_bin`` uses a manual cut-off for some assays and the median for the rest (its
  reference file's ``DMS_binarization_method``); the ``>=`` mirrors its model binarisation.
- Undefined metrics are ``None``: every metric when ``n < 2``; ``spearman``, ``ndcg`` and
  ``top10_recall`` when either input is constant (``calc_toprecall`` gives 1.0 for a constant
  prediction); ``auc`` and ``mcc`` when the bins hold one class; ``mcc`` when the binarised
  prediction is constant (sklearn returns 0.0 there); ``ndcg`` when ``k == 0``, i.e.
  ``n < 10`` (``calc_ndcg`` returns 0 there). A constant prediction keeps ``auc`` 0.5, as in
  sklearn.
- Ties among predictions inside ``calc_ndcg`` are broken by ``np.argsort``'s default
  (unstable) sort, so ProteinGym's value is then implementation-dependent; here the earlier
  row wins (a stable sort of ``-score``), which agrees with it whenever predictions are
  distinct.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata

METRICS = ("n", "spearman", "auc", "mcc", "ndcg", "top10_recall")

_TOP_PERCENT = 10
_ALL = "all"


def _as_vector(values, name: str) -> np.ndarray:
    """``values`` as a 1-D float array (``None`` becomes NaN)."""
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr


def _constant(x: np.ndarray) -> bool:
    return bool(x.min() == x.max())


def _spearman(pred: np.ndarray, meas: np.ndarray) -> float | None:
    """Pearson correlation of the average ranks (scipy's ``spearmanr``)."""
    if _constant(pred) or _constant(meas):
        return None
    rho = float(np.corrcoef(rankdata(pred), rankdata(meas))[0, 1])
    return min(1.0, max(-1.0, rho)) if math.isfinite(rho) else None


def _auc(pred: np.ndarray, labels: np.ndarray) -> float | None:
    """ROC AUC of ``pred`` for ``labels`` == 1, ties counted 1/2 (Mann-Whitney U)."""
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    rank_sum = float(rankdata(pred)[labels].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _mcc(pred: np.ndarray, labels: np.ndarray) -> float | None:
    """MCC of ``labels`` against ``pred >= median(pred)``."""
    called = pred >= np.median(pred)
    tp = float(np.sum(called & labels))
    tn = float(np.sum(~called & ~labels))
    fp = float(np.sum(called & ~labels))
    fn = float(np.sum(~called & labels))
    denom = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    if denom == 0:
        return None
    mcc = (tp * tn - fp * fn) / math.sqrt(denom)
    return min(1.0, max(-1.0, mcc))


def _ndcg(pred: np.ndarray, meas: np.ndarray) -> float | None:
    """ProteinGym's ``calc_ndcg`` (top 10% of predictions, min-max normalised gains)."""
    k = int(np.floor(meas.shape[0] * (_TOP_PERCENT / 100)))
    if k == 0 or _constant(pred) or _constant(meas):
        return None
    gains = (meas - meas.min()) / (meas.max() - meas.min())
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    top_pred = np.argsort(-pred, kind="stable")[:k]
    dcg = float(np.sum(gains[top_pred] * discounts))
    idcg = float(np.sum(np.sort(gains)[::-1][:k] * discounts))
    return min(1.0, max(0.0, dcg / idcg))


def _top_recall(pred: np.ndarray, meas: np.ndarray) -> float | None:
    """ProteinGym's ``calc_toprecall`` with ``top_true = top_model = 10``."""
    if _constant(pred) or _constant(meas):
        return None
    top_true = meas >= np.percentile(meas, 100 - _TOP_PERCENT)
    top_model = pred >= np.percentile(pred, 100 - _TOP_PERCENT)
    return float(np.sum(top_true & top_model)) / float(np.sum(top_true))


def _clean(predicted, measured, bins) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Validated float arrays: predictions, measurements and the bins (or ``None``)."""
    pred = _as_vector(predicted, "predicted")
    meas = _as_vector(measured, "measured")
    if pred.shape != meas.shape:
        raise ValueError(f"predicted has {pred.size} values but measured has {meas.size}")
    bin_arr = None
    if bins is not None:
        bin_arr = _as_vector(bins, "bins")
        if bin_arr.shape != pred.shape:
            raise ValueError(f"bins has {bin_arr.size} values but predicted has {pred.size}")
        present = bin_arr[~np.isnan(bin_arr)]
        if not np.isin(present, (0.0, 1.0)).all():
            raise ValueError("bins must hold only 0, 1 (or booleans) and missing values")
    return pred, meas, bin_arr


def _evaluate_clean(pred: np.ndarray, meas: np.ndarray, bin_arr: np.ndarray | None) -> dict:
    keep = np.isfinite(pred) & np.isfinite(meas)
    if bin_arr is not None:
        keep &= np.isfinite(bin_arr)
    pred, meas = pred[keep], meas[keep]
    n = int(pred.size)
    out: dict[str, float | int | None] = dict.fromkeys(METRICS)
    out["n"] = n
    if n < 2:
        return out
    if bin_arr is not None:
        labels = bin_arr[keep] == 1.0
    else:
        labels = meas >= np.median(meas)
    out["spearman"] = _spearman(pred, meas)
    out["auc"] = _auc(pred, labels)
    out["mcc"] = _mcc(pred, labels)
    out["ndcg"] = _ndcg(pred, meas)
    out["top10_recall"] = _top_recall(pred, meas)
    return out


def evaluate(predicted, measured, *, bins=None) -> dict[str, float | int | None]:
    """ProteinGym's zero-shot metrics of ``predicted`` against ``measured`` (see module doc).

    ``bins`` is the binary DMS label (``DMS_score_bin``); without it, ``measured >= median``.
    Keys are ``METRICS``; an undefined metric is ``None``.
    """
    return _evaluate_clean(*_clean(predicted, measured, bins))


def evaluate_groups(predicted, measured, groups: Sequence, *, bins=None) -> list[dict]:
    """``evaluate`` over all rows (group ``"all"``) then per group label, labels sorted.

    Rows whose label is ``None`` count in ``"all"`` only; a label ``"all"`` is refused.
    """
    pred, meas, bin_arr = _clean(predicted, measured, bins)
    labels = np.array([None if g is None else str(g) for g in groups], dtype=object)
    if labels.shape != pred.shape:
        raise ValueError(f"groups has {labels.size} labels but predicted has {pred.size}")
    names = sorted({g for g in labels if g is not None})
    if _ALL in names:
        raise ValueError(f"the group label {_ALL!r} is reserved for the row over all variants")
    rows = [{"group": _ALL, **_evaluate_clean(pred, meas, bin_arr)}]
    for name in names:
        sel = labels == name
        sub_bins = None if bin_arr is None else bin_arr[sel]
        rows.append({"group": name, **_evaluate_clean(pred[sel], meas[sel], sub_bins)})
    return rows
