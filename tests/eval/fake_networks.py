"""Stand-ins for the evaluation's networks: random-weight feature networks, a fake I3D, fake tokenizers.

Plumbing tests only: none of these produce metrics anyone should report.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitok.eval.networks import FeatureNetworks
from vitok.metrics.inception import FIDInceptionV3, build_fid_inception
from vitok.metrics.lpips import build_lpips
from vitok.model import ViTokConfig


@functools.lru_cache(maxsize=1)
def random_inception() -> FIDInceptionV3:
    """Random-init FID Inception whose BatchNorm running statistics were re-estimated on random images.

    With the initial running statistics (mean 0, variance 1) every random block shrinks the signal:
    pool3 features come out near 1e-8 and every Frechet distance near 1e-17, so a test could not
    tell a reconstruction from noise. One pass in training mode with momentum None sets each layer's
    statistics to those of its actual input, block after block, so features are of order one.
    """
    torch.manual_seed(0)
    net = build_fid_inception(None)
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average: after one batch, exactly that batch's statistics
        bn.training = True
    smooth = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        net(F.interpolate(smooth, size=64, mode="bilinear", align_corners=False))
    for bn in norms:
        bn.training = False
    return net


def random_networks() -> FeatureNetworks:
    """Calibrated random Inception and random LPIPS, marked as not the published weights."""
    torch.manual_seed(0)
    return FeatureNetworks(inception=random_inception(), lpips=build_lpips(None, None), published_weights=False)


class FakeI3D(nn.Module):
    """The TorchScript I3D's call signature; features are the clip's mean per channel (B×3).

    Follows the real network's input convention: [0, 255] values, mapped to [-1, 1] by `rescale`.
    """

    def forward(self, x: Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> Tensor:
        if rescale:
            x = x / 127.5 - 1.0
        return x.mean(dim=(2, 3, 4))


def save_fake_i3d(folder: Path) -> Path:
    """Script FakeI3D into folder/i3d_torchscript.pt (the file name load_networks looks for)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "i3d_torchscript.pt"
    with warnings.catch_warnings():
        # Deprecated in recent torch, but the only way to write a file shaped like the real one.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(FakeI3D()).save(str(path))
    return path


class FakeTokenizer(nn.Module):
    """Reconstructs flat images exactly and adds fixed noise to the others; the tokenizer call signature.

    `noise` 0 gives the identity. Flat: every channel's standard deviation is below 0.01.
    """

    def __init__(self, config: ViTokConfig, noise: float = 0.0, keep_flat: bool = True) -> None:
        super().__init__()
        self.config, self.noise, self.keep_flat, self.amp_dtype = config, noise, keep_flat, None

    def forward(self, x: Tensor, sample: bool = False, check: bool = True) -> tuple[Tensor, None]:
        g = torch.Generator().manual_seed(1)
        noisy = x + self.noise * torch.randn(x.shape, generator=g)
        flat = x.flatten(2).std(dim=2).amax(dim=1) < 0.01
        keep = flat.view(-1, *[1] * (x.dim() - 1)) & self.keep_flat
        return torch.where(keep, x, noisy), None
