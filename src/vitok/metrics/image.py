"""Pixel-space reconstruction metrics (PSNR, SSIM) on 8-bit quantised images.

All metrics take model-space pixels in [-1, 1] and quantise them to uint8 first,
so the numbers match what one would measure on saved PNG files. SSIM follows
Wang et al. (2004) with the conventions of scikit-image's
``structural_similarity(a, b, channel_axis=-1, gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=255)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["psnr", "ssim", "to_uint8"]

_DATA_RANGE = 255.0
_SSIM_SIGMA = 1.5
_SSIM_RADIUS = 5  # skimage: int(truncate * sigma + 0.5) with truncate=3.5
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03


def to_uint8(x: Tensor) -> Tensor:
    """Quantise [-1, 1] float pixels (any shape) to uint8 in [0, 255], same shape.

    Computes ``round((clamp(x, -1, 1) + 1) * 127.5)`` in float32. ``torch.round``
    rounds exact .5 ties half to even, like ``numpy.round``. NaN inputs give
    undefined values.
    """
    # float32 regardless of input dtype so bf16/fp16 outputs quantise identically
    # to a numpy float32 reference.
    v = (x.to(torch.float32).clamp(-1.0, 1.0) + 1.0) * 127.5
    return torch.round(v).to(torch.uint8)


def _check_pair(x: Tensor, y: Tensor) -> None:
    """Validate a pair of B×C×H×W or B×C×T×H×W floating-point tensors."""
    if x.shape != y.shape:
        raise ValueError(
            f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.dim() not in (4, 5):
        raise ValueError(
            f"expected B×C×H×W images or B×C×T×H×W video, got shape {tuple(x.shape)}"
        )
    if x.numel() == 0:
        raise ValueError(f"inputs must be non-empty, got shape {tuple(x.shape)}")
    for name, t in (("x", x), ("y", y)):
        # Integer inputs are most likely already uint8 and would be mis-scaled.
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor in [-1, 1], got {t.dtype}")


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Per-sample PSNR in dB of B×C×H×W (or B×C×T×H×W) [-1, 1] tensors, shape (B,) float64.

    Both inputs are quantised with :func:`to_uint8`; the MSE is taken over all
    channels, pixels (and frames, for video) of a sample. Identical samples give +inf.
    """
    _check_pair(x, y)
    diff = to_uint8(x).to(torch.float64) - to_uint8(y).to(torch.float64)
    mse = diff.square().flatten(1).mean(dim=1)
    # mse == 0 yields +inf through the division, which is the intended value.
    return 10.0 * torch.log10(_DATA_RANGE**2 / mse)


def _gaussian_kernel(device: torch.device) -> Tensor:
    """Normalised 1-D Gaussian of length 11, sigma 1.5, float64."""
    r = torch.arange(-_SSIM_RADIUS, _SSIM_RADIUS + 1, dtype=torch.float64, device=device)
    k = torch.exp(-(r**2) / (2.0 * _SSIM_SIGMA**2))
    return k / k.sum()


def ssim(x: Tensor, y: Tensor) -> Tensor:
    """Per-sample SSIM of B×C×H×W (or B×C×T×H×W) [-1, 1] tensors, shape (B,) float64.

    Gaussian-weighted (11×11, sigma 1.5) SSIM on the 8-bit quantised images with
    data range 255, averaged over the valid region (5 px from each border),
    channels, and frames for video.
    """
    _check_pair(x, y)
    h, w = x.shape[-2:]
    size = 2 * _SSIM_RADIUS + 1
    if h < size or w < size:
        raise ValueError(
            f"SSIM needs images of at least {size}×{size} pixels, got {h}×{w}"
        )
    b = x.shape[0]
    # Every (sample, channel, frame) plane is filtered independently, so fold
    # them all into the batch axis; frame/channel order does not matter for the mean.
    a = to_uint8(x).to(torch.float64).reshape(-1, 1, h, w)
    c = to_uint8(y).to(torch.float64).reshape(-1, 1, h, w)

    # Filtering the five moment images in one grouped conv avoids five launches.
    stack = torch.cat([a, c, a * a, c * c, a * c], dim=1)
    k = _gaussian_kernel(x.device)
    # No padding: skimage filters with reflect padding and then crops the 5-px
    # border, which leaves exactly the values a valid convolution produces.
    stack = F.conv2d(stack, k.view(1, 1, size, 1).expand(5, 1, size, 1), groups=5)
    stack = F.conv2d(stack, k.view(1, 1, 1, size).expand(5, 1, 1, size), groups=5)
    mu_a, mu_c, e_aa, e_cc, e_ac = stack.unbind(dim=1)

    var_a = e_aa - mu_a * mu_a
    var_c = e_cc - mu_c * mu_c
    cov = e_ac - mu_a * mu_c
    c1 = (_SSIM_K1 * _DATA_RANGE) ** 2
    c2 = (_SSIM_K2 * _DATA_RANGE) ** 2
    num = (2.0 * mu_a * mu_c + c1) * (2.0 * cov + c2)
    den = (mu_a * mu_a + mu_c * mu_c + c1) * (var_a + var_c + c2)
    ssim_map = num / den
    # All planes have the same valid size, so the mean of per-plane means equals
    # the mean over every plane of the sample.
    return ssim_map.reshape(b, -1).mean(dim=1)

