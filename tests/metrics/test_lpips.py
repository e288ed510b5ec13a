"""Tests for vitok.metrics.lpips against an independent float64 re-derivation.

The published weight files are not available offline, so the weights are
random tensors laid out exactly like torchvision's ``vgg16-397923af.pth`` and
the lpips package's ``weights/v0.1/vgg.pth``; the reference below recomputes
LPIPS-VGG v0.1 from those same tensors step by step.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data as skdata

from vitok.metrics.lpips import LPIPS, build_lpips

REL_TOL = 1e-5

# VGG16 ("D"): conv output channels, "M" = 2×2 max pool. In torchvision's
# ``features`` every conv is followed by a ReLU (two indices), every pool takes one.
VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]

# Written out by hand from the published files' layouts (not derived from the module).
EXPECTED_VGG_KEYS = {
    "features.0.weight": (64, 3, 3, 3), "features.0.bias": (64,),
    "features.2.weight": (64, 64, 3, 3), "features.2.bias": (64,),
    "features.5.weight": (128, 64, 3, 3), "features.5.bias": (128,),
    "features.7.weight": (128, 128, 3, 3), "features.7.bias": (128,),
    "features.10.weight": (256, 128, 3, 3), "features.10.bias": (256,),
    "features.12.weight": (256, 256, 3, 3), "features.12.bias": (256,),
    "features.14.weight": (256, 256, 3, 3), "features.14.bias": (256,),
    "features.17.weight": (512, 256, 3, 3), "features.17.bias": (512,),
    "features.19.weight": (512, 512, 3, 3), "features.19.bias": (512,),
    "features.21.weight": (512, 512, 3, 3), "features.21.bias": (512,),
    "features.24.weight": (512, 512, 3, 3), "features.24.bias": (512,),
    "features.26.weight": (512, 512, 3, 3), "features.26.bias": (512,),
    "features.28.weight": (512, 512, 3, 3), "features.28.bias": (512,),
}
EXPECTED_HEAD_KEYS = {
    "lin0.model.1.weight": (1, 64, 1, 1),
    "lin1.model.1.weight": (1, 128, 1, 1),
    "lin2.model.1.weight": (1, 256, 1, 1),
    "lin3.model.1.weight": (1, 512, 1, 1),
    "lin4.model.1.weight": (1, 512, 1, 1),
}


def _random_vgg_state(seed: int = 0, with_classifier: bool = True) -> dict[str, torch.Tensor]:
    """He-normal conv weights and small random biases, float32, torchvision key names."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in EXPECTED_VGG_KEYS.items():
        if key.endswith("weight"):
            fan_in = shape[1] * shape[2] * shape[3]
            state[key] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        else:
            state[key] = torch.randn(shape, generator=g) * 0.05
    if with_classifier:
        # Stand-ins for the real 4096×25088 … tensors; they must simply be ignored.
        state["classifier.0.weight"] = torch.randn(8, 16, generator=g)
        state["classifier.0.bias"] = torch.randn(8, generator=g)
        state["classifier.6.weight"] = torch.randn(10, 8, generator=g)
        state["classifier.6.bias"] = torch.randn(10, generator=g)
    return state


