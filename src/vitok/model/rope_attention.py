"""Attention with the rotary embedding inside the kernel (`model.kernels=triton`, eager), forward and backward.

Why a kernel of our own: with cuDNN's attention, RoPE is a pass of its own each way. The forward
rotates q and k in the QKV matmul's output (4D elements per token moved); the backward receives dq,
dk and dv as three buffers that cuDNN allocates, and must rotate dq and dk back and copy all three
into one B×L×3D gradient for the QKV matmul (6D per token), besides cuDNN's own helpers (rowsum(dO·O)
and dq's float32 -> bf16 conversion). Here the kernels read q, k and v straight from the QKV output,
rotate q and k in registers as they load them, and write dq, dk (rotated back) and dv straight into
one B×L×3D gradient: no RoPE pass, no copies (benchmarks/NOTES.md, eighth session).

The arithmetic is flash attention's (Dao, 2023): the forward keeps a running max and sum per query
row and stores its log-sum-exp; the backward recomputes the probabilities block by block, one kernel
for dk and dv (each program one block of keys, looping over the queries) and one for dq (each program
one block of queries, looping over the keys), so no program adds into another's output. Rotated q and
k are rounded to the input dtype before their products, as `blocks.apply_rope` rounds them.

Shapes it takes: head width d = 2P with P a power of two >= 16 (32, 64, 128, 256), no q/k norm, no
mask; anything else keeps the cuDNN path (`supported`). The reference is `reference` (RoPE, then
softmax attention in float64 or float32 math), which the tests differentiate with autograd.
"""

from __future__ import annotations

import math
import os

import torch

from .kernels import rope_qkv_reference, triton

if triton is not None:
    import triton.language as tl

__all__ = ["supported", "usable", "rope_attention", "reference", "TUNING"]

# Launch shapes (block sizes and warps) per kernel; the defaults are what benchmarks/attention_tune.py
# picked on an H200 at S-B/16's training shapes (B=128, L=256, 12 heads of 64).
TUNING = {
    "fwd": {"block_m": 128, "block_n": 64, "num_warps": 4, "num_stages": 2},
    "bwd_dkdv": {"block_m": 32, "block_n": 128, "num_warps": 8, "num_stages": 2},
    "bwd_dq": {"block_m": 128, "block_n": 32, "num_warps": 8, "num_stages": 2},
}


def supported(qkv: torch.Tensor, cos: torch.Tensor, heads: int) -> bool:
    """Whether the fused kernel takes this call: a B×L×3D input, d = 2P, P a power of two in [16, 128]."""
    if triton is None or qkv.dim() != 3 or qkv.shape[-1] % (3 * heads):
        return False
    d = qkv.shape[-1] // 3 // heads
    P = cos.shape[-1]
    return d == 2 * P and 16 <= P <= 128 and (P & (P - 1)) == 0 and qkv.dtype in (
        torch.float16, torch.bfloat16, torch.float32, torch.float64)


def usable(qkv: torch.Tensor, cos: torch.Tensor, heads: int) -> bool:
    """Whether the fused path of `blocks.Attention` runs this kernel: a supported shape, Triton able to run
    on qkv's device (CUDA, or the CPU under TRITON_INTERPRET=1), and not inside torch.compile (whose
    graphs keep cuDNN's attention and `kernels.rope_qkv`)."""
    return supported(qkv, cos, heads) and _triton_runs(qkv) and not torch.compiler.is_compiling()


def _triton_runs(qkv: torch.Tensor) -> bool:
    # On the CPU only under the interpreter, and not in bf16 there: the interpreter's tl.dot multiplies
    # bf16 tiles wrongly (numpy has no bf16; checked with Triton 3.6), so CPU bf16 takes the reference.
    return qkv.is_cuda or (os.environ.get("TRITON_INTERPRET") == "1" and qkv.dtype != torch.bfloat16)


