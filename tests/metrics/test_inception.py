"""Tests for vitok.metrics.inception (FID Inception-v3, random weights, CPU)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vitok.metrics.image import to_uint8
from vitok.metrics.inception import FIDInceptionV3, build_fid_inception, fid_preprocess

# Published-file facts (see the module docstring for how they were established).
N_CONV_BN_UNITS = 94  # stem 5 + 3*7 (A) + 4 (B) + 4*10 (C) + 6 (D) + 2*9 (E)
N_FILE_TENSORS = N_CONV_BN_UNITS * 5 + 2  # conv.weight + 4 BN tensors each, fc.weight/bias
N_PARAMS = 23_850_960
N_RUNNING_STATS = 34_432


@pytest.fixture(scope="module")
def model() -> FIDInceptionV3:
    torch.manual_seed(0)
    return build_fid_inception(None)


def _bilinear_ref(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Independent numpy bilinear resize of C×H×W, half-pixel centres, edge clamp (no antialias)."""

    def axis(n_in: int, n_out: int):
        src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
        src = np.maximum(src, 0.0)
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    y0, y1, wy = axis(img.shape[1], out_h)
    x0, x1, wx = axis(img.shape[2], out_w)
    top = img[:, y0][:, :, x0] * (1 - wx) + img[:, y0][:, :, x1] * wx
    bot = img[:, y1][:, :, x0] * (1 - wx) + img[:, y1][:, :, x1] * wx
    return top * (1 - wy)[:, None] + bot * wy[:, None]


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("b,hw", [(2, (64, 64)), (1, (299, 299)), (1, (48, 80))])
def test_output_shapes(model: FIDInceptionV3, b: int, hw: tuple[int, int]) -> None:
    x = torch.rand(b, 3, *hw) * 2 - 1
    feats, logits = model(x)
    assert feats.shape == (b, 2048) and logits.shape == (b, 1008)
    assert feats.dtype == logits.dtype == torch.float32
    assert torch.isfinite(feats).all() and torch.isfinite(logits).all()


def test_features_nonnegative_and_unbiased_logits(model: FIDInceptionV3) -> None:
    torch.manual_seed(1)
    saved = model.fc.bias.clone()
    with torch.no_grad():
        model.fc.bias.fill_(3.0)  # a bias that must not show up in logits_unbiased
    try:
        feats, logits = model(torch.rand(2, 3, 40, 56) * 2 - 1)
        assert (feats >= 0).all()
        torch.testing.assert_close(logits, feats @ model.fc.weight.T, rtol=0, atol=0)
    finally:
        with torch.no_grad():
            model.fc.bias.copy_(saved)


def test_other_float_dtypes_run_in_float32(model: FIDInceptionV3) -> None:
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64) * 2 - 1
    for t in (x, x.to(torch.bfloat16), x.half()):
        pre = fid_preprocess(t)
        assert pre.dtype == torch.float32
        torch.testing.assert_close(pre, fid_preprocess(t.float()), rtol=0, atol=0)
    feats, logits = model(x)
    assert feats.dtype == logits.dtype == torch.float32


def test_bad_inputs_rejected(model: FIDInceptionV3) -> None:
    with pytest.raises(ValueError):
        model(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError):
        model(torch.zeros(3, 32, 32))
    with pytest.raises(TypeError):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


# --------------------------------------------------------------------------- naming / counts


