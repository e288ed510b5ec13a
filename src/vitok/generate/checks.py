"""Checks of the generation commands' inputs, run before any model is loaded or any file is written.

Each raises ValueError naming the offending value and the fix (the CLI prints it as `error: ...`).
"""

from __future__ import annotations

import math
from pathlib import Path


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_sampling_args(num: int, cfg: float, steps: int, eta: float, batch_size: int) -> None:
    """The sampling arguments of `dit sample` and `dit eval`, before anything is loaded."""
    for flag, value in (("--num", num), ("--steps", steps), ("--batch-size", batch_size)):
        if not _is_int(value) or value < 1:
            raise ValueError(f"{flag} must be a positive integer, got {value!r}")
    if not isinstance(cfg, (int, float)) or not math.isfinite(cfg) or cfg < 0:
        raise ValueError(f"--cfg must be a finite number >= 0 (1 = no guidance, 0 = unconditional), got {cfg!r}")
    if not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:  # also refuses NaN
        raise ValueError(f"--eta must lie in [0, 1] (0 = deterministic DDIM, 1 = DDPM-like), got {eta!r}")


def check_steps_within(steps: int, timesteps: int, run: str | Path) -> None:
    """A sampler visits at most one step per diffusion timestep: refuse more before the tokenizer is loaded."""
    if steps > timesteps:
        raise ValueError(f"--steps {steps} exceeds the {timesteps} diffusion timesteps the DiT of {run} was "
                         f"trained with; pass --steps {timesteps} or fewer")
