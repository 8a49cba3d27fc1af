"""The self-checks of notebook 02 pass on the reference solutions and catch typical wrong answers."""

from __future__ import annotations

import math


from tipsomaly_lite.course import checks


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


def test_patch_similarity_map_check(tiny, exercise_check):
    exercise_check(lambda fn: checks.patch_similarity_map(fn, tiny), good_similarity_map,
                   [unnormalised_similarity_map, transposed_similarity_map])


def test_delta_for_probability_check(exercise_check):
    exercise_check(checks.delta_for_probability, good_delta, [delta_without_temperature, delta_log_p])
