"""Weight-free generation metrics in pixel space: a small classifier's accuracy on samples, and patch SWD.

- Conditional fidelity: a small CNN trained from scratch on the real labelled training images
  (no downloaded weights) classifies the samples of each class; the fraction it assigns to the
  class they were generated for is `gen_class_acc`. Its accuracy on held-out real images is the
  ceiling: a generator whose samples were as recognisable as real images would reach it.
- Distribution match: Laplacian-pyramid patch SWD (metrics/swd.py, unpaired) between the samples
  and held-out real images of the same classes, pooled (`gen_swd`) and as the mean over classes
  of each class's own SWD (`gen_swd_class`). The real images are resized (shorter side, Lanczos-
  like antialiased bilinear) and centre-cropped to the samples' size, as the latent store reads them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..model.pretrained import atomic_write, json_dict_or_none

CLASSIFIER_FILE = "classifier.json"
WEIGHTS_FILE = "model.safetensors"
MIN_PER_CLASS = 2  # images per side below which a class's own SWD is not computed


@dataclass
class ClassifierConfig:
    """The pixel classifier and its training; defaults suit a few thousand 64-256 px images on one GPU."""

    size: int = 64  # input side: images are resized to it
    width: int = 32  # channels of the first stage (then 2x, 4x, 4x)
    steps: int = 1500
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    min_scale: float = 0.35  # random-resized crop: smallest area fraction (augmentation)
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("size", "width", "steps", "batch_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"classifier.{key} must be a positive integer, got {value!r}")
        if self.size < 16:
            raise ValueError(f"classifier.size must be at least 16 (four stride-2 stages), got {self.size}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"classifier.lr must be a positive number, got {self.lr!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise ValueError(f"classifier.weight_decay must be >= 0, got {self.weight_decay!r}")
        if not (isinstance(self.min_scale, (int, float)) and 0 < self.min_scale <= 1):
            raise ValueError(f"classifier.min_scale must be in (0, 1], got {self.min_scale!r}")


class PixelClassifier(nn.Module):
    """Four stride-2 conv stages (GroupNorm, SiLU), global average pool, linear head; B×3×S×S in [-1, 1]."""

    def __init__(self, num_classes: int, width: int = 32) -> None:
        super().__init__()
        widths = (width, 2 * width, 4 * width, 4 * width)
        layers, c_in = [], 3
        for c in widths:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(min(8, c), c), nn.SiLU(),
                       nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(min(8, c), c), nn.SiLU()]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def to_input(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 N×3×H×W -> float N×3×size×size in [-1, 1]: shorter side resized to size, centre crop."""
    x = images.float() / 127.5 - 1.0
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    if (h, w) != (size, size):
        x = F.interpolate(x, size=(max(size, round(h * scale)), max(size, round(w * scale))), mode="bilinear",
                          antialias=True, align_corners=False)
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    return x[..., top:top + size, left:left + size]


