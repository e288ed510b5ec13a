"""Tests for vitok.losses.gan against hand-written float64 formulas and analytic gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitok.losses import Discriminator, LeCam, discriminator_loss, generator_loss, r1_penalty


def _logits() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    real = torch.randn(7, generator=g, dtype=torch.float64) * 3
    fake = torch.randn(7, generator=g, dtype=torch.float64) * 3
    # Large magnitudes check the softplus's numerical stability.
    extremes = torch.tensor([40.0, -40.0], dtype=torch.float64)
    return torch.cat([real, extremes]), torch.cat([fake, -extremes])


def _softplus(v: np.ndarray) -> np.ndarray:
    """log(1 + exp(v)) without overflow."""
    return np.logaddexp(0.0, v)


def test_non_saturating_losses_match_softplus_formulas():
    real, fake = _logits()
    r, f = real.numpy(), fake.numpy()
    d = discriminator_loss(real, fake, "non_saturating")
    g = generator_loss(fake, "non_saturating")
    assert d.item() == pytest.approx(np.mean(_softplus(-r)) + np.mean(_softplus(f)), rel=1e-12)
    assert g.item() == pytest.approx(np.mean(_softplus(-f)), rel=1e-12)
    assert discriminator_loss(real, fake).item() == d.item()  # the default kind


def test_hinge_losses_match_relu_formulas():
    real, fake = _logits()
    r, f = real.numpy(), fake.numpy()
    d = discriminator_loss(real, fake, "hinge")
    g = generator_loss(fake, "hinge")
    assert d.item() == pytest.approx(np.mean(np.maximum(0, 1 - r)) + np.mean(np.maximum(0, 1 + f)), rel=1e-12)
    assert g.item() == pytest.approx(-np.mean(f), rel=1e-12)


def test_gan_losses_are_float32_for_bfloat16_logits_and_reject_unknown_kinds():
    real, fake = _logits()
    real16, fake16 = real.bfloat16(), fake.bfloat16()
    d = discriminator_loss(real16, fake16)
    assert d.dtype == torch.float32
    assert d.item() == pytest.approx(discriminator_loss(real16.double(), fake16.double()).item(), rel=1e-6)
    assert generator_loss(fake16, "hinge").dtype == torch.float32
    with pytest.raises(ValueError, match="non_saturating, hinge"):
        discriminator_loss(real, fake, "wgan")
    with pytest.raises(ValueError, match="non_saturating, hinge"):
        generator_loss(fake, "lsgan")


def test_r1_of_a_linear_discriminator_is_the_squared_weight_norm():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 8, 8, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.randn(5, 3, 8, 8, generator=g, dtype=torch.float64, requires_grad=True)
    logits = (x * w).sum(dim=(1, 2, 3)) + 0.3  # D(x) = <w, x> + b, so grad_x D = w
    penalty = r1_penalty(logits, x)
    assert penalty.item() == pytest.approx(w.detach().square().sum().item(), rel=1e-12)
    # create_graph: the penalty itself trains D, d/dw ||w||^2 = 2w.
    penalty.backward()
    assert torch.allclose(w.grad, 2 * w.detach())


def test_r1_of_a_nonlinear_discriminator_matches_finite_differences():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(48, 6, generator=g, dtype=torch.float64) * 0.3
    v = torch.randn(6, generator=g, dtype=torch.float64)

    def d(images: torch.Tensor) -> torch.Tensor:
        return torch.tanh(images.flatten(1) @ a) @ v

    x = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    eps = 1e-6
    squared_norms = []
    for i in range(x.shape[0]):
        grad = np.zeros(x[i].numel())
        for j in range(x[i].numel()):
            step = torch.zeros(x[i].numel(), dtype=torch.float64)
            step[j] = eps
            up = d((x[i].flatten() + step).view(1, 3, 4, 4)).item()
            down = d((x[i].flatten() - step).view(1, 3, 4, 4)).item()
            grad[j] = (up - down) / (2 * eps)
        squared_norms.append(np.sum(grad * grad))
    xr = x.clone().requires_grad_(True)
    assert r1_penalty(d(xr), xr).item() == pytest.approx(np.mean(squared_norms), rel=1e-7)


def test_r1_trains_a_real_discriminator_and_requires_input_grad():
    torch.manual_seed(0)
    disc = Discriminator(16, channels=4, max_channels=8)
    x = torch.randn(3, 3, 16, 16)
    with pytest.raises(ValueError, match="requires_grad"):
        r1_penalty(disc(x), x)
    x.requires_grad_(True)
    penalty = r1_penalty(disc(x), x)
    penalty.backward()
    assert penalty.item() > 0
    # Every weight shapes grad_x D; the output bias does not, so its grad is None.
    grads = {name: p.grad for name, p in disc.named_parameters()}
    weights = [g_ for name, g_ in grads.items() if name.endswith("weight")]
    assert all(g_ is not None and torch.isfinite(g_).all() and g_.abs().sum() > 0 for g_ in weights)


def test_lecam_tracks_emas_and_penalises_distance_to_them():
    decay = 0.9
    lecam = LeCam(decay)
    ema_r = ema_f = 0.0
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        real = (torch.randn(6, generator=g) + 2).requires_grad_(True)
        fake = torch.randn(6, generator=g) - 1
        penalty = lecam(real, fake)
        r, f = real.detach().double().numpy(), fake.double().numpy()
        ema_r = decay * ema_r + (1 - decay) * r.mean()
        ema_f = decay * ema_f + (1 - decay) * f.mean()
        assert lecam.ema_real.item() == pytest.approx(ema_r, rel=1e-6)
        assert lecam.ema_fake.item() == pytest.approx(ema_f, rel=1e-6)
        expected = np.mean((r - ema_f) ** 2) + np.mean((f - ema_r) ** 2)
        assert penalty.item() == pytest.approx(expected, rel=1e-6)
    # The EMAs are constants to the gradient: d/dr mean((r - ema_f)^2) = 2 (r - ema_f) / n.
    penalty.backward()
    assert torch.allclose(real.grad.double(), torch.from_numpy(2 * (r - ema_f) / r.size), rtol=1e-5)


def test_lecam_resumes_exactly_from_its_state_dict():
    g = torch.Generator().manual_seed(3)
    steps = [(torch.randn(4, generator=g), torch.randn(4, generator=g)) for _ in range(6)]
    original = LeCam(0.95)
    for real, fake in steps[:3]:
        original(real, fake)
    resumed = LeCam(0.95)
    resumed.load_state_dict(original.state_dict())
    for real, fake in steps[3:]:
        assert torch.equal(original(real, fake), resumed(real, fake))
    assert set(original.state_dict()) == {"ema_real", "ema_fake"}
    with pytest.raises(ValueError, match="decay"):
        LeCam(1.0)
