"""Self-checks for the exercises of notebooks/07_your_own_images.ipynb."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from tipsomaly_lite.course.checks.core import (as_number, check_function, exercise, precision_of, random_inputs,
                                               report)
from tipsomaly_lite.eval.metrics import f1_max
from tipsomaly_lite.method.maps import upsample_map

__all__: list[str] = ["normal_threshold", "f1_threshold", "map_at_photo_size"]


def _normal_score_sets(seed: int = 7) -> list[tuple[np.ndarray, float]]:
    """Seeded ``(normal_scores (K,), max_false_alarm)`` pairs, ties and ``max_false_alarm = 0`` included."""
    rng = np.random.default_rng(seed)
    out = []
    for k, alpha in ((40, 0.1), (25, 0.05), (60, 0.25), (10, 0.0), (33, 0.5)):
        scores = rng.beta(2, 5, k) * 2  # fused scores live in [0, 2]
        scores[: k // 8] = np.round(scores[: k // 8], 1)  # a few ties
        out.append((scores, alpha))
    return out


def _flagged_share(scores: np.ndarray, threshold: float) -> float:
    """The share of images flagged anomalous: ``score > threshold``."""
    return float(np.mean(scores > threshold))


def _thresholds_near(scores: np.ndarray, t: float, eps: float) -> list[float]:
    """Thresholds as close to ``t`` as an answer of precision ``eps`` can be: ``t`` itself, the ends of
    ``[t - d, t + d]`` (``d = 2 eps |t|``) and every score inside it, where a step of the flagged share lies.

    A threshold returned as float32 (say ``np.float32`` or a float32 tensor) is a score rounded to
    float32, which may sit just below that score and flag it: the check accepts what the answer's
    dtype cannot tell apart from a right threshold.
    """
    d = 2 * eps * abs(t)
    if d == 0:
        return [t]
    inside = scores[(scores >= t - d) & (scores <= t + d)]
    return [t, t - d, t + d, *map(float, inside)]


def _solve_normal_threshold(normal_scores: Any, max_false_alarm: float) -> float:
    """The lowest t with mean(normal_scores > t) <= max_false_alarm."""
    scores = torch.as_tensor(normal_scores, dtype=torch.float64)
    for t in torch.unique(scores):  # ascending: the first that flags few enough is the lowest
        if (scores > t).double().mean() <= max_false_alarm:
            return float(t)
    return float(scores.max())


def _tightest_threshold(scores: np.ndarray, alpha: float) -> float:
    """The smallest normal score that flags at most ``alpha`` of the normal images."""
    for t in np.unique(scores):
        if _flagged_share(scores, t) <= alpha:
            return float(t)
    return float(scores.max())


@exercise("flag = score > threshold; too many flagged: the threshold is too low (the wrong tail?); too few: it "
          "could be lower (a high quantile of the normal scores, or the next score up)",
          solution=_solve_normal_threshold)
def normal_threshold(fn: Callable[[Any, float], float]) -> bool:
    """Exercise: ``fn(normal_scores, max_false_alarm)`` -> the lowest threshold that keeps false alarms in bounds.

    An image is flagged when ``score > threshold``. The threshold must flag at most a share
    ``max_false_alarm`` of the known-good images, and be as low as that allows (the lower, the
    more defects are caught): it must flag exactly the normal images the tightest such threshold
    flags. (No package function picks thresholds: this check tests that property directly.)

    Args:
        fn: takes ``normal_scores`` (a ``(K,)`` float tensor) and ``max_false_alarm`` in [0, 1], returns a float.
    Returns:
        True when ``fn`` flags the expected share of normal images on every seeded input.
    """
    name = "threshold from normal images (at most max_false_alarm of them flagged, as low as possible)"
    if not callable(fn):
        return report(name, False, "a function", fn)
    for i, (scores, alpha) in enumerate(_normal_score_sets()):
        expected = _flagged_share(scores, _tightest_threshold(scores, alpha))
        try:
            answer = fn(torch.from_numpy(scores), alpha)
        except Exception as err:  # noqa: BLE001 - show the student's error
            return report(name, False, "a number", f"an exception on input {i}: {type(err).__name__}: {err}")
        t = as_number(answer)
        if t is None:
            return report(name, False, "a number", answer,
                          "" if answer is None or answer is Ellipsis else "not one number")
        got = _flagged_share(scores, t)
        near = [_flagged_share(scores, x) for x in _thresholds_near(scores, t, precision_of(answer))]
        if expected not in near:
            return report(name, False, f"input {i} (max_false_alarm={alpha}): {expected:.3f} of normal images flagged",
                          f"threshold {t:.6g} flags {got:.3f}",
                          "too many flagged" if got > expected else "too few flagged")
    return report(name, True)


def _labelled_score_sets(seed: int = 8) -> list[tuple[np.ndarray, np.ndarray]]:
    """Seeded ``(labels (K,), scores (K,))`` pairs where the best threshold is not the obvious one."""
    rng = np.random.default_rng(seed)
    out = []
    for k, share in ((40, 0.5), (30, 0.2), (50, 0.7)):
        labels = (rng.random(k) < share).astype(int)
        labels[:2] = (0, 1)
        scores = rng.normal(0.6, 0.25, k) + 0.35 * labels
        out.append((labels, scores))
    return out


def _f1_at(labels: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    pred = scores >= threshold
    tp = float(np.sum(pred & (labels == 1)))
    fp, fn = float(np.sum(pred & (labels == 0))), float(np.sum(~pred & (labels == 1)))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def _solve_f1_threshold(labels: Any, scores: Any) -> float:
    """The threshold t whose F1 (flag = scores >= t) is the largest."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)

    def f1(t: float) -> float:
        flagged = scores >= t
        tp = np.sum(flagged & (labels == 1))
        return 2 * tp / (2 * tp + np.sum(flagged & (labels == 0)) + np.sum(~flagged & (labels == 1)))
    return float(max(np.unique(scores), key=f1))


