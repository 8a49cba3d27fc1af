"""tipsomaly_lite: zero-shot industrial anomaly detection with TIPS, built step by step.

Start with :func:`tipsomaly_lite.tips.load_tips` (the model) and
:class:`tipsomaly_lite.datasets.AnomalyDataset` (the data); then
:class:`~tipsomaly_lite.detector.Detector` (the method), :func:`~tipsomaly_lite.training.train_prompts`
and :func:`~tipsomaly_lite.evaluation.evaluate`.
"""

__version__ = "0.1.0"

from tipsomaly_lite.datasets import AnomalyDataset  # noqa: E402
from tipsomaly_lite.tips import TIPS, load_tips  # noqa: E402

# The method's entry points are imported on first use: they pull in scipy and scikit-learn.
_LAZY = {"Detector": "tipsomaly_lite.detector", "train_prompts": "tipsomaly_lite.training",
         "TrainConfig": "tipsomaly_lite.training", "evaluate": "tipsomaly_lite.evaluation",
         "load_released_prompts": "tipsomaly_lite.released_prompts"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tipsomaly_lite' has no attribute {name!r}")


__all__ = ["AnomalyDataset", "TIPS", "__version__", "load_tips", *_LAZY]
