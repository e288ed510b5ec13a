"""The diagonal Gaussian posterior against torch.distributions and sampling statistics."""

import torch
from torch.distributions import Normal, kl_divergence

from vitok.model import DiagonalGaussian


def test_kl_matches_torch_distributions_in_float64():
    torch.manual_seed(0)
    mean, logvar = torch.randn(3, 5, 4), torch.randn(3, 5, 4) * 2
    post = DiagonalGaussian(mean, logvar)
    ref = kl_divergence(Normal(mean.double(), (0.5 * logvar.double()).exp()),
                        Normal(torch.zeros((), dtype=torch.float64), torch.ones((), dtype=torch.float64)))
    torch.testing.assert_close(post.kl().double(), ref.flatten(1).sum(1), rtol=1e-5, atol=1e-5)


def test_kl_is_zero_for_the_prior():
    post = DiagonalGaussian(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4))
    assert torch.equal(post.kl(), torch.zeros(2))


def test_sample_statistics_and_mode():
    mean = torch.full((1, 200, 50), 1.5)
    logvar = torch.full((1, 200, 50), 2 * torch.log(torch.tensor(0.5)).item())
    post = DiagonalGaussian(mean, logvar)
    z = post.sample(generator=torch.Generator().manual_seed(0))
    assert abs(z.mean().item() - 1.5) < 0.01
    assert abs(z.std().item() - 0.5) < 0.01
    assert torch.equal(post.mode(), mean)


def test_sample_is_reparameterised():
    mean = torch.zeros(1, 2, 3, requires_grad=True)
    logvar = torch.zeros(1, 2, 3, requires_grad=True)
    DiagonalGaussian(mean, logvar).sample().sum().backward()
    assert torch.equal(mean.grad, torch.ones_like(mean))
    assert logvar.grad.abs().sum() > 0
