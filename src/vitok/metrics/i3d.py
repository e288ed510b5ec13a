"""I3D feature network for the Fréchet Video Distance (FVD).

FVD as reported by StyleGAN-V and most PyTorch video-generation / video-tokenizer
papers uses a TorchScript port of the TF-Hub Kinetics-400 I3D, distributed as
``i3d_torchscript.pt`` (51,235,320 bytes; SHA-256 in :data:`I3D_TORCHSCRIPT_SHA256`).
Its forward signature is ``forward(x, rescale=False, resize=False, return_features=False)``
and StyleGAN-V calls it as ``detector(videos, rescale=True, resize=True, return_features=True)``
on B×3×T×H×W videos with values in [0, 255]:

* ``rescale=True`` maps [0, 255] to the [-1, 1] range the network expects (``x / 255 * 2 - 1``),
* ``resize=True`` resizes every frame to the network's 224×224 input internally,
* ``return_features=True`` returns the 400-d pre-softmax logits instead of probabilities.

:class:`I3DFeatures` wraps such a module for model-space clips in [-1, 1]: it quantises
them to 8 bits first (as a saved video would be), then applies that exact convention.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from .image import to_uint8

__all__ = ["I3DFeatures", "I3D_MIN_FRAMES", "I3D_TORCHSCRIPT_SHA256", "load_i3d"]

# SHA-256 of the widely mirrored i3d_torchscript.pt (StyleGAN-V's Dropbox link
# https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt). Not published by the
# original authors; it is the digest several independent evaluation repositories pin.
I3D_TORCHSCRIPT_SHA256 = "bec6519f66ea534e953026b4ae2c65553c17bf105611c746d904657e5860a5e2"

# I3D downsamples time by 8 before a temporal average pool of width 2, so very short
# clips fail inside the network. The common PyTorch FVD code enforces T >= 10 (and FVD
# itself is conventionally reported on 16-frame clips); we enforce the same minimum.
I3D_MIN_FRAMES = 10

_DETECTOR_ARGS = ("rescale", "resize", "return_features")


class I3DFeatures(nn.Module):
    """FVD feature extractor: B×3×T×H×W clips in [-1, 1] -> B×D float64 I3D features.

    ``detector`` is the loaded TorchScript I3D (or any module with the same
    ``forward(x, rescale, resize, return_features)`` signature). Clips are quantised with
    :func:`vitok.metrics.image.to_uint8`, converted to float32 in [0, 255] and passed as
    ``detector(x, rescale=True, resize=True, return_features=True)``, so any spatial size is
    accepted (the detector resizes to 224×224 itself). Requires T >= :data:`I3D_MIN_FRAMES`.
    The clip is moved to the detector's device; features are returned on the input's device.
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector
        self.detector.eval()
        for p in self.detector.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> "I3DFeatures":
        # The detector is a frozen evaluation network: never put it into training mode.
        super().train(mode)
        self.detector.eval()
        return self

    def _detector_device(self, fallback: torch.device) -> torch.device:
        for t in self.detector.parameters():
            return t.device
        for t in self.detector.buffers():
            return t.device
        return fallback

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 5 or x.shape[1] != 3:
            raise ValueError(f"expected B×3×T×H×W RGB clips, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"clips must be floating point in [-1, 1], got {x.dtype}")
        b, _, t, h, w = x.shape
        if b == 0 or h == 0 or w == 0:
            raise ValueError(f"clips must be non-empty, got shape {tuple(x.shape)}")
        if t < I3D_MIN_FRAMES:
            raise ValueError(
                f"I3D needs clips of at least {I3D_MIN_FRAMES} frames (FVD uses 16), got T={t}"
            )
        videos = to_uint8(x).to(device=self._detector_device(x.device), dtype=torch.float32)
        feats = self.detector(videos, rescale=True, resize=True, return_features=True)
        if not isinstance(feats, Tensor) or feats.dim() != 2 or feats.shape[0] != b:
            shape = tuple(feats.shape) if isinstance(feats, Tensor) else type(feats).__name__
            raise RuntimeError(f"detector returned {shape}, expected a {b}×D feature matrix")
        return feats.to(device=x.device, dtype=torch.float64)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_i3d(path: str | os.PathLike[str], *, sha256: str | None = None) -> I3DFeatures:
    """Load a TorchScript I3D (e.g. ``i3d_torchscript.pt``) on the CPU and wrap it.

    ``sha256``: if given (e.g. :data:`I3D_TORCHSCRIPT_SHA256`), the file's digest must match.
    Raises FileNotFoundError for a missing file and ValueError if the file is not a
    TorchScript module or its ``forward`` lacks the ``rescale``/``resize``/``return_features``
    arguments. Move the result with ``.to(device)`` as for any module.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if sha256 is not None:
        actual = _sha256(path)
        if actual != sha256.lower():
            raise ValueError(f"{path}: SHA-256 {actual} does not match the expected {sha256}")
    try:
        with warnings.catch_warnings():
            # torch.jit.load is deprecated in recent torch but is the only loader for this file.
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*", category=DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError, OSError, EOFError) as e:
        raise ValueError(
            f"{path}: not a TorchScript module (torch.jit.load failed: {str(e).splitlines()[0]})"
        ) from e
    schema = getattr(getattr(module, "forward", None), "schema", None)
    names = [a.name for a in schema.arguments] if schema is not None else []
    missing = [n for n in _DETECTOR_ARGS if n not in names]
    if missing:
        raise ValueError(
            f"{path}: TorchScript module's forward has no argument(s) {', '.join(missing)}; "
            "expected the FVD I3D signature forward(x, rescale, resize, return_features)"
        )
    return I3DFeatures(module)
