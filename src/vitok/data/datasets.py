"""Datasets of images (folders, tar shards) and video clips that skip and report unreadable files.

Every sample is a dict: {"pixels": 3×H×W or 3×T×H×W uint8, "key": str}, or, for a
file that cannot be used, {"skipped": str, "reason": str}. `collate` separates the two, so a
bad file is counted and named by the caller and never reaches the model. Pixels travel as
uint8, a quarter of the bytes of float32 between loader processes and to the GPU;
`to_model_range` maps a batch to [-1, 1] on the device.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from .images import decode_image, load_image, resize_center_crop

IMAGE_SUFFIXES = frozenset(ext.lower() for ext in Image.registered_extensions())


def list_images(root: str | Path) -> list[Path]:
    """Every file under root (recursively) with an extension Pillow can read, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"image folder {root} does not exist or is not a folder")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def prepare_image(img: np.ndarray, size: int, upsample: bool, name: str) -> torch.Tensor:
    """3×size×size uint8: shorter side resized to size, then centre-cropped (the rFID-table convention)."""
    h, w = img.shape[:2]
    if min(h, w) < size and not upsample:
        raise ValueError(f"{name} is {w}x{h}, smaller than the size {size}; upsampling would change the "
                         f"statistics: pass upsample (--upsample) to allow it, or evaluate at a smaller size")
    return torch.from_numpy(np.ascontiguousarray(resize_center_crop(img, size).transpose(2, 0, 1)))


class ImageFolder(Dataset):
    """Images under a folder, resized and centre-cropped to size×size."""

    def __init__(self, root: str | Path, size: int, upsample: bool = False, limit: int | None = None) -> None:
        self.files = list_images(root)
        if not self.files:
            raise ValueError(f"image folder {root} holds no image files (looked for {', '.join(sorted(IMAGE_SUFFIXES)[:8])}, ...)")
        if limit is not None:
            self.files = self.files[:limit]
        self.size, self.upsample = size, upsample

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        path = self.files[index]
        try:
            return {"pixels": prepare_image(load_image(path), self.size, self.upsample, str(path)), "key": str(path)}
        except (ValueError, OSError) as err:
            return {"skipped": str(path), "reason": str(err)}


def check_shards(shards: list[str | Path]) -> list[Path]:
    """The shard paths, after checking there are some and that each exists."""
    paths = [Path(s) for s in shards]
    if not paths:
        raise ValueError("no tar shards given")
    missing = [str(s) for s in paths if not s.is_file()]
    if missing:
        raise ValueError(f"tar shards not found: {missing[:5]}")
    return paths


def _reader() -> tuple[int, int]:
    """(this loader worker's id, number of workers); (0, 1) outside a DataLoader worker."""
    info = get_worker_info()
    return (info.id, info.num_workers) if info else (0, 1)


def reader_limit(limit: int, reader: int, readers: int) -> int:
    """Reader `reader`'s share of a global `limit`: limit // readers, plus one for the first limit % readers."""
    return limit // readers + (1 if reader < limit % readers else 0)


class TarShards(IterableDataset):
    """WebDataset-style .tar shards: members "KEY.jpg" (any Pillow format) grouped by KEY.

    Sharded at the shard level over readers = world × loader workers: shard i goes to reader
    i mod readers, so no sample is read twice and none is skipped. `limit` caps the total over
    all readers: each reads at most its share (`reader_limit`), so the whole evaluation sees
    exactly min(limit, available) items whenever every reader's shards hold its share (a reader
    with too few samples, or none when readers outnumber shards, leaves its remainder unused).
    Items count whether they decode or are skipped, as ImageFolder's limit counts files.
    """

    def __init__(self, shards: list[str | Path], size: int, upsample: bool = False, rank: int = 0,
                 world: int = 1, limit: int | None = None) -> None:
        self.shards = check_shards(shards)
        self.size, self.upsample, self.rank, self.world, self.limit = size, upsample, rank, world, limit

    def __iter__(self):
        worker, workers = _reader()
        reader, readers = self.rank * workers + worker, self.world * workers
        share = None if self.limit is None else reader_limit(self.limit, reader, readers)
        count = 0
        for shard in self.shards[reader::readers]:
            if share is not None and count >= share:
                return
            for item in self._read_shard(shard):
                yield item
                count += 1
                if share is not None and count >= share:
                    return

    def _read_shard(self, shard: Path):
        try:
            with tarfile.open(shard, "r|*") as tar:
                for member in tar:
                    if not member.isfile() or Path(member.name).suffix.lower() not in IMAGE_SUFFIXES:
                        continue
                    key = f"{shard.name}/{member.name}"
                    data = tar.extractfile(member).read()
                    yield self._decode(data, key)
        except (tarfile.TarError, OSError, EOFError) as err:
            yield {"skipped": str(shard), "reason": f"unreadable tar shard after the samples above ({err})"}

    def _decode(self, data: bytes, key: str) -> dict:
        try:
            return {"pixels": prepare_image(decode_image(data, key), self.size, self.upsample, key), "key": key}
        except ValueError as err:
            return {"skipped": key, "reason": str(err)}


