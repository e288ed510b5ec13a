"""High-frequency energy and the sharpness ratio of reconstructions to originals.

Protocol, per frame: quantise the [-1, 1] pixels with
:func:`~vitok.metrics.image.to_uint8`; luma Y = 0.299 R + 0.587 G + 0.114 B of the
0..255 values in float64; subtract the frame's mean luma; multiply by the separable
2-D Hann window w(y) w(x) (symmetric, ``torch.hann_window(n, periodic=False)``, i.e.
``numpy.hanning``) so the image borders do not add spectral leakage; power spectrum
|FFT2|²; sum it over every frequency (fx, fy in cycles/pixel, as from
``torch.fft.fftfreq``) whose radius sqrt(fx² + fy²) is at least
:data:`HIGH_FREQUENCY_CUTOFF` = 0.25, i.e. outside the circle of half the Nyquist
frequency; divide by H·W. The radius test is evaluated exactly on the integer
frequency indices, so bins lying on the circle count for every image size (floating
point drops some of them, e.g. at 140 px). For video the per-sample energy is the mean
over frames.

``sharpness_ratio(x, y)`` = E(y) / E(x) per sample, x the originals and y the
reconstructions: 1.0 is as sharp as the original, < 1 blurred, > 1 more
high-frequency energy than the original (noise, ringing, checkerboard artefacts).
Per-sample ratios blow up on near-flat originals (E(x) ≈ 0), so the dataset-level
number is the ratio of sums, Σ E(recon) / Σ E(orig) (:func:`dataset_sharpness`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .image import _check_pair
from .structure import _luma, _per_sample, _pixels

__all__ = ["HIGH_FREQUENCY_CUTOFF", "dataset_sharpness", "high_frequency_energy", "sharpness_ratio"]

HIGH_FREQUENCY_CUTOFF = 0.25  # cycles/pixel; Nyquist is 0.5


def _high_frequency_mask(h: int, w: int, device: torch.device) -> Tensor:
    """H×W bool mask of the FFT bins with radius >= HIGH_FREQUENCY_CUTOFF, in fft2 order."""
    # fftfreq(n) * n are the integer indices k; with fx = kx / W, fy = ky / H the test
    # (kx/W)² + (ky/H)² >= c² becomes an exact integer comparison (c = 1/4).
    ky = torch.round(torch.fft.fftfreq(h, dtype=torch.float64, device=device) * h).to(torch.int64)
    kx = torch.round(torch.fft.fftfreq(w, dtype=torch.float64, device=device) * w).to(torch.int64)
    inv = round(1.0 / HIGH_FREQUENCY_CUTOFF)  # 4: exact because the cutoff is 1/integer
    lhs = inv**2 * (kx.square().view(1, w) * h * h + ky.square().view(h, 1) * w * w)
    return lhs >= h * h * w * w


def _frame_energy(x: Tensor) -> Tensor:
    """High-frequency energy of every frame of [-1, 1] images/video, shape (B·T,) float64."""
    lum = _luma(_pixels(x)).squeeze(1)  # N×H×W
    h, w = lum.shape[-2:]
    lum = lum - lum.mean(dim=(-2, -1), keepdim=True)
    win_y = torch.hann_window(h, periodic=False, dtype=torch.float64, device=x.device)
    win_x = torch.hann_window(w, periodic=False, dtype=torch.float64, device=x.device)
    spec = torch.fft.fft2(lum * win_y.view(h, 1) * win_x.view(1, w))
    power = spec.real.square() + spec.imag.square()
    mask = _high_frequency_mask(h, w, x.device)
    return (power * mask).sum(dim=(-2, -1)) / (h * w)


def high_frequency_energy(x: Tensor) -> Tensor:
    """Per-sample high-frequency energy of B×C×H×W (or B×C×T×H×W) [-1, 1] images, (B,) float64.

    C must be 3 (RGB) or 1 (grey). By Parseval, Σ|FFT2|² / (H·W) is a sum over pixels, so
    the value is the high-band part of the windowed luma's sum of squares (8-bit grey
    levels²); it grows with the image area, which cancels in the ratios.
    """
    _check_pair(x, x)  # same shape/dtype checks as the paired metrics
    return _per_sample(_frame_energy(x), x.shape[0])


def sharpness_ratio(x: Tensor, y: Tensor) -> Tensor:
    """Per-sample E(y) / E(x) of originals x and reconstructions y, shape (B,) float64.

    For video both energies are means over frames, so this is a ratio of sums over
    frames. Exactly 1.0 for identical samples; NaN or inf where E(x) = 0 (flat frames).
    """
    _check_pair(x, y)
    return high_frequency_energy(y) / high_frequency_energy(x)


def dataset_sharpness(orig_energies: Tensor, recon_energies: Tensor) -> float:
    """Dataset-level sharpness Σ E(recon) / Σ E(orig) from per-sample energies of equal shape."""
    if orig_energies.shape != recon_energies.shape:
        raise ValueError(
            f"energies must have the same shape, got {tuple(orig_energies.shape)} "
            f"and {tuple(recon_energies.shape)}"
        )
    return float(recon_energies.to(torch.float64).sum() / orig_energies.to(torch.float64).sum())
