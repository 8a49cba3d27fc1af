"""From patch scores to full-resolution maps: anomaly maps (docs/method.md, Eq. 9) and similarity maps.

The anomalous-class probability of every patch ``(B, N)`` is laid out on the patch grid
``(B, gh, gw)``, upsampled bilinearly (``align_corners=False``) to the image size and smoothed
with a Gaussian of σ = 4 pixels. The smoothing is a torch separable equivalent of
``scipy.ndimage.gaussian_filter(x, sigma, mode="reflect", truncate=4.0)`` applied to each 2-D
map: same kernel (radius ``int(4σ + 0.5)``), same half-sample symmetric ("reflect") borders,
tested against scipy to 1e-5. Doing it in torch keeps the whole pipeline on the GPU and batched
instead of a numpy round trip per image. :func:`anomaly_map` runs both linear steps as two cached
matrix products per map (:func:`map_matrices`), equal to :func:`gaussian_blur` after
:func:`upsample_map` to 1e-6 and about a hundred times faster at 518 px; those two stay as the
readable steps.

Taught in notebooks/04_learnable_pixel_prompts.ipynb.
"""

from __future__ import annotations

import functools
import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor

from tipsomaly_lite.backbones.base import Backbone

__all__ = ["anomaly_map", "gaussian_blur", "gaussian_kernel1d", "map_matrices"]


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> Tensor:
    """Normalised 1-D Gaussian kernel, the one ``scipy.ndimage.gaussian_filter`` uses.

    Args:
        sigma: standard deviation in pixels, > 0.
        truncate: the kernel stops at ``truncate`` standard deviations; the radius is
            ``int(truncate * sigma + 0.5)`` pixels, as in scipy.
    Returns:
        ``(2 * radius + 1,)`` float32 weights summing to 1.
    Raises:
        ValueError: ``sigma`` is not positive and finite, or ``truncate`` is negative.
    """
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a positive number of pixels, got {sigma}.")
    if not (math.isfinite(truncate) and truncate >= 0):
        raise ValueError(f"truncate must be a non-negative number of standard deviations, got {truncate}.")
    radius = int(truncate * float(sigma) + 0.5)
    # Built in float64 and normalised there so the float32 weights match scipy's to rounding.
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (x / float(sigma)) ** 2)
    return (weights / weights.sum()).to(torch.float32)


def _reflect_index(length: int, radius: int, device: torch.device) -> Tensor:
    """Indices of a 1-D signal padded by ``radius`` on each side with scipy's 'reflect' mode.

    'reflect' is the half-sample symmetric extension ``d c b a | a b c d | d c b a``, which is
    periodic with period ``2 * length``; working modulo that period keeps it right even when the
    radius exceeds the signal (``F.pad``'s 'reflect' omits the edge sample and refuses that case).

    Returns:
        ``(length + 2 * radius,)`` int64 indices into ``[0, length)``.
    """
    positions = torch.arange(-radius, length + radius, device=device) % (2 * length)
    return torch.where(positions < length, positions, 2 * length - 1 - positions)


def _blur_last_dim(x: Tensor, kernel: Tensor) -> Tensor:
    """Correlate every row of ``x`` ``(..., L)`` with ``kernel`` ``(K,)`` under 'reflect' borders."""
    radius = (kernel.numel() - 1) // 2
    length = x.shape[-1]
    padded = x[..., _reflect_index(length, radius, x.device)]
    rows = padded.reshape(-1, 1, length + 2 * radius)
    # The kernel is symmetric, so conv1d's cross-correlation equals a true convolution.
    out = F.conv1d(rows, kernel.view(1, 1, -1))
    return out.reshape(x.shape)


