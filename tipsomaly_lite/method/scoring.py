"""Scores from features: (normal, anomalous) probabilities for a global token or every patch (docs/method.md §2.2-2.3).

Both levels compare a token (a global token or a patch) with the two text features and turn the
two cosines into probabilities with the backbone's scoring rule
(:class:`~tipsomaly_lite.backbones.scoring_rule.ScoringRule`, ``model.scoring_rule``): the two-way
softmax with a temperature for TIPS and CLIP, independent sigmoids with a scale and a bias for
SigLIP2. A bare number where a rule is expected is a softmax temperature.

Taught in notebooks/03_fixed_prompts.ipynb.
"""

from __future__ import annotations

from torch import Tensor

from tipsomaly_lite.backbones.base import l2_normalize
from tipsomaly_lite.backbones.scoring_rule import ScoringRule, as_rule

__all__ = ["two_way_probabilities", "global_score", "patch_probabilities", "patch_evidence"]


def _per_image(text_features: Tensor, batch: int) -> Tensor:
    """``(2, D)`` or ``(B, 2, D)`` -> ``(B, 2, D)``."""
    if text_features.ndim == 2:
        text_features = text_features.expand(batch, *text_features.shape)
    if text_features.ndim != 3 or text_features.shape[1] != 2 or text_features.shape[0] != batch:
        raise ValueError(f"text_features must be (2, D) or ({batch}, 2, D), got {tuple(text_features.shape)}")
    return text_features


def two_way_probabilities(tokens: Tensor, text_features: Tensor, rule: ScoringRule | float) -> Tensor:
    """``rule([cos(z, t_n), cos(z, t_a)])`` for every token: ``softmax(cos / temperature)`` or
    ``sigmoid(cos * exp(logit_scale) + logit_bias)`` per state.

    Args:
        tokens: ``(B, N, D)``; normalised here (``x / max(||x||, 1e-3)``).
        text_features: ``(2, D)`` shared or ``(B, 2, D)`` per image, rows (normal, anomalous).
        rule: the backbone's ``scoring_rule``, or a softmax temperature.
    Returns:
        ``(B, N, 2)`` probabilities (normal, anomalous).
    Taught in notebooks/03_fixed_prompts.ipynb.
    """
    if tokens.ndim != 3:
        raise ValueError(f"tokens must be (B, N, D), got {tuple(tokens.shape)}")
    text = l2_normalize(_per_image(text_features, tokens.shape[0]).to(tokens))
    cosines = l2_normalize(tokens) @ text.transpose(1, 2)
    return as_rule(rule).probabilities(cosines)


def global_score(global_tokens: Tensor, text_features: Tensor, rule: ScoringRule | float) -> Tensor:
    """Image-level anomaly probability from a global (CLS) token (docs/method.md §2.2).

    Args:
        global_tokens: ``(B, D)``, a global token per image.
        text_features: ``(2, D)`` or ``(B, 2, D)`` (each image's class).
        rule: the backbone's ``scoring_rule``, or a softmax temperature.
    Returns:
        ``(B,)`` P(anomalous) in [0, 1].
    Taught in notebooks/03_fixed_prompts.ipynb.
    """
    return two_way_probabilities(global_tokens[:, None], text_features, rule)[:, 0, 1]


def patch_probabilities(patch_tokens: Tensor, text_features: Tensor, rule: ScoringRule | float) -> Tensor:
    """(normal, anomalous) probabilities for every patch (docs/method.md §2.3).

    Args:
        patch_tokens: ``(B, N, D)``.
        text_features: ``(2, D)`` or ``(B, 2, D)``, rows (normal, anomalous).
        rule: the backbone's ``scoring_rule``, or a softmax temperature.
    Returns:
        ``(B, N, 2)`` probabilities.
    Taught in notebooks/02_spatial_alignment.ipynb.
    """
    return two_way_probabilities(patch_tokens, text_features, rule)


def patch_evidence(probs: Tensor, rule: ScoringRule | float) -> Tensor:
    """``(B, N, 2)`` patch probabilities -> ``(B, N)`` the anomaly map's value of every patch.

    Softmax: ``p_anomalous``; sigmoid: ``(1 - p_normal + p_anomalous) / 2``
    (:meth:`~tipsomaly_lite.backbones.scoring_rule.ScoringRule.anomaly_evidence`). Upsampling and
    smoothing are linear, so combining the channels before them equals combining after.
    Taught in notebooks/08_backbones.ipynb.
    """
    return as_rule(rule).anomaly_evidence(probs)
