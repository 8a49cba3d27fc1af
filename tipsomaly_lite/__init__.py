"""tipsomaly_lite: zero-shot industrial anomaly detection with TIPS, built step by step.

Start with :func:`tipsomaly_lite.tips.load_tips` (the model) and
:class:`tipsomaly_lite.datasets.AnomalyDataset` (the data).
"""

__version__ = "0.1.0"

from tipsomaly_lite.datasets import AnomalyDataset  # noqa: E402
from tipsomaly_lite.tips import TIPS, load_tips  # noqa: E402

__all__ = ["AnomalyDataset", "TIPS", "__version__", "load_tips"]
