"""Model accounting: parameters, token grid, bottleneck size and exact FLOPs of encode and decode."""

from __future__ import annotations

import math

import torch
from torch.utils.flop_counter import FlopCounterMode

from .model import ViTok, ViTokConfig


# Nominal tokens per sample that `vitok info` describes: 2^20, e.g. 8192x8192 at p=8. Far beyond any
# model that runs (a forward refuses more than 65,536 tokens), and L×L attention shapes past it
# overflow torch's size arithmetic (a raw "Storage size calculation overflowed").
MAX_TOKENS = 1 << 20


def check_size(config: ViTokConfig) -> None:
    """Refuse a config whose token grid is above MAX_TOKENS, naming the size and a size that fits."""
    if config.num_tokens <= MAX_TOKENS:
        return
    frames = config.grid[0] if config.is_video else 1
    side = config.patch_size * math.isqrt(max(1, MAX_TOKENS // frames))
    raise ValueError(f"{config.name or 'this model'} at image size {config.image_size} has {config.num_tokens:,} "
                     f"tokens per sample, above the {MAX_TOKENS:,} (2^20) that info describes; pass a smaller "
                     f"--image-size (at most {side} for patch {config.patch_size}"
                     f"{f' and {config.frames} frames' if config.is_video else ''})")


def released_config(name: str, image_size: int | None = None, channels: int | None = None,
                    frames: int | None = None) -> ViTokConfig:
    """The architecture of a released v2 checkpoint ("vitok-v2/350M-f16x64"), from vitok_v2.RELEASED alone.

    Nothing is downloaded: the table holds every size. Channels and frames are fixed by the
    weights, so an option asking for others is refused rather than silently ignored.
    """
    from .model.vitok_v2 import PREFIX, RELEASED, released_name

    release = RELEASED[released_name(name)]
    if channels is not None and channels != release.channels:
        others = [PREFIX + n for n, r in RELEASED.items() if r.channels == channels]
        hint = f" or describe a release with {channels}: {', '.join(others)}" if others else ""
        raise ValueError(f"{name} has c={release.channels} latent channels, fixed by its weights; drop --channels "
                         f"{channels}{hint}")
    if frames is not None and frames != 1:
        raise ValueError(f"{name} is an image tokenizer; drop --frames {frames}")
    config = release.config(256 if image_size is None else image_size)
    config.name = PREFIX + released_name(name)
    return config


def count_flops(model: ViTok) -> tuple[int, int]:
    """FLOPs (2 per multiply-add) of encode and of decode for one sample at the nominal size.

    The model must live on the meta device: shapes propagate without arithmetic, and SDPA
    decomposes into counted matmuls there (the fused CPU kernel would be skipped by the counter).
    Only matmuls and convolutions are counted, the convention of FLOP tables in papers.
    """
    c = model.config
    shape = (1, 3, c.frames, c.image_size, c.image_size) if c.is_video else (1, 3, c.image_size, c.image_size)
    x = torch.empty(shape, device="meta")
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            posterior = model.encode(x)
        encode = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            model.decode(posterior.mean)
        decode = counter.get_total_flops()
    return encode, decode


def describe(config: ViTokConfig) -> dict:
    """Everything `vitok info` prints, as a plain dict.

    Nothing is allocated (the model and inputs live on the meta device), but tracing attention over
    L tokens still builds L×L shapes: configs above MAX_TOKENS tokens are refused.
    """
    check_size(config)
    with torch.device("meta"):
        model = ViTok(config)
    params = model.num_params()
    encode_flops, decode_flops = count_flops(model)
    L, c = config.num_tokens, config.channels
    values = 3 * config.frames * config.image_size ** 2
    return {
        "name": config.name or "custom",
        "input": (f"3x{config.frames}x{config.image_size}x{config.image_size}" if config.is_video
                  else f"3x{config.image_size}x{config.image_size}"),
        "grid": list(config.grid),
        "params_encoder": params["encoder"],
        "params_decoder": params["decoder"],
        "params_total": params["total"],
        "tokens": L,
        "channels": c,
        "bottleneck": L * c,
        "compression": values / (L * c),
        "pixels_per_float": values / 3 / (L * c),
        "gflops_encode": encode_flops / 1e9,
        "gflops_decode": decode_flops / 1e9,
        "gflops_total": (encode_flops + decode_flops) / 1e9,
    }


def format_description(d: dict) -> str:
    """Human-readable block for one model."""
    lines = [
        f"{d['name']}  input {d['input']}  token grid {'x'.join(map(str, d['grid']))}",
        f"  parameters   encoder {d['params_encoder'] / 1e6:.1f}M  decoder {d['params_decoder'] / 1e6:.1f}M  "
        f"total {d['params_total'] / 1e6:.1f}M",
        f"  bottleneck   L={d['tokens']} tokens x c={d['channels']} channels = E={d['bottleneck']} floats",
        f"  compression  {d['compression']:.1f}x (input values per latent float; "
        f"{d['pixels_per_float']:.2f} pixels per float)",
        f"  GFLOPs/sample  encode {d['gflops_encode']:.1f}  decode {d['gflops_decode']:.1f}  "
        f"total {d['gflops_total']:.1f}  (2 FLOPs per multiply-add; papers' GFLOPs = GMACs = "
        f"{d['gflops_total'] / 2:.1f})",
    ]
    return "\n".join(lines)
