"""Diffusion maths against float64 numpy closed forms written out independently."""

import math

import numpy as np
import pytest
import torch

from vitok.generate.diffusion import GaussianDiffusion, cosine_betas, guide, linear_betas


def np_linear_betas(T=1000):
    return np.linspace(1e-4 * 1000 / T, 2e-2 * 1000 / T, T, dtype=np.float64)


def np_cosine_alpha_bar(s, T, offset=0.008):
    return np.cos((s / T + offset) / (1 + offset) * np.pi / 2) ** 2


def np_alpha_bar(betas):
    return np.cumprod(1.0 - betas)


def f64(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_linear_schedule_matches_numpy():
    betas = linear_betas(1000)
    assert betas.dtype == torch.float64
    np.testing.assert_allclose(betas.numpy(), np_linear_betas(), rtol=1e-12, atol=0)
    diffusion = GaussianDiffusion("linear", 1000)
    np.testing.assert_allclose(diffusion.alphas_cumprod.numpy(), np_alpha_bar(np_linear_betas()), rtol=1e-12)
    # DDPM's linear schedule ends with alpha_bar_T ~ 4.04e-5: x_T is noise to 4 decimal places.
    assert 3.9e-5 < float(diffusion.alphas_cumprod[-1]) < 4.2e-5
    np.testing.assert_allclose(linear_betas(250).numpy(), np_linear_betas(250), rtol=1e-12)


def test_cosine_schedule_matches_numpy():
    T = 1000
    betas = cosine_betas(T).numpy()
    f = np_cosine_alpha_bar(np.arange(T + 1, dtype=np.float64), T)
    want = np.minimum(1 - f[1:] / f[:-1], 0.999)
    np.testing.assert_allclose(betas, want, rtol=1e-10, atol=1e-15)
    # Where no beta is capped, alpha_bar_t is the closed form f(t + 1) / f(0).
    alpha_bar = GaussianDiffusion("cosine", T).alphas_cumprod.numpy()
    uncapped = np.cumsum(want >= 0.999) == 0
    np.testing.assert_allclose(alpha_bar[uncapped], (f[1:] / f[0])[uncapped], rtol=1e-9)
    assert betas.max() <= 0.999


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="beta schedule"):
        GaussianDiffusion("quadratic")
    with pytest.raises(ValueError, match="prediction"):
        GaussianDiffusion(prediction="x0")
    with pytest.raises(ValueError, match="timesteps"):
        GaussianDiffusion(timesteps=0)
    diffusion = GaussianDiffusion()
    with pytest.raises(ValueError, match=r"\[-1, 1000\)"):
        diffusion.alpha_bar(torch.tensor([1000]))
    with pytest.raises(ValueError, match="steps"):
        diffusion.sampling_timesteps(0)
    with pytest.raises(ValueError, match="spacing"):
        diffusion.sampling_timesteps(10, "quadratic")
    with pytest.raises(ValueError, match="eta"):
        diffusion.ddim_step(f64(1, 2, 2), f64(1, 2, 2), 5, 4, eta=1.5)
    with pytest.raises(ValueError, match="channels"):
        diffusion.training_loss(f64(1, 2, 3), f64(1, 2, 2), torch.tensor([3]), f64(1, 2, 2))


def test_q_sample_statistics():
    diffusion = GaussianDiffusion()
    n, t = 20000, 500
    x0 = f64(1, 3, 2, seed=1).expand(n, 3, 2)
    xt = diffusion.q_sample(x0, torch.full((n,), t), f64(n, 3, 2, seed=2))
    ab = np_alpha_bar(np_linear_betas())[t]
    mean, var = xt.mean(0).numpy(), xt.var(0).numpy()
    se = math.sqrt((1 - ab) / n)
    np.testing.assert_allclose(mean, math.sqrt(ab) * x0[0].numpy(), atol=4 * se)
    np.testing.assert_allclose(var, np.full_like(var, 1 - ab), rtol=0.05)


