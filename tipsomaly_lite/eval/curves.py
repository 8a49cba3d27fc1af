"""Pixel metric curves read off a histogram: pure functions, arrays in, numbers out.

Its one job is the arithmetic of pixel AUROC, AP, F1-max and both AUPRO definitions, given the
per-bin arrays of a :class:`~tipsomaly_lite.eval.pixel_histogram.PixelHistogram` (or any
histogram laid out the same way). Nothing here holds state, validates user input or warns:
:class:`~tipsomaly_lite.eval.metrics.PixelAccumulator` does that and calls these.

The inputs are ``(N,)`` arrays over ``N`` bins in ascending value order (every value of bin ``k``
is below every value of bin ``k + 1``); empty bins (no pixel) may appear anywhere and are skipped:

* ``normal``, ``anomalous``: int pixel counts per bin (mask 0 / mask 1);
* ``pro_weight``: float, the sum of ``1/|R|`` over the bin's anomalous pixels (``R`` its region);
* ``shared``: bool, the bin holds several distinct values (``bin_min < bin_max``);
* ``bin_min``, ``bin_max``: float, the smallest and largest value in the bin.

Walking the bins from the top gives the counts at every threshold between bins. When no bin is
shared, that is every distinct value, and the results are *exact* (scikit-learn's AUROC / AP /
precision-recall, the MVTec AD AUPRO). A shared bin is treated as one tie; each function also
returns a bound on how far that can move the result (0.0 when nothing is shared), as an
:class:`Estimate`. Every function needs at least one normal and one anomalous pixel.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from sklearn.metrics import auc

__all__ = ["Estimate", "aupro_compat", "aupro_standard", "auroc", "average_precision", "compat_thresholds",
           "cumulative_from_top", "f1_max", "trapezoid"]


class Estimate(NamedTuple):
    """A metric read off a histogram and how far from the exact one it can be."""

    value: float
    #: Largest possible ``|value - exact|`` (0.0 when no bin is shared; an estimate for compat AUPRO).
    bound: float


def trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    """Trapezoid rule (``np.trapezoid`` is numpy >= 2 only).

    Args:
        y: ``(M,)`` curve values.
        x: ``(M,)`` abscissae, ascending.
    Returns:
        The area under the piecewise-linear curve through the ``M`` points.
    """
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1])) / 2)


def compat_thresholds(min_value: float, max_value: float, steps: int = 200) -> np.ndarray:
    """The ZSAD papers' AUPRO thresholds: ``torch.arange(min, max, (max - min) / steps)`` in float32.

    The step is a Python float (float64), each threshold ``min + i * step`` is rounded to float32, and
    the count is ``ceil((max - min) / step)`` (usually ``steps``, sometimes one more): exactly the
    authors' ``cal_pro_score``. ``np.arange`` on float32 bounds gives other values (threshold 25 of
    [0, 1] is 0.12499999720603228 instead of 0.125), which moves AUPRO on maps with values on them.

    Args:
        min_value: smallest map value.
        max_value: largest map value, ``> min_value``.
        steps: the number of steps (200 in the papers).
    Returns:
        ``(T,)`` float32 thresholds, ascending (docs/method.md §2.5).
    Raises:
        ValueError: ``max_value <= min_value``.
    """
    lo, hi = float(min_value), float(max_value)
    if not hi > lo:
        raise ValueError(f"max_value must be > min_value, got {min_value!r} and {max_value!r}")
    return torch.arange(lo, hi, (hi - lo) / int(steps), dtype=torch.float32).numpy()


def _from_top(normal: np.ndarray, anomalous: np.ndarray, *per_bin: np.ndarray) -> tuple[np.ndarray, ...]:
    """``normal``, ``anomalous`` and each of ``per_bin`` at the non-empty bins, highest values first.

    Bins are ordered by value, so the order from the top is a reversal; empty bins add no point.
    """
    top = np.flatnonzero((normal > 0) | (anomalous > 0))[::-1]
    return tuple(a[top] for a in (normal, anomalous, *per_bin))


def _cumulative(counts: np.ndarray) -> np.ndarray:
    """Running totals of ``(M,)`` int counts, as float64 for the ratios that follow."""
    return np.cumsum(counts).astype(np.float64)


def cumulative_from_top(normal: np.ndarray, anomalous: np.ndarray,
                        pro_weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False positives, true positives and PRO numerator at a threshold at the bottom of each bin.

    Args:
        normal: ``(N,)`` normal pixels per bin.
        anomalous: ``(N,)`` anomalous pixels per bin.
        pro_weight: ``(N,)`` PRO weight per bin.
    Returns:
        ``(fp, tp, pro)``, each ``(M,)`` float64 over the ``M`` non-empty bins, highest first:
        the pixels with a value ``>=`` the bin's smallest (the last entries are the totals).
    """
    n, a, w = _from_top(normal, anomalous, pro_weight)
    return _cumulative(n), _cumulative(a), np.cumsum(w)


