"""Inference GEMMs with the block's norms, gate, residual adds and RoPE in their epilogues (`model.kernels=triton`).

Why: in encode + decode with the other kernels of model/kernels.py, a third of the time is outside
the matmuls, most of it the RMSNorm (+ residual add) and SiLU-gate passes over the activations
(benchmarks/NOTES.md, eighth session). They fold into the matmuls around them:

- RMSNorm before a matmul: rmsnorm(h)·γ @ Wᵀ = rstd ⊙ (h @ (W·diag γ)ᵀ), rstd = 1/√(mean(h²) + eps) per
  row. The gain folds into the weight (`folded`) and the row scale is the GEMM's epilogue, so the
  GEMM reads the residual stream h itself and no normalised copy is ever written.
- The residual add after a matmul: h' = h + a @ Wᵀ in the epilogue, which also adds each row's
  sum of squares of h' (over its column tile) into a float32 vector: the next norm's statistic.
- The SiLU gate: the W13 matmul keeps two accumulators, the g and u columns of one output tile
  (rows n and F + n of W13), and writes silu(g)·u: F values per token instead of 2F, no gate pass.
- RoPE: the QKV matmul's epilogue rotates q and k (whole heads in each tile) before writing them, so
  no pass rotates them afterwards.

The kernel is persistent (one program per SM walking the output tiles) and loads its tiles through
TMA descriptors: that form matched or beat cuBLAS on the MLP's two matmuls and reached 0.90x on the
attention's on an H200 (`benchmarks/gemm_probe.py`). Inference only (no backward); bf16/fp16 on CUDA,
and any dtype under TRITON_INTERPRET=1 (the tests, float32/float64 there; float32 on the GPU too,
multiplied exactly; Triton refuses float64 products on the GPU). The references
(`*_reference`) compute the same maps with plain PyTorch ops.
"""

from __future__ import annotations

import os

import torch

from .kernels import _math, rope_qkv_reference, triton

if triton is not None:
    import triton.language as tl
    from triton.tools.tensor_descriptor import TensorDescriptor

__all__ = ["usable", "row_sumsq", "rope_fits", "linear_rowscale", "linear_gate", "linear_residual", "folded",
           "TUNING"]

# Tile shapes per op: the fastest of `benchmarks/gemm_probe.py --fused`'s candidates on an H200 at
# S-B/16's widths (batch 256 of 256 tokens).
TUNING = {
    "rowscale": {"bm": 128, "bn": 256, "bk": 64, "num_stages": 3, "num_warps": 8},
    "gate": {"bm": 128, "bn": 128, "bk": 64, "num_stages": 3, "num_warps": 8},
    "residual": {"bm": 128, "bn": 256, "bk": 64, "num_stages": 3, "num_warps": 8},
}


# On CUDA the path runs the half types (float32 would run its products exactly, slower than cuBLAS).
CUDA_DTYPES = (torch.float16, torch.bfloat16)


def usable(x: torch.Tensor, width: int) -> bool:
    """Whether the inference path can run these GEMMs on x: Triton on its device (CUDA; the CPU under the
    interpreter in a non-bf16 dtype, whose dot the interpreter gets wrong), rows whose byte length TMA
    can address (width a multiple of 8), not inside torch.compile."""
    if triton is None or torch.is_grad_enabled() or torch.compiler.is_compiling() or width % 8:
        return False
    if x.is_cuda:
        return x.dtype in CUDA_DTYPES
    return os.environ.get("TRITON_INTERPRET") == "1" and x.dtype in (torch.float16, torch.float32, torch.float64)


# ---- references ------------------------------------------------------------------------------------