def _augment(x: torch.Tensor, size: int, min_scale: float, g: torch.Generator) -> torch.Tensor:
    """Random-resized square crops (area in [min_scale, 1]) and horizontal flips of N×3×S×S, back to size."""
    out = []
    side = x.shape[-1]
    for img in x:
        area = min_scale + (1 - min_scale) * float(torch.rand((), generator=g))
        crop = max(4, round(side * math.sqrt(area)))
        top = int(torch.randint(0, side - crop + 1, (), generator=g))
        left = int(torch.randint(0, side - crop + 1, (), generator=g))
        piece = img[None, :, top:top + crop, left:left + crop]
        piece = F.interpolate(piece, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        if float(torch.rand((), generator=g)) < 0.5:
            piece = piece.flip(-1)
        out.append(piece)
    return torch.cat(out)


def load_labelled(root: Path, size: int, classes: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor,
                                                                                    list[str], int]:
    """(uint8 images N×3×size×size, labels N, class names, unreadable count) of a labelled folder (one
    sub-folder per class): shorter side resized to `size`, centre-cropped (upsampled when smaller), as
    the latent store reads images; unreadable files skipped and counted. With `classes` (the training
    folder's), labels index that list and a class outside it is an error."""
    from ..data.datasets import prepare_image
    from ..data.images import load_image
    from .latents import labelled_images

    found, items = labelled_images(root)
    if classes is not None:
        extra = [c for c in found if c not in classes]
        if extra:
            raise ValueError(f"{root} has classes {extra[:5]} that the training folder has not; a held-out set "
                             f"holds images of the training classes")
        index = {name: i for i, name in enumerate(classes)}
        items = [(path, index[found[label]]) for path, label in items]
    images, labels, skipped = [], [], 0
    for path, label in items:
        try:
            images.append(prepare_image(load_image(path), size, True, str(path)))
        except (ValueError, OSError):  # unreadable: counted, never fatal
            skipped += 1
            continue
        labels.append(label)
    if not images:
        raise ValueError(f"no readable images in {root}")
    return torch.stack(images), torch.tensor(labels), classes or found, skipped


def train_classifier_on_folders(train_root: str | Path, val_root: str | Path, out: str | Path,
                                config: ClassifierConfig, device: str = "cpu",
                                log: Callable[[str], None] = print) -> dict:
    """Train (or, when `out` already holds one with this config and these classes, load) the classifier.

    Writes out/model.safetensors and out/classifier.json (config, classes, accuracies, counts);
    returns classifier.json's content, whose "val_accuracy" is the ceiling of gen_class_acc.
    """
    from safetensors.torch import save_file

    out = Path(out)
    train_x, train_y, classes, skipped = load_labelled(Path(train_root), 2 * config.size)
    if len(classes) < 2:
        raise ValueError(f"{train_root} holds {len(classes)} class; a classifier needs at least 2")
    empty = [c for i, c in enumerate(classes) if not bool((train_y == i).any())]
    if empty:
        raise ValueError(f"classes {empty[:5]} of {train_root} have no readable training image")
    existing = json_dict_or_none(out / CLASSIFIER_FILE)
    if (existing and existing.get("config") == dataclasses.asdict(config) and existing.get("classes") == classes
            and (out / WEIGHTS_FILE).is_file()):
        return existing
    val_x, val_y, _, val_skipped = load_labelled(Path(val_root), 2 * config.size, classes)

    started = time.perf_counter()
    torch.manual_seed(config.seed)
    g = torch.Generator().manual_seed(config.seed)
    model = PixelClassifier(len(classes), config.width).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    base = to_input(train_x, 2 * config.size).to(device)  # augmented from a 2x copy, so crops keep detail
    for step in range(config.steps):
        lr = config.lr * 0.5 * (1 + math.cos(math.pi * step / config.steps))  # cosine to 0
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(len(base), (min(config.batch_size, len(base)),), generator=g)
        x = _augment(base[idx.to(device)], config.size, config.min_scale, g)
        loss = F.cross_entropy(model(x), train_y[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % max(1, config.steps // 5) == 0:
            log(f"  classifier step {step + 1}/{config.steps}: loss {loss.item():.4f}")
    model.eval()
    per_class = {}
    val_pred = predict(model, val_x, config.size)
    for i, name in enumerate(classes):
        mask = val_y == i
        if bool(mask.any()):
            per_class[name] = float((val_pred[mask] == i).float().mean())
    info = {"format": "vitok-pixel-classifier", "config": dataclasses.asdict(config), "classes": classes,
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_images": len(train_x), "val_images": len(val_x),
            "skipped_unreadable": {"train": skipped, "val": val_skipped},
            "train_accuracy": accuracy(model, train_x, train_y, config.size),
            "val_accuracy": float((val_pred == val_y).float().mean()), "val_accuracy_per_class": per_class,
            "seconds": time.perf_counter() - started, "device": str(device)}
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(out / WEIGHTS_FILE, lambda tmp: save_file(state, tmp))
    text = json.dumps(info, indent=2) + "\n"
    atomic_write(out / CLASSIFIER_FILE, lambda tmp: Path(tmp).write_text(text))
    return info


def load_classifier(folder: str | Path, device: str = "cpu") -> tuple[PixelClassifier, dict]:
    """(classifier in eval mode, classifier.json) from a folder written by train_classifier_on_folders."""
    from safetensors.torch import load_file

    folder = Path(folder)
    info = json_dict_or_none(folder / CLASSIFIER_FILE)
    if info is None or info.get("format") != "vitok-pixel-classifier" or not (folder / WEIGHTS_FILE).is_file():
        raise ValueError(f"{folder} holds no pixel classifier ({CLASSIFIER_FILE} + {WEIGHTS_FILE}); train one "
                         f"with train_classifier_on_folders")
    model = PixelClassifier(len(info["classes"]), info["config"]["width"])
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    model.input_size = info["config"]["size"]
    return model.to(device).eval(), info


@torch.no_grad()
def predict(model: PixelClassifier, images: torch.Tensor, size: int | None = None, batch: int = 256) -> torch.Tensor:
    """Predicted class of each uint8 image N×3×H×W (any H, W: shorter side resized, centre crop); N, CPU."""
    size = size or model.input_size
    device = next(model.parameters()).device
    model.eval()
    out = [model(to_input(images[i:i + batch], size).to(device)).argmax(1).cpu()
           for i in range(0, len(images), batch)]
    return torch.cat(out)


def accuracy(model: PixelClassifier, images: torch.Tensor, labels: torch.Tensor, size: int | None = None) -> float:
    """Fraction of images classified as their label."""
    return float((predict(model, images, size) == labels.cpu()).float().mean())


def generation_swd(generated: torch.Tensor, labels: torch.Tensor, real: torch.Tensor, real_labels: torch.Tensor,
                   **options) -> dict:
    """Patch SWD × 1e3 of uint8 samples against real images of the same classes, pooled and per class.

    Real images are resized and centre-cropped to the samples' size first. Returns {"swd": pooled,
    "swd_class": mean over the classes with at least MIN_PER_CLASS images on both sides (None if none),
    "per_class": {label: SWD}, "skipped_classes": {label: why}, "levels": pooled per level}.
    """
    from ..metrics.swd import set_swd

    size = generated.shape[-1]
    if generated.shape[-2] != size:
        raise ValueError(f"samples must be square, got {tuple(generated.shape[-2:])}")
    if real.shape[-2:] != generated.shape[-2:]:
        real = ((to_input(real, size) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    present = sorted({int(y) for y in labels})
    keep = torch.isin(real_labels, torch.tensor(present))
    if not bool(keep.any()):
        raise ValueError(f"no real image of the generated classes {present[:5]}")
    pooled = set_swd(real[keep], generated, **options)
    per_class, skipped = {}, {}
    for c in present:
        r, f = real[real_labels == c], generated[labels == c]
        if len(r) < MIN_PER_CLASS or len(f) < MIN_PER_CLASS:
            skipped[c] = f"{len(r)} real and {len(f)} generated images; needs {MIN_PER_CLASS} on each side"
            continue
        per_class[c] = set_swd(r, f, **options)["swd"]
    return {"swd": pooled["swd"], "levels": pooled["levels"],
            "swd_class": sum(per_class.values()) / len(per_class) if per_class else None,
            "per_class": per_class, "skipped_classes": skipped}
