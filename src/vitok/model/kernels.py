"""Fused Triton kernels for the Transformer's memory-bound glue (`model.kernels=triton`), each with its backward.

Outside the matmuls and attention, a block's time goes to moving activations through memory
(benchmarks/NOTES.md): residual adds, RMSNorm, the SiLU gate, RoPE and the q/k/v layout. Three
kernels cut the passes over them:

- `add_rmsnorm(x, delta, w)`: the residual add and the next RMSNorm in one read of x and delta,
  writing the new stream h = x + delta and y = rmsnorm(h)·w (in the autocast dtype, which the next
  matmul reads anyway). Backward: one pass per row for dx (= ddelta), with the weight's gradient
  summed per program and then over programs.
- `silu_mul(gu)`: silu(g)·u from the fused W1/W3 output [g | u], and its backward into one [dg | du].
- `rope_qkv(qkv, cos, sin, heads)`: the QKV matmul's B×L×3D output -> q, k (rotated) and v, token-major
  B×L×H×d (attention reads them transposed). Eager: q and k rotated inside that output, all three
  handed on as views of it; compiled: written to three new buffers. Backward rotates back into B×L×3D.
- `linear(x, weight)`: the blocks' matmuls under autocast, with the weight's gradient written by the
  GEMM in float32 (autocast's would come out in bf16 and take a cast kernel per weight).

Every op has a PyTorch reference (`*_reference`), the same arithmetic as the modules in blocks.py.
The fused ops run the Triton kernels on CUDA tensors (and on CPU tensors under TRITON_INTERPRET=1,
how the tests check the kernels without a GPU); elsewhere they run the reference, so a model with
kernels on still runs on a CPU. The Triton backward passes are hand-written; the tests compare forward
and backward with autograd through the reference in float64 (interpreted on CPU, and on the GPU).
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except Exception:  # ImportError, or a triton that does not match this torch
    triton = None

__all__ = ["triton_problem", "fused_now", "add_rmsnorm", "add_rmsnorm_reference", "silu_mul", "silu_mul_reference",
           "rope_qkv", "rope_qkv_reference", "linear"]


def triton_problem() -> str | None:
    """Why the Triton kernels cannot run here (with the fix), or None when they can."""
    if triton is None:
        return ("model.kernels=triton needs the triton package (it comes with CUDA builds of PyTorch on "
                "Linux); install it, or keep model.kernels=torch")
    return None


def fused_now(enabled: bool) -> bool:
    """Whether a module with kernels enabled takes the fused path in this call.

    Not when torch.compile traces an inference pass: there inductor's own fusions were faster on an
    H200 (S-B/16 256p compiled encode + decode 5,964 images/s plain against 5,406 fused), while
    training (compiled: 1,764 -> 1,864 images/s) and eager inference (3,147 -> 5,559) gain
    (benchmarks/NOTES.md).
    """
    return enabled and (torch.is_grad_enabled() or not torch.compiler.is_compiling())


def _use_triton(x: torch.Tensor) -> bool:
    return triton is not None and (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")


def _out_dtype(x: torch.Tensor) -> torch.dtype:
    """What a norm hands the next matmul: the autocast dtype under autocast, else x's dtype."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


# ---- references -----------------------------------------------------------------------------------


def _math(t: torch.Tensor) -> torch.Tensor:
    """t in the dtype its arithmetic runs in: float64 stays, everything else float32."""
    return t if t.dtype == torch.float64 else t.float()


def add_rmsnorm_reference(x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float,
                          out_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, y): h = x + delta in x's dtype (x itself without delta), y = rmsnorm(h)·weight in float32 math."""
    h = x if delta is None else x + delta.to(x.dtype)
    hf = _math(h)
    y = hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps) * weight.to(hf.dtype)
    return h, y.to(out_dtype or x.dtype)


def silu_mul_reference(gu: torch.Tensor) -> torch.Tensor:
    """silu(g)·u for gu = [g | u] along the last axis, in float32 math, gu's dtype out."""
    g, u = _math(gu).chunk(2, dim=-1)
    return (torch.nn.functional.silu(g) * u).to(gu.dtype)


