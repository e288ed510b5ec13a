"""Tests for vitok.metrics.sharpness against a numpy reference and known distortions."""

from __future__ import annotations

import importlib.util
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from vitok.metrics import dataset_sharpness, high_frequency_energy, sharpness_ratio, to_uint8
from vitok.metrics.sharpness import HIGH_FREQUENCY_CUTOFF, _high_frequency_mask

_spec = importlib.util.spec_from_file_location("metric_inputs", Path(__file__).parent / "fixtures" / "metric_inputs.py")
mi = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mi)

PHOTOS = ("astronaut", "coffee", "grass")


def _photos(h: int = 96, w: int = 96) -> torch.Tensor:
    return torch.stack([mi.photo(name, h, w) for name in PHOTOS])


def _numpy_energy(img: torch.Tensor) -> float:
    """Independent float64 numpy version of the protocol for one 3×H×W [-1, 1] image."""
    rgb = to_uint8(img).numpy().astype(np.float64)
    lum = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    lum = lum - lum.mean()
    h, w = lum.shape
    spec = np.fft.fft2(lum * np.outer(np.hanning(h), np.hanning(w)))
    fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
    mask = np.sqrt(fx**2 + fy**2) >= HIGH_FREQUENCY_CUTOFF
    return float((np.abs(spec) ** 2)[mask].sum() / (h * w))


@pytest.mark.parametrize("size", [(64, 64), (96, 80)])
def test_energy_matches_numpy_reference(size):
    x = _photos(*size)
    got = high_frequency_energy(x)
    assert got.dtype == torch.float64 and got.shape == (len(PHOTOS),)
    ref = torch.tensor([_numpy_energy(img) for img in x], dtype=torch.float64)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=0)
    assert (got > 0).all()


def test_mask_counts_bins_on_the_circle():
    # At 140 px, (k/140)² + (l/140)² = 1/16 for e.g. (21, 28): floating point drops such bins.
    for h, w in [(140, 140), (64, 96), (45, 31)]:
        ky = [k if k < (h + 1) // 2 else k - h for k in range(h)]  # fft2 order, like fftfreq
        kx = [k if k < (w + 1) // 2 else k - w for k in range(w)]
        cut = Fraction(HIGH_FREQUENCY_CUTOFF) ** 2
        ref = torch.tensor([[Fraction(a, h) ** 2 + Fraction(b, w) ** 2 >= cut for b in kx] for a in ky])
        assert torch.equal(_high_frequency_mask(h, w, torch.device("cpu")), ref)
    assert _high_frequency_mask(140, 140, torch.device("cpu"))[21, 28]


def test_identical_is_exactly_one():
    x = _photos()
    assert torch.equal(sharpness_ratio(x, x.clone()), torch.ones(len(PHOTOS), dtype=torch.float64))


def test_blur_lowers_ratio():
    x = _photos()
    ratios = torch.stack([sharpness_ratio(x, mi.gaussian_blur(x, s)) for s in (0.5, 1.0, 2.0, 3.0)])
    assert (ratios < 1).all()
    assert (ratios.diff(dim=0) < 0).all(), ratios  # strictly decreasing in sigma, per photo


def test_noise_raises_ratio():
    x = _photos()
    ratios = torch.stack([sharpness_ratio(x, mi.add_noise(x, s, seed=3)) for s in (0.02, 0.05, 0.1)])
    assert (ratios > 1).all()
    assert (ratios.diff(dim=0) > 0).all(), ratios


def test_video_is_mean_over_frames():
    x = _photos(64, 64)  # 3 photos as 3 frames of one video, and reversed as a second video
    y = mi.gaussian_blur(x, 1.0)
    xv = torch.stack([x.permute(1, 0, 2, 3), x.flip(0).permute(1, 0, 2, 3)])  # 2×3×T×H×W
    yv = torch.stack([y.permute(1, 0, 2, 3), y.flip(0).permute(1, 0, 2, 3)])
    ex, ey = high_frequency_energy(x), high_frequency_energy(y)
    torch.testing.assert_close(high_frequency_energy(xv), ex.mean().expand(2), rtol=1e-12, atol=0)
    # The video ratio is that of the frame-mean energies (a ratio of sums over frames).
    torch.testing.assert_close(sharpness_ratio(xv, yv), (ey.sum() / ex.sum()).expand(2), rtol=1e-12, atol=0)


def test_dataset_sharpness_is_ratio_of_sums():
    orig = torch.tensor([4.0, 1e-9, 6.0], dtype=torch.float64)  # a near-flat original
    recon = torch.tensor([2.0, 1e-6, 3.0], dtype=torch.float64)
    assert dataset_sharpness(orig, recon) == pytest.approx((2.0 + 1e-6 + 3.0) / (4.0 + 1e-9 + 6.0), rel=1e-15)
    with pytest.raises(ValueError, match="same shape"):
        dataset_sharpness(orig, recon[:2])