def test_published_key_names(model: FIDInceptionV3) -> None:
    sd = model.state_dict()
    for key in [
        "Conv2d_1a_3x3.conv.weight",
        "Conv2d_1a_3x3.bn.weight",
        "Conv2d_1a_3x3.bn.bias",
        "Conv2d_1a_3x3.bn.running_mean",
        "Conv2d_1a_3x3.bn.running_var",
        "Conv2d_2a_3x3.conv.weight",
        "Conv2d_2b_3x3.conv.weight",
        "Conv2d_3b_1x1.conv.weight",
        "Conv2d_4a_3x3.conv.weight",
        "Mixed_5b.branch1x1.conv.weight",
        "Mixed_5b.branch5x5_2.conv.weight",
        "Mixed_5d.branch_pool.bn.running_mean",
        "Mixed_6a.branch3x3.conv.weight",
        "Mixed_6a.branch3x3dbl_3.bn.bias",
        "Mixed_6b.branch7x7dbl_5.conv.weight",
        "Mixed_6e.branch7x7_3.bn.running_var",
        "Mixed_7a.branch3x3_2.conv.weight",
        "Mixed_7a.branch7x7x3_4.bn.weight",
        "Mixed_7b.branch3x3_2a.conv.weight",
        "Mixed_7c.branch3x3dbl_3b.conv.weight",
        "Mixed_7c.branch_pool.bn.running_var",
        "fc.weight",
        "fc.bias",
    ]:
        assert key in sd, key
    assert not any(k.startswith("AuxLogits.") for k in sd)
    assert sd["fc.weight"].shape == (1008, 2048)
    assert sd["fc.bias"].shape == (1008,)
    assert sd["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert sd["Mixed_6e.branch7x7_2.conv.weight"].shape == (192, 192, 1, 7)
    assert sd["Mixed_7c.branch3x3dbl_3b.conv.weight"].shape == (384, 384, 3, 1)
    assert sd["Mixed_5b.branch_pool.conv.weight"].shape == (32, 192, 1, 1)
    assert "Mixed_7c.branch1x1.conv.bias" not in sd  # convs are bias-free


def test_tensor_and_parameter_counts(model: FIDInceptionV3) -> None:
    sd = model.state_dict()
    counters = [k for k in sd if k.endswith(".num_batches_tracked")]
    assert len(counters) == N_CONV_BN_UNITS
    assert len(sd) - len(counters) == N_FILE_TENSORS == 472
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == N_CONV_BN_UNITS and all(m.eps == 1e-3 for m in bns)
    # torchvision Inception-v3 (1000 classes, aux head) has 27,161,264 parameters; its aux
    # head is conv 768->128 1x1 + BN, conv 128->768 5x5 + BN, fc 768->1000.
    aux = 768 * 128 + 2 * 128 + 128 * 768 * 25 + 2 * 768 + 768 * 1000 + 1000
    assert 27_161_264 - aux + 8 * (2048 + 1) == N_PARAMS
    assert sum(p.numel() for p in model.parameters()) == N_PARAMS
    running = sum(b.numel() for n, b in model.named_buffers() if "running_" in n)
    assert running == N_RUNNING_STATS


def test_architecture_quirks(model: FIDInceptionV3) -> None:
    assert model.Mixed_7c.max_pool is True and model.Mixed_7b.max_pool is False
    # count_include_pad=False: a constant input must stay constant through the pool branch
    # (with padding zeros counted, the border would be darker).
    from vitok.metrics import inception as mod

    pooled = mod._avg_pool_3x3(torch.ones(1, 2, 5, 5))
    torch.testing.assert_close(pooled, torch.ones(1, 2, 5, 5))


# --------------------------------------------------------------------------- loading


def _own_state(model: FIDInceptionV3) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_load_roundtrip_frozen_eval(model: FIDInceptionV3) -> None:
    sd = _own_state(model)
    m2 = build_fid_inception(sd)
    assert not m2.training
    assert all(not p.requires_grad for p in m2.parameters())
    for k, v in m2.state_dict().items():
        torch.testing.assert_close(v, sd[k], rtol=0, atol=0)
    m2.train()  # stays in eval so BatchNorm keeps its running statistics
    assert not m2.training and not any(m.training for m in m2.modules())


def test_load_renamed_key_raises(model: FIDInceptionV3) -> None:
    sd = _own_state(model)
    sd["Mixed_6e.branch7x7_3.bn.running_vars"] = sd.pop("Mixed_6e.branch7x7_3.bn.running_var")
    with pytest.raises(ValueError) as err:
        build_fid_inception(sd)
    msg = str(err.value)
    assert re.search(r"missing keys: [^|]*Mixed_6e\.branch7x7_3\.bn\.running_var(?!s)", msg)
    assert re.search(r"unexpected keys: [^|]*Mixed_6e\.branch7x7_3\.bn\.running_vars", msg)


def test_load_wrong_shape_raises(model: FIDInceptionV3) -> None:
    sd = _own_state(model)
    sd["fc.weight"] = torch.zeros(1000, 2048)
    with pytest.raises(ValueError, match=r"fc\.weight.*\(1008, 2048\).*\(1000, 2048\)"):
        build_fid_inception(sd)


def test_load_missing_key_raises(model: FIDInceptionV3) -> None:
    sd = _own_state(model)
    del sd["Mixed_7c.branch3x3dbl_3b.conv.weight"]
    with pytest.raises(ValueError, match=r"Mixed_7c\.branch3x3dbl_3b\.conv\.weight"):
        build_fid_inception(sd)


def test_load_ignores_aux_logits_and_missing_counters(model: FIDInceptionV3) -> None:
    sd = {k: v for k, v in _own_state(model).items() if not k.endswith("num_batches_tracked")}
    assert len(sd) == N_FILE_TENSORS
    sd["AuxLogits.conv0.conv.weight"] = torch.zeros(128, 768, 1, 1)
    sd["AuxLogits.conv0.bn.running_mean"] = torch.zeros(128)
    sd["AuxLogits.fc.weight"] = torch.zeros(1008, 768)
    m2 = build_fid_inception(sd)
    assert not any(k.startswith("AuxLogits.") for k in m2.state_dict())
    for k, v in sd.items():
        if not k.startswith("AuxLogits."):
            torch.testing.assert_close(m2.state_dict()[k], v, rtol=0, atol=0)


# --------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("hw", [(64, 64), (40, 72), (320, 400)])
def test_fid_preprocess_matches_hand_computation(hw: tuple[int, int]) -> None:
    torch.manual_seed(2)
    x = torch.rand(2, 3, *hw) * 2.2 - 1.1  # includes out-of-range values (clamped)
    out = fid_preprocess(x)
    assert out.shape == (2, 3, 299, 299) and out.dtype == torch.float32

    # 8-bit quantisation in float32 arithmetic (as to_uint8 specifies), then float64 resize.
    xf = np.clip(x.numpy(), np.float32(-1), np.float32(1))
    q = np.clip(np.round((xf + np.float32(1)) * np.float32(127.5)), 0, 255).astype(np.uint8)
    u = q.astype(np.float64) / 255.0
    ref = np.stack([2 * _bilinear_ref(img, 299, 299) - 1 for img in u])
    # float32 interpolation weights vs float64 reference: errors of a few 1e-5 at most.
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=1e-4)

    direct = F.interpolate(to_uint8(x).float() / 255, size=(299, 299), mode="bilinear",
                           align_corners=False) * 2 - 1
    torch.testing.assert_close(out, direct, rtol=0, atol=0)


def test_fid_preprocess_299_not_resized() -> None:
    x = torch.rand(1, 3, 299, 299) * 2 - 1
    out = fid_preprocess(x)
    torch.testing.assert_close(out, to_uint8(x).float() / 255 * 2 - 1, rtol=0, atol=0)
    # values lie on the 8-bit grid
    k = (out + 1) / 2 * 255
    torch.testing.assert_close(k, k.round(), rtol=0, atol=1e-4)
