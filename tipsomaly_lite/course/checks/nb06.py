"""Self-checks for the exercises of notebooks/06_benchmark.ipynb."""

from __future__ import annotations

import math
import warnings
from typing import Callable

import numpy as np

from tipsomaly_lite.course.checks.core import check_function, exercise, report
from tipsomaly_lite.eval.metrics import MetricWarning, PixelAccumulator, aupro

__all__: list[str] = ["per_region_overlap", "aupro_gap", "pro_exercise_inputs", "aupro_gap_mask"]

#: Exercise 2's targets: a map that the compat recipe rates highly and the standard definition does not.
GAP_STANDARD_AT_MOST = 0.5
GAP_COMPAT_AT_LEAST = 0.9


def _rectangles(rng: np.random.Generator, size: int, n: int) -> np.ndarray:
    """``(size, size)`` bool mask of ``n`` rectangles of very different areas."""
    mask = np.zeros((size, size), dtype=bool)
    for _ in range(n):
        h, w = int(rng.integers(1, size // 2)), int(rng.integers(1, size // 3))
        y, x = int(rng.integers(0, size - h)), int(rng.integers(0, size - w))
        mask[y:y + h, x:x + w] = True
    return mask


def pro_exercise_inputs(seed: int = 6, n: int = 4, batch: int = 2, size: int = 32) -> list[tuple[np.ndarray, np.ndarray]]:
    """Seeded ``(pred (B,H,W) bool, mask (B,H,W) bool)`` pairs for :func:`per_region_overlap`.

    Regions differ a lot in area (so region-averaging differs from pixel recall), every batch has
    two squares that touch only at a corner (one region with 8-connectivity, two with 4), and
    regions sit at the same place in both images (so labelling the batch as one 3-D volume merges them).
    """
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        masks = np.zeros((batch, size, size), dtype=bool)
        for b in range(batch):
            masks[b] = _rectangles(rng, size, int(rng.integers(1, 4)))
            masks[b, 2:5, 2:5] = True  # same place in every image
            masks[b, 20:24, 24:28] = True  # two squares touching at one corner
            masks[b, 24:26, 28:30] = True
        pred = rng.random((batch, size, size)) < rng.uniform(0.2, 0.8)
        out.append((pred, masks))
    return out


def _pro_reference(pred: np.ndarray, mask: np.ndarray) -> float:
    """PRO of one binary prediction, read off the package's AUPRO accumulator (8-connectivity)."""
    pred, mask = np.asarray(pred, dtype=bool), np.asarray(mask, dtype=bool)
    acc = PixelAccumulator(connectivity=8)
    acc.add(pred.astype(np.float32), mask)
    if not pred.any():
        return 0.0
    _, _, pro_numerator = acc._descending()  # cumulative, from the highest value (1 = predicted) down
    return float(pro_numerator[0] / acc.n_regions)


@exercise("average over regions, not pixels (a small region weighs as much as a big one); label each image "
          "separately, with 8-connectivity", reference="tipsomaly_lite.course.checks.nb06._pro_reference")
def per_region_overlap(fn: Callable[[np.ndarray, np.ndarray], float]) -> bool:
    """Exercise: ``fn(pred, mask)`` -> the per-region overlap (PRO) of one binary prediction.

    ``PRO = mean over every connected ground-truth region R (8-connectivity, of every image) of
    |pred ∩ R| / |R|``: the quantity the AUPRO curve plots against the FPR.

    Args:
        fn: takes ``pred (B,H,W)`` bool and ``mask (B,H,W)`` bool, returns a float.
    Returns:
        True when ``fn`` equals the package's PRO (from :class:`~tipsomaly_lite.eval.metrics.PixelAccumulator`).
    """
    return check_function("per-region overlap (PRO) of a binary prediction", fn, _pro_reference,
                          pro_exercise_inputs(), atol=1e-6, rtol=1e-6)


def aupro_gap_mask(size: int = 64) -> np.ndarray:
    """The ``(size, size)`` ground-truth mask of exercise 2: a big and a small defect."""
    mask = np.zeros((size, size), dtype=bool)
    mask[8:28, 10:30] = True
    mask[44:48, 40:44] = True
    return mask


def _solve_aupro_gap(mask: np.ndarray) -> np.ndarray:
    """A (H, W) float map for the (H, W) bool mask: poor under `standard`, excellent under `compat`."""
    rng = np.random.default_rng(0)
    amap = rng.uniform(0, 0.5, mask.shape)  # quiet background
    amap[mask] = 0.8  # both defects found...
    normal = np.flatnonzero(~mask.ravel())
    amap.ravel()[rng.permutation(normal)[:int(0.2 * normal.size)]] = 1.0  # ...below 20% hotter false alarms
    return amap


@exercise("compat only looks at thresholds with FPR < 0.3 and stretches their FPRs to [0, 1]: what happens to "
          "false alarms that are hotter than the defect? (nan = compat was undefined)", solution=_solve_aupro_gap)
def aupro_gap(make_map: Callable[[np.ndarray], np.ndarray]) -> bool:
    """Exercise: ``make_map(mask)`` -> an anomaly map the two AUPRO definitions disagree on.

    Passes when the map's standard AUPRO is at most :data:`GAP_STANDARD_AT_MOST` while its compat
    AUPRO (the ZSAD papers' recipe) is at least :data:`GAP_COMPAT_AT_LEAST`, both computed by
    :func:`tipsomaly_lite.eval.metrics.aupro` on :func:`aupro_gap_mask`.

    Args:
        make_map: takes a ``(H,W)`` bool mask, returns a ``(H,W)`` float map (higher = more anomalous).
    Returns:
        True when both targets are met.
    """
    name = f"a map with standard AUPRO <= {GAP_STANDARD_AT_MOST} and compat AUPRO >= {GAP_COMPAT_AT_LEAST}"
    expected = f"standard <= {GAP_STANDARD_AT_MOST}, compat >= {GAP_COMPAT_AT_LEAST}"
    if not callable(make_map):
        return report(name, False, expected, make_map)
    mask = aupro_gap_mask()
    try:
        answer = make_map(mask.copy())
    except Exception as err:  # noqa: BLE001 - show the student's error
        return report(name, False, expected, f"an exception: {type(err).__name__}: {err}")
    if answer is None or answer is Ellipsis:
        return report(name, False, expected, answer)
    if isinstance(answer, (list, tuple)):
        return report(name, False, f"a float map of shape {mask.shape}", f"a Python {type(answer).__name__}",
                      f"a Python {type(answer).__name__}, where an array of shape {mask.shape} is expected "
                      "(np.asarray makes one)")
    try:
        amap = (answer.detach().cpu().numpy() if hasattr(answer, "detach") else np.asarray(answer)).astype(np.float32)
    except (TypeError, ValueError) as err:
        return report(name, False, f"a float map of shape {mask.shape}", answer, f"not numbers ({err})")
    if amap.shape != mask.shape:
        return report(name, False, f"a map of shape {mask.shape}", f"shape {amap.shape}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        standard = aupro(amap, mask, mode="standard")
        compat = aupro(amap, mask, mode="compat")
    got = f"standard {standard:.3f}, compat {compat:.3f}"
    ok = (math.isfinite(standard) and math.isfinite(compat) and standard <= GAP_STANDARD_AT_MOST
          and compat >= GAP_COMPAT_AT_LEAST)
    return report(name, ok, expected, got)
