"""The self-checks of notebook 03 pass on the reference solutions and catch typical wrong answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tipsomaly_lite.course import checks


def good_scores(cls_tokens, text_features, class_index, temperature):
    g = cls_tokens / cls_tokens.norm(dim=-1, keepdim=True).clamp_min(1e-3)
    cos = torch.einsum("bd,bsd->bs", g, text_features[class_index])
    return (cos / temperature).softmax(dim=-1)[:, 1]


def normal_column(cls_tokens, text_features, class_index, temperature):
    return 1 - good_scores(cls_tokens, text_features, class_index, temperature)


def first_class_for_all(cls_tokens, text_features, class_index, temperature):
    return good_scores(cls_tokens, text_features, torch.zeros_like(class_index), temperature)


def unnormalised_tokens(cls_tokens, text_features, class_index, temperature):
    cos = torch.einsum("bd,bsd->bs", cls_tokens, text_features[class_index])
    return (cos / temperature).softmax(dim=-1)[:, 1]


def _pr_points(labels, scores, group_ties=True):
    y, s = np.asarray(labels).astype(bool), np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    tp, fp = np.cumsum(y_sorted), np.cumsum(~y_sorted)
    last = np.r_[s_sorted[1:] != s_sorted[:-1], True] if group_ties else np.ones(len(s), bool)
    return tp[last] / (tp[last] + fp[last]), tp[last] / y.sum()


def good_f1(labels, scores):
    precision, recall = _pr_points(labels, scores)
    with np.errstate(invalid="ignore"):
        return float(np.nanmax(2 * precision * recall / (precision + recall)))


def f1_at_half(labels, scores):
    y, pred = np.asarray(labels).astype(bool), np.asarray(scores) >= 0.5
    tp = np.sum(pred & y)
    return float(2 * tp / (2 * tp + np.sum(pred & ~y) + np.sum(~pred & y)))


def f1_ties_split(labels, scores):
    precision, recall = _pr_points(labels, scores, group_ties=False)
    with np.errstate(invalid="ignore"):
        return float(np.nanmax(2 * precision * recall / (precision + recall)))


CASES = [(checks.image_scores_by_class, good_scores, [normal_column, first_class_for_all, unnormalised_tokens]),
         (checks.f1_max_by_hand, good_f1, [f1_at_half, f1_ties_split])]


@pytest.mark.parametrize("check, right, wrongs", CASES, ids=[c.__name__ for c, _, _ in CASES])
def test_exercise_check(check, right, wrongs, exercise_check):
    exercise_check(check, right, wrongs)
