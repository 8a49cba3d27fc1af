"""tipsomaly_lite: zero-shot industrial anomaly detection with TIPS, built step by step.

Everything a user or a notebook needs is importable from here::

    from tipsomaly_lite import load_tips, AnomalyDataset, Detector, train_prompts, evaluate

The tree shows the architecture:

- ``backbones/``: what the method needs from a vision-language model (:class:`Backbone`) and TIPS;
- ``method/``: the paper in reading order (prompts, scoring, learnable prompts, losses, training,
  fusion, maps, the :class:`Detector`);
- ``eval/``: metrics, evaluation runs, the cross-dataset protocol;
- ``data/``: datasets, their preparation, toy data, downloads, safe file writing;
- ``course/``: the notebooks' start-up, self-checks and figures;
- ``distributed.py``: several processes (torchrun) sharing an evaluation or a training run.

Names are imported on first use, so ``import tipsomaly_lite`` stays light.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC: dict[str, tuple[str, ...]] = {
    "tipsomaly_lite.backbones": ("load_backbone",),
    "tipsomaly_lite.backbones.base": ("Backbone", "l2_normalize"),
    "tipsomaly_lite.backbones.hf": ("CLIPBackbone", "SigLIP2Backbone", "load_hf_backbone"),
    "tipsomaly_lite.backbones.preprocess": ("preprocess",),
    "tipsomaly_lite.io.images": ("resize_image", "to_float_rgb"),
    "tipsomaly_lite.backbones.tips.model": ("TIPS", "load_tips"),
    "tipsomaly_lite.backbones.tips.registry": ("BUCKET", "VARIANTS", "fetch_variant",
                                               "variant_is_cached"),
    "tipsomaly_lite.backbones.tips.checkpoints": ("PATCH_SIZE", "npz_shapes"),
    "tipsomaly_lite.backbones.tips.text": ("Tokenizer", "sinusoidal_positions"),
    "tipsomaly_lite.backbones.tips.vision": ("resize_pos_embed",),
    "tipsomaly_lite.backbones.tips.tiny": ("TINY_ARCH", "tiny_files"),
    "tipsomaly_lite.method.prompts": ("PROMPT_SETS", "PromptSet", "TextFeatureBank", "SIMILARITY_PROMPTS",
                                      "ensemble", "get_prompt_set", "text_features"),
    "tipsomaly_lite.method.scoring": ("two_way_probabilities", "global_score", "patch_probabilities"),
    "tipsomaly_lite.method.prompt_learner": ("PromptLearner",),
    "tipsomaly_lite.method.losses": ("focal_loss", "dice_loss", "segmentation_loss", "segmentation_loss_terms",
                                     "fused_segmentation_loss"),
    "tipsomaly_lite.method.feature_cache": ("FeatureCache",),
    "tipsomaly_lite.method.training": ("TrainConfig", "TrainResult", "train_prompts", "training_loss",
                                       "latest_checkpoint", "load_trained_prompts"),
    "tipsomaly_lite.method.fusion": ("fuse_scores", "local_score"),
    "tipsomaly_lite.method.maps": ("anomaly_map", "gaussian_blur", "upsample_map", "similarity_maps"),
    "tipsomaly_lite.method.detector": ("MODES", "Detector", "Prediction"),
    "tipsomaly_lite.eval.metrics": ("PixelAccumulator", "MetricWarning", "aupro", "image_auroc", "image_ap",
                                    "image_metrics", "f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_metrics",
                                    "compat_thresholds"),
    "tipsomaly_lite.eval.protocol": ("METRICS", "METRIC_LABELS", "PAPER_RESULTS", "prompts_trained_on"),
    "tipsomaly_lite.eval.evaluation": ("EvaluationResult", "evaluate", "benchmark_table", "paper_table"),
    "tipsomaly_lite.data.datasets": ("AnomalyDataset", "DatasetError", "build_meta_from_mvtec_layout",
                                     "list_images", "read_meta"),
    "tipsomaly_lite.data.registry": ("DATASETS", "DATASET_KEYS", "class_word"),
    "tipsomaly_lite.data.prepare": ("download_dataset", "instructions", "prepare_dataset"),
    "tipsomaly_lite.data.toy_data": ("CLASS_DEFECTS", "TOY_CLASSES", "make_toy_dataset", "render_sample"),
    "tipsomaly_lite.io.download": ("DownloadError", "cache_dir"),
    "tipsomaly_lite.io.atomic": ("atomic_file",),
    "tipsomaly_lite.data.released_prompts": ("RELEASED_PROMPTS", "fetch_released_prompts", "load_released_prompts"),
    "tipsomaly_lite.offline": ("MeaninglessResultsWarning", "offline_forced"),
    "tipsomaly_lite.course.widgets": ("interact", "live_frontend"),
    "tipsomaly_lite.course.viz": ("set_style", "show_images", "plot_similarity_maps", "overlay_anomaly_map",
                                  "plot_loss_curve", "plot_roc", "plot_pr", "plot_histograms", "plot_projection",
                                  "plot_metric_bars", "plot_pro_curve"),
}
#: Subpackages' modules reachable as attributes (``from tipsomaly_lite import checks, viz``).
_MODULES = {"checks": "tipsomaly_lite.course.checks", "viz": "tipsomaly_lite.course.viz",
            "metrics": "tipsomaly_lite.eval.metrics", "course": "tipsomaly_lite.course",
            "offline": "tipsomaly_lite.offline", "cli": "tipsomaly_lite.cli"}
_WHERE = {name: module for module, names in _PUBLIC.items() for name in names}


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
    elif name in _MODULES:
        value = importlib.import_module(_MODULES[name])
    else:
        raise AttributeError(f"module 'tipsomaly_lite' has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE, *_MODULES])


__all__ = ["__version__", *_WHERE]