def _acc(dtype: torch.dtype) -> torch.dtype:
    """The dtype the products and row statistics accumulate in: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def row_sumsq(x: torch.Tensor) -> torch.Tensor:
    """Σ x² over the last axis, in float32 (float64 for float64 x), one value per row (flattened)."""
    # One reduction reading x in its own dtype (no float32 copy of the stream), then M squares.
    return torch.linalg.vector_norm(x.reshape(-1, x.shape[-1]), 2, dim=-1, dtype=_acc(x.dtype)).square()


def _rstd(sumsq: torch.Tensor, width: int, eps: float) -> torch.Tensor:
    return torch.rsqrt(sumsq / width + eps)


def _scaled_product(h, w, sumsq, eps):
    """rstd ⊙ (h @ wᵀ) in float32 math (float64 for float64 h), not rounded."""
    return (_math(h) @ _math(w).t()) * _math(_rstd(sumsq, h.shape[-1], eps))[:, None]


def linear_rowscale_reference(h, w, sumsq, eps):
    """rstd ⊙ (h @ wᵀ) with rstd from each row's Σh² (h's width), in float32 math, h's dtype out."""
    return _scaled_product(h, w, sumsq, eps).to(h.dtype)


def linear_rowscale_rope_reference(h, w, sumsq, eps, cos, sin, heads):
    """linear_rowscale_reference with q and k (the first two thirds of each row) rotated before rounding."""
    out = _scaled_product(h, w, sumsq, eps)
    q, k, v = rope_qkv_reference(out.view(h.shape[0] // cos.shape[0], cos.shape[0], -1), cos.to(out.dtype),
                                 sin.to(out.dtype), heads)
    return torch.cat([q.flatten(2), k.flatten(2), v.flatten(2)], dim=-1).reshape(out.shape).to(h.dtype)


def linear_gate_reference(h, w13, sumsq, eps):
    """silu(g)·u of [g | u] = rstd ⊙ (h @ w13ᵀ), in float32 math, h's dtype out."""
    g, u = _scaled_product(h, w13, sumsq, eps).chunk(2, dim=-1)
    return (torch.nn.functional.silu(g) * u).to(h.dtype)


def linear_residual_reference(a, w, x):
    """(x + a @ wᵀ rounded to x's dtype, its rows' Σ²)."""
    out = (_math(x) + _math(a) @ _math(w).t()).to(x.dtype)
    return out, row_sumsq(out)


# ---- the kernel -----------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def grouped_tile(tile, M, N, BM: tl.constexpr, BN: tl.constexpr):
        # Output tile number -> (row block, column block), in groups of 8 row blocks that share their
        # column blocks of b while those are in L2.
        grid_m, grid_n = tl.cdiv(M, BM), tl.cdiv(N, BN)
        first = (tile // (8 * grid_n)) * 8
        group = min(grid_m - first, 8)
        return first + (tile % (8 * grid_n)) % group, (tile % (8 * grid_n)) // group

    @triton.jit
    def _gemm(a_desc, b_desc, c_desc, r_desc, SS_IN, SS_OUT, COS, SIN, M, N, F, inv_width, eps, PROGRAMS,
              K, L, ROTATED, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, ROWSCALE: tl.constexpr,
              GATE: tl.constexpr, RESIDUAL: tl.constexpr, ROPE: tl.constexpr, P: tl.constexpr,
              ACC: tl.constexpr, PRECISION: tl.constexpr):
        # out[M×N] = epilogue(a[M×K] @ b[·×K]ᵀ). GATE: b holds [W1; W3] (2F rows), out = silu(g)·u with
        # g, u from rows n and F + n. ROWSCALE: rows times rsqrt(SS_IN/width + eps). RESIDUAL: out =
        # r + product, and each row's Σ out² over this tile added into SS_OUT. ROPE: the first ROTATED
        # columns (q and k, heads of 2P side by side; whole tiles) rotated pairwise (j, j + P) by the
        # (cos, sin) of each row's token position (row mod L).
        for tile in range(tl.program_id(0), tl.cdiv(M, BM) * tl.cdiv(N, BN), PROGRAMS):
            pm, pn = grouped_tile(tile, M, N, BM, BN)
            acc = tl.zeros([BM, BN], ACC)
            if GATE:
                acc_u = tl.zeros([BM, BN], ACC)
            for k in range(0, K, BK):
                a = a_desc.load([pm * BM, k])
                acc = tl.dot(a, b_desc.load([pn * BN, k]).T, acc, input_precision=PRECISION)
                if GATE:
                    acc_u = tl.dot(a, b_desc.load([F + pn * BN, k]).T, acc_u, input_precision=PRECISION)
            rows = pm * BM + tl.arange(0, BM)
            if ROWSCALE:
                ss = tl.load(SS_IN + rows, mask=rows < M, other=0.0)
                rstd = (1.0 / tl.sqrt(ss * inv_width + eps)).to(ACC)
                acc = acc * rstd[:, None]
                if GATE:
                    acc_u = acc_u * rstd[:, None]
            if GATE:
                acc = acc * tl.sigmoid(acc) * acc_u
            if ROPE:
                if pn * BN < ROTATED:
                    # (rows, heads in the tile, pair, P) -> the two halves of every head, rotated, put back
                    x1, x2 = tl.split(tl.permute(tl.reshape(acc, [BM, BN // (2 * P), 2, P]), [0, 1, 3, 2]))
                    at = (rows % L)[:, None, None] * P + tl.arange(0, P)[None, None, :]
                    c = tl.load(COS + at, mask=(rows < M)[:, None, None], other=1.0).to(ACC)
                    s = tl.load(SIN + at, mask=(rows < M)[:, None, None], other=0.0).to(ACC)
                    rotated = tl.join(x1 * c - x2 * s, x1 * s + x2 * c)
                    acc = tl.reshape(tl.permute(rotated, [0, 1, 3, 2]), [BM, BN])
            out = acc.to(c_desc.dtype)
            if RESIDUAL:
                out = (r_desc.load([pm * BM, pn * BN]).to(ACC) + acc).to(c_desc.dtype)
                cols = pn * BN + tl.arange(0, BN)
                sq = tl.where((cols < N)[None, :], out.to(ACC) * out.to(ACC), 0.0)
                tl.atomic_add(SS_OUT + rows, tl.sum(sq, 1), mask=rows < M)
            c_desc.store([pm * BM, pn * BN], out)


def _programs(device: torch.device, tiles: int) -> int:
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    return max(1, min(sms, tiles))


def _launch(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, kind: str, *, rowscale=None, residual=None,
            ss_out=None, width=1, eps=0.0, gate_rows=0, rope=None) -> torch.Tensor:
    cfg = TUNING[kind]
    bm, bn, bk = cfg["bm"], cfg["bn"], cfg["bk"]
    M, K = a.shape
    N = out.shape[1]
    acc = tl.float64 if a.dtype == torch.float64 else tl.float32
    # float32/float64 (the tests) multiply exactly; half types take the tensor cores.
    precision = "ieee" if a.dtype in (torch.float32, torch.float64) else None
    descs = [TensorDescriptor.from_tensor(a, [bm, bk]), TensorDescriptor.from_tensor(b, [bn, bk]),
             TensorDescriptor.from_tensor(out, [bm, bn])]
    descs.append(TensorDescriptor.from_tensor(residual, [bm, bn]) if residual is not None else descs[2])
    programs = _programs(a.device, triton.cdiv(M, bm) * triton.cdiv(N, bn))
    # Pointers an op does not use are never read (their branches are compiled out): out stands in.
    cos, sin, tokens, rotated = rope if rope is not None else (out, out, 1, 0)
    _gemm[(programs,)](*descs, rowscale if rowscale is not None else out, ss_out if ss_out is not None else out,
                       cos, sin, M, N, gate_rows, 1.0 / width, eps, programs, K, tokens, rotated, BM=bm, BN=bn,
                       BK=bk, ROWSCALE=rowscale is not None, GATE=kind == "gate", RESIDUAL=residual is not None,
                       ROPE=rope is not None, P=cos.shape[-1] if rope is not None else 1, ACC=acc,
                       PRECISION=precision,
                       num_stages=cfg["num_stages"], num_warps=cfg["num_warps"])
    return out


# ---- the ops -------------------------------------------------------------------------------------------


def rope_fits(out_width: int, cos: torch.Tensor, heads: int) -> bool:
    """Whether linear_rowscale can rotate q and k of a B×L×3D QKV output in its epilogue: heads of d = 2P
    with P a power of two, and tiles of the "rowscale" shape holding whole heads and q, k whole tiles."""
    d, P, bn = out_width // 3 // heads, cos.shape[-1], TUNING["rowscale"]["bn"]
    return (out_width % (3 * heads) == 0 and d == 2 * P and P >= 1 and (P & (P - 1)) == 0 and bn % d == 0
            and (2 * out_width // 3) % bn == 0)


def linear_rowscale(h: torch.Tensor, w: torch.Tensor, sumsq: torch.Tensor, eps: float,
                    rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """rmsnorm(h) @ (W·diag γ)ᵀ for w = folded(W, γ): rows of h (B×L×K) scaled by their rstd after the product.

    rope = (cos, sin), L×P: the output is a QKV matmul's (q | k | v, heads side by side) and q and k are
    rotated too, as kernels.rope_qkv would (call only where rope_fits)."""
    h2 = h.reshape(-1, h.shape[-1])
    out = torch.empty(h2.shape[0], w.shape[0], dtype=h.dtype, device=h.device)
    spec = None
    if rope is not None:
        cos, sin = (t.float().contiguous() for t in rope)
        spec = (cos, sin, h.shape[-2], 2 * w.shape[0] // 3)
    _launch(h2, w, out, "rowscale", rowscale=sumsq, width=h.shape[-1], eps=eps, rope=spec)
    return out.view(*h.shape[:-1], w.shape[0])


def linear_gate(h: torch.Tensor, w13: torch.Tensor, sumsq: torch.Tensor, eps: float) -> torch.Tensor:
    """silu(g)·u of [g | u] = rmsnorm(h) @ w13ᵀ, w13 = folded([W1; W3], γ): …×K -> …×F."""
    h2 = h.reshape(-1, h.shape[-1])
    F = w13.shape[0] // 2
    out = torch.empty(h2.shape[0], F, dtype=h.dtype, device=h.device)
    _launch(h2, w13, out, "gate", rowscale=sumsq, width=h.shape[-1], eps=eps, gate_rows=F)
    return out.view(*h.shape[:-1], F)


def linear_residual(a: torch.Tensor, w: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + a @ wᵀ, each row's Σ of its squares): the stream after a branch and the next norm's statistic."""
    a2, x2 = a.reshape(-1, a.shape[-1]), x.reshape(-1, x.shape[-1])
    out = torch.empty_like(x2)
    sumsq = torch.zeros(x2.shape[0], dtype=_acc(x.dtype), device=x.device)
    _launch(a2, w, out, "residual", residual=x2.contiguous(), ss_out=sumsq)
    return out.view(x.shape), sumsq


def folded(weight: torch.Tensor, gain: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """W·diag(γ) (W alone for gain None) in dtype, computed in at least float32 and rounded once; W itself
    when there is nothing to do. Folded at every call rather than cached: a cache keyed by the weights'
    version counters would miss writes through `.data`. The cost, counted (not measured): one read and
    write of the QKV and W13 weights per block, ~350 MB per forward of S-B/16 in bf16, ~0.1 ms on an
    H200 (under autocast the casts of proj and W2 replace autocast's own)."""
    if gain is None:
        return weight.detach().to(dtype).contiguous()
    out = torch.empty(weight.shape, dtype=dtype, device=weight.device)
    return torch.mul(weight.detach(), gain.detach()[None, :], out=out)  # float32 math, one rounding
