"""Few-shot results over several draws of the references: mean ± std per dataset, the usual few-shot protocol.

A few-shot number depends on which K normal images were drawn; WinCLIP+, AnomalyDINO and the other
few-shot papers report the mean and standard deviation over several seeded draws. ``tipsomaly
benchmark --shots K`` evaluates every dataset once per seed and writes this table.

Taught in notebooks/09_few_normal_images.ipynb.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from tipsomaly_lite.eval.evaluation import EvaluationResult
from tipsomaly_lite.eval.protocol import METRIC_LABELS, METRICS
from tipsomaly_lite.eval.report import backbone_line, meaningless_line

__all__ = ["seed_statistics", "seeds_table"]


def seed_statistics(runs: Sequence[EvaluationResult]) -> dict[str, tuple[float, float]]:
    """``metric -> (mean, std)`` over runs of one dataset (each run's mean over classes, x100; std with ddof 0).

    Raises:
        ValueError: no run.
    """
    if not runs:
        raise ValueError("seed_statistics: no run to summarise")
    return {k: (float(np.mean([r.mean[k] for r in runs])), float(np.std([r.mean[k] for r in runs])))
            for k in METRICS}


def seeds_table(results: dict[str, Sequence[EvaluationResult]], shots: int, seeds: Sequence[int]) -> str:
    """One row per dataset, ``mean ± std`` over the reference draws, then the mean of the datasets' means.

    Args:
        results: dataset key -> one :class:`EvaluationResult` per seed, in ``seeds`` order.
        shots: K, for the heading.
        seeds: the draws' seeds, for the heading.
    Returns:
        A Markdown table (with the MEANINGLESS banner when a result is offline).
    Taught in notebooks/09_few_normal_images.ipynb.
    """
    stats = {key: seed_statistics(runs) for key, runs in results.items()}
    head = ["dataset"] + [METRIC_LABELS[m] for m in METRICS]
    configs = [r.config for runs in results.values() for r in runs]
    offline = [r.config for runs in results.values() for r in runs if r.offline]
    lines = [meaningless_line(offline[0]), ""] if offline else []
    lines += sorted({backbone_line(c) for c in configs}) + [""]  # what ran, as in every result table
    lines += [f"{shots}-shot: mean ± std over {len(seeds)} draws of the reference images (seeds "
              f"{', '.join(str(s) for s in seeds)}); mean over classes per dataset, x100.", "",
              "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, stat in stats.items():
        lines.append(f"| **{key}** | " + " | ".join(f"{m:.1f} ± {s:.1f}" for m, s in stat.values()) + " |")
    if len(stats) > 1:
        lines.append(f"| **mean of {len(stats)}** | " + " | ".join(
            f"{np.mean([stat[k][0] for stat in stats.values()]):.1f}" for k in METRICS) + " |")
    return "\n".join(lines) + "\n"
