"""StyleGAN2-style residual discriminator for images and video (stage 2 of training).

Layout (Karras et al., 2020, "residual" D): from-RGB 1×1 conv, then one residual block per
halving of the sides down to 4×4, a minibatch-standard-deviation channel, a 3×3 conv and two
linear layers to one logit per sample.

Two deliberate departures from StyleGAN2:

* Standard parametrisation (plain layers, He-normal init, zero biases) instead of
  equalised learning rate. The paper's discriminator learning rate (2e-5, 25k-step warm-up)
  comes from the authors' code, whose StyleGAN discriminator uses plain layers. Under Adam a
  plain weight moves by about lr per step, an equalised one by lr / sqrt(fan_in), so 2e-5
  here is roughly StyleGAN2's equalised 2e-3 at the deep layers' fan-in (2e-3 / sqrt(512·9)),
  while wrapping this layout in equalised lr would make the paper's value ~70× too small. He init for the leaky ReLU
  (linear gain for the skip and output layers) gives the same forward signal scale as
  StyleGAN2's unit-variance weights with its sqrt(2) activation gain; the 1/sqrt(2)
  residual scaling keeps that scale from growing with depth.
* The first linear layer is a valid convolution whose kernel covers the nominal final map
  (4×4, or T'×4×4 for video), and the logit is the mean over its output positions. At the
  constructor's resolution this is exactly StyleGAN2's flatten + linear; larger inputs
  (e.g. 64×48 for a resolution-32 discriminator) average the logits of their 4×4 windows.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_SLOPE = 0.2
# StyleGAN's binomial low-pass filter; normalised so that blurring keeps the mean.
_BINOMIAL = (1.0, 3.0, 3.0, 1.0)
_FINAL_SIDE = 4
_VIDEO_MODES = (None, "frame", "3d")


def blur_kernel(dims: int) -> Tensor:
    """The normalised [1, 3, 3, 1] binomial filter as a `dims`-dimensional outer product (4×…×4, sums to 1)."""
    taps = torch.tensor(_BINOMIAL) / sum(_BINOMIAL)
    kernel = taps
    for _ in range(dims - 1):
        kernel = kernel[..., None] * taps
    return kernel


def minibatch_std(x: Tensor, group_size: int, eps: float = 1e-8) -> Tensor:
    """Append one channel holding the std of features across a group of samples: N×C×… -> N×(C+1)×….

    Sample i belongs to group i mod ceil(N / group_size) (StyleGAN2's strided grouping), so a
    batch that the group size does not divide gets groups whose sizes differ by at most one
    instead of an error. The statistic is computed in float32 even under autocast.
    """
    if group_size < 1:
        raise ValueError(f"group_size must be ≥ 1, got {group_size}")
    n = x.shape[0]
    groups = -(-n // min(group_size, n))
    if n % groups == 0:
        # Equal groups (the usual case): a reshape instead of scatters, as in StyleGAN2 (and inductor's
        # CPU code generator fails on the scatter into a single group).
        var = x.float().view(n // groups, groups, *x.shape[1:]).var(dim=0, unbiased=False)
        per_sample = (var + eps).sqrt().flatten(1).mean(1).repeat(n // groups)  # sample i: group i mod groups
    else:
        gid = torch.arange(n, device=x.device) % groups
        # Built with arange rather than torch.tensor(list, device=...): no host-to-device copy, no sync.
        counts = ((n // groups) + (torch.arange(groups, device=x.device) < n % groups)).float()
        counts = counts.view(groups, *[1] * (x.dim() - 1))
        xf = x.float()
        mean = xf.new_zeros((groups, *x.shape[1:])).index_add_(0, gid, xf) / counts
        var = xf.new_zeros((groups, *x.shape[1:])).index_add_(0, gid, (xf - mean[gid]).square()) / counts
        per_sample = (var + eps).sqrt().flatten(1).mean(1)[gid]  # one value per group, to its samples
    channel = per_sample.to(x.dtype).view(n, 1, *[1] * (x.dim() - 2)).expand(n, 1, *x.shape[2:])
    return torch.cat([x, channel], dim=1)


def _conv(dims: int, cin: int, cout: int, kernel: tuple[int, ...], bias: bool = True) -> nn.Module:
    """A stride-1 'same' convolution (2D or 3D) with the given kernel."""
    cls = nn.Conv2d if dims == 2 else nn.Conv3d
    return cls(cin, cout, kernel, padding=tuple(k // 2 for k in kernel), bias=bias)


def _kernel(dims: int, side: int, frames: int) -> tuple[int, ...]:
    """side×side, or side×side×side for video: 1×side×side once only one frame is left."""
    if dims == 2:
        return (side, side)
    return (side if frames > 1 else 1, side, side)


def _blur_conv(x: Tensor, weight: Tensor, stride: tuple[int, ...], padding: tuple[int, ...]) -> Tensor:
    conv = F.conv2d if x.dim() == 4 else F.conv3d
    return conv(x, weight.to(x.dtype), stride=stride, padding=padding, groups=x.shape[1])


def _blur_conv_t(g: Tensor, weight: Tensor, stride: tuple[int, ...], padding: tuple[int, ...],
                 size: tuple[int, ...]) -> Tensor:
    conv_t = F.conv_transpose2d if g.dim() == 4 else F.conv_transpose3d
    k = weight.shape[2:]
    extra = tuple(n - ((m - 1) * s - 2 * p + kk) for n, m, s, p, kk in zip(size, g.shape[2:], stride, padding, k))
    return conv_t(g, weight.to(g.dtype), stride=stride, padding=padding, output_padding=extra, groups=g.shape[1])


class _BlurDown(torch.autograd.Function):
    """Depthwise blur + subsampling whose gradient is the transposed blur (_BlurUp) and vice versa.

    The filter is a constant, so both directions are linear maps of the input alone. Writing the
    backward as the other map keeps R1's double backward a pair of plain depthwise convolutions;
    autograd's generic double backward of a grouped convolution was measured 6x slower than the
    forward and backward together on an H100 (benchmarks/NOTES.md).
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, stride: tuple[int, ...], padding: tuple[int, ...]) -> Tensor:
        ctx.save_for_backward(weight)
        ctx.geometry = (stride, padding, tuple(x.shape[2:]), x.dtype)
        return _blur_conv(x, weight, stride, padding)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (weight,) = ctx.saved_tensors
        stride, padding, size, dtype = ctx.geometry
        return _BlurUp.apply(grad, weight, stride, padding, size).to(dtype), None, None, None


