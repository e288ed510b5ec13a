"""The bottleneck's output: a diagonal Gaussian over B×L×c latents, or a deterministic latent (ViTok v2)."""

from __future__ import annotations

import torch


class DiagonalGaussian:
    """N(mean, exp(logvar)) with independent entries; mean and logvar are B×L×c."""

    deterministic = False

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor) -> None:
        if mean.shape != logvar.shape:
            raise ValueError(f"mean {tuple(mean.shape)} and logvar {tuple(logvar.shape)} shapes differ")
        self.mean = mean
        self.logvar = logvar

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    @property
    def var(self) -> torch.Tensor:
        return torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised draw mean + std * eps (differentiable in mean and logvar)."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        """The deterministic encoding: the mean."""
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per sample, summed over tokens and channels: shape B."""
        mean, logvar = self.mean.float(), self.logvar.float()
        per_entry = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)
        return per_entry.flatten(1).sum(1)


class DeterministicLatent:
    """The latent of an encoder without noise (ViTok v2's LayerNorm bottleneck): z itself, B×L×c.

    It answers like a posterior where that has a meaning (mode and sample are z, std is zero), and
    refuses the KL term, which this bottleneck does not have.
    """

    deterministic = True

    def __init__(self, z: torch.Tensor) -> None:
        self.mean = z

    @property
    def std(self) -> torch.Tensor:
        return torch.zeros_like(self.mean)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """z: there is no noise to draw."""
        return self.mean

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        raise ValueError("this tokenizer's latent is deterministic (a LayerNorm bottleneck, architecture "
                         "'vitok-v2'): it has no KL term; train it with loss.kl_weight=0 or decoder-only "
                         "(train.stage1_steps=0)")
