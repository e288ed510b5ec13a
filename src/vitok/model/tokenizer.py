"""ViTok: tubelet embed -> ViT encoder -> Gaussian bottleneck -> ViT decoder -> tubelet unembed.

Shapes: x is B×3×H×W (image model) or B×3×T×H×W (video model) in [-1, 1]; the token grid is
(h, w) = (H/p, W/p) or (t, h, w) = (T/q, H/p, W/p); L = prod(grid); latents z are B×L×c.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import RopeCache, Transformer
from .checks import check_latents, check_pixels, grid_for
from .distributions import DiagonalGaussian
from .pretrained import read_checkpoint, write_checkpoint
from .variants import ViTokConfig, config_from_name


class ViTok(nn.Module):
    """The ViTok visual tokenizer (Hansen-Estruch et al., 2025) for images or video."""

    def __init__(self, config: ViTokConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        tubelet = (c.temporal_patch, c.patch_size, c.patch_size)
        self.embed = nn.Conv3d(3, c.encoder_width, kernel_size=tubelet, stride=tubelet)
        self.encoder = Transformer(c.encoder_width, c.encoder_depth, c.encoder_heads, c.qk_norm, c.norm_eps)
        self.to_moments = nn.Linear(c.encoder_width, 2 * c.channels)
        self.from_latent = nn.Linear(c.channels, c.decoder_width)
        self.decoder = Transformer(c.decoder_width, c.decoder_depth, c.decoder_heads, c.qk_norm, c.norm_eps)
        self.unembed = nn.ConvTranspose3d(c.decoder_width, 3, kernel_size=tubelet, stride=tubelet)
        # Autocast dtype for the Transformer work (e.g. torch.bfloat16); None runs in the weights' dtype.
        self.amp_dtype: torch.dtype | None = None
        # The residual stream's dtype under autocast. float32 (default) keeps the sum of 2·depth
        # branch outputs exact to bf16 rounding of each branch; bfloat16 halves its memory traffic.
        self.residual_dtype: torch.dtype = torch.float32
        self._rope = RopeCache(c.rope_theta)
        self.reset_parameters()

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def from_name(cls, name: str, **overrides) -> "ViTok":
        """Build a named variant, e.g. ViTok.from_name("S-B/16", channels=16, image_size=256)."""
        return cls(config_from_name(name, **overrides))

    @classmethod
    def from_pretrained(cls, path: str | Path, device: torch.device | str = "cpu") -> "ViTok":
        """Load a folder written by save_pretrained (config.json + model.safetensors)."""
        config_dict, state = read_checkpoint(path)
        try:
            config = ViTokConfig.from_dict(config_dict)
        except (TypeError, ValueError) as err:
            raise ValueError(f"checkpoint folder {path} has an invalid config.json: {err}") from None
        with torch.device("meta"):
            model = cls(config)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in state.items()}
        if expected != found:
            missing = sorted(set(expected) - set(found))[:5]
            extra = sorted(set(found) - set(expected))[:5]
            shapes = [f"{k}: config says {expected[k]}, weights have {found[k]}"
                      for k in sorted(set(expected) & set(found)) if expected[k] != found[k]][:5]
            raise ValueError(f"checkpoint folder {path}: the weights were written by a different architecture "
                             f"than its config.json describes (missing {missing}, unexpected {extra}, "
                             f"mismatched {shapes}); re-save the model with save_pretrained")
        model = model.to_empty(device=device)
        model.load_state_dict(state)
        model._rope.clear()
        return model.eval()

    def save_pretrained(self, path: str | Path) -> None:
        """Write config.json and model.safetensors into a folder (created if needed), atomically."""
        write_checkpoint(path, self.config.to_dict(), self.state_dict())

    def reset_parameters(self) -> None:
        """ViT-style init: truncated-normal linears, Xavier tubelet convolutions, zero biases."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
                nn.init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1))
                nn.init.zeros_(module.bias)

    def compile_blocks(self, **options) -> "ViTok":
        """torch.compile every Transformer block in place (weights' names unchanged); returns self.

        One compiled graph serves all blocks of a width, so compiling costs seconds, not minutes;
        options go to torch.compile (e.g. mode="max-autotune").
        """
        for block in [*self.encoder.blocks, *self.decoder.blocks]:
            block.compile(**options)
        return self

    def compile_stacks(self, **options) -> "ViTok":
        """torch.compile the encoder and decoder Transformers as one graph each; returns self.

        Fuses across block boundaries (a block's last residual add with the next block's norm):
        1-2 % faster encode + decode than compile_blocks on an H100, no faster for training, at
        about 30 s of compiling instead of a few (benchmarks/NOTES.md).
        """
        self.encoder.compile(**options)
        self.decoder.compile(**options)
        return self

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute block activations in the backward pass: less memory, about a third more compute."""
        self.encoder.grad_checkpointing = enabled
        self.decoder.grad_checkpointing = enabled

    # ---- the model ----------------------------------------------------------------------------

    def encode(self, x: torch.Tensor, check: bool = True) -> DiagonalGaussian:
        """Pixels (B×3×H×W or B×3×T×H×W, [-1, 1]) -> posterior over B×L×c latents."""
        if check:
            check_pixels(x, self.config)
        moments, _ = self._encode(x)
        mean, logvar = moments.float().chunk(2, dim=-1)
        return DiagonalGaussian(mean, logvar.clamp(self.config.logvar_min, self.config.logvar_max))

    def decode(self, z: torch.Tensor, size: tuple[int, ...] | None = None, check: bool = True) -> torch.Tensor:
        """Latents B×L×c -> pixels. size=(H, W) or (T, H, W) when the grid is not the nominal or a square one."""
        if check:
            check_latents(z, self.config)
        return self._decode(z, grid_for(z.shape[1], size, self.config))

    def forward(self, x: torch.Tensor, sample: bool = True, check: bool = True,
                noise: torch.Tensor | None = None) -> tuple[torch.Tensor, DiagonalGaussian]:
        """Reconstruct x through a sampled (or, with sample=False, the mean) latent; returns (x_hat, posterior).

        `noise` (B×L×c standard normal) replaces the internal draw: training passes noise cut from
        a per-step global draw, so the result does not depend on how the batch is split over ranks.
        """
        if check:
            check_pixels(x, self.config)
        moments, grid = self._encode(x)
        mean, logvar = moments.float().chunk(2, dim=-1)
        posterior = DiagonalGaussian(mean, logvar.clamp(self.config.logvar_min, self.config.logvar_max))
        if noise is not None:
            if noise.shape != mean.shape:
                raise ValueError(f"noise has shape {tuple(noise.shape)}; the latents are {tuple(mean.shape)}")
            z = mean + posterior.std * noise
        else:
            z = posterior.sample() if sample else posterior.mode()
        return self._decode(z, grid), posterior

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        with self._autocast(x.device):
            if self.amp_dtype is None:  # e.g. float32 pixels into a model cast to bf16
                x = x.to(self.embed.weight.dtype)
            patches, grid = self._patchify(x if x.dim() == 5 else x.unsqueeze(2))
            # The tubelet "convolution" as one matmul over flattened tubelets: the same weights
            # and result, but a GEMM instead of a strided 3-D convolution (slow in cuDNN at bf16).
            weight = self.embed.weight.flatten(1)  # D×(3·q·p·p), in the (c, t, y, x) order of a tubelet
            tokens = F.linear(patches, weight, self.embed.bias).to(self._stream_dtype())  # B×L×D
            tokens = self.encoder(tokens, self._rope(grid, self.encoder.head_dim, x.device))
            return self.to_moments(tokens), grid  # B×L×2c

    def _decode(self, z: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
        with self._autocast(z.device):
            tokens = self.from_latent(z.to(self.from_latent.weight.dtype)).to(self._stream_dtype())  # B×L×D
            tokens = self.decoder(tokens, self._rope(grid, self.decoder.head_dim, z.device))
            # The transposed tubelet convolution as one matmul to per-token tubelets, then unpatchify.
            weight = self.unembed.weight.flatten(1).t()  # (3·q·p·p)×D
            bias = self.unembed.bias.repeat_interleave(weight.shape[0] // self.unembed.bias.shape[0])
            pixels = self._unpatchify(F.linear(tokens, weight, bias), grid)  # B×3×T×H×W
        pixels = pixels.float()
        return pixels if self.config.is_video else pixels.squeeze(2)

    def _patchify(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """B×3×T×H×W -> (B×L×(3·q·p·p) tubelets in row-major grid order, grid (t, h, w) or (h, w))."""
        B, C, T, H, W = x.shape
        q, p = self.config.temporal_patch, self.config.patch_size
        t, h, w = T // q, H // p, W // p
        x = x.reshape(B, C, t, q, h, p, w, p).permute(0, 2, 4, 6, 1, 3, 5, 7)
        grid = (t, h, w) if self.config.is_video else (h, w)
        return x.reshape(B, t * h * w, C * q * p * p), grid

    def _unpatchify(self, patches: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
        """B×L×(3·q·p·p) -> B×3×T×H×W, the inverse of _patchify."""
        q, p = self.config.temporal_patch, self.config.patch_size
        t, h, w = grid if len(grid) == 3 else (1, *grid)
        B = patches.shape[0]
        x = patches.reshape(B, t, h, w, -1, q, p, p).permute(0, 4, 1, 5, 2, 6, 3, 7)
        return x.reshape(B, x.shape[1], t * q, h * p, w * p)

    def _stream_dtype(self) -> torch.dtype:
        """The residual stream's dtype: `residual_dtype` under autocast, else the weights' dtype."""
        if self.amp_dtype is None:
            return self.from_latent.weight.dtype
        return self.residual_dtype

    def _autocast(self, device: torch.device):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.amp_dtype)

    # ---- bookkeeping --------------------------------------------------------------------------

    def num_params(self) -> dict[str, int]:
        """Parameter counts: encoder side (embed, encoder, to_moments), decoder side, total."""
        enc = sum(p.numel() for m in (self.embed, self.encoder, self.to_moments) for p in m.parameters())
        dec = sum(p.numel() for m in (self.from_latent, self.decoder, self.unembed) for p in m.parameters())
        return {"encoder": enc, "decoder": dec, "total": enc + dec}
