"""Input checks for encode/decode: every bad input gets a ValueError naming the problem and the fix."""

from __future__ import annotations

import math
import operator

import torch

from .variants import ViTokConfig, _nearest_multiples

# Tokens per sample above which encode, decode and forward refuse to start when check=True.
# Attention costs grow with the square of the token count: on a CPU 16,384 tokens (2048x2048 at
# p=16) already take minutes through a base-size model; a GPU handles 65,536 (4096x4096 at p=16)
# in seconds. check=False skips this (and every other) check.
MAX_TOKENS_CPU = 16_384
MAX_TOKENS = 65_536


def check_pixels(x: torch.Tensor, config: ViTokConfig, count_tokens: bool = True) -> None:
    """Validate a pixel batch: B×3×H×W (images) or B×3×T×H×W (video), float in [-1, 1].

    count_tokens=False leaves out the token count (a tiled encode attends over one tile at a time)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"expected a torch.Tensor, got {type(x).__name__}; convert with torch.as_tensor(...)")
    want = "B×3×T×H×W" if config.is_video else "B×3×H×W"
    rank = 5 if config.is_video else 4
    if x.dim() != rank:
        raise ValueError(f"expected a {rank}-D tensor {want}, got shape {tuple(x.shape)}{_rank_hint(x, config)}")
    if x.shape[0] == 0:
        raise ValueError(f"empty batch: got shape {tuple(x.shape)}; pass at least one sample")
    if x.shape[1] != 3:
        raise ValueError(f"expected 3 channels in axis 1 of {want}, got shape {tuple(x.shape)}; "
                         f"{_channel_fix(x, config)}")
    if not x.is_floating_point():
        raise ValueError(f"expected a floating-point tensor in [-1, 1], got dtype {x.dtype}; "
                         f"convert 8-bit images with x.float() / 127.5 - 1")
    p, q = config.patch_size, config.temporal_patch
    H, W = x.shape[-2:]
    # A v2 model pads height and width to whole patches itself, as the authors' preprocessing does.
    bad = [(name, n, p) for name, n in (("height", H), ("width", W)) if n == 0 or (n % p and not config.is_v2)]
    if config.is_video and (x.shape[2] % q or x.shape[2] == 0):
        bad.append(("frames", x.shape[2], q))
    if bad:
        parts = [f"{name} {n} is not a positive multiple of {k} (use {_nearest_multiples(n, k)})"
                 for name, n, k in bad]
        # B×3×H×W×3 style mistakes pass the channel check; a last axis of 3 gives them away.
        last = "; the last axis is 3: if channels are last, permute them to axis 1" if W == 3 else ""
        raise ValueError(f"input shape {tuple(x.shape)} does not fit patch {q}x{p}x{p}: " + "; ".join(parts)
                         + f"; crop or resize to those sizes{last}")
    grid = (x.shape[2] // q, -(-H // p), -(-W // p)) if config.is_video else (-(-H // p), -(-W // p))
    if count_tokens:
        check_token_count(grid, x.device, f"input of shape {tuple(x.shape)}", config)
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
    _check_some_tokens(z.shape[1], tuple(z.shape))
    if z.shape[2] != config.channels:
        raise ValueError(f"latents have {z.shape[2]} channels but this model's bottleneck has "
                         f"c={config.channels}; decode with the tokenizer that encoded them")
    if not z.is_floating_point():
        raise ValueError(f"expected floating-point latents, got dtype {z.dtype}")
    if z.device.type != "meta" and not bool(torch.isfinite(z).all()):
        raise ValueError("latents hold NaN or infinite values")


def grid_for(num_tokens: int, size: tuple[int, ...] | None, config: ViTokConfig) -> tuple[int, ...]:
    """Token grid for decoding L tokens: from an explicit pixel size, the nominal size, or a square.

    Plain arithmetic on shapes (no device work), so decode runs it even with check=False.
    """
    _check_some_tokens(num_tokens, None)
    if size is not None:
        grid = _grid_of_size(size, config)
    elif num_tokens == config.num_tokens:
        grid = config.grid
    elif not config.is_video and round(num_tokens ** 0.5) ** 2 == num_tokens:
        side = round(num_tokens ** 0.5)
        grid = (side, side)
    else:
        want = "(T, H, W)" if config.is_video else "(H, W)"
        raise ValueError(f"cannot infer the token grid of {num_tokens} tokens (nominal grid {config.grid}); "
                         f"pass size={want} in pixels to decode")
    n = math.prod(grid)
    if n != num_tokens:
        raise ValueError(f"latents have {num_tokens} tokens but size {tuple(size)} gives a {grid} grid of {n} "
                         f"tokens; pass the size the latents were encoded at")
    return grid


def _grid_of_size(size, config: ViTokConfig) -> tuple[int, ...]:
    """(H, W) or (T, H, W) in pixels -> token grid; every entry a positive multiple of its tubelet side."""
    p, q = config.patch_size, config.temporal_patch
    want = "(T, H, W)" if config.is_video else "(H, W)"
    if not isinstance(size, (tuple, list, torch.Size)) or len(size) != len(config.grid):
        raise ValueError(f"size must be {want} in pixels, got {size!r}")
    try:  # ints, numpy or 0-d tensor integers; 32.5 must not become 32
        if any(isinstance(s, bool) for s in size):
            raise TypeError
        size = tuple(operator.index(s) for s in size)
    except TypeError:
        raise ValueError(f"size must hold whole numbers of pixels {want}, got {tuple(size)!r}") from None
    steps = (q, p, p) if config.is_video else (p, p)
    names = ("frames", "height", "width")[-len(steps):]
    # A v2 model's height and width may end inside a patch: the grid covers them, decode crops.
    padded = (False, True, True)[-len(steps):] if config.is_v2 else (False,) * len(steps)
    bad = [f"{name} {s} is not positive" if s <= 0 else f"{name} {s} is not a multiple of {k} "
           f"(use {_nearest_multiples(s, k)})" for name, s, k, pad in zip(names, size, steps, padded)
           if s <= 0 or (s % k and not pad)]
    if bad:
        raise ValueError(f"size {size} must hold positive multiples of the tubelet {steps}: {'; '.join(bad)}")
    return tuple(-(-s // k) for s, k in zip(size, steps))


def _check_some_tokens(num_tokens: int, shape: tuple[int, ...] | None) -> None:
    if num_tokens == 0:
        shape_text = f" (shape {shape})" if shape is not None else ""
        raise ValueError(f"latents hold no tokens (L=0){shape_text}; decode latents B×L×c with L >= 1, "
                         f"as encode returns them")


def token_limit(device: torch.device) -> int | None:
    """Tokens per sample above which a checked encode/decode refuses to start; None on the meta device."""
    if device.type == "meta":  # shapes only (e.g. FLOP counting): nothing runs
        return None
    return MAX_TOKENS_CPU if device.type == "cpu" else MAX_TOKENS


def check_token_count(grid: tuple[int, ...], device: torch.device, what: str, config: ViTokConfig) -> None:
    """Refuse a sample whose token grid holds more than token_limit(device) tokens, before any work starts."""
    limit, num_tokens = token_limit(device), math.prod(grid)
    if limit is None or num_tokens <= limit:
        return
    steps = len(grid) - 2 and grid[0]  # temporal token steps of a video grid (t, h, w); 0 for images
    if steps > limit:
        smaller = f"fewer than {limit * config.temporal_patch} frames"
    else:  # the largest square per frame that fits: a concrete size to resize to
        side = config.patch_size * math.isqrt(limit // max(1, steps))
        smaller = f"at most {side}x{side} pixels" + (" per frame" if steps else "")
    raise ValueError(f"{what} makes {num_tokens:,} tokens per sample, above the limit of {limit:,} for a checked "
                     f"run on {device.type}: attention cost grows with the square of the token count, so this would "
                     f"run for minutes or run out of memory. Use a smaller size ({smaller}), or pass check=False "
                     f"to run it anyway")


def _rank_hint(x: torch.Tensor, config: ViTokConfig) -> str:
    """The likely mistake behind a tensor of the wrong rank, and its fix."""
    rank = 5 if config.is_video else 4
    if x.dim() == rank - 1 and x.shape[0] == 3:
        return "; add the batch dimension with x.unsqueeze(0)"
    if x.dim() == rank - 1 and x.shape[-1] == 3:
        if config.is_video:
            return "; this looks like one clip T×H×W×3 with channels last: use x.permute(3, 0, 1, 2).unsqueeze(0)"
        return "; this looks like one image H×W×3 with channels last: use x.permute(2, 0, 1).unsqueeze(0)"
    if not config.is_video and x.dim() == 5:
        if x.shape[2] == 3:
            frames = "pass frames as a batch with x.flatten(0, 1) (B×T×3×H×W -> (B·T)×3×H×W)"
        elif x.shape[-1] == 3:
            frames = ("pass frames as a batch with x.flatten(0, 1).permute(0, 3, 1, 2) "
                      "(B×T×H×W×3 -> (B·T)×3×H×W)")
        else:
            frames = "pass frames as a batch with x.transpose(1, 2).flatten(0, 1) (B×3×T×H×W -> (B·T)×3×H×W)"
        return f"; this is an image model: {frames}, or build a video model"
    if config.is_video and x.dim() == 4:
        return (f"; this is a video model (frames={config.frames}, q={config.temporal_patch}): pass clips "
                f"B×3×T×H×W with T a multiple of {config.temporal_patch}")
    return ""


def _channel_fix(x: torch.Tensor, config: ViTokConfig) -> str:
    """What to do about a tensor of the right rank whose axis 1 is not 3 channels."""
    video = config.is_video
    first, last = x.shape[1], x.shape[-1]
    if video and x.shape[2] == 3:
        return "time and channels look swapped (B×T×3×H×W): use x.transpose(1, 2)"
    # Channels last is checked before the channel count of axis 1: in B×T×H×W×3 axis 1 is time,
    # and T=4 must not read as RGBA. A last axis of 1 or 4 is channels when axis 1 cannot be, or
    # when it is narrower than a patch (no image that width fits the model anyway).
    if last == 3 or (last in (1, 4) and (first not in (1, 4) or last < config.patch_size)):
        layout = "B×T×H×W×C" if video else "B×H×W×C"
        order = "(0, 4, 1, 2, 3)" if video else "(0, 3, 1, 2)"
        after = {1: ", then repeat gray to RGB", 4: ", then drop alpha with x[:, :3]"}.get(last, "")
        return (f"channels look last: permute {layout} (C={last}) to {'B×3×T×H×W' if video else 'B×3×H×W'} "
                f"with x.permute{order}{after}")
    if first == 1:
        return "grayscale input: repeat it to RGB with x.expand(-1, 3, *x.shape[2:])"
    if first == 4:
        return "RGBA input: drop alpha with x[:, :3] or composite it onto a background first"
    return "pass RGB images with the channel axis second"
