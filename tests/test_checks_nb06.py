"""The self-checks of notebooks/06_benchmark.ipynb pass the solution and catch typical wrong answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from tipsomaly_lite.course import checks


def _pro(pred, mask):
    overlaps = []
    for p, m in zip(pred, mask):
        regions, n = ndimage.label(m, structure=np.ones((3, 3)))
        overlaps += [p[regions == r].mean() for r in range(1, n + 1)]
    return float(np.mean(overlaps))


def _pixel_recall(pred, mask):  # typical wrong answer: pixels, not regions
    return float((pred & mask).sum() / mask.sum())


def _pro_4_connected(pred, mask):  # subtle wrong answer: scipy's default cross structure
    overlaps = []
    for p, m in zip(pred, mask):
        regions, n = ndimage.label(m)
        overlaps += [p[regions == r].mean() for r in range(1, n + 1)]
    return float(np.mean(overlaps))


def _pro_3d(pred, mask):  # subtle wrong answer: the batch labelled as one volume
    regions, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    return float(np.mean([pred[regions == r].mean() for r in range(1, n + 1)]))


def _false_alarms_above_defect(mask):
    rng = np.random.default_rng(0)
    amap = rng.uniform(0, 0.5, mask.shape)
    amap[mask] = 0.8
    normal = np.flatnonzero(~mask.ravel())
    amap.ravel()[rng.permutation(normal)[: int(0.22 * normal.size)]] = 1.0
    return amap


def _perfect(mask):
    return mask.astype(float)


CASES = [(checks.per_region_overlap, _pro, [_pixel_recall, _pro_4_connected, _pro_3d]),
         (checks.aupro_gap, _false_alarms_above_defect, [_perfect])]


@pytest.mark.parametrize("check, right, wrongs", CASES, ids=[c.__name__ for c, _, _ in CASES])
def test_exercise_check(check, right, wrongs, exercise_check):
    exercise_check(check, right, wrongs)


def test_plot_metric_bars_and_pro_curve_draw():
    from matplotlib import pyplot as plt

    from tipsomaly_lite.eval.evaluation import METRIC_LABELS, METRICS, PAPER_RESULTS
    from tipsomaly_lite.course.viz import plot_metric_bars, plot_pro_curve

    ours = dict(PAPER_RESULTS["mvtec"], pixel_aupro=float("nan"))
    ax = plot_metric_bars({"ours": ours, "paper": PAPER_RESULTS["mvtec"]}, METRICS, METRIC_LABELS,
                          title="MEANINGLESS")
    assert len(ax.patches) == 2 * len(METRICS) - 1  # the NaN bar is left out
    assert ax.title.get_color() == "red"
    plt.close(ax.figure)
    ax = plot_pro_curve([0.0, 0.2, 0.2, 1.0], [0.0, 0.0, 1.0, 1.0], max_fpr=0.3, label="standard")
    assert len(ax.lines) == 2 and ax.get_xlim() == (0, 1)
    plot_pro_curve([1.0, 0.5, 0.0], [1.0, 0.5, 0.0], max_fpr=None, ax=ax)
    plt.close(ax.figure)
