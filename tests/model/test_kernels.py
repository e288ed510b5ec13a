"""The fused kernels (model/kernels.py) against independent references, forward and backward.

Three layers: the references against the modules of blocks.py (always); the Triton kernels against
autograd through the references in float64, run by Triton's interpreter on CPU when triton is
installed (TRITON_INTERPRET=1, set before triton is imported: `TRITON_INTERPRET=1 pytest
tests/model/test_kernels.py`) or on the GPU; and a whole model with kernels on against the same
model with kernels off.
"""

from __future__ import annotations

import os

import pytest
import torch

from vitok.model import kernels
from vitok.model.blocks import Block, RMSNorm, SwiGLU, Transformer, apply_rope, rope_angles, rope_tables
from vitok.model.kernels import (add_rmsnorm, add_rmsnorm_reference, rope_qkv, rope_qkv_reference, silu_mul,
                                 silu_mul_reference)

ON_GPU = torch.cuda.is_available() and kernels.triton is not None
INTERPRETED = kernels.triton is not None and os.environ.get("TRITON_INTERPRET") == "1"
needs_triton = pytest.mark.skipif(not (ON_GPU or INTERPRETED),
                                  reason="Triton kernels run on CUDA, or on CPU under TRITON_INTERPRET=1")
DEVICE = "cuda" if ON_GPU else "cpu"


def rope_for(L_grid, d):
    return rope_tables(rope_angles(L_grid, d))


# ---- references against the modules they replace ---------------------------------------------------


