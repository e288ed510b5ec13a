"""LPIPS perceptual distance (Zhang et al., 2018), VGG16 trunk, calibration v0.1.

Reproduces ``lpips.LPIPS(net='vgg', version='0.1')`` of the reference ``lpips``
package with its default ``spatial=False``, for images in [-1, 1]:

1. input scaling ``(x - shift) / scale`` with the reference's per-channel
   constants (this is the v0.1 behaviour; v0.0 skipped it);
2. torchvision's VGG16 ``features`` trunk (3×3 convolutions, ReLU, 2×2 max
   pooling), tapped at relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3;
3. unit normalisation of every feature vector along the channel axis,
   ``f / (||f||_2 + 1e-10)``;
4. squared difference of the normalised features of the two images;
5. a learned non-negative 1×1 projection per layer to a single channel (no
   bias; the reference's dropout before it is active in training only and is
   left out here), averaged over space;
6. the sum of the five per-layer values.

Weights are not bundled and never downloaded: :func:`build_lpips` takes the
already loaded state dicts of torchvision's ``vgg16-397923af.pth`` (its
``classifier.*`` entries are ignored) and of the lpips package's
``weights/v0.1/vgg.pth`` (``lin{0..4}.model.1.weight``). The module's own
parameter names are exactly those keys, so both files load without renaming.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

__all__ = ["LPIPS", "build_lpips", "VGG16_FEATURE_SHAPES", "LPIPS_HEAD_SHAPES"]

# Per-channel shift and scale of the reference ScalingLayer (RGB order).
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
# Added to the channel norm before dividing (reference ``normalize_tensor``).
_NORM_EPS = 1e-10

# VGG16 configuration "D": output channels of each conv, "M" for a max pool.
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# Exclusive end index (in torchvision's ``features`` numbering) of each of the
# five slices; the last module of each slice is relu1_2 … relu5_3.
_SLICE_ENDS = (4, 9, 16, 23, 30)
_HEAD_CHANNELS = (64, 128, 256, 512, 512)
# Four max pools precede relu5_3, so each side must be at least 2**4 pixels.
_MIN_SIDE = 16


def _feature_layout() -> list[tuple[int, str, int, int]]:
    """(index, kind, in_ch, out_ch) of every module of the truncated trunk."""
    layout = []
    index, channels = 0, 3
    for item in _VGG16_CFG:
        if item == "M":
            layout.append((index, "pool", channels, channels))
            index += 1
        else:
            layout.append((index, "conv", channels, item))
            layout.append((index + 1, "relu", item, item))
            channels = item
            index += 2
    assert index == _SLICE_ENDS[-1]
    return layout


def _vgg_shapes() -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for index, kind, cin, cout in _feature_layout():
        if kind == "conv":
            shapes[f"features.{index}.weight"] = (cout, cin, 3, 3)
            shapes[f"features.{index}.bias"] = (cout,)
    return shapes


#: Names and shapes of the VGG16 entries LPIPS uses (torchvision key names).
VGG16_FEATURE_SHAPES: dict[str, tuple[int, ...]] = _vgg_shapes()
#: Names and shapes of the entries of the lpips package's ``v0.1/vgg.pth``.
LPIPS_HEAD_SHAPES: dict[str, tuple[int, ...]] = {
    f"lin{i}.model.1.weight": (1, c, 1, 1) for i, c in enumerate(_HEAD_CHANNELS)
}


class _Head(nn.Module):
    """1×1 projection to one channel, laid out like the reference ``NetLinLayer``.

    Slot 0 of ``model`` holds the reference's train-time dropout; it is an
    identity here so that the weight keeps the key ``model.1.weight``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, 1, bias=False))

    @property
    def weight(self) -> Tensor:
        return self.model[1].weight


def _unit_normalise(f: Tensor) -> Tensor:
    """``f / (||f||_2 over dim 1 + eps)``, with a finite gradient where ``f`` is zero.

    The forward value equals the reference's ``sqrt(sum(f**2)) + eps``; the
    ``where`` only avoids the NaN that ``sqrt`` back-propagates at exactly 0.
    """
    sq = (f * f).sum(dim=1, keepdim=True)
    positive = sq > 0
    norm = torch.where(positive, torch.sqrt(torch.where(positive, sq, torch.ones_like(sq))), torch.zeros_like(sq))
    return f / (norm + _NORM_EPS)


