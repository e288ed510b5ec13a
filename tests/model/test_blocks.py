"""Blocks against straightforward float64 numpy formulations."""

import contextlib

import numpy as np
import pytest
import torch

from vitok.model.blocks import (Attention, RMSNorm, SwiGLU, Transformer, apply_rope, rope_angles, rope_tables,
                                swiglu_hidden)


def rel_err(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def np_rmsnorm(x, w, eps):
    return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps) * w


def np_silu(x):
    return x / (1.0 + np.exp(-x))


def np_rope_angles(grid, head_dim, theta):
    """Explicit loop: pair j belongs to one axis and rotates by position_along_axis * theta^(-k/n)."""
    n_axes, pairs = len(grid), head_dim // 2
    counts = [pairs // n_axes] * n_axes
    counts[0] += pairs - sum(counts)
    positions = list(np.ndindex(*grid))
    out = np.zeros((len(positions), pairs))
    for t, pos in enumerate(positions):
        j = 0
        for axis, n in enumerate(counts):
            for k in range(n):
                out[t, j] = pos[axis] * theta ** (-k / n)
                j += 1
    return out


def np_rope(x, angles):
    """Complex-number rotation: pair j is x[j] + i*x[j + P], multiplied by exp(i*angle); an odd last channel passes."""
    half = x.shape[-1] // 2
    z = (x[..., :half] + 1j * x[..., half:2 * half]) * np.exp(1j * angles)
    return np.concatenate([z.real, z.imag, x[..., 2 * half:]], axis=-1)


def np_attention(x, wqkv, wproj, heads, angles):
    L, D = x.shape[-2:]
    d = D // heads
    q, k, v = np.split(x @ wqkv.T, 3, axis=-1)
    outs = []
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        qh, kh = np_rope(q[..., sl], angles), np_rope(k[..., sl], angles)
        logits = qh @ np.swapaxes(kh, -1, -2) / np.sqrt(d)
        logits -= logits.max(-1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(-1, keepdims=True)
        outs.append(p @ v[..., sl])
    return np.concatenate(outs, axis=-1) @ wproj.T


def test_rmsnorm_matches_float64_reference():
    torch.manual_seed(0)
    norm = RMSNorm(48, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(48))
    x = torch.randn(3, 7, 48) * 3
    ref = np_rmsnorm(x.double().numpy(), norm.weight.detach().double().numpy(), 1e-6)
    assert rel_err(norm(x).detach(), ref) < 1e-6
    # bf16 input: computed in float32 inside, so only output rounding remains.
    assert rel_err(norm(x.bfloat16()).detach().float(), ref) < 1e-2


def test_swiglu_matches_float64_reference():
    torch.manual_seed(0)
    mlp = SwiGLU(32, 80)
    x = torch.randn(2, 5, 32)
    w13 = mlp.w13.weight.detach().double().numpy()
    w1, w3 = w13[:80], w13[80:]
    w2 = mlp.w2.weight.detach().double().numpy()
    xd = x.double().numpy()
    ref = (np_silu(xd @ w1.T) * (xd @ w3.T)) @ w2.T
    assert rel_err(mlp(x).detach(), ref) < 1e-6


def test_swiglu_hidden_keeps_gelu_mlp_parameter_budget():
    assert swiglu_hidden(768) == 2048  # 2/3 * 4 * 768 = 2048 exactly
    assert swiglu_hidden(1152) == 3072
    assert swiglu_hidden(1296) % 256 == 0 and swiglu_hidden(1296) >= 2 * 4 * 1296 / 3


@pytest.mark.parametrize("grid", [(4, 6), (3, 4, 5), (1, 7)])
@pytest.mark.parametrize("head_dim", [16, 24, 64, 81])
def test_rope_angles_match_explicit_loop(grid, head_dim):
    ref = np_rope_angles(grid, head_dim, 100.0)
    got = rope_angles(grid, head_dim, theta=100.0).double().numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("head_dim", [16, 15])
def test_apply_rope_matches_complex_rotation(head_dim):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 20, head_dim)
    angles = rope_angles((4, 5), head_dim)
    ref = np_rope(x.double().numpy(), angles.double().numpy())
    assert rel_err(apply_rope(x, rope_tables(angles)), ref) < 1e-6


@pytest.mark.parametrize("grid", [(6, 7), (3, 4, 5)])
def test_rope_logits_depend_only_on_relative_offset(grid):
    torch.manual_seed(0)
    head_dim = 24
    angles = rope_angles(grid, head_dim).double()
    q, k = torch.randn(head_dim, dtype=torch.float64), torch.randn(head_dim, dtype=torch.float64)
    index = {pos: i for i, pos in enumerate(np.ndindex(*grid))}

    def logit(pq, pk):
        rq = apply_rope(q[None], rope_tables(angles[index[pq]][None]))[0]
        rk = apply_rope(k[None], rope_tables(angles[index[pk]][None]))[0]
        return float(rq @ rk)

    a, b = (0,) * len(grid), tuple(1 for _ in grid)
    shift = tuple(g - 2 for g in grid)
    a2, b2 = tuple(i + s for i, s in zip(a, shift)), tuple(i + s for i, s in zip(b, shift))
    assert abs(logit(a, b) - logit(a2, b2)) < 1e-6  # angles are float32
    # and it does depend on the offset along every axis
    for axis in range(len(grid)):
        c = tuple(1 if i == axis else 0 for i in range(len(grid)))
        assert abs(logit(a, b) - logit(a, c)) > 1e-6


@pytest.mark.parametrize("qk_norm", [False, True])
def test_attention_matches_float64_reference(qk_norm):
    torch.manual_seed(0)
    attn = Attention(32, heads=4, qk_norm=qk_norm)
    x = torch.randn(2, 12, 32)
    angles = rope_angles((3, 4), 8)
    xd = x.double().numpy()
    wqkv = attn.qkv.weight.detach().double().numpy()
    wproj = attn.proj.weight.detach().double().numpy()
    if qk_norm:
        # Reference with QK-norm: normalise each head's q and k before rotating.
        d, heads = 8, 4
        q, k, v = np.split(xd @ wqkv.T, 3, axis=-1)
        qn = [np_rmsnorm(q[..., h * d:(h + 1) * d], 1.0, 1e-6) for h in range(heads)]
        kn = [np_rmsnorm(k[..., h * d:(h + 1) * d], 1.0, 1e-6) for h in range(heads)]
        outs = []
        for h in range(heads):
            qh, kh = np_rope(qn[h], angles.double().numpy()), np_rope(kn[h], angles.double().numpy())
            logits = qh @ np.swapaxes(kh, -1, -2) / np.sqrt(d)
            p = np.exp(logits - logits.max(-1, keepdims=True))
            outs.append((p / p.sum(-1, keepdims=True)) @ v[..., h * d:(h + 1) * d])
        ref = np.concatenate(outs, -1) @ wproj.T
    else:
        ref = np_attention(xd, wqkv, wproj, 4, angles.double().numpy())
    assert rel_err(attn(x, rope_tables(angles)).detach(), ref) < 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fused attention kernels need CUDA")
@pytest.mark.parametrize("backend", ["flash", "efficient", "cudnn", "math", "compiled"])
def test_attention_on_cuda_matches_float64_for_every_sdpa_backend(backend):
    """Attention hands SDPA token-major (B×L×H×d) views, not contiguous B×H×L×d tensors: each CUDA
    backend, and the compiled module, in bf16 against the float64 module on the CPU, output and
    gradients (input and weights)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    ref_attn = Attention(128, heads=2).double()
    attn = Attention(128, heads=2).cuda()
    attn.load_state_dict(ref_attn.state_dict())
    x = torch.randn(3, 48, 128, dtype=torch.float64)
    angles = rope_angles((6, 8), 64)
    ref_x = x.clone().requires_grad_(True)
    ref_out = ref_attn(ref_x, rope_tables(angles.double()))
    probe = torch.randn(ref_out.shape, dtype=torch.float64)
    (ref_out * probe).sum().backward()

    gx = x.float().cuda().requires_grad_(True)
    fn = torch.compile(attn) if backend == "compiled" else attn
    chosen = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
              "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}.get(backend)
    with sdpa_kernel([chosen]) if chosen is not None else contextlib.nullcontext(), \
            torch.autocast("cuda", dtype=torch.bfloat16):
        out = fn(gx, tuple(t.cuda() for t in rope_tables(angles)))
    (out.float() * probe.float().cuda()).sum().backward()
    assert rel_err(out.detach().float().cpu(), ref_out.detach()) < 2e-2
    assert rel_err(gx.grad.cpu(), ref_x.grad) < 3e-2
    for (name, p), ref_p in zip(attn.named_parameters(), ref_attn.parameters()):
        assert rel_err(p.grad.cpu(), ref_p.grad) < 3e-2, name


def test_transformer_checkpointing_gives_identical_gradients():
    torch.manual_seed(0)
    net = Transformer(32, depth=2, heads=4)
    x = torch.randn(2, 12, 32, requires_grad=True)
    angles = rope_angles((3, 4), 8)
    outputs = []
    for ckpt in (False, True):
        net.grad_checkpointing = ckpt
        net.zero_grad()
        x.grad = None
        y = net(x, rope_tables(angles))
        y.square().mean().backward()
        outputs.append((y.detach(), x.grad.clone(), [p.grad.clone() for p in net.parameters()]))
    (y0, gx0, gp0), (y1, gx1, gp1) = outputs
    torch.testing.assert_close(y0, y1, rtol=0, atol=0)
    torch.testing.assert_close(gx0, gx1)
    for a, b in zip(gp0, gp1):
        torch.testing.assert_close(a, b)