def _random_head_state(seed: int = 1) -> dict[str, torch.Tensor]:
    """Non-negative 1×1 weights, like the published (clamped) calibration."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.rand(shape, generator=g) * (4.0 / shape[1]) for k, shape in EXPECTED_HEAD_KEYS.items()}


def _reference_lpips(x: np.ndarray, y: np.ndarray, vgg: dict, heads: dict) -> np.ndarray:
    """LPIPS-VGG v0.1 in float64, layer by layer. x, y: B×3×H×W arrays in [-1, 1]."""
    shift = np.array([-0.030, -0.088, -0.188], dtype=np.float64).reshape(1, 3, 1, 1)
    scale = np.array([0.458, 0.448, 0.450], dtype=np.float64).reshape(1, 3, 1, 1)

    def taps(img: np.ndarray) -> list[np.ndarray]:
        h = torch.from_numpy((img.astype(np.float64) - shift) / scale)
        out, index = [], 0
        for pos, item in enumerate(VGG16_CFG):
            if item == "M":
                h = F.max_pool2d(h, kernel_size=2, stride=2)
                index += 1
                continue
            w = vgg[f"features.{index}.weight"].to(torch.float64)
            b = vgg[f"features.{index}.bias"].to(torch.float64)
            h = torch.relu(F.conv2d(h, w, b, padding=1))
            index += 2
            if pos + 1 == len(VGG16_CFG) or VGG16_CFG[pos + 1] == "M":
                out.append(h.numpy())  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
        assert len(out) == 5
        return out

    total = np.zeros(x.shape[0], dtype=np.float64)
    for layer, (a, b) in enumerate(zip(taps(x), taps(y))):
        na = a / (np.sqrt(np.sum(a * a, axis=1, keepdims=True)) + 1e-10)
        nb = b / (np.sqrt(np.sum(b * b, axis=1, keepdims=True)) + 1e-10)
        d = (na - nb) ** 2
        w = heads[f"lin{layer}.model.1.weight"].to(torch.float64).numpy().reshape(-1)
        per_pixel = np.einsum("bchw,c->bhw", d, w)
        total += per_pixel.mean(axis=(1, 2))
    return total


@pytest.fixture(scope="module")
def states():
    return _random_vgg_state(), _random_head_state()


@pytest.fixture(scope="module")
def model(states):
    return build_lpips(*states)


def _astronaut_pairs() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 64×64 crops of skimage's astronaut and a noisy copy, float32 in [-1, 1]."""
    img = skdata.astronaut().astype(np.float64) / 127.5 - 1.0  # 512×512×3
    crops = np.stack([img[100:164, 180:244], img[300:364, 40:104]])
    x = crops.transpose(0, 3, 1, 2)  # a channels-last view, as images usually arrive
    rng = np.random.default_rng(0)
    y = np.clip(x + rng.normal(0.0, 0.1, size=x.shape), -1.0, 1.0)
    return torch.from_numpy(x).float(), torch.from_numpy(np.ascontiguousarray(y)).float()


@pytest.fixture(scope="module")
def astro(model):
    x, y = _astronaut_pairs()
    return x, y, model(x, y)


def test_matches_reference_random_images(model, states):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 20, 28, generator=g) * 2 - 1  # non-square, odd pooled sizes
    y = torch.rand(2, 3, 20, 28, generator=g) * 2 - 1
    ref = _reference_lpips(x.double().numpy(), y.double().numpy(), *states)
    got = model(x, y)
    assert got.shape == (2,) and got.dtype == torch.float32
    np.testing.assert_allclose(got.double().numpy(), ref, rtol=REL_TOL, atol=0)
    # The same module in float64 agrees to rounding.
    got64 = build_lpips(*states).double()(x.double(), y.double())
    np.testing.assert_allclose(got64.numpy(), ref, rtol=1e-10, atol=0)


def test_matches_reference_astronaut(astro, states):
    x, y, got = astro
    ref = _reference_lpips(x.double().numpy(), y.double().numpy(), *states)
    assert np.all(ref > 0)
    assert got.shape == (2,)
    np.testing.assert_allclose(got.double().numpy(), ref, rtol=REL_TOL, atol=0)


def test_identical_inputs_give_zero(astro, model):
    x = astro[0][:, :, :32, :32]
    assert torch.equal(model(x, x.contiguous()), torch.zeros(2))


def test_symmetric(astro, model):
    x, y, xy = astro
    assert torch.equal(model(y, x), xy)  # bit for bit, despite x and y having different layouts


def test_gradients_reach_both_inputs(astro, model):
    x, y, _ = astro
    x = x[:1, :, :32, :32].clone().requires_grad_(True)
    y = y[:1, :, :32, :32].clone().requires_grad_(True)
    model(x, y).sum().backward()
    for t in (x, y):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())


