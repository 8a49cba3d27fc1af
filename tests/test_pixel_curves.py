"""The pure curve functions of ``tipsomaly_lite.eval.curves``, on small hand-built histograms.

Each case is a seeded set of pixels (scores rounded to a grid, so that there are ties) turned into a
histogram with one bin per distinct value and an empty bin between every two, so that the curves must
skip empty bins. One bin per value means no shared bin: the results must equal scikit-learn's and
brute-force references, with a bound of 0. Merging neighbouring bins makes shared ones: the results
must then stay within the bound each function returns.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import auc, average_precision_score, roc_auc_score

from tipsomaly_lite.eval import curves

TOL = 1e-12
SEEDS = (0, 1, 2, 3)


def pixels(seed: int, n: int = 800, n_regions: int = 7):
    """``(n,)`` float64 scores, ``(n,)`` bool labels and ``(n,)`` region ids (-1 on normal pixels)."""
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.3
    scores = np.round(rng.normal(labels * 1.2, 1.0), 1)  # a 0.1 grid: many ties, inside and across labels
    regions = np.full(n, -1)
    regions[labels] = rng.integers(0, n_regions, int(labels.sum()))
    return scores, labels, regions


def histogram(scores, labels, regions, gaps: bool = True) -> dict[str, np.ndarray]:
    """One bin per distinct value, ascending, with an empty bin between every two when ``gaps``."""
    values, inverse = np.unique(scores, return_inverse=True)
    where = 2 * np.arange(values.size) + 1 if gaps else np.arange(values.size)
    n_bins = 2 * values.size + 1 if gaps else values.size
    keys = where[inverse]
    sizes = np.bincount(regions[labels])
    weights = np.zeros(scores.size)
    weights[labels] = 1.0 / sizes[regions[labels]]
    bin_min, bin_max = np.full(n_bins, np.inf), np.full(n_bins, -np.inf)
    bin_min[where], bin_max[where] = values, values
    return {"normal": np.bincount(keys[~labels], minlength=n_bins).astype(np.int64),
            "anomalous": np.bincount(keys[labels], minlength=n_bins).astype(np.int64),
            "pro_weight": np.bincount(keys, weights=weights, minlength=n_bins),
            "bin_min": bin_min, "bin_max": bin_max, "n_regions": int(np.count_nonzero(sizes))}


def coarsen(h: dict[str, np.ndarray], factor: int) -> dict[str, np.ndarray]:
    """``factor`` neighbouring bins merged into one: bins that hold several values appear."""
    new = np.arange(h["normal"].size) // factor
    n_bins = int(new[-1]) + 1
    bin_min, bin_max = np.full(n_bins, np.inf), np.full(n_bins, -np.inf)
    np.minimum.at(bin_min, new, h["bin_min"])
    np.maximum.at(bin_max, new, h["bin_max"])
    return {"normal": np.bincount(new, weights=h["normal"], minlength=n_bins).astype(np.int64),
            "anomalous": np.bincount(new, weights=h["anomalous"], minlength=n_bins).astype(np.int64),
            "pro_weight": np.bincount(new, weights=h["pro_weight"], minlength=n_bins),
            "bin_min": bin_min, "bin_max": bin_max, "n_regions": h["n_regions"]}


def shared(h: dict[str, np.ndarray]) -> np.ndarray:
    return h["bin_min"] < h["bin_max"]


def estimates(h: dict[str, np.ndarray], max_fpr: float = 0.3) -> dict[str, curves.Estimate]:
    counts = (h["normal"], h["anomalous"], shared(h))
    return {"auroc": curves.auroc(*counts), "ap": curves.average_precision(*counts), "f1": curves.f1_max(*counts),
            "aupro": curves.aupro_standard(h["normal"], h["anomalous"], h["pro_weight"], shared(h), h["n_regions"],
                                           max_fpr)}


# ------------------------------------------------------------------------------------------ references

def ref_f1_max(scores, labels) -> float:
    """Best F1 over every threshold ``score >= t``, one per distinct value."""
    best = 0.0
    for t in np.unique(scores):
        pred = scores >= t
        tp, fp, fn = np.sum(pred & labels), np.sum(pred & ~labels), np.sum(~pred & labels)
        best = max(best, 2 * tp / (2 * tp + fp + fn))
    return float(best)


def ref_pro(pred, labels, regions) -> float:
    """Mean over regions of the fraction of the region predicted."""
    return float(np.mean([np.mean(pred[regions == r]) for r in np.unique(regions[labels])]))


def ref_aupro_standard(scores, labels, regions, max_fpr) -> float:
    """PRO against FPR at every distinct value, cut at ``max_fpr`` by linear interpolation, ``/ max_fpr``."""
    fpr, pro = [0.0], [0.0]
    for t in np.unique(scores)[::-1]:
        pred = scores >= t
        fpr.append(np.sum(pred & ~labels) / np.sum(~labels))
        pro.append(ref_pro(pred, labels, regions))
    fpr, pro = np.array(fpr), np.array(pro)
    below = int(np.sum(fpr < max_fpr))  # FPR grows with a lower threshold: the points below are a prefix
    x0, x1, y0, y1 = fpr[below - 1], fpr[below], pro[below - 1], pro[below]
    y_at = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
    return float(auc(np.append(fpr[:below], max_fpr), np.append(pro[:below], y_at)) / max_fpr)


def ref_aupro_compat(scores, labels, regions, thresholds, max_fpr) -> float:
    """The papers' loop: binarise at each threshold, keep FPR < max_fpr, rescale the FPRs, ``auc``."""
    fpr, pro = [], []
    for th in thresholds:
        pred = scores > th
        fpr.append(np.sum(pred & ~labels) / np.sum(~labels))
        pro.append(ref_pro(pred, labels, regions))
    fpr, pro = np.array(fpr), np.array(pro)
    keep = fpr < max_fpr
    fpr, pro = fpr[keep], pro[keep]
    return float(auc((fpr - fpr.min()) / (fpr.max() - fpr.min()), pro))


