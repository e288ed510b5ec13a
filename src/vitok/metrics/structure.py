"""Structure metrics (MS-SSIM, GMSD) on 8-bit quantised images.

Both metrics take model-space pixels in [-1, 1], quantise them with
:func:`~vitok.metrics.image.to_uint8` and compute in float64 on the 0..255 values,
so the numbers match what one would measure on saved PNG files. Video
(B×C×T×H×W) is scored frame by frame and the per-sample value is the mean over frames.

MS-SSIM (Wang et al. 2003) follows PyPI ``pytorch-msssim`` 1.0.0's
``ms_ssim(X, Y, data_range=255, size_average=False)`` exactly: 5 scales with weights
(0.0448, 0.2856, 0.3001, 0.2363, 0.1333); per channel, SSIM and contrast-structure
(cs) maps from an 11-tap separable Gaussian (sigma 1.5; computed in float32 like
pytorch-msssim's, then float64) with valid filtering (no padding), K1 = 0.01,
K2 = 0.03; between scales ``avg_pool2d(kernel 2, padding = size % 2 per axis)`` with
zero padding counted in the average; the value per channel is
prod(relu(cs_s) ** w_s for scales 1-4) * relu(ssim_5) ** w_5, then the mean over
channels. The smaller side must be at least :data:`MS_SSIM_MIN_SIZE` = 161 px.
(piq's ``multi_scale_ssim`` pads replicate top/left before pooling instead, so the
two agree only while every scale has even sides, e.g. 192 or 256 px.)

GMSD (Xue et al. 2014) follows PyPI ``piq`` 0.8.0's ``gmsd(x / 255, y / 255,
data_range=1., reduction='none')``: luma Y = 0.299 R + 0.587 G + 0.114 B in [0, 1];
zero-pad bottom/right by max(H % 2, W % 2) and 2×2 average-pool with stride 2;
Prewitt gradients ([[-1, 0, 1]] * 3 / 3 and its transpose, zero padding 1);
GMS = (2 m1 m2 + T) / (m1² + m2² + T) with T = 170 / 255²; GMSD is the population
standard deviation of the GMS map. Lower is better; identical images give 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .image import _check_pair, to_uint8

__all__ = ["MS_SSIM_MIN_SIZE", "gmsd", "ms_ssim"]

# pytorch-msssim asserts smaller side > (win_size - 1) * 2**4 = 160: the 11-tap valid
# filter must still fit after four halvings.
MS_SSIM_MIN_SIZE = 161
_MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_DATA_RANGE = 255.0
_WIN_SIZE = 11
_WIN_SIGMA = 1.5
_K1 = 0.01
_K2 = 0.03

_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, the Y row of piq's rgb2yiq
_GMSD_T = 170.0 / 255.0**2


def _frames(t: Tensor) -> Tensor:
    """B×C×H×W or B×C×T×H×W -> (B·T)×C×H×W, frames of a sample adjacent (sample-major)."""
    if t.dim() == 5:
        b, c, n, h, w = t.shape
        return t.permute(0, 2, 1, 3, 4).reshape(b * n, c, h, w)
    return t


def _per_sample(values: Tensor, batch: int) -> Tensor:
    """(B·T,) per-frame values -> (B,) per-sample means over frames."""
    return values.reshape(batch, -1).mean(dim=1)


def _pixels(x: Tensor) -> Tensor:
    """[-1, 1] images or video -> (B·T)×C×H×W float64 8-bit values 0..255."""
    return _frames(to_uint8(x).to(torch.float64))


def _luma(t: Tensor) -> Tensor:
    """N×3×H×W RGB (or N×1×H×W grey, returned as is) -> N×1×H×W luma, same dtype."""
    if t.shape[1] == 1:
        return t
    if t.shape[1] != 3:
        raise ValueError(f"expected 1 (grey) or 3 (RGB) channels, got {t.shape[1]}")
    r, g, b = t.unbind(dim=1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _gaussian_window(device: torch.device) -> Tensor:
    """Normalised 1-D Gaussian of length 11, sigma 1.5, computed in float32, returned float64."""
    # pytorch-msssim builds its window in float32 and casts it to the input dtype; a
    # float64 window moves MS-SSIM by up to ~2e-6 on strongly distorted images. Built
    # on the CPU so the device's exp cannot change the last bit.
    r = torch.arange(_WIN_SIZE, dtype=torch.float32) - _WIN_SIZE // 2
    k = torch.exp(-(r**2) / (2.0 * _WIN_SIGMA**2))
    return (k / k.sum()).to(device=device, dtype=torch.float64)


def _ssim_cs(a: Tensor, c: Tensor, win: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean SSIM and cs of N×C×H×W float64 planes, each N×C."""
    n, ch = a.shape[:2]
    # One grouped conv filters the five moment images of every channel at once.
    stack = torch.cat([a, c, a * a, c * c, a * c], dim=1)
    groups = 5 * ch
    stack = F.conv2d(stack, win.view(1, 1, _WIN_SIZE, 1).expand(groups, 1, _WIN_SIZE, 1), groups=groups)
    stack = F.conv2d(stack, win.view(1, 1, 1, _WIN_SIZE).expand(groups, 1, 1, _WIN_SIZE), groups=groups)
    mu_a, mu_c, e_aa, e_cc, e_ac = stack.split(ch, dim=1)
    c1 = (_K1 * _DATA_RANGE) ** 2
    c2 = (_K2 * _DATA_RANGE) ** 2
    cs_map = (2.0 * (e_ac - mu_a * mu_c) + c2) / ((e_aa - mu_a * mu_a) + (e_cc - mu_c * mu_c) + c2)
    ssim_map = (2.0 * mu_a * mu_c + c1) / (mu_a * mu_a + mu_c * mu_c + c1) * cs_map
    return ssim_map.flatten(2).mean(dim=-1), cs_map.flatten(2).mean(dim=-1)


