"""Gaussian diffusion over latent tokens: schedules, forward process, targets, loss and samplers.

Shapes: x is B×L×c latent tokens (any B×... works), t is B integer timesteps in [0, T), and
t = -1 stands for the clean data every sampler ends on (alpha_bar = 1). The schedule lives in
float64; each coefficient is computed in float64 from the gathered alpha_bar and only then cast
to the tensor's dtype (at least float32), so 1 - alpha_bar near t = 0 and 1 / sqrt(alpha_bar)
near t = T keep their bits.

Notation: a = sqrt(alpha_bar_t), b = sqrt(1 - alpha_bar_t); x_t = a x0 + b eps; v = a eps - b x0.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("eps", "v")
SPACINGS = ("uniform", "leading")
SAMPLERS = ("ddim", "ddpm")
# The linear schedule's last beta is 20 / T: below 21 steps it reaches 1 and alpha_bar hits 0 (or turns
# negative), so noise cannot be told from data. The cosine schedule clips its betas and works at any T.
MIN_TIMESTEPS = {"linear": 21, "cosine": 1}

# model_fn(x_t B×L×c, t B, labels B or None, cfg_scale) -> prediction B×L×c (or B×L×2c with variance channels).
ModelFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None", float], torch.Tensor]


def linear_betas(timesteps: int = 1000) -> torch.Tensor:
    """DDPM's (and DiT's) linear betas in float64: 1e-4 to 2e-2 at 1000 steps, endpoints scaled by 1000 / T."""
    scale = 1000.0 / timesteps
    return torch.linspace(scale * 1e-4, scale * 2e-2, timesteps, dtype=torch.float64)


def cosine_betas(timesteps: int = 1000, offset: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule in float64: alpha_bar(s) = cos²((s + offset) / (1 + offset) · π/2).

    Betas are capped at max_beta: the last step's ratio of alpha_bars tends to 0 and beta to 1,
    which would make 1 / sqrt(alpha) blow up. Even so alpha_bar_T is about 2e-9, and an
    eps-predicting model's x0 = (x_t - b eps) / a multiplies its error by 1 / a there: pair this
    schedule with v-prediction (or a linear schedule with eps, as DiT does).
    """
    s = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    alpha_bar = torch.cos((s + offset) / (1 + offset) * math.pi / 2) ** 2
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


def make_betas(schedule: str, timesteps: int) -> torch.Tensor:
    """Betas (T, float64) for a named schedule: "linear" or "cosine"."""
    if schedule == "linear":
        return linear_betas(timesteps)
    if schedule == "cosine":
        return cosine_betas(timesteps)
    raise ValueError(f"unknown beta schedule {schedule!r}; choose one of {SCHEDULES}")


def check_timesteps(schedule: str, timesteps: int) -> None:
    """Refuse a schedule whose betas would leave (0, 1) at this many timesteps."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown beta schedule {schedule!r}; choose one of {SCHEDULES}")
    if timesteps < MIN_TIMESTEPS[schedule]:
        raise ValueError(f"the {schedule} schedule needs timesteps >= {MIN_TIMESTEPS[schedule]} (its betas reach 1 "
                         f"below that), got {timesteps}; raise timesteps or use schedule=cosine")


def _wide(x: torch.Tensor) -> torch.Tensor:
    """x in at least float32 (float64 stays float64): losses are never reduced in bf16."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: uncond + scale · (cond - uncond); scale 1 is the conditional model."""
    return uncond + scale * (cond - uncond)


