"""The self-checks of notebooks/08_backbones.ipynb pass the solution and catch typical wrong answers."""

from __future__ import annotations

import math

import pytest
import torch

from tipsomaly_lite.course import checks


def sigmoid_values(cos, logit_scale, logit_bias):
    p = torch.sigmoid(cos * math.exp(logit_scale) + logit_bias)
    return (1 - p[..., 0] + p[..., 1]) / 2


def softmax_values(cos, logit_scale, logit_bias):  # the softmax rule: the bias cancels
    return (cos * math.exp(logit_scale)).softmax(-1)[..., 1]


def scale_not_exponentiated(cos, logit_scale, logit_bias):
    p = torch.sigmoid(cos * logit_scale + logit_bias)
    return (1 - p[..., 0] + p[..., 1]) / 2


def anomalous_only(cos, logit_scale, logit_bias):
    return torch.sigmoid(cos * math.exp(logit_scale) + logit_bias)[..., 1]


def clip_patch_tokens(last_hidden_state, post_layernorm, visual_projection):
    tokens = visual_projection(post_layernorm(last_hidden_state[:, 1:]))
    return tokens / tokens.norm(dim=-1, keepdim=True).clamp_min(1e-3)


def with_cls(last_hidden_state, post_layernorm, visual_projection):
    tokens = visual_projection(post_layernorm(last_hidden_state))
    return tokens / tokens.norm(dim=-1, keepdim=True).clamp_min(1e-3)


def after_start(token_embeddings, prompts):
    return torch.cat([token_embeddings[:, :1], prompts, token_embeddings[:, 1:]], dim=1)


def in_front(token_embeddings, prompts):
    return torch.cat([prompts, token_embeddings], dim=1)


CASES = [(checks.sigmoid_map_values, sigmoid_values, [softmax_values, scale_not_exponentiated, anomalous_only]),
         (checks.clip_patch_tokens, clip_patch_tokens, [with_cls]),
         (checks.clip_prompted_sequence, after_start, [in_front])]


@pytest.mark.parametrize("check, right, wrongs", CASES, ids=[c.__name__ for c, _, _ in CASES])
def test_exercise_check(check, right, wrongs, exercise_check):
    exercise_check(check, right, wrongs)