class _BlurUp(torch.autograd.Function):
    """The transpose of _BlurDown (its gradient map); its own gradient is _BlurDown again."""

    @staticmethod
    def forward(ctx, g: Tensor, weight: Tensor, stride: tuple[int, ...], padding: tuple[int, ...],
                size: tuple[int, ...]) -> Tensor:
        ctx.save_for_backward(weight)
        ctx.geometry = (stride, padding, g.dtype)
        return _blur_conv_t(g, weight, stride, padding, size)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (weight,) = ctx.saved_tensors
        stride, padding, dtype = ctx.geometry
        return _BlurDown.apply(grad, weight, stride, padding).to(dtype), None, None, None, None


def blur_down(x: Tensor, dims: tuple[int, ...]) -> Tensor:
    """The binomial blur at every second position along each of ``dims`` (zero padding 1), as sums of strided views.

    The same linear map as the depthwise convolution of _BlurDown (tested against it), written as
    elementwise work so that torch.compile fuses it with the leaky ReLU before it into one pass over
    the map, where cuDNN runs a separate, slow grouped convolution. Eager autograd of these views is
    slower than _BlurDown's (NOTES: separable strided adds), so only compiled passes use it.
    """
    taps = _BINOMIAL
    scale = 1.0 / sum(taps)
    for d in dims:
        n = x.shape[d]
        xp = F.pad(x, [0, 0] * (x.dim() - 1 - d) + [1, 1])
        # Tap k of output i reads input 2i + k - 1: every second element of xp from offset k.
        view = [xp[(slice(None),) * d + (slice(k, k + n - 1, 2),)] for k in range(len(taps))]
        x = (taps[0] * view[0] + taps[1] * view[1] + taps[2] * view[2] + taps[3] * view[3]) * scale
    return x


