"""Self-checks for the exercises of notebooks/04_learnable_pixel_prompts.ipynb."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from tipsomaly_lite.course.checks.core import check_function, exercise, random_inputs

__all__: list[str] = ["batch_loss", "pixel_f1"]


def _masks(seed: int, batch: int, size: int) -> Tensor:
    """``(batch, 1, size, size)`` binary masks: one rectangle per image, the last image left normal."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(batch, 1, size, size)
    for i in range(batch - 1):
        y, x = (int(v) for v in torch.randint(0, size // 2, (2,), generator=g))
        h, w = (int(v) for v in torch.randint(size // 6, size // 2, (2,), generator=g))
        masks[i, 0, y:y + h, x:x + w] = 1
    return masks


def _solve_batch_loss(patch_tokens: Tensor, text_features: Tensor, masks: Tensor, temperature: float,
                      grid: tuple[int, int]) -> Tensor:
    """patch_tokens (B, N, D), text_features (2, D), masks (B, 1, S, S), grid (gh, gw) -> scalar loss."""
    import torch.nn.functional as F

    from tipsomaly_lite.method.losses import segmentation_loss
    from tipsomaly_lite.method.scoring import patch_probabilities

    b = patch_tokens.shape[0]
    probs = patch_probabilities(patch_tokens, text_features, temperature)  # (B, N, 2)
    probs = probs.transpose(1, 2).reshape(b, 2, *grid)                     # channels first, then the grid
    probs = F.interpolate(probs, size=masks.shape[-2:], mode="bilinear", align_corners=False)
    return segmentation_loss(probs, masks)


@exercise("patch_probabilities gives (B, N, 2): the two probability channels must come before the grid axes "
          "when you lay them out as (B, 2, gh, gw); upsample bilinearly (align_corners off) to the masks' size, "
          "then segmentation_loss", reference="tipsomaly_lite.method.training.training_loss",
          solution=_solve_batch_loss)
def batch_loss(fn: Callable[[Tensor, Tensor, Tensor, float, tuple[int, int]], Tensor]) -> bool:
    """Exercise: the prompt-training loss of one batch, from frozen patch tokens and text features.

    ``fn(patch_tokens (B, N, D), text_features (2, D), masks (B, 1, S, S), temperature, grid)`` must
    return the scalar ``Focal + Dice + Dice`` of the patch probabilities laid out on the ``grid``
    (row-major) and upsampled bilinearly to ``S``, as :func:`tipsomaly_lite.method.training.training_loss`
    computes it. The grid is not square, so a transposed layout is caught.

    Args:
        fn: the student's function.
    Returns:
        True when it agrees with the package on every seeded input.
    """
    from tipsomaly_lite.method.training import training_loss

    def reference(tokens: Tensor, text: Tensor, masks: Tensor, temperature: float, grid: tuple[int, int]) -> Tensor:
        with torch.no_grad():
            return training_loss(lambda: text, tokens, masks, temperature, grid)

    inputs = []
    for seed, grid in ((0, (3, 4)), (1, (5, 2))):
        tokens, text = random_inputs(seed, (3, grid[0] * grid[1], 16), (2, 16), normalize=True)
        inputs.append((tokens, text, _masks(seed, 3, 28), 0.07, grid))
    return check_function(
        "the training loss of a batch", fn, reference, inputs, atol=1e-5, rtol=1e-4)


@exercise("pool every pixel of every image together, then take the best 2PR/(P+R) over all thresholds "
          "(a precision-recall curve); not an F1 per image, not a fixed threshold",
          reference="tipsomaly_lite.eval.metrics.pixel_f1_max")
def pixel_f1(fn: Callable[[Tensor, Tensor], float]) -> bool:
    """Exercise: pixel F1-max, the best ``2PR/(P+R)`` over all thresholds with every pixel pooled.

    ``fn(anomaly_maps (B, H, W), masks (B, H, W))`` is compared with
    :func:`tipsomaly_lite.eval.metrics.pixel_f1_max`. The maps hold values that float16 represents exactly,
    so the package's fp16 histograms give the exact answer and no rounding is needed. One image is
    normal (an empty mask), so a per-image average of F1 is caught, and so is F1 at a fixed 0.5.

    Args:
        fn: the student's function.
    Returns:
        True when it agrees with the package on every seeded input.
    """
    from tipsomaly_lite.eval.metrics import pixel_f1_max

    def reference(maps: Tensor, masks: Tensor) -> float:
        return pixel_f1_max(maps, masks)

    inputs = []
    for seed in (0, 1):
        masks = _masks(seed + 10, 3, 24)[:, 0]
        (noise,) = random_inputs(seed, (3, 24, 24))
        # Defects score higher on average, with overlap: F1-max lands well inside (0, 1).
        maps = (0.35 * masks + 0.25 * noise + 0.3).clamp(0, 1).half().float()
        inputs.append((maps, masks))
    return check_function(
        "pixel F1-max", fn, reference, inputs, atol=1e-6, rtol=1e-6)
