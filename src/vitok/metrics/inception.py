"""Inception-v3 feature network for FID / Inception Score (TF 2015-12-05 graph).

This is the network that pytorch-fid (``fid_inception_v3``) and torch-fidelity
(``FeatureExtractorInceptionV3``) build around the published weight file
``pt_inception-2015-12-05-6726825d.pth``, a PyTorch port of TensorFlow's
``classify_image_graph_def.pb`` from ``inception-2015-12-05.tgz``. It differs from
torchvision's ImageNet Inception-v3 in the ways the TF graph does:

* every average pool inside the A, C and first E blocks excludes the zero
  padding from the mean (``count_include_pad=False``);
* the pool branch of the last E block (``Mixed_7c``) uses a 3×3 *max* pool;
* BatchNorm eps is 0.001 and the classifier has 1008 outputs.

Published file contents (as established from the loaders that consume it):
both pytorch-fid and torch-fidelity load it with a strict ``load_state_dict``
into a network that has *no* auxiliary classifier, so the file holds no
``AuxLogits.*`` keys (none are built here; :func:`build_fid_inception` still
drops such keys should a dict carry them). The network has 94 conv+BN units
(stem 5, 3 × A 7, B 4, 4 × C 10, D 6, 2 × E 9), each stored as a bias-free
``<unit>.conv.weight`` plus ``<unit>.bn.{weight,bias,running_mean,running_var}``,
and the classifier ``fc.weight`` (1008×2048) and ``fc.bias``: 94·5 + 2 = 472
tensors. A direct TF→PyTorch conversion (as in torch-fidelity's converter
script) writes no BatchNorm ``num_batches_tracked`` counters; whether the
published file has them (which would make 566 tensors) was not confirmed, so the
loader accepts dicts with or without them. This module's own ``state_dict()``
has the 566 entries.

Parameters: 23,850,960. Cross-check: torchvision's Inception-v3 has 27,161,264;
removing its 3,326,696-parameter aux head gives 23,834,568, and 1008 instead of
1000 classes adds 8 × 2049. BatchNorm running statistics add 2 × 17,216 = 34,432
values.

Usage::

    net = build_fid_inception(torch.load("pt_inception-2015-12-05-6726825d.pth"))
    pool3, logits_unbiased = net(images)  # images: B×3×H×W in [-1, 1]

``pool3`` (B×2048) is the FID/KID feature; ``logits_unbiased`` (B×1008, the
classifier without its bias) is what torch-fidelity feeds to the Inception Score.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .image import to_uint8

__all__ = ["FIDInceptionV3", "build_fid_inception", "fid_preprocess"]

INPUT_SIZE = 299
NUM_CLASSES = 1008
FEATURE_DIM = 2048
_BN_EPS = 1e-3
_AUX_PREFIX = "AuxLogits."


def fid_preprocess(x: Tensor) -> Tensor:
    """Map B×3×H×W [-1, 1] images to the float32 B×3×299×299 [-1, 1] network input.

    Steps, matching pytorch-fid on 8-bit PNGs: quantise with
    :func:`vitok.metrics.image.to_uint8` and divide by 255 (what ``ToTensor``
    yields), bilinearly resize to 299×299 with ``align_corners=False`` (skipped
    when the input already is 299×299, where it would be the identity), then
    scale to [-1, 1] via ``2x - 1``.
    """
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise TypeError(f"expected a floating-point tensor in [-1, 1], got {type(x).__name__} "
                        f"{getattr(x, 'dtype', '')}")
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected B×3×H×W images, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"inputs must be non-empty, got shape {tuple(x.shape)}")
    y = to_uint8(x).to(torch.float32) / 255.0
    if y.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        y = F.interpolate(y, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    return 2.0 * y - 1.0


class BasicConv2d(nn.Module):
    """Bias-free convolution, BatchNorm (eps 0.001) and ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel_size, stride=1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=_BN_EPS)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_3x3(x: Tensor) -> Tensor:
    # TF's SAME average pool divides by the number of real (unpadded) pixels.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35×35 block: 1x1, 5x5, double 3x3 and pooled 1x1 branches."""

    def __init__(self, c_in: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 64, 1)
        self.branch5x5_1 = BasicConv2d(c_in, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(c_in, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = self.branch1x1(x)
        b = self.branch5x5_2(self.branch5x5_1(x))
        c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        d = self.branch_pool(_avg_pool_3x3(x))
        return torch.cat([a, b, c, d], dim=1)


class InceptionB(nn.Module):
    """35×35 → 17×17 reduction block."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        a = self.branch3x3(x)
        b = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        c = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([a, b, c], dim=1)


class InceptionC(nn.Module):
    """17×17 block with factorised 7x7 convolutions."""

    def __init__(self, c_in: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = self.branch1x1(x)
        b = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        c = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            c = layer(c)
        d = self.branch_pool(_avg_pool_3x3(x))
        return torch.cat([a, b, c, d], dim=1)


class InceptionD(nn.Module):
    """17×17 → 8×8 reduction block."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        a = self.branch3x3_2(self.branch3x3_1(x))
        b = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b = layer(b)
        c = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([a, b, c], dim=1)


class InceptionE(nn.Module):
    """8×8 block with split 1x3/3x1 outputs; ``max_pool`` selects the TF quirk of Mixed_7c."""

    def __init__(self, c_in: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(c_in, 320, 1)
        self.branch3x3_1 = BasicConv2d(c_in, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(c_in, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = self.branch1x1(x)
        t = self.branch3x3_1(x)
        b = torch.cat([self.branch3x3_2a(t), self.branch3x3_2b(t)], dim=1)
        t = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        c = torch.cat([self.branch3x3dbl_3a(t), self.branch3x3dbl_3b(t)], dim=1)
        if self.max_pool:
            p = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            p = _avg_pool_3x3(x)
        d = self.branch_pool(p)
        return torch.cat([a, b, c, d], dim=1)


class FIDInceptionV3(nn.Module):
    """FID Inception-v3 returning (pool3 features B×2048, logits_unbiased B×1008).

    Always in eval mode: :meth:`train` keeps BatchNorm on its running statistics,
    so a parent module switching to training cannot change the features.
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)
        self.train(False)

    def train(self, mode: bool = True) -> FIDInceptionV3:  # noqa: ARG002 - always eval
        return super().train(False)

    def features(self, x: Tensor) -> Tensor:
        """Pool3 features (B×2048) of an already preprocessed float32 B×3×H×W input."""
        x = self.Conv2d_1a_3x3(x)
        x = self.Conv2d_2a_3x3(x)
        x = self.Conv2d_2b_3x3(x)
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_3b_1x1(x)
        x = self.Conv2d_4a_3x3(x)
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a,
                      self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e,
                      self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return x.mean(dim=(2, 3))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """B×3×H×W [-1, 1] images → (pool3 B×2048, logits_unbiased B×1008), float32."""
        x = fid_preprocess(x)
        # Keep the whole network in float32 even under an enclosing autocast.
        with torch.autocast(device_type=x.device.type, enabled=False):
            feats = self.features(x)
            logits = feats @ self.fc.weight.T
        return feats, logits


def build_fid_inception(state_dict: Mapping[str, Tensor] | None) -> FIDInceptionV3:
    """Build :class:`FIDInceptionV3`, load ``state_dict`` strictly, freeze it, return it in eval.

    ``AuxLogits.*`` entries are dropped (this network has no auxiliary head) and
    missing BatchNorm ``num_batches_tracked`` counters are allowed (they do not
    affect inference). Any other missing, unexpected or wrongly shaped entry
    raises ``ValueError`` naming the keys. ``None`` keeps the random init
    (tests only).
    """
    model = FIDInceptionV3()
    if state_dict is not None:
        if not isinstance(state_dict, Mapping):
            raise ValueError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        given = {k: v for k, v in state_dict.items() if not str(k).startswith(_AUX_PREFIX)}
        own = model.state_dict()
        missing = [k for k in own if k not in given and not k.endswith(".num_batches_tracked")]
        unexpected = [k for k in given if k not in own]
        not_tensor = [k for k in given if k in own and not torch.is_tensor(given[k])]
        mismatched = [
            f"{k}: expected {tuple(own[k].shape)}, got {tuple(given[k].shape)}"
            for k in given
            if k in own and torch.is_tensor(given[k]) and given[k].shape != own[k].shape
        ]
        if missing or unexpected or not_tensor or mismatched:
            parts = []
            if missing:
                parts.append("missing keys: " + ", ".join(missing))
            if unexpected:
                parts.append("unexpected keys: " + ", ".join(map(str, unexpected)))
            if not_tensor:
                parts.append("non-tensor values: " + ", ".join(not_tensor))
            if mismatched:
                parts.append("shape mismatches: " + "; ".join(mismatched))
            raise ValueError("state dict does not fit FIDInceptionV3 - " + " | ".join(parts))
        full = {k: given.get(k, v) for k, v in own.items()}
        model.load_state_dict(full, strict=True)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()
