"""Tests for tipsomaly_lite.method.maps: the torch Gaussian equals scipy's, and the map pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from tipsomaly_lite.method.maps import anomaly_map, gaussian_blur, gaussian_kernel1d


def scipy_blur(maps: torch.Tensor, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """scipy's filter on each 2-D map, in float64."""
    x = maps.detach().double().numpy()
    return np.stack([gaussian_filter(m, sigma, mode="reflect", truncate=truncate) for m in x])


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.5, 4.0, 7.3])
def test_kernel_matches_scipy(sigma):
    kernel = gaussian_kernel1d(sigma)
    radius = int(4.0 * sigma + 0.5)
    # scipy's kernel builder is private, so read its kernel off the response to a unit impulse.
    impulse = np.zeros(4 * radius + 1)
    impulse[2 * radius] = 1.0
    expected = gaussian_filter(impulse, sigma)[radius:3 * radius + 1]
    assert kernel.dtype == torch.float32 and kernel.shape == (2 * radius + 1,)
    np.testing.assert_allclose(kernel.double().numpy(), expected, atol=1e-7)
    assert abs(kernel.double().sum().item() - 1.0) < 1e-6


@pytest.mark.parametrize("shape, sigma", [
    ((2, 518, 518), 4.0),   # the real map size
    ((3, 8, 8), 4.0),       # radius 16 > side 8: reflection wraps several times
    ((1, 3, 5), 4.0),       # tinier still, non-square
    ((2, 37, 50), 1.0),     # non-square
    ((2, 41, 29), 2.5),     # fractional sigma
    ((1, 1, 1), 2.0),       # a single pixel
])
def test_blur_matches_scipy(shape, sigma):
    maps = torch.rand(shape, generator=torch.Generator().manual_seed(sum(shape)))
    got = gaussian_blur(maps, sigma)
    assert got.shape == maps.shape and got.dtype == torch.float32
    np.testing.assert_allclose(got.double().numpy(), scipy_blur(maps, sigma), atol=1e-5, rtol=0)


def test_blur_truncate_matches_scipy():
    maps = torch.rand(2, 30, 23, generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(gaussian_blur(maps, 3.0, truncate=2.0).numpy(),
                               scipy_blur(maps, 3.0, truncate=2.0), atol=1e-5, rtol=0)


def test_blur_float64_input_stays_float64_and_is_exact():
    maps = torch.rand(2, 20, 17, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    got = gaussian_blur(maps, 4.0)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), scipy_blur(maps, 4.0), atol=1e-7, rtol=0)


def test_blur_integer_input_returns_float32():
    maps = torch.randint(0, 5, (1, 12, 12))
    got = gaussian_blur(maps, 1.5)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), scipy_blur(maps, 1.5), atol=1e-5, rtol=0)


def test_blur_is_batch_independent():
    maps = torch.rand(4, 25, 31, generator=torch.Generator().manual_seed(3))
    batched = gaussian_blur(maps, 2.0)
    for i in range(4):
        torch.testing.assert_close(batched[i:i + 1], gaussian_blur(maps[i:i + 1], 2.0))


def test_blur_sigma_zero_is_identity_and_negative_is_error():
    maps = torch.rand(2, 5, 6)
    torch.testing.assert_close(gaussian_blur(maps, 0.0), maps)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur(maps, -1.0)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_kernel1d(0.0)


def test_blur_rejects_non_3d():
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        gaussian_blur(torch.rand(5, 6), 1.0)
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        gaussian_blur(torch.rand(1, 1, 5, 6), 1.0)


def test_anomaly_map_is_upsample_then_scipy_blur():
    scores = torch.rand(2, 37 * 37, generator=torch.Generator().manual_seed(4))
    got = anomaly_map(scores, (37, 37), 518)
    assert got.shape == (2, 518, 518) and got.dtype == torch.float32
    up = F.interpolate(scores.view(2, 1, 37, 37), size=(518, 518), mode="bilinear", align_corners=False)[:, 0]
    np.testing.assert_allclose(got.numpy(), scipy_blur(up, 4.0), atol=1e-5, rtol=0)


def test_anomaly_map_row_major_and_non_square():
    scores = torch.zeros(1, 3 * 5)
    scores[0, 1 * 5 + 4] = 1.0  # row 1, column 4
    got = anomaly_map(scores, (3, 5), (30, 50), sigma=0)
    assert got.shape == (1, 30, 50)
    row, col = divmod(int(got[0].argmax()), 50)
    assert 10 <= row < 20 and 40 <= col < 50  # the hot patch lands on its own 10x10 block
    assert got[0, 5, 5] == 0.0 and got[0, 14:16, 45:50].min() > 0.9


@pytest.mark.parametrize("sigma", [0.0, 4.0])
def test_anomaly_map_of_constant_is_constant(sigma):
    scores = torch.full((3, 16), 0.37)
    got = anomaly_map(scores, (4, 4), 56, sigma=sigma)
    torch.testing.assert_close(got, torch.full((3, 56, 56), 0.37))


def test_anomaly_map_accepts_numpy_int_size():
    assert anomaly_map(torch.rand(1, 4), (2, 2), np.int64(10), sigma=1.0).shape == (1, 10, 10)


def test_anomaly_map_keeps_float64():
    scores = torch.rand(1, 9, dtype=torch.float64)
    assert anomaly_map(scores, (3, 3), 12, sigma=1.0).dtype == torch.float64


def test_anomaly_map_errors():
    with pytest.raises(ValueError, match=r"N=10.*3x3.*9"):
        anomaly_map(torch.rand(2, 10), (3, 3), 42)
    with pytest.raises(ValueError, match=r"\(B, N\)"):
        anomaly_map(torch.rand(2, 3, 3), (3, 3), 42)
