"""The paper's cross-dataset protocol and its numbers, defined once.

Zero-shot means the prompts never see the dataset they are evaluated on: prompts trained on the
test split of MVTec AD evaluate every other dataset, and prompts trained on VisA evaluate MVTec AD
(docs/method.md, "The cross-dataset protocol").

Taught in notebooks/06_benchmark.ipynb.
"""

from __future__ import annotations

__all__ = ["METRICS", "METRIC_LABELS", "PAPER_RESULTS", "SCORE_KINDS", "TRAIN_ON", "DEFAULT_TRAIN_ON",
           "prompts_trained_on"]

#: Dataset -> the dataset whose learned prompts evaluate it (when it is not the default).
TRAIN_ON = {"mvtec": "visa"}
#: The auxiliary dataset for every other dataset.
DEFAULT_TRAIN_ON = "mvtec"


def prompts_trained_on(dataset: str) -> str:
    """Which dataset's learned prompts evaluate ``dataset`` under the paper's protocol.

    Prompts trained on VisA evaluate MVTec AD; prompts trained on MVTec AD evaluate every other dataset.

    Taught in notebooks/06_benchmark.ipynb.
    """
    return TRAIN_ON.get(dataset, DEFAULT_TRAIN_ON)


METRICS = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_aupro", "pixel_f1_max")
METRIC_LABELS = {"image_auroc": "I-AUROC", "image_ap": "I-AP", "image_f1_max": "I-F1max",
                 "pixel_auroc": "P-AUROC", "pixel_aupro": "P-AUPRO", "pixel_f1_max": "P-F1max"}
#: Which image score the image metrics use: the fused score (the paper) or one side (the fusion
#: ablation). Results also keep ``global_<token>`` for each of the backbone's global tokens (for TIPS
#: ``global_cls1`` and ``global_cls2``: which one the paper used is unverified).
SCORE_KINDS = ("image_score", "global_score", "local_score")


def _row(image: tuple[float, float, float], pixel: tuple[float, float, float]) -> dict[str, float]:
    # The paper lists pixel metrics as AUROC / AUPRO / F1-max.
    return dict(zip(METRICS, image + pixel))


#: The paper's Table 1, x100 (docs/method.md, "The paper's numbers"). Its AUPRO is the ``compat`` recipe.
PAPER_RESULTS: dict[str, dict[str, float]] = {
    "mvtec": _row((93.4, 96.1, 92.9), (90.9, 84.0, 43.8)),
    "visa": _row((87.7, 90.9, 84.8), (95.9, 88.2, 31.5)),
    "mpdd": _row((74.7, 76.8, 79.7), (95.9, 86.5, 36.1)),
    "btad": _row((95.0, 95.5, 91.4), (96.7, 84.7, 56.2)),
    "sdd": _row((97.8, 94.7, 90.1), (99.5, 97.9, 58.4)),
    "dagm": _row((99.7, 98.1, 96.9), (97.2, 94.3, 65.3)),
    "dtd": _row((99.4, 99.7, 99.1), (99.3, 96.0, 70.3)),
    "industrial_mean": _row((92.5, 93.1, 90.7), (96.5, 90.2, 51.7)),
}