def auroc(normal: np.ndarray, anomalous: np.ndarray, shared: np.ndarray) -> Estimate:
    """Area under the ROC curve: trapezoid over (FPR, TPR) from (0, 0) to (1, 1), one point per bin.

    Equals ``sklearn.metrics.roc_auc_score`` on the pixels (ties count half) when no bin is shared.

    Args:
        normal: ``(N,)`` normal pixels per bin, ascending values.
        anomalous: ``(N,)`` anomalous pixels per bin.
        shared: ``(N,)`` bool, the bin holds several distinct values.
    Returns:
        AUROC in [0, 1] and its proven error bound.
    """
    n, a, sh = _from_top(normal, anomalous, shared)
    fp, tp = _cumulative(n), _cumulative(a)
    n_normal, n_anomalous = fp[-1], tp[-1]
    fpr = np.concatenate([[0.0], fp / n_normal])
    tpr = np.concatenate([[0.0], tp / n_anomalous])
    # Pairs in one bin count half; in truth between none and all of them are ranked right.
    bound = 0.5 * float(np.sum(n[sh].astype(np.float64) * a[sh]))
    return Estimate(trapezoid(tpr, fpr), float(bound / n_normal / n_anomalous))


def average_precision(normal: np.ndarray, anomalous: np.ndarray, shared: np.ndarray) -> Estimate:
    """Average precision ``sum_n (R_n - R_{n-1}) P_n`` over the bins, highest first.

    Equals ``sklearn.metrics.average_precision_score`` on the pixels when no bin is shared.

    Args:
        normal: ``(N,)`` normal pixels per bin, ascending values.
        anomalous: ``(N,)`` anomalous pixels per bin.
        shared: ``(N,)`` bool, the bin holds several distinct values.
    Returns:
        AP in [0, 1] and its proven error bound.
    """
    n, a, sh = _from_top(normal, anomalous, shared)
    fp, tp = _cumulative(n), _cumulative(a)
    a, n = a.astype(np.float64), n.astype(np.float64)
    ap = float(np.sum(a * tp / (tp + fp)) / tp[-1])  # tp + fp >= 1: every bin kept is non-empty
    sh = sh & (a > 0)
    # Inside a shared bin precision lies between its worst (normals first) and best (anomalous first).
    tp0, fp0 = tp[sh] - a[sh], fp[sh] - n[sh]
    best = tp[sh] / (tp[sh] + fp0)
    worst = (tp0 + 1) / (tp0 + 1 + fp[sh])
    return Estimate(ap, float(np.sum(a[sh] * (best - worst)) / tp[-1]))


def f1_max(normal: np.ndarray, anomalous: np.ndarray, shared: np.ndarray) -> Estimate:
    """F1-max: the best ``2PR/(P+R) = 2TP/(2TP+FP+FN)`` over a threshold at the bottom of each bin.

    Equals the maximum over ``sklearn.metrics.precision_recall_curve`` when no bin is shared.

    Args:
        normal: ``(N,)`` normal pixels per bin, ascending values.
        anomalous: ``(N,)`` anomalous pixels per bin.
        shared: ``(N,)`` bool, the bin holds several distinct values.
    Returns:
        F1-max in [0, 1] and its proven error bound.
    """
    n, a, sh = _from_top(normal, anomalous, shared)
    fp, tp = _cumulative(n), _cumulative(a)
    # TP + FN = all anomalous pixels, so the denominator is never 0.
    best = float(np.max(2 * tp / (tp + fp + tp[-1])))
    if not sh.any():
        return Estimate(best, 0.0)
    # A threshold inside a shared bin has at most all its anomalous and at least none of its normal pixels.
    fp0 = fp[sh] - n[sh]
    upper = float(np.max(2 * tp[sh] / (tp[sh] + fp0 + tp[-1])))
    return Estimate(best, max(0.0, upper - best))


