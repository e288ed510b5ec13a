"""Image loading, tensor conversion and cropping helpers, plus the bundled test photos."""

from __future__ import annotations

import errno
import io
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..metrics.image import to_uint8
from ..model.pretrained import atomic_write

__all__ = [
    "bundled_photos",
    "center_crop_to_multiple",
    "decode_image",
    "file_problem",
    "from_tensor",
    "list_files",
    "load_image",
    "resize_center_crop",
    "to_tensor",
    "write_atomic",
]

# Relative to this module rather than the CWD so it also resolves inside an installed wheel.
_PHOTOS_DIR = Path(__file__).resolve().parent.parent / "assets" / "photos"
_PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png"}

# Errors Pillow's decoders are known to raise on corrupt input; UnidentifiedImageError is an OSError.
_DECODE_ERRORS = (OSError, SyntaxError, EOFError, ValueError, struct.error, Image.DecompressionBombError)


def bundled_photos() -> list[Path]:
    """Return the sorted paths of the small real photographs shipped with the package."""
    return sorted(p for p in _PHOTOS_DIR.iterdir() if p.suffix.lower() in _PHOTO_SUFFIXES)


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Load an image file as an H×W×3 uint8 RGB array, honouring EXIF orientation."""
    return decode_image(read_image_bytes(path), str(path))


def read_image_bytes(path: str | os.PathLike[str]) -> bytes:
    """The bytes of an image file, with the errors load_image gives."""
    path = Path(path)
    if not os.path.lexists(path):
        raise FileNotFoundError(f"{path}: no such file")
    problem = file_problem(path)
    if problem is not None:
        raise ValueError(f"{path}: {problem}")
    try:
        return path.read_bytes()
    except OSError as e:
        raise ValueError(f"{path}: cannot read file ({e})") from e


_SPECIAL_FILES = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                  (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def file_problem(path: str | os.PathLike[str]) -> str | None:
    """Why `path` cannot be read as a regular file (a broken or looping link, a folder, a FIFO, ...), else None.

    Checked on the file's status, never by opening it: opening a FIFO for reading would block
    until some other process writes to it.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            return f"broken symbolic link (it points to {os.readlink(path)}, which does not exist)"
        return "no such file"
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symbolic link loop (the link points back to itself through other links)"
        return f"cannot read file ({e.strerror or e})"
    if stat.S_ISDIR(mode):
        return "is a folder, not an image file"
    for test, kind in _SPECIAL_FILES:
        if test(mode):
            return f"not a regular file but {kind}, which is not read"
    return None


def list_files(root: str | os.PathLike[str], suffixes: Iterable[str]) -> list[Path]:
    """Every entry under `root` (recursively) whose name ends in one of `suffixes` (case-insensitive), sorted.

    Links to folders are followed, each real folder once (so link loops end); folders are walked
    whatever their name. Entries that are not readable regular files (broken or looping links,
    FIFOs, devices) are listed too, so that readers skip them with a reason instead of letting
    them vanish without a word. A folder that cannot be listed is an error naming it.
    """
    root = Path(root)
    wanted = {s.lower() for s in suffixes}
    found: list[Path] = []
    _walk(root, wanted, found, set())
    return sorted(found)


def _walk(folder: Path, wanted: set[str], found: list[Path], seen: set[tuple[int, int]]) -> None:
    """Depth-first, in sorted order, so which path reaches a folder linked twice does not depend on the OS."""
    try:
        info = folder.stat()
        if (info.st_dev, info.st_ino) in seen:
            return
        seen.add((info.st_dev, info.st_ino))
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
    except OSError as e:
        raise ValueError(f"cannot list the folder {folder} ({e.strerror or e}): fix its permissions, "
                         f"or move it out of the data folder") from None
    for entry in entries:
        path = folder / entry.name
        if _is_folder(entry):
            _walk(path, wanted, found, seen)
        elif path.suffix.lower() in wanted:
            found.append(path)


