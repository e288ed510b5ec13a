"""Latent statistics that travel with a tokenizer: per-channel mean and std, a global shift and scale.

A diffusion model trains on normalised latents; which normalisation, computed on which data,
with which tokenizer, is the question every user of a VAE asks. `vitok stats` streams a data set
through the encoder (posterior mean) and stores a LatentStats in the tokenizer's config.json,
beside its architecture, so the numbers and their provenance never travel apart:

    mean, std          per channel (c values), over every token of every sample (population std)
    shift_factor       the mean over all latent values (one number)
    scaling_factor     1 / the std over all latent values (one number), diffusers' convention:
                       z_model = (z - shift_factor) * scaling_factor
    num_samples, num_tokens, data, fingerprint, image_size   what they were computed on

Moments are accumulated in float64 as sums of x and x² per channel (mergeable across processes);
the shifted form loses nothing for latents of order 1.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

STATS_KEY = "latent_stats"  # the key of config.json that holds them
MODES = ("channel", "global")  # per-channel mean/std, or diffusers' single shift and scale


@dataclass
class LatentStats:
    """Statistics of a tokenizer's latents over one data set (see the module docstring)."""

    mean: list[float]
    std: list[float]
    shift_factor: float
    scaling_factor: float
    num_samples: int
    num_tokens: int  # latent vectors seen: samples × L
    data: str = ""  # what they were computed on, as given
    fingerprint: str = ""  # hash of the data set's file list (and sizes): the same data gives the same one
    image_size: int = 0

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(f"latent statistics need one mean and one std per channel, got {len(self.mean)} and "
                             f"{len(self.std)}")
        values = [*self.mean, *self.std, self.shift_factor, self.scaling_factor]
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            raise ValueError("latent statistics must be finite numbers; recompute them with `vitok stats`")
        if min(self.std) <= 0 or self.scaling_factor <= 0:
            raise ValueError("latent statistics hold a std of zero or less (constant latents): the tokenizer is "
                             "degenerate or the data set held one image; recompute them on real data")

    @property
    def channels(self) -> int:
        return len(self.mean)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object, where: str = "latent_stats") -> "LatentStats":
        if not isinstance(data, dict):
            raise ValueError(f"{where} must be a mapping, got {type(data).__name__}")
        try:
            return cls(**data)
        except TypeError as err:
            raise ValueError(f"{where}: {err}") from None

    def same_normalisation(self, mean: list[float], std: list[float], rel: float = 1e-6) -> bool:
        """Whether per-channel (mean, std), e.g. a latent store's, are these statistics."""
        if len(mean) != len(self.mean) or len(std) != len(self.std):
            return False
        return all(math.isclose(a, b, rel_tol=rel, abs_tol=1e-9)
                   for a, b in zip([*mean, *std], [*self.mean, *self.std]))

    def _factors(self, z: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        if mode not in MODES:
            raise ValueError(f"normalisation mode must be one of {MODES}, got {mode!r}")
        if z.shape[-1] != self.channels:
            raise ValueError(f"latents have {z.shape[-1]} channels, these statistics {self.channels}: they belong "
                             f"to another tokenizer")
        if mode == "global":
            return (torch.tensor(self.shift_factor, dtype=torch.float32, device=z.device),
                    torch.tensor(1.0 / self.scaling_factor, dtype=torch.float32, device=z.device))
        return (torch.tensor(self.mean, dtype=torch.float32, device=z.device),
                torch.tensor(self.std, dtype=torch.float32, device=z.device))

    def normalise(self, z: torch.Tensor, mode: str = "channel") -> torch.Tensor:
        """Latents …×c -> zero mean, unit std (per channel, or with the global shift and scale); float32."""
        shift, scale = self._factors(z, mode)
        return (z.float() - shift) / scale

    def denormalise(self, z: torch.Tensor, mode: str = "channel") -> torch.Tensor:
        """The inverse of normalise."""
        shift, scale = self._factors(z, mode)
        return z.float() * scale + shift


class MomentAccumulator:
    """Float64 sums of x and x² per channel over B×L×c latents; merge() adds another's (or another rank's)."""

    def __init__(self, channels: int) -> None:
        self.sum = torch.zeros(channels, dtype=torch.float64)
        self.sum_sq = torch.zeros(channels, dtype=torch.float64)
        self.samples = 0
        self.tokens = 0

    def update(self, z: torch.Tensor) -> None:
        flat = z.detach().to("cpu", torch.float64).reshape(-1, z.shape[-1])
        if flat.shape[1] != self.sum.shape[0]:
            raise ValueError(f"latents have {flat.shape[1]} channels, the accumulator {self.sum.shape[0]}")
        self.sum += flat.sum(0)
        self.sum_sq += flat.pow(2).sum(0)
        self.samples += z.shape[0]
        self.tokens += flat.shape[0]

    def merge(self, other: "MomentAccumulator") -> None:
        self.sum += other.sum
        self.sum_sq += other.sum_sq
        self.samples += other.samples
        self.tokens += other.tokens

    def state(self) -> torch.Tensor:
        """[sum…, sum_sq…, samples, tokens] as one float64 vector, for an all-reduce."""
        return torch.cat([self.sum, self.sum_sq, torch.tensor([self.samples, self.tokens], dtype=torch.float64)])

    def load_state(self, state: torch.Tensor) -> None:
        c = self.sum.shape[0]
        self.sum, self.sum_sq = state[:c].clone(), state[c:2 * c].clone()
        self.samples, self.tokens = int(state[2 * c]), int(state[2 * c + 1])

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and population std, float64."""
        if self.tokens == 0:
            raise ValueError("no latents were accumulated: the data set held no readable image")
        mean = self.sum / float(self.tokens)
        return mean, (self.sum_sq / float(self.tokens) - mean.pow(2)).clamp(min=0).sqrt()

    def result(self, **provenance) -> LatentStats:
        mean, std = self.moments()
        n = float(self.tokens)
        # Over all values: the mean of the channel means; E[x²] - E[x]² pooled over channels.
        shift = mean.mean()
        total_var = (self.sum_sq.sum() / (n * len(mean)) - shift.pow(2)).clamp(min=0)
        return LatentStats(mean=mean.tolist(), std=std.tolist(), shift_factor=float(shift),
                           scaling_factor=float(1.0 / total_var.sqrt()) if total_var > 0 else math.inf,
                           num_samples=self.samples, num_tokens=self.tokens, **provenance)