def reference(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int) -> torch.Tensor:
    """B×L×3D -> B×L×D: q and k rotated (kernels.rope_qkv_reference), then softmax(q·kᵀ/√d)·v per head."""
    q, k, v = rope_qkv_reference(qkv, cos, sin, heads)  # B×L×H×d
    B, L, H, d = q.shape
    math_dtype = torch.float64 if qkv.dtype == torch.float64 else torch.float32
    q, k, v = (t.to(math_dtype).transpose(1, 2) for t in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
    return (weights @ v).transpose(1, 2).reshape(B, L, H * d).to(qkv.dtype)


if triton is not None:

    @triton.jit
    def _load_rotated(base, rows, L, stride, P: tl.constexpr, COS, SIN, DT: tl.constexpr):
        # Rows `rows` of one head's q or k (channels [0, P) and [P, 2P)), rotated and rounded to DT.
        cols = tl.arange(0, P)[None, :]
        valid = (rows < L)[:, None]
        x1 = tl.load(base + rows[:, None] * stride + cols, mask=valid, other=0.0)
        x2 = tl.load(base + rows[:, None] * stride + P + cols, mask=valid, other=0.0)
        c = tl.load(COS + rows[:, None] * P + cols, mask=valid, other=1.0)
        s = tl.load(SIN + rows[:, None] * P + cols, mask=valid, other=0.0)
        return (x1 * c - x2 * s).to(DT), (x1 * s + x2 * c).to(DT)

    @triton.jit
    def _store_unrotated(base, rows, L, stride, P: tl.constexpr, COS, SIN, g1, g2):
        # The gradient of rotated rows taken back through the rotation (its transpose), stored.
        cols = tl.arange(0, P)[None, :]
        valid = (rows < L)[:, None]
        c = tl.load(COS + rows[:, None] * P + cols, mask=valid, other=1.0)
        s = tl.load(SIN + rows[:, None] * P + cols, mask=valid, other=0.0)
        ty = base.dtype.element_ty
        tl.store(base + rows[:, None] * stride + cols, (g1 * c + g2 * s).to(ty), mask=valid)
        tl.store(base + rows[:, None] * stride + P + cols, (g2 * c - g1 * s).to(ty), mask=valid)

    @triton.jit
    def _fwd(QKV, COS, SIN, O, LSE, L, NH, qk_scale, P: tl.constexpr, BLOCK_M: tl.constexpr,
             BLOCK_N: tl.constexpr, STORE_LSE: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr):
        # One block of queries of one (sample, head). qk_scale = log2(e)/√d: exp2 instead of exp.
        HD: tl.constexpr = 2 * P
        DT: tl.constexpr = QKV.dtype.element_ty
        pid_m = tl.program_id(0)
        bh = tl.program_id(1).to(tl.int64)
        b, h = bh // NH, bh % NH
        D = NH * HD
        stride = 3 * D
        base = QKV + b * L * stride + h * HD
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        q1, q2 = _load_rotated(base, rows, L, stride, P, COS, SIN, DT)
        cols = tl.arange(0, HD)[None, :]
        m_i = tl.full([BLOCK_M], float("-inf"), ACC)
        l_i = tl.zeros([BLOCK_M], ACC)
        acc = tl.zeros([BLOCK_M, HD], ACC)
        for start in range(0, L, BLOCK_N):
            keys = start + tl.arange(0, BLOCK_N)
            k1, k2 = _load_rotated(base + D, keys, L, stride, P, COS, SIN, DT)
            s = tl.dot(q1, tl.trans(k1), input_precision=PRECISION)
            s = tl.dot(q2, tl.trans(k2), s, input_precision=PRECISION) * qk_scale
            s = tl.where((keys < L)[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.exp2(s - m_new[:, None])
            alpha = tl.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(base + 2 * D + keys[:, None] * stride + cols, mask=(keys < L)[:, None], other=0.0)
            acc = tl.dot(p.to(DT), v, acc * alpha[:, None], input_precision=PRECISION)
            m_i = m_new
        out = acc / l_i[:, None]
        valid = rows < L
        tl.store(O + ((b * L + rows[:, None]) * NH + h) * HD + cols, out.to(O.dtype.element_ty),
                 mask=valid[:, None])
        if STORE_LSE:
            tl.store(LSE + bh * L + rows, m_i + tl.log2(l_i), mask=valid)

    @triton.jit
    def _bwd_delta(O, DO, DELTA, N, L, NH, HD: tl.constexpr, BLOCK: tl.constexpr):
        # rowsum(dO·O) per (token, head) row of the B×L×H×d output, stored (sample, head)-major like
        # the log-sum-exp.
        rows = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
        cols = tl.arange(0, HD)[None, :]
        valid = rows < N
        o = tl.load(O + rows[:, None] * HD + cols, mask=valid[:, None], other=0.0).to(DELTA.dtype.element_ty)
        do = tl.load(DO + rows[:, None] * HD + cols, mask=valid[:, None], other=0.0).to(DELTA.dtype.element_ty)
        tok, h = rows // NH, rows % NH
        b, l = tok // L, tok % L
        tl.store(DELTA + (b * NH + h) * L + l, tl.sum(o * do, 1), mask=valid)

    @triton.jit
    def _bwd_dkdv(QKV, COS, SIN, DO, LSE, DELTA, DQKV, L, NH, qk_scale, sm_scale, P: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr):
        # One block of keys of one (sample, head): dk and dv summed over every query block.
        HD: tl.constexpr = 2 * P
        DT: tl.constexpr = QKV.dtype.element_ty
        pid_n = tl.program_id(0)
        bh = tl.program_id(1).to(tl.int64)
        b, h = bh // NH, bh % NH
        D = NH * HD
        stride = 3 * D
        base = QKV + b * L * stride + h * HD
        keys = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = tl.arange(0, HD)[None, :]
        k1, k2 = _load_rotated(base + D, keys, L, stride, P, COS, SIN, DT)
        v = tl.load(base + 2 * D + keys[:, None] * stride + cols, mask=(keys < L)[:, None], other=0.0)
        dk1 = tl.zeros([BLOCK_N, P], ACC)
        dk2 = tl.zeros([BLOCK_N, P], ACC)
        dv = tl.zeros([BLOCK_N, HD], ACC)
        for start in range(0, L, BLOCK_M):
            rows = start + tl.arange(0, BLOCK_M)
            valid = rows < L
            q1, q2 = _load_rotated(base, rows, L, stride, P, COS, SIN, DT)
            do = tl.load(DO + ((b * L + rows[:, None]) * NH + h) * HD + cols, mask=valid[:, None], other=0.0)
            lse = tl.load(LSE + bh * L + rows, mask=valid, other=float("inf"))  # padded rows: p = 0
            delta = tl.load(DELTA + bh * L + rows, mask=valid, other=0.0)
            st = tl.dot(k1, tl.trans(q1), input_precision=PRECISION)
            st = tl.dot(k2, tl.trans(q2), st, input_precision=PRECISION)
            pt = tl.exp2(st * qk_scale - lse[None, :])  # keys × queries
            dv = tl.dot(pt.to(DT), do, dv, input_precision=PRECISION)
            dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
            dst = (pt * (dpt - delta[None, :])).to(DT)
            dk1 = tl.dot(dst, q1, dk1, input_precision=PRECISION)
            dk2 = tl.dot(dst, q2, dk2, input_precision=PRECISION)
        out = DQKV + b * L * stride + h * HD
        _store_unrotated(out + D, keys, L, stride, P, COS, SIN, dk1 * sm_scale, dk2 * sm_scale)
        tl.store(out + 2 * D + keys[:, None] * stride + cols, dv.to(DQKV.dtype.element_ty),
                 mask=(keys < L)[:, None])

    @triton.jit
    def _bwd_dq(QKV, COS, SIN, DO, LSE, DELTA, DQKV, L, NH, qk_scale, sm_scale, P: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr):
        # One block of queries of one (sample, head): dq summed over every key block.
        HD: tl.constexpr = 2 * P
        DT: tl.constexpr = QKV.dtype.element_ty
        pid_m = tl.program_id(0)
        bh = tl.program_id(1).to(tl.int64)
        b, h = bh // NH, bh % NH
        D = NH * HD
        stride = 3 * D
        base = QKV + b * L * stride + h * HD
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        valid = rows < L
        cols = tl.arange(0, HD)[None, :]
        q1, q2 = _load_rotated(base, rows, L, stride, P, COS, SIN, DT)
        do = tl.load(DO + ((b * L + rows[:, None]) * NH + h) * HD + cols, mask=valid[:, None], other=0.0)
        lse = tl.load(LSE + bh * L + rows, mask=valid, other=float("inf"))
        delta = tl.load(DELTA + bh * L + rows, mask=valid, other=0.0)
        dq1 = tl.zeros([BLOCK_M, P], ACC)
        dq2 = tl.zeros([BLOCK_M, P], ACC)
        for start in range(0, L, BLOCK_N):
            keys = start + tl.arange(0, BLOCK_N)
            k1, k2 = _load_rotated(base + D, keys, L, stride, P, COS, SIN, DT)
            v = tl.load(base + 2 * D + keys[:, None] * stride + cols, mask=(keys < L)[:, None], other=0.0)
            s = tl.dot(q1, tl.trans(k1), input_precision=PRECISION)
            s = tl.dot(q2, tl.trans(k2), s, input_precision=PRECISION)
            p = tl.exp2(s * qk_scale - lse[:, None])
            p = tl.where((keys < L)[None, :], p, 0.0)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            ds = (p * (dp - delta[:, None])).to(DT)
            dq1 = tl.dot(ds, k1, dq1, input_precision=PRECISION)
            dq2 = tl.dot(ds, k2, dq2, input_precision=PRECISION)
        _store_unrotated(DQKV + b * L * stride + h * HD, rows, L, stride, P, COS, SIN, dq1 * sm_scale,
                         dq2 * sm_scale)


def _math(dtype: torch.dtype) -> dict:
    # float32 and float64 (the tests) multiply exactly, float64 also accumulating in float64 (Triton's
    # interpreter mixes a float64 product into a float32 accumulator wrongly); half types take the
    # tensor cores with float32 accumulators.
    exact = dtype in (torch.float32, torch.float64)
    return {"PRECISION": "ieee" if exact else None, "ACC": tl.float64 if dtype == torch.float64 else tl.float32}


def _stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """The row statistics' dtype (log-sum-exp, rowsum(dO·O)): float32, float64 for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _launch(kernel, grid, *args, name: str, **constexprs):
    shape = TUNING[name]
    kernel[grid](*args, BLOCK_M=shape["block_m"], BLOCK_N=shape["block_n"], num_warps=shape["num_warps"],
                 num_stages=shape["num_stages"], **constexprs)


def forward(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int,
            with_lse: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The forward kernel: (B×L×D output, B·H×L log2-sum-exp or None)."""
    B, L, three_d = qkv.shape
    d = three_d // 3 // heads
    P = d // 2
    out = torch.empty(B, L, heads * d, dtype=qkv.dtype, device=qkv.device)
    lse = torch.empty(B * heads, L, dtype=_stat_dtype(qkv.dtype), device=qkv.device) if with_lse else out
    grid = (triton.cdiv(L, TUNING["fwd"]["block_m"]), B * heads)
    _launch(_fwd, grid, qkv, cos, sin, out, lse, L, heads, math.log2(math.e) / math.sqrt(d), P=P,
            STORE_LSE=with_lse, name="fwd", **_math(qkv.dtype))
    return out, (lse if with_lse else None)


def row_dots(out: torch.Tensor, dout: torch.Tensor, heads: int) -> torch.Tensor:
    """rowsum(dO·O) per (sample, head, token): the backward's correction term (B·H×L)."""
    B, L, D = out.shape
    N = B * L * heads
    delta = torch.empty(B * heads, L, dtype=_stat_dtype(out.dtype), device=out.device)
    _bwd_delta[(triton.cdiv(N, _DELTA_ROWS),)](out, dout, delta, N, L, heads, HD=D // heads, BLOCK=_DELTA_ROWS)
    return delta


def launch_grads(kernel: str, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int,
                 dout: torch.Tensor, lse: torch.Tensor, delta: torch.Tensor, dqkv: torch.Tensor) -> None:
    """One backward kernel ("bwd_dkdv": dk and dv; "bwd_dq": dq) into its parts of dqkv."""
    B, L, three_d = qkv.shape
    d = three_d // 3 // heads
    fn, axis = {"bwd_dkdv": (_bwd_dkdv, "block_n"), "bwd_dq": (_bwd_dq, "block_m")}[kernel]
    _launch(fn, (triton.cdiv(L, TUNING[kernel][axis]), B * heads), qkv, cos, sin, dout, lse, delta, dqkv, L,
            heads, math.log2(math.e) / math.sqrt(d), 1 / math.sqrt(d), P=d // 2, name=kernel, **_math(qkv.dtype))


def backward(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, out: torch.Tensor,
             lse: torch.Tensor, dout: torch.Tensor) -> torch.Tensor:
    """The three backward kernels: dO -> the B×L×3D gradient of the QKV matmul's output."""
    delta = row_dots(out, dout, heads)
    dqkv = torch.empty_like(qkv)
    for kernel in ("bwd_dkdv", "bwd_dq"):
        launch_grads(kernel, qkv, cos, sin, heads, dout, lse, delta, dqkv)
    return dqkv


_DELTA_ROWS = 64


class _RopeAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, cos, sin, heads):
        out, lse = forward(qkv, cos, sin, heads, with_lse=True)
        ctx.save_for_backward(qkv, cos, sin, out, lse)
        ctx.heads = heads
        return out

    @staticmethod
    def backward(ctx, dout):
        qkv, cos, sin, out, lse = ctx.saved_tensors
        return backward(qkv, cos, sin, ctx.heads, out, lse, dout.contiguous()), None, None, None


def rope_attention(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int) -> torch.Tensor:
    """The QKV matmul's B×L×3D output -> the attention output B×L×D (heads side by side, the projection's
    input): q and k rotated by (cos, sin) (L×P, pairs (j, j + P)), softmax(q·kᵀ/√d)·v, in one kernel.

    Call only where `supported(qkv, cos, heads)`; the Triton kernels run on CUDA tensors and, under
    TRITON_INTERPRET=1, on CPU tensors other than bf16 (the tests); elsewhere the reference runs.
    """
    if not supported(qkv, cos, heads):
        raise ValueError(f"rope_attention: input {tuple(qkv.shape)} {qkv.dtype} with {heads} heads and "
                         f"{cos.shape[-1]} rotation pairs is not a shape the kernel takes (see supported())")
    qkv = qkv.contiguous()
    cos, sin = cos.float().contiguous(), sin.float().contiguous()
    if not _triton_runs(qkv):
        return reference(qkv, cos, sin, heads)
    if torch.is_grad_enabled() and qkv.requires_grad:
        return _RopeAttention.apply(qkv, cos, sin, heads)
    return forward(qkv, cos, sin, heads, with_lse=False)[0]
