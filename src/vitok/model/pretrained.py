"""The on-disk form of a tokenizer: a folder with config.json and model.safetensors (nothing pickled)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "vitok"
FORMAT_VERSION = 1


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_checkpoint(path: str | Path, config: dict, state: dict[str, torch.Tensor]) -> None:
    """Save weights and config into folder ``path``."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION)}
    atomic_write(folder / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata=meta))
    document = {"format": FORMAT, "format_version": FORMAT_VERSION, "architecture": "ViTok", "config": config}
    text = json.dumps(document, indent=2) + "\n"
    atomic_write(folder / CONFIG_FILE, lambda tmp: Path(tmp).write_text(text))


def read_checkpoint(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read (config dict, state dict) from a folder written by write_checkpoint, with clear errors."""
    folder = Path(path)
    if not folder.is_dir():
        hint = " (pass the folder, not the file inside it)" if folder.is_file() else ""
        raise ValueError(f"checkpoint folder {folder} does not exist{hint}")
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"checkpoint folder {folder} is missing {', '.join(missing)}; a ViTok checkpoint holds "
                         f"{CONFIG_FILE} and {WEIGHTS_FILE}, as written by ViTok.save_pretrained")
    try:
        document = json.loads((folder / CONFIG_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{folder / CONFIG_FILE} is not valid JSON ({err}); re-save the model") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT or "config" not in document:
        raise ValueError(f"{folder / CONFIG_FILE} was not written by vitok (no format={FORMAT!r} and config); "
                         f"it may belong to another library")
    if document.get("architecture") != "ViTok":
        raise ValueError(f"{folder} holds a {document.get('architecture')!r} model, not a ViTok tokenizer")
    if int(document.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{folder} was written by a newer vitok (format {document['format_version']}); "
                         f"upgrade vitok to read it")
    try:
        state = load_file(folder / WEIGHTS_FILE)
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{folder / WEIGHTS_FILE} is not a readable safetensors file ({err}); "
                         f"it may be truncated: re-save the model") from None
    return document["config"], state
