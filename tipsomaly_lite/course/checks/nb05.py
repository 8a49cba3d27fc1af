"""Self-checks for the exercises of notebooks/05_local_to_global_fusion.ipynb."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from tipsomaly_lite.course.checks.core import (as_number, check_function, exercise, precision_of, random_inputs,
                                               report)

__all__: list[str] = ["fused_score", "per_class_auroc"]


@exercise("the local evidence is the MAX over the patches, not their mean; each side is multiplied by its weight",
          reference="tipsomaly_lite.method.fusion.fuse_scores")
def fused_score(fn: Callable[[Tensor, Tensor, float, float], Tensor]) -> bool:
    """Exercise: the final image score ``global_weight * p_global + local_weight * max_i p_anomalous(z_i)``.

    ``fn(global_score (B,), patch_scores (B, N), global_weight, local_weight)`` is compared with
    :func:`tipsomaly_lite.method.fusion.fuse_scores` for several weights (1 and 1 is the paper's).

    Args:
        fn: the student's function.
    Returns:
        True when it agrees with the package on every seeded input.
    """
    from tipsomaly_lite.method.fusion import fuse_scores

    inputs = []
    for seed, weights in ((0, (1.0, 1.0)), (1, (0.5, 2.0)), (2, (1.0, 0.0)), (3, (0.0, 1.0))):
        g, patches = random_inputs(seed, (5,), (5, 37))
        inputs.append((g.sigmoid(), patches.sigmoid(), *weights))
    return check_function("the fused image score", fn, fuse_scores, inputs)


def _demo_rows() -> list[dict[str, Any]]:
    """Score rows of two classes whose scores live on different scales.

    Within each class every score separates the labels partly; pooled over the classes the
    ranking changes, so a pooled AUROC differs from the mean of the per-class AUROCs.
    """
    g = torch.Generator().manual_seed(5)
    rows = []
    for cls, offset, share in (("bottle", 0.0, 2), ("screw", 0.5, 1)):
        for i in range(12):
            label = int(i % 3 < share)  # 2/3 anomalous in one class, 1/3 in the other
            noise = torch.rand(5, generator=g).tolist()
            scores = [offset + 0.3 * noise[k] + 0.2 * label for k in range(5)]
            rows.append({"path": f"{cls}/{i:03d}.png", "class_name": cls, "label": label,
                         "image_score": scores[0], "global_score": scores[1], "local_score": scores[2],
                         "global_cls1": scores[1], "global_cls2": scores[3]})
    return rows


def _solve_per_class_auroc(rows: list[dict[str, Any]], kind: str) -> float:
    """The image AUROC of score ``kind``: per class on its own images, then the mean over classes, x100."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    values = []
    for cls in sorted({r["class_name"] for r in rows}):
        mine = [r for r in rows if r["class_name"] == cls]
        y = [r["label"] for r in mine]
        if 0 < sum(y) < len(y):  # a class with one label has no AUROC: left out of the mean
            values.append(roc_auc_score(y, [r[kind] for r in mine]))
    return 100 * float(np.mean(values))


@exercise("compute the AUROC of each class on its own images, then average over the classes (nan-aware), "
          "times 100; not one AUROC over all the images pooled",
          reference="tipsomaly_lite.eval.evaluation.EvaluationResult.image_metrics_by_score",
          solution=_solve_per_class_auroc)
def per_class_auroc(fn: Callable[[list[dict[str, Any]], str], float], result: Any = None) -> bool:
    """Exercise: the ablation's image AUROC of one score kind, per class then averaged, x100.

    ``fn(rows, kind)`` gets the per-image rows of an
    :class:`~tipsomaly_lite.eval.evaluation.EvaluationResult` (``result.scores``: ``class_name``,
    ``label`` and one column per score kind) and a kind (``"image_score"``, ``"global_score"``,
    ``"local_score"``); it must return what
    :meth:`~tipsomaly_lite.eval.evaluation.EvaluationResult.image_metrics_by_score` reports as
    ``image_auroc``. Checked on built-in rows whose classes have different score scales (a pooled
    AUROC over all images fails there), and on ``result`` too when given.

    Args:
        fn: the student's function.
        result: an evaluation result of the notebook (optional).
    Returns:
        True when every kind agrees.
    """
    from tipsomaly_lite.eval.evaluation import EvaluationResult

    demo_rows = _demo_rows()
    demo = EvaluationResult("demo", {c: {} for c in ("bottle", "screw")}, {}, {}, demo_rows)
    cases = [("built-in rows", demo)] + ([("your evaluation", result)] if result is not None else [])
    for where, res in cases:
        expected = res.image_metrics_by_score()
        for kind in ("image_score", "global_score", "local_score"):
            want = expected[kind]["image_auroc"]
            try:
                got = fn(list(res.scores), kind)
            except Exception as err:  # noqa: BLE001 - show the student's error
                return report("per-class image AUROC", False, want, f"an exception ({type(err).__name__}: {err})")
            value = as_number(got)  # any numeric type: Python, NumPy or torch, 0-d or one element
            # float32 rounds a percentage by up to ~5e-6, bfloat16 by ~0.4 %: the answer's own dtype sets the tolerance
            tol = max(1e-6, 8 * precision_of(got))
            if value is None or not math.isclose(value, want, rel_tol=tol, abs_tol=1e-6):
                unanswered = got is None or got is Ellipsis
                why = "" if unanswered else ("not one number" if value is None else f"{where}, kind {kind!r}")
                if value is not None and math.isclose(value * 100, want, rel_tol=1e-6, abs_tol=1e-6):
                    why += ": a fraction, where a percentage (x100) is expected"
                return report("per-class image AUROC", False, want, got, why)
    return report("per-class image AUROC", True)