@pytest.mark.parametrize("t", [0, 1, 137, 500, 999])
def test_target_conversions_round_trip(t):
    eps_model, v_model = GaussianDiffusion(prediction="eps"), GaussianDiffusion(prediction="v")
    x0, eps = f64(4, 6, 3, seed=3), f64(4, 6, 3, seed=4)
    tt = torch.full((4,), t)
    xt = eps_model.q_sample(x0, tt, eps)
    ab = np_alpha_bar(np_linear_betas())[t]
    v = math.sqrt(ab) * eps.numpy() - math.sqrt(1 - ab) * x0.numpy()
    np.testing.assert_allclose(v_model.target(x0, tt, eps).numpy(), v, rtol=1e-12, atol=1e-12)
    assert torch.equal(eps_model.target(x0, tt, eps), eps)
    d = eps_model
    tol = dict(rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(d.eps_from_x0(xt, tt, x0).numpy(), eps.numpy(), **tol)
    np.testing.assert_allclose(d.x0_from_eps(xt, tt, eps).numpy(), x0.numpy(), **tol)
    np.testing.assert_allclose(d.v_from_eps(xt, tt, eps).numpy(), v, **tol)
    vt = torch.from_numpy(v)
    np.testing.assert_allclose(d.x0_from_v(xt, tt, vt).numpy(), x0.numpy(), **tol)
    np.testing.assert_allclose(d.eps_from_v(xt, tt, vt).numpy(), eps.numpy(), **tol)
    for model, pred in ((eps_model, eps), (v_model, vt)):
        x0_hat, eps_hat = model.x0_eps(xt, tt, pred)
        np.testing.assert_allclose(x0_hat.numpy(), x0.numpy(), **tol)
        np.testing.assert_allclose(eps_hat.numpy(), eps.numpy(), **tol)


def test_low_precision_inputs_get_float32_coefficients():
    diffusion = GaussianDiffusion()
    x0 = f64(2, 4, 2).to(torch.bfloat16)
    xt = diffusion.q_sample(x0, torch.tensor([0, 999]), x0)
    assert xt.dtype == torch.float32


def test_posterior_matches_numpy_one_step():
    diffusion = GaussianDiffusion()
    betas = np_linear_betas()
    alphas, ab = 1 - betas, np_alpha_bar(betas)
    ab_prev = np.append(1.0, ab[:-1])
    t = np.array([0, 1, 2, 50, 500, 998, 999])
    x0, xt = f64(len(t), 5, 2, seed=5), f64(len(t), 5, 2, seed=6)
    mean, var = diffusion.posterior(x0, xt, torch.from_numpy(t))
    c0 = betas * np.sqrt(ab_prev) / (1 - ab)
    ct = (1 - ab_prev) * np.sqrt(alphas) / (1 - ab)
    want_var = betas * (1 - ab_prev) / (1 - ab)
    want_mean = c0[t, None, None] * x0.numpy() + ct[t, None, None] * xt.numpy()
    np.testing.assert_allclose(mean.numpy(), want_mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(var.numpy().reshape(-1), want_var[t], rtol=1e-10, atol=0)
    assert var.shape == (len(t), 1, 1) and float(var[0]) == 0.0


@pytest.mark.parametrize("t,s", [(999, 995), (400, 100), (7, -1), (250, 249)])
def test_strided_posterior_matches_gaussian_conditioning(t, s):
    """q(x_s | x_t, x0) by conditioning the joint Gaussian of (x_s, x_t) given x0."""
    diffusion = GaussianDiffusion("cosine")
    ab = np.append(1.0, diffusion.alphas_cumprod.numpy())  # independent of the class's indexing
    ab_s, ab_t = ab[s + 1], ab[t + 1]
    cov = math.sqrt(ab_t / ab_s) * (1 - ab_s)
    x0, xt = f64(3, 4, 2, seed=7), f64(3, 4, 2, seed=8)
    want_mean = math.sqrt(ab_s) * x0.numpy() + cov / (1 - ab_t) * (xt.numpy() - math.sqrt(ab_t) * x0.numpy())
    want_var = (1 - ab_s) - cov ** 2 / (1 - ab_t)
    mean, var = diffusion.posterior(x0, xt, torch.full((3,), t), torch.full((3,), s))
    np.testing.assert_allclose(mean.numpy(), want_mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(var.numpy().reshape(-1), np.full(3, want_var), rtol=1e-8, atol=1e-15)


@pytest.mark.parametrize("t,s", [(999, 995), (500, 250), (3, -1)])
def test_ddim_eta0_is_the_closed_form_update(t, s):
    diffusion = GaussianDiffusion()
    ab = np.append(1.0, np_alpha_bar(np_linear_betas()))
    ab_t, ab_s = ab[t + 1], ab[s + 1]
    xt, eps = f64(2, 4, 3, seed=9), f64(2, 4, 3, seed=10)
    x0 = (xt.numpy() - math.sqrt(1 - ab_t) * eps.numpy()) / math.sqrt(ab_t)
    want = math.sqrt(ab_s) * x0 + math.sqrt(1 - ab_s) * eps.numpy()
    got = diffusion.ddim_step(xt, eps, torch.full((2,), t), torch.full((2,), s), eta=0.0)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("t,s", [(999, 998), (600, 596), (1, 0), (0, -1)])
def test_ddim_eta1_step_is_the_ancestral_step(t, s):
    diffusion = GaussianDiffusion()
    xt, eps, z = f64(2, 4, 3, seed=11), f64(2, 4, 3, seed=12), f64(2, 4, 3, seed=13)
    tt, ss = torch.full((2,), t), torch.full((2,), s)
    ddim = diffusion.ddim_step(xt, eps, tt, ss, eta=1.0, noise=z)
    ddpm = diffusion.ddpm_step(xt, eps, tt, ss, z)
    np.testing.assert_allclose(ddim.numpy(), ddpm.numpy(), rtol=1e-9, atol=1e-10)


def test_learned_variance_interpolates_between_posterior_variance_and_beta():
    diffusion = GaussianDiffusion()
    betas = np_linear_betas()
    ab = np_alpha_bar(betas)
    post = betas[1:] * (1 - ab[:-1]) / (1 - ab[1:])
    t = torch.tensor([0, 10, 999])
    lo = diffusion.model_log_variance(-torch.ones(3, 2, 2, dtype=torch.float64), t)
    hi = diffusion.model_log_variance(torch.ones(3, 2, 2, dtype=torch.float64), t)
    np.testing.assert_allclose(hi[:, 0, 0].numpy(), np.log(betas[[0, 10, 999]]), rtol=1e-12)
    # t = 0 has zero posterior variance: its log is clipped to t = 1's.
    np.testing.assert_allclose(lo[:, 0, 0].numpy(), np.log(post[[0, 9, 998]]), rtol=1e-12)
    # With variance channels at -1 the ancestral step is the fixed-variance one.
    xt, eps, z = f64(3, 2, 2, seed=14), f64(3, 2, 2, seed=15), f64(3, 2, 2, seed=16)
    out = torch.cat([eps, -torch.ones_like(eps)], dim=-1)
    tt = torch.tensor([5, 10, 999])
    np.testing.assert_allclose(diffusion.ddpm_step(xt, out, tt, tt - 1, z).numpy(),
                               diffusion.ddpm_step(xt, eps, tt, tt - 1, z).numpy(), rtol=1e-10)


def test_sampling_timesteps():
    diffusion = GaussianDiffusion()
    ts = diffusion.sampling_timesteps(250)
    assert len(ts) == 250 and ts[0] == 999 and ts[-1] == 0
    assert ts == sorted({round(i * 999 / 249) for i in range(250)}, reverse=True)
    assert diffusion.sampling_timesteps(250, "leading") == list(range(996, -1, -4))
    assert diffusion.sampling_timesteps(1000) == list(range(999, -1, -1))


def test_training_loss_mse_and_targets():
    x0, noise = f64(3, 4, 2, seed=17), f64(3, 4, 2, seed=18)
    t = torch.tensor([0, 400, 999])
    eps_model = GaussianDiffusion(prediction="eps")
    assert torch.allclose(eps_model.training_loss(noise, x0, t, noise), torch.zeros(3, dtype=torch.float64))
    np.testing.assert_allclose(eps_model.training_loss(noise + 0.5, x0, t, noise).numpy(), np.full(3, 0.25))
    v_model = GaussianDiffusion(prediction="v")
    ab = np_alpha_bar(np_linear_betas())[t.numpy()][:, None, None]
    v = np.sqrt(ab) * noise.numpy() - np.sqrt(1 - ab) * x0.numpy()
    want = ((0 - v) ** 2).mean(axis=(1, 2))
    np.testing.assert_allclose(v_model.training_loss(torch.zeros_like(x0), x0, t, noise).numpy(), want, rtol=1e-12)


def test_hybrid_loss_adds_the_variational_bound_in_bits():
    diffusion = GaussianDiffusion()
    x0, noise = f64(2, 3, 2, seed=19), f64(2, 3, 2, seed=20)
    t = torch.tensor([0, 300])
    eps_hat = (noise + 0.1 * f64(2, 3, 2, seed=21)).requires_grad_(True)
    var_out = (0.3 * f64(2, 3, 2, seed=22)).requires_grad_(True)
    loss = diffusion.training_loss(torch.cat([eps_hat, var_out], -1), x0, t, noise)

    betas = np_linear_betas()
    ab = np_alpha_bar(betas)
    ab_prev = np.append(1.0, ab[:-1])
    post_var = betas * (1 - ab_prev) / (1 - ab)
    post_log = np.log(np.append(post_var[1], post_var[1:]))
    n_x0, n_eps, n_hat, n_v = x0.numpy(), noise.numpy(), eps_hat.detach().numpy(), var_out.detach().numpy()
    want = []
    for i, ti in enumerate(t.tolist()):
        c0 = betas[ti] * np.sqrt(ab_prev[ti]) / (1 - ab[ti])
        ct = (1 - ab_prev[ti]) * np.sqrt(1 - betas[ti]) / (1 - ab[ti])
        xt = np.sqrt(ab[ti]) * n_x0[i] + np.sqrt(1 - ab[ti]) * n_eps[i]
        x0_hat = (xt - np.sqrt(1 - ab[ti]) * n_hat[i]) / np.sqrt(ab[ti])
        m_p, m_q = c0 * x0_hat + ct * xt, c0 * n_x0[i] + ct * xt
        frac = (n_v[i] + 1) / 2
        logv_p = frac * np.log(betas[ti]) + (1 - frac) * post_log[ti]
        if ti == 0:
            term = 0.5 * (np.log(2 * np.pi) + logv_p + (n_x0[i] - m_p) ** 2 / np.exp(logv_p))
        else:
            logv_q = post_log[ti]
            term = 0.5 * (logv_p - logv_q + np.exp(logv_q - logv_p) + (m_q - m_p) ** 2 / np.exp(logv_p) - 1)
        mse = ((n_hat[i] - n_eps[i]) ** 2).mean()
        want.append(mse + term.mean() / np.log(2))
    np.testing.assert_allclose(loss.detach().numpy(), want, rtol=1e-9)
    # The bound trains the variance only: the prediction's gradient is the MSE's.
    loss.sum().backward()
    mse_grad = 2 * (n_hat - n_eps) / n_hat[0].size
    np.testing.assert_allclose(eps_hat.grad.numpy(), mse_grad, rtol=1e-9, atol=1e-14)
    assert var_out.grad.abs().sum() > 0


def test_guide_combination():
    cond, uncond = f64(2, 3, 2, seed=23), f64(2, 3, 2, seed=24)
    assert torch.allclose(guide(cond, uncond, 1.0), cond, rtol=0, atol=1e-15)
    assert torch.equal(guide(cond, uncond, 0.0), uncond)
    np.testing.assert_allclose(guide(cond, uncond, 1.5).numpy(),
                               uncond.numpy() + 1.5 * (cond.numpy() - uncond.numpy()), rtol=1e-14)
