"""Checks of command arguments that every command shares: the device and the output folder.

Each raises ValueError naming the offending value and the fix (the CLI prints it as `error: ...`);
commands call them before any model is loaded or any file is written.
"""

from __future__ import annotations

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