def rope_qkv_reference(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                       heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """B×L×3D -> q, k, v (token-major B×L×H×d, contiguous), q and k rotated pairwise (j, j + P) by (cos, sin)
    (L×P), as blocks.apply_rope."""
    B, L, three_d = qkv.shape
    d = three_d // 3 // heads
    q, k, v = qkv.view(B, L, 3, heads, d).unbind(2)
    P = cos.shape[-1]

    def rotate(x: torch.Tensor) -> torch.Tensor:
        c, s = cos.to(x.dtype)[:, None], sin.to(x.dtype)[:, None]  # L×1×P: broadcast over the heads
        x1, x2, rest = x.split([P, P, d - 2 * P], dim=-1)
        return torch.cat([x1 * c - x2 * s, x1 * s + x2 * c, rest], dim=-1)

    return rotate(q), rotate(k), v.contiguous()


# ---- Triton kernels --------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _add_rmsnorm_fwd(X, DELTA, H, Y, W, RSTD, D, eps, HAS_DELTA: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < D
        x = tl.load(X + row * D + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_DELTA:
            x += tl.load(DELTA + row * D + cols, mask=mask, other=0.0).to(tl.float32)
            h = x.to(H.dtype.element_ty)
            tl.store(H + row * D + cols, h, mask=mask)
            x = h.to(tl.float32)  # normalise the stream as stored, as the reference does
        rstd = tl.rsqrt(tl.sum(x * x, axis=0) / D + eps)
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(Y + row * D + cols, (x * rstd * w).to(Y.dtype.element_ty), mask=mask)
        tl.store(RSTD + row, rstd)

    @triton.jit
    def _add_rmsnorm_bwd(DY, DH, H, W, RSTD, DX, DDELTA, DW, N, D, ROWS: tl.constexpr, RB: tl.constexpr,
                         HAS_DH: tl.constexpr, OWN_DDELTA: tl.constexpr, BLOCK: tl.constexpr):
        # ROWS rows per program, RB of them per iteration as one RB×BLOCK tile (more loads in flight per
        # program); the weight's gradient is summed over the program's rows.
        pid = tl.program_id(0)
        cols = tl.arange(0, BLOCK)[None, :]
        w = tl.load(W + cols, mask=cols < D, other=0.0).to(tl.float32)
        dw = tl.zeros([BLOCK], dtype=tl.float32)
        for i in range(0, ROWS, RB):
            rows = (pid * ROWS + i + tl.arange(0, RB)[:, None]).to(tl.int64)
            # Rows past N (the last program's tail) load zeros and store nothing.
            live = (rows < N) & (cols < D)
            h = tl.load(H + rows * D + cols, mask=live, other=0.0).to(tl.float32)
            dy = tl.load(DY + rows * D + cols, mask=live, other=0.0).to(tl.float32)
            rstd = tl.load(RSTD + rows, mask=rows < N, other=0.0)
            n = h * rstd
            dn = dy * w
            dx = rstd * (dn - n * (tl.sum(dn * n, axis=1)[:, None] / D))
            if HAS_DH:
                dx += tl.load(DH + rows * D + cols, mask=live, other=0.0).to(tl.float32)
            tl.store(DX + rows * D + cols, dx.to(DX.dtype.element_ty), mask=live)
            if OWN_DDELTA:  # delta's gradient in its own dtype (else the caller reuses dx)
                tl.store(DDELTA + rows * D + cols, dx.to(DDELTA.dtype.element_ty), mask=live)
            dw += tl.sum(dy * n, axis=0)
        tl.store(DW + pid * D + tl.arange(0, BLOCK), dw, mask=tl.arange(0, BLOCK) < D)

    @triton.jit
    def _silu_mul_fwd(GU, OUT, N, Hd, R: tl.constexpr, BLOCK: tl.constexpr):
        # An R×BLOCK tile: R rows, BLOCK hidden channels of each.
        rows = (tl.program_id(0) * R + tl.arange(0, R)[:, None]).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)[None, :]
        mask = (rows < N) & (cols < Hd)
        g = tl.load(GU + rows * 2 * Hd + cols, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(GU + rows * 2 * Hd + Hd + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(OUT + rows * Hd + cols, (g * tl.sigmoid(g) * u).to(OUT.dtype.element_ty), mask=mask)

    @triton.jit
    def _silu_mul_bwd(DOUT, GU, DGU, N, Hd, R: tl.constexpr, BLOCK: tl.constexpr):
        rows = (tl.program_id(0) * R + tl.arange(0, R)[:, None]).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)[None, :]
        mask = (rows < N) & (cols < Hd)
        g = tl.load(GU + rows * 2 * Hd + cols, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(GU + rows * 2 * Hd + Hd + cols, mask=mask, other=0.0).to(tl.float32)
        do = tl.load(DOUT + rows * Hd + cols, mask=mask, other=0.0).to(tl.float32)
        s = tl.sigmoid(g)
        tl.store(DGU + rows * 2 * Hd + cols, (do * u * s * (1 + g * (1 - s))).to(DGU.dtype.element_ty), mask=mask)
        tl.store(DGU + rows * 2 * Hd + Hd + cols, (do * g * s).to(DGU.dtype.element_ty), mask=mask)

    @triton.jit
    def _rope_layout(SRC, DST, COS, SIN, L, NH, HD, P, part, sign, ROTATE: tl.constexpr, TO_HEADS: tl.constexpr,
                     BH: tl.constexpr, BD: tl.constexpr):
        # One token's heads of one of q/k/v. TO_HEADS: B×L×3D -> B×L×H×d (forward); else the reverse.
        # Pair j < P rotates with j + P: y_j = x_j c - sign·x_{j+P} s, y_{j+P} = x_{j+P} c + sign·x_j s;
        # channels from 2P on (odd head widths) and v pass through unrotated.
        tok = tl.program_id(0).to(tl.int64)
        b, l = tok // L, tok % L
        h = tl.arange(0, BH)[:, None]
        j = tl.arange(0, BD)[None, :]
        mask = (h < NH) & (j < HD)
        if ROTATE:  # q and k; v (part 2) passes through
            rot = j < 2 * P
        else:
            rot = j < 0
        first = j < P
        partner = tl.where(rot, tl.where(first, j + P, j - P), j)
        k = tl.where(first, j, j - P)
        c = tl.load(COS + l * P + k, mask=mask & rot, other=1.0).to(tl.float32)
        s = tl.load(SIN + l * P + k, mask=mask & rot, other=0.0).to(tl.float32)
        s = tl.where(rot, tl.where(first, -s, s), 0.0) * sign
        D = NH * HD
        flat = b * L * 3 * D + l * 3 * D + part * D + h * HD   # B×L×3D layout, channel 0 of head h
        heads = ((b * L + l) * NH + h) * HD                    # B×L×H×d layout (token-major)
        src_row, dst_row = (flat, heads) if TO_HEADS else (heads, flat)
        x = tl.load(SRC + src_row + j, mask=mask, other=0.0).to(tl.float32)
        xp = tl.load(SRC + src_row + partner, mask=mask, other=0.0).to(tl.float32)
        tl.store(DST + dst_row + j, (x * c + xp * s).to(DST.dtype.element_ty), mask=mask)

    @triton.jit
    def _rope_qk_inplace(QKV, COS, SIN, L, NH, HD, P, BH: tl.constexpr, BP: tl.constexpr):
        # One token's q and k (parts 0 and 1 of its B×L×3D row) rotated where they lie; v is not touched.
        # The halves x1 = channels [0, P) and x2 = [P, 2P) of a head are loaded as two tiles of one shape,
        # so the thread that stores channel j and j + P is the one that loaded both: no other thread
        # reads what it overwrites.
        tok = tl.program_id(0).to(tl.int64)
        l = tok % L
        h = tl.arange(0, BH)[:, None]
        j = tl.arange(0, BP)[None, :]
        mask = (h < NH) & (j < P)
        c = tl.load(COS + l * P + j, mask=j < P, other=1.0).to(tl.float32)
        s = tl.load(SIN + l * P + j, mask=j < P, other=0.0).to(tl.float32)
        for part in tl.static_range(2):
            ptr = QKV + tok * 3 * NH * HD + part * NH * HD + h * HD + j
            x1 = tl.load(ptr, mask=mask, other=0.0).to(tl.float32)
            x2 = tl.load(ptr + P, mask=mask, other=0.0).to(tl.float32)
            tl.store(ptr, (x1 * c - x2 * s).to(QKV.dtype.element_ty), mask=mask)
            tl.store(ptr + P, (x1 * s + x2 * c).to(QKV.dtype.element_ty), mask=mask)


# ---- autograd functions ------------------------------------------------------------------------


class _AddRMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, delta, weight, eps, out_dtype):
        D = x.shape[-1]
        x2 = x.reshape(-1, D).contiguous()
        d2 = None if delta is None else delta.reshape(-1, D).contiguous()
        h = torch.empty_like(x2) if delta is not None else x2
        y = torch.empty(x2.shape, dtype=out_dtype, device=x.device)
        rstd = torch.empty(x2.shape[0], dtype=torch.float32, device=x.device)
        _add_rmsnorm_fwd[(x2.shape[0],)](x2, d2 if d2 is not None else x2, h, y, weight, rstd, D, eps,
                                         HAS_DELTA=delta is not None, BLOCK=triton.next_power_of_2(D))
        ctx.save_for_backward(h, weight, rstd)
        ctx.has_delta, ctx.delta_dtype, ctx.shape = delta is not None, None if delta is None else delta.dtype, x.shape
        if delta is None:
            return y.view(x.shape)
        return h.view(x.shape), y.view(x.shape)

    @staticmethod
    def backward(ctx, *grads):
        h, weight, rstd = ctx.saved_tensors
        dh, dy = grads if ctx.has_delta else (None, grads[0])
        N, D = h.shape
        if dy is None:
            dy = torch.zeros(h.shape, dtype=h.dtype, device=h.device)
        dy = dy.reshape(N, D).contiguous()
        dh = None if dh is None else dh.reshape(N, D).contiguous()
        dx = torch.empty_like(h)
        # h = x + delta, so both get the same gradient: one tensor serves both unless delta's dtype
        # differs (a float32 stream with bf16 branch outputs), which needs its own cast copy. Shared in
        # eager only: a compiled backward keeps the form tested on the GPU, since a RoPE kernel that
        # returned aliased tensors crashed a compiled step there, cause not found (benchmarks/NOTES.md).
        own_ddelta = ctx.has_delta and (ctx.delta_dtype != h.dtype or torch.compiler.is_compiling())
        ddelta = torch.empty(h.shape, dtype=ctx.delta_dtype, device=h.device) if own_ddelta else dx
        dw = _add_rmsnorm_bwd_launch(dy, dh, h, weight, rstd, dx, ddelta, own_ddelta)
        dweight = dw.sum(0).to(weight.dtype)
        dx = dx.view(ctx.shape)
        if ctx.has_delta:
            return dx, (ddelta.view(ctx.shape) if own_ddelta else dx), dweight, None, None
        return dx, None, dweight, None, None


# Launch shapes of the memory-bound kernels: add_rmsnorm_bwd: programs, rows per iteration (rb), warps;
# silu_mul_*: rows per tile (r), channels per tile (block, at most the hidden width's power of two),
# warps. The fastest of benchmarks/kernel_tune.py's candidates on an H200 at S-B/16's training sizes
# (kernel times 66 -> 56, 96 -> 94 and 163 -> 159 µs against the first shapes; benchmarks/NOTES.md).
TUNING = {
    "add_rmsnorm_bwd": {"programs": 1024, "rb": 4, "num_warps": 4},
    "silu_mul_fwd": {"r": 1, "block": 2048, "num_warps": 8},
    "silu_mul_bwd": {"r": 2, "block": 2048, "num_warps": 8},
}


def _add_rmsnorm_bwd_launch(dy, dh, h, weight, rstd, dx, ddelta, own_ddelta: bool) -> torch.Tensor:
    """The norm's backward kernel into dx (and ddelta); returns the per-program weight gradients."""
    N, D = h.shape
    cfg = TUNING["add_rmsnorm_bwd"]
    programs = max(1, min(N, cfg["programs"]))  # a few per SM; each sums its rows' weight gradient
    rb = cfg["rb"]
    rows = triton.cdiv(triton.cdiv(N, programs), rb) * rb
    programs = triton.cdiv(N, rows)
    dw = torch.empty(programs, D, dtype=torch.float32, device=h.device)
    _add_rmsnorm_bwd[(programs,)](dy, dh if dh is not None else dy, h, weight, rstd, dx, ddelta, dw, N, D,
                                  ROWS=rows, RB=rb, HAS_DH=dh is not None, OWN_DDELTA=own_ddelta,
                                  BLOCK=triton.next_power_of_2(D), num_warps=cfg["num_warps"])
    return dw


def _silu_mul_launch(name: str, *tensors) -> None:
    """_silu_mul_fwd (gu, out) or _silu_mul_bwd (dout, gu, dgu) over gu's rows."""
    gu = tensors[0] if name == "silu_mul_fwd" else tensors[1]
    Hd = gu.shape[-1] // 2
    rows = gu.numel() // (2 * Hd)
    cfg = TUNING[name]
    block = min(cfg["block"], triton.next_power_of_2(Hd))
    kernel = _silu_mul_fwd if name == "silu_mul_fwd" else _silu_mul_bwd
    kernel[(triton.cdiv(rows, cfg["r"]), triton.cdiv(Hd, block))](*tensors, rows, Hd, R=cfg["r"], BLOCK=block,
                                                                  num_warps=cfg["num_warps"])


class _SiluMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gu):
        gu = gu.contiguous()
        Hd = gu.shape[-1] // 2
        out = torch.empty(*gu.shape[:-1], Hd, dtype=gu.dtype, device=gu.device)
        _silu_mul_launch("silu_mul_fwd", gu, out)
        ctx.save_for_backward(gu)
        return out

    @staticmethod
    def backward(ctx, dout):
        (gu,) = ctx.saved_tensors
        dgu = torch.empty_like(gu)
        _silu_mul_launch("silu_mul_bwd", dout.contiguous(), gu, dgu)
        return dgu


def _rope_launch(src, dst, cos, sin, B, L, heads, d, part, sign, to_heads):
    _rope_layout[(B * L,)](src, dst, cos, sin, L, heads, d, cos.shape[-1], part, sign, ROTATE=part < 2,
                           TO_HEADS=to_heads, BH=triton.next_power_of_2(heads), BD=triton.next_power_of_2(d))


class _RopeQKV(torch.autograd.Function):
    """in_place False (under torch.compile): q, k, v written to three new buffers, three launches.

    in_place True (eager): q and k rotated inside the QKV matmul's output in one launch, q, k and v
    handed on as views of it: 4D instead of 6D elements per token moved (v is never copied, q and k
    are not written to new buffers), and no more memory held: attention keeps the three views (one 3D
    buffer) where it kept three D buffers. The output of the QKV matmul is consumed: its backward needs
    only its input and weight, and nothing else reads it (a forward hook on that layer that keeps its
    output would see it rotated). Not under torch.compile: returning views of an input is what crashed
    a compiled step on the GPU with an earlier kernel (benchmarks/NOTES.md).
    The backward (both forms) rotates dq and dk back and copies dv into the B×L×3D gradient.
    """

    @staticmethod
    def forward(ctx, qkv, cos, sin, heads, in_place=False):
        qkv = qkv.contiguous()
        B, L, three_d = qkv.shape
        d = three_d // 3 // heads
        cos, sin = cos.float().contiguous(), sin.float().contiguous()
        ctx.save_for_backward(cos, sin)
        ctx.dims = (B, L, heads, d)
        if in_place:
            P = cos.shape[-1]
            _rope_qk_inplace[(B * L,)](qkv, cos, sin, L, heads, d, P, BH=triton.next_power_of_2(heads),
                                       BP=triton.next_power_of_2(P))
            return qkv.view(B, L, 3, heads, d).unbind(2)
        outs = []
        for part in range(3):
            out = torch.empty(B, L, heads, d, dtype=qkv.dtype, device=qkv.device)
            _rope_launch(qkv, out, cos, sin, B, L, heads, d, part, 1.0, True)
            outs.append(out)
        return tuple(outs)

    @staticmethod
    def backward(ctx, dq, dk, dv):
        cos, sin = ctx.saved_tensors
        B, L, heads, d = ctx.dims
        ref = next(g for g in (dq, dk, dv) if g is not None)
        dqkv = torch.empty(B, L, 3 * heads * d, dtype=ref.dtype, device=ref.device)
        for part, g in enumerate((dq, dk, dv)):
            g = torch.zeros_like(ref) if g is None else g.contiguous()
            _rope_launch(g, dqkv, cos, sin, B, L, heads, d, part, -1.0, False)  # the inverse rotation
        return dqkv, None, None, None, None


_MM_OUT_DTYPE = [True]  # cleared when this build's mm refuses out_dtype, so it is tried once


def _weight_grad(dy: torch.Tensor, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """dyᵀ·x (N×M, N×K -> M×K) in dtype, straight from the GEMM where the build has mm's out_dtype."""
    if _MM_OUT_DTYPE[0] and dy.is_cuda and dy.dtype in (torch.float16, torch.bfloat16) and dtype == torch.float32:
        try:
            return torch.mm(dy.t(), x, out_dtype=dtype)
        except torch.cuda.OutOfMemoryError:
            raise
        except (RuntimeError, TypeError, NotImplementedError):  # an older build: the cast below
            _MM_OUT_DTYPE[0] = False
    return (dy.t() @ x).to(dtype)


class _Linear(torch.autograd.Function):
    # x·wᵀ in x's (autocast) dtype with weight kept in its own. Autocast saves the same low-precision
    # copy of the weight; what differs is the weight's gradient: written by the GEMM in float32 instead
    # of in bf16 and then cast (one more read and write of every weight per step).
    @staticmethod
    def forward(ctx, x, weight):
        w = weight.to(x.dtype)
        ctx.save_for_backward(x, w)
        ctx.weight_dtype = weight.dtype
        return torch.nn.functional.linear(x, w)

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        dy = dy.to(x.dtype)
        dx = dy @ w if ctx.needs_input_grad[0] else None
        dw = _weight_grad(dy.reshape(-1, dy.shape[-1]), x.reshape(-1, x.shape[-1]), ctx.weight_dtype)
        return dx, dw


# ---- the ops -----------------------------------------------------------------------------------------


def add_rmsnorm(x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float):
    """delta given: (x + delta, rmsnorm(x + delta)·weight); delta None: rmsnorm(x)·weight alone.

    The norm's output is in the autocast dtype under autocast (the next matmul's input), else x's.
    """
    out_dtype = _out_dtype(x)
    if not _use_triton(x):
        h, y = add_rmsnorm_reference(x, delta, weight, eps, out_dtype)
        return y if delta is None else (h, y)
    return _AddRMSNorm.apply(x, delta, weight, eps, out_dtype)


def silu_mul(gu: torch.Tensor) -> torch.Tensor:
    """silu(g)·u for gu = [g | u] on the last axis."""
    if not _use_triton(gu):
        return silu_mul_reference(gu)
    if torch.is_autocast_enabled(gu.device.type):
        gu = gu.to(torch.get_autocast_dtype(gu.device.type))
    return _SiluMul.apply(gu)


def rope_qkv(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int):
    """The QKV matmul's B×L×3D output -> (q, k, v), token-major B×L×H×d each (SDPA takes them transposed),
    q and k rotated (blocks.apply_rope's pairs)."""
    if not _use_triton(qkv):
        return rope_qkv_reference(qkv, cos, sin, heads)
    return _RopeQKV.apply(qkv, cos, sin, heads, not torch.compiler.is_compiling())


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """F.linear(x, weight) without bias. Under autocast, with a float32 weight that takes a gradient and
    outside torch.compile (inductor plans its own casts), it runs as _Linear: the same product, with the
    weight's gradient computed into float32 by the GEMM rather than cast from bf16 afterwards."""
    device = x.device.type
    if (torch.is_autocast_enabled(device) and weight.dtype == torch.float32 and weight.requires_grad
            and torch.is_grad_enabled() and not torch.compiler.is_compiling()):
        return _Linear.apply(x.to(torch.get_autocast_dtype(device)), weight)
    return torch.nn.functional.linear(x, weight)
