"""The self-checks of notebook 05 pass the reference solutions and catch typical wrong answers."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tipsomaly_lite.course import checks
from tipsomaly_lite.course.checks import CheckFailed
from tipsomaly_lite.course.checks.nb05 import _demo_rows


def good_fused(global_score, patch_scores, global_weight=1.0, local_weight=1.0):
    return global_weight * global_score + local_weight * patch_scores.max(dim=1).values


def mean_fused(global_score, patch_scores, global_weight=1.0, local_weight=1.0):
    return global_weight * global_score + local_weight * patch_scores.mean(dim=1)


def unweighted_fused(global_score, patch_scores, global_weight=1.0, local_weight=1.0):
    return global_score + patch_scores.max(dim=1).values


def good_per_class(rows, kind):
    per_class = []
    for cls in sorted({r["class_name"] for r in rows}):
        mine = [r for r in rows if r["class_name"] == cls]
        labels = [r["label"] for r in mine]
        if len(set(labels)) == 2:
            per_class.append(roc_auc_score(labels, [r[kind] for r in mine]))
    return 100 * float(np.mean(per_class))


def pooled(rows, kind):
    return 100 * float(roc_auc_score([r["label"] for r in rows], [r[kind] for r in rows]))


def not_percent(rows, kind):
    return good_per_class(rows, kind) / 100


CASES = [(checks.fused_score, good_fused, [mean_fused, unweighted_fused]),
         (checks.per_class_auroc, good_per_class, [pooled, not_percent])]


def test_demo_rows_separate_pooled_from_per_class():
    rows = _demo_rows()
    for kind in ("image_score", "global_score", "local_score"):
        assert abs(pooled(rows, kind) - good_per_class(rows, kind)) > 1.0


@pytest.mark.parametrize("check, right, wrongs", CASES, ids=[c.__name__ for c, _, _ in CASES])
def test_exercise_check(check, right, wrongs, exercise_check):
    exercise_check(check, right, wrongs)


def test_per_class_auroc_on_an_evaluation(tiny, tmp_path, monkeypatch):
    """With a real EvaluationResult too (the notebook passes its own)."""
    from tipsomaly_lite.data.datasets import AnomalyDataset
    from tipsomaly_lite.method.detector import Detector
    from tipsomaly_lite.eval.evaluation import evaluate
    from tipsomaly_lite.data.toy_data import make_toy_dataset

    monkeypatch.setenv("TIPSOMALY_STRICT_CHECKS", "1")
    root = make_toy_dataset(tmp_path / "toy", seed=0, image_size=56)
    result = evaluate(Detector(tiny), AnomalyDataset(root, image_size=56), progress=False)
    assert checks.per_class_auroc(good_per_class, result) is True
    with pytest.raises(CheckFailed):
        checks.per_class_auroc(pooled, result)
