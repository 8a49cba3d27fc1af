"""The self-checks of notebook 02 pass on the reference solutions and catch typical wrong answers."""

from __future__ import annotations

import math

import pytest

from tipsomaly_lite import checks
from tipsomaly_lite.checks import CheckFailed


def good_similarity_map(patch_tokens, text_features, grid):
    z = patch_tokens / patch_tokens.norm(dim=-1, keepdim=True).clamp_min(1e-3)
    t = text_features / text_features.norm(dim=-1, keepdim=True).clamp_min(1e-3)
    return (z @ t.T).transpose(1, 2).reshape(z.shape[0], t.shape[0], *grid)


def unnormalised_similarity_map(patch_tokens, text_features, grid):
    return (patch_tokens @ text_features.T).transpose(1, 2).reshape(patch_tokens.shape[0], -1, *grid)


def transposed_similarity_map(patch_tokens, text_features, grid):
    """Lays patches out column-major: right shape, wrong place (only a non-square grid shows it)."""
    gh, gw = grid
    out = good_similarity_map(patch_tokens, text_features, grid)
    return out.reshape(*out.shape[:2], gw, gh).transpose(-1, -2)


def good_delta(p, temperature):
    return temperature * math.log(p / (1 - p))


def delta_without_temperature(p, temperature):
    return math.log(p / (1 - p))


def delta_log_p(p, temperature):
    return temperature * math.log(p)


@pytest.fixture
def strict(monkeypatch):
    monkeypatch.setenv("TIPSOMALY_STRICT_CHECKS", "1")


@pytest.fixture
def lenient(monkeypatch):
    monkeypatch.delenv("TIPSOMALY_STRICT_CHECKS", raising=False)
    monkeypatch.delenv("CI", raising=False)


def test_patch_similarity_map_passes_the_solution(tiny, strict):
    assert checks.patch_similarity_map(good_similarity_map, tiny) is True


@pytest.mark.parametrize("wrong", [unnormalised_similarity_map, transposed_similarity_map])
def test_patch_similarity_map_catches_wrong_answers(tiny, strict, wrong):
    with pytest.raises(CheckFailed):
        checks.patch_similarity_map(wrong, tiny)


def test_patch_similarity_map_prints_cross_without_raising(tiny, lenient, capsys):
    assert checks.patch_similarity_map(transposed_similarity_map, tiny) is False
    assert "❌" in capsys.readouterr().out
    assert checks.patch_similarity_map(lambda *args: None, tiny) is False  # the student copy's `...`


def test_delta_for_probability_passes_the_solution(strict):
    assert checks.delta_for_probability(good_delta) is True


@pytest.mark.parametrize("wrong", [delta_without_temperature, delta_log_p])
def test_delta_for_probability_catches_wrong_answers(strict, wrong):
    with pytest.raises(CheckFailed):
        checks.delta_for_probability(wrong)


def test_delta_for_probability_prints_cross_without_raising(lenient, capsys):
    assert checks.delta_for_probability(delta_log_p) is False
    assert "❌" in capsys.readouterr().out
    assert checks.delta_for_probability(lambda p, t: None) is False
