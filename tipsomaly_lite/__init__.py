"""tipsomaly_lite: zero-shot industrial anomaly detection with TIPS, built step by step."""

__version__ = "0.1.0"