def test_gradient_matches_finite_difference(states):
    m = build_lpips(*states).double()
    g = torch.Generator().manual_seed(5)
    x = (torch.rand(1, 3, 16, 16, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    y = torch.rand(1, 3, 16, 16, generator=g, dtype=torch.float64) * 2 - 1
    v = torch.randn(1, 3, 16, 16, generator=g, dtype=torch.float64)
    m(x, y).sum().backward()
    analytic = (x.grad * v).sum().item()
    h = 1e-6
    with torch.no_grad():
        plus_minus = m(torch.cat([x + h * v, x - h * v]), torch.cat([y, y]))
    numeric = ((plus_minus[0] - plus_minus[1]) / (2 * h)).item()
    assert analytic == pytest.approx(numeric, rel=1e-4)


def test_gradient_finite_where_features_vanish(states):
    vgg, heads = states
    vgg = dict(vgg)
    vgg["features.28.weight"] = torch.zeros_like(vgg["features.28.weight"])
    vgg["features.28.bias"] = torch.zeros_like(vgg["features.28.bias"])  # relu5_3 ≡ 0
    m = build_lpips(vgg, heads)
    g = torch.Generator().manual_seed(7)
    x = (torch.rand(1, 3, 16, 16, generator=g) * 2 - 1).requires_grad_(True)
    y = torch.rand(1, 3, 16, 16, generator=g) * 2 - 1
    out = m(x, y)
    out.sum().backward()
    assert torch.isfinite(out).all() and out.item() > 0
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    ref = _reference_lpips(x.detach().double().numpy(), y.double().numpy(), vgg, heads)
    np.testing.assert_allclose(out.detach().double().numpy(), ref, rtol=REL_TOL, atol=0)


def test_autocast_bfloat16(astro, model):
    x, y, _ = astro
    x, y = x[:1, :, :24, :24], y[:1, :, :24, :24]
    full = model(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x, y)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    torch.testing.assert_close(low, full, rtol=0.05, atol=0)


def test_state_dict_layout_matches_published_files():
    sd = LPIPS().state_dict()
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert {k: s for k, s in shapes.items() if k.startswith("features.")} == EXPECTED_VGG_KEYS
    assert {k: s for k, s in shapes.items() if k.startswith("lin")} == EXPECTED_HEAD_KEYS
    assert set(shapes) == set(EXPECTED_VGG_KEYS) | set(EXPECTED_HEAD_KEYS)


def test_build_loads_values_and_freezes(states):
    vgg, heads = states
    m = build_lpips(vgg, heads)
    assert not m.training
    assert all(not p.requires_grad for p in m.parameters())
    sd = m.state_dict()
    for k in EXPECTED_VGG_KEYS:
        assert torch.equal(sd[k], vgg[k])
    for k in EXPECTED_HEAD_KEYS:
        assert torch.equal(sd[k], heads[k])
    assert not any(k.startswith("classifier.") for k in sd)


def test_random_init_plumbing():
    m = build_lpips(None, None)
    assert not m.training and all(not p.requires_grad for p in m.parameters())
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    out = m(x, -x)
    assert out.shape == (2,) and torch.isfinite(out).all() and (out >= 0).all()


def test_classifier_keys_ignored_only_for_vgg(states):
    vgg, heads = states
    build_lpips(vgg, heads)  # vgg carries classifier.* entries
    bad = dict(heads, **{"classifier.0.weight": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match=r"classifier\.0\.weight"):
        build_lpips(vgg, bad)


def test_wrong_keys_raise_with_names(states):
    vgg, heads = states
    missing = {k: v for k, v in vgg.items() if k != "features.28.bias"}
    with pytest.raises(ValueError, match=r"missing.*features\.28\.bias"):
        build_lpips(missing, heads)

    extra = dict(vgg, **{"features.30.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"unexpected.*features\.30\.weight"):
        build_lpips(extra, heads)

    wrong = dict(heads, **{"lin2.model.1.weight": torch.zeros(1, 128, 1, 1)})
    with pytest.raises(ValueError, match=r"mismatched.*lin2\.model\.1\.weight"):
        build_lpips(vgg, wrong)

    renamed = {k.replace("model.1", "model.0"): v for k, v in heads.items()}  # dropout-free naming
    with pytest.raises(ValueError) as info:
        build_lpips(vgg, renamed)
    msg = str(info.value)
    assert "lin0.model.1.weight" in msg and "lin0.model.0.weight" in msg


def test_rejects_bad_inputs(model):
    x = torch.zeros(1, 3, 32, 32)
    with pytest.raises(ValueError):
        model(x, torch.zeros(1, 3, 32, 16))
    with pytest.raises(ValueError):
        model(torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError):
        model(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
    with pytest.raises(TypeError):
        model(x.to(torch.uint8), x.to(torch.uint8))
