"""The published weight files vitok can use: where they live locally, and SHA-256 verification.

Nothing is ever downloaded. Each file is looked up in one folder: the explicit argument (a
config field or --weights), else $VITOK_WEIGHTS, else ~/.cache/vitok/weights.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

ENV_VAR = "VITOK_WEIGHTS"
DEFAULT_DIR = Path("~/.cache/vitok/weights")


@dataclass(frozen=True)
class WeightFile:
    """One published file: its name, digest, what needs it and where it is published."""

    key: str
    filename: str
    sha256: str  # full hex digest; a shorter value is the published prefix (torch.hub's convention)
    purpose: str
    source: str


WEIGHT_FILES: dict[str, WeightFile] = {
    f.key: f
    for f in (
        WeightFile(
            "inception", "pt_inception-2015-12-05-6726825d.pth",
            "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
            "rFID and rIS (gFID, gIS): Inception-v3 of TensorFlow's 2015-12-05 graph, as pytorch-fid ports it",
            "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
            "pt_inception-2015-12-05-6726825d.pth",
        ),
        WeightFile(
            "vgg16", "vgg16-397923af.pth", "397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0",
            "LPIPS metric and loss: torchvision's ImageNet VGG16 trunk",
            "https://download.pytorch.org/models/vgg16-397923af.pth",
        ),
        WeightFile(
            "lpips_vgg", "lpips_vgg_v0.1.pth", "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
            "LPIPS metric and loss: the learned linear heads (file weights/v0.1/vgg.pth of the lpips "
            "package, saved under this name)",
            "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth",
        ),
        WeightFile(
            "i3d", "i3d_torchscript.pt", "bec6519f66ea534e953026b4ae2c65553c17bf105611c746d904657e5860a5e2",
            "rFVD: TorchScript port of the Kinetics-400 I3D used by the FVD literature (StyleGAN-V)",
            "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt",
        ),
    )
}


class WeightsUnavailable(ValueError):
    """A weight file is missing or is not the published file; the message says what to do."""


def weights_dir(folder: str | os.PathLike | None = None) -> Path:
    """The folder weight files are read from: argument, else $VITOK_WEIGHTS, else ~/.cache/vitok/weights."""
    chosen = folder if folder not in (None, "") else os.environ.get(ENV_VAR) or DEFAULT_DIR
    return Path(chosen).expanduser()


_verified: dict[tuple[str, int, int], str] = {}


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, cached per (path, size, mtime) within the process."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _verified:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
        _verified[key] = digest.hexdigest()
    return _verified[key]


def check_file(key: str, folder: str | os.PathLike | None = None) -> tuple[str, str]:
    """(state, detail) of one weight file: state is verified, unverifiable, missing or mismatch."""
    spec = WEIGHT_FILES[key]
    path = weights_dir(folder) / spec.filename
    if not path.is_file():
        return "missing", str(path)
    digest = sha256_of(path)
    if not spec.sha256:
        return "unverifiable", f"{path} (sha256 {digest}; no published digest is recorded in vitok)"
    if not digest.startswith(spec.sha256):
        return "mismatch", f"{path} has sha256 {digest}, expected {spec.sha256}"
    return "verified", str(path)


def locate(key: str, folder: str | os.PathLike | None = None, needed_for: str = "") -> Path:
    """Path of a verified weight file, or WeightsUnavailable saying which file is needed and where."""
    spec = WEIGHT_FILES[key]
    state, detail = check_file(key, folder)
    where = weights_dir(folder)
    what = needed_for or spec.purpose
    if state == "missing":
        raise WeightsUnavailable(
            f"{what} needs {spec.filename} ({spec.purpose}) in {where}; download it from {spec.source} and "
            f"put it there, or point --weights / ${ENV_VAR} at the folder that holds it")
    if state == "mismatch":
        raise WeightsUnavailable(
            f"{what}: {detail}: it is not the published file (truncated, corrupt or another version); "
            f"replace it with the file from {spec.source}")
    return where / spec.filename


def load_state_dict(key: str, folder: str | os.PathLike | None = None, needed_for: str = "") -> dict:
    """Load a verified PyTorch weight file as a state dict (tensors only: nothing is unpickled)."""
    path = locate(key, folder, needed_for)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for a bad file
        raise WeightsUnavailable(f"{path} could not be read as a PyTorch state dict ({err})") from None


def describe_weights(folder: str | os.PathLike | None = None) -> list[dict]:
    """One row per known file: key, filename, state, detail, purpose, source (for `vitok weights`)."""
    rows = []
    for key, spec in WEIGHT_FILES.items():
        state, detail = check_file(key, folder)
        rows.append({"key": key, "filename": spec.filename, "state": state, "detail": detail,
                     "purpose": spec.purpose, "source": spec.source})
    return rows
