"""The on-disk form of a tokenizer: a folder with config.json and model.safetensors (nothing pickled)."""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "vitok"
FORMAT_VERSION = 1
CARD_FILE = "README.md"  # a Hub repo's model card
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")  # OWNER/NAME
STATS_KEY = "latent_stats"  # config.json's optional latent statistics (latent_stats.py); older readers ignore it


def _umask() -> int:
    """The process's umask (reading it means setting it; set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a file."""
    tmp = str(path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"))
    # Created 0666 less the umask, like any ordinary file (mkstemp would make the weights 0600).
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # a writer may replace the file (safetensors makes it 0600)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def json_dict_or_none(path: Path) -> dict | None:
    """A JSON file holding an object, as a dict; None when the file is missing, unreadable, not JSON (e.g.
    cut short by a kill) or not an object: for the run-folder documents whose absence means "not done"."""
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def write_checkpoint(path: str | Path, config: dict, state: dict[str, torch.Tensor],
                     latent_stats: dict | None = None) -> None:
    """Save weights and config into folder ``path`` (config.json also holds the latent statistics, if any)."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION)}
    atomic_write(folder / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata=meta))
    document = {"format": FORMAT, "format_version": FORMAT_VERSION, "architecture": "ViTok", "config": config}
    if latent_stats is not None:
        document[STATS_KEY] = latent_stats
    text = json.dumps(document, indent=2) + "\n"
    atomic_write(folder / CONFIG_FILE, lambda tmp: Path(tmp).write_text(text))


def weights_fingerprint(path: str | Path) -> str:
    """SHA-256 (first 16 hex digits) of a checkpoint folder's model.safetensors: which weights these are."""
    import hashlib

    digest = hashlib.sha256()
    with open(Path(path) / WEIGHTS_FILE, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 23), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def read_latent_stats(path: str | Path) -> dict | None:
    """The latent statistics stored in a checkpoint folder's config.json (`vitok stats`), or None."""
    return _read_document(Path(path)).get(STATS_KEY)


def write_latent_stats(path: str | Path, latent_stats: dict | None) -> None:
    """Set (or, with None, remove) the latent statistics in a checkpoint folder's config.json, atomically;
    the weights are not touched."""
    folder = Path(path)
    document = _read_document(folder)
    document.pop(STATS_KEY, None)
    if latent_stats is not None:
        document[STATS_KEY] = latent_stats
    text = json.dumps(document, indent=2) + "\n"
    atomic_write(folder / CONFIG_FILE, lambda tmp: Path(tmp).write_text(text))


def looks_like_repo_id(path: object) -> bool:
    """"owner/name" that is not an existing path: a Hub repo id."""
    return isinstance(path, str) and bool(REPO_ID.match(path)) and not Path(path).exists() and ".." not in path


def hub_folder(repo_id: str, revision: str | None = None) -> Path:
    """The local snapshot folder of a Hub repo's config.json and model.safetensors (downloaded if needed)."""
    try:
        from huggingface_hub import constants, snapshot_download
    except ImportError:
        raise ValueError(f"{repo_id!r} is no local folder; loading it from the Hugging Face Hub needs the "
                         f"huggingface_hub package: pip install 'vitok[hub]'") from None
    try:
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=[CONFIG_FILE, WEIGHTS_FILE, CARD_FILE])
    except Exception as err:  # network, authentication, missing repo, offline cache miss: all end here
        offline = getattr(constants, "HF_HUB_OFFLINE", False)
        fix = ("HF_HUB_OFFLINE is set and the Hugging Face cache lacks it: unset HF_HUB_OFFLINE to download, or "
               "point HF_HUB_CACHE at the cache that holds it" if offline
               else "check the repo id, the network and your token (huggingface-cli login), or set "
                    "HF_HUB_OFFLINE=1 to use a cached copy")
        raise ValueError(f"{repo_id!r} is no local folder, and fetching it from the Hugging Face Hub failed "
                         f"({type(err).__name__}: {err}); {fix}") from None
    folder = Path(folder)
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"Hub repo {repo_id} (revision {revision or 'main'}) has no {', '.join(missing)}: it is not "
                         f"a vitok tokenizer (push one with `vitok push MODEL {repo_id}`)")
    return folder


# Weights are floating point; anything else (an integer or bool tensor) is a damaged or foreign file.
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


