"""Attention with RoPE inside the kernel (model/rope_attention.py) against independent references.

The reference is checked against the modules it stands for (blocks.apply_rope, then PyTorch's SDPA);
the Triton kernels against autograd through the reference in float64 (Triton's interpreter on the
CPU, TRITON_INTERPRET=1 as tests/conftest.py sets it, or the GPU), at shapes whose token counts do
not divide the blocks, at other launch shapes, and inside a Transformer stack against the plain one.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from vitok.model import kernels, rope_attention
from vitok.model.blocks import Transformer, apply_rope, rope_angles, rope_tables

ON_GPU = torch.cuda.is_available() and kernels.triton is not None
INTERPRETED = kernels.triton is not None and os.environ.get("TRITON_INTERPRET") == "1"
needs_triton = pytest.mark.skipif(not (ON_GPU or INTERPRETED),
                                  reason="Triton kernels run on CUDA, or on CPU under TRITON_INTERPRET=1")
DEVICE = "cuda" if ON_GPU else "cpu"
# Triton's interpreter multiplies bf16 tiles wrongly (rope_attention._triton_runs): float16 stands in on the CPU.
HALF = torch.bfloat16 if ON_GPU else torch.float16


SMALL = {"block_m": 32, "block_n": 32, "num_warps": 4, "num_stages": 1}


def setup(B, grid, heads, d, dtype, device=DEVICE, seed=0):
    torch.manual_seed(seed)
    L = 1
    for n in grid:
        L *= n
    qkv = torch.randn(B, L, 3 * heads * d, dtype=torch.float64).to(device=device, dtype=dtype)
    cos, sin = (t.to(device) for t in rope_tables(rope_angles(grid, d)))
    return qkv, cos, sin


def grads(fn, x, g):
    x = x.detach().requires_grad_()
    out = fn(x)
    (gx,) = torch.autograd.grad(out, x, g)
    return out, gx


def test_reference_is_apply_rope_then_sdpa():
    qkv, cos, sin = setup(2, (3, 4), 3, 8, torch.float64, "cpu")
    B, L, _ = qkv.shape
    q, k, v = qkv.view(B, L, 3, 3, 8).unbind(2)
    tables = (cos.double()[:, None], sin.double()[:, None])
    q, k = apply_rope(q, tables), apply_rope(k, tables)
    want = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    got = rope_attention.reference(qkv, cos.double(), sin.double(), 3)
    torch.testing.assert_close(got, want.transpose(1, 2).reshape(B, L, 24))


def test_supported_shapes():
    qkv = torch.zeros(1, 4, 3 * 2 * 64)
    assert rope_attention.supported(qkv, torch.zeros(4, 32), 2)
    assert not rope_attention.supported(qkv, torch.zeros(4, 31), 2)  # d != 2P (an odd or unrotated channel)
    assert not rope_attention.supported(torch.zeros(1, 4, 3 * 4 * 12), torch.zeros(4, 6), 4)  # P < 16
    assert not rope_attention.supported(torch.zeros(1, 4, 3 * 2 * 48), torch.zeros(4, 24), 2)  # P not 2^k
    assert not rope_attention.supported(qkv.int(), torch.zeros(4, 32), 2)
    with pytest.raises(ValueError, match="not a shape the kernel takes"):
        rope_attention.rope_attention(torch.zeros(1, 4, 3 * 4 * 12), torch.zeros(4, 6), torch.zeros(4, 6), 4)


@needs_triton
@pytest.mark.parametrize("B, grid, heads, d", [(2, (4, 5), 2, 32), (1, (2, 3, 6), 3, 32), (2, (9, 15), 1, 64)])
def test_kernels_match_float64_autograd(monkeypatch, B, grid, heads, d):
    # 20 and 36 tokens inside one block; 135 across blocks, the last one partial.
    if ON_GPU:  # float64 tiles of the shipped (bf16) shapes would not fit a GPU's shared memory
        for name in rope_attention.TUNING:
            monkeypatch.setitem(rope_attention.TUNING, name, SMALL)
    qkv, cos, sin = setup(B, grid, heads, d, torch.float64)
    g = torch.randn(qkv.shape[0], qkv.shape[1], heads * d, dtype=torch.float64, device=DEVICE)
    out, gx = grads(lambda x: rope_attention.rope_attention(x, cos, sin, heads), qkv, g)
    want, want_gx = grads(lambda x: rope_attention.reference(x, cos.double(), sin.double(), heads), qkv, g)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gx, want_gx, rtol=1e-10, atol=1e-10)
    with torch.no_grad():  # inference: the forward kernel without its log-sum-exp
        torch.testing.assert_close(rope_attention.rope_attention(qkv, cos, sin, heads), want, rtol=1e-10, atol=1e-10)


@needs_triton
@pytest.mark.parametrize("shapes", [
    {"fwd": {"block_m": 16, "block_n": 16, "num_warps": 4, "num_stages": 1},
     "bwd_dkdv": {"block_m": 16, "block_n": 32, "num_warps": 4, "num_stages": 1},
     "bwd_dq": {"block_m": 32, "block_n": 16, "num_warps": 4, "num_stages": 2}},
    {"fwd": {"block_m": 32, "block_n": 64, "num_warps": 8, "num_stages": 2},
     "bwd_dkdv": {"block_m": 64, "block_n": 16, "num_warps": 8, "num_stages": 2},
     "bwd_dq": {"block_m": 16, "block_n": 64, "num_warps": 8, "num_stages": 1}},
])
def test_kernels_agree_at_other_launch_shapes(monkeypatch, shapes):
    # Many blocks along both loops, the last one partial (37 tokens): what attention_tune.py chooses between.
    for name, shape in shapes.items():
        monkeypatch.setitem(rope_attention.TUNING, name, shape)
    qkv, cos, sin = setup(2, (37,), 2, 32, torch.float64)
    g = torch.randn(2, 37, 64, dtype=torch.float64, device=DEVICE)
    out, gx = grads(lambda x: rope_attention.rope_attention(x, cos, sin, 2), qkv, g)
    want, want_gx = grads(lambda x: rope_attention.reference(x, cos.double(), sin.double(), 2), qkv, g)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gx, want_gx, rtol=1e-10, atol=1e-10)


@needs_triton
def test_half_precision_is_as_close_as_the_path_it_replaces():
    # Half inputs: the kernel's error against float32 math is of the order of the old path's (RoPE in place
    # and SDPA), both rounding the rotated q and k to the half type.
    qkv, cos, sin = setup(2, (4, 8), 2, 32, HALF)
    g = torch.randn(2, 32, 64, device=DEVICE).to(HALF)
    out, gx = grads(lambda x: rope_attention.rope_attention(x, cos, sin, 2), qkv, g)
    want, want_gx = grads(lambda x: rope_attention.reference(x.float(), cos, sin, 2), qkv, g)

    def old_path(x):
        q, k, v = kernels._RopeQKV.apply(x * 1, cos, sin, 2, True)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return o.transpose(1, 2).reshape(2, 32, 64)

    old, old_gx = grads(old_path, qkv, g)
    assert out.dtype == gx.dtype == HALF
    err, old_err = (out.float() - want).abs().max(), (old.float() - want).abs().max()
    gerr, old_gerr = (gx.float() - want_gx).abs().max(), (old_gx.float() - want_gx).abs().max()
    assert err <= 2 * old_err + 1e-2 and gerr <= 2 * old_gerr + 1e-2, (err, old_err, gerr, old_gerr)


@needs_triton
@pytest.mark.parametrize("autocast", [False, True])
def test_transformer_with_the_kernel_matches_without(autocast):
    # Head width 32: the fused path takes rope_attention (not kernels.rope_qkv + SDPA).
    torch.manual_seed(0)
    stack = Transformer(64, 2, 2).to(DEVICE)
    rope = tuple(t.to(DEVICE) for t in rope_tables(rope_angles((3, 5), 32)))
    x = torch.randn(2, 15, 64, device=DEVICE)
    calls = []
    real = rope_attention.rope_attention

    def counted(*a):
        calls.append(1)
        return real(*a)

    results = []
    for fused in (False, True):
        stack.zero_grad()
        stack.set_kernels(fused)
        with torch.autocast(DEVICE, dtype=HALF, enabled=autocast), \
                pytest.MonkeyPatch.context() as mp:
            mp.setattr(rope_attention, "rope_attention", counted)
            xg = x.clone().requires_grad_()
            out = stack(xg, rope)
            out.float().square().sum().backward()
        results.append((out.float(), xg.grad.float(), [p.grad.clone() for p in stack.parameters()]))
    assert len(calls) == 2  # once per block, fused run only
    tol = 3e-2 if autocast else 1e-4
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_falls_back_where_triton_cannot_run(monkeypatch):
    # A CPU tensor without the interpreter, or in bf16 under it: the reference (and Attention keeps its
    # kernels.rope_qkv + SDPA path).
    qkv, cos, sin = setup(1, (2, 3), 2, 32, torch.float32, "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not rope_attention.usable(qkv.bfloat16(), cos, 2)
    monkeypatch.delenv("TRITON_INTERPRET")
    assert not rope_attention.usable(qkv, cos, 2)
    torch.testing.assert_close(rope_attention.rope_attention(qkv, cos, sin, 2),
                               rope_attention.reference(qkv, cos, sin, 2))


@pytest.mark.skipif(not ON_GPU, reason="the kernel at a real model's shape, on the GPU")
def test_kernel_at_real_shape_on_the_gpu():
    # S-B/16's decoder attention at 256p (256 tokens, 12 heads of 64) with the shipped launch shapes, bf16.
    qkv, cos, sin = setup(2, (16, 16), 12, 64, torch.bfloat16)
    g = torch.randn(2, 256, 768, device=DEVICE).to(torch.bfloat16)
    out, gx = grads(lambda x: rope_attention.rope_attention(x, cos, sin, 12), qkv, g)
    want, want_gx = grads(lambda x: rope_attention.reference(x.double(), cos.double(), sin.double(), 12), qkv, g)
    assert (out.double() - want).abs().max() < 2e-2 * want.abs().max()
    assert (gx.double() - want_gx).abs().max() < 2e-2 * want_gx.abs().max()
