"""Inference GEMMs with the norm, gate and residual add in their epilogues (model/gemm.py).

The references against the modules they replace (RMSNorm then a linear layer; the SwiGLU gate; the
residual add), the Triton kernel against the references in float64 (Triton's interpreter on the CPU,
or the GPU) at shapes whose rows, columns and depth do not divide the tiles, and a Transformer
stack on this path against the same stack without kernels.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from vitok.model import gemm, kernels
from vitok.model.blocks import Block, RMSNorm, Transformer, rope_angles, rope_tables
from vitok.model.kernels import rope_qkv_reference

ON_GPU = torch.cuda.is_available() and kernels.triton is not None
INTERPRETED = kernels.triton is not None and os.environ.get("TRITON_INTERPRET") == "1"
needs_triton = pytest.mark.skipif(not (ON_GPU or INTERPRETED),
                                  reason="Triton kernels run on CUDA, or on CPU under TRITON_INTERPRET=1")
DEVICE = "cuda" if ON_GPU else "cpu"
# The exact dtype of the kernel tests: float64 under the interpreter; Triton refuses float64 products
# on the GPU, where float32 (multiplied exactly) stands in.
EXACT = torch.float32 if ON_GPU else torch.float64
# Tiles smaller than every test shape, so that rows, columns, depth and the gate's halves all end in
# partial tiles; on the GPU float64 tiles this size also fit in shared memory.
SMALL = {"rowscale": {"bm": 16, "bn": 32, "bk": 16, "num_stages": 1, "num_warps": 4},
         "residual": {"bm": 32, "bn": 16, "bk": 16, "num_stages": 2, "num_warps": 4},
         "gate": {"bm": 16, "bn": 16, "bk": 16, "num_stages": 1, "num_warps": 4}}


@pytest.fixture
def small_tiles(monkeypatch):
    for kind, shape in SMALL.items():
        monkeypatch.setitem(gemm.TUNING, kind, shape)


def randn(*shape, dtype=torch.float64, device=DEVICE):
    return torch.randn(*shape, dtype=torch.float64).to(device=device, dtype=dtype)


def test_references_are_the_modules_they_replace():
    torch.manual_seed(0)
    norm = RMSNorm(24).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    h, w = randn(7, 24, device="cpu"), randn(20, 24, device="cpu")
    sumsq = gemm.row_sumsq(h)
    torch.testing.assert_close(sumsq, (h * h).sum(-1))
    folded = gemm.folded(w, norm.weight, torch.float64)
    torch.testing.assert_close(gemm.linear_rowscale_reference(h, folded, sumsq, norm.eps), F.linear(norm(h), w))
    g, u = F.linear(norm(h), w).chunk(2, dim=-1)
    torch.testing.assert_close(gemm.linear_gate_reference(h, folded, sumsq, norm.eps), F.silu(g) * u)
    a, w2 = randn(7, 10, device="cpu"), randn(24, 10, device="cpu")
    out, out_sumsq = gemm.linear_residual_reference(a, w2, h)
    torch.testing.assert_close(out, h + a @ w2.t())
    torch.testing.assert_close(out_sumsq, (out * out).sum(-1))


@needs_triton
@pytest.mark.parametrize("dtype", sorted({EXACT, torch.float32}, key=str))
def test_kernels_match_the_references(small_tiles, dtype):
    # 37 rows, depth 40 (not a multiple of the 16-deep tiles), 56 outputs, a gate of 24 per half.
    torch.manual_seed(0)
    h, w, w13 = randn(37, 40, dtype=dtype), randn(56, 40, dtype=dtype), randn(48, 40, dtype=dtype)
    a, w2, x = randn(37, 24, dtype=dtype), randn(40, 24, dtype=dtype), randn(37, 40, dtype=dtype)
    sumsq = gemm.row_sumsq(h)
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-4}
    with torch.no_grad():
        torch.testing.assert_close(gemm.linear_rowscale(h, w, sumsq, 1e-6),
                                   gemm.linear_rowscale_reference(h, w, sumsq, 1e-6), **tol)
        torch.testing.assert_close(gemm.linear_gate(h, w13, sumsq, 1e-6),
                                   gemm.linear_gate_reference(h, w13, sumsq, 1e-6), **tol)
        got, got_sumsq = gemm.linear_residual(a, w2, x)
        want, want_sumsq = gemm.linear_residual_reference(a, w2, x)
    torch.testing.assert_close(got, want, **tol)
    torch.testing.assert_close(got_sumsq, want_sumsq, **tol)


@needs_triton
def test_rope_in_the_qkv_epilogue_matches_the_reference(small_tiles):
    # 2 samples of 15 tokens, 2 heads of 16 (P = 8): the 32-column tiles hold two whole heads, q and k
    # are four tiles, v two (not rotated); rows of both samples share tiles (positions = row mod L).
    torch.manual_seed(0)
    cos, sin = (t.to(DEVICE) for t in rope_tables(rope_angles((3, 5), 16)))
    h, w = randn(2, 15, 40, dtype=EXACT), randn(96, 40, dtype=EXACT)
    sumsq = gemm.row_sumsq(h)
    assert gemm.rope_fits(96, cos, 2)
    with torch.no_grad():
        got = gemm.linear_rowscale(h, w, sumsq, 1e-6, (cos, sin))
    want = gemm.linear_rowscale_rope_reference(h.reshape(30, 40), w, sumsq, 1e-6, cos, sin, 2)
    tol = 1e-10 if EXACT == torch.float64 else 1e-4
    torch.testing.assert_close(got.reshape(30, 96), want, rtol=tol, atol=tol)
    # The reference: rowscale, then kernels.rope_qkv_reference's rotation of q and k.
    plain = gemm.linear_rowscale_reference(h.reshape(30, 40), w, sumsq, 1e-6).view(2, 15, 96)
    q, k, v = rope_qkv_reference(plain, cos.to(EXACT), sin.to(EXACT), 2)
    torch.testing.assert_close(want.view(2, 15, 96), torch.cat([q.flatten(2), k.flatten(2), v.flatten(2)], -1))
    assert not gemm.rope_fits(96, cos[:, :4], 2)  # heads of 16 with 4 pairs: an unrotated remainder
    assert not gemm.rope_fits(3 * 2 * 48, rope_tables(rope_angles((3, 5), 48))[0], 2)  # 48 does not divide 32


def test_folded_weights_are_w_times_the_gain_rounded_once():
    w, gain = torch.randn(6, 4, dtype=torch.float32), torch.rand(4) + 0.5
    got = gemm.folded(w.bfloat16(), gain, torch.bfloat16)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, (w.bfloat16().float() * gain).bfloat16(), rtol=0, atol=0)
    assert gemm.folded(w, None, torch.float32).data_ptr() == w.data_ptr()  # nothing to do: w itself
    torch.testing.assert_close(gemm.folded(w, None, torch.bfloat16), w.bfloat16())


def stack_and_inputs(dtype, depth=2, width=64, heads=2, tokens=(3, 5)):
    torch.manual_seed(0)
    stack = Transformer(width, depth, heads).to(device=DEVICE, dtype=dtype)
    with torch.no_grad():
        for p in stack.parameters():
            p.add_(0.05 * torch.randn_like(p))
    rope = tuple(t.to(DEVICE) for t in rope_tables(rope_angles(tokens, width // heads)))
    x = torch.randn(2, tokens[0] * tokens[1], width, dtype=torch.float64).to(device=DEVICE, dtype=dtype)
    return stack, rope, x


@needs_triton
@pytest.mark.parametrize("qkv_tile", [32, 16])
def test_transformer_inference_path_matches_the_plain_stack(small_tiles, monkeypatch, qkv_tile):
    # 32-column QKV tiles hold whole heads of 32: RoPE in the epilogue; 16-column ones do not: kernels.rope_qkv.
    monkeypatch.setitem(gemm.TUNING, "rowscale", {**SMALL["rowscale"], "bn": qkv_tile})
    monkeypatch.setattr(gemm, "CUDA_DTYPES", (torch.float32,))  # on the GPU: the exact dtype takes the path
    stack, rope, x = stack_and_inputs(EXACT)
    with torch.no_grad():
        want = stack(x, rope)
        stack.set_kernels(True)
        calls = []
        real = Block.inference_forward
        monkeypatch.setattr(Block, "inference_forward", lambda self, *a: calls.append(1) or real(self, *a))
        with pytest.MonkeyPatch.context() as mp:
            rope_calls = []
            real_rope = kernels._RopeQKV.apply
            mp.setattr(kernels._RopeQKV, "apply", lambda *a: rope_calls.append(1) or real_rope(*a))
            got = stack(x, rope)
    assert len(calls) == 2  # every block on the GEMM path
    assert len(rope_calls) == (0 if qkv_tile == 32 else 2)
    # (kernels.rope_qkv rotates in float32 math: that, not the GEMMs, sets the tolerance in float64)
    torch.testing.assert_close(got, want, rtol=1e-6 if EXACT == torch.float64 else 1e-4,
                               atol=1e-6 if EXACT == torch.float64 else 1e-4)


@needs_triton
def test_inference_path_under_autocast_and_after_a_weight_update(small_tiles):
    # float32 weights, a half stream under autocast (the trainer's evaluation with residual_dtype bf16;
    # float16 here, which Triton's interpreter multiplies correctly); then weights changed in place, and
    # through .data (whose writes no version counter sees): the next call uses them.
    stack, rope, x = stack_and_inputs(torch.float32)
    for update in (None, lambda p: p.mul_(0.5), lambda p: p.data.add_(0.25)):
        with torch.no_grad():
            if update is not None:
                for p in stack.parameters():
                    update(p)
            stack.set_kernels(False)
            with torch.autocast(DEVICE, dtype=torch.float16):
                want = stack(x.half(), rope)
                stack.set_kernels(True)
                got = stack(x.half(), rope)
        assert got.dtype == want.dtype == torch.float16
        torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)


@needs_triton
def test_inference_path_is_left_where_it_does_not_apply(small_tiles, monkeypatch):
    stack, rope, x = stack_and_inputs(torch.float32)
    stack.set_kernels(True)
    monkeypatch.setattr(Block, "inference_forward", lambda *a: pytest.fail("took the GEMM path"))
    stack(x, rope)  # grad enabled: training takes the other fused path
    with torch.no_grad():
        with torch.autocast(DEVICE, dtype=torch.float16):
            stack(x, rope)  # a float32 stream under float16 autocast: the matmuls would not run in x's dtype
        for module in (stack.blocks[0].attn.qkv, stack.blocks[1].norm2, stack.blocks[1].attn):
            handle = module.register_forward_hook(lambda *a: None)
            stack(x, rope)  # a hooked module must run as itself
            handle.remove()
        hidden = stack.blocks[0].mlp.w2.in_features
        stack.blocks[0].mlp.w2 = torch.nn.Linear(hidden, 64, bias=True).to(DEVICE)  # a layer with a bias
        stack(x, rope)
    parallel = Transformer(64, 1, 2, parallel=True).to(DEVICE)
    parallel.set_kernels(True)
    with torch.no_grad():
        parallel(x, rope)


@pytest.mark.skipif(not ON_GPU, reason="the shipped tiles at a real model's widths, on the GPU")
def test_inference_path_at_real_widths_on_the_gpu():
    # S-B/16's decoder blocks (width 768, 12 heads, SwiGLU hidden 2048) in bf16 with the shipped tiles,
    # 300 rows (not a multiple of them): against the same stack without kernels, both in bf16.
    stack, rope, x = stack_and_inputs(torch.bfloat16, depth=2, width=768, heads=12, tokens=(10, 15))
    with torch.no_grad():
        want = stack(x, rope).float()
        stack.set_kernels(True)
        got = stack(x, rope).float()
    assert (got - want).abs().max() < 3e-2 * want.abs().max(), (got - want).abs().max()
