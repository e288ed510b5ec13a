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

import errno
import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError

_STEP_DIR = re.compile(r"^step_(\d{8})$")
BEST_FILE = "best.json"


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (a full disk, a quota, a lost mount); earlier ones are intact."""


def _write_failure(what: str, root: Path, err: BaseException) -> CheckpointWriteError:
    """The error for a failed write: what failed, why in plain words, and where the last good checkpoint is."""
    message = str(err)
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        reason = "no space left on device" if err.errno == errno.ENOSPC else "disk quota exceeded"
    elif "unexpected pos" in message or "No space left" in message:
        # torch's zip writer reports a short write as "unexpected pos": the disk filled up mid-file.
        reason = f"no space left on device (the file was cut short: {message.strip().splitlines()[-1]})"
    elif isinstance(err, OSError) and err.strerror:
        reason = err.strerror + (f" ({err.filename})" if err.filename else "")
    else:
        reason = message
    last = latest_checkpoint(root)
    return CheckpointWriteError(f"could not write {what} to {root}: {reason}; the last good checkpoint is "
                                f"{last or 'none (no checkpoint was written yet)'}; resume from it once the "
                                f"cause is fixed (e.g. space freed)")


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
    try:
        tmp.mkdir()
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
    except (OSError, RuntimeError, SafetensorError) as err:
        # torch.save reports a full disk as a RuntimeError from its zip writer, safetensors as its own
        # error; the finally below removes the half-written folder.
        raise _write_failure(f"checkpoint step {step}", root, err) from err
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_checkpoint(folder: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict:
    """Read a checkpoint's state.pt (tensors and plain containers only).

    mmap=True maps the tensors instead of reading them: cheap when only the small entries are needed.
    """
    path = Path(folder) / "state.pt"
    if not path.is_file():
        raise ValueError(f"{folder} is not a training checkpoint (no state.pt)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # a damaged file surfaces as many different exception types
        raise ValueError(f"checkpoint {path} cannot be read ({err}); resume from an earlier one "
                         f"by deleting this folder") from None


def read_header(folder: str | Path) -> dict:
    """A checkpoint's small entries (step, stage, parallel layout, the training config as a dict), tensors unread."""
    state = load_checkpoint(folder, mmap=True)
    try:
        config = json.loads(state["config"]) if "config" in state else None
    except (TypeError, json.JSONDecodeError):
        config = None
    return {"step": int(state.get("step", 0)), "stage": int(state.get("stage", 1)),
            "parallel": state.get("parallel", "replicated"), "config": config}


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _complete(folder: Path) -> bool:
    return (folder / "state.pt").is_file()


def recover(root: str | Path) -> None:
    """Tidy what a run killed while saving left behind (only the holder of the run folder's lock may call this).

    A `.tmp-` folder or `.best.json.tmp` file was never complete: deleted. An `.old-` folder is a
    complete checkpoint that was being replaced by a re-save of the same step: put back if the new
    one never arrived (or is not complete), else deleted. An empty `step_*` folder is no checkpoint:
    deleted (a non-empty incomplete one is left alone, and never counted as a checkpoint).
    """
    root = Path(root)
    if not root.is_dir():
        return
    for path in [*root.glob(".tmp-step_*"), *root.glob(f".{BEST_FILE}.tmp")]:
        _remove(path)
    for path in root.glob(".old-step_*"):
        final = root / path.name[len(".old-"):].rsplit("-", 1)[0]
        if _complete(path) and not _complete(final):
            if final.exists() or final.is_symlink():
                _remove(final)
            os.replace(path, final)
        else:
            _remove(path)
    for path in root.iterdir():
        if _STEP_DIR.match(path.name) and path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
            path.rmdir()


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
    try:
        tmp.write_text(json.dumps(record) + "\n")
        os.replace(tmp, root / BEST_FILE)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise _write_failure(BEST_FILE, root, err) from err


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
