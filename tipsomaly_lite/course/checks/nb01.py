"""Self-checks for the exercises of notebooks/01_loading_tips.ipynb."""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from tipsomaly_lite.course.checks.core import check_function, exercise, random_inputs

__all__: list[str] = ["text_positions", "pos_embed_resize"]


@exercise("all the sines first, then all the cosines (not interleaved); the frequencies use n = width / 2 and "
          "divide the exponent by (n - 1), not by n",
          reference="tipsomaly_lite.backbones.tips.text.sinusoidal_positions")
def text_positions(fn: Callable[[int, int], Tensor]) -> bool:
    """Exercise: the text tower's fixed sinusoidal positions, ``fn(length, width) -> (length, width)``.

    Compared with :func:`tipsomaly_lite.backbones.tips.text.sinusoidal_positions` (all sines, then all
    cosines; ``inv = exp(-arange(n) * ln(10000) / (n - 1))`` with ``n = width / 2``) at TIPS's 64
    positions and at small and L/14 widths. Catches interleaved sin/cos, swapped halves and a
    ``/ n`` instead of ``/ (n - 1)``.

    Args:
        fn: the student's function.
    Returns:
        True when it agrees on every input.
    """
    from tipsomaly_lite.backbones.tips.text import sinusoidal_positions

    return check_function(
        "sinusoidal text positions", fn, sinusoidal_positions, [(64, 64), (7, 10), (64, 1024)],
        atol=1e-5, rtol=1e-4)


@exercise("keep the CLS entry apart; the other entries are a G x G grid of D-vectors: bring D to the channel "
          "axis before resizing (a plain reshape scrambles the grid); resize bilinearly, with antialias and "
          "align_corners off, to exactly (gh, gw); put the CLS entry back in front",
          reference="tipsomaly_lite.backbones.tips.vision.resize_pos_embed")
def pos_embed_resize(fn: Callable[[Tensor, tuple[int, int]], Tensor]) -> bool:
    """Exercise: resize a ``(1, 1 + G*G, D)`` position embedding to any ``gh x gw`` patch grid.

    ``fn(pos_embed, (gh, gw))`` must keep the CLS entry and resize the patch grid as
    :func:`tipsomaly_lite.backbones.tips.vision.resize_pos_embed` does (bilinear, antialias, exact target
    size, align_corners False). Seeded embeddings go to 37x37 (518 px), to non-square grids
    (a transposed layout is caught), and down to 16x16 (where antialias matters).

    Args:
        fn: the student's function.
    Returns:
        True when it agrees on every input.
    """
    from tipsomaly_lite.backbones.tips.vision import resize_pos_embed

    inputs = []
    for seed, grid in ((0, (37, 37)), (1, (32, 46)), (2, (23, 37)), (3, (16, 16))):
        (pos,) = random_inputs(seed, (1, 1 + 32 * 32, 8))
        inputs.append((pos, grid))
    return check_function(
        "position-embedding resize", fn, resize_pos_embed, inputs, atol=1e-5, rtol=1e-4)
