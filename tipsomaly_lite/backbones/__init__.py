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
FAMILIES = ("tips", "clip", "siglip2")
DEFAULT_FAMILY = "tips"


def load_backbone(variant: str | None = None, *, family: str | None = None, **kwargs: Any):
    """Load a frozen backbone that implements :class:`~tipsomaly_lite.backbones.base.Backbone`.

    Args:
        variant: which checkpoint of the family: TIPS ``"l14-hr"``, ``"v2-b14"``..., CLIP ``"l14-336"``,
            SigLIP2 ``"so400m-256"``..., ``"tiny"`` (offline, random) or ``"hf:<hub id or local folder>"``;
            the family's default when None.
        family: ``"tips"`` (default), ``"clip"`` or ``"siglip2"``; read from an ``hf:`` spec when omitted.
        **kwargs: passed to the family's loader (``image_size``, ``device``, ``download``, ``dtype``
            (``"float32"`` or ``"bfloat16"``: the vision tower's; text stays float32)...; TIPS:
            :func:`~tipsomaly_lite.backbones.tips.model.load_tips`, the others:
            :func:`~tipsomaly_lite.backbones.hf.load_hf_backbone`).
    Raises:
        ValueError: unknown family.
    Taught in notebooks/08_backbones.ipynb.
    """
    if family is None and variant and variant.startswith("hf:"):
        from tipsomaly_lite.backbones.hf import hf_family_for

        family = hf_family_for(variant)
    family = family or DEFAULT_FAMILY
    if family not in FAMILIES:
        raise ValueError(f"unknown backbone family {family!r}; expected one of {FAMILIES}")
    if family == "tips":
        from tipsomaly_lite.backbones.tips.model import load_tips

        return load_tips(variant or DEFAULT_VARIANT, **kwargs)
    from tipsomaly_lite.backbones.hf import load_hf_backbone

    kwargs.pop("fallback_to_tiny", None)
    return load_hf_backbone(variant, family=family, **kwargs)
