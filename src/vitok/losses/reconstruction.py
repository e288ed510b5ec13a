"""Stage-1 pixel and latent terms: the reconstruction error and the KL of the bottleneck."""

from __future__ import annotations

import torch

from ..model.distributions import DiagonalGaussian

_KINDS = ("mse", "l1")


def reconstruction_loss(x_hat: torch.Tensor, x: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Mean squared ("mse") or absolute ("l1") error over every element of two same-shape tensors: a scalar."""
    if kind not in _KINDS:
        raise ValueError(f"unknown reconstruction loss kind {kind!r}; valid kinds are {', '.join(_KINDS)}")
    if x_hat.shape != x.shape:
        # Broadcasting would silently compare every frame or sample with every other one.
        raise ValueError(f"x_hat {tuple(x_hat.shape)} and x {tuple(x.shape)} shapes differ")
    # bfloat16 has 8 mantissa bits: a mean over millions of pixels must accumulate in float32.
    acc = torch.promote_types(torch.promote_types(x_hat.dtype, x.dtype), torch.float32)
    diff = x_hat.to(acc) - x.to(acc)
    return diff.square().mean() if kind == "mse" else diff.abs().mean()


def kl_loss(posterior: DiagonalGaussian) -> torch.Tensor:
    """KL(q || N(0, I)) averaged per latent element (over batch, tokens and channels): a float32 scalar.

    The paper's beta = 1e-3 is relative to this per-element mean, which is what the authors'
    code computes; the per-sample sum (DiagonalGaussian.kl) is L·c times larger, so using it
    with the same beta would regularise the bottleneck L·c times harder.
    """
    per_sample = posterior.kl()  # B, summed over the L×c entries
    return per_sample.mean() / posterior.mean[0].numel()