class GaussianDiffusion:
    """A discrete Gaussian diffusion process of T steps with an eps- or v-predicting model."""

    def __init__(self, schedule: str = "linear", timesteps: int = 1000, prediction: str = "eps") -> None:
        if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
            raise ValueError(f"timesteps must be a positive integer, got {timesteps!r}")
        check_timesteps(schedule, timesteps)
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; choose one of {PREDICTIONS}")
        self.schedule = schedule
        self.timesteps = timesteps
        self.prediction = prediction
        self.betas = make_betas(schedule, timesteps)  # T, float64
        self.alphas_cumprod = torch.cumprod(1 - self.betas, dim=0)  # T, float64
        # alpha_bar indexed by t + 1, so that t = -1 (clean data) reads 1.
        self._alpha_bar = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod])
        # The one-step posterior variance is 0 at t = 0; its log is clipped to the t = 1 value
        # (as IDDPM does) wherever a log-variance is needed there.
        self._min_variance = float(self.betas[1] * (1 - self.alphas_cumprod[0]) / (1 - self.alphas_cumprod[1])) \
            if timesteps > 1 else float(self.betas[0])

    # ---- coefficients -------------------------------------------------------------------------

    def alpha_bar(self, t: torch.Tensor | int) -> torch.Tensor:
        """alpha_bar at each t (t = -1 gives 1), float64 on the CPU, shape B (or 1 for an int)."""
        idx = torch.as_tensor(t).detach().to("cpu", torch.long).reshape(-1)
        if bool((idx < -1).any()) or bool((idx >= self.timesteps).any()):
            raise ValueError(f"timesteps must lie in [-1, {self.timesteps}), got {idx.tolist()[:8]}")
        return self._alpha_bar[idx + 1]

    @staticmethod
    def _cast(coef: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """A float64 per-sample coefficient, shaped B×1×…×1 to broadcast over `like`, in at least float32."""
        dtype = torch.promote_types(like.dtype, torch.float32)
        return coef.to(device=like.device, dtype=dtype).view(-1, *([1] * (like.dim() - 1)))

    def _ab(self, t: torch.Tensor | int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, b) = (sqrt(alpha_bar), sqrt(1 - alpha_bar)) broadcastable against `like`."""
        ab = self.alpha_bar(t)
        return self._cast(ab.sqrt(), like), self._cast((1 - ab).sqrt(), like)

    # ---- forward process and targets ----------------------------------------------------------

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x0) = N(a x0, b² I) with the given standard-normal noise."""
        a, b = self._ab(t, x0)
        return a * x0 + b * noise

    def target(self, x0: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor) -> torch.Tensor:
        """What the model regresses: eps itself, or v = a eps - b x0."""
        if self.prediction == "eps":
            return noise
        a, b = self._ab(t, x0)
        return a * noise - b * x0

    def x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor | int, eps: torch.Tensor) -> torch.Tensor:
        """x0 = (x_t - b eps) / a."""
        a, b = self._ab(t, x_t)
        return (x_t - b * eps) / a

    def eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor | int, x0: torch.Tensor) -> torch.Tensor:
        """eps = (x_t - a x0) / b."""
        a, b = self._ab(t, x_t)
        return (x_t - a * x0) / b

    def v_from_eps(self, x_t: torch.Tensor, t: torch.Tensor | int, eps: torch.Tensor) -> torch.Tensor:
        """v = (eps - b x_t) / a (a eps - b x0 with x0 eliminated)."""
        a, b = self._ab(t, x_t)
        return (eps - b * x_t) / a

    def x0_from_v(self, x_t: torch.Tensor, t: torch.Tensor | int, v: torch.Tensor) -> torch.Tensor:
        """x0 = a x_t - b v."""
        a, b = self._ab(t, x_t)
        return a * x_t - b * v

    def eps_from_v(self, x_t: torch.Tensor, t: torch.Tensor | int, v: torch.Tensor) -> torch.Tensor:
        """eps = b x_t + a v."""
        a, b = self._ab(t, x_t)
        return b * x_t + a * v

    def x0_eps(self, x_t: torch.Tensor, t: torch.Tensor | int, pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's prediction (eps or v, B×L×c) turned into (x0, eps) estimates."""
        if self.prediction == "eps":
            return self.x0_from_eps(x_t, t, pred), pred
        return self.x0_from_v(x_t, t, pred), self.eps_from_v(x_t, t, pred)

    # ---- reverse process ----------------------------------------------------------------------

    def posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | int,
                  t_prev: torch.Tensor | int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (B×L×c) and variance (B×1×1) of q(x_s | x_t, x0) for s = t_prev < t (default t - 1).

        Written for any s < t, so one formula serves the full chain and strided samplers alike.
        With A = alpha_bar and beta_ts = 1 - A_t / A_s the mean is
        sqrt(A_s) beta_ts / (1 - A_t) x0 + sqrt(A_t / A_s) (1 - A_s) / (1 - A_t) x_t
        and the variance beta_ts (1 - A_s) / (1 - A_t); at s = -1 it is (x0, 0).
        """
        ab_t = self.alpha_bar(t)
        ab_s = self.alpha_bar(torch.as_tensor(t) - 1 if t_prev is None else t_prev)
        beta_ts = 1 - ab_t / ab_s
        coef_x0 = ab_s.sqrt() * beta_ts / (1 - ab_t)
        coef_xt = (ab_t / ab_s).sqrt() * (1 - ab_s) / (1 - ab_t)
        variance = beta_ts * (1 - ab_s) / (1 - ab_t)
        mean = self._cast(coef_x0, x_t) * x0 + self._cast(coef_xt, x_t) * x_t
        return mean, self._cast(variance, x_t)

    def model_log_variance(self, var_out: torch.Tensor, t: torch.Tensor | int,
                           t_prev: torch.Tensor | int | None = None) -> torch.Tensor:
        """Learned log-variance (IDDPM): var_out in [-1, 1] interpolates log between posterior variance and beta_ts."""
        ab_t = self.alpha_bar(t)
        ab_s = self.alpha_bar(torch.as_tensor(t) - 1 if t_prev is None else t_prev)
        beta_ts = 1 - ab_t / ab_s
        variance = beta_ts * (1 - ab_s) / (1 - ab_t)
        lo = torch.where(variance > 0, variance, torch.full_like(variance, self._min_variance)).log()
        frac = (var_out + 1) / 2
        return frac * self._cast(beta_ts.log(), var_out) + (1 - frac) * self._cast(lo, var_out)

    def _split(self, out: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Model output -> (prediction, variance channels or None); c is x's channel count."""
        c = x.shape[-1]
        if out.shape[-1] == c:
            return out, None
        if out.shape[-1] == 2 * c:
            return out[..., :c], out[..., c:]
        raise ValueError(f"model output has {out.shape[-1]} channels; expected {c} (prediction) or "
                         f"{2 * c} (prediction + learned variance) for {c}-channel latents")

    def training_loss(self, out: torch.Tensor, x0: torch.Tensor, t: torch.Tensor,
                      noise: torch.Tensor) -> torch.Tensor:
        """Per-sample loss (B) for a model output at x_t = q_sample(x0, t, noise).

        MSE between the prediction and its target (eps or v), averaged over tokens and channels.
        With learned variance channels, IDDPM's hybrid loss adds the variational bound term in bits
        per dimension: KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)) for t > 0 and the Gaussian
        negative log-likelihood of x0 at t = 0 (continuous latents, so no discretised decoder).
        """
        pred, var_out = self._split(out, x0)
        dims = tuple(range(1, x0.dim()))
        mse = (_wide(pred) - _wide(self.target(x0, t, noise))).pow(2).mean(dim=dims)
        if var_out is None:
            return mse
        x_t = self.q_sample(x0, t, noise)
        # The bound trains only the variance: the mean is learned by the MSE term alone (IDDPM).
        model_mean, _ = self.posterior(self.x0_eps(x_t, t, pred.detach())[0], x_t, t)
        model_logvar = self.model_log_variance(var_out, t)
        true_mean, true_var = self.posterior(x0, x_t, t)
        true_logvar = torch.where(true_var > 0, true_var, torch.full_like(true_var, self._min_variance)).log()
        kl = 0.5 * (model_logvar - true_logvar + (true_logvar - model_logvar).exp()
                    + (true_mean - model_mean).pow(2) * (-model_logvar).exp() - 1)
        nll = 0.5 * (math.log(2 * math.pi) + model_logvar + (x0 - model_mean).pow(2) * (-model_logvar).exp())
        first = self._cast(torch.as_tensor(t).cpu() == 0, x0).bool()
        vb = _wide(torch.where(first, nll, kl)).mean(dim=dims) / math.log(2)
        return mse + vb

    def ddpm_step(self, x_t: torch.Tensor, out: torch.Tensor, t: torch.Tensor | int, t_prev: torch.Tensor | int,
                  noise: torch.Tensor | None) -> torch.Tensor:
        """Ancestral step x_t -> x_s ~ p(x_s | x_t): the posterior at the predicted x0, with its variance
        (fixed "small" variance, or the learned one when `out` carries variance channels)."""
        pred, var_out = self._split(out, x_t)
        mean, variance = self.posterior(self.x0_eps(x_t, t, pred)[0], x_t, t, t_prev)
        if noise is None:
            return mean
        std = variance.sqrt() if var_out is None else (0.5 * self.model_log_variance(var_out, t, t_prev)).exp()
        # The last step (s = -1) returns the mean: its x0 estimate.
        last = self._cast(torch.as_tensor(t_prev).cpu() < 0, x_t).bool()
        return torch.where(last, mean, mean + std * noise)

    def ddim_step(self, x_t: torch.Tensor, out: torch.Tensor, t: torch.Tensor | int, t_prev: torch.Tensor | int,
                  eta: float = 0.0, noise: torch.Tensor | None = None) -> torch.Tensor:
        """DDIM step x_t -> x_s = sqrt(alpha_bar_s) x0 + sqrt(1 - alpha_bar_s - sigma²) eps + sigma z.

        sigma = eta sqrt((1 - alpha_bar_s) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_s):
        eta = 0 is deterministic, eta = 1 is the ancestral (DDPM) step; noise=None adds no noise.
        Variance channels are ignored.
        """
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"DDIM eta must lie in [0, 1], got {eta}")
        pred, _ = self._split(out, x_t)
        x0, eps = self.x0_eps(x_t, t, pred)
        ab_t, ab_s = self.alpha_bar(t), self.alpha_bar(t_prev)
        sigma = eta * ((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)).sqrt()
        x_s = self._cast(ab_s.sqrt(), x_t) * x0 + self._cast((1 - ab_s - sigma ** 2).clamp(min=0).sqrt(), x_t) * eps
        if eta > 0 and noise is not None:
            x_s = x_s + self._cast(sigma, x_t) * noise
        return x_s

    # ---- sampling -----------------------------------------------------------------------------

    def sampling_timesteps(self, steps: int, spacing: str = "uniform") -> list[int]:
        """The strided subset of timesteps a sampler visits, in descending order.

        "uniform" rounds an even spread over [0, T - 1] (IDDPM/DiT respacing: it keeps both ends);
        "leading" is DDIM's 0, T/steps, 2T/steps, ...
        """
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= self.timesteps:
            raise ValueError(f"sampling steps must be an integer in [1, {self.timesteps}], got {steps!r}")
        if spacing == "uniform":
            ts = torch.linspace(0, self.timesteps - 1, steps, dtype=torch.float64).round().long().tolist()
        elif spacing == "leading":
            ts = list(range(0, self.timesteps, self.timesteps // steps))[:steps]
        else:
            raise ValueError(f"unknown timestep spacing {spacing!r}; choose one of {SPACINGS}")
        return sorted(set(ts), reverse=True)

    @torch.no_grad()
    def sample(self, model_fn: ModelFn, shape: tuple[int, ...], steps: int = 250, eta: float = 0.0,
               cfg_scale: float = 1.0, labels: torch.Tensor | None = None,
               generator: torch.Generator | None = None, *, method: str = "ddim", spacing: str = "uniform",
               noise: torch.Tensor | None = None, device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Draw B×L×c latents by running a sampler from pure noise over `steps` strided timesteps.

        model_fn(x_t, t, labels, cfg_scale) returns the model's prediction at the original
        timestep indices t; classifier-free guidance is the model's job (DiT.forward_with_cfg
        with the grid bound fits), so cfg_scale is passed through. method "ddim" uses eta;
        "ddpm" is the ancestral sampler (and uses learned variance if the model outputs it).
        """
        if method not in SAMPLERS:
            raise ValueError(f"unknown sampler {method!r}; choose one of {SAMPLERS}")
        if device is None:
            device = generator.device if generator is not None else "cpu"
        if noise is not None and tuple(noise.shape) != tuple(shape):
            raise ValueError(f"noise has shape {tuple(noise.shape)}, but samples of shape {tuple(shape)} were asked for")
        x = torch.randn(shape, generator=generator, device=device, dtype=dtype) if noise is None else noise
        timesteps = self.sampling_timesteps(steps, spacing)
        for i, t in enumerate(timesteps):
            t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
            out = model_fn(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long), labels, cfg_scale)
            stochastic = t_prev >= 0 and (method == "ddpm" or eta > 0)
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) if stochastic else None
            if method == "ddpm":
                x = self.ddpm_step(x, out, t, t_prev, z)
            else:
                x = self.ddim_step(x, out, t, t_prev, eta, z)
        return x