def test_add_rmsnorm_reference_is_residual_add_then_rmsnorm():
    torch.manual_seed(0)
    norm = RMSNorm(24)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x, delta = torch.randn(2, 5, 24, dtype=torch.float64), torch.randn(2, 5, 24, dtype=torch.float64)
    h, y = add_rmsnorm_reference(x, delta, norm.weight.double(), norm.eps)
    norm = norm.double()
    torch.testing.assert_close(h, x + delta)
    torch.testing.assert_close(y, norm(x + delta))
    # Independent formula: y = h / sqrt(mean(h^2) + eps) * w.
    torch.testing.assert_close(y, h / (h.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt() * norm.weight)


def test_silu_mul_reference_is_the_swiglu_gate():
    torch.manual_seed(0)
    gu = torch.randn(3, 7, 20, dtype=torch.float64)
    g, u = gu[..., :10], gu[..., 10:]
    torch.testing.assert_close(silu_mul_reference(gu), g / (1 + torch.exp(-g)) * u)


@pytest.mark.parametrize("heads, d, grid", [(2, 16, (3, 4)), (3, 10, (2, 2, 3)), (1, 9, (5,))])
def test_rope_qkv_reference_matches_apply_rope_and_the_layout(heads, d, grid):
    torch.manual_seed(0)
    L = 1
    for n in grid:
        L *= n
    qkv = torch.randn(2, L, 3 * heads * d, dtype=torch.float64)
    cos, sin = (t.double() for t in rope_for(grid, d))
    q, k, v = rope_qkv_reference(qkv, cos, sin, heads)
    # apply_rope on the head-major layout the attention used before, transposed back to token-major.
    q0, k0, v0 = qkv.view(2, L, 3, heads, d).permute(2, 0, 3, 1, 4).unbind(0)
    torch.testing.assert_close(q, apply_rope(q0, (cos, sin)).transpose(1, 2))
    torch.testing.assert_close(k, apply_rope(k0, (cos, sin)).transpose(1, 2))
    torch.testing.assert_close(v, v0.transpose(1, 2))
    assert q.is_contiguous() and k.is_contiguous() and v.is_contiguous() and q.shape == (2, L, heads, d)
    # A rotation: norms of every pair are kept.
    torch.testing.assert_close(q.norm(dim=-1), q0.norm(dim=-1).transpose(1, 2))


# ---- the Triton kernels -----------------------------------------------------------------------------


def grads(fn, *inputs, seed=1):
    """Outputs of fn and the gradients of a fixed random projection of them w.r.t. the inputs."""
    inputs = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    outs = fn(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    gen = torch.Generator().manual_seed(seed)
    loss = sum((o.double() * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.device)).sum()
               for o in outs if o is not None)
    loss.backward()
    return [o.detach().double() for o in outs], [t.grad.double() for t in inputs if t.requires_grad]


def close(got, want, tol):
    for a, b in zip(got, want):
        scale = b.abs().max().clamp_min(1e-6)
        assert (a - b).abs().max() / scale < tol, ((a - b).abs().max(), scale)


@needs_triton
@pytest.mark.parametrize("D, dtype, with_delta", [(48, torch.float32, True), (384, torch.float32, False),
                                                   (100, torch.bfloat16, True)])
def test_add_rmsnorm_kernel_forward_and_backward(D, dtype, with_delta):
    torch.manual_seed(0)
    x = torch.randn(3, 37, D, device=DEVICE).to(dtype)
    delta = torch.randn(3, 37, D, device=DEVICE).to(dtype)
    w = (torch.rand(D, device=DEVICE) + 0.5)
    if with_delta:
        def kernel(x, delta, w):
            return kernels._AddRMSNorm.apply(x, delta, w, 1e-6, x.dtype)

        def reference(x, delta, w):
            return add_rmsnorm_reference(x, delta, w, 1e-6)
        inputs = (x, delta, w)
    else:
        def kernel(x, w):
            return kernels._AddRMSNorm.apply(x, None, w, 1e-6, x.dtype)

        def reference(x, w):
            return add_rmsnorm_reference(x, None, w, 1e-6)[1]
        inputs = (x, w)
    out, grad = grads(kernel, *inputs)
    ref_out, ref_grad = grads(reference, *[t.double() for t in inputs])
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    close(out, ref_out, tol)
    close(grad, ref_grad, tol if dtype == torch.float32 else 5e-2)


@needs_triton
def test_add_rmsnorm_kernel_gives_delta_its_own_gradient_copy_only_in_another_dtype():
    # h = x + delta: one gradient for both. Same dtype: the very same tensor; a float32 stream with a
    # bf16 branch output (autocast): the gradient cast to bf16 in the kernel, dx to within bf16's spacing
    # (the interpreter's cast need not round as torch's does).
    torch.manual_seed(0)
    w = torch.rand(64, device=DEVICE) + 0.5
    x = torch.randn(2, 9, 64, device=DEVICE, requires_grad=True)
    for delta_dtype in (torch.float32, torch.bfloat16):
        delta = torch.randn(2, 9, 64, device=DEVICE).to(delta_dtype).requires_grad_()
        h, y = kernels._AddRMSNorm.apply(x, delta, w, 1e-6, torch.float32)
        dx, ddelta = torch.autograd.grad((h * 0.5).sum() + (y * torch.randn_like(y)).sum(), (x, delta))
        assert ddelta.dtype == delta_dtype
        if delta_dtype == x.dtype:
            assert ddelta.data_ptr() == dx.data_ptr()
        torch.testing.assert_close(ddelta.float(), dx, rtol=2 ** -7, atol=0)


@needs_triton
@pytest.mark.parametrize("hidden, dtype", [(96, torch.float32), (1024, torch.float32), (40, torch.bfloat16)])
def test_silu_mul_kernel_forward_and_backward(hidden, dtype):
    torch.manual_seed(0)
    gu = (3 * torch.randn(4, 9, 2 * hidden, device=DEVICE)).to(dtype)
    out, grad = grads(kernels._SiluMul.apply, gu)
    ref_out, ref_grad = grads(silu_mul_reference, gu.double())
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    close(out, ref_out, tol)
    close(grad, ref_grad, tol)


@needs_triton
@pytest.mark.parametrize("heads, d, grid, dtype", [(6, 64, (4, 4), torch.float32), (3, 10, (2, 2, 3), torch.float32),
                                                   (2, 9, (3, 5), torch.float32), (4, 32, (4, 4), torch.bfloat16)])
def test_rope_qkv_kernel_forward_and_backward(heads, d, grid, dtype):
    torch.manual_seed(0)
    L = 1
    for n in grid:
        L *= n
    qkv = torch.randn(2, L, 3 * heads * d, device=DEVICE).to(dtype)
    cos, sin = (t.to(DEVICE) for t in rope_for(grid, d))
    ref_out, ref_grad = grads(lambda x: rope_qkv_reference(x, cos.double(), sin.double(), heads), qkv.double())
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    # The compiled form (new buffers) and the eager one (q and k rotated inside the QKV output, which
    # is consumed: here a copy of the leaf, as the model's is a matmul's output).
    for fn in (kernels._RopeQKV.apply, lambda x, *a: kernels._RopeQKV.apply(x.clone(), *a, True)):
        out, grad = grads(lambda x: fn(x, cos, sin, heads), qkv)
        close(out, ref_out, tol)
        close(grad, ref_grad, tol)


@needs_triton
def test_rope_qkv_in_place_hands_on_views_of_the_qkv_output():
    torch.manual_seed(0)
    heads, d = 3, 16
    qkv = torch.randn(2, 6, 3 * heads * d, device=DEVICE)
    cos, sin = (t.to(DEVICE) for t in rope_for((2, 3), d))
    want = rope_qkv_reference(qkv, cos, sin, heads)
    buf = qkv.clone()
    q, k, v = kernels._RopeQKV.apply(buf, cos, sin, heads, True)
    for got, ref in zip((q, k, v), want):
        assert got.data_ptr() - buf.data_ptr() in range(0, buf.numel() * buf.element_size())
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v, qkv.view(2, 6, 3, heads, d)[:, :, 2])  # v untouched
    # The eager op takes this form; the stack's results are checked against the plain modules below.
    assert rope_qkv(qkv.clone(), cos, sin, heads)[2]._base is not None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_linear_under_autocast_gives_float32_weight_gradients(dtype):
    # Against float64 autograd of x·wᵀ; the weight's gradient comes out in float32, not rounded to bf16.
    torch.manual_seed(0)
    x = torch.randn(2, 5, 24, device=DEVICE).to(dtype)
    w = torch.randn(16, 24, device=DEVICE)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        out, (gx, gw) = grads(lambda x, w: kernels.linear(x, w), x, w)
        assert kernels.linear(x, w.requires_grad_()).grad_fn.name().endswith("_LinearBackward")
    ref_out, (rx, rw) = grads(lambda x, w: x @ w.t(), x.to(torch.bfloat16).double(), w.to(torch.bfloat16).double())
    close(out, ref_out, 1e-2)
    close([gx, gw], [rx, rw], 1e-2)
    wl = w.detach().clone().requires_grad_()
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        kernels.linear(x, wl).sum().backward()
    assert wl.grad.dtype == torch.float32 and x.dtype == dtype
    # Outside autocast (bf16 weights, or float32 throughout) it is F.linear itself.
    assert "_Linear" not in kernels.linear(x.float(), w).grad_fn.name()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="mm's out_dtype runs on CUDA")