class VideoFolder(Dataset):
    """Clips of `frames` frames (at `stride`) from videos under a folder, resized and centre-cropped."""

    def __init__(self, root: str | Path, size: int, frames: int, stride: int = 1, limit: int | None = None) -> None:
        from .video import list_videos

        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"video folder {root} does not exist or is not a folder")
        self.files = list_videos(root)
        if not self.files:
            raise ValueError(f"video folder {root} holds no video files (mp4, webm, avi, mkv, mov)")
        if limit is not None:
            self.files = self.files[:limit]
        self.size, self.frames, self.stride = size, frames, stride

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        from .video import read_clip

        path = self.files[index]
        try:
            clip = read_clip(path, self.frames, stride=self.stride, size=self.size)  # T×H×W×3 uint8
        except (ValueError, OSError) as err:
            return {"skipped": str(path), "reason": str(err)}
        return {"pixels": torch.from_numpy(np.ascontiguousarray(clip.transpose(3, 0, 1, 2))), "key": str(path)}


def collate(items: list[dict]) -> dict:
    """Stack usable samples; pass skipped files through by name and reason."""
    good = [it for it in items if "pixels" in it]
    return {
        "pixels": torch.stack([it["pixels"] for it in good]) if good else None,
        "keys": [it["key"] for it in good],
        "skipped": [{"file": it["skipped"], "reason": it["reason"]} for it in items if "skipped" in it],
    }


def to_model_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (any shape) -> float32 in [-1, 1], on whatever device they are."""
    return pixels.float() / 127.5 - 1.0


def _has_videos(root: Path) -> bool:
    from .video import list_videos

    return bool(list_videos(root))


def open_dataset(source: str | Path, size: int, frames: int = 1, stride: int = 1, upsample: bool = False,
                 limit: int | None = None, rank: int = 0, world: int = 1):
    """A folder of images or videos, a .tar shard, or a folder/glob of .tar shards.

    `frames` > 1 asks for video clips, which only a folder of video files provides.
    """
    root = Path(source)
    if frames > 1 and (_names_shards(source) or (root.is_dir() and list(root.glob("*.tar"))
                                                 and not _has_videos(root))):
        raise ValueError(f"video evaluation needs a folder of video files (mp4, webm, avi, mkv, mov), but "
                         f"{source} holds .tar shards, which are read as images only: pass a video folder")
    if root.is_dir() and frames > 1:
        return VideoFolder(root, size, frames, stride, limit)
    shards = shard_paths(source)
    if shards is not None:
        return TarShards(shards, size, upsample, rank, world, limit)
    if root.is_dir():
        return ImageFolder(root, size, upsample, limit)
    raise ValueError(f"data source {source} is neither a folder nor .tar shards")


def _names_shards(source: str | Path) -> bool:
    """Whether `source` is written as shards: a glob pattern or a .tar path."""
    text = str(source)
    return any(ch in text for ch in "*?[") or text.endswith(".tar")


def shard_paths(source: str | Path) -> list[Path] | None:
    """The sorted .tar shards `source` names (a .tar path, a glob, or a folder of only .tar files), else None."""
    if _names_shards(source):
        import glob

        shards = sorted(Path(p) for p in glob.glob(str(source)) if Path(p).is_file())
        if not shards:
            raise ValueError(f"no tar shards match {source}")
        return shards
    root = Path(source)
    if root.is_dir():
        tars = sorted(p for p in root.glob("*.tar") if p.is_file())
        if tars and not list_images(root):
            return tars
    return None
