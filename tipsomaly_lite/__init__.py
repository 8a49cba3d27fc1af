"""tipsomaly_lite: zero-shot industrial anomaly detection with TIPS, built step by step.

What a user needs is importable from here, and the rest from its subpackage::

    from tipsomaly_lite import load_backbone, AnomalyDataset, Detector, train_prompts, evaluate
    from tipsomaly_lite.method import focal_loss, dice_loss

The tree shows the architecture:

- ``backbones/``: what the method needs from a vision-language model (:class:`Backbone`) and TIPS;
- ``method/``: the paper in reading order (prompts, scoring, learnable prompts, losses, training,
  fusion, maps, the :class:`Detector`);
- ``eval/``: metrics, evaluation runs, the cross-dataset protocol;
- ``data/``: datasets, their registry and preparation, toy data, the released prompts;
- ``io/``: the files floor: atomic writes, downloads, archives, image/JSON gates, the output guard and the
  error boundary every command goes through;
- ``course/``: the notebooks' start-up, self-checks and figures;
- ``predict.py``: your own images: overlays and scores (``tipsomaly predict``);
- ``distributed.py``: several processes (torchrun) sharing an evaluation or a training run.

Names are imported on first use, so ``import tipsomaly_lite`` stays light.
"""

from __future__ import annotations

from tipsomaly_lite._api import face

__version__ = "0.1.0"

#: What a user or a notebook needs, by the subpackage that holds it; everything else is public in its
#: subpackage (``from tipsomaly_lite.method import focal_loss``).
_PUBLIC: dict[str, tuple[str, ...]] = {
    "tipsomaly_lite.backbones": ("load_backbone", "load_tips", "Backbone", "preprocess"),
    "tipsomaly_lite.data": ("AnomalyDataset", "DatasetError", "DATASET_KEYS", "class_word", "make_toy_dataset",
                            "prepare_dataset", "download_dataset", "load_released_prompts"),
    "tipsomaly_lite.method": ("get_prompt_set", "PromptSet", "text_features", "two_way_probabilities",
                              "patch_probabilities", "global_score", "PromptLearner", "TrainConfig", "train_prompts",
                              "load_trained_prompts", "fuse_scores", "anomaly_map", "Detector", "Prediction"),
    "tipsomaly_lite.eval": ("evaluate", "EvaluationResult", "benchmark_table", "image_metrics", "pixel_metrics",
                            "PixelAccumulator"),
    "tipsomaly_lite.io": ("cache_dir", "DownloadError"),
    "tipsomaly_lite.offline": ("MeaninglessResultsWarning", "offline_forced"),
    "tipsomaly_lite.course": ("interact", "show_images", "overlay_anomaly_map"),
}
#: Course modules reachable as attributes (``from tipsomaly_lite import checks, viz``).
_MODULES = {"checks": "tipsomaly_lite.course.checks", "viz": "tipsomaly_lite.course.viz"}
__getattr__, __dir__, _names = face(__name__, _PUBLIC, _MODULES)
__all__ = ["__version__", *_names]