def test_weight_gradient_comes_from_the_gemm_in_float32_on_cuda():
    # The fast path itself, not the cast fallback (which an older build would take silently).
    a, b = torch.randn(64, 32, device="cuda"), torch.randn(64, 48, device="cuda")
    got = torch.mm(a.bfloat16().t(), b.bfloat16(), out_dtype=torch.float32)
    assert got.dtype == torch.float32
    torch.testing.assert_close(kernels._weight_grad(a.bfloat16(), b.bfloat16(), torch.float32), got)


@needs_triton
@pytest.mark.parametrize("norm, gate", [({"programs": 3, "rb": 2, "num_warps": 4}, {"r": 4, "block": 16, "num_warps": 4}),
                                        ({"programs": 2, "rb": 4, "num_warps": 8}, {"r": 2, "block": 64, "num_warps": 8})])
def test_kernels_agree_with_the_references_at_other_launch_shapes(monkeypatch, norm, gate):
    # The launch shapes benchmarks/kernel_tune.py chooses between: row tiles that do not divide the
    # rows, channel tiles narrower than the width.
    monkeypatch.setitem(kernels.TUNING, "add_rmsnorm_bwd", norm)
    monkeypatch.setitem(kernels.TUNING, "silu_mul_fwd", gate)
    monkeypatch.setitem(kernels.TUNING, "silu_mul_bwd", gate)
    check_norm_and_gate(rows=(2, 7), width=48, hidden=40)


@pytest.mark.skipif(not ON_GPU, reason="the shipped launch shapes at a real model's widths, on the GPU")
def test_kernels_at_the_shipped_launch_shapes_and_real_widths():
    # S-B/16's widths (768, SwiGLU hidden 2048), where the 2048-channel tiles and 4-row norm tiles of
    # kernels.TUNING take full effect; rows not a multiple of the tiles.
    check_norm_and_gate(rows=(3, 67), width=768, hidden=2048)


def check_norm_and_gate(rows, width, hidden):
    """The fused add + norm and the SiLU gate against float64 autograd of their references."""
    torch.manual_seed(0)
    x, delta = torch.randn(*rows, width, device=DEVICE), torch.randn(*rows, width, device=DEVICE)
    w = torch.randn(width, device=DEVICE)
    out, grad = grads(lambda x, d, w: kernels._AddRMSNorm.apply(x, d, w, 1e-6, torch.float32), x, delta, w)
    ref_out, ref_grad = grads(lambda x, d, w: add_rmsnorm_reference(x, d, w, 1e-6, torch.float64),
                              x.double(), delta.double(), w.double())
    close(out, ref_out, 1e-5)
    close(grad, ref_grad, 1e-4)
    gu = torch.randn(*rows, 2 * hidden, device=DEVICE)
    out, grad = grads(kernels._SiluMul.apply, gu)
    ref_out, ref_grad = grads(silu_mul_reference, gu.double())
    close(out, ref_out, 1e-5)
    close(grad, ref_grad, 1e-5)