def aupro_standard(normal: np.ndarray, anomalous: np.ndarray, pro_weight: np.ndarray, shared: np.ndarray,
                   n_regions: int, max_fpr: float = 0.3) -> Estimate:
    """MVTec AD's AUPRO: the PRO curve at every bin, trapezoid over FPR in ``[0, max_fpr]``, / ``max_fpr``.

    ``PRO(t)`` = mean over the ``n_regions`` ground-truth regions ``R`` of ``|pred ∩ R| / |R|``, which
    is the summed PRO weight of the pixels above ``t`` over ``n_regions``. The curve is interpolated
    linearly at ``max_fpr``.

    Args:
        normal: ``(N,)`` normal pixels per bin, ascending values.
        anomalous: ``(N,)`` anomalous pixels per bin.
        pro_weight: ``(N,)`` PRO weight per bin.
        shared: ``(N,)`` bool, the bin holds several distinct values.
        n_regions: ground-truth regions over all images (``>= 1``).
        max_fpr: integration limit, in (0, 1].
    Returns:
        AUPRO in [0, 1] and its proven error bound.
    """
    n, _, w, sh = _from_top(normal, anomalous, pro_weight, shared)
    fp = _cumulative(n)
    fpr = np.concatenate([[0.0], fp / fp[-1]])
    pro = np.concatenate([[0.0], np.cumsum(w) / n_regions])
    # The last point is FPR = 1 >= max_fpr, so j exists, and fpr[j-1] < max_fpr <= fpr[j].
    j = int(np.searchsorted(fpr, max_fpr, side="left"))
    x0, x1, y0, y1 = fpr[j - 1], fpr[j], pro[j - 1], pro[j]
    y_at = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
    area = trapezoid(pro[:j], fpr[:j]) + (max_fpr - x0) * (y0 + y_at) / 2
    # Inside a shared bin the true curve is a staircase in its (FPR, PRO) box: at most half the box off.
    boxes = np.diff(fpr[:j + 1]) * np.diff(pro[:j + 1])  # segment s joins points s and s + 1: bin s
    return Estimate(float(area / max_fpr), float(np.sum(boxes[sh[:j]]) / 2 / max_fpr))


def _compat_area(fpr: np.ndarray, pro: np.ndarray, max_fpr: float) -> float | str:
    """The papers' area from ``(T,)`` FPR and PRO per threshold, or why it is undefined."""
    keep = fpr < max_fpr
    fpr, pro = fpr[keep], pro[keep]
    if fpr.size < 2:
        return f"only {fpr.size} of {keep.size} thresholds give FPR < {max_fpr}"
    span = fpr.max() - fpr.min()
    if span == 0:
        return (f"all {fpr.size} thresholds with FPR < {max_fpr} have the same FPR ({fpr[0]:.3g}), so it "
                "cannot be rescaled")
    return float(auc((fpr - fpr.min()) / span, pro))


def aupro_compat(normal: np.ndarray, anomalous: np.ndarray, pro_weight: np.ndarray, bin_min: np.ndarray,
                 bin_max: np.ndarray, n_regions: int, thresholds: np.ndarray,
                 max_fpr: float = 0.3) -> Estimate | str:
    """The ZSAD papers' AUPRO: PRO at fixed thresholds, FPRs below ``max_fpr`` rescaled to [0, 1].

    Prediction is ``value > th`` for each of ``thresholds`` (:func:`compat_thresholds`), points with
    ``FPR < max_fpr`` are kept, their FPRs min-max rescaled, and ``sklearn.metrics.auc`` integrates.
    Each threshold's counts are read from the bins instead of re-binarising every map. A threshold
    that falls inside a shared bin is counted with the whole bin below it; the spread to counting
    the bin above it is the returned bound (an estimate, not a proof).

    Args:
        normal: ``(N,)`` normal pixels per bin, ascending values.
        anomalous: ``(N,)`` anomalous pixels per bin.
        pro_weight: ``(N,)`` PRO weight per bin.
        bin_min: ``(N,)`` smallest value per bin (ignored where the bin is empty).
        bin_max: ``(N,)`` largest value per bin (ignored where the bin is empty).
        n_regions: ground-truth regions over all images (``>= 1``).
        thresholds: ``(T,)`` ascending, compared as float64.
        max_fpr: integration limit, in (0, 1].
    Returns:
        AUPRO in [0, 1] and its bound, or a sentence saying why it is undefined (fewer than 2
        thresholds below ``max_fpr``, or all of them at one FPR).
    """
    ths = np.asarray(thresholds).astype(np.float64)
    present = np.flatnonzero((normal > 0) | (anomalous > 0))  # ascending values
    # Pixels with value > th are a suffix of the ascending bins: totals from each bin up, then 0.
    above_fp = np.concatenate([np.cumsum(normal[present][::-1])[::-1], [0]]).astype(np.float64)
    above_pro = np.concatenate([np.cumsum(pro_weight[present][::-1])[::-1], [0.0]])
    n_normal = above_fp[0]  # every normal pixel is in or above the lowest bin
    sure = np.searchsorted(bin_min[present], ths, side="right")  # bins entirely above th
    maybe = np.searchsorted(bin_max[present], ths, side="right")  # bins with a value above th
    value = _compat_area(above_fp[sure] / n_normal, above_pro[sure] / n_regions, max_fpr)
    if isinstance(value, str):
        return value
    if np.array_equal(sure, maybe):  # no threshold falls inside a shared bin
        return Estimate(value, 0.0)
    # A threshold falls inside a shared bin: the other extreme shows how far that can move the area.
    other = _compat_area(above_fp[maybe] / n_normal, above_pro[maybe] / n_regions, max_fpr)
    return Estimate(value, math.inf if isinstance(other, str) else abs(other - value))