def ms_ssim(x: Tensor, y: Tensor) -> Tensor:
    """Per-sample MS-SSIM of B×C×H×W (or B×C×T×H×W) [-1, 1] tensors, shape (B,) float64.

    pytorch-msssim 1.0.0 conventions on the 8-bit values (see the module docstring);
    1 for identical samples. Raises ValueError if the smaller side is below
    :data:`MS_SSIM_MIN_SIZE`.
    """
    _check_pair(x, y)
    h, w = x.shape[-2:]
    if min(h, w) < MS_SSIM_MIN_SIZE:
        raise ValueError(
            f"MS-SSIM needs a smaller image side of at least {MS_SSIM_MIN_SIZE} px "
            f"(5 scales of an 11-tap window), got {h}×{w}"
        )
    a, c = _pixels(x), _pixels(y)
    win = _gaussian_window(x.device)
    weights = torch.tensor(_MS_SSIM_WEIGHTS, dtype=torch.float64, device=x.device)
    factors = []
    for scale in range(len(_MS_SSIM_WEIGHTS)):
        ssim_c, cs_c = _ssim_cs(a, c, win)
        if scale < len(_MS_SSIM_WEIGHTS) - 1:
            factors.append(torch.relu(cs_c))
            # pytorch-msssim pads odd sides by one on both ends and counts the zeros.
            pad = (a.shape[-2] % 2, a.shape[-1] % 2)
            a = F.avg_pool2d(a, kernel_size=2, padding=pad)
            c = F.avg_pool2d(c, kernel_size=2, padding=pad)
    factors.append(torch.relu(ssim_c))
    per_channel = torch.prod(torch.stack(factors) ** weights.view(-1, 1, 1), dim=0)  # N×C
    return _per_sample(per_channel.mean(dim=1), x.shape[0])


def gmsd(x: Tensor, y: Tensor) -> Tensor:
    """Per-sample GMSD of B×C×H×W (or B×C×T×H×W) [-1, 1] tensors, shape (B,) float64.

    piq 0.8.0 conventions on the 8-bit values divided by 255 (see the module
    docstring); C must be 3 (RGB) or 1 (grey). 0 for identical samples, larger is worse.
    """
    _check_pair(x, y)
    # Both images go through one batch so pooling and gradients run once.
    n = _frames(x).shape[0]
    lum = _luma(torch.cat([_pixels(x), _pixels(y)]) / _DATA_RANGE)
    pad = max(lum.shape[-2] % 2, lum.shape[-1] % 2)
    lum = F.avg_pool2d(F.pad(lum, (0, pad, 0, pad)), kernel_size=2, stride=2)

    prewitt = torch.tensor([[-1.0, 0.0, 1.0]] * 3, dtype=torch.float64, device=x.device) / 3.0
    kernels = torch.stack([prewitt, prewitt.t()]).unsqueeze(1)  # 2×1×3×3: x and y gradients
    mag = F.conv2d(lum, kernels, padding=1).square().sum(dim=1).sqrt()
    m1, m2 = mag[:n], mag[n:]
    gms = (2.0 * m1 * m2 + _GMSD_T) / (m1 * m1 + m2 * m2 + _GMSD_T)
    dev = (gms - gms.mean(dim=(-2, -1), keepdim=True)).square().mean(dim=(-2, -1)).sqrt()
    return _per_sample(dev, x.shape[0])