@exercise("try every score as the threshold and keep the one with the best F1 = 2TP / (2TP + FP + FN)",
          solution=_solve_f1_threshold)
def f1_threshold(fn: Callable[[Any, Any], float]) -> bool:
    """Exercise: ``fn(labels, scores)`` -> the threshold whose F1 is the F1-max of the papers.

    An image is flagged when ``score >= threshold``. The F1 of the returned threshold must equal
    :func:`tipsomaly_lite.eval.metrics.f1_max` of the same labels and scores.

    Args:
        fn: takes ``labels (K,)`` in {0, 1} and ``scores (K,)`` (numpy arrays), returns a float.
    Returns:
        True when the F1 at ``fn``'s threshold is the F1-max on every seeded input.
    """
    name = "the F1-max threshold (its F1 equals metrics.f1_max)"
    if not callable(fn):
        return report(name, False, "a function", fn)
    for i, (labels, scores) in enumerate(_labelled_score_sets()):
        best = f1_max(labels, scores)
        try:
            answer = fn(labels.copy(), scores.copy())
        except Exception as err:  # noqa: BLE001 - show the student's error
            return report(name, False, f"F1 {best:.4f}", f"an exception on input {i}: {type(err).__name__}: {err}")
        t = as_number(answer)
        if t is None:
            return report(name, False, "a number", answer,
                          "" if answer is None or answer is Ellipsis else "not one number")
        got = max(_f1_at(labels, scores, x) for x in _thresholds_near(scores, t, precision_of(answer)))
        if abs(got - best) > 1e-9:
            return report(name, False, f"input {i}: F1 {best:.4f} (the F1-max)",
                          f"threshold {t:.6g} gives F1 {_f1_at(labels, scores, t):.4f}")
    return report(name, True)


def _map_inputs() -> list[tuple[torch.Tensor, tuple[int, int]]]:
    maps = random_inputs(70, (2, 14, 14), (1, 28, 28), (3, 8, 8))
    sizes = [(37, 50), (200, 113), (8, 64)]
    return [(torch.sigmoid(m), s) for m, s in zip(maps, sizes)]


@exercise("bilinear interpolation with align_corners off, on a (B, 1, S, S) tensor; the size is (height, width)",
          reference="tipsomaly_lite.method.maps.upsample_map")
def map_at_photo_size(fn: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]) -> bool:
    """Exercise: ``fn(anomaly_map, (H, W))`` -> the maps resized to a photo's own size, as ``predict`` draws them.

    Args:
        fn: takes ``anomaly_map (B,S,S)`` and ``(H, W)``, returns ``(B,H,W)``.
    Returns:
        True when ``fn`` equals :func:`tipsomaly_lite.method.maps.upsample_map` (bilinear, align_corners False).
    """
    return check_function("anomaly maps at the photo's size", fn, upsample_map, _map_inputs(), atol=1e-5)
