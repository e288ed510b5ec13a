"""Class-conditional diffusion Transformer (DiT) over ViTok latent token grids, with Llama upgrades.

Peebles & Xie's DiT with the blocks of vitok.model.blocks: RMSNorm for LayerNorm, a SwiGLU MLP,
axial rotary positions over the latent grid (2-D (h, w) for images, 3-D (t, h, w) for video) in
place of fixed sin-cos embeddings, and attention through F.scaled_dot_product_attention. The
timestep and class embeddings are summed into one conditioning vector that sets every block's
shift/scale/gate (adaLN-zero: zero-initialised, so each block starts as the identity and the
model starts by predicting zeros).

Shapes: x is B×L×c latents with L = prod(grid); t is B timesteps; y is B labels in
[0, num_classes], where num_classes is the "null" label of classifier-free guidance. ViTok
latents are already tokens, so the "patchify" is a linear c -> D; group = 2 merges each 2×2
square of latent tokens into one DiT token (4× fewer tokens, DiT's /2 patches).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..model.blocks import Block, RMSNorm, RopeCache
from ..model.variants import dataclass_from_dict
from .diffusion import PREDICTIONS, guide

# (width, depth, heads) of DiT-S/B/L/XL, as in Peebles & Xie (2023), table 1.
DIT_SIZES: dict[str, tuple[int, int, int]] = {
    "S": (384, 12, 6),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
    "XL": (1152, 28, 16),
}

_NAME = re.compile(r"^(?:DiT-)?(?P<size>[A-Z]+)(?:/(?P<group>\d+))?$")


@dataclass
class DiTConfig:
    """Every number that defines a latent DiT; the defaults are DiT-L on 16-channel ImageNet latents."""

    in_channels: int = 16  # c: latent channels per token
    num_classes: int = 1000  # label num_classes is the null (unconditional) label
    width: int = 1024
    depth: int = 24
    heads: int = 16
    group: int = 1  # side of the square of latent tokens merged into one DiT token: 1 or 2
    prediction: str = "eps"  # what the output regresses: "eps" (noise) or "v"
    learn_sigma: bool = False  # add c variance channels per token (IDDPM's learned variance)
    class_dropout: float = 0.1  # probability a training label is replaced by the null label
    qk_norm: bool = False
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    frequency_dim: int = 256  # sinusoidal timestep features before the embedding MLP
    name: str = ""  # "DiT-L" when built from a name; informational only

    def __post_init__(self) -> None:
        self.validate()

    @property
    def out_channels(self) -> int:
        """Output channels per latent token: the prediction, plus as many variance channels if learned."""
        return self.in_channels * (2 if self.learn_sigma else 1)

    def validate(self) -> None:
        """Reject impossible configurations with the fix in the message."""
        for key in ("in_channels", "width", "depth", "heads", "group", "frequency_dim"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DiT config field {key!r} must be a positive integer, got {value!r}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ValueError(f"num_classes must be an integer >= 0 (0 for an unconditional model), "
                             f"got {self.num_classes!r}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}; choose heads that divide it")
        if (self.width // self.heads) // 2 < 3:
            raise ValueError(f"head width {self.width // self.heads} is too small for rotary embedding over up "
                             f"to 3 axes; use fewer heads")
        if self.group not in (1, 2):
            raise ValueError(f"group must be 1 (one DiT token per latent token) or 2 (2×2 latent tokens per "
                             f"DiT token), got {self.group}")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {self.prediction!r}; choose one of {PREDICTIONS}")
        if not isinstance(self.class_dropout, (int, float)) or not 0.0 <= self.class_dropout < 1.0:
            raise ValueError(f"class_dropout must lie in [0, 1), got {self.class_dropout!r}")
        for key in ("rope_theta", "norm_eps"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"DiT config field {key!r} must be a finite number > 0, got {value!r}")
        for key in ("learn_sigma", "qk_norm"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"DiT config field {key!r} must be true or false, got {getattr(self, key)!r}")
        if not isinstance(self.name, str):
            raise ValueError(f"DiT config field 'name' must be a string, got {self.name!r}")
        if self.frequency_dim % 2:
            raise ValueError(f"frequency_dim must be even (cos and sin halves), got {self.frequency_dim}")

    def to_dict(self) -> dict:
        """Plain-JSON form."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "DiTConfig":
        """Inverse of to_dict; unknown keys are an error naming them."""
        return dataclass_from_dict(cls, data, "DiT config")


