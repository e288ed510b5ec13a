"""Adversarial losses for stage 2: the GAN objectives, the R1 penalty and the LeCam regulariser.

The default objective is StyleGAN's non-saturating logistic loss: the discriminator in
discriminator.py is StyleGAN's, and StyleGAN was designed and tuned with this loss and R1.
Its generator term softplus(-D(G(z))) keeps a large gradient while the discriminator easily
rejects the early, blurry decoder outputs, where the saturating minimax form vanishes.
"hinge" (relu(1 - D(x)) + relu(1 + D(G(z))), generator -D(G(z))) is the alternative used by
the authors' own code. The GAN weight is a fixed 1.0 in the paper, so there is no adaptive
(gradient-ratio) weighting here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_KINDS = ("non_saturating", "hinge")


def _check_kind(kind: str) -> None:
    if kind not in _KINDS:
        raise ValueError(f"unknown GAN loss kind {kind!r}; valid kinds are {', '.join(_KINDS)}")


def _acc(t: Tensor) -> Tensor:
    """t in at least float32: logits under bfloat16 autocast are too coarse to average."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor, kind: str = "non_saturating") -> Tensor:
    """The discriminator's loss from its logits on real and generated samples (any shapes): a scalar (≥ float32)."""
    _check_kind(kind)
    real, fake = _acc(real_logits), _acc(fake_logits)
    if kind == "non_saturating":
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()


def generator_loss(fake_logits: Tensor, kind: str = "non_saturating") -> Tensor:
    """The generator's (decoder's) adversarial loss from the discriminator's logits on its outputs: a scalar."""
    _check_kind(kind)
    fake = _acc(fake_logits)
    return F.softplus(-fake).mean() if kind == "non_saturating" else -fake.mean()


def r1_penalty(real_logits: Tensor, real_images: Tensor) -> Tensor:
    """Mean over the batch of ||∇_x D(x)||² at real data (Mescheder et al., 2018): a scalar (≥ float32).

    ``real_images`` (B×…) must have had requires_grad set before D ran on it. The graph is
    kept (create_graph) so the penalty trains D. StyleGAN2 adds (gamma / 2) · r1 every N
    steps, scaled by N ("lazy regularisation"); weight and interval are the caller's.
    """
    if not real_images.requires_grad:
        raise ValueError("r1_penalty needs real_images.requires_grad_(True) set before the discriminator runs")
    (grad,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)
    return gradient_penalty(grad)


def gradient_penalty(grad: Tensor) -> Tensor:
    """Mean over the batch of ||grad||² (B×…): R1 from an input gradient taken elsewhere (a scalar, ≥ float32).

    E.g. by torch.func.grad inside a compiled graph (benchmarks/speed_probe.py's R1 variant).
    """
    return _acc(grad).square().flatten(1).sum(1).mean()


class LeCam(nn.Module):
    """LeCam regulariser (Tseng et al., 2021): pulls D's logits toward EMAs of the other side's logits.

    Calling it with a step's real and fake logits first updates the EMAs of their batch means,
    then returns mean((D(real) - ema_fake)²) + mean((D(fake) - ema_real)²). The EMAs are
    buffers, so state_dict()/load_state_dict() resume training exactly. They start at 0, as
    in the paper. Under DDP each rank keeps EMAs of its own batches.
    """

    def __init__(self, decay: float = 0.99) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.register_buffer("ema_real", torch.zeros(()))
        self.register_buffer("ema_fake", torch.zeros(()))

    @torch.no_grad()
    def update(self, real_logits: Tensor, fake_logits: Tensor) -> None:
        """Move both EMAs toward this batch's mean logits."""
        self.ema_real.lerp_(real_logits.float().mean(), 1.0 - self.decay)
        self.ema_fake.lerp_(fake_logits.float().mean(), 1.0 - self.decay)

    def forward(self, real_logits: Tensor, fake_logits: Tensor, update: bool = True) -> Tensor:
        """The penalty; with update=False the EMAs are left for the caller to move (e.g. after a
        finite-gradient check, with means averaged over ranks)."""
        if update:
            self.update(real_logits, fake_logits)
        return ((_acc(real_logits) - self.ema_fake).square().mean()
                + (_acc(fake_logits) - self.ema_real).square().mean())