class _Downsample(nn.Module):
    """Anti-aliased 2× downsampling: the binomial blur evaluated at every second position (per channel)."""

    def __init__(self, dims: int, channels: int, halve_time: bool) -> None:
        super().__init__()
        kernel = blur_kernel(dims) if dims == 2 or halve_time else blur_kernel(2)[None]
        # One copy per channel for a grouped conv; contiguous, as an expanded view is far slower on CPU.
        self.register_buffer("weight", kernel.expand(channels, 1, *kernel.shape).contiguous(), persistent=False)
        self.stride = (2, 2) if dims == 2 else (2 if halve_time else 1, 2, 2)
        # Pad 1 on each side of a 4-tap filter: n even -> n/2 outputs, centred between sample pairs.
        self.padding = tuple(1 if s == 2 else 0 for s in self.stride)
        self.blurred = tuple(2 + i for i, s in enumerate(self.stride) if s == 2)  # the dims it halves

    def forward(self, x: Tensor) -> Tensor:
        if torch.compiler.is_compiling():
            return blur_down(x, self.blurred)
        return _BlurDown.apply(x, self.weight, self.stride, self.padding)


class _ResBlock(nn.Module):
    """conv3 -> lrelu -> blur-downsample -> conv3 -> lrelu, plus a downsampled 1×1 skip; sum / sqrt(2).

    StyleGAN2 blurs at full resolution and runs the second conv with stride 2; subsampling
    the blurred map first and convolving at half resolution costs the same FLOPs and lets
    both paths share one downsampling op.
    """

    def __init__(self, dims: int, cin: int, cout: int, frames: int) -> None:
        super().__init__()
        halve_time = dims == 3 and frames % 2 == 0
        self.frames_out = frames // 2 if halve_time else frames
        self.conv1 = _conv(dims, cin, cin, _kernel(dims, 3, frames))
        self.down = _Downsample(dims, cin, halve_time)
        self.conv2 = _conv(dims, cin, cout, _kernel(dims, 3, self.frames_out))
        self.skip = _conv(dims, cin, cout, _kernel(dims, 1, 1), bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = F.leaky_relu(self.conv1(x), _SLOPE)
        h = F.leaky_relu(self.conv2(self.down(h)), _SLOPE)
        return (h + self.skip(self.down(x))) / math.sqrt(2.0)


class Discriminator(nn.Module):
    """StyleGAN2-style residual discriminator: one logit per image, video or frame.

    ``resolution`` (a power of two ≥ 8) fixes the number of blocks, log2(resolution / 4);
    inputs may be any size whose sides are multiples of 2**blocks and at least ``resolution``
    (non-square included). Channels double per block from ``channels`` up to ``max_channels``.

    ``video`` selects the input and cost:

    * None: B×3×H×W images -> logits of shape (B,).
    * "frame": B×3×T×H×W video, frames folded into the batch -> (B·T,) logits, clip by clip
      (index b·T + t). Costs T image passes and cannot judge motion.
    * "3d": B×3×T×H×W video with Conv3d blocks (3×3×3 kernels) that also halve T while it is
      even (``frames`` is the nominal T; inputs need T a multiple of that halving and
      ≥ ``frames``) -> (B,) logits. It judges motion, at about the FLOPs of frame mode
      (measured 1.0-1.1× for 64-256 px, 4-16 frames): 3×3×3 kernels triple the cost per
      position, but every block works on half as many frames as the one before.

    ``frames`` is used by "3d" only. ``mbstd_group``: samples per minibatch-std group (batches
    it does not divide are fine).
    """

    def __init__(self, resolution: int, channels: int = 64, max_channels: int = 512, video: str | None = None,
                 frames: int = 1, mbstd_group: int = 4) -> None:
        super().__init__()
        if resolution < 2 * _FINAL_SIDE or resolution & (resolution - 1):
            raise ValueError(f"resolution must be a power of two ≥ {2 * _FINAL_SIDE} (e.g. 32, 64, 256), got {resolution}")
        if video not in _VIDEO_MODES:
            raise ValueError(f"video must be one of {_VIDEO_MODES}, got {video!r}")
        if frames < 1 or mbstd_group < 1 or channels < 1 or max_channels < 1:
            raise ValueError(f"frames, mbstd_group, channels and max_channels must be ≥ 1, got "
                             f"{frames}, {mbstd_group}, {channels}, {max_channels}")
        self.resolution, self.video, self.frames, self.mbstd_group = resolution, video, frames, mbstd_group
        self.channels_last = False  # True: CUDA inputs go NHWC (measured slower on an H100)
        dims = 3 if video == "3d" else 2
        num_blocks = int(math.log2(resolution // _FINAL_SIDE))
        width = [min(channels * 2**i, max_channels) for i in range(num_blocks + 1)]

        self.from_rgb = _conv(dims, 3, width[0], _kernel(dims, 1, 1))
        blocks, t = [], frames
        for cin, cout in zip(width[:-1], width[1:]):
            blocks.append(_ResBlock(dims, cin, cout, t))
            t = blocks[-1].frames_out
        self.blocks = nn.ModuleList(blocks)
        self.time_factor = frames // t  # how much the 3D blocks shrink T
        c = width[-1]
        self.conv = _conv(dims, c + 1, c, _kernel(dims, 3, t))
        # The first "linear" layer: a valid conv over the nominal final map (see the module docstring).
        final = (_FINAL_SIDE, _FINAL_SIDE) if dims == 2 else (t, _FINAL_SIDE, _FINAL_SIDE)
        self.fc = (nn.Conv2d if dims == 2 else nn.Conv3d)(c, c, final)
        self.out = _conv(dims, c, 1, _kernel(dims, 1, 1))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """He-normal weights for the layer's activation, zero biases (why: see the module docstring)."""
        linear = {self.out, *(block.skip for block in self.blocks)}  # the layers no leaky ReLU follows
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                if m in linear:
                    nn.init.kaiming_normal_(m.weight, nonlinearity="linear")
                else:
                    nn.init.kaiming_normal_(m.weight, a=_SLOPE, nonlinearity="leaky_relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def compiled(self, **options) -> Callable[[Tensor], Tensor]:
        """This discriminator's forward under torch.compile, sharing its weights, for passes without R1.

        Inductor fuses the leaky ReLUs, the blur (as blur_down), the residual sums and the
        minibatch std around cuDNN's convolutions: 2.3x faster than the module's own passes in the
        trainer's pattern on an H200 (benchmarks/NOTES.md). A compiled graph has no double backward,
        so R1's pass calls the module itself (R1 through torch.func.grad inside a compiled graph
        runs, but the measurements disagree: a real run's windows put its R1 step at about twice the
        eager one's cost, a probe of the passes alone at 0.82x; NOTES). The graph's saved
        tensors are not donated to its backward (functorch's donated_buffer): the trainer
        differentiates the pass over the reconstructions twice, to the decoder's output and to
        these weights (retain_graph).
        """
        options.setdefault("dynamic", False)
        fn = torch.compile(self, **options)

        def run(x: Tensor) -> Tensor:
            with torch._functorch.config.patch(donated_buffer=False):
                return fn(x)
        return run

    def _check(self, x: Tensor) -> None:
        """Raise ValueError unless x has the layout and a size this discriminator accepts."""
        want = "B×3×H×W images" if self.video is None else "B×3×T×H×W video"
        if x.dim() != (4 if self.video is None else 5) or x.shape[1] != 3:
            raise ValueError(f"Discriminator(video={self.video!r}) expects {want}, got shape {tuple(x.shape)}")
        step = self.resolution // _FINAL_SIDE
        h, w = x.shape[-2:]
        if any(s % step or s < self.resolution for s in (h, w)):
            raise ValueError(f"Discriminator(resolution={self.resolution}) needs sides that are multiples of "
                             f"{step} and at least {self.resolution} (e.g. {self.resolution}, "
                             f"{self.resolution + step}, {2 * self.resolution}), got {h}×{w}")
        if self.video == "3d":
            t = x.shape[2]
            if t % self.time_factor or t < self.frames:
                raise ValueError(f"Discriminator(video='3d', frames={self.frames}) needs T a multiple of "
                                 f"{self.time_factor} and at least {self.frames}, got T={t}")

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        if self.video == "frame":
            x = x.transpose(1, 2).flatten(0, 1)  # B×3×T×H×W -> (B·T)×3×H×W
        if self.channels_last and x.is_cuda:
            # Opt-in: NHWC measured 6 % slower than NCHW for stage 2 on an H100 (benchmarks/NOTES.md).
            x = x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
        h = F.leaky_relu(self.from_rgb(x), _SLOPE)
        for block in self.blocks:
            h = block(h)
        h = minibatch_std(h, self.mbstd_group)
        h = F.leaky_relu(self.conv(h), _SLOPE)
        h = F.leaky_relu(self.fc(h), _SLOPE)
        return self.out(h).flatten(1).mean(1)
