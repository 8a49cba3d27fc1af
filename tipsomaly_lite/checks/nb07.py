"""Self-checks for the exercises of notebooks/07_your_own_images.ipynb."""

from __future__ import annotations

from tipsomaly_lite.checks.core import check_close, check_function, check_in_range, check_true, random_inputs, report  # noqa: F401

__all__: list[str] = []