class LPIPS(nn.Module):
    """LPIPS-VGG v0.1 distance between batches of [-1, 1] RGB images.

    ``forward(x, y)`` takes two B×3×H×W floating-point tensors (H, W ≥ 16) and
    returns the (B,) distances. The trunk runs in the parameters' dtype (or in
    the autocast dtype when autocast is active); normalisation, heads and the
    averaging run in at least float32, so the result is float32 for float32,
    bfloat16 or float16 models and float64 for a float64 model.

    Differentiable with respect to both inputs. Use :func:`build_lpips` to load
    published weights; a bare ``LPIPS()`` has random weights.
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _, kind, cin, cout in _feature_layout():
            if kind == "conv":
                layers.append(nn.Conv2d(cin, cout, kernel_size=3, padding=1))
            elif kind == "relu":
                layers.append(nn.ReLU())
            else:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        self.features = nn.Sequential(*layers)
        for i, c in enumerate(_HEAD_CHANNELS):
            self.add_module(f"lin{i}", _Head(c))
        # float64 so that ``.double()`` reproduces the constants exactly; cast on use.
        self.register_buffer("shift", torch.tensor(_SHIFT, dtype=torch.float64).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE, dtype=torch.float64).view(1, 3, 1, 1), persistent=False)
        self.channels_last = False  # True: CUDA inputs go NHWC (measured no faster on an H100)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Random initialisation (torchvision's VGG scheme; non-negative heads)."""
        for m in self.features:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        for head in self.heads:
            head.weight.uniform_(0.0, 2.0 / head.weight.shape[1])

    @property
    def heads(self) -> list[_Head]:
        return [getattr(self, f"lin{i}") for i in range(len(_HEAD_CHANNELS))]

    def _trunk(self, x: Tensor) -> list[Tensor]:
        """The five tapped ReLU outputs of VGG16 for scaled input ``x``."""
        taps = []
        start = 0
        h = x
        for end in _SLICE_ENDS:
            for i in range(start, end):
                h = self.features[i](h)
            taps.append(h)
            start = end
        return taps

    def _prepare(self, x: Tensor) -> Tensor:
        weight = self.features[0].weight
        if not torch.is_autocast_enabled(x.device.type):
            x = x.to(weight.dtype)
        # One memory layout for both inputs: convolutions propagate channels_last,
        # and the spatial mean's summation order depends on it.
        # channels_last on the GPU was measured no faster here (benchmarks/NOTES.md, "conv layout"),
        # so it is opt-in; both inputs get the same layout either way.
        fmt = torch.channels_last if self.channels_last and x.is_cuda else torch.contiguous_format
        x = x.contiguous(memory_format=fmt)
        return (x - self.shift.to(x.dtype)) / self.scale.to(x.dtype)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if x.shape != y.shape:
            raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected B×3×H×W images, got shape {tuple(x.shape)}")
        if x.shape[2] < _MIN_SIDE or x.shape[3] < _MIN_SIDE:
            raise ValueError(f"images must be at least {_MIN_SIDE}×{_MIN_SIDE}, got {tuple(x.shape[2:])}")
        for name, t in (("x", x), ("y", y)):
            if not t.is_floating_point():
                raise TypeError(f"{name} must be a floating-point tensor in [-1, 1], got {t.dtype}")

        # Two separate passes keep LPIPS(x, x) exactly 0 and LPIPS symmetric bit for bit.
        taps_x = self._trunk(self._prepare(x))
        taps_y = self._trunk(self._prepare(y))
        total = None
        for fx, fy, head in zip(taps_x, taps_y, self.heads):
            acc = torch.promote_types(fx.dtype, torch.float32)
            diff = (_unit_normalise(fx.to(acc)) - _unit_normalise(fy.to(acc))) ** 2
            # The 1×1 head as a channel-weighted sum at each pixel, then the spatial mean (the
            # reference's order). Every reduction over channels then runs per pixel, so compiled it
            # is one pass over both feature maps; elementwise ops keep it out of autocast's low precision.
            w = head.weight.to(acc).reshape(1, -1, 1, 1)
            term = (diff * w).sum(dim=1).mean(dim=(1, 2))
            total = term if total is None else total + term
        return total


def _load_checked(model: LPIPS, state: Mapping[str, object], expected: Mapping[str, tuple[int, ...]], label: str) -> None:
    """Copy ``state`` into ``model`` after checking its keys and shapes exactly."""
    tensors = {k: torch.as_tensor(v) for k, v in state.items()}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    mismatched = sorted(
        f"{k}: got {tuple(tensors[k].shape)}, expected {expected[k]}"
        for k in set(expected) & set(tensors)
        if tuple(tensors[k].shape) != tuple(expected[k])
    )
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected}")
        if mismatched:
            parts.append(f"mismatched shapes {mismatched}")
        raise ValueError(f"{label} state dict does not match LPIPS-VGG: " + "; ".join(parts))
    own = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for k, v in tensors.items():
            own[k].copy_(v)


def build_lpips(vgg_state: Mapping[str, object] | None, heads_state: Mapping[str, object] | None) -> LPIPS:
    """LPIPS-VGG v0.1 from loaded weight files, in eval mode with frozen parameters.

    ``vgg_state``: the state dict of torchvision's ``vgg16-397923af.pth``; its
    ``features.*`` conv entries are loaded strictly and ``classifier.*`` entries
    are ignored. ``heads_state``: the state dict of the lpips package's
    ``weights/v0.1/vgg.pth`` (``lin0..4.model.1.weight``), loaded strictly.
    Either may be None to keep the random initialisation (plumbing tests only).

    Raises ValueError naming every missing, unexpected or wrongly shaped key.
    """
    model = LPIPS()
    if vgg_state is not None:
        trunk = {k: v for k, v in vgg_state.items() if not k.startswith("classifier.")}
        _load_checked(model, trunk, VGG16_FEATURE_SHAPES, "VGG16")
    if heads_state is not None:
        _load_checked(model, heads_state, LPIPS_HEAD_SHAPES, "LPIPS heads")
    model.requires_grad_(False)
    return model.eval()
