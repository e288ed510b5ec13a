"""Input checks for encode/decode: every bad input gets a ValueError naming the problem and the fix."""

from __future__ import annotations

import torch

from .variants import ViTokConfig, _nearest_multiples


def check_pixels(x: torch.Tensor, config: ViTokConfig) -> None:
    """Validate a pixel batch: B×3×H×W (images) or B×3×T×H×W (video), float in [-1, 1]."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"expected a torch.Tensor, got {type(x).__name__}; convert with torch.as_tensor(...)")
    want = "B×3×T×H×W" if config.is_video else "B×3×H×W"
    rank = 5 if config.is_video else 4
    if x.dim() != rank:
        hint = ""
        if x.dim() == rank - 1 and x.shape[0] == 3:
            hint = "; add the batch dimension with x.unsqueeze(0)"
        elif not config.is_video and x.dim() == 5:
            hint = "; this is an image model: pass frames as a batch (x.flatten(0, 1) after moving T next to B) " \
                   "or build a video model"
        elif config.is_video and x.dim() == 4:
            hint = f"; this is a video model (frames={config.frames}, q={config.temporal_patch}): add the time " \
                   f"axis with x.unsqueeze(2) only if T=1 is divisible by q, otherwise pass clips"
        raise ValueError(f"expected a {rank}-D tensor {want}, got shape {tuple(x.shape)}{hint}")
    if x.shape[0] == 0:
        raise ValueError(f"empty batch: got shape {tuple(x.shape)}; pass at least one sample")
    channels = x.shape[1]
    if channels != 3:
        if rank == 5 and x.shape[2] == 3:
            fix = "time and channels look swapped (B×T×3×H×W): use x.transpose(1, 2)"
        elif channels == 1:
            fix = "grayscale input: repeat it to RGB with x.expand(-1, 3, *x.shape[2:])"
        elif channels == 4:
            fix = "RGBA input: drop alpha with x[:, :3] or composite it onto a background first"
        elif x.shape[-1] in (1, 3, 4):
            order = "(0, 3, 1, 2)" if rank == 4 else "(0, 4, 1, 2, 3)"
            fix = f"channels look last: permute with x.permute{order}"
        else:
            fix = "pass RGB images with the channel axis second"
        raise ValueError(f"expected 3 channels in axis 1 of {want}, got shape {tuple(x.shape)}; {fix}")
    if not x.is_floating_point():
        raise ValueError(f"expected a floating-point tensor in [-1, 1], got dtype {x.dtype}; "
                         f"convert 8-bit images with x.float() / 127.5 - 1")
    p, q = config.patch_size, config.temporal_patch
    H, W = x.shape[-2:]
    bad = [(name, n, p) for name, n in (("height", H), ("width", W)) if n % p or n == 0]
    if config.is_video and (x.shape[2] % q or x.shape[2] == 0):
        bad.append(("frames", x.shape[2], q))
    if bad:
        parts = [f"{name} {n} is not a positive multiple of {k} (use {_nearest_multiples(n, k)})"
                 for name, n, k in bad]
        raise ValueError(f"input shape {tuple(x.shape)} does not fit patch {q}x{p}x{p}: " + "; ".join(parts)
                         + "; crop or resize to those sizes")
    if x.device.type != "meta":
        finite = torch.isfinite(x)
        if not bool(finite.all()):
            raise ValueError(f"input holds {int((~finite).sum())} NaN or infinite values; clean the data first")
        lo, hi = float(x.min()), float(x.max())
        if hi > 2.0 and lo >= -0.5:
            raise ValueError(f"input values span [{lo:.3g}, {hi:.3g}]: this looks like [0, 255] pixels; "
                             f"map them to [-1, 1] with x / 127.5 - 1")
        if lo < -1.5 or hi > 1.5:
            raise ValueError(f"input values span [{lo:.3g}, {hi:.3g}], expected [-1, 1]; "
                             f"clamp or rescale, e.g. x.clamp(-1, 1)")


def check_latents(z: torch.Tensor, config: ViTokConfig) -> None:
    """Validate a latent batch B×L×c."""
    if not isinstance(z, torch.Tensor):
        raise ValueError(f"expected a torch.Tensor of latents, got {type(z).__name__}")
    if z.dim() != 3:
        hint = "; add the batch dimension with z.unsqueeze(0)" if z.dim() == 2 else ""
        raise ValueError(f"expected latents B×L×c, got shape {tuple(z.shape)}{hint}")
    if z.shape[0] == 0:
        raise ValueError(f"empty batch: got latents of shape {tuple(z.shape)}")
    if z.shape[2] != config.channels:
        raise ValueError(f"latents have {z.shape[2]} channels but this model's bottleneck has "
                         f"c={config.channels}; decode with the tokenizer that encoded them")
    if not z.is_floating_point():
        raise ValueError(f"expected floating-point latents, got dtype {z.dtype}")
    if z.device.type != "meta" and not bool(torch.isfinite(z).all()):
        raise ValueError("latents hold NaN or infinite values")


def grid_for(num_tokens: int, size: tuple[int, ...] | None, config: ViTokConfig) -> tuple[int, ...]:
    """Token grid for decoding L tokens: from an explicit pixel size, the nominal size, or a square."""
    p, q = config.patch_size, config.temporal_patch
    if size is not None:
        size = tuple(int(s) for s in size)
        if len(size) != len(config.grid):
            want = "(T, H, W)" if config.is_video else "(H, W)"
            raise ValueError(f"size must be {want} in pixels, got {size}")
        steps = (q, p, p) if config.is_video else (p, p)
        if any(s % k or s == 0 for s, k in zip(size, steps)):
            raise ValueError(f"size {size} is not a multiple of the tubelet {steps}")
        grid = tuple(s // k for s, k in zip(size, steps))
    elif num_tokens == config.num_tokens:
        grid = config.grid
    elif not config.is_video and round(num_tokens ** 0.5) ** 2 == num_tokens:
        side = round(num_tokens ** 0.5)
        grid = (side, side)
    else:
        want = "(T, H, W)" if config.is_video else "(H, W)"
        raise ValueError(f"cannot infer the token grid of {num_tokens} tokens (nominal grid {config.grid}); "
                         f"pass size={want} in pixels to decode")
    n = 1
    for g in grid:
        n *= g
    if n != num_tokens:
        raise ValueError(f"latents have {num_tokens} tokens but size {size} gives a {grid} grid of {n} tokens")
    return grid
