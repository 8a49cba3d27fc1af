"""The self-checks of notebooks/07_your_own_images.ipynb pass the solution and catch typical wrong answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tipsomaly_lite import checks
from tipsomaly_lite.checks import CheckFailed


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


@pytest.mark.parametrize("check, right, wrongs", CASES)
def test_the_solution_passes(check, right, wrongs, monkeypatch):
    monkeypatch.setenv("TIPSOMALY_STRICT_CHECKS", "1")
    assert check(right) is True


@pytest.mark.parametrize("check, right, wrongs", CASES)
def test_wrong_answers_raise_when_strict(check, right, wrongs, monkeypatch):
    monkeypatch.setenv("TIPSOMALY_STRICT_CHECKS", "1")
    for wrong in wrongs + [lambda *args: None]:
        with pytest.raises(CheckFailed):
            check(wrong)


@pytest.mark.parametrize("check, right, wrongs", CASES)
def test_wrong_answers_print_a_cross_for_students(check, right, wrongs, monkeypatch, capsys):
    monkeypatch.delenv("TIPSOMALY_STRICT_CHECKS", raising=False)
    monkeypatch.delenv("CI", raising=False)
    for wrong in wrongs:
        assert check(wrong) is False
        assert "❌" in capsys.readouterr().out
