"""The self-checks of notebooks/07_your_own_images.ipynb pass the solution and catch typical wrong answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tipsomaly_lite.course import checks


def _normal_threshold(normal_scores, max_false_alarm):
    scores = torch.as_tensor(normal_scores, dtype=torch.float64)
    for t in torch.unique(scores):  # ascending: the first that flags few enough is the lowest
        if (scores > t).double().mean() <= max_false_alarm:
            return float(t)
    return float(scores.max())


def _wrong_tail(normal_scores, max_false_alarm):
    return float(np.quantile(np.asarray(normal_scores), max_false_alarm))


def _max_always(normal_scores, max_false_alarm):
    return float(torch.as_tensor(normal_scores).max())


def _f1_threshold(labels, scores):
    def f1(t):
        pred = scores >= t
        tp = np.sum(pred & (labels == 1))
        return 2 * tp / (2 * tp + np.sum(pred & (labels == 0)) + np.sum(~pred & (labels == 1)))
    return float(max(np.unique(scores), key=f1))


def _median(labels, scores):
    return float(np.median(scores))


def _upsample(anomaly_map, size):
    return torch.nn.functional.interpolate(anomaly_map[:, None], size=size, mode="bilinear",
                                           align_corners=False)[:, 0]


def _nearest(anomaly_map, size):
    return torch.nn.functional.interpolate(anomaly_map[:, None], size=size, mode="nearest")[:, 0]


def _corners(anomaly_map, size):
    return torch.nn.functional.interpolate(anomaly_map[:, None], size=size, mode="bilinear", align_corners=True)[:, 0]


CASES = [(checks.normal_threshold, _normal_threshold, [_wrong_tail, _max_always]),
         (checks.f1_threshold, _f1_threshold, [_median]),
         (checks.map_at_photo_size, _upsample, [_nearest, _corners])]


@pytest.mark.parametrize("check, right, wrongs", CASES, ids=[c.__name__ for c, _, _ in CASES])
def test_exercise_check(check, right, wrongs, exercise_check):
    exercise_check(check, right, wrongs)
