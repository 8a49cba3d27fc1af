"""The self-checks of notebook 09 pass the reference solutions and catch typical wrong answers."""

from __future__ import annotations

import math

import pytest
import torch

from tipsomaly_lite.course import checks


def good_nearest(queries, memory):
    q = queries / queries.norm(dim=-1, keepdim=True)
    m = memory / memory.norm(dim=-1, keepdim=True)
    return (1 - (q @ m.T).max(dim=1).values) / 2


def unnormalised(queries, memory):
    return (1 - (queries @ memory.T).max(dim=1).values) / 2


def farthest(queries, memory):
    q = queries / queries.norm(dim=-1, keepdim=True)
    m = memory / memory.norm(dim=-1, keepdim=True)
    return (1 - (q @ m.T).min(dim=1).values) / 2


def not_halved(queries, memory):
    return 2 * good_nearest(queries, memory)


def good_interval(distances, fraction):
    k = max(1, math.ceil(fraction * distances.shape[1]))
    return distances.sort(dim=1).values[:, :k].mean(dim=1)


def rounded_down(distances, fraction):
    k = max(1, int(fraction * distances.shape[1]))
    return distances.sort(dim=1).values[:, :k].mean(dim=1)


def plain_mean(distances, fraction):
    return distances.mean(dim=1)


def plain_min(distances, fraction):
    return distances.min(dim=1).values


def largest(distances, fraction):
    k = max(1, math.ceil(fraction * distances.shape[1]))
    return distances.sort(dim=1, descending=True).values[:, :k].mean(dim=1)


CASES = [(checks.nearest_patch_distance, good_nearest, [unnormalised, farthest, not_halved]),
         (checks.interval_mean, good_interval, [rounded_down, plain_mean, plain_min, largest])]


@pytest.mark.parametrize("check, right, wrongs", CASES, ids=[c.__name__ for c, _, _ in CASES])
def test_exercise_check(check, right, wrongs, exercise_check):
    exercise_check(check, right, wrongs)


def test_hints_and_solutions_name_the_package_functions(capsys):
    checks.solution("nearest_patch_distance")
    assert "def nearest_distances" in capsys.readouterr().out
    checks.solution("interval_mean")
    assert "def interval_average" in capsys.readouterr().out
    checks.hint("interval_mean")
    assert "UP" in capsys.readouterr().out
    assert torch.is_tensor(good_interval(torch.rand(1, 3, 2), 0.5))
