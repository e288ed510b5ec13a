"""Tests for vitok.metrics.image against scikit-image references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from skimage import data as skdata
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from vitok.metrics import psnr, ssim, to_uint8

TOL = 1e-4


def _sk_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """skimage SSIM with the exact conventions vitok claims to follow."""
    return structural_similarity(
        a,
        b,
        channel_axis=-1,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=255,
    )


def _hwc_uint8(t: torch.Tensor) -> np.ndarray:
    """C×H×W [-1, 1] tensor -> H×W×C uint8 array via to_uint8."""
    return to_uint8(t).permute(1, 2, 0).numpy()


def _from_uint8(img: np.ndarray) -> torch.Tensor:
    """H×W×C uint8 array -> C×H×W float32 tensor in [-1, 1]."""
    return torch.from_numpy(img.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)


def _degrade(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Blur plus noise in [-1, 1] space; noise pushes some values outside the range."""
    rng = np.random.default_rng(seed)
    blurred = gaussian_filter(x.numpy(), sigma=(0, 1.2, 1.2))
    noisy = blurred + rng.normal(0.0, 0.08, size=blurred.shape)
    return torch.from_numpy(noisy.astype(np.float32))


def _photo_pairs() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(original, reconstruction) crops of real photos, incl. non-square sizes."""
    astro = skdata.astronaut()
    coffee = skdata.coffee()
    crops = [
        astro[100:196, 150:278],  # 96×128
        astro[0:128, 0:128],  # 128×128
        coffee[150:278, 200:296],  # 128×96
        coffee[10:37, 300:351],  # 27×51, small and odd
    ]
    pairs = []
    for i, crop in enumerate(crops):
        x = _from_uint8(np.ascontiguousarray(crop))
        pairs.append((x, _degrade(x, seed=i)))
    return pairs


def _random_pairs() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) random pairs, including mild and heavy perturbation and out-of-range values."""
    g = torch.Generator().manual_seed(0)
    pairs = []
    for h, w, noise in [(64, 64, 0.05), (48, 80, 0.3), (11, 11, 0.1), (33, 17, 1.0)]:
        x = torch.rand(3, h, w, generator=g) * 2.2 - 1.1
        y = x + noise * torch.randn(3, h, w, generator=g)
        pairs.append((x, y))
    return pairs


PAIRS = _photo_pairs() + _random_pairs()
IDS = [f"photo{i}" for i in range(4)] + [f"random{i}" for i in range(4)]


# --- to_uint8 -----------------------------------------------------------------


def test_to_uint8_matches_numpy() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 7, 9, generator=g) * 3.0 - 1.5  # includes values to clamp
    x.view(-1)[:4] = torch.tensor([-1.0, 1.0, -1.0000001, 1.0000001])
    ref = np.round((np.clip(x.numpy(), -1.0, 1.0) + np.float32(1.0)) * np.float32(127.5))
    out = to_uint8(x)
    assert out.dtype == torch.uint8
    assert out.shape == x.shape
    np.testing.assert_array_equal(out.numpy(), ref.astype(np.uint8))
    assert out.view(-1)[:4].tolist() == [0, 255, 0, 255]


def test_to_uint8_extremes_and_ties() -> None:
    x = torch.tensor([-5.0, -1.0, 0.0, 1.0, 7.0])
    # x = 0 maps to exactly 127.5, a tie that half-to-even rounds to 128.
    assert to_uint8(x).tolist() == [0, 0, 128, 255, 255]
    # torch.round must share numpy's half-to-even rule for every tie.
    ties = np.array([0.5, 1.5, 2.5, 253.5, 254.5], dtype=np.float32)
    assert torch.round(torch.from_numpy(ties)).tolist() == np.round(ties).tolist()


def test_to_uint8_round_trips_uint8_images() -> None:
    img = skdata.astronaut()[:32, :32]
    np.testing.assert_array_equal(_hwc_uint8(_from_uint8(img)), img)


def test_to_uint8_half_precision_input() -> None:
    x = torch.linspace(-1, 1, 101)
    xb = x.to(torch.bfloat16)
    np.testing.assert_array_equal(to_uint8(xb).numpy(), to_uint8(xb.float()).numpy())


# --- PSNR / SSIM against skimage ----------------------------------------------


@pytest.mark.parametrize(("x", "y"), PAIRS, ids=IDS)
def test_psnr_matches_skimage(x: torch.Tensor, y: torch.Tensor) -> None:
    ref = peak_signal_noise_ratio(_hwc_uint8(x), _hwc_uint8(y), data_range=255)
    out = psnr(x[None], y[None])
    assert out.shape == (1,)
    assert out.dtype == torch.float64
    assert abs(out.item() - ref) < TOL