def _is_folder(entry: os.DirEntry) -> bool:
    """Whether an entry is a folder, following links; False for broken and looping links (listed as files)."""
    try:
        return entry.is_dir()
    except OSError:  # a link loop raises ELOOP here rather than answering False
        return False


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` with the package's atomic_write (temporary file in the same folder, synced,
    renamed over `path`; created 0666 less the umask), a failure as a ValueError naming the file.

    A failed write (a full disk, ...) leaves whatever was at `path` untouched and no temporary file.
    """
    path = Path(path)
    try:
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    except OSError as e:
        full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        hint = " (the disk is full? free some space, or write somewhere else)" if full else ""
        raise ValueError(f"could not write {path}: {e.strerror or e}{hint}") from None


def _describe(error: Exception) -> str:
    """A decode error as "Type: message", without the in-memory buffer's address Pillow puts in some."""
    if isinstance(error, UnidentifiedImageError):
        return "UnidentifiedImageError: cannot identify the image format"
    return f"{type(error).__name__}: {error}"


@dataclass(frozen=True)
class Header:
    """What an encoded image's header says: format, Pillow mode, EXIF orientation (1-8), upright size."""

    format: str | None
    mode: str
    orientation: int
    height: int  # as decode_image returns it: EXIF rotation applied
    width: int


def read_header(data: bytes, name: str) -> Header:
    """The header of an encoded image (named `name` in errors), without decoding its pixels."""
    if len(data) == 0:
        raise ValueError(f"{name}: file is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            orientation = int(img.getexif().get(0x0112, 1))
            fmt, mode = img.format, img.mode
    except _DECODE_ERRORS as e:
        raise ValueError(f"{name}: not a readable image ({_describe(e)})") from e
    if orientation not in range(1, 9):
        orientation = 1
    if orientation in (5, 6, 7, 8):  # a quarter turn: height and width swap
        h, w = w, h
    return Header(fmt, mode, orientation, h, w)


def oriented_size(data: bytes, name: str) -> tuple[int, int]:
    """(H, W) of an encoded image as decode_image will return it (EXIF rotation applied), from the header."""
    header = read_header(data, name)
    return header.height, header.width


def decode_image(data: bytes, name: str, reduce: int = 1) -> np.ndarray:
    """Decode the bytes of an image file (named `name` in errors) as an H×W×3 uint8 RGB array.

    reduce (1, 2, 4 or 8): for JPEG, decode at 1/reduce of the size in the DCT domain (Pillow's
    draft mode), several times faster when a training crop is resized far down anyway; sides
    are rounded up. Other formats ignore it and decode at full size.
    """
    return np.array(decode_rgb(data, name, reduce), dtype=np.uint8)


def decode_rgb(data: bytes, name: str, reduce: int = 1) -> Image.Image:
    """decode_image's result as a Pillow RGB image (EXIF orientation applied), for callers that crop
    and resize in Pillow: no copy of the full image is made beyond the decode itself."""
    if len(data) == 0:
        raise ValueError(f"{name}: file is empty (0 bytes)")
    if reduce not in (1, 2, 4, 8):
        raise ValueError(f"reduce must be 1, 2, 4 or 8, got {reduce}")
    # A process-wide True here would make truncated files decode silently with grey padding,
    # so force strict decoding for this call and restore whatever the caller had set.
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(io.BytesIO(data)) as img:
            if reduce > 1 and img.format == "JPEG":
                w, h = img.size
                img.draft(img.mode, (-(-w // reduce), -(-h // reduce)))
            # open() is lazy and only parses the header; load() decodes the pixels, which is
            # where truncation and corrupt data surface.
            img.load()
            # In place: the default returns a copy of the whole image even when nothing turns.
            ImageOps.exif_transpose(img, in_place=True)
            if img.mode == "RGB" and "transparency" not in img.info:
                return img  # leaving the with-block closes the buffer only; the pixels are loaded
            return Image.fromarray(_to_rgb_array(img))
    except _DECODE_ERRORS as e:
        raise ValueError(f"{name}: not a readable image ({_describe(e)})") from e
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    """Convert any Pillow mode to an H×W×3 uint8 RGB array."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # Pillow's convert('L') clips these to 255 instead of rescaling. 'I' is what Pillow
        # uses for 16-bit PGM/PNG-like data, so both are treated as 0..65535; 65535/257 == 255.
        a = np.asarray(img).astype(np.float64)
        gray = np.round(np.clip(a, 0, 65535) / 257.0).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
    if mode == "F":
        # Float images carry no declared range; [0, 1] is the usual convention when the data
        # fits it, otherwise fall back to Pillow's own 0..255 interpretation.
        a = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if a.size and a.min() >= 0.0 and a.max() <= 1.0:
            a = a * 255.0
        gray = np.round(np.clip(a, 0, 255)).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))

    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        # The model sees opaque RGB only; transparent pixels often hold arbitrary (commonly black)
        # colour, so compositing onto white matches how viewers and browsers display them.
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float64)
        alpha = rgba[..., 3:4] / 255.0
        rgb = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
        return np.round(rgb).astype(np.uint8)

    # Covers 1, L, P, CMYK, YCbCr, RGBX, ... via Pillow's built-in conversions.
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def _check_hwc3(img: np.ndarray) -> None:
    """Raise ValueError unless img is an H×W×3 array."""
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3:
        shape = getattr(img, "shape", None)
        raise ValueError(f"expected an H×W×3 array, got {type(img).__name__} with shape {shape}")


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """Convert an H×W×3 uint8 image to a 3×H×W float32 tensor in [-1, 1]."""
    _check_hwc3(img)
    if img.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {img.dtype}")
    # torch.tensor copies: crops are often read-only views, which from_numpy would share.
    x = torch.tensor(img).permute(2, 0, 1).to(torch.float32)
    return x / 127.5 - 1.0


def from_tensor(x: torch.Tensor) -> np.ndarray:
    """Convert a 3×H×W tensor in [-1, 1] back to an H×W×3 uint8 image."""
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"expected a 3×H×W tensor, got shape {tuple(x.shape)}")
    # The same 8-bit quantisation the metrics use, so a saved file scores what was printed.
    return to_uint8(x.detach().cpu()).permute(1, 2, 0).contiguous().numpy()


def center_crop_to_multiple(img: np.ndarray, multiple: int) -> np.ndarray:
    """Centre-crop H and W down to the largest multiple of `multiple` (returns a view)."""
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    h, w = img.shape[:2]
    if h < multiple or w < multiple:
        raise ValueError(f"image of size {h}x{w} is smaller than the multiple {multiple}")
    nh, nw = h // multiple * multiple, w // multiple * multiple
    top, left = (h - nh) // 2, (w - nw) // 2
    return img[top : top + nh, left : left + nw]


def resize_center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """Resize the shorter side to `size` (antialiased bicubic), then centre-crop size×size."""
    _check_hwc3(img)
    if img.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {img.dtype}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    h, w = img.shape[:2]
    scale = size / min(h, w)
    # Pin the short side exactly and keep the long side >= size so the crop always fits.
    nh = size if h <= w else max(size, round(h * scale))
    nw = size if w < h else max(size, round(w * scale))
    # Pillow's resize widens the kernel when downscaling, i.e. it antialiases, unlike plain torch interpolate.
    resized = np.asarray(Image.fromarray(img).resize((nw, nh), Image.Resampling.BICUBIC))
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.ascontiguousarray(resized[top : top + size, left : left + size])
