"""Vision-language backbones: what the method needs from a model, the families that provide it, and one loader.

- :mod:`.base`: the :class:`~tipsomaly_lite.backbones.base.Backbone` protocol, the seam between a
  model and the method (input side and patch grid, image and text encoding, learnable-prompt
  encoding, temperature, weight fingerprint, ``describe()``), and
  :class:`~tipsomaly_lite.backbones.base.BackboneBase`, the plumbing every family shares.
- :mod:`.registry`: the loadable families, one :func:`~tipsomaly_lite.backbones.registry.register`
  line each (module and loader, default variant, default image size, pip extra); see
  ``backbones/README.md`` for the table and how to add a family.
- :mod:`.scoring_rule`: how a family turns cosines into (normal, anomalous) probabilities (softmax or sigmoid).
- :mod:`.preprocess`: any image -> ``(B, 3, S, S)`` RGB tensors.
- :mod:`.tips`: the TIPS port (vision tower, text tower, checkpoints, variant registry, tiny offline model).
- :mod:`.hf`: CLIP and SigLIP2 from ``transformers`` (the ``backbones`` extra).

    model = load_backbone()                          # TIPS l14-hr at 518 px, the paper's setting
    model = load_backbone("tiny", family="clip")     # offline tiny CLIP at its native 112 px
    model.image_size, model.describe()
"""

from __future__ import annotations

from typing import Any

from tipsomaly_lite._api import face
from tipsomaly_lite.backbones.registry import DEFAULT_FAMILY, FAMILIES, BackboneFamily, get_family, register, unregister

__all__ = ["load_backbone", "FAMILIES", "DEFAULT_FAMILY", "DEFAULT_VARIANT", "BackboneFamily", "register",
           "unregister", "get_family"]

#: The default checkpoint of the default family: TIPS v1 L/14 high-res distilled, the paper's backbone.
DEFAULT_VARIANT = FAMILIES[DEFAULT_FAMILY].default_variant


def load_backbone(variant: str | None = None, *, family: str | None = None, **kwargs: Any):
    """Load a frozen backbone that implements :class:`~tipsomaly_lite.backbones.base.Backbone`.

    Args:
        variant: which checkpoint of the family: TIPS ``"l14-hr"``, ``"v2-b14"``..., CLIP ``"l14-336"``,
            SigLIP2 ``"so400m-256"``..., ``"tiny"`` (offline: a toy model) or ``"hf:<hub id or local folder>"``;
            the family's default variant when None.
        family: a registered family (:data:`FAMILIES`: ``"tips"``, ``"clip"``, ``"siglip2"``...); when
            omitted, read from an ``hf:`` spec that names a CLIP/SigLIP checkpoint, else ``"tips"``.
        **kwargs: passed to the family's loader: ``image_size`` (None: the family's default, TIPS 518
            px, the paper's input side; CLIP/SigLIP2 the checkpoint's native size; read it back as
            ``model.image_size``), ``device``, ``download``, ``fallback_to_tiny``, ``dtype``
            (``"float32"`` or ``"bfloat16"``: the vision tower's; text stays float32; ``"auto"``: bf16
            where the CPU or GPU has fast bf16, else float32, see
            :func:`~tipsomaly_lite.backbones.machine.resolve_dtype`; ``model.dtype_choice`` says why) and the family's
            own options (TIPS: :func:`~tipsomaly_lite.backbones.tips.model.load_tips`; CLIP/SigLIP2:
            :func:`~tipsomaly_lite.backbones.hf.load_hf_backbone`).
    Returns:
        The loaded backbone, frozen and in eval mode.
    Raises:
        ValueError: unknown family (the message lists the registered ones).
    Taught in notebooks/08_backbones.ipynb.
    """
    if family is None and variant and variant.startswith("hf:"):
        from tipsomaly_lite.backbones.hf import hf_family_for

        family = hf_family_for(variant)
    choice = "asked"
    if isinstance(kwargs.get("dtype"), str) and kwargs["dtype"] == "auto":
        from tipsomaly_lite.backbones.machine import resolve_dtype

        kwargs["dtype"], choice = resolve_dtype("auto", kwargs.get("device") or "cpu")
    model = get_family(family or DEFAULT_FAMILY).load(variant, **kwargs)
    model.dtype_choice = choice  # describe() and the repr of a run say why auto chose it
    return model


# The rest of the subpackage's public names, imported on first use (``from tipsomaly_lite.backbones import TIPS``).
_LAZY = {
    "tipsomaly_lite.backbones.base": ("Backbone", "BackboneBase", "l2_normalize"),
    "tipsomaly_lite.backbones.hf": ("CLIPBackbone", "SigLIP2Backbone", "load_hf_backbone"),
    "tipsomaly_lite.backbones.preprocess": ("preprocess",),
    "tipsomaly_lite.backbones.scoring_rule": ("ScoringRule", "SCORING_KINDS", "as_rule"),
    "tipsomaly_lite.backbones.tips.model": ("TIPS", "load_tips"),
    "tipsomaly_lite.backbones.tips.registry": ("BUCKET", "VARIANTS", "fetch_variant", "variant_is_cached"),
    "tipsomaly_lite.backbones.tips.checkpoints": ("PATCH_SIZE", "npz_shapes"),
    "tipsomaly_lite.backbones.tips.text": ("Tokenizer", "sinusoidal_positions"),
    "tipsomaly_lite.backbones.tips.vision": ("resize_pos_embed",),
    "tipsomaly_lite.backbones.tips.tiny": ("TINY_ARCH", "tiny_files"),
}
__getattr__, __dir__, _lazy_names = face(__name__, _LAZY)
__all__ += _lazy_names
