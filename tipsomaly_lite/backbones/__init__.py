"""Vision-language backbones: what the method needs from a model (:mod:`.base`) and TIPS, which provides it.

- :mod:`.base`: the :class:`~tipsomaly_lite.backbones.base.Backbone` protocol, the seam between
  a model and the method (preprocessing, image and text encoding, learnable-prompt encoding,
  temperature, weight fingerprint).
- :mod:`.preprocess`: any image -> ``(B, 3, S, S)`` RGB tensors.
- :mod:`.tips`: the TIPS port (vision tower, text tower, checkpoints, variant registry, tiny offline model).
"""

from __future__ import annotations


from typing import Any

# The default checkpoint: TIPS v1 L/14 high-res distilled, the paper's backbone.
from tipsomaly_lite.backbones.tips.registry import DEFAULT_VARIANT

#: Backbone families this package can load, and the default one.
FAMILIES = ("tips",)
DEFAULT_FAMILY = "tips"


def load_backbone(variant: str | None = None, *, family: str = DEFAULT_FAMILY, **kwargs: Any):
    """Load a frozen backbone that implements :class:`~tipsomaly_lite.backbones.base.Backbone`.

    Args:
        variant: which checkpoint of the family (TIPS: ``"l14-hr"``, ``"v2-b14"``, ``"tiny"``,
            ``"hf:<repo or folder>"``); the family's default when None.
        family: the model family (only ``"tips"`` so far).
        **kwargs: passed to the family's loader (TIPS: :func:`~tipsomaly_lite.backbones.tips.model.load_tips`).
    Raises:
        ValueError: unknown family.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown backbone family {family!r}; expected one of {FAMILIES}")
    from tipsomaly_lite.backbones.tips.model import load_tips

    return load_tips(variant or DEFAULT_VARIANT, **kwargs)