def gaussian_blur(maps: Tensor, sigma: float = 4.0, truncate: float = 4.0) -> Tensor:
    """Gaussian-smooth each 2-D map, equal to scipy's ``gaussian_filter(mode="reflect")`` per map.

    The 2-D Gaussian is separable, so it runs as two 1-D passes: along rows, then along columns.

    Args:
        maps: ``(B, H, W)`` maps on any device; any real dtype.
        sigma: standard deviation in pixels (the same along both axes); 0 returns the input.
        truncate: kernel radius in standard deviations (scipy's default 4).
    Returns:
        ``(B, H, W)`` smoothed maps, in the input dtype when it is floating point (computed in
        at least float32), else float32.
    Raises:
        ValueError: ``maps`` is not 3-D or ``sigma`` is negative.
    Taught in notebooks/04_learnable_pixel_prompts.ipynb.
    """
    if maps.ndim != 3:
        raise ValueError(f"maps must be (B, H, W), got shape {tuple(maps.shape)}.")
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0 pixels, got {sigma}.")
    out_dtype = maps.dtype if maps.is_floating_point() else torch.float32
    if sigma == 0:
        return maps.to(out_dtype)  # scipy's gaussian_filter is the identity at sigma 0 too
    # Half precision would lose the 1e-5 agreement with scipy; float64 input stays float64.
    work_dtype = torch.promote_types(out_dtype, torch.float32)
    kernel = gaussian_kernel1d(sigma, truncate).to(device=maps.device, dtype=work_dtype)
    x = maps.to(work_dtype)
    x = _blur_last_dim(x, kernel)  # along each row (W)
    x = _blur_last_dim(x.transpose(1, 2), kernel).transpose(1, 2)  # along each column (H)
    return x.contiguous().to(out_dtype)


def _bilinear_matrix(n_in: int, n_out: int) -> Tensor:
    """``(n_out, n_in)`` float64 weights of 1-D linear upsampling as ``F.interpolate`` does it
    (``align_corners=False``: source position ``(i + 0.5) * n_in / n_out - 0.5``, clamped at 0 and at the last
    sample)."""
    scale = n_in / n_out
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * scale - 0.5).clamp_min(0.0)
    lo = src.floor().long().clamp_max(n_in - 1)
    hi = (lo + 1).clamp_max(n_in - 1)
    frac = src - lo.double()
    out = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    out.index_put_((rows, lo), 1.0 - frac, accumulate=True)
    out.index_put_((rows, hi), frac, accumulate=True)
    return out


def _blur_matrix(length: int, sigma: float, truncate: float) -> Tensor:
    """``(length, length)`` float64 matrix of :func:`gaussian_blur` along one axis ('reflect' borders)."""
    radius = int(truncate * float(sigma) + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (x / float(sigma)) ** 2)
    weights = weights / weights.sum()
    source = _reflect_index(length, radius, torch.device("cpu"))  # (length + 2r,) padded positions
    rows = torch.arange(length)[:, None].expand(length, 2 * radius + 1)
    taps = torch.arange(2 * radius + 1)[None, :] + torch.arange(length)[:, None]  # padded index of each tap
    out = torch.zeros(length, length, dtype=torch.float64)
    out.index_put_((rows.reshape(-1), source[taps].reshape(-1)), weights.repeat(length), accumulate=True)
    return out


@functools.lru_cache(maxsize=32)
def _axis_matrix(n_in: int, n_out: int, sigma: float, truncate: float, dtype: torch.dtype,
                 device: torch.device) -> Tensor:
    matrix = _bilinear_matrix(n_in, n_out)
    if sigma > 0:
        matrix = _blur_matrix(n_out, sigma, truncate) @ matrix
    return matrix.to(device=device, dtype=dtype)


