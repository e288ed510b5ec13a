"""Transformer building blocks: RMSNorm, SwiGLU, axial rotary embedding, attention, block.

Two block layouts: the paper's sequential pre-norm block, and the parallel block with LayerScale
of the authors' ViTok v2 release (model/vitok_v2.py).

Shapes: B batch, L tokens, D width, H heads, d = D / H head width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import gemm
from .kernels import add_rmsnorm, fused_now, linear, rope_qkv, silu_mul


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain (no mean subtraction, no bias)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float32, torch.float64):
            return F.rms_norm(x, self.weight.shape, self.weight.to(x.dtype), self.eps)
        # Normalise bf16/fp16 rows in float32: their mean of squares loses too many bits.
        return F.rms_norm(x.float(), self.weight.shape, self.weight.float(), self.eps).to(x.dtype)


def swiglu_hidden(width: int, multiple_of: int = 256) -> int:
    """Hidden width of a SwiGLU MLP: 2/3 of 4*width (same parameters as a GELU MLP), rounded up."""
    hidden = int(2 * 4 * width / 3)
    return multiple_of * math.ceil(hidden / multiple_of)


def v2_swiglu_hidden(width: int, mlp_factor: float = 2.67) -> int:
    """Hidden width of ViTok v2's SwiGLU: int(factor * width) rounded to the nearest multiple of 16.

    The authors round for float8-friendly kernels; 1024 wide gives 2736, 3072 wide 8208.
    """
    return 16 * ((int(width * mlp_factor) + 8) // 16)


def plain_linear(layer: nn.Module) -> bool:
    """Whether a fused path may use layer's weight directly: a bias-free nn.Linear itself (not a
    subclass or a replacement such as an adapter) without forward hooks, which calling it would run."""
    return (type(layer) is nn.Linear and layer.bias is None
            and not (layer._forward_hooks or layer._forward_pre_hooks))


def fused_linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """layer(x) on the fused path: kernels.linear (float32 weight gradients from the GEMM) for a plain
    layer (plain_linear); any other runs as itself."""
    return linear(x, layer.weight) if plain_linear(layer) else layer(x)


class SwiGLU(nn.Module):
    """MLP with a SiLU-gated linear unit: W2(silu(W1 x) * W3 x)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        # W1 and W3 fused into one matmul; the two halves are split after it.
        self.w13 = nn.Linear(dim, 2 * hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.fused = False  # model.kernels=triton: the gate as one kernel (kernels.silu_mul)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fused_now(self.fused):
            return fused_linear(self.w2, silu_mul(fused_linear(self.w13, x)))
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


def rope_angles(
    grid: tuple[int, ...], head_dim: int, theta: float = 10000.0, device: torch.device | str | None = None
) -> torch.Tensor:
    """Rotation angles L×(d/2) for axial rotary embedding over a token grid.

    ``grid`` is (h, w) for images or (t, h, w) for video; tokens are in row-major order of the
    grid. Each axis gets an even share of the head's d/2 rotation pairs (any remainder goes to
    the first axis) and its own geometric frequency ladder, so attention logits depend on the
    relative offset along every axis separately. An odd head width leaves its last channel
    unrotated (the paper's H size has 1296 / 16 = 81 channels per head).
    """
    n_axes = len(grid)
    pairs = head_dim // 2
    if pairs < n_axes:
        raise ValueError(f"head width {head_dim} is too small for rotary embedding over {n_axes} axes")
    per_axis = [pairs // n_axes] * n_axes
    per_axis[0] += pairs - sum(per_axis)
    coords = torch.meshgrid(*[torch.arange(n, device=device, dtype=torch.float64) for n in grid], indexing="ij")
    parts = []
    for axis, n_pairs in enumerate(per_axis):
        inv_freq = theta ** (-torch.arange(n_pairs, device=device, dtype=torch.float64) / n_pairs)
        parts.append(coords[axis].reshape(-1, 1) * inv_freq)
    return torch.cat(parts, dim=1).float()


def rope_tables(angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) of the angles, L×P each: computed once per forward, shared by every block."""
    return angles.cos(), angles.sin()


class RopeCache:
    """(cos, sin) tables per (grid, head width, device), each computed once: a model sees few grids.

    A plain attribute, not a module or buffer: tables follow from the config alone, so they are never
    saved, and a lookup keyed by device never hands back tables from another device.
    """

    def __init__(self, theta: float) -> None:
        self.theta = theta
        self.tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, grid: tuple[int, ...], head_dim: int,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (tuple(grid), head_dim, str(device))
        if key not in self.tables:
            self.tables[key] = rope_tables(rope_angles(grid, head_dim, self.theta, device=device))
        return self.tables[key]

    def clear(self) -> None:
        self.tables.clear()


def apply_rope(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate x by rope = (cos, sin), P = d // 2 per row: pair j is (x[j], x[j + P]).

    The tables broadcast against x's leading axes: L×P for B×H×L×d, L×1×P for token-major B×L×H×d.

    Computed in x's dtype (bf16 under autocast): the rotation is norm-preserving and its rounding
    is that of the QKV matmul that produced x.
    """
    cos, sin = (t.to(x.dtype) for t in rope)
    pairs = cos.shape[-1]
    x1, x2, rest = x.split([pairs, pairs, x.shape[-1] - 2 * pairs], dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, rest], dim=-1)


class Attention(nn.Module):
    """Multi-head self-attention with fused QKV, optional QK-norm and rotary positions."""

    def __init__(self, dim: int, heads: int, qk_norm: bool = False, eps: float = 1e-6) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.q_norm = RMSNorm(self.head_dim, eps) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim, eps) if qk_norm else nn.Identity()
        self.fused = False  # model.kernels=triton: RoPE and the q/k/v layout as one kernel (kernels.rope_qkv)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        B, L, D = x.shape
        if fused_now(self.fused) and rope is not None and isinstance(self.q_norm, nn.Identity):
            q, k, v = rope_qkv(fused_linear(self.qkv, x), *rope, self.heads)
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            return fused_linear(self.proj, out.transpose(1, 2).reshape(B, L, D))
        # q, k and v stay in the token-major B×L×H×d layout of the QKV matmul's output and reach SDPA
        # as transposed views: v is never copied, RoPE writes q and k token-major, and flash and cuDNN
        # attention give their output in that layout too, so the reshape for the projection is a view
        # (1.04x compiled encode + decode, 1.05x training on an H200: benchmarks/NOTES.md).
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, self.head_dim).unbind(2)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            tables = (rope[0][:, None], rope[1][:, None])  # L×1×P: broadcast over the heads
            q, k = apply_rope(q, tables), apply_rope(k, tables)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(out.transpose(1, 2).reshape(B, L, D))


