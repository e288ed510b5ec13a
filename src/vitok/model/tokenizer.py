"""ViTok: tubelet embed -> ViT encoder -> bottleneck -> ViT decoder -> tubelet unembed.

Shapes: x is B×3×H×W (image model) or B×3×T×H×W (video model) in [-1, 1]; the token grid is
(h, w) = (H/p, W/p) or (t, h, w) = (T/q, H/p, W/p); L = prod(grid); latents z are B×L×c.

Two architectures share this class (config.architecture): the paper's "vitok" (sequential blocks,
a Gaussian bottleneck) and the authors' "vitok-v2" release (parallel blocks with LayerScale, no
final norms, a deterministic LayerNorm bottleneck, a bias per output pixel, and inputs of any size:
pixels are padded to whole patches at the bottom and right, and decode crops them off again).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import Block, RopeCache, Transformer
from .checks import check_latents, check_pixels, check_token_count, grid_for
from .distributions import DeterministicLatent, DiagonalGaussian
from .kernels import triton_problem
from .latent_stats import LatentStats
from .tiling import TileSpec, Tiling, auto_tiling, decode_tiled, encode_tiled
from .pretrained import (hub_folder, inspect_checkpoint, load_weights, looks_like_repo_id, read_latent_stats,
                         write_checkpoint)
from .variants import ViTokConfig, config_from_name


class ViTok(nn.Module):
    """The ViTok visual tokenizer (Hansen-Estruch et al., 2025) for images or video."""

    def __init__(self, config: ViTokConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        tubelet = (c.temporal_patch, c.patch_size, c.patch_size)
        self.embed = nn.Conv3d(3, c.encoder_width, kernel_size=tubelet, stride=tubelet)
        stack = dict(qk_norm=c.qk_norm, eps=c.norm_eps, parallel=c.is_v2, final_norm=not c.is_v2)
        self.encoder = Transformer(c.encoder_width, c.encoder_depth, c.encoder_heads,
                                   hidden=c.mlp_hidden(c.encoder_width), **stack)
        if c.is_v2:  # z = LayerNorm(to_latent(h)), no affine: every token's c values have mean 0, variance 1
            self.to_latent = nn.Linear(c.encoder_width, c.channels)
        else:  # (mean, logvar) of the Gaussian posterior
            self.to_moments = nn.Linear(c.encoder_width, 2 * c.channels)
        self.from_latent = nn.Linear(c.channels, c.decoder_width)
        self.decoder = Transformer(c.decoder_width, c.decoder_depth, c.decoder_heads,
                                   hidden=c.mlp_hidden(c.decoder_width), **stack)
        if c.is_v2:  # a bias per output value of the tubelet, not per colour channel
            self.unembed = nn.Linear(c.decoder_width, c.tubelet_pixels)
        else:
            self.unembed = nn.ConvTranspose3d(c.decoder_width, 3, kernel_size=tubelet, stride=tubelet)
        # Autocast dtype for the Transformer work (e.g. torch.bfloat16); None runs in the weights' dtype.
        self.amp_dtype: torch.dtype | None = None
        # The residual stream's dtype under autocast. float32 (default) keeps the sum of 2·depth
        # branch outputs exact to bf16 rounding of each branch; bfloat16 halves its memory traffic.
        self.residual_dtype: torch.dtype = torch.float32
        self._rope = RopeCache(c.rope_theta)
        # Statistics of the latents over a data set (`vitok stats`), saved in config.json; None until computed.
        self.latent_stats: LatentStats | None = None
        # Tokens per frame above which encode/decode tile automatically (tiling="auto"; model/tiling.py):
        # 16x the nominal grid, e.g. 1024x1024 pixels for a 256-pixel model with p = 16.
        self.tile_budget: int = 16 * math.prod(c.grid[-2:])
        self.reset_parameters()

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def from_name(cls, name: str, **overrides) -> "ViTok":
        """Build a named variant, e.g. ViTok.from_name("S-B/16", channels=16, image_size=256)."""
        return cls(config_from_name(name, **overrides))

    @classmethod
    def from_pretrained(cls, path: str | Path, device: torch.device | str = "cpu", *,
                        revision: str | None = None, dtype: torch.dtype | None = None) -> "ViTok":
        """Load a folder written by save_pretrained (config.json + model.safetensors), a Hugging Face Hub
        repo id ("owner/name", e.g. pushed with push_to_hub), or a release by name.

        A repo id that is not an existing folder is fetched with huggingface_hub into its cache
        (`revision`: branch, tag or commit; HF_HUB_OFFLINE=1 uses only the cache).

        A released v2 checkpoint ("vitok-v2/350M-f16x64"; model/vitok_v2.py's RELEASED) is downloaded
        from the Hugging Face Hub (the huggingface_hub package; `revision` picks a branch, tag or
        commit, default main) and converted once into a cached folder, which is then loaded like any
        other folder; an existing folder of that name wins over the release.

        dtype (e.g. torch.bfloat16): the weights' dtype on `device` (default float32, whatever the file
        stores).

        Everything that can disagree is checked, in order of cost, before a module is built:
        config.json (format, types and ranges, size limits), the weights' header (names, shapes,
        floating-point dtypes) against the config, then the tensor data (finite values).
        """
        device = _parse_device(device)
        path = cls.resolve_folder(path, revision)
        config = cls.read_config(path)
        stats = read_latent_stats(path)
        stats = LatentStats.from_dict(stats, f"{Path(path) / 'config.json'}: latent_stats") if stats else None
        if stats is not None and stats.channels != config.channels:
            raise ValueError(f"{path}: config.json's latent_stats have {stats.channels} channels, the model "
                             f"{config.channels}; recompute them with `vitok stats {path} --data DIR`")
        state = load_weights(path)
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"dtype must be a floating-point torch.dtype such as torch.bfloat16, got {dtype!r}")
        with torch.device("meta"):  # sizes now match the file on disk, so building is bounded by it
            model = cls(config)
        if dtype is not None:  # allocated in dtype: a bf16 load never holds a float32 copy on the device
            model = model.to(dtype)
        model = model.to_empty(device=device)
        model.load_state_dict(state)
        model._rope.clear()
        model.latent_stats = stats
        return model.eval()

    @staticmethod
    def resolve_folder(path: str | Path, revision: str | None = None) -> Path:
        """The local checkpoint folder of a folder path, a released name ("vitok-v2/NAME": downloaded and
        converted once) or a Hub repo id ("owner/name": fetched into the Hub cache); an existing folder
        of that name wins."""
        from . import vitok_v2

        if isinstance(path, str) and path.startswith(vitok_v2.PREFIX) and not Path(path).exists():
            return vitok_v2.released_folder(path, revision)
        if looks_like_repo_id(path):
            return hub_folder(path, revision)
        if revision is not None:
            raise ValueError(f"revision={revision!r} picks a version of a released checkpoint "
                             f"({vitok_v2.PREFIX}NAME) or of a Hub repo (OWNER/NAME), and {path} is a folder "
                             f"path: leave revision out")
        return Path(path)

    @staticmethod
    def read_config(path: str | Path) -> ViTokConfig:
        """The config of a checkpoint folder, checked against its weights' header; no tensor data is read."""
        config_dict, shapes = inspect_checkpoint(path)
        config = _config_of_checkpoint(path, config_dict)
        _check_shapes(path, config, shapes)
        return config

    @staticmethod
    def state_shapes(config: ViTokConfig) -> dict[str, tuple[int, ...]]:
        """The name and shape of every weight a model of `config` holds, without building it.

        from_pretrained compares these with a weights file's header before any module exists;
        a test keeps them equal to a built model's state_dict.
        """
        c = config
        tubelet = (c.temporal_patch, c.patch_size, c.patch_size)
        shapes = {"embed.weight": (c.encoder_width, 3, *tubelet), "embed.bias": (c.encoder_width,)}
        shapes.update(_stack_shapes("encoder", c, c.encoder_width, c.encoder_depth, c.encoder_heads))
        if c.is_v2:
            shapes.update({"to_latent.weight": (c.channels, c.encoder_width), "to_latent.bias": (c.channels,)})
        else:
            shapes.update({"to_moments.weight": (2 * c.channels, c.encoder_width),
                           "to_moments.bias": (2 * c.channels,)})
        shapes.update({"from_latent.weight": (c.decoder_width, c.channels), "from_latent.bias": (c.decoder_width,)})
        shapes.update(_stack_shapes("decoder", c, c.decoder_width, c.decoder_depth, c.decoder_heads))
        if c.is_v2:
            shapes.update({"unembed.weight": (c.tubelet_pixels, c.decoder_width), "unembed.bias": (c.tubelet_pixels,)})
        else:
            shapes.update({"unembed.weight": (c.decoder_width, 3, *tubelet), "unembed.bias": (3,)})
        return shapes

    def save_pretrained(self, path: str | Path) -> None:
        """Write config.json (with the latent statistics, if any) and model.safetensors into a folder
        (created if needed), atomically."""
        stats = self.latent_stats.to_dict() if self.latent_stats is not None else None
        write_checkpoint(path, self.config.to_dict(), self.state_dict(), stats)

    def push_to_hub(self, repo_id: str, **options) -> str:
        """Upload the files of save_pretrained and a generated model card to a Hub repo; returns the commit URL.

        Options (vitok.integrations.hub.push): revision, private, license, data (what it was trained
        on, for the card), commit_message, token. Needs `pip install 'vitok[hub]'`."""
        from ..integrations.hub import push_model  # the integration, loaded only when asked for

        return push_model(self, repo_id, **options)

    def reset_parameters(self) -> None:
        """ViT-style init: truncated-normal linears, Xavier tubelet convolutions, zero biases.

        v2's LayerScale gammas start at 1e-4, the authors' value: each block begins near the identity.
        """
        for module in self.modules():
            if isinstance(module, Block) and module.layer_scale is not None:
                nn.init.constant_(module.layer_scale, 1e-4)
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
            # What runs instead of forward under model.kernels=triton (compiled lazily, on first use).
            block.fused_forward = torch.compile(block.fused_forward, **options)
        return self

    def set_kernels(self, kernels: str = "torch") -> "ViTok":
        """"torch": plain PyTorch ops (inductor fuses them when compiled); "triton": the fused kernels of
        model/kernels.py for the residual-add + RMSNorm, SiLU gate and RoPE + q/k/v layout, and (training
        under autocast, uncompiled) the blocks' matmuls with float32 weight gradients. Returns self."""
        if kernels not in ("torch", "triton"):
            raise ValueError(f"kernels is {kernels!r}; choose torch or triton")
        problem = triton_problem() if kernels == "triton" else None
        if problem is not None:
            raise ValueError(problem)
        self.encoder.set_kernels(kernels == "triton")
        self.decoder.set_kernels(kernels == "triton")
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

    def encode(self, x: torch.Tensor, check: bool = True, normalise: bool | str = False,
               tiling: Tiling | str | None = "auto") -> DiagonalGaussian | DeterministicLatent:
        """Pixels (B×3×H×W or B×3×T×H×W, [-1, 1]) -> posterior over B×L×c latents (v2: a deterministic z).

        normalise=True (or "channel") returns the posterior of the latents normalised with the
        tokenizer's statistics, per channel; "global" with its single shift and scaling factor
        (diffusers' convention). decode(z, normalised=...) undoes it.

        tiling: "auto" (default) cuts a frame of more than `tile_budget` tokens (16x the nominal
        grid) into overlapping tiles of the training size, and a video longer than the training
        clip into overlapping chunks, each latent token taken from the tile where it is most
        central (model/tiling.py); a Tiling sets sizes and overlaps; None always attends over the
        whole sample.

        check=True validates x first (layout, dtype, range, finite values) and refuses a sample of
        more than 16,384 tokens on a CPU or 65,536 on a GPU (checks.MAX_TOKENS_CPU / MAX_TOKENS:
        attention grows with the square of L, so larger inputs run for minutes); check=False skips
        every check and never synchronises with the device (the training hot path).
        """
        # Not a tensor: no grid to tile, and check_pixels names the problem.
        spec, batch = self._tiles(self._pixel_grid(x.shape), tiling) if isinstance(x, torch.Tensor) else (None, 1)
        if check:
            check_pixels(x, self.config, count_tokens=spec is None)
        if spec is None:
            out, _ = self._encode(x)
            posterior = self._latent(out)
        else:
            posterior = self._encode_tiled(x, spec, batch)
        if not normalise:
            return posterior
        stats, mode = self._stats(normalise)
        mean = stats.normalise(posterior.mean, mode)
        if posterior.deterministic:
            return DeterministicLatent(mean)
        _, scale = stats._factors(mean, mode)  # an affine map of a Gaussian: std scales, log-variance shifts
        return DiagonalGaussian(mean, posterior.logvar - 2.0 * torch.log(scale))

    def normalise_latents(self, z: torch.Tensor, mode: bool | str = "channel") -> torch.Tensor:
        """Raw latents …×c -> normalised with the tokenizer's statistics (see encode)."""
        stats, mode = self._stats(mode)
        return stats.normalise(z, mode)

    def denormalise_latents(self, z: torch.Tensor, mode: bool | str = "channel") -> torch.Tensor:
        """The inverse of normalise_latents."""
        stats, mode = self._stats(mode)
        return stats.denormalise(z, mode)

    def _stats(self, mode: bool | str) -> tuple[LatentStats, str]:
        mode = "channel" if mode is True else mode
        if mode not in ("channel", "global"):
            raise ValueError(f"normalise must be True, 'channel' or 'global', got {mode!r}")
        if self.latent_stats is None:
            raise ValueError("this tokenizer has no latent statistics; compute them once with "
                             "`vitok stats MODEL_FOLDER --data DIR` (they are saved in its config.json)")
        return self.latent_stats, mode

    def decode(self, z: torch.Tensor, size: tuple[int, ...] | None = None, check: bool = True,
               normalised: bool | str = False, tiling: Tiling | str | None = "auto") -> torch.Tensor:
        """Latents B×L×c -> pixels. size=(H, W) or (T, H, W) when the grid is not the nominal or a square one.

        normalised=True / "channel" / "global": z was normalised with the tokenizer's statistics
        (encode(normalise=...)); it is denormalised first. tiling: as encode's, blended in pixel space.

        The size is always checked against L (shape arithmetic only); check=True also validates z and
        applies encode's token limit. A v2 model crops its output to `size` (encode padded it to whole
        patches).
        """
        if normalised:
            z = self.denormalise_latents(z, normalised)
        if check:
            check_latents(z, self.config)
        grid = grid_for(z.shape[1], size, self.config)
        spec, batch = self._tiles(grid, tiling)
        if check and spec is None:
            check_token_count(grid, z.device, f"latents of shape {tuple(z.shape)}", self.config)
        if spec is None:
            pixels = self._decode(z, grid)
        else:
            pixels = decode_tiled(self._decode, z, grid, spec, self._tubelet(), batch)
        if size is not None and tuple(pixels.shape[-2:]) != tuple(size[-2:]):
            pixels = pixels[..., :size[-2], :size[-1]]
        return pixels

    def forward(self, x: torch.Tensor, sample: bool = True, check: bool = True,
                noise: torch.Tensor | None = None) -> tuple[torch.Tensor, DiagonalGaussian | DeterministicLatent]:
        """Reconstruct x through a sampled (or, with sample=False, the mean) latent; returns (x_hat, posterior).

        A v2 model's latent is deterministic: `sample` and `noise` change nothing.

        `noise` (B×L×c standard normal) replaces the internal draw: training passes noise cut from
        a per-step global draw, so the result does not depend on how the batch is split over ranks.
        check=True validates x as encode does, token limit included (16,384 tokens per sample on a
        CPU, 65,536 on a GPU); check=False runs anything without a host sync.
        """
        if check:
            check_pixels(x, self.config)
        out, grid = self._encode(x)
        posterior = self._latent(out)
        mean = posterior.mean
        if noise is not None and noise.shape != mean.shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}; the latents are {tuple(mean.shape)}")
        if posterior.deterministic:
            z = mean
        elif noise is not None:
            z = mean + posterior.std * noise
        else:
            z = posterior.sample() if sample else posterior.mode()
        x_hat = self._decode(z, grid)
        if x_hat.shape[-2:] != x.shape[-2:]:  # v2: x was padded to whole patches
            x_hat = x_hat[..., :x.shape[-2], :x.shape[-1]]
        return x_hat, posterior

    # ---- tiling (model/tiling.py) ------------------------------------------------------------

    def _tubelet(self) -> tuple[int, ...]:
        c = self.config
        return (c.temporal_patch, c.patch_size, c.patch_size) if c.is_video else (c.patch_size, c.patch_size)

    def _pixel_grid(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The token grid of an input shape (v2: height and width rounded up to whole patches)."""
        return tuple(max(1, -(-n // k)) for n, k in zip(shape[2:], self._tubelet())) if len(shape) >= 4 else ()

    def _tiles(self, grid: tuple[int, ...], tiling: Tiling | str | None) -> tuple[TileSpec | None, int]:
        c = self.config
        if tiling is None or len(grid) != len(c.grid):
            return None, 1
        if tiling == "auto":
            tiling = auto_tiling(grid, c.grid, self.tile_budget, c.image_size, c.frames, c.patch_size,
                                 c.temporal_patch, c.is_video)
            if tiling is None:
                return None, 1
        elif not isinstance(tiling, Tiling):
            raise ValueError(f"tiling must be 'auto', None or a vitok.Tiling(tile_size=..., overlap=...), got "
                             f"{tiling!r}")
        return tiling.spec(grid, c.patch_size, c.temporal_patch, c.is_video), tiling.batch

    def _encode_tiled(self, x: torch.Tensor, spec: TileSpec, batch: int) -> DiagonalGaussian | DeterministicLatent:
        p = self.config.patch_size
        if self.config.is_v2 and (x.shape[-2] % p or x.shape[-1] % p):  # whole patches first, as _encode pads
            x = F.pad(x, (0, -x.shape[-1] % p, 0, -x.shape[-2] % p))
        grid = self._pixel_grid(x.shape)

        def encode(pixels: torch.Tensor) -> list[torch.Tensor]:
            posterior = self._latent(self._encode(pixels)[0])
            return [posterior.mean] if posterior.deterministic else [posterior.mean, posterior.logvar]

        parts = encode_tiled(encode, x, grid, spec, self._tubelet(), batch)
        return DeterministicLatent(parts[0]) if self.config.is_v2 else DiagonalGaussian(parts[0], parts[1])

    def _latent(self, out: torch.Tensor) -> DiagonalGaussian | DeterministicLatent:
        """The bottleneck on the encoder's B×L×(2c or c) output."""
        c = self.config
        if c.is_v2:  # in float32, as the authors do, whatever the autocast dtype
            return DeterministicLatent(F.layer_norm(out.float(), (c.channels,), eps=c.norm_eps))
        mean, logvar = out.float().chunk(2, dim=-1)
        return DiagonalGaussian(mean, logvar.clamp(c.logvar_min, c.logvar_max))

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        with self._autocast(x.device):
            if self.amp_dtype is None:  # e.g. float32 pixels into a model cast to bf16
                x = x.to(self.embed.weight.dtype)
            p = self.config.patch_size
            if self.config.is_v2 and (x.shape[-2] % p or x.shape[-1] % p):
                # The authors' preprocessing: zeros (mid-grey in [-1, 1]) below and to the right.
                x = F.pad(x, (0, -x.shape[-1] % p, 0, -x.shape[-2] % p))
            patches, grid = self._patchify(x if x.dim() == 5 else x.unsqueeze(2))
            # The tubelet "convolution" as one matmul over flattened tubelets: the same weights
            # and result, but a GEMM instead of a strided 3-D convolution (slow in cuDNN at bf16).
            weight = self.embed.weight.flatten(1)  # D×(3·q·p·p), in the (c, t, y, x) order of a tubelet
            tokens = F.linear(patches, weight, self.embed.bias).to(self._stream_dtype())  # B×L×D
            tokens = self.encoder(tokens, self._rope(grid, self.encoder.head_dim, x.device))
            bottleneck = self.to_latent if self.config.is_v2 else self.to_moments
            return bottleneck(tokens), grid  # B×L×c (v2) or B×L×2c

    def _decode(self, z: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
        with self._autocast(z.device):
            tokens = self.from_latent(z.to(self.from_latent.weight.dtype)).to(self._stream_dtype())  # B×L×D
            tokens = self.decoder(tokens, self._rope(grid, self.decoder.head_dim, z.device))
            if self.config.is_v2:
                weight, bias = self.unembed.weight, self.unembed.bias  # (3·q·p·p)×D, one bias per value
            else:  # the transposed tubelet convolution as one matmul to per-token tubelets
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

    def encoder_modules(self) -> list[nn.Module]:
        """The modules from pixels to latents: what stage 2 freezes."""
        return [self.embed, self.encoder, self.to_latent if self.config.is_v2 else self.to_moments]

    def decoder_modules(self) -> list[nn.Module]:
        """The modules from latents to pixels."""
        return [self.from_latent, self.decoder, self.unembed]

    def num_params(self) -> dict[str, int]:
        """Parameter counts: encoder side (embed, encoder, bottleneck), decoder side, total."""
        enc = sum(p.numel() for m in self.encoder_modules() for p in m.parameters())
        dec = sum(p.numel() for m in self.decoder_modules() for p in m.parameters())
        return {"encoder": enc, "decoder": dec, "total": enc + dec}


def _stack_shapes(prefix: str, config: ViTokConfig, width: int, depth: int, heads: int) -> dict[str, tuple[int, ...]]:
    """Weight shapes of one Transformer stack (blocks.Transformer), in state_dict order."""
    shapes: dict[str, tuple[int, ...]] = {}
    hidden = config.mlp_hidden(width)
    for i in range(depth):
        block = f"{prefix}.blocks.{i}."
        if config.is_v2:
            shapes[block + "layer_scale"] = (width,)
        shapes[block + "norm1.weight"] = (width,)
        shapes[block + "attn.qkv.weight"] = (3 * width, width)
        shapes[block + "attn.proj.weight"] = (width, width)
        if config.qk_norm:
            shapes[block + "attn.q_norm.weight"] = (width // heads,)
            shapes[block + "attn.k_norm.weight"] = (width // heads,)
        if not config.is_v2:
            shapes[block + "norm2.weight"] = (width,)
        shapes[block + "mlp.w13.weight"] = (2 * hidden, width)
        shapes[block + "mlp.w2.weight"] = (width, hidden)
    if not config.is_v2:
        shapes[f"{prefix}.norm.weight"] = (width,)
    return shapes


# Fields added to ViTokConfig after checkpoints were first written, with the value that an older
# config.json (written before the field existed) implies.
ADDED_FIELDS = {"architecture": "vitok"}


def _config_of_checkpoint(path: str | Path, data) -> ViTokConfig:
    """The ViTokConfig of config.json; every field must be there (a missing one would silently take its default)."""
    if isinstance(data, dict):
        data = {**ADDED_FIELDS, **data}
    try:
        config = ViTokConfig.from_dict(data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint folder {path} has an invalid config.json: {err}") from None
    defaults = ViTokConfig()
    missing = [f.name for f in dataclasses.fields(ViTokConfig)
               if f.name not in ("name", *ADDED_FIELDS) and f.name not in data]
    if missing:
        fill = ", ".join(f'"{key}": {json.dumps(getattr(defaults, key))}' for key in missing)
        raise ValueError(f"checkpoint folder {path}: config.json lacks the fields {missing}; save_pretrained writes "
                         f"every field, so the file was edited or written elsewhere. Add the values the model was "
                         f"trained with (the defaults would be {fill})")
    return config


def _check_shapes(path: str | Path, config: ViTokConfig, found: dict[str, tuple[int, ...]]) -> None:
    """The weights' header must hold exactly the tensors config.json describes: names and shapes."""
    expected = ViTok.state_shapes(config)
    if expected == found:
        return
    missing = sorted(set(expected) - set(found))[:5]
    extra = sorted(set(found) - set(expected))[:5]
    shapes = [f"{k}: config says {expected[k]}, weights have {found[k]}"
              for k in sorted(set(expected) & set(found)) if expected[k] != found[k]][:5]
    fields = _size_disagreements(config, found)
    summary = f"{'; '.join(fields)}; " if fields else ""
    raise ValueError(f"checkpoint folder {path}: the weights were written by a different architecture than its "
                     f"config.json describes ({summary}missing {missing}, unexpected {extra}, mismatched {shapes}); "
                     f"re-save the model with save_pretrained, or make config.json match the weights")


def _size_disagreements(config: ViTokConfig, found: dict[str, tuple[int, ...]]) -> list[str]:
    """Config fields whose value the weights' shapes contradict, e.g. "encoder_depth is 12 in config.json
    but 6 in the weights": the summary a user can act on, before the list of tensor names."""
    def depth(prefix: str) -> int:
        parts = (k.split(".") for k in found if k.startswith(f"{prefix}.blocks."))
        blocks = {int(p[2]) for p in parts if p[2].isdigit()}
        return max(blocks) + 1 if blocks else 0

    facts = {"encoder_depth": depth("encoder"), "decoder_depth": depth("decoder")}
    facts["architecture"] = "vitok-v2" if "to_latent.weight" in found else "vitok"
    embed, moments, latent = (found.get(k, ()) for k in ("embed.weight", "to_moments.weight", "from_latent.weight"))
    if len(embed) == 5:
        facts.update(encoder_width=embed[0], temporal_patch=embed[2], patch_size=embed[3])
    if len(latent) == 2:
        facts.update(decoder_width=latent[0], channels=latent[1])
    elif len(moments) == 2:
        facts["channels"] = moments[0] // 2
    qk = any(".attn.q_norm." in k for k in found)
    if qk != config.qk_norm:
        facts["qk_norm"] = qk
    return [f"{key} is {getattr(config, key)} in config.json but {value} in the weights"
            for key, value in facts.items() if getattr(config, key) != value]


def _parse_device(device: torch.device | str) -> torch.device:
    """A torch.device that exists here, or a ValueError naming the device and the ones available."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {device!r} is not a torch device ({err}); use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {str(device)!r} was asked for, but this torch sees no CUDA GPU; use cpu")
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {str(device)!r} does not exist: this machine has {count} CUDA GPU(s), "
                             f"cuda:0 to cuda:{count - 1}")
    return device
