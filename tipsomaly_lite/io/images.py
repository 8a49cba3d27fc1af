"""Reading images and masks: the one gate every image file passes, whoever reads it.

- :func:`check_image_file`: a regular file, or a one-line error naming it (a FIFO would block a read forever);
- :func:`check_pixels` / :func:`open_image`: a pixel budget checked on the header, before decoding;
- :func:`to_float_rgb`: any image -> ``(3, H, W)`` float32 RGB in [0, 1] (finite, or refused);
- :func:`resize_image`: the bilinear squash every backbone and dataset uses;
- :func:`binary_mask` / :func:`mask_tensor`: any mask mode -> one binary channel.

Taught in notebooks/01_loading_tips.ipynb.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

__all__ = ["ImageLike", "MAX_PIXELS", "MIN_SIDE", "check_image_file", "check_pixels", "open_image", "to_float_rgb",
           "resize_image", "binary_mask", "mask_tensor", "available_memory", "check_batch_memory"]

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


def _pil_to_array(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit PNGs open as 'I;16' or 'I'; their full scale is 65535.
        return np.asarray(img, dtype=np.float32) / 65535.0
    if img.mode == "F":
        return np.asarray(img, dtype=np.float32)
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def to_float_rgb(image: ImageLike, where: str | os.PathLike | None = None) -> Tensor:
    """One image -> ``(3, H, W)`` float32 in [0, 1].

    Accepts a PIL image of any mode, a path, a numpy array ``(H,W)``, ``(H,W,1|3|4)``
    (uint8 /255, uint16 /65535, float taken as [0,1]) or a tensor ``(3,H,W)`` in [0,1]. ``where`` names
    the image in messages (default: its path, or "image").

    Raises:
        ValueError: not an image, a shape or dtype we do not read, or values that are not finite or
            lie outside [0, 1]; a file is named in the message.
    """
    where = str(where if where is not None else image if isinstance(image, (str, os.PathLike)) else "image")
    if isinstance(image, (str, os.PathLike)):
        with open_image(image) as img:
            arr = _pil_to_array(img)
    elif isinstance(image, Image.Image):
        arr = _pil_to_array(check_pixels(image, where))
    elif isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"image tensor: expected (3,H,W) in [0,1], got shape {tuple(image.shape)}")
        if not torch.isfinite(image).all():
            raise ValueError(f"image tensor: {int((~torch.isfinite(image)).sum())} values are NaN or infinite; "
                             "expected finite values in [0,1]")
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
        raise ValueError(f"{where}: expected (H,W), (H,W,1), (H,W,3) or (H,W,4), got shape {arr.shape}")
    if not np.isfinite(arr).all():  # NaN passes every range check below; refuse it by name
        raise ValueError(f"{where}: {int((~np.isfinite(arr)).sum())} values are NaN or infinite; expected finite "
                         "values in [0,1]")
    if arr.size and (arr.min() < -1e-6 or arr.max() > 1 + 1e-6):
        raise ValueError(f"{where}: float values must lie in [0,1], got [{arr.min():.3g}, {arr.max():.3g}]")
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def resize_image(image: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Bilinear squash (antialiased, no crop) of ``(3,H,W)`` or ``(B,3,H,W)`` to ``size``."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    batch = image if image.ndim == 4 else image[None]
    if tuple(batch.shape[-2:]) != hw:
        batch = F.interpolate(batch, size=hw, mode="bilinear", align_corners=False, antialias=True)
    batch = batch.clamp(0.0, 1.0)
    return batch if image.ndim == 4 else batch[0]


def binary_mask(img: Image.Image) -> np.ndarray:
    """Boolean ``(H,W)``: any non-zero value is defect (0/255 masks and VisA class ids alike)."""
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGB" if img.mode == "RGBA" else "L")  # alpha is not a defect
    arr = np.asarray(img)  # palette images give their indices: class ids stay class ids
    if arr.ndim == 3:
        return (arr > 0).any(axis=2)
    return arr > 0


def mask_tensor(binary: np.ndarray, size: int | None) -> torch.Tensor:
    """Boolean ``(H,W)`` -> ``(1,S,S)`` float in {0,1}: bilinear on the 0/255 image, then > 0.5."""
    if size is not None and binary.shape != (size, size):
        resized = Image.fromarray(binary.astype(np.uint8) * 255).resize((size, size), Image.BILINEAR)
        binary = np.asarray(resized) > 127
    return torch.from_numpy(binary.astype(np.float32))[None]


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (``MemAvailable`` of /proc/meminfo), None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_batch_memory(paths: list[str | os.PathLike], flag: str = "--batch-size") -> None:
    """Refuse a batch whose decoded images (float32 RGB, from the headers) would not fit in free memory.

    Checked before a pixel is decoded; a header that cannot be read is left to the reader, which names it.

    Raises:
        ValueError: naming the batch's size in images and GiB, the free memory and ``flag``.
    """
    free = available_memory()
    if free is None:
        return
    need = 0
    for path in paths:
        try:
            with Image.open(check_image_file(path)) as img:
                width, height = img.size
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            continue
        need += width * height * 3 * 4
    if need > free // 2:  # the model, the maps and the overlays need the other half
        raise ValueError(f"{flag}: the next {len(paths)} images need about {need / 2**30:.1f} GiB decoded, but only "
                         f"{free / 2**30:.1f} GiB of memory is free; use a smaller {flag} or smaller images")
