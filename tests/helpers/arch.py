"""Architecture tweaks for tests and benchmarks: real shapes, fewer blocks."""

from __future__ import annotations

from dataclasses import replace

from tipsomaly_lite.backbones.tips.checkpoints import Architecture


def with_depth(arch: Architecture, depth: int, text_depth: int | None = None) -> Architecture:
    """The same architecture with ``depth`` vision blocks (and ``text_depth``, default ``depth``, text blocks)."""
    return replace(arch, depth=depth, text_depth=depth if text_depth is None else text_depth)
