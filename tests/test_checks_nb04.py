"""The self-checks of notebook 04 pass the reference solutions and catch typical wrong answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch.nn.functional as F
from sklearn.metrics import precision_recall_curve

from tipsomaly_lite.course import checks
from tipsomaly_lite.method.losses import segmentation_loss
from tipsomaly_lite.method.scoring import patch_probabilities


def good_batch_loss(patch_tokens, text_features, masks, temperature, grid):
    b = patch_tokens.shape[0]
    probs = patch_probabilities(patch_tokens, text_features, temperature).transpose(1, 2).reshape(b, 2, *grid)
    probs = F.interpolate(probs, size=masks.shape[-2:], mode="bilinear", align_corners=False)
    return segmentation_loss(probs, masks)


def no_transpose_batch_loss(patch_tokens, text_features, masks, temperature, grid):
    b = patch_tokens.shape[0]
    probs = patch_probabilities(patch_tokens, text_features, temperature).reshape(b, 2, *grid)
    probs = F.interpolate(probs, size=masks.shape[-2:], mode="bilinear", align_corners=False)
    return segmentation_loss(probs, masks)


def corners_batch_loss(patch_tokens, text_features, masks, temperature, grid):
    b = patch_tokens.shape[0]
    probs = patch_probabilities(patch_tokens, text_features, temperature).transpose(1, 2).reshape(b, 2, *grid)
    probs = F.interpolate(probs, size=masks.shape[-2:], mode="bilinear", align_corners=True)
    return segmentation_loss(probs, masks)


def good_pixel_f1(maps, masks):
    precision, recall, _ = precision_recall_curve(masks.flatten().numpy(), maps.flatten().numpy())
    f1 = 2 * precision * recall / np.clip(precision + recall, 1e-12, None)
    return float(f1.max())


def per_image_pixel_f1(maps, masks):
    scores = []
    for m, t in zip(maps, masks):
        if t.sum() == 0:
            continue
        scores.append(good_pixel_f1(m[None], t[None]))
    return float(np.mean(scores))


def fixed_threshold_f1(maps, masks):
    pred, gt = (maps > 0.5).flatten(), masks.flatten().bool()
    tp = float((pred & gt).sum())
    return 2 * tp / (float(pred.sum()) + float(gt.sum()))


CASES = [(checks.batch_loss, good_batch_loss, [no_transpose_batch_loss, corners_batch_loss]),
         (checks.pixel_f1, good_pixel_f1, [per_image_pixel_f1, fixed_threshold_f1])]


@pytest.mark.parametrize("check, right, wrongs", CASES, ids=[c.__name__ for c, _, _ in CASES])
def test_exercise_check(check, right, wrongs, exercise_check):
    exercise_check(check, right, wrongs)
