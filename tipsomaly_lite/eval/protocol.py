"""The paper's cross-dataset protocol and its numbers, defined once.

Zero-shot means the prompts never see the dataset they are evaluated on: prompts trained on the
test split of MVTec AD evaluate every other dataset, and prompts trained on VisA evaluate MVTec AD
(docs/method.md, "The cross-dataset protocol").

Taught in notebooks/06_benchmark.ipynb.
"""

from __future__ import annotations

__all__ = ["METRICS", "METRIC_LABELS", "PAPER_RESULTS", "SCORE_KINDS", "TRAIN_ON", "DEFAULT_TRAIN_ON",
           "prompts_trained_on", "FIXED_PROMPT_SETS", "fixed_prompt_set"]

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


#: Dataset -> the fixed prompt set the authors evaluate it with, when it is not ``industrial``: the
#: ``medical`` sentences for the three image-level medical sets (HeadCT, BrainMRI, Br35H). The pixel-level
#: medical sets (ISIC, CVC-ColonDB, CVC-ClinicDB, TN3K) keep the industrial ones.
FIXED_PROMPT_SETS = {"headct": "medical", "brainmri": "medical", "br35h": "medical"}


def fixed_prompt_set(dataset: str) -> str:
    """The prompt set (a :data:`~tipsomaly_lite.method.prompts.PROMPT_SETS` name) the protocol uses on ``dataset``.

    ``medical`` for HeadCT, BrainMRI and Br35H, ``industrial`` for everything else. The learned pixel
    prompts (trained on MVTec AD with the industrial sentences) are evaluated inside the same sentences.

    Taught in notebooks/06_benchmark.ipynb.
    """
    return FIXED_PROMPT_SETS.get(dataset, "industrial")


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


def _image_row(image: tuple[float, float, float]) -> dict[str, float]:
    return dict(zip(METRICS[:3], image))  # a set without masks: no pixel metric exists


def _pixel_row(pixel: tuple[float, float, float]) -> dict[str, float]:
    return dict(zip(METRICS[3:], pixel))  # every test image anomalous: no image metric exists


#: The paper's Table 1, x100 (docs/method.md, "The paper's numbers"), industrial and medical. Its AUPRO is
#: the ``compat`` recipe. A metric the paper does not report for a set is absent from its row.
PAPER_RESULTS: dict[str, dict[str, float]] = {
    "mvtec": _row((93.4, 96.1, 92.9), (90.9, 84.0, 43.8)),
    "visa": _row((87.7, 90.9, 84.8), (95.9, 88.2, 31.5)),
    "mpdd": _row((74.7, 76.8, 79.7), (95.9, 86.5, 36.1)),
    "btad": _row((95.0, 95.5, 91.4), (96.7, 84.7, 56.2)),
    "sdd": _row((97.8, 94.7, 90.1), (99.5, 97.9, 58.4)),
    "dagm": _row((99.7, 98.1, 96.9), (97.2, 94.3, 65.3)),
    "dtd": _row((99.4, 99.7, 99.1), (99.3, 96.0, 70.3)),
    "industrial_mean": _row((92.5, 93.1, 90.7), (96.5, 90.2, 51.7)),
    # The medical part of Table 1: image metrics only where there are normal images, pixel metrics only
    # where there are masks; its mean averages each metric over the sets that define it (3 and 4).
    "headct": _image_row((92.7, 89.4, 87.4)),
    "brainmri": _image_row((92.4, 95.2, 88.3)),
    "br35h": _image_row((93.2, 93.6, 85.6)),
    "isic": _pixel_row((94.0, 87.0, 80.2)),
    "colondb": _pixel_row((84.6, 75.0, 41.3)),
    "clinicdb": _pixel_row((87.9, 77.4, 51.1)),
    "tn3k": _pixel_row((82.4, 46.0, 46.5)),
    "medical_mean": _row((92.8, 92.7, 87.1), (87.2, 71.4, 54.8)),
}