def read_checkpoint(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read (config dict, state dict) from a folder written by write_checkpoint, with clear errors."""
    config, _ = inspect_checkpoint(path)
    return config, load_weights(path)


def inspect_checkpoint(path: str | Path) -> tuple[dict, dict[str, tuple[int, ...]]]:
    """(config dict, tensor shapes) of a checkpoint folder, reading only config.json and the weights' header.

    Cheap whatever the model's size: no tensor data is read. Raises ValueError for a missing or
    damaged file, a foreign or newer format, a weights file whose metadata disagrees with config.json
    and a tensor that is not floating point.
    """
    folder = Path(path)
    document = _read_document(folder)
    header, metadata = _read_header(folder)
    _check_metadata(folder, document, metadata)
    for name, (dtype, _) in header.items():
        if dtype not in FLOAT_DTYPES:
            raise ValueError(f"{folder / WEIGHTS_FILE}: tensor {name!r} is stored as {dtype}; ViTok weights are "
                             f"floating point ({', '.join(FLOAT_DTYPES)}): the file is damaged or not a ViTok model")
    return document["config"], {name: shape for name, (_, shape) in header.items()}


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of model.safetensors; a tensor holding NaN or infinity is an error naming it."""
    file = Path(path) / WEIGHTS_FILE
    try:
        state = load_file(file)
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{file} is not a readable safetensors file ({err}); "
                         f"it may be truncated: re-save the model") from None
    for name, tensor in state.items():
        # One pass per tensor at load time (not a hot path): a NaN weight would turn every output NaN.
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ValueError(f"{file}: tensor {name!r} holds {bad} NaN or infinite values of {tensor.numel()}; "
                             f"the model diverged before it was saved or the file is damaged: use an earlier "
                             f"checkpoint")
    return state


def _read_document(folder: Path) -> dict:
    """config.json, checked: a vitok document of a format this vitok reads, with no repeated keys."""
    if not folder.is_dir():
        hint = " (pass the folder, not the file inside it)" if folder.is_file() else ""
        raise ValueError(f"checkpoint folder {folder} does not exist{hint}")
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"checkpoint folder {folder} is missing {', '.join(missing)}; a ViTok checkpoint holds "
                         f"{CONFIG_FILE} and {WEIGHTS_FILE}, as written by ViTok.save_pretrained")
    try:
        document = json.loads((folder / CONFIG_FILE).read_text(), object_pairs_hook=_unique_keys)
    except _RepeatedKey as err:
        raise ValueError(f"{folder / CONFIG_FILE} gives the key {err.args[0]!r} twice; which value is meant is "
                         f"unclear: keep one") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{folder / CONFIG_FILE} is not valid JSON ({err}); re-save the model") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT or "config" not in document:
        raise ValueError(f"{folder / CONFIG_FILE} was not written by vitok (no format={FORMAT!r} and config); "
                         f"it may belong to another library")
    if document.get("architecture") != "ViTok":
        raise ValueError(f"{folder} holds a {document.get('architecture')!r} model, not a ViTok tokenizer")
    version = document.get("format_version", 0)  # files from before versioning carry none
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"{folder / CONFIG_FILE}: format_version is {version!r}, expected a whole number "
                         f"(this vitok writes {FORMAT_VERSION}); the file was damaged or edited by hand")
    if version > FORMAT_VERSION:
        raise ValueError(f"{folder} was written by a newer vitok (format {version}); upgrade vitok to read it")
    return document


class _RepeatedKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """json object hook: a repeated key would silently keep its last value."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise _RepeatedKey(key)
        out[key] = value
    return out


def _read_header(folder: Path) -> tuple[dict[str, tuple[str, tuple[int, ...]]], dict[str, str]]:
    """{name: (dtype, shape)} and the metadata of model.safetensors, from its header alone."""
    file = folder / WEIGHTS_FILE
    try:
        with safe_open(file, framework="pt") as f:
            header = {name: (f.get_slice(name).get_dtype(), tuple(f.get_slice(name).get_shape()))
                      for name in f.keys()}
            metadata = f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{file} is not a readable safetensors file ({err}); "
                         f"it may be truncated: re-save the model") from None
    return header, metadata


def _check_metadata(folder: Path, document: dict, metadata: dict[str, str]) -> None:
    """The weights file's own format stamp (when it has one) must agree with config.json."""
    fmt, version = metadata.get("format"), metadata.get("format_version")
    if fmt is not None and fmt != FORMAT:
        raise ValueError(f"{folder / WEIGHTS_FILE} says format {fmt!r}, but {CONFIG_FILE} says {FORMAT!r}; "
                         f"the two files come from different places: re-save the model")
    if version is not None and "format_version" in document and version != str(document["format_version"]):
        raise ValueError(f"{folder / WEIGHTS_FILE} says format_version {version}, but {CONFIG_FILE} says "
                         f"{document['format_version']}; the two files were written by different saves: "
                         f"re-save the model")
