"""Images of any mode -> ``(B, 3, S, S)`` float RGB in [0, 1], the input TIPS expects.

TIPS uses no mean/std normalisation and squashes (no crop) to the input size. Grey images are
repeated to three channels, alpha is dropped, 16-bit images are divided by 65535.

Taught in notebooks/01_loading_tips.ipynb.
"""

from __future__ import annotations

import os
from typing import Iterable

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from tipsomaly_lite.backbones.tips.checkpoints import PATCH_SIZE
from tipsomaly_lite.io.images import ImageLike, resize_image, to_float_rgb

def check_size(size: int, name: str = "size", multiple: int = PATCH_SIZE) -> int:
    """Return ``size`` if it is a positive multiple of ``multiple`` (the patch size: 14 for TIPS), else raise
    ``ValueError`` naming ``name``."""
    if not isinstance(size, (int, np.integer)) or size <= 0 or size % multiple:
        hint = " (448 native, 518 in the paper)" if multiple == PATCH_SIZE else ""
        raise ValueError(f"{name} must be a positive multiple of {multiple}{hint}, got {size!r}")
    return int(size)


def preprocess(images: ImageLike | Iterable[ImageLike], size: int = 448, multiple: int = PATCH_SIZE) -> Tensor:
    """Images -> ``(B, 3, size, size)`` float32 RGB in [0, 1], ready for the vision tower.

    Args:
        images: one image or a list (PIL of any mode, paths, arrays, ``(3,H,W)`` tensors).
        size: output side in pixels, a multiple of ``multiple`` (TIPS: 14; 448 native, 518 for the paper).
        multiple: the backbone's patch size.
    Taught in notebooks/01_loading_tips.ipynb.
    """
    check_size(size, multiple=multiple)
    if isinstance(images, (Image.Image, np.ndarray, str, os.PathLike)) or (
            isinstance(images, Tensor) and images.ndim == 3):
        images = [images]
    if isinstance(images, Tensor):  # already a batch (B,3,H,W)
        return resize_image(images.float(), size)
    return torch.stack([resize_image(to_float_rgb(im), size) for im in images])
