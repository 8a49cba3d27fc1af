"""The self-checks of notebooks/01_loading_tips.ipynb pass the reference solutions and catch typical mistakes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tipsomaly_lite.course import checks


# ---------------------------------------------------------------- reference and wrong solutions

def _angles(length, width, denominator):
    n = width // 2
    inv = torch.exp(-torch.arange(n, dtype=torch.float32) * math.log(10000.0) / denominator(n))
    return torch.arange(length, dtype=torch.float32)[:, None] * inv[None, :]


def positions_right(length, width):
    a = _angles(length, width, lambda n: n - 1)
    return torch.cat([torch.sin(a), torch.cos(a)], dim=1)


def positions_interleaved(length, width):
    a = _angles(length, width, lambda n: n - 1)
    return torch.stack([torch.sin(a), torch.cos(a)], dim=-1).flatten(1)


def positions_over_n(length, width):
    a = _angles(length, width, lambda n: n)
    return torch.cat([torch.sin(a), torch.cos(a)], dim=1)


def positions_cos_first(length, width):
    a = _angles(length, width, lambda n: n - 1)
    return torch.cat([torch.cos(a), torch.sin(a)], dim=1)


def _resize(pos, grid_hw, *, permute=True, antialias=True, swap=False):
    g = math.isqrt(pos.shape[1] - 1)
    d = pos.shape[-1]
    patches = pos[:, 1:]
    grid = patches.reshape(1, g, g, d).permute(0, 3, 1, 2) if permute else patches.reshape(1, d, g, g)
    size = tuple(grid_hw)[::-1] if swap else tuple(grid_hw)
    grid = F.interpolate(grid, size=size, mode="bilinear", align_corners=False, antialias=antialias)
    if swap:
        grid = grid.transpose(2, 3)
    return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, d)], dim=1)


def resize_right(pos, grid_hw):
    return _resize(pos, grid_hw)


def resize_plain_reshape(pos, grid_hw):  # (1, G*G, D) reshaped straight to (1, D, G, G)
    return _resize(pos, grid_hw, permute=False)


def resize_no_antialias(pos, grid_hw):
    return _resize(pos, grid_hw, antialias=False)


def resize_swapped_axes(pos, grid_hw):  # resizes to (gw, gh) and transposes: rows and columns mixed up
    return _resize(pos, grid_hw, swap=True)


def resize_with_cls(pos, grid_hw):  # resizes the CLS entry into the grid as well
    seq = F.interpolate(pos.permute(0, 2, 1), size=1 + grid_hw[0] * grid_hw[1], mode="linear", align_corners=False)
    return seq.permute(0, 2, 1)


def student_left_it(*args):
    ...  # YOUR CODE HERE


CASES = [
    (checks.text_positions, positions_right,
     [positions_interleaved, positions_over_n, positions_cos_first]),
    (checks.pos_embed_resize, resize_right,
     [resize_plain_reshape, resize_no_antialias, resize_swapped_axes, resize_with_cls]),
]


@pytest.mark.parametrize("check, right, wrongs", CASES, ids=[c.__name__ for c, _, _ in CASES])
def test_exercise_check(check, right, wrongs, exercise_check):
    exercise_check(check, right, wrongs)