class Block(nn.Module):
    """Pre-norm Transformer block, sequential or parallel.

    sequential (the paper's): x + attn(norm1(x)), then x + mlp(norm2(x)).
    parallel (ViTok v2): x + gamma * (attn(h) + mlp(h)) with h = norm1(x): one norm, both branches
    read the same input, and a learned per-channel LayerScale gamma weighs their sum.
    """

    def __init__(self, dim: int, heads: int, qk_norm: bool = False, eps: float = 1e-6, parallel: bool = False,
                 hidden: int | None = None) -> None:
        super().__init__()
        self.parallel = parallel
        self.norm1 = RMSNorm(dim, eps)
        self.attn = Attention(dim, heads, qk_norm, eps)
        self.norm2 = None if parallel else RMSNorm(dim, eps)
        self.mlp = SwiGLU(dim, hidden or swiglu_hidden(dim))
        self.layer_scale = nn.Parameter(torch.ones(dim)) if parallel else None

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        if self.parallel:
            h = self.norm1(x)
            return x + (self.attn(h, rope) + self.mlp(h)) * self.layer_scale
        x = x + self.attn(self.norm1(x), rope)
        return x + self.mlp(self.norm2(x))

    def inference_forward(self, x: torch.Tensor, sumsq: torch.Tensor,
                          rope: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The sequential block without grad, each norm, the gate and each residual add inside a matmul
        (model/gemm.py): x and its rows' Σx² in, the new stream and its Σ out. No normalised copy of
        the stream and no [g | u] are ever written."""
        attn, mlp = self.attn, self.mlp
        B, L, D = x.shape

        w_qkv = gemm.folded(attn.qkv.weight, self.norm1.weight, x.dtype)
        if gemm.rope_fits(w_qkv.shape[0], rope[0], attn.heads):  # RoPE in the QKV matmul's epilogue too
            qkv = gemm.linear_rowscale(x, w_qkv, sumsq, self.norm1.eps, rope)
            q, k, v = qkv.view(B, L, 3, attn.heads, attn.head_dim).unbind(2)
        else:
            q, k, v = rope_qkv(gemm.linear_rowscale(x, w_qkv, sumsq, self.norm1.eps), *rope, attn.heads)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        x, sumsq = gemm.linear_residual(out.transpose(1, 2).reshape(B, L, D),
                                        gemm.folded(attn.proj.weight, None, x.dtype), x)
        gated = gemm.linear_gate(x, gemm.folded(mlp.w13.weight, self.norm2.weight, x.dtype), sumsq, self.norm2.eps)
        return gemm.linear_residual(gated, gemm.folded(mlp.w2.weight, None, x.dtype), x)

    def inference_ready(self, x: torch.Tensor) -> bool:
        """Whether inference_forward takes x: a sequential block of this file's own modules (none replaced,
        e.g. by adapters; no q/k norm; no forward hooks anywhere in the block, which inference_forward would
        skip) and bias-free layers whose matmuls run in x's dtype (their weights' own, or autocast's), at
        widths the GEMMs take (gemm.usable; the gate's half width too)."""
        layers = (self.attn.qkv, self.attn.proj, self.mlp.w13, self.mlp.w2)
        device = x.device.type
        matmul_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        return (not self.parallel and type(self.attn) is Attention and type(self.mlp) is SwiGLU
                and type(self.norm1) is RMSNorm and type(self.norm2) is RMSNorm
                and isinstance(self.attn.q_norm, nn.Identity) and isinstance(self.attn.k_norm, nn.Identity)
                and all(plain_linear(m) and (matmul_dtype or m.weight.dtype) == x.dtype for m in layers)
                and not any(m._forward_hooks or m._forward_pre_hooks for m in self.modules())
                and all(gemm.usable(x, m.weight.shape[1]) and m.weight.shape[0] % 8 == 0 for m in layers)
                and self.mlp.w13.weight.shape[0] % 16 == 0)

    def fused_forward(self, x: torch.Tensor, h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                      next_norm: RMSNorm | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The sequential block with each residual add fused into the norm after it (kernels.add_rmsnorm).

        h = norm1(x) comes in (the previous block's last fused kernel made it); out go the new stream
        and next_norm of it (None when there is no next norm).
        """
        x, h = add_rmsnorm(x, self.attn(h, rope), self.norm2.weight, self.norm2.eps)
        delta = self.mlp(h)
        if next_norm is None:
            return x + delta.to(x.dtype), None
        return add_rmsnorm(x, delta, next_norm.weight, next_norm.eps)


class Transformer(nn.Module):
    """A stack of blocks with rotary positions and (unless final_norm=False) a final norm; B×L×D -> B×L×D."""

    def __init__(self, dim: int, depth: int, heads: int, qk_norm: bool = False, eps: float = 1e-6,
                 parallel: bool = False, hidden: int | None = None, final_norm: bool = True) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block(dim, heads, qk_norm, eps, parallel, hidden) for _ in range(depth)])
        self.norm = RMSNorm(dim, eps) if final_norm else nn.Identity()
        self.head_dim = dim // heads
        self.grad_checkpointing = False
        self.fused = False

    def inference_forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """model.kernels=triton without grad: the blocks' norms, gates and residual adds inside their matmuls
        (Block.inference_forward), then the final norm."""
        sumsq = gemm.row_sumsq(x)
        for block in self.blocks:
            x, sumsq = block.inference_forward(x, sumsq, rope)
        if not isinstance(self.norm, RMSNorm):
            return x
        return add_rmsnorm(x, None, self.norm.weight, self.norm.eps)  # one pass of the fused norm kernel

    def set_kernels(self, fused: bool) -> None:
        """Run the blocks through the fused kernels (model.kernels=triton) or plain PyTorch ops."""
        self.fused = fused
        for block in self.blocks:
            block.attn.fused = block.mlp.fused = fused

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        if (self.fused and self.blocks and rope is not None and not torch.is_grad_enabled()
                and all(block.inference_ready(x) for block in self.blocks)):
            return self.inference_forward(x, rope)
        if fused_now(self.fused) and self.blocks and not self.blocks[0].parallel and not (
                self.grad_checkpointing and torch.is_grad_enabled()):
            first = self.blocks[0].norm1
            h = add_rmsnorm(x, None, first.weight, first.eps)
            for i, block in enumerate(self.blocks):
                after = self.blocks[i + 1].norm1 if i + 1 < len(self.blocks) else self.norm
                x, h = block.fused_forward(x, h, rope, after if isinstance(after, RMSNorm) else None)
            return x if h is None else h
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, rope, use_reentrant=False)
            else:
                x = block(x, rope)
        return self.norm(x)
