"""Measuring the method: metrics, evaluation runs and the paper's cross-dataset protocol.

- :mod:`.metrics`: image and pixel AUROC / AP / F1-max and both AUPRO definitions (the public API).
- :mod:`.pixel_histogram`: the fixed-size, mergeable histogram of pixel values the pixel metrics stream into.
- :mod:`.curves`: pure functions that read AUROC, AP, F1-max and AUPRO (with error bounds) off its arrays.
- :mod:`.protocol`: which learned prompts evaluate which dataset, and the paper's numbers.
- :mod:`.evaluation`: run a detector over a dataset, per-class and mean metrics, result files.
- :mod:`.seeds`: few-shot results over several draws of the references, mean ± std.
"""

from tipsomaly_lite._api import face

_PUBLIC = {
    "tipsomaly_lite.eval.metrics": ("PixelAccumulator", "MetricWarning", "aupro", "image_auroc", "image_ap",
                                    "image_metrics", "f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max",
                                    "pixel_metrics", "compat_thresholds"),
    "tipsomaly_lite.eval.protocol": ("METRICS", "METRIC_LABELS", "PAPER_RESULTS", "prompts_trained_on",
                                     "fixed_prompt_set"),
    "tipsomaly_lite.eval.evaluation": ("EvaluationResult", "evaluate", "benchmark_table", "paper_table"),
    "tipsomaly_lite.eval.seeds": ("seed_statistics", "seeds_table"),
}
__getattr__, __dir__, __all__ = face(__name__, _PUBLIC)
