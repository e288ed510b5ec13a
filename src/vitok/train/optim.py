"""AdamW parameter groups, the warm-up + cosine schedule, and the EMA of the decoder."""

from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(params: list[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """Two AdamW groups: matrices and convolution kernels decay; norms' gains and biases (1-D) do not."""
    decay = [p for _, p in params if p.requires_grad and p.dim() >= 2]
    no_decay = [p for _, p in params if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_adamw(params: list[tuple[str, nn.Parameter]], lr: float, betas: tuple[float, float],
                weight_decay: float, fused: bool) -> torch.optim.AdamW:
    """AdamW over named parameters, with the fused kernel (GPU and CPU) unless fused is False.

    The fused kernel also takes a device-side `found_inf` flag and skips the update when it is
    set, which lets the training loop skip a non-finite step without waiting for the GPU.
    """
    groups = param_groups(params, weight_decay)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=bool(fused))


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """Learning-rate multiplier at `step` (0-based): linear warm-up to 1, then cosine to min_ratio."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_constant(step: int, warmup: int) -> float:
    """Linear warm-up to 1, then constant (the discriminator's schedule)."""
    return (step + 1) / warmup if warmup > 0 and step < warmup else 1.0


class EMA:
    """Exponential moving average of parameters, kept in the tensors of a separate model.

    The EMA lives directly in `target` (e.g. an eval-only copy of the tokenizer), so it can be
    evaluated and exported without copying. The decay ramps up as min(decay, (1 + n) / (10 + n))
    over the first updates, so short runs are not dominated by the weights at the stage start.
    """

    def __init__(self, target: dict[str, torch.Tensor], source: dict[str, torch.Tensor], decay: float) -> None:
        if set(target) != set(source):
            raise ValueError("EMA target and source parameters differ")
        self.decay = decay
        self.num_updates = 0
        self.shadow = target
        with torch.no_grad():
            for name, value in source.items():
                self.shadow[name].copy_(value)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, source: dict[str, torch.Tensor], keep: torch.Tensor | None = None) -> None:
        """shadow <- shadow + (1 - d) * (source - shadow); with keep (a 0-dim 0/1 tensor on the
        device), the move is multiplied by it, so a skipped step leaves the shadow as it was
        without the host reading the flag."""
        weight = 1.0 - self.current_decay()
        names = list(self.shadow)
        shadow, values = [self.shadow[n] for n in names], [source[n].detach() for n in names]
        if keep is None:
            torch._foreach_lerp_(shadow, values, weight)
        else:
            step = torch._foreach_sub(values, shadow)
            torch._foreach_mul_(step, keep * weight)
            torch._foreach_add_(shadow, step)
        self.num_updates += 1

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates,
                "shadow": {k: v.detach().clone() for k, v in self.shadow.items()}}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        if set(state["shadow"]) != set(self.shadow):
            raise ValueError("EMA state does not match the model's parameters; was the model changed?")
        self.decay = state["decay"]
        self.num_updates = state["num_updates"]
        for name, value in state["shadow"].items():
            self.shadow[name].copy_(value)