# ------------------------------------------------------------------------------------------ tests

@pytest.mark.parametrize("seed", SEEDS)
def test_exact_histograms_match_sklearn_and_brute_force(seed):
    scores, labels, regions = pixels(seed)
    got = estimates(histogram(scores, labels, regions))
    assert got["auroc"].value == pytest.approx(roc_auc_score(labels, scores), abs=TOL)
    assert got["ap"].value == pytest.approx(average_precision_score(labels, scores), abs=TOL)
    assert got["f1"].value == pytest.approx(ref_f1_max(scores, labels), abs=TOL)
    assert got["aupro"].value == pytest.approx(ref_aupro_standard(scores, labels, regions, 0.3), abs=TOL)
    assert all(e.bound == 0.0 for e in got.values())


@pytest.mark.parametrize("max_fpr", [0.05, 0.3, 1.0])
def test_aupro_standard_at_other_limits(max_fpr):
    scores, labels, regions = pixels(4)
    got = estimates(histogram(scores, labels, regions, gaps=False), max_fpr)["aupro"]
    assert got == (pytest.approx(ref_aupro_standard(scores, labels, regions, max_fpr), abs=TOL), 0.0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("steps, max_fpr", [(200, 0.3), (37, 0.5)])
def test_aupro_compat_matches_the_papers_loop(seed, steps, max_fpr):
    scores, labels, regions = pixels(seed)
    h = histogram(scores, labels, regions)
    ths = curves.compat_thresholds(scores.min(), scores.max(), steps)
    got = curves.aupro_compat(h["normal"], h["anomalous"], h["pro_weight"], h["bin_min"], h["bin_max"],
                              h["n_regions"], ths, max_fpr)
    assert got == (pytest.approx(ref_aupro_compat(scores, labels, regions, ths, max_fpr), abs=TOL), 0.0)


def test_aupro_compat_says_why_it_is_undefined():
    scores, labels, regions = pixels(0)
    h = histogram(scores, labels, regions)
    arrays = (h["normal"], h["anomalous"], h["pro_weight"], h["bin_min"], h["bin_max"], h["n_regions"])
    below_all = np.array([scores.min() - 1.0, scores.min() - 0.5])  # every pixel predicted: FPR 1
    assert curves.aupro_compat(*arrays, below_all, 0.3) == "only 0 of 2 thresholds give FPR < 0.3"
    ths = curves.compat_thresholds(scores.min(), scores.max(), 200)
    why = curves.aupro_compat(*arrays, ths, max_fpr=1e-6)  # only the top thresholds, all at FPR 0
    assert isinstance(why, str) and "have the same FPR (0)" in why


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("factor", [2, 5])
def test_shared_bins_stay_within_the_bound(seed, factor):
    scores, labels, regions = pixels(seed)
    exact = estimates(histogram(scores, labels, regions, gaps=False))
    coarse_hist = coarsen(histogram(scores, labels, regions, gaps=False), factor)
    assert shared(coarse_hist).any()
    coarse = estimates(coarse_hist)
    for metric, estimate in coarse.items():
        assert abs(estimate.value - exact[metric].value) <= estimate.bound + TOL, metric
    assert coarse["auroc"].bound > 0  # merged bins hold both labels: pairs that are ranked as ties


def test_compat_thresholds_are_the_authors_torch_arange():
    ths = curves.compat_thresholds(0.0, 1.0, 200)
    assert ths.dtype == np.float32 and ths.size == 200 and ths[25] == np.float32(0.125)
    lo, hi = np.float32(0.1), np.float32(0.9)
    want = torch.arange(float(lo), float(hi), (float(hi) - float(lo)) / 37, dtype=torch.float32).numpy()
    assert np.array_equal(curves.compat_thresholds(lo, hi, 37), want)
    with pytest.raises(ValueError, match="max_value must be > min_value"):
        curves.compat_thresholds(1.0, 1.0)


def test_cumulative_from_top_and_trapezoid():
    scores, labels, regions = pixels(5)
    h = histogram(scores, labels, regions)
    fp, tp, pro = curves.cumulative_from_top(h["normal"], h["anomalous"], h["pro_weight"])
    assert fp.size == tp.size == pro.size == np.unique(scores).size  # the empty bins add no point
    assert (fp[-1], tp[-1]) == (np.sum(~labels), np.sum(labels))
    assert pro[-1] == pytest.approx(h["n_regions"], abs=1e-9)  # every region fully above the lowest threshold
    top = scores == scores.max()
    assert (fp[0], tp[0]) == (np.sum(top & ~labels), np.sum(top & labels))
    x, y = np.array([0.0, 0.25, 1.0]), np.array([0.0, 1.0, 1.0])
    assert curves.trapezoid(y, x) == 0.125 + 0.75 and math.isclose(curves.trapezoid(y, x), auc(x, y))
