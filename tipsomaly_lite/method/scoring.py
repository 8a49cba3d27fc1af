"""Scores from features: the (normal, anomalous) softmax for a global token or every patch (docs/method.md §2.2-2.3).

Both levels use the same two-way softmax over cosine similarities divided by the backbone's
temperature; only the token (a CLS token or a patch) and the text features change.

Taught in notebooks/03_fixed_prompts.ipynb.
"""

from __future__ import annotations

from torch import Tensor

from tipsomaly_lite.backbones.base import l2_normalize

__all__ = ["two_way_probabilities", "global_score", "patch_probabilities"]


def _per_image(text_features: Tensor, batch: int) -> Tensor:
    """``(2, D)`` or ``(B, 2, D)`` -> ``(B, 2, D)``."""
    if text_features.ndim == 2:
        text_features = text_features.expand(batch, *text_features.shape)
    if text_features.ndim != 3 or text_features.shape[1] != 2 or text_features.shape[0] != batch:
        raise ValueError(f"text_features must be (2, D) or ({batch}, 2, D), got {tuple(text_features.shape)}")
    return text_features


def two_way_probabilities(tokens: Tensor, text_features: Tensor, temperature: float) -> Tensor:
    """``softmax([cos(z, t_n), cos(z, t_a)] / temperature)`` for every token.

    Args:
        tokens: ``(B, N, D)``; normalised here (``x / max(||x||, 1e-3)``).
        text_features: ``(2, D)`` shared or ``(B, 2, D)`` per image, rows (normal, anomalous).
        temperature: the backbone's temperature (cosines are divided by it).
    Returns:
        ``(B, N, 2)`` probabilities (normal, anomalous).
    Taught in notebooks/03_fixed_prompts.ipynb.
    """
    if tokens.ndim != 3:
        raise ValueError(f"tokens must be (B, N, D), got {tuple(tokens.shape)}")
    text = l2_normalize(_per_image(text_features, tokens.shape[0]).to(tokens))
    logits = l2_normalize(tokens) @ text.transpose(1, 2) / temperature
    return logits.softmax(dim=-1)


def global_score(global_tokens: Tensor, text_features: Tensor, temperature: float) -> Tensor:
    """Image-level anomaly probability from a global (CLS) token (docs/method.md §2.2).

    Args:
        global_tokens: ``(B, D)``, a CLS token per image.
        text_features: ``(2, D)`` or ``(B, 2, D)`` (each image's class).
        temperature: the backbone's temperature.
    Returns:
        ``(B,)`` P(anomalous) in [0, 1].
    Taught in notebooks/03_fixed_prompts.ipynb.
    """
    return two_way_probabilities(global_tokens[:, None], text_features, temperature)[:, 0, 1]


def patch_probabilities(patch_tokens: Tensor, text_features: Tensor, temperature: float) -> Tensor:
    """Softmax over (normal, anomalous) for every patch (docs/method.md §2.3).

    Args:
        patch_tokens: ``(B, N, D)``.
        text_features: ``(2, D)`` or ``(B, 2, D)``, rows (normal, anomalous).
        temperature: the backbone's temperature.
    Returns:
        ``(B, N, 2)`` probabilities.
    Taught in notebooks/02_spatial_alignment.ipynb.
    """
    return two_way_probabilities(patch_tokens, text_features, temperature)
