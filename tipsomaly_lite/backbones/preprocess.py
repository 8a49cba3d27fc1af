"""Images of any mode -> ``(B, 3, S, S)`` float RGB in [0, 1], the input TIPS expects.

TIPS uses no mean/std normalisation and squashes (no crop) to the input size. Grey images are
repeated to three channels, alpha is dropped, 16-bit images are divided by 65535.

Taught in notebooks/01_loading_tips.ipynb.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from tipsomaly_lite.backbones.tips.checkpoints import PATCH_SIZE

ImageLike = Union[Image.Image, np.ndarray, Tensor, str, os.PathLike]

#: Largest image we decode, in pixels (width x height): 40 MP, far above any benchmark (MVTec AD's
#: largest is 1 MP) and well below PIL's own 89 MP bomb warning, so a crafted header cannot make
#: us allocate gigabytes.
MAX_PIXELS = 40_000_000
#: Smallest side we accept: a 1x1 "image" carries no pattern to score and breaks the overlays.
MIN_SIDE = 2


def check_image_file(path: str | os.PathLike) -> Path:
    """Return ``path`` if it is a regular file, else raise naming it (a FIFO or device would hang).

    Raises:
        FileNotFoundError: nothing there.
        ValueError: a folder, FIFO, socket or device.
    """
    import stat

    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such image file") from None
    if not stat.S_ISREG(mode):
        kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
        raise ValueError(f"{path}: is {kind}, not an image file; refusing to read it")
    return path


def check_pixels(img: Image.Image, where: str | os.PathLike) -> Image.Image:
    """Return ``img`` if its header size lies within [MIN_SIDE, MAX_PIXELS], else raise naming ``where``.

    Checked on the header, before the pixels are decoded.
    """
    width, height = img.size
    if width * height > MAX_PIXELS:
        raise ValueError(f"{where}: image is {width}x{height} = {width * height} pixels, over the "
                         f"{MAX_PIXELS}-pixel cap; refusing to decode it (shrink it first)")
    if min(width, height) < MIN_SIDE:
        raise ValueError(f"{where}: image is {width}x{height}; at least {MIN_SIDE}x{MIN_SIDE} pixels "
                         "are needed")
    return img


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open and decode an image file after checking it is a regular file within the pixel cap.

    Raises:
        FileNotFoundError: nothing there.
        ValueError: not a regular file, not an image, corrupt, or outside the size limits
            (the message names the file).
    """
    path = check_image_file(path)
    try:
        img = Image.open(path)
        check_pixels(img, path)
        img.load()
    except Image.DecompressionBombError as exc:
        raise ValueError(f"{path}: image is too large to decode safely ({exc})") from None
    except (OSError, SyntaxError) as exc:
        raise ValueError(f"{path}: cannot read image: {exc}") from exc
    return img


def check_size(size: int, name: str = "size", multiple: int = PATCH_SIZE) -> int:
    """Return ``size`` if it is a positive multiple of ``multiple`` (the patch size: 14 for TIPS), else raise
    ``ValueError`` naming ``name``."""
    if not isinstance(size, (int, np.integer)) or size <= 0 or size % multiple:
        hint = " (448 native, 518 in the paper)" if multiple == PATCH_SIZE else ""
        raise ValueError(f"{name} must be a positive multiple of {multiple}{hint}, got {size!r}")
    return int(size)


def _pil_to_array(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit PNGs open as 'I;16' or 'I'; their full scale is 65535.
        return np.asarray(img, dtype=np.float32) / 65535.0
    if img.mode == "F":
        return np.asarray(img, dtype=np.float32)
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def to_float_rgb(image: ImageLike) -> Tensor:
    """One image -> ``(3, H, W)`` float32 in [0, 1].

    Accepts a PIL image of any mode, a path, a numpy array ``(H,W)``, ``(H,W,1|3|4)``
    (uint8 /255, uint16 /65535, float taken as [0,1]) or a tensor ``(3,H,W)`` in [0,1].
    """
    if isinstance(image, (str, os.PathLike)):
        with open_image(image) as img:
            arr = _pil_to_array(img)
    elif isinstance(image, Image.Image):
        arr = _pil_to_array(check_pixels(image, "image"))
    elif isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"image tensor: expected (3,H,W) in [0,1], got shape {tuple(image.shape)}")
        return image.float()
    elif isinstance(image, np.ndarray):
        if image.dtype == np.uint8:
            arr = image.astype(np.float32) / 255.0
        elif image.dtype == np.uint16:
            arr = image.astype(np.float32) / 65535.0
        elif image.dtype.kind == "f":
            arr = image.astype(np.float32)
        else:
            raise ValueError(f"image array: expected uint8, uint16 or float dtype, got {image.dtype}")
    else:
        raise TypeError(f"image: expected a PIL image, path, numpy array or tensor, got {type(image).__name__}")
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        arr = arr[..., :3] if arr.shape[2] != 1 else arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"image: expected (H,W), (H,W,1), (H,W,3) or (H,W,4), got shape {arr.shape}")
    if arr.size and (arr.min() < -1e-6 or arr.max() > 1 + 1e-6):
        raise ValueError(f"image: float values must lie in [0,1], got [{arr.min():.3g}, {arr.max():.3g}]")
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def resize_image(image: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Bilinear squash (antialiased, no crop) of ``(3,H,W)`` or ``(B,3,H,W)`` to ``size``."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    batch = image if image.ndim == 4 else image[None]
    if tuple(batch.shape[-2:]) != hw:
        batch = F.interpolate(batch, size=hw, mode="bilinear", align_corners=False, antialias=True)
    batch = batch.clamp(0.0, 1.0)
    return batch if image.ndim == 4 else batch[0]


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
