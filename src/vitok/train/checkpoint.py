"""Training checkpoints: written atomically, the last K kept plus the best, resumable exactly.

Layout inside a run folder::

    checkpoints/step_00001000/state.pt      everything needed to resume (model, EMA, discriminator,
                                            optimizers, schedulers, step, RNG states, data position)
    checkpoints/step_00001000/model/        the tokenizer itself (config.json + model.safetensors)
    checkpoints/best.json                   which step is exported, and the rule that chose it

A checkpoint folder is built under a temporary name and renamed into place in one step, so a
run killed at any moment leaves either the complete new checkpoint or none, never half of one.
`state.pt` holds only tensors and plain containers and is read back with weights_only=True.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch

_STEP_DIR = re.compile(r"^step_(\d{8})$")
BEST_FILE = "best.json"


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:08d}"


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under root as (step, folder), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and (path / "state.pt").is_file():
            found.append((int(match[1]), path))
    return sorted(found)


def save_checkpoint(root: str | Path, step: int, state: dict, export=None) -> Path:
    """Atomically write checkpoint `step` (state dict for torch.save; export(folder) writes the model)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = step_dir(root, step)
    recover(root)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    tmp.mkdir()
    try:
        torch.save(state, tmp / "state.pt")
        if export is not None:
            export(tmp / "model")
        _fsync_tree(tmp)
        if final.exists():  # re-saving a step (e.g. after a resume): swap, never delete first
            old = root / f".old-{final.name}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return final


def load_checkpoint(folder: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint's state.pt (tensors and plain containers only)."""
    path = Path(folder) / "state.pt"
    if not path.is_file():
        raise ValueError(f"{folder} is not a training checkpoint (no state.pt)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # a damaged file surfaces as many different exception types
        raise ValueError(f"checkpoint {path} cannot be read ({err}); resume from an earlier one "
                         f"by deleting this folder") from None


def recover(root: str | Path) -> None:
    """Tidy what a run killed while saving left behind (only the run's writer may call this).

    A `.tmp-` folder was never complete: deleted. An `.old-` folder is a complete checkpoint
    that was being replaced by a re-save of the same step: put back if the new one never
    arrived, else deleted.
    """
    root = Path(root)
    if not root.is_dir():
        return
    for path in root.glob(".tmp-step_*"):
        shutil.rmtree(path, ignore_errors=True)
    for path in root.glob(".old-step_*"):
        final = root / path.name[len(".old-"):].rsplit("-", 1)[0]
        if not final.exists() and (path / "state.pt").is_file():
            os.replace(path, final)
        else:
            shutil.rmtree(path, ignore_errors=True)


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint under root, or None. Read-only: safe while a run is writing."""
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def read_best(root: str | Path) -> dict | None:
    path = Path(root) / BEST_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def write_best(root: str | Path, record: dict) -> None:
    """Atomically record which checkpoint is the best ({"step", "metric", "value", ...}; train/guard.py decides)."""
    root = Path(root)
    tmp = root / f".{BEST_FILE}.tmp"
    tmp.write_text(json.dumps(record) + "\n")
    os.replace(tmp, root / BEST_FILE)


def prune(root: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints and the best one; returns what was deleted."""
    found = list_checkpoints(root)
    best = read_best(root)
    keep = {path for _, path in found[-keep_last:]}
    if best is not None:
        keep.add(step_dir(Path(root), int(best["step"])))
    removed = []
    for _, path in found:
        if path not in keep:
            shutil.rmtree(path)
            removed.append(path)
    return removed
