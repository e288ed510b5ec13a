"""DiT model folders on disk: writing and loading the exported EMA DiT, and finding it in a run.

A DiT model folder holds config.json (format "vitok-dit": the DiT's config plus what sampling
needs: latent normalisation, tokenizer, diffusion) and model.safetensors. Training writes them
(train.py), sampling and evaluation read them (sample.py, evaluate.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from ..model.pretrained import atomic_write
from ..train.checkpoint import latest_checkpoint
from .dit import DiT, DiTConfig

MODEL_CONFIG = "config.json"
MODEL_WEIGHTS = "model.safetensors"
DIT_FORMAT = "vitok-dit"


def save_dit(folder: Path, model: DiT, extra: dict) -> None:
    """config.json (DiT config plus `extra`: normalisation, tokenizer, diffusion) and model.safetensors."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    # Each file through a temporary and a rename: a run killed while saving leaves the previous model whole.
    atomic_write(folder / MODEL_WEIGHTS, lambda tmp: save_file(tensors, tmp))
    text = json.dumps({"format": DIT_FORMAT, "dit": model.config.to_dict(), **extra}, indent=2) + "\n"
    atomic_write(folder / MODEL_CONFIG, lambda tmp: Path(tmp).write_text(text))


def load_dit(folder: str | Path, device: str | torch.device = "cpu") -> tuple[DiT, dict]:
    """(EMA DiT in eval mode, its config.json document) from a folder written by save_dit."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / MODEL_CONFIG).is_file() or not (folder / MODEL_WEIGHTS).is_file():
        raise ValueError(f"{folder} holds no DiT ({MODEL_CONFIG} + {MODEL_WEIGHTS}); pass a run folder of "
                         f"`vitok dit train` that has finished or written a checkpoint")
    document = json_or_none(folder / MODEL_CONFIG)
    if not isinstance(document, dict) or document.get("format") != DIT_FORMAT or "dit" not in document:
        raise ValueError(f"{folder / MODEL_CONFIG} is not a DiT's config (no format={DIT_FORMAT!r} with a "
                         f"'dit' section); pass a run folder written by `vitok dit train`")
    model = DiT(DiTConfig.from_dict(document["dit"]))
    try:
        state = load_file(str(folder / MODEL_WEIGHTS))
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error type for a damaged file
        raise ValueError(f"{folder / MODEL_WEIGHTS} cannot be read ({err}); it is damaged: use an earlier "
                         f"checkpoint's model/ folder under checkpoints/") from err
    bad = [k for k, v in state.items() if not v.is_floating_point() or not bool(v.isfinite().all())]
    if bad:
        raise ValueError(f"{folder / MODEL_WEIGHTS}: weights {bad[:3]} are not finite floating-point values; "
                         f"the run diverged or the file is damaged: use an earlier checkpoint's model/")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise ValueError(f"{folder}: {MODEL_WEIGHTS} does not fit the DiT that {MODEL_CONFIG} describes "
                         f"({first}); the folder is inconsistent: use the run's other model/ folders") from err
    return model.to(device).eval(), document


def json_or_none(path: Path) -> object:
    """A JSON file's content, or None when it is missing or not JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _format(path: Path) -> str | None:
    """The "format" a vitok JSON file declares (None: no such file, or none declared)."""
    document = json_or_none(path)
    return document.get("format") if isinstance(document, dict) else None


def what_folder(path: Path) -> str | None:
    """What a vitok folder that holds no DiT is, from the files vitok writes there (None: unrecognised)."""
    if _format(path / "index.json") == "vitok-latents":
        return "a latent store (written by vitok latents)"
    if _format(path / "config.json") == "vitok":
        return "a tokenizer checkpoint folder (ViTok.save_pretrained)"
    if _format(path / "model" / "config.json") == "vitok":
        return "a tokenizer run folder (vitok train)"
    config = yaml_or_none(path / "config.yaml")
    if isinstance(config, dict) and "latents" not in config and isinstance(config.get("model"), dict):
        return "a tokenizer run folder (vitok train)"
    return None


def yaml_or_none(path: Path) -> object:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def run_model_folder(run: str | Path) -> Path:
    """The newest DiT of a run: its final model/, else the newest checkpoint's; a DiT model folder is itself."""
    run = Path(run)
    if not run.is_dir():
        state = "is a file" if run.exists() else "does not exist"
        raise ValueError(f"{run} {state}; pass a run folder written by `vitok dit train`")
    for folder in (run, run / "model"):
        if _format(folder / MODEL_CONFIG) == DIT_FORMAT:
            return folder
    kind = what_folder(run)
    if kind is not None:
        raise ValueError(f"{run} is {kind}, not a DiT run; pass a folder written by `vitok dit train`")
    latest = latest_checkpoint(run / "checkpoints")
    if latest is None or _format(latest / "model" / MODEL_CONFIG) != DIT_FORMAT:
        raise ValueError(f"{run} is not a DiT run: it has neither model/ nor checkpoints/ with a DiT; pass a "
                         f"folder written by `vitok dit train` (after its first checkpoint)")
    return latest / "model"
