"""Self-checks for the exercises of notebooks/08_backbones.ipynb."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from tipsomaly_lite.backbones.base import l2_normalize
from tipsomaly_lite.backbones.scoring_rule import ScoringRule
from tipsomaly_lite.course.checks.core import check_function, exercise, random_inputs

__all__: list[str] = ["clip_patch_tokens", "clip_prompted_sequence", "sigmoid_map_values"]


def _clip_patch_tokens(hidden: Tensor, post_layernorm: nn.Module, visual_projection: nn.Module) -> Tensor:
    return l2_normalize(visual_projection(post_layernorm(hidden[:, 1:])).float())


@exercise("CLIP's sequence starts with its CLS token: drop it; then the same norm and projection as the global "
          "token; then unit length", reference="tipsomaly_lite.backbones.hf.CLIPBackbone.encode_features",
          solution=_clip_patch_tokens)
def clip_patch_tokens(fn: Callable[[Tensor, nn.Module, nn.Module], Tensor]) -> bool:
    """Exercise: plain CLIP's patch tokens from the vision tower's last hidden state.

    ``fn(last_hidden_state (B, 1 + N, W), post_layernorm, visual_projection) -> (B, N, D)`` L2-normalised,
    compared with what :class:`~tipsomaly_lite.backbones.hf.CLIPBackbone` computes, on seeded inputs.

    Args:
        fn: the student's function.
    Returns:
        True when it agrees on every input.
    """
    inputs = []
    for seed, (b, n, w, d) in enumerate(((2, 1 + 16, 24, 8), (1, 1 + 49, 32, 16))):
        (hidden,) = random_inputs(seed, (b, n, w))
        torch.manual_seed(seed)
        norm, proj = nn.LayerNorm(w), nn.Linear(w, d, bias=False)
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_(0, 0.1)
        inputs.append((hidden, norm.requires_grad_(False), proj.requires_grad_(False)))
    return check_function("CLIP patch tokens", fn, _clip_patch_tokens, inputs)


def _clip_prompted_sequence(token_embeddings: Tensor, prompts: Tensor) -> Tensor:
    return torch.cat([token_embeddings[:, :1], prompts, token_embeddings[:, 1:]], dim=1)


@exercise("CLIP's text must still begin with its start token, which the tower was trained to see first",
          reference="tipsomaly_lite.backbones.hf.CLIPBackbone.encode_prompted_text",
          solution=_clip_prompted_sequence)
def clip_prompted_sequence(fn: Callable[[Tensor, Tensor], Tensor]) -> bool:
    """Exercise: where learnable prompts go in CLIP's text: right after the start token.

    ``fn(token_embeddings (S, L, D), prompts (S, n, D)) -> (S, L + n, D)`` is compared with the layout
    :meth:`~tipsomaly_lite.backbones.hf.CLIPBackbone.encode_prompted_text` feeds the tower.

    Args:
        fn: the student's function.
    Returns:
        True when it agrees on every input.
    """
    inputs = [random_inputs(seed, (s, l, d), (s, n, d)) for seed, (s, l, n, d) in
              enumerate(((3, 7, 2, 8), (1, 12, 8, 16)))]
    return check_function("prompts after CLIP's start token", fn, _clip_prompted_sequence, inputs)


def _sigmoid_map_values(cosines: Tensor, logit_scale: float, logit_bias: float) -> Tensor:
    rule = ScoringRule.sigmoid(logit_scale, logit_bias)
    return rule.anomaly_evidence(rule.probabilities(cosines))


@exercise("each state gets its own sigmoid of cos * exp(logit_scale) + logit_bias (the scale is stored as a log); "
          "then average the evidence 1 - p_normal and p_anomalous",
          reference="tipsomaly_lite.backbones.scoring_rule.ScoringRule.anomaly_evidence", solution=_sigmoid_map_values)
def sigmoid_map_values(fn: Callable[[Tensor, float, float], Tensor]) -> bool:
    """Exercise: SigLIP2's map value of every patch under the authors' sigmoid rule.

    ``fn(cosines (B, N, 2), logit_scale, logit_bias) -> (B, N)``: with
    ``p_s = sigmoid(cos_s * exp(logit_scale) + logit_bias)`` for s in (normal, anomalous), the value
    ``(1 - p_normal + p_anomalous) / 2``, compared with
    :class:`~tipsomaly_lite.backbones.scoring_rule.ScoringRule` on seeded cosines and SigLIP-like
    scales and biases (a softmax of the two, which ignores the bias, does not pass).

    Args:
        fn: the student's function.
    Returns:
        True when it agrees on every input.
    """
    inputs = []
    for seed, (b, n, scale, bias) in enumerate(((2, 16, 4.7, -16.5), (1, 9, 2.3, -1.0), (3, 4, 4.6, -6.0))):
        (raw,) = random_inputs(seed, (b, n, 2))
        inputs.append((0.05 + 0.1 * raw.tanh(), scale, bias))  # cosines of the size real patch-text pairs have
    return check_function("sigmoid map values", fn, _sigmoid_map_values, inputs)