def map_matrices(grid: tuple[int, int], size: tuple[int, int], sigma: float = 4.0, truncate: float = 4.0, *,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> tuple[Tensor, Tensor]:
    """The anomaly map's two linear steps folded into one matrix per axis: ``A_y (H, gh)`` and ``A_x (W, gw)``.

    Bilinear upsampling and the separable Gaussian are both linear along each axis, so
    ``gaussian_blur(upsample_map(P, (H, W)))`` equals ``A_y @ P @ A_x^T`` for every patch grid ``P``
    ``(gh, gw)`` (tested to 1e-6). Built in float64 once per (grid, size, sigma, truncate, dtype,
    device) and cached.

    Args:
        grid: ``(gh, gw)`` patch grid.
        size: ``(H, W)`` output pixels.
        sigma: Gaussian standard deviation in output pixels; 0 = upsampling only.
        truncate: kernel radius in standard deviations.
        dtype, device: of the returned matrices.
    Returns:
        ``A_y (H, gh)`` and ``A_x (W, gw)``; read-only (shared by every caller).

    >>> a_y, a_x = map_matrices((37, 37), (518, 518))
    >>> tuple(a_y.shape), round(float(a_y.sum(dim=1).mean()), 6)   # each output row's weights sum to 1
    ((518, 37), 1.0)
    """
    (gh, gw), (h, w) = (int(v) for v in grid), (int(v) for v in size)
    if sigma < 0 or not math.isfinite(sigma):
        raise ValueError(f"sigma must be >= 0 pixels, got {sigma}.")
    if sigma > 0:
        gaussian_kernel1d(sigma, truncate)  # the same checks as the blur
    device = torch.device(device)
    return (_axis_matrix(gh, h, float(sigma), float(truncate), dtype, device),
            _axis_matrix(gw, w, float(sigma), float(truncate), dtype, device))


def anomaly_map(patch_scores: Tensor, grid: tuple[int, int], image_size: int | tuple[int, int],
                sigma: float = 4.0) -> Tensor:
    """Patch anomaly probabilities to a smoothed, image-sized anomaly map.

    Steps (docs/method.md §2.5): reshape ``(B, N)`` to the patch grid ``(B, gh, gw)`` (row-major, as the
    vision tower emits patches), bilinear upsample with ``align_corners=False``, then
    :func:`gaussian_blur` with σ = ``sigma`` pixels of the output image.

    Args:
        patch_scores: ``(B, N)`` anomalous-class probability of each patch, ``N = gh * gw``.
        grid: ``(gh, gw)`` patch grid, e.g. ``(37, 37)`` for 518 px and patch size 14.
        image_size: output side ``S`` (square) or ``(H, W)`` in pixels, e.g. 518.
        sigma: Gaussian standard deviation in output pixels; 0 skips smoothing.
    Returns:
        ``(B, H, W)`` anomaly map, in the dtype of ``patch_scores`` when floating point.
    Raises:
        ValueError: ``patch_scores`` is not 2-D or ``N != gh * gw``.
    Taught in notebooks/04_learnable_pixel_prompts.ipynb.
    """
    if patch_scores.ndim != 2:
        raise ValueError(f"patch_scores must be (B, N), got shape {tuple(patch_scores.shape)}.")
    gh, gw = (int(v) for v in grid)
    batch, n = patch_scores.shape
    if n != gh * gw:
        raise ValueError(f"patch_scores has N={n} patches but grid {gh}x{gw} needs {gh * gw}.")
    if isinstance(image_size, numbers.Integral):
        size = (int(image_size), int(image_size))
    else:
        size = tuple(int(s) for s in image_size)
    if len(size) != 2:
        raise ValueError(f"image_size must be an int or (H, W), got {image_size!r}.")
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0 pixels, got {sigma}.")
    out_dtype = patch_scores.dtype if patch_scores.is_floating_point() else torch.float32
    work_dtype = torch.promote_types(out_dtype, torch.float32)  # float64 stays float64
    a_y, a_x = map_matrices((gh, gw), size, sigma, dtype=work_dtype, device=patch_scores.device)
    # upsample then blur = A_y @ P @ A_x^T: two small matmuls instead of an interpolation and two convolutions.
    grids = patch_scores.reshape(batch, gh, gw).to(work_dtype)
    return (a_y @ grids @ a_x.T).to(out_dtype)


def upsample_map(values: Tensor, size: tuple[int, int]) -> Tensor:
    """``(B, gh, gw)`` patch values -> ``(B, H, W)`` by bilinear upsampling (align_corners False).

    Floating inputs keep their dtype; integer or boolean ones become float32.
    Taught in notebooks/01_loading_tips.ipynb.
    """
    values = values if values.is_floating_point() else values.float()
    return F.interpolate(values[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


@torch.no_grad()
def similarity_maps(model: Backbone, images: Tensor, texts: list[str]) -> Tensor:
    """Cosine similarity of every patch to every text: ``(B, T, gh, gw)``.

    Args:
        model: a loaded backbone.
        images: ``(B, 3, S, S)`` in [0, 1].
        texts: ``T`` prompts.
    Taught in notebooks/02_spatial_alignment.ipynb.
    """
    patches = model.encode_features(images)["patch_tokens"]
    text = model.encode_text(texts, normalize=True).to(patches)
    gh, gw = model.patch_grid(tuple(images.shape[-2:]))
    return torch.einsum("bnd,td->btn", patches, text).reshape(len(images), len(texts), gh, gw)
