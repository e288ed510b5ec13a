"""Tests for vitok.losses.reconstruction against float64 closed forms written out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vitok.losses import kl_loss, reconstruction_loss
from vitok.model.distributions import DiagonalGaussian


def _pair(dtype: torch.dtype = torch.float32, shape=(2, 3, 4, 8, 8)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=g).to(dtype), torch.randn(shape, generator=g).to(dtype)


@pytest.mark.parametrize("kind", ["mse", "l1"])
def test_reconstruction_matches_float64_formula(kind):
    x_hat, x = _pair()
    d = x_hat.double().numpy() - x.double().numpy()
    expected = np.mean(d * d) if kind == "mse" else np.mean(np.abs(d))
    got = reconstruction_loss(x_hat, x, kind)
    assert got.dim() == 0 and got.dtype == torch.float32
    assert got.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("kind", ["mse", "l1"])
def test_reconstruction_of_bfloat16_accumulates_in_float32(kind):
    x_hat, x = _pair(torch.bfloat16, shape=(4, 3, 64, 64))
    # The reference sees exactly the bfloat16-rounded values, in float64.
    d = x_hat.double().numpy() - x.double().numpy()
    expected = np.mean(d * d) if kind == "mse" else np.mean(np.abs(d))
    got = reconstruction_loss(x_hat, x, kind)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_reconstruction_is_differentiable_and_zero_at_target():
    x_hat, x = _pair()
    x_hat.requires_grad_(True)
    reconstruction_loss(x_hat, x).backward()
    # d/dx_hat mean((x_hat - x)^2) = 2 (x_hat - x) / n
    assert torch.allclose(x_hat.grad, 2 * (x_hat - x).detach() / x.numel(), rtol=1e-5, atol=1e-9)
    assert reconstruction_loss(x, x, "l1").item() == 0.0


def test_reconstruction_rejects_unknown_kind_and_shape_mismatch():
    x_hat, x = _pair()
    with pytest.raises(ValueError, match="mse, l1"):
        reconstruction_loss(x_hat, x, "l2")
    with pytest.raises(ValueError, match="shapes differ"):
        reconstruction_loss(x_hat[:, :, :1], x)


def test_kl_is_the_per_element_mean_of_the_gaussian_kl():
    g = torch.Generator().manual_seed(1)
    mean = torch.randn(3, 5, 4, generator=g)
    logvar = torch.randn(3, 5, 4, generator=g) * 0.7
    # KL(N(m, s^2) || N(0, 1)) = log(1 / s) + (s^2 + m^2) / 2 - 1/2, one element at a time.
    total = 0.0
    for m, lv in zip(mean.double().flatten().tolist(), logvar.double().flatten().tolist()):
        s = math.exp(0.5 * lv)
        total += math.log(1.0 / s) + (s * s + m * m) / 2.0 - 0.5
    expected = total / mean.numel()
    got = kl_loss(DiagonalGaussian(mean, logvar))
    assert got.dim() == 0
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_kl_is_zero_for_the_prior_and_differentiable():
    mean = torch.zeros(2, 3, 4, requires_grad=True)
    logvar = torch.zeros(2, 3, 4, requires_grad=True)
    loss = kl_loss(DiagonalGaussian(mean, logvar))
    assert loss.item() == 0.0
    loss.backward()
    assert mean.grad is not None and logvar.grad is not None
