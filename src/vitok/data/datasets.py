"""Datasets of images (folders, tar shards) and video clips that skip and report unreadable files.

Every sample is a dict: {"pixels": 3×H×W or 3×T×H×W uint8, "key": str}, or, for a
file that cannot be used, {"skipped": str, "reason": str}. `collate` separates the two, so a
bad file is counted and named by the caller and never reaches the model. Pixels travel as
uint8, a quarter of the bytes of float32 between loader processes and to the GPU;
`to_model_range` maps a batch to [-1, 1] on the device.
"""

from __future__ import annotations

import glob
import os
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from .images import decode_image, file_problem, list_files, load_image, resize_center_crop
from .video import VIDEO_EXTENSIONS

IMAGE_SUFFIXES = frozenset(ext.lower() for ext in Image.registered_extensions())
# Suffixes that make a glob's match a tar shard (tarfile reads the compressed ones too).
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def list_images(root: str | Path) -> list[Path]:
    """Every entry under root (recursively) with an extension Pillow can read, sorted.

    Links to folders are followed; entries that cannot be read as files (broken or looping
    links, FIFOs, ...) are listed too, so that the loader skips and names them.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"image folder {root} does not exist or is not a folder")
    return list_files(root, IMAGE_SUFFIXES)


def prepare_image(img: np.ndarray, size: int, upsample: bool, name: str) -> torch.Tensor:
    """3×size×size uint8: shorter side resized to size, then centre-cropped (the rFID-table convention)."""
    h, w = img.shape[:2]
    if min(h, w) < size and not upsample:
        raise ValueError(f"{name} is {w}x{h}, smaller than the size {size}; upsampling would change the "
                         f"statistics: pass upsample (--upsample) to allow it, or evaluate at a smaller size")
    return torch.from_numpy(np.ascontiguousarray(resize_center_crop(img, size).transpose(2, 0, 1)))


class ImageFolder(Dataset):
    """Images under a folder (or the `files` given, e.g. a glob's matches), resized and centre-cropped to size×size."""

    def __init__(self, root: str | Path, size: int, upsample: bool = False, limit: int | None = None,
                 files: list[Path] | None = None) -> None:
        self.files = list_images(root) if files is None else list(files)
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
    """The shard paths, after checking there are some and that each is a regular file (a FIFO would block)."""
    paths = [Path(s) for s in shards]
    if not paths:
        raise ValueError("no tar shards given")
    missing = [str(s) for s in paths if not s.exists() and not s.is_symlink()]
    if missing:
        raise ValueError(f"tar shards not found: {missing[:5]}")
    unusable = [f"{s}: {problem}" for s in paths if (problem := file_problem(s)) is not None]
    if unusable:
        raise ValueError(f"tar shards that cannot be read as files: {unusable[:5]}; remove them from the data "
                         f"or fix them")
    return paths


END_OF_ARCHIVE = 2 * tarfile.BLOCKSIZE


def tar_end_problem(tar: tarfile.TarFile, members: int) -> str | None:
    """After reading every member of `tar`: why it lacks the end-of-archive marker, else None.

    tarfile stops without complaint at a missing, partial or garbled header after the first
    member, so a shard cut exactly at a member boundary would read as a shorter shard. Every
    tar writer ends the archive with two 512-byte zero blocks, which a cut removes. `members`
    (how many were read) only goes into the message. Seeks back in the file, hence "r:" mode.
    """
    tar.fileobj.seek(tar.offset)
    tail = tar.fileobj.read(END_OF_ARCHIVE)
    if tail == bytes(END_OF_ARCHIVE):
        return None
    where = "the file ends there" if not tail else "what follows is not a tar header"
    return (f"truncated or damaged tar shard: no end-of-archive marker (two 512-byte zero blocks) after its "
            f"{members} member(s), at byte {tar.offset} ({where}); the samples read before that point are kept, "
            f"any after it are lost: copy or rebuild the shard again")


def link_member_reason(member: tarfile.TarInfo) -> str:
    """Why an image-named link inside a tar shard is skipped: a shard should hold the image bytes themselves."""
    kind = "symbolic link" if member.issym() else "hard link"
    return f"a {kind} to {member.linkname} inside the tar, not image data; store the image itself in the shard"


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
        members = 0
        try:
            # "r:" rather than streaming "r|": the end-of-archive check seeks back.
            with tarfile.open(shard, "r:*") as tar:
                for member in tar:
                    members += 1
                    if Path(member.name).suffix.lower() not in IMAGE_SUFFIXES or member.isdir():
                        continue
                    key = f"{shard.name}/{member.name}"
                    if not member.isfile():
                        yield {"skipped": key, "reason": link_member_reason(member)}
                        continue
                    data = tar.extractfile(member).read()
                    yield self._decode(data, key)
                problem = tar_end_problem(tar, members)
        except (tarfile.TarError, OSError, EOFError) as err:
            problem = f"unreadable tar shard after the samples above ({err})"
        if problem is not None:
            yield {"skipped": str(shard), "reason": problem}

    def _decode(self, data: bytes, key: str) -> dict:
        try:
            return {"pixels": prepare_image(decode_image(data, key), self.size, self.upsample, key), "key": key}
        except ValueError as err:
            return {"skipped": key, "reason": str(err)}


class VideoFolder(Dataset):
    """Clips of `frames` frames (at `stride`) from videos under a folder, resized and centre-cropped."""

    def __init__(self, root: str | Path, size: int, frames: int, stride: int = 1, limit: int | None = None,
                 files: list[Path] | None = None) -> None:
        from .video import list_videos

        root = Path(root)
        if files is None and not root.is_dir():
            raise ValueError(f"video folder {root} does not exist or is not a folder")
        self.files = list_videos(root) if files is None else list(files)
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
    """Stack usable samples; pass skipped files through by name and reason.

    Samples whose JPEG the training process decodes (data.decode=gpu) make the batch
    {"pending": usable samples in order, "jpegs", "keys", "skipped"} for gpu_decode.GpuDecoder
    instead: the batch's JPEG files are packed end to end into one uint8 tensor ("jpegs"), each
    pending sample holding its (start, stop) "span" in it, so a batch crosses from a loader
    process and into pinned memory as one buffer, not one shared-memory file per sample.
    """
    skipped = [{"file": it["skipped"], "reason": it["reason"]} for it in items if "skipped" in it]
    if any("jpeg" in it for it in items):
        pending, parts, start = [], [], 0
        for it in items:
            if "jpeg" in it:
                data = it["jpeg"]
                parts.append(data)
                it = {k: v for k, v in it.items() if k != "jpeg"} | {"span": (start, start + len(data))}
                start += len(data)
            if "pixels" in it or "span" in it:
                pending.append(it)
        jpegs = torch.frombuffer(bytearray().join(parts), dtype=torch.uint8)  # one copy
        return {"pending": pending, "jpegs": jpegs, "keys": [it["key"] for it in pending], "skipped": skipped}
    good = [it for it in items if "pixels" in it]
    return {
        "pixels": torch.stack([it["pixels"] for it in good]) if good else None,
        "keys": [it["key"] for it in good],
        "skipped": skipped,
    }


def to_model_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (any shape) -> float32 in [-1, 1], on whatever device they are."""
    return pixels.float() / 127.5 - 1.0


def _has_videos(root: Path) -> bool:
    from .video import list_videos

    return bool(list_videos(root))


def open_dataset(source: str | Path, size: int, frames: int = 1, stride: int = 1, upsample: bool = False,
                 limit: int | None = None, rank: int = 0, world: int = 1):
    """A folder of images or videos, a .tar shard, a folder of .tar shards, or a glob of any one of these kinds.

    `frames` > 1 asks for video clips, which only video files provide.
    """
    if is_glob(source):
        return _open_glob(str(source), size, frames, stride, upsample, limit, rank, world)
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


def _open_glob(pattern: str, size: int, frames: int, stride: int, upsample: bool, limit: int | None,
               rank: int, world: int):
    """open_dataset for a glob: the dataset of the one kind of file it matches."""
    kind, files = resolve_glob(pattern)
    if frames > 1 and kind != "videos":
        what = ".tar shards, which are read as images only" if kind == "shards" else "image files"
        raise ValueError(f"video evaluation needs a folder of video files (mp4, webm, avi, mkv, mov), but {pattern} "
                         f"matches {what}: pass a video folder, or a glob of video files")
    if kind == "videos":
        if frames == 1:
            raise ValueError(f"{pattern} matches video files, but this model reads images: pass images or .tar "
                             f"shards")
        return VideoFolder(pattern, size, frames, stride, limit, files=files)
    if kind == "images":
        return ImageFolder(pattern, size, upsample, limit, files=files)
    return TarShards(files, size, upsample, rank, world, limit)


def is_glob(source: str | Path) -> bool:
    """Whether `source` is a glob pattern (holds *, ? or [)."""
    return any(ch in str(source) for ch in "*?[")


def _glob_kind(path: Path) -> str | None:
    """"shards", "images" or "videos" by the name's suffix; None for any other file."""
    name = path.name.lower()
    if name.endswith(TAR_SUFFIXES):
        return "shards"
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return "images"
    return "videos" if path.suffix.lower() in VIDEO_EXTENSIONS else None


def resolve_glob(pattern: str) -> tuple[str, list[Path]]:
    """(kind, sorted matches) of a glob: kind "shards", "images" or "videos", by what the matches are named.

    Folders are not matches; files of no known kind are left out beside one of those kinds, and
    read as shards when nothing else matches (shards need not be named .tar). Broken links and
    the like stay in, so that their reader names them. Two kinds at once are an error.
    """
    matches = sorted(p for p in map(Path, glob.glob(pattern)) if not p.is_dir())
    if not matches:
        raise ValueError(f"no tar shards match {pattern}, nor any image or video file: check the pattern (and "
                         f"quote it, so that the shell passes it on unexpanded)")
    by_kind: dict[str, list[Path]] = {}
    for path in matches:
        kind = _glob_kind(path)
        if kind is not None:
            by_kind.setdefault(kind, []).append(path)
    if len(by_kind) > 1:
        examples = ", ".join(f"{kind} ({files[0].name}, ...)" for kind, files in sorted(by_kind.items()))
        raise ValueError(f"{pattern} matches more than one kind of file: {examples}; a glob must match one kind: "
                         f"narrow it, e.g. to '*.tar'")
    if not by_kind:
        return "shards", matches
    kind, files = by_kind.popitem()
    return kind, files


def _names_shards(source: str | Path) -> bool:
    """Whether `source` (not a glob) is written as a shard: a .tar path."""
    return str(source).endswith(".tar")


def shard_paths(source: str | Path) -> list[Path] | None:
    """The sorted .tar shards `source` names (a .tar path, a glob, or a folder of only .tar files), else None.

    A glob that matches images or videos is an error here: callers that read those from a glob
    (open_dataset, the training loader) resolve it before asking for shards.
    """
    if is_glob(source):
        kind, shards = resolve_glob(str(source))
        if kind != "shards":
            raise ValueError(f"{source} matches {kind}, not .tar shards; here a glob must name .tar shards: pass "
                             f"the folder that holds the {kind} instead")
        return shards
    if _names_shards(source):
        if not os.path.lexists(source):
            raise ValueError(f"no tar shards match {source}: there is no such file")
        return [Path(source)]  # the readers' check_shards names a shard that is no regular file
    root = Path(source)
    if root.is_dir():
        tars = sorted(p for p in root.glob("*.tar") if p.is_file())
        if tars and not list_images(root):
            return tars
    return None