def dit_config(name: str, **overrides) -> DiTConfig:
    """Config for "DiT-L" (or "L"); a "/2" suffix sets group=2; keyword overrides win."""
    match = _NAME.match(name.strip())
    if match is None or match["size"] not in DIT_SIZES:
        raise ValueError(f"cannot parse DiT name {name!r}; expected DiT-SIZE or DiT-SIZE/GROUP with sizes "
                         f"{'/'.join(DIT_SIZES)} and group 1 or 2, e.g. DiT-L or DiT-XL/2")
    width, depth, heads = DIT_SIZES[match["size"]]
    fields = dict(width=width, depth=depth, heads=heads, name=name.strip())
    if match["group"] is not None:
        fields["group"] = int(match["group"])
    fields.update(overrides)
    known = {f.name for f in dataclasses.fields(DiTConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown DiT config keys {unknown}; known keys are {sorted(known)}")
    return DiTConfig(**fields)


def timestep_features(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features B×dim of (possibly fractional) timesteps: [cos(t f), sin(t f)], geometric f."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x (B×L×D) * (1 + scale) + shift, with per-sample shift/scale B×1×D."""
    return x * (1 + scale) + shift


def group_tokens(x: torch.Tensor, grid: tuple[int, ...], group: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Merge each group×group square of the (h, w) axes into one token: B×L×c -> B×(L/g²)×(g²c), new grid."""
    if group == 1:
        return x, grid
    B, _, c = x.shape
    *lead, h, w = grid
    frames = math.prod(lead)
    x = x.view(B, frames, h // group, group, w // group, group, c).permute(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(B, frames * (h // group) * (w // group), group * group * c), (*lead, h // group, w // group)


def ungroup_tokens(x: torch.Tensor, grid: tuple[int, ...], group: int) -> torch.Tensor:
    """Inverse of group_tokens: B×(L/g²)×(g²c) on the coarse grid -> B×L×c on the original `grid`."""
    if group == 1:
        return x
    B, _, gc = x.shape
    c = gc // (group * group)
    *lead, h, w = grid
    frames = math.prod(lead)
    x = x.view(B, frames, h // group, w // group, group, group, c).permute(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(B, frames * h * w, c)


class TimestepEmbedder(nn.Module):
    """Timesteps B -> B×D: sinusoidal features through a two-layer SiLU MLP."""

    def __init__(self, dim: int, frequency_dim: int = 256) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        features = timestep_features(t, self.frequency_dim)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class DiTBlock(Block):
    """The tokenizer's pre-norm Transformer block, its norms modulated by the conditioning (adaLN-zero)."""

    def __init__(self, dim: int, heads: int, qk_norm: bool = False, eps: float = 1e-6) -> None:
        # RMSNorm's own gain is redundant with adaLN's scale; kept to reuse the tokenizer's block.
        super().__init__(dim, heads, qk_norm, eps)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        # cond B×D -> six B×1×D vectors.
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(cond).unsqueeze(1).chunk(6, dim=-1)
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1), rope)
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """Modulated norm and a linear D -> per-token outputs (both zero-initialised)."""

    def __init__(self, dim: int, out: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, eps)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, out)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(cond).unsqueeze(1).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(nn.Module):
    """Class-conditional DiT: noisy latents B×L×c, timesteps B, labels B -> prediction B×L×out_channels."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        tokens_in = c.group * c.group * c.in_channels
        self.embed = nn.Linear(tokens_in, c.width)
        self.t_embed = TimestepEmbedder(c.width, c.frequency_dim)
        # One extra row, index num_classes, is the null label that classifier-free guidance trains.
        self.y_embed = nn.Embedding(c.num_classes + 1, c.width)
        self.blocks = nn.ModuleList([DiTBlock(c.width, c.heads, c.qk_norm, c.norm_eps) for _ in range(c.depth)])
        self.final = FinalLayer(c.width, c.group * c.group * c.out_channels, c.norm_eps)
        self.grad_checkpointing = False
        self._rope_cache = RopeCache(c.rope_theta)
        self.reset_parameters()

    @classmethod
    def from_name(cls, name: str, **overrides) -> "DiT":
        """Build a named size, e.g. DiT.from_name("DiT-L", in_channels=16, num_classes=1000)."""
        return cls(dit_config(name, **overrides))

    @property
    def null_label(self) -> int:
        """The label that means "no class": num_classes."""
        return self.config.num_classes

    def reset_parameters(self) -> None:
        """DiT's init: Xavier linears with zero biases, N(0, 0.02) embeddings; adaLN and output zeroed."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.y_embed.weight, std=0.02)
        for layer in (self.t_embed.mlp[0], self.t_embed.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        # adaLN-zero: zero gates make every block the identity, zero output makes the first prediction 0.
        for modulation in [block.modulation for block in self.blocks] + [self.final.modulation]:
            nn.init.zeros_(modulation[1].weight)
            nn.init.zeros_(modulation[1].bias)
        nn.init.zeros_(self.final.linear.weight)
        nn.init.zeros_(self.final.linear.bias)

    def compile_blocks(self, **options) -> "DiT":
        """torch.compile every block in place (weights' names unchanged; options go to torch.compile)."""
        for block in self.blocks:
            block.compile(**options)
        return self

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute block activations in the backward pass: less memory, about a third more compute."""
        self.grad_checkpointing = enabled

    def num_params(self) -> int:
        """Total parameter count."""
        return sum(p.numel() for p in self.parameters())

    def drop_labels(self, labels: torch.Tensor, p: float | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """Replace each label by the null label with probability p (default config.class_dropout)."""
        p = self.config.class_dropout if p is None else p
        if p <= 0:
            return labels
        drop = torch.rand(labels.shape, generator=generator, device=labels.device) < p
        return torch.where(drop, torch.full_like(labels, self.null_label), labels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                grid: tuple[int, ...] | None = None) -> torch.Tensor:
        """Predict eps (or v) for noisy latents x (B×L×c) at timesteps t (B) with labels y (B, None = null).

        grid is (h, w) or (t, h, w) with prod(grid) = L; None means a square image grid.
        """
        grid = self._check(x, grid)
        B = x.shape[0]
        if y is None:
            y = torch.full((B,), self.null_label, device=x.device, dtype=torch.long)
        if t.shape != (B,) or y.shape != (B,):
            raise ValueError(f"timesteps and labels must have shape ({B},) for a batch of {B}, got "
                             f"{tuple(t.shape)} and {tuple(y.shape)}")
        tokens, coarse = group_tokens(x, grid, self.config.group)
        h = self.embed(tokens.to(self.embed.weight.dtype))  # B×L'×D
        cond = self.t_embed(t) + self.y_embed(y)  # B×D
        rope = self._rope(coarse, x.device)
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                h = checkpoint(block, h, cond, rope, use_reentrant=False)
            else:
                h = block(h, cond, rope)
        return ungroup_tokens(self.final(h, cond), grid, self.config.group)  # B×L×out_channels

    def forward_with_cfg(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None, scale: float,
                         grid: tuple[int, ...] | None = None) -> torch.Tensor:
        """Guided prediction: conditional and null halves in one batch, combined as u + scale (c - u).

        Only the prediction channels are guided; learned variance channels come from the conditional
        half. scale = 1 (or no labels) runs the conditional model alone. Its (x, t, y, scale)
        signature is the model_fn of GaussianDiffusion.sample once the grid is bound.
        """
        if scale == 1.0 or y is None:
            return self(x, t, y, grid)
        null = torch.full_like(y, self.null_label)
        out = self(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]), grid)
        cond, uncond = out.chunk(2)
        c = self.config.in_channels
        return torch.cat([guide(cond[..., :c], uncond[..., :c], scale), cond[..., c:]], dim=-1)

    def _check(self, x: torch.Tensor, grid: tuple[int, ...] | None) -> tuple[int, ...]:
        """Validate x against the config and return the grid (inferring a square one)."""
        c = self.config
        if x.dim() != 3 or x.shape[-1] != c.in_channels:
            raise ValueError(f"expected latents B×L×{c.in_channels}, got shape {tuple(x.shape)}")
        L = x.shape[1]
        if grid is None:
            side = math.isqrt(L)
            if side * side != L:
                raise ValueError(f"{L} tokens do not form a square grid; pass grid=(h, w) or (t, h, w)")
            grid = (side, side)
        grid = tuple(int(n) for n in grid)
        if len(grid) not in (2, 3) or math.prod(grid) != L:
            raise ValueError(f"grid {grid} does not describe {L} tokens; pass (h, w) or (t, h, w) with product {L}")
        if grid[-1] % c.group or grid[-2] % c.group:
            raise ValueError(f"grid {grid} has h or w not divisible by group {c.group}; use group=1 or even h, w")
        return grid

    def _rope(self, grid: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return self._rope_cache(grid, self.config.width // self.config.heads, device)