@needs_triton
def test_transformer_with_kernels_matches_without():
    torch.manual_seed(0)
    stack = Transformer(48, 3, 4).to(DEVICE)
    with torch.no_grad():
        for p in stack.parameters():
            p.add_(0.05 * torch.randn_like(p))
    rope = tuple(t.to(DEVICE) for t in rope_for((4, 5), 12))
    x = torch.randn(2, 20, 48, device=DEVICE)
    out, grad = grads(lambda x: stack(x, rope), x)
    want_params = [p.grad.clone() for p in stack.parameters()]
    stack.zero_grad()
    stack.set_kernels(True)
    got, got_grad = grads(lambda x: stack(x, rope), x)
    close(got, out, 1e-5)
    close(got_grad, grad, 1e-4)
    close([p.grad for p in stack.parameters()], want_params, 1e-4)


@needs_triton
def test_transformer_with_kernels_matches_without_under_autocast():
    # The training setting: bf16 matmuls under autocast, float32 weights (whose gradients the fused
    # path takes from the GEMM in float32) and the bf16 residual stream of the fastest configuration.
    torch.manual_seed(0)
    stack = Transformer(48, 2, 4).to(DEVICE)
    rope = tuple(t.to(DEVICE) for t in rope_for((4, 5), 12))
    x = torch.randn(2, 20, 48, device=DEVICE).to(torch.bfloat16)
    results = []
    for fused in (False, True):
        stack.zero_grad()
        stack.set_kernels(fused)
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            out, grad = grads(lambda x: stack(x, rope), x)
        results.append((out, grad, [p.grad.clone() for p in stack.parameters()]))
        assert all(p.grad.dtype == torch.float32 for p in stack.parameters())
    (out, grad, params), (got, got_grad, got_params) = results
    close(got, out, 3e-2)
    close(got_grad, grad, 3e-2)
    close(got_params, params, 3e-2)


@pytest.mark.skipif(not ON_GPU, reason="torch.compile of the Triton kernels needs CUDA")
def test_compiled_transformer_with_kernels_matches_eager():
    # Under torch.compile the kernels run inside the graph (dynamo traces the autograd functions and
    # their launches).
    torch.manual_seed(0)
    stack = Transformer(128, 3, 2).to(DEVICE)
    stack.set_kernels(True)
    rope = tuple(t.to(DEVICE) for t in rope_for((4, 5), 64))
    x = torch.randn(3, 20, 128, device=DEVICE)
    out, grad = grads(lambda x: stack(x, rope), x)
    want_params = [p.grad.clone() for p in stack.parameters()]
    stack.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(stack, fullgraph=True)
    got, got_grad = grads(lambda x: compiled(x, rope), x)
    close(got, out, 1e-4)
    close(got_grad, grad, 1e-4)
    close([p.grad for p in stack.parameters()], want_params, 1e-4)


# ---- the ops' dispatch --------------------------------------------------------------------------------


def test_ops_fall_back_to_the_references_where_triton_cannot_run(monkeypatch):
    monkeypatch.setattr(kernels, "triton", None)  # as on a machine without triton
    torch.manual_seed(0)
    x, delta, w = torch.randn(2, 3, 8), torch.randn(2, 3, 8), torch.rand(8)
    h, y = add_rmsnorm(x, delta, w, 1e-6)
    torch.testing.assert_close((h, y), add_rmsnorm_reference(x, delta, w, 1e-6))
    torch.testing.assert_close(silu_mul(delta), silu_mul_reference(delta))
    qkv, (cos, sin) = torch.randn(2, 6, 3 * 16), rope_for((2, 3), 8)
    for got, want in zip(rope_qkv(qkv, cos, sin, 2), rope_qkv_reference(qkv, cos, sin, 2)):
        torch.testing.assert_close(got, want)
    stack = Transformer(16, 2, 2)
    rope = rope_for((2, 3), 8)
    z = torch.randn(1, 6, 16)
    want = stack(z, rope)
    stack.set_kernels(True)
    torch.testing.assert_close(stack(z, rope), want, rtol=1e-5, atol=1e-5)


def test_fused_block_paths_leave_parallel_blocks_and_checkpointing_alone():
    torch.manual_seed(0)
    stack = Transformer(16, 2, 2, parallel=True, final_norm=False)
    rope = rope_for((2, 3), 8)
    z = torch.randn(1, 6, 16)
    want = stack(z, rope)
    stack.set_kernels(True)
    torch.testing.assert_close(stack(z, rope), want, rtol=1e-5, atol=1e-5)
    block = Block(16, 2)
    assert isinstance(block.mlp, SwiGLU) and not block.mlp.fused


def test_vitok_refuses_unknown_kernels_and_missing_triton(monkeypatch):
    from conftest import tiny_config
    from vitok.model import ViTok

    model = ViTok(tiny_config())
    with pytest.raises(ValueError, match="choose torch or triton"):
        model.set_kernels("cuda")
    monkeypatch.setattr(kernels, "triton", None)
    with pytest.raises(ValueError, match="model.kernels=torch"):
        model.set_kernels("triton")
