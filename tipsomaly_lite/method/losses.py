"""The segmentation loss that trains the learnable pixel prompts (docs/method.md §2.3).

The prompts are trained on 2-channel patch probabilities ``P`` ``(B, 2, H, W)`` (channel 0 =
normal, 1 = anomalous), already upsampled to the mask size, against a binary ``mask``::

    loss = Focal(P, mask) + Dice(P[:, 1], mask) + Dice(P[:, 0], 1 - mask)

Focal works on probabilities (not logits) with γ = 2 and no α weighting; Dice is the smoothed
per-image soft Dice averaged over the batch. Both follow the authors' code exactly, including its
1e-5 label smoothing, so a loss value can be compared with their logs (≈1.00 → 0.85 on MVTec).

:func:`segmentation_loss` is the one definition (autograd gives its gradient).
:func:`fused_segmentation_loss` is an optimisation of it, not a second definition: the same value
and gradient derived by hand, in a quarter of the passes over the pixels. Training uses it while
``tipsomaly_lite.method.training.FUSED_GRADIENT`` is True (the default); tests/test_losses.py checks
it against autograd through :func:`segmentation_loss`, and ``benchmarks/bench_training.py`` times both.

Taught in notebooks/04_learnable_pixel_prompts.ipynb.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["LOSS_TERMS", "dice_loss", "focal_loss", "segmentation_loss", "fused_segmentation_loss"]

#: The three terms of the loss, in the order of Eq. ``loss = Focal + Dice_anomalous + Dice_normal``.
LOSS_TERMS = ("focal", "dice_anomalous", "dice_normal")


def _as_mask(mask: Tensor, like: Tensor, name: str = "mask") -> Tensor:
    """``mask`` ``(B, 1, H, W)`` or ``(B, H, W)`` as ``(B, H, W)`` in ``like``'s dtype and device.

    Raises:
        ValueError: the shape does not match ``like`` ``(B, H, W)``.
    """
    if mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.shape != like.shape:
        raise ValueError(f"{name} must be (B, 1, H, W) or (B, H, W) = {tuple(like.shape)} to match the "
                         f"probabilities, got {tuple(mask.shape)}.")
    return mask.to(device=like.device, dtype=like.dtype)


def _check_probs(probs: Tensor) -> None:
    if probs.ndim != 4 or probs.shape[1] != 2:
        raise ValueError(f"probs must be (B, 2, H, W) with channels (normal, anomalous), "
                         f"got shape {tuple(probs.shape)}.")
    if not probs.is_floating_point():
        raise ValueError(f"probs must be floating point probabilities, got dtype {probs.dtype}.")


def focal_loss(probs: Tensor, mask: Tensor, gamma: float = 2.0, smooth: float = 1e-5) -> Tensor:
    """Focal loss on probabilities, averaged over every pixel of the batch.

    Per pixel: ``pt = Σ_c clamp(onehot_c, smooth, 1 - smooth) · P_c + smooth`` and
    ``loss = -(1 - pt)^γ · log(pt)``. The ``+ smooth`` keeps ``log`` finite when the true class
    has probability 0; γ down-weights pixels already classified well, which here are the many
    normal background pixels.

    Args:
        probs: ``(B, 2, H, W)`` probabilities, channel 0 = normal, 1 = anomalous.
        mask: ``(B, 1, H, W)`` or ``(B, H, W)`` ground truth in {0, 1} (1 = anomalous).
        gamma: focusing exponent γ (2 in the paper).
        smooth: label smoothing of the one-hot target and floor of ``pt``.
    Returns:
        Scalar tensor.
    Raises:
        ValueError: wrong shapes, or a mask with values other than 0 and 1 (threshold it first).
    Taught in notebooks/04_learnable_pixel_prompts.ipynb.
    """
    _check_probs(probs)
    target = _as_mask(mask, probs[:, 0])
    # One-hot needs classes: a soft (e.g. bilinearly resized, unthresholded) mask is a bug upstream.
    if bool(((target != 0) & (target != 1)).any()):
        raise ValueError("mask must contain only 0 and 1; threshold resized masks at 0.5 first.")
    onehot = torch.stack([1 - target, target], dim=1).clamp(smooth, 1 - smooth)
    pt = (onehot * probs).sum(dim=1) + smooth
    return (-(1 - pt).pow(gamma) * pt.log()).mean()


def dice_loss(probs: Tensor, target: Tensor) -> Tensor:
    """Soft Dice loss with +1 smoothing, per image then averaged over the batch.

    ``1 - mean_b (2 Σ p·t + 1) / (Σ p + Σ t + 1)``, sums over the pixels of image ``b``. The +1
    makes an empty target with an empty prediction a perfect score instead of 0/0.

    Args:
        probs: ``(B, H, W)`` probabilities of one class.
        target: ``(B, H, W)`` (or ``(B, 1, H, W)``) target of that class in [0, 1].
    Returns:
        Scalar tensor in [0, 1) for probabilities and binary targets.
    Raises:
        ValueError: ``probs`` is not 3-D or the shapes differ.
    Taught in notebooks/04_learnable_pixel_prompts.ipynb.
    """
    if probs.ndim != 3:
        raise ValueError(f"probs must be (B, H, W) probabilities of one class, got shape {tuple(probs.shape)}.")
    if not probs.is_floating_point():
        raise ValueError(f"probs must be floating point probabilities, got dtype {probs.dtype}.")
    target = _as_mask(target, probs, name="target")
    p = probs.flatten(1)
    t = target.flatten(1)
    dice = (2 * (p * t).sum(dim=1) + 1) / (p.sum(dim=1) + t.sum(dim=1) + 1)
    return 1 - dice.mean()


def segmentation_loss(probs: Tensor, mask: Tensor, terms: dict[str, float] | None = None) -> Tensor:
    """The training loss, docs/method.md Eq. 7: ``Focal(P, mask) + Dice(P_anomalous, mask) + Dice(P_normal, 1 - mask)``.

    This is the definition; :func:`fused_segmentation_loss` is a faster re-derivation of its value
    and gradient that training uses by default (``tipsomaly_lite.method.training.FUSED_GRADIENT``).

    Args:
        probs: ``(B, 2, H, W)`` patch probabilities upsampled to the mask size (bilinear,
            ``align_corners=False``, no smoothing), channel 0 = normal, 1 = anomalous.
        mask: ``(B, 1, H, W)`` or ``(B, H, W)`` ground truth in {0, 1}.
        terms: when given, the three terms (:data:`LOSS_TERMS`, Python floats) are *added* to it, so
            a caller can sum them over several calls (the images of a batch, say).
    Returns:
        Scalar tensor.
    Raises:
        ValueError: wrong shapes or a non-binary mask.
    Taught in notebooks/04_learnable_pixel_prompts.ipynb.
    """
    _check_probs(probs)
    target = _as_mask(mask, probs[:, 0])
    focal = focal_loss(probs, target)
    dice_anomalous = dice_loss(probs[:, 1], target)
    dice_normal = dice_loss(probs[:, 0], 1 - target)
    if terms is not None:
        _add_terms(terms, focal, dice_anomalous, dice_normal)
    return focal + dice_anomalous + dice_normal


def _add_terms(terms: dict[str, float], *values: Tensor) -> None:
    """Add the three loss terms, in :data:`LOSS_TERMS` order, to ``terms`` as Python floats."""
    for key, value in zip(LOSS_TERMS, values):
        terms[key] = terms.get(key, 0.0) + float(value.detach())


class _FusedSegmentationLoss(torch.autograd.Function):
    """:func:`segmentation_loss` of ``(1 - u, u)`` with a hand-written gradient: ~20 passes over the pixels, not ~80."""

    @staticmethod
    def forward(ctx, u: Tensor, target: Tensor, smooth: float,  # type: ignore[override]
                terms: dict[str, float] | None) -> Tensor:
        """Loss of ``u (B, H, W)`` against ``target (B, H, W)``; saves ``d loss / d u (B, H, W)`` for backward."""
        b, n_pixels = u.shape[0], u.numel()
        a = 1 - 2 * smooth
        au = a * u
        # Focal, gamma 2. With the normal channel 1 - u and the smoothed one-hot target,
        # pt = a u + 2s on anomalous pixels and 1 - a u on normal ones (t is 0 or 1).
        # (In-place steps below only save allocations; the formulas are the comments'.)
        pt = torch.addcmul(torch.rsub(au, 1), target, au.mul_(2).add_(2 * smooth - 1))
        log_pt = pt.log()
        one_minus = torch.rsub(pt, 1)
        sq = one_minus.square()
        focal = -torch.dot(sq.flatten(), log_pt.flatten()) / n_pixels
        # d focal / d u = a (2t - 1) (2 (1 - pt) log pt - (1 - pt)^2 / pt) / n_pixels
        d_pt = one_minus.mul_(log_pt).mul_(2).sub_(sq.div_(pt))
        # Dice on both channels from four sums: ratio = (2 I + 1) / (S_p + S_t + 1) per image.
        sum_u, sum_t = u.flatten(1).sum(1), target.flatten(1).sum(1)
        inter = (u * target).flatten(1).sum(1)
        pixels = u[0].numel()
        den_a = sum_u + sum_t + 1
        ratio_a = (2 * inter + 1) / den_a
        inter_n = pixels - sum_u - sum_t + inter  # sum of (1 - u)(1 - t)
        den_n = 2 * pixels - sum_u - sum_t + 1
        ratio_n = (2 * inter_n + 1) / den_n
        dice = (1 - ratio_a.mean()) + (1 - ratio_n.mean())
        if terms is not None:  # the per-term values come for free from the sums above
            _add_terms(terms, focal, 1 - ratio_a.mean(), 1 - ratio_n.mean())
        # Both Dice gradients are linear in t: d/du = (slope t + offset) per image.
        slope = (-2 / den_a - 2 / den_n) / b
        offset = (ratio_a / den_a + 2 / den_n - ratio_n / den_n) / b
        view = (b,) + (1,) * (u.ndim - 1)
        grad = torch.addcmul(offset.view(view), target, slope.view(view))
        grad.addcmul_(d_pt, target.mul(2 * a / n_pixels).sub_(a / n_pixels))
        ctx.save_for_backward(grad)
        return focal + dice

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        """The saved ``(B, H, W)`` gradient times the scalar upstream gradient; none for the other inputs."""
        (grad,) = ctx.saved_tensors
        return grad_output * grad, None, None, None


def fused_segmentation_loss(anomalous: Tensor, mask: Tensor, smooth: float = 1e-5,
                            terms: dict[str, float] | None = None) -> Tensor:
    """``segmentation_loss(stack([1 - u, u], 1), mask)`` with the same value and gradient, in far fewer passes.

    An optimisation of :func:`segmentation_loss` (the definition): the gradient is derived by
    hand and computed in the forward pass. It takes only the anomalous probability ``u``; the
    normal one is ``1 - u`` (the two softmax outputs sum to 1, and bilinear upsampling keeps
    that). Training calls it once per image per step while
    ``tipsomaly_lite.method.training.FUSED_GRADIENT`` is True. The mask is not checked for values
    other than 0 and 1 (the feature cache stores binary masks).

    Args:
        anomalous: ``(B, H, W)`` anomalous-class probabilities ``u``.
        mask: ``(B, 1, H, W)`` or ``(B, H, W)`` in {0, 1}.
        smooth: the label smoothing of the authors' code.
        terms: when given, the three terms (:data:`LOSS_TERMS`, Python floats) are *added* to it, so
            a caller can sum them over several calls.
    Returns:
        Scalar tensor.
    Taught in notebooks/04_learnable_pixel_prompts.ipynb.
    """
    if anomalous.ndim != 3 or not anomalous.is_floating_point():
        raise ValueError(f"anomalous must be (B, H, W) float probabilities, got {tuple(anomalous.shape)} "
                         f"{anomalous.dtype}")
    return _FusedSegmentationLoss.apply(anomalous, _as_mask(mask, anomalous), smooth, terms)
