"""Samplers on a 2-D Gaussian mixture whose optimal denoiser is analytic, so no training is needed.

For data x0 ~ N(mu, s² I), x_t = a x0 + b eps is N(a mu, (a² s² + b²) I) and the exact
eps-prediction is E[eps | x_t] = b (x_t - a mu) / (a² s² + b²); for a mixture it is the
posterior-weighted sum of the components' predictions.
"""

import math

import numpy as np
import pytest
import torch

from vitok.generate.diffusion import GaussianDiffusion, guide

MEANS = torch.tensor([[-2.0, 0.0], [2.0, 1.0]], dtype=torch.float64)
STDS = torch.tensor([0.5, 0.3], dtype=torch.float64)
WEIGHTS = torch.tensor([0.3, 0.7], dtype=torch.float64)
N = 4000


def alpha_bar_np(T=1000):
    return np.cumprod(1 - np.linspace(1e-4, 2e-2, T, dtype=np.float64))


AB = torch.from_numpy(alpha_bar_np())


def component_eps(x, t, k):
    """Optimal eps of component k (x is B×1×2, t is B); returns eps and the log-density of x_t."""
    ab = AB[t.long()].view(-1, 1, 1)
    a, b = ab.sqrt(), (1 - ab).sqrt()
    var = a ** 2 * STDS[k] ** 2 + b ** 2
    diff = x - a * MEANS[k]
    log_density = -diff.pow(2).sum((1, 2)) / (2 * var.view(-1)) - math.log(2 * math.pi) - torch.log(var.view(-1))
    return b * diff / var, log_density


def mixture_eps(x, t):
    parts = [component_eps(x, t, k) for k in range(len(WEIGHTS))]
    logits = torch.stack([lp + WEIGHTS[k].log() for k, (_, lp) in enumerate(parts)], dim=1)
    w = logits.softmax(dim=1)
    return sum(w[:, k].view(-1, 1, 1) * eps for k, (eps, _) in enumerate(parts))


def optimal_model(x, t, labels, cfg_scale):
    """Unconditional: the mixture. Conditional on label k: component k, guided against the mixture."""
    uncond = mixture_eps(x, t)
    if labels is None:
        return uncond
    per_class = torch.stack([component_eps(x, t, k)[0] for k in range(len(WEIGHTS))])  # K×B×1×2
    cond = per_class[labels, torch.arange(x.shape[0])]
    return guide(cond, uncond, cfg_scale)


def assign(samples):
    """Nearest component mean per sample: B×1×2 -> B."""
    return (samples[:, 0, None, :] - MEANS[None]).pow(2).sum(-1).argmin(1)


def check_mixture_statistics(samples, rtol=0.1):
    x = samples[:, 0, :]
    want_mean = (WEIGHTS[:, None] * MEANS).sum(0)
    second = (WEIGHTS[:, None] * (STDS[:, None] ** 2 + MEANS ** 2)).sum(0)
    want_var = second - want_mean ** 2
    np.testing.assert_allclose(x.mean(0).numpy(), want_mean.numpy(), atol=0.1)
    np.testing.assert_allclose(x.var(0).numpy(), want_var.numpy(), rtol=rtol)
    k = assign(samples)
    assert abs(float((k == 1).double().mean()) - float(WEIGHTS[1])) < 0.03
    for c in range(2):
        part = x[k == c]
        np.testing.assert_allclose(part.mean(0).numpy(), MEANS[c].numpy(), atol=0.05)
        np.testing.assert_allclose(part.std(0).numpy(), np.full(2, float(STDS[c])), rtol=rtol)


def draw(method, steps, eta=0.0, seed=0, prediction="eps", model=optimal_model, **kwargs):
    diffusion = GaussianDiffusion("linear", 1000, prediction=prediction)
    return diffusion.sample(model, (N, 1, 2), steps=steps, eta=eta, method=method,
                            generator=torch.Generator().manual_seed(seed), dtype=torch.float64, **kwargs)


@pytest.fixture(scope="module")
def ddpm_samples():
    return draw("ddpm", 1000)


def test_ddpm_ancestral_sampler_matches_the_data(ddpm_samples):
    check_mixture_statistics(ddpm_samples)


def test_ddim_eta1_all_steps_equals_ddpm(ddpm_samples):
    samples = draw("ddim", 1000, eta=1.0)
    check_mixture_statistics(samples)
    # Same noise draws, same maths: the two samplers take the same path.
    np.testing.assert_allclose(samples.numpy(), ddpm_samples.numpy(), rtol=1e-6, atol=1e-8)


def test_ddim_eta0_strided_matches_the_data():
    check_mixture_statistics(draw("ddim", 50, eta=0.0), rtol=0.12)


def test_v_prediction_samples_like_eps_prediction():
    def v_model(x, t, labels, cfg_scale):
        ab = AB[t.long()].view(-1, 1, 1)
        return (mixture_eps(x, t) - (1 - ab).sqrt() * x) / ab.sqrt()

    eps_samples = draw("ddim", 25, eta=0.5, seed=3)
    v_samples = draw("ddim", 25, eta=0.5, seed=3, prediction="v", model=v_model)
    np.testing.assert_allclose(v_samples.numpy(), eps_samples.numpy(), rtol=1e-8, atol=1e-10)


def test_class_conditional_guided_sampling():
    diffusion = GaussianDiffusion()
    n = 1000
    labels = torch.arange(n) % 2

    def run(scale):
        return diffusion.sample(optimal_model, (n, 1, 2), steps=50, labels=labels, cfg_scale=scale,
                                generator=torch.Generator().manual_seed(4), dtype=torch.float64)[:, 0, :]

    cond, guided = run(1.0), run(3.0)
    for c in range(2):
        np.testing.assert_allclose(cond[labels == c].mean(0).numpy(), MEANS[c].numpy(), atol=0.05)
        np.testing.assert_allclose(cond[labels == c].std(0).numpy(), np.full(2, float(STDS[c])), rtol=0.12)
        # Guidance pushes each class away from the other: further from the other class's mean.
        other = MEANS[1 - c]
        d_cond = (cond[labels == c] - other).norm(dim=1).mean()
        d_guided = (guided[labels == c] - other).norm(dim=1).mean()
        assert d_guided > d_cond + 0.05
