"""Self-checks for the exercises of notebooks/07_your_own_images.ipynb."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from tipsomaly_lite.course.checks.core import as_number, check_function, exercise, random_inputs, report
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


def _tightest_threshold(scores: np.ndarray, alpha: float) -> float:
    """The smallest normal score that flags at most ``alpha`` of the normal images."""
    for t in np.unique(scores):
        if _flagged_share(scores, t) <= alpha:
            return float(t)
    return float(scores.max())


@exercise("flag = score > threshold; too many flagged: the threshold is too low (the wrong tail?); too few: it "
          "could be lower (a high quantile of the normal scores, or the next score up)")
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
        if got != expected:
            return report(name, False, f"input {i} (max_false_alarm={alpha}): {expected:.3f} of normal images flagged",
                          f"threshold {t:.4f} flags {got:.3f}",
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


@exercise("try every score as the threshold and keep the one with the best F1 = 2TP / (2TP + FP + FN)")
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
        got = _f1_at(labels, scores, t)
        if abs(got - best) > 1e-9:
            return report(name, False, f"input {i}: F1 {best:.4f} (the F1-max)", f"threshold {t:.4f} gives F1 {got:.4f}")
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
