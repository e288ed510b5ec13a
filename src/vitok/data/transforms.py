"""Training augmentations (random resized crop, flip) and a stable train/held-out split.

Arrays are uint8 H×W×3 images or T×H×W×3 clips in, uint8 out. Resizing uses Pillow's
antialiased bicubic filter, exactly as `images.resize_center_crop` does, so a training crop
and an evaluation crop of the same region differ only in where the region is.

Randomness comes from an explicit `np.random.Generator`, never from global state: the
training datasets seed one per sample from `sample_rng(seed, ...)`, so an augmentation
depends on the sample alone, not on which worker, process or rank happens to load it.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .images import resize_center_crop

__all__ = [
    "TrainAugment",
    "center_crop",
    "center_crop_clip",
    "random_crop_box",
    "random_flip",
    "random_resized_crop",
    "random_resized_crop_clip",
    "sample_rng",
    "split_holdout",
    "stable_seed",
]

# Tries at drawing a box that fits before falling back to a centre crop (torchvision's choice too).
_CROP_TRIES = 10


def stable_seed(*parts: int | str) -> int:
    """A 63-bit seed from ints and strings that is the same in every process and Python run."""
    # Python's hash() of a str is salted per process, so it would differ between loader workers.
    # Ints are normalised because repr(np.int64(3)) != repr(3) and indices often arrive as numpy ints.
    text = repr(tuple(p if isinstance(p, str) else int(p) for p in parts))
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def sample_rng(*parts: int | str) -> np.random.Generator:
    """A numpy Generator seeded from `parts`, e.g. (seed, epoch, index) for one training sample."""
    return np.random.default_rng(stable_seed(*parts))


def _check_range(name: str, bounds: tuple[float, float], upper: float | None) -> None:
    """Raise ValueError unless 0 < low <= high (<= upper when given)."""
    low, high = bounds
    if not 0 < low <= high or (upper is not None and high > upper):
        limit = f" <= {upper}" if upper is not None else ""
        raise ValueError(f"{name} must satisfy 0 < low <= high{limit}, got {bounds}")


def random_crop_box(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
                    rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a box covering a `scale` fraction of the area with w/h log-uniform in `ratio`.

    A drawn box that does not fit inside the image is redrawn; after 10 misses the box is the
    largest centred one whose aspect is `ratio` clamped to the image's (so it never fails).
    """
    _check_range("scale", scale, 1.0)
    _check_range("ratio", ratio, None)
    area = height * width
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(_CROP_TRIES):
        target = area * rng.uniform(scale[0], scale[1])
        # Log-uniform so that w/h = r and w/h = 1/r are equally likely.
        aspect = math.exp(rng.uniform(log_low, log_high))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    aspect = min(max(width / height, ratio[0]), ratio[1])
    if width / height > aspect:  # image wider than allowed: use the full height
        h, w = height, max(1, min(width, round(height * aspect)))
    else:
        w, h = width, max(1, min(height, round(width / aspect)))
    return (height - h) // 2, (width - w) // 2, h, w


def resize_square(img: np.ndarray, size: int) -> np.ndarray:
    """H×W×3 uint8 -> size×size×3 with the same Pillow filter as `resize_center_crop`."""
    resized = Image.fromarray(np.ascontiguousarray(img)).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(resized)


def _check_image(img: np.ndarray, ndim: int) -> None:
    """Raise ValueError unless img is a uint8 array of `ndim` dims ending in 3 channels."""
    if not isinstance(img, np.ndarray) or img.ndim != ndim or img.shape[-1] != 3 or img.dtype != np.uint8:
        layout = "H×W×3" if ndim == 3 else "T×H×W×3"
        raise ValueError(f"expected a uint8 {layout} array, got {type(img).__name__} "
                         f"{getattr(img, 'dtype', '')} {getattr(img, 'shape', '')}")


def random_resized_crop(img: np.ndarray, size: int, scale: tuple[float, float] = (0.5, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), *, rng: np.random.Generator) -> np.ndarray:
    """H×W×3 uint8 -> size×size×3 uint8: a `random_crop_box` region resized (up or down) to size."""
    _check_image(img, 3)
    top, left, h, w = random_crop_box(img.shape[0], img.shape[1], scale, ratio, rng)
    return resize_square(img[top:top + h, left:left + w], size)


def random_resized_crop_clip(frames: np.ndarray, size: int, scale: tuple[float, float] = (0.5, 1.0),
                             ratio: tuple[float, float] = (3 / 4, 4 / 3), *,
                             rng: np.random.Generator) -> np.ndarray:
    """T×H×W×3 uint8 -> T×size×size×3 uint8, one crop box for every frame."""
    _check_image(frames, 4)
    top, left, h, w = random_crop_box(frames.shape[1], frames.shape[2], scale, ratio, rng)
    return np.stack([resize_square(f[top:top + h, left:left + w], size) for f in frames])


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """H×W×3 uint8 -> size×size×3: shorter side resized to size, then the centre cropped."""
    return resize_center_crop(img, size)


def center_crop_clip(frames: np.ndarray, size: int) -> np.ndarray:
    """T×H×W×3 uint8 -> T×size×size×3, `center_crop` applied to every frame."""
    _check_image(frames, 4)
    return np.stack([resize_center_crop(f, size) for f in frames])


def random_flip(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mirror an H×W×3 image or T×H×W×3 clip left-right with probability 1/2 (one draw from rng)."""
    if rng.random() < 0.5:
        return np.ascontiguousarray(pixels[..., ::-1, :])  # width is the second-last axis in both layouts
    return pixels


@dataclass(frozen=True)
class TrainAugment:
    """The training view of an image or clip: a random or centre crop to size, then an optional flip."""

    size: int
    crop: str = "random"  # "random": random resized crop; "center": shorter side to size, centre crop
    flip: bool = True
    scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"size must be >= 1, got {self.size}")
        if self.crop not in ("random", "center"):
            raise ValueError(f"crop must be 'random' or 'center', got {self.crop!r}")
        _check_range("scale", tuple(self.scale), 1.0)
        _check_range("ratio", tuple(self.ratio), None)

    def __call__(self, pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """H×W×3 -> size×size×3, or T×H×W×3 -> T×size×size×3 (uint8)."""
        clip = pixels.ndim == 4
        if self.crop == "center":
            out = center_crop_clip(pixels, self.size) if clip else center_crop(pixels, self.size)
        else:
            crop = random_resized_crop_clip if clip else random_resized_crop
            out = crop(pixels, self.size, self.scale, self.ratio, rng=rng)
        return random_flip(out, rng) if self.flip else out


def split_holdout(files: list[Path], holdout: int, seed: int, root: str | Path) -> tuple[list[Path], list[Path]]:
    """(train, held out): the `holdout` files whose hash of (seed, path relative to root) is smallest.

    Each file's rank depends only on its own relative path, so adding files never moves a
    training file into the held-out set; a held-out file moves to training only when a newly
    added file hashes lower and takes its place (the count is fixed, so it has to go somewhere).
    Both lists keep the input order.
    """
    if holdout < 0:
        raise ValueError(f"holdout must be >= 0, got {holdout}")
    if holdout and holdout >= len(files):
        raise ValueError(f"holdout {holdout} would leave no training files: there are only {len(files)} files; "
                         f"lower holdout (0 disables the held-out set) or add files")
    root = Path(root)
    ranked = sorted(files, key=lambda p: stable_seed(seed, Path(p).relative_to(root).as_posix()))
    held = set(ranked[:holdout])
    return [f for f in files if f not in held], [f for f in files if f in held]
