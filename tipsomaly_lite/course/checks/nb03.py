"""Self-checks for the exercises of notebooks/03_fixed_prompts.ipynb."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from tipsomaly_lite.course.checks.core import check_function, exercise, random_inputs

__all__: list[str] = ["image_scores_by_class", "f1_max_by_hand"]


def _mixed_batches() -> list[tuple]:
    """Seeded ``(cls_tokens (B, D) raw, text_features (C, 2, D) unit, class_index (B,), temperature)``.

    Temperatures are large enough that the probabilities do not saturate at 0 or 1 (a wrong
    answer could otherwise agree by accident).
    """
    out = []
    for seed, (b, c, d, temperature) in enumerate([(6, 3, 32, 0.07), (9, 4, 16, 0.1), (5, 2, 64, 0.05)]):
        cls_tokens, = random_inputs(100 + seed, (b, d))
        cls_tokens = cls_tokens * 3.0                      # raw tokens are not unit vectors
        text, = random_inputs(200 + seed, (c, 2, d), normalize=True)
        index = torch.randint(0, c, (b,), generator=torch.Generator().manual_seed(300 + seed))
        index[0], index[1] = 0, c - 1                      # several classes in every batch
        out.append((cls_tokens, text, index, temperature))
    return out


def _solve_image_scores_by_class(cls_tokens: torch.Tensor, text_features: torch.Tensor, class_index: torch.Tensor,
                                 temperature: float) -> torch.Tensor:
    """(B, D) raw CLS tokens, (C, 2, D) text features, (B,) class ids -> (B,) P(anomalous)."""
    g = cls_tokens / cls_tokens.norm(dim=-1, keepdim=True).clamp_min(1e-3)
    pair = text_features[class_index]                                   # (B, 2, D)
    cos = torch.einsum("bd,bsd->bs", g, pair)                           # (B, 2)
    return (cos / temperature).softmax(dim=-1)[:, 1]


@exercise("normalise the CLS tokens; give each image its own class's (normal, anomalous) pair of text features; "
          "softmax over the two cosines divided by T; keep the anomalous column",
          reference="tipsomaly_lite.method.scoring.global_score", solution=_solve_image_scores_by_class)
def image_scores_by_class(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], Any]) -> bool:
    """Exercise 1 of notebook 03: P(anomalous) of each image against its own class's text pair.

    Compares ``fn(cls_tokens (B, D), text_features (C, 2, D), class_index (B,), temperature)``
    with :func:`tipsomaly_lite.method.scoring.global_score` given each image's pair, on seeded random
    batches that mix classes.

    Args:
        fn: the student's function, returning ``(B,)``.
    Returns:
        True when it matches (✅), else False (❌, raised in CI).
    """
    from tipsomaly_lite.method.scoring import global_score

    return check_function("score_images: each image against its own class's (normal, anomalous) pair", fn,
                          lambda g, text, index, t: global_score(g, text[index], t), _mixed_batches())


def _ranked_inputs() -> list[tuple]:
    """Seeded ``(labels (K,), scores (K,))`` with both labels and tied scores."""
    out = []
    for seed, k in enumerate([12, 30, 57]):
        rng = np.random.default_rng(400 + seed)
        labels = (rng.random(k) < 0.4).astype(np.int64)
        labels[:2] = (0, 1)
        scores = np.round(rng.random(k) * 0.6 + 0.35 * labels, 1)  # informative, with many ties
        out.append((labels, scores))
    return out


@exercise("one threshold per distinct score (tied images are predicted together), keep the best F1; "
          "not one fixed threshold such as 0.5", reference="tipsomaly_lite.eval.metrics.f1_max")
def f1_max_by_hand(fn: Callable[[np.ndarray, np.ndarray], Any]) -> bool:
    """Exercise 2 of notebook 03: F1-max over every threshold, ties grouped.

    Compares ``fn(labels (K,), scores (K,))`` with :func:`tipsomaly_lite.eval.metrics.f1_max` on seeded
    scores with ties.

    Args:
        fn: the student's function, returning a float.
    Returns:
        True when it matches (✅), else False (❌, raised in CI).
    """
    from tipsomaly_lite.eval.metrics import f1_max

    return check_function("f1_max_by_hand: the best 2PR/(P+R) over the distinct thresholds", fn,
                          lambda y, s: f1_max(y, s), _ranked_inputs(), atol=1e-6, rtol=1e-6)