@pytest.mark.parametrize(("x", "y"), PAIRS, ids=IDS)
def test_ssim_matches_skimage(x: torch.Tensor, y: torch.Tensor) -> None:
    ref = _sk_ssim(_hwc_uint8(x), _hwc_uint8(y))
    out = ssim(x[None], y[None])
    assert out.shape == (1,)
    assert out.dtype == torch.float64
    assert abs(out.item() - ref) < TOL


def test_ssim_grayscale_matches_skimage() -> None:
    x, y = PAIRS[0]
    x, y = x[:1], y[:1]
    a, b = to_uint8(x[0]).numpy(), to_uint8(y[0]).numpy()
    ref = structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    assert abs(ssim(x[None], y[None]).item() - ref) < TOL


def test_metrics_are_meaningful_on_photos() -> None:
    # Sanity: degradation lowers both metrics well below their maxima.
    x, y = PAIRS[0]
    assert 15.0 < psnr(x[None], y[None]).item() < 40.0
    assert 0.0 < ssim(x[None], y[None]).item() < 0.95


# --- identical inputs ---------------------------------------------------------


def test_identical_images() -> None:
    x = PAIRS[0][0][None].repeat(2, 1, 1, 1)
    p = psnr(x, x.clone())
    assert torch.isinf(p).all() and (p > 0).all()
    torch.testing.assert_close(ssim(x, x.clone()), torch.ones(2, dtype=torch.float64))


def test_identical_after_quantisation() -> None:
    # Differences below half an 8-bit step vanish once quantised.
    x = _from_uint8(skdata.coffee()[:40, :40])[None]
    y = x + 0.001
    assert math.isinf(psnr(x, y).item())
    assert ssim(x, y).item() == pytest.approx(1.0, abs=1e-12)


# --- batches and video --------------------------------------------------------


def test_batch_equals_per_sample() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.rand(4, 3, 24, 40, generator=g) * 2 - 1
    y = x + 0.1 * torch.randn(4, 3, 24, 40, generator=g)
    y[2] = x[2]  # one identical sample must not affect the others
    for fn in (psnr, ssim):
        batched = fn(x, y)
        assert batched.shape == (4,)
        single = torch.cat([fn(x[i : i + 1], y[i : i + 1]) for i in range(4)])
        torch.testing.assert_close(batched, single, rtol=0, atol=1e-12)
    assert math.isinf(psnr(x, y)[2].item())


def test_video_ssim_is_mean_over_frames() -> None:
    g = torch.Generator().manual_seed(3)
    b, t = 2, 3
    x = torch.rand(b, 3, t, 16, 20, generator=g) * 2 - 1
    y = x + 0.2 * torch.randn(b, 3, t, 16, 20, generator=g)
    out = ssim(x, y)
    assert out.shape == (b,)
    per_frame = torch.stack([ssim(x[:, :, i], y[:, :, i]) for i in range(t)], dim=1)
    torch.testing.assert_close(out, per_frame.mean(dim=1), rtol=0, atol=1e-12)
    # And each frame agrees with skimage.
    for s in range(b):
        for i in range(t):
            ref = _sk_ssim(_hwc_uint8(x[s, :, i]), _hwc_uint8(y[s, :, i]))
            assert abs(per_frame[s, i].item() - ref) < TOL


def test_video_psnr_uses_clip_mse() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.rand(2, 3, 4, 12, 12, generator=g) * 2 - 1
    y = x + 0.1 * torch.randn(2, 3, 4, 12, 12, generator=g)
    out = psnr(x, y)
    assert out.shape == (2,)
    for s in range(2):
        a = to_uint8(x[s]).numpy()
        b = to_uint8(y[s]).numpy()
        assert abs(out[s].item() - peak_signal_noise_ratio(a, b, data_range=255)) < TOL


# --- errors -------------------------------------------------------------------


@pytest.mark.parametrize("fn", [psnr, ssim])
def test_shape_mismatch_raises(fn) -> None:
    with pytest.raises(ValueError, match=r"\(1, 3, 16, 16\).*\(1, 3, 16, 17\)"):
        fn(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 17))


@pytest.mark.parametrize("fn", [psnr, ssim])
def test_bad_rank_raises(fn) -> None:
    with pytest.raises(ValueError, match="B×C×H×W"):
        fn(torch.zeros(3, 16, 16), torch.zeros(3, 16, 16))


@pytest.mark.parametrize("fn", [psnr, ssim])
def test_integer_input_raises(fn) -> None:
    x = torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    with pytest.raises(TypeError, match="floating-point"):
        fn(x, x)


@pytest.mark.parametrize("shape", [(1, 3, 10, 32), (1, 3, 32, 10), (1, 3, 2, 8, 8)])
def test_ssim_too_small_raises(shape: tuple[int, ...]) -> None:
    x = torch.zeros(shape)
    with pytest.raises(ValueError, match="at least 11×11"):
        ssim(x, x)
