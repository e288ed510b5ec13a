"""Checks of the generation commands' inputs, run before any model is loaded or any file is written.

Each raises ValueError naming the offending value and the fix (the CLI prints it as `error: ...`).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch


def check_device(device: str | torch.device, flag: str = "--device") -> torch.device:
    """The parsed device, after checking that its kind exists and is usable on this machine."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:  # torch's message lists two dozen back-ends; name the usual ones
        raise ValueError(f"{flag} {device!r} is not a torch device; pass cpu, cuda or cuda:N") from err
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{flag} {device}: CUDA is not available here (torch.cuda.is_available() is False); "
                             f"pass {flag} cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"{flag} {device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"numbered from 0; pass {flag} cuda or cuda:0")
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"{flag} {device}: Apple MPS is not available here; pass {flag} cpu")
    elif parsed.type != "cpu":
        raise ValueError(f"{flag} {device!r}: vitok runs on cpu, cuda or mps, not {parsed.type}")
    return parsed


def check_out_folder(out: str | Path, flag: str = "--out") -> Path:
    """`out` as a Path, after checking it is not an existing file (it becomes, or already is, a folder)."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} is an existing file, not a folder; pass a folder path "
                         f"(a new one is created)")
    for parent in path.parents:  # mkdir would fail later, after the work, on a file above it
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{flag} {path}: {parent} is a file, so no folder can be made under it; "
                                 f"pass another folder path")
            break
    return path


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
