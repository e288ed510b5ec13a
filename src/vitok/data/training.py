"""The training data pipeline: infinite, exactly resumable streams of augmented uint8 batches.

What the training loop may rely on:

- Exact resume. The batches a rank sees from global step s on depend only on the data, the
  seed, the layout and s: build the loader again with start_step=s and it continues the
  unbroken run batch for batch, pixels included. No other state needs saving. For folders
  the layout is the global batch (any world and worker count giving it will do); for shards
  it is batch_size, world and workers, which decide how shards are dealt out.
- Augmentation belongs to the sample. Each sample seeds its own numpy Generator from
  (seed, epoch, index) for folders or (seed, shard, member, epoch) for shards, so a crop or
  flip does not depend on which worker, process or rank loads it.
- DDP equivalence for folders. Global batch s holds global stream positions
  [s·B, (s+1)·B) with B = batch_size × world, and rank r takes the contiguous chunk
  [r·b, (r+1)·b): concatenating the ranks' batches in rank order gives exactly the batch
  one rank with batch B sees, with the same augmentations.
- Shards are split among readers (rank × workers), not samples, so a shard run depends on
  world and workers; within one epoch of a reader no sample is read twice and none is left
  out. Readers advance independently, so when shards differ in size (or their count is not a
  multiple of the readers) a reader can begin its next epoch while others finish this one.

Every batch is `datasets.collate`'s dict: {"pixels": b×3×H×W (or b×3×T×H×W) uint8 tensor,
or None when every sample failed, "keys": [str], "skipped": [{"file", "reason"}]}. A skipped
sample still occupies its slot, so batch boundaries never depend on which files are broken.
"""

from __future__ import annotations

import os
import random
import tarfile
from functools import partial
from itertools import count, islice
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info

from .datasets import (IMAGE_SUFFIXES, TarShards, check_shards, collate, is_glob, link_member_reason, list_images,
                       resolve_glob, shard_paths, tar_end_problem)
from .gpu_decode import Plan, plan_jpeg
from .images import decode_image, decode_rgb, load_image, oriented_size, read_image_bytes
from .transforms import (TrainAugment, random_crop_box, random_flip, sample_rng, split_holdout,
                         stable_seed)
from .video import list_videos, read_clip

__all__ = ["TrainImages", "TrainSampler", "TrainShards", "TrainVideos", "check_usable", "make_train_loader"]

Scale = tuple[float, float]
Ratio = tuple[float, float]


def _check_layout(batch_size: int, rank: int, world: int, start_step: int, workers: int = 0) -> None:
    """Raise ValueError, naming the fix, for a batch/rank/world/step/worker combination that cannot run."""
    if batch_size < 1:
        raise ValueError(f"batch_size is per rank and must be >= 1, got {batch_size}; for a global batch G "
                         f"on W ranks pass G // W (G must be a multiple of W)")
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank must satisfy 0 <= rank < world, got rank {rank}, world {world}; "
                         f"pass the launcher's RANK and WORLD_SIZE")
    if start_step < 0:
        raise ValueError(f"start_step counts global batches already consumed and must be >= 0, got {start_step}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0 (0 loads in the main process), got {workers}")


class TrainSampler(Sampler):
    """Infinite (index, epoch) stream over n samples for one rank, resumable from a global step.

    The global stream is the concatenation of epoch permutations (epoch e shuffled by a
    torch.Generator seeded from (seed, e)), so when n is not a multiple of the global batch a
    batch simply spans two epochs; every index appears exactly once per epoch. Rank r yields
    chunk [r·b, (r+1)·b) of each global batch of batch_size × world positions.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1,
                 start_step: int = 0) -> None:
        if n < 1:
            raise ValueError(f"cannot sample from an empty dataset (n = {n})")
        _check_layout(batch_size, rank, world, start_step)
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world, self.start_step = rank, world, start_step

    def permutation(self, epoch: int) -> torch.Tensor:
        """The order (n,) in which epoch `epoch` visits the samples."""
        generator = torch.Generator().manual_seed(stable_seed(self.seed, epoch))
        return torch.randperm(self.n, generator=generator)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        b, global_batch = self.batch_size, self.batch_size * self.world
        epoch, order = -1, None
        for step in count(self.start_step):
            first = step * global_batch + self.rank * b
            for position in range(first, first + b):
                e, i = divmod(position, self.n)
                if e != epoch:  # positions only grow, so one cached permutation suffices
                    epoch, order = e, self.permutation(e)
                yield int(order[i]), e


def _index_epoch(item: int | tuple[int, int]) -> tuple[int, int]:
    """(index, epoch) from a sampler's tuple, or from a bare index (epoch 0, e.g. for held-out sets)."""
    if isinstance(item, tuple):
        return int(item[0]), int(item[1])
    return int(item), 0


def _pending_jpeg(data: bytes, plan: Plan, key: str) -> dict:
    """A worker's sample whose JPEG the training process decodes (data.decode=gpu; see gpu_decode).
    collate packs the batch's files into one buffer."""
    return {"jpeg": bytes(data), "plan": plan, "key": key}


def _channels_first(pixels: np.ndarray) -> torch.Tensor:
    """H×W×3 -> 3×H×W, or T×H×W×3 -> 3×T×H×W, as a contiguous uint8 tensor."""
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(pixels, -1, 0)))


class _TrainFiles(Dataset):
    """Files indexed by (index, epoch); subclasses read one file into an augmented H×W×3 or T×H×W×3 array."""

    def __init__(self, files: list[Path], augment: TrainAugment, seed: int) -> None:
        self.files, self.augment, self.seed = [Path(f) for f in files], augment, seed

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        index, epoch = _index_epoch(item)
        path = self.files[index]
        try:
            pixels = self._read(path, sample_rng(self.seed, epoch, index))
        except (ValueError, OSError) as err:
            return {"skipped": str(path), "reason": str(err)}
        if isinstance(pixels, dict):  # a JPEG left for the training process to decode (gpu_decode)
            return pixels
        return {"pixels": _channels_first(pixels), "key": str(path)}

    def _read(self, path: Path, rng: np.random.Generator) -> np.ndarray | dict:
        raise NotImplementedError


class TrainImages(_TrainFiles):
    """Image files as {"pixels": 3×size×size uint8, "key": path}, or {"skipped", "reason"} for a bad file.

    Images smaller than size are upsampled; for training crops that only blurs, it does not bias a metric.
    gpu_jpeg: JPEGs come back as {"jpeg": bytes, "plan": crop plan, "key"} for gpu_decode.GpuDecoder
    (the same crop box and flip as here), other files decoded here as usual.
    """

    def __init__(self, files: list[Path], size: int, *, crop: str = "random", flip: bool = True,
                 scale: Scale = (0.5, 1.0), ratio: Ratio = (3 / 4, 4 / 3), seed: int = 0,
                 gpu_jpeg: bool = False) -> None:
        super().__init__(files, TrainAugment(size, crop, flip, tuple(scale), tuple(ratio)), seed)
        self.gpu_jpeg = gpu_jpeg

    def _read(self, path: Path, rng: np.random.Generator) -> np.ndarray | dict:
        a = self.augment
        if a.crop != "random":
            return a(load_image(path), rng)
        data = read_image_bytes(path)
        if self.gpu_jpeg:
            plan = plan_jpeg(data, a, rng)  # draws nothing when it returns None
            if plan is not None:
                return _pending_jpeg(data, plan, str(path))
        # The box is drawn on the full-size image (from its header), exactly as random_resized_crop
        # would; a JPEG is then decoded at the largest 1/2^k that still leaves the box at least
        # `size` pixels on its shorter side: a 4000x3000 photo cropped to 256 decodes about 8x faster.
        height, width = oriented_size(data, str(path))
        top, left, h, w = random_crop_box(height, width, a.scale, a.ratio, rng)
        reduce = 1
        while reduce < 8 and min(h, w) >= 2 * reduce * a.size:
            reduce *= 2
        img = decode_rgb(data, str(path), reduce)
        sy, sx = img.height / height, img.width / width
        t, l = round(top * sy), round(left * sx)
        b, r = max(round((top + h) * sy), t + 1), max(round((left + w) * sx), l + 1)
        # Crop and resize in Pillow: the same pixels as resize_square of the array crop, without
        # converting the whole decoded image to an array first (a third of a sample's time).
        out = np.asarray(img.crop((l, t, r, b)).resize((a.size, a.size), Image.Resampling.BICUBIC))
        return random_flip(out, rng) if a.flip else out


class TrainVideos(_TrainFiles):
    """Clips of `frames` frames at `stride` as {"pixels": 3×T×size×size uint8, "key": path}, or a skip.

    The start frame (uniform over every start that fits, unless random_start is False, then 0)
    and the crop come from the sample's rng; one crop box serves every frame. Videos shorter
    than (frames - 1) × stride + 1 frames are skipped with the reason.
    """

    def __init__(self, files: list[Path], size: int, frames: int, stride: int = 1, *, crop: str = "random",
                 flip: bool = True, scale: Scale = (0.5, 1.0), ratio: Ratio = (3 / 4, 4 / 3), seed: int = 0,
                 random_start: bool = True) -> None:
        if frames < 1 or stride < 1:
            raise ValueError(f"frames and stride must be >= 1, got frames {frames}, stride {stride}")
        super().__init__(files, TrainAugment(size, crop, flip, tuple(scale), tuple(ratio)), seed)
        self.frames, self.stride, self.random_start = frames, stride, random_start

    def _read(self, path: Path, rng: np.random.Generator) -> np.ndarray:
        # read_clip draws its start with a random.Random; seeding that from the sample's rng
        # keeps one source of randomness per sample.
        start_rng = random.Random(int(rng.integers(2**63))) if self.random_start else None
        clip = read_clip(path, self.frames, stride=self.stride, start=None if self.random_start else 0,
                         rng=start_rng)  # T×H×W×3 at full resolution
        return self.augment(clip, rng)


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    """The bytes of one member of an open tar."""
    return tar.extractfile(member).read()


def _tar_entries(shard: Path) -> Iterator[tuple[str, Callable[[], bytes] | None, str | None]]:
    """(member name, read() -> bytes, None) per image member, in tar order; a bad tar ends with ("", None, reason).

    Nothing is read until read() is called (it must be called before the next entry), so
    counting entries walks only the tar headers. Counting and reading see the same entries
    because a member whose data cannot be read is still one entry. An image-named link is an
    entry (name, None, reason); a shard cut short (no end-of-archive marker) keeps the samples
    before the cut and ends with ("", None, reason).
    """
    members, problem = 0, None
    try:
        # "r:" rather than the streaming "r|": it seeks over the data of members nobody reads.
        with tarfile.open(shard, "r:*") as tar:
            for member in tar:
                members += 1
                if member.isdir() or Path(member.name).suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                if member.isfile():
                    yield member.name, partial(_read_member, tar, member), None
                else:
                    yield member.name, None, link_member_reason(member)
            problem = tar_end_problem(tar, members)
    except (tarfile.TarError, OSError, EOFError) as err:
        problem = f"unreadable tar shard after the samples above ({err})"
    if problem is not None:
        yield "", None, problem


def _check_readers(shards: int, world: int, workers: int) -> None:
    """Raise ValueError unless every reader (rank × loader worker) gets at least one shard per epoch."""
    readers = world * max(workers, 1)
    if shards < readers:
        raise ValueError(f"{shards} training tar shards cannot feed {readers} readers ({world} ranks × "
                         f"{max(workers, 1)} loader workers): each reader needs at least one whole shard per "
                         f"epoch; split the data into at least {readers} shards, or use fewer workers or ranks")


def _batches_before(step: int, worker: int, workers: int) -> int:
    """How many of a rank's first `step` batches came from `worker`, given batch i comes from worker i mod workers."""
    return max(0, (step - worker + workers - 1) // workers)


class TrainShards(IterableDataset):
    """WebDataset-style .tar shards (members KEY.ext) streamed forever as whole batches for one rank.

    Epoch e shuffles the shard order from (seed, e); reader k = rank × workers + worker of
    world × workers readers takes shards k, k + readers, ... of that order. A reader's samples
    run on across shards and epochs and are cut into batches of batch_size, so its batch count
    is fixed by the member counts alone. The DataLoader takes batches from its workers in turn,
    so to resume at start_step each worker takes over one reader's stream and skips the
    members of the batches that reader already gave by walking tar headers, without
    decoding. Use with DataLoader(batch_size=None) and iterate it once.
    """

    def __init__(self, shards: list[str | Path], size: int, batch_size: int, *, crop: str = "random",
                 flip: bool = True, scale: Scale = (0.5, 1.0), ratio: Ratio = (3 / 4, 4 / 3), seed: int = 0,
                 rank: int = 0, world: int = 1, start_step: int = 0, gpu_jpeg: bool = False) -> None:
        self.shards = check_shards(shards)
        self.gpu_jpeg = gpu_jpeg
        _check_layout(batch_size, rank, world, start_step)
        self.augment = TrainAugment(size, crop, flip, tuple(scale), tuple(ratio))
        self.batch_size, self.seed, self.rank, self.world, self.start_step = batch_size, seed, rank, world, start_step

    def shard_order(self, epoch: int) -> list[Path]:
        """Every shard, in the order epoch `epoch` deals them out to readers."""
        return [self.shards[i] for i in sample_rng(self.seed, "shards", epoch).permutation(len(self.shards))]

    def read_shard(self, shard: Path, epoch: int = 0) -> Iterator[dict]:
        """The samples of one shard, augmented as in `epoch`."""
        for name, read, error in _tar_entries(shard):
            yield self._sample(epoch, shard, name, read, error)

    def _sample(self, epoch: int, shard: Path, name: str, read: Callable[[], bytes] | None, error: str | None) -> dict:
        """One member as {"pixels": 3×size×size uint8, "key": "SHARD/MEMBER"}, or a skip with the reason."""
        key = f"{shard.name}/{name}"
        if error is not None:
            return {"skipped": key if name else str(shard), "reason": error}
        rng = sample_rng(self.seed, shard.name, name, epoch)
        try:
            data = read()
            plan = plan_jpeg(data, self.augment, rng) if self.gpu_jpeg else None
            if plan is not None:
                return _pending_jpeg(data, plan, key)
            img = decode_image(data, key)
        except (ValueError, OSError, EOFError, tarfile.TarError) as err:
            return {"skipped": key, "reason": str(err)}
        return {"pixels": _channels_first(self.augment(img, rng)), "key": key}

    def _entries(self, reader: int, readers: int) -> Iterator[tuple]:
        """(epoch, shard, name, read, error) for every member this reader visits, epoch after epoch."""
        for epoch in count():
            mine = self.shard_order(epoch)[reader::readers]
            seen = 0
            for shard in mine:
                for entry in _tar_entries(shard):
                    seen += 1
                    yield (epoch, shard, *entry)
            if not seen:  # would otherwise spin forever without yielding a batch
                raise ValueError(f"tar shards {[s.name for s in mine]} hold no image members "
                                 f"(looked for {', '.join(sorted(IMAGE_SUFFIXES)[:6])}, ...)")

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        _check_readers(len(self.shards), self.world, workers)
        # A fresh DataLoader iterator takes its batch j from worker j mod workers, while the
        # unbroken run took batch start_step + j from worker (start_step + j) mod workers; so
        # worker w carries on the stream of that run's worker (start_step + w) mod workers.
        stream = (self.start_step + worker) % workers
        entries = self._entries(self.rank * workers + stream, self.world * workers)
        done = _batches_before(self.start_step, stream, workers)
        entries = islice(entries, done * self.batch_size, None)
        while True:
            yield collate([self._sample(*entry) for entry in islice(entries, self.batch_size)])


def check_usable(samples: Iterable[dict], tries: int, source: str) -> None:
    """Raise ValueError listing the failures if none of the first `tries` samples loads."""
    failures = []
    for item in islice(samples, tries):
        if "pixels" in item or "jpeg" in item:  # a planned JPEG: its header read (data.decode=gpu)
            return
        failures.append(f"{item['skipped']}: {item['reason']}")
    if not failures:
        raise ValueError(f"{source} holds no training samples")
    raise ValueError(f"{source}: the first {len(failures)} training samples all failed to load; fix or remove "
                     f"them before training:\n  " + "\n  ".join(failures))


def _train_files(source: str | Path, frames: int) -> tuple[Path, list[Path]]:
    """(root, files) of a folder, or of a glob of images (videos for frames > 1); root is the matches' common folder."""
    wanted = "video files (mp4, webm, avi, mkv, mov)" if frames > 1 else "image files (jpg, png, ...)"
    if is_glob(source):
        kind, files = resolve_glob(str(source))
        if kind != ("videos" if frames > 1 else "images"):
            raise ValueError(f"{source} matches {kind}, but training with frames={frames} reads {wanted}: "
                             f"point data.source at those")
        return Path(os.path.commonpath([f.parent for f in files])), files
    root = Path(source)
    if not root.is_dir():
        raise ValueError(f"data source {source} is neither a folder nor .tar shards")
    files = list_videos(root) if frames > 1 else list_images(root)
    if not files:
        raise ValueError(f"{root} holds no {wanted}")
    return root, files


def make_train_loader(source: str | Path, *, size: int, batch_size: int, frames: int = 1, stride: int = 1,
                      workers: int = 0, seed: int = 0, start_step: int = 0, rank: int = 0, world: int = 1,
                      crop: str = "random", flip: bool = True, scale: Scale = (0.5, 1.0),
                      ratio: Ratio = (3 / 4, 4 / 3), holdout: int = 0, holdout_seed: int = 0,
                      pin_memory: bool | None = None, check_tries: int = 64,
                      gpu_jpeg: bool = False) -> tuple[DataLoader, Dataset | None, dict]:
    """(infinite loader of this rank's batches, held-out dataset or None, info) for a folder or tar shards.

    source: a folder of images, a folder of videos (frames > 1), a glob of image (video) files,
    or tar shards (a .tar path, a glob, or a folder holding .tar files and no images).
    batch_size is per rank. Folders (and globs of files): the `holdout` files chosen by
    `split_holdout` (seeded by holdout_seed, not seed, so runs with different seeds share one
    held-out set) form a map-style centre-crop dataset (clips from
    frame 0) with the same sample dicts. Shards: the held-out set is the last shard (at most
    `holdout` samples, centre-cropped, via datasets.TarShards) when holdout > 0 and there is
    more than one shard, else None. gpu_jpeg: training JPEGs come as pending byte samples for
    gpu_decode.GpuDecoder (images only; centre crops and other formats are decoded here). info: kind ("images" | "videos" | "shards"), train_files
    and heldout_files (counts of files, or of shards), samples_per_epoch (None for shards),
    global_batch, readers (rank × worker shard readers; None for folders).
    """
    _check_layout(batch_size, rank, world, start_step, workers)
    if frames < 1:
        raise ValueError(f"frames must be >= 1 (1 trains on images, more on video clips), got {frames}")
    if gpu_jpeg and frames > 1:
        raise ValueError("data.decode=gpu decodes JPEG images; video clips are decoded by PyAV on the CPU: "
                         "set data.decode=cpu for video")
    aug = dict(crop=crop, flip=flip, scale=tuple(scale), ratio=tuple(ratio))
    pin = torch.cuda.is_available() if pin_memory is None else pin_memory
    # An explicit generator keeps DataLoader from drawing its worker seed from the global RNG.
    loading = dict(num_workers=workers, pin_memory=pin, persistent_workers=workers > 0,
                   generator=torch.Generator().manual_seed(stable_seed(seed, "loader")))
    info = {"global_batch": batch_size * world}

    shards = None if is_glob(source) and resolve_glob(str(source))[0] != "shards" else shard_paths(source)
    if shards is not None:
        if frames > 1:
            raise ValueError(f"{source}: tar shards hold images; train on video from a folder of video files")
        held = shards[-1:] if holdout and len(shards) > 1 else []
        train = shards[:len(shards) - len(held)]
        _check_readers(len(train), world, workers)
        dataset = TrainShards(train, size, batch_size, **aug, seed=seed, rank=rank, world=world,
                              start_step=start_step, gpu_jpeg=gpu_jpeg)
        check_usable(dataset.read_shard(train[0]), check_tries, str(train[0]))
        heldout = TarShards(held, size, upsample=True, limit=holdout, rank=rank, world=world) if held else None
        info.update(kind="shards", train_files=len(train), heldout_files=len(held), samples_per_epoch=None,
                    readers=world * max(workers, 1))
        return DataLoader(dataset, batch_size=None, **loading), heldout, info

    root, files = _train_files(source, frames)
    train, held = split_holdout(files, holdout, holdout_seed, root)
    if frames > 1:
        dataset = TrainVideos(train, size, frames, stride, **aug, seed=seed)
        heldout = TrainVideos(held, size, frames, stride, crop="center", flip=False, random_start=False)
    else:
        dataset = TrainImages(train, size, **aug, seed=seed, gpu_jpeg=gpu_jpeg)
        heldout = TrainImages(held, size, crop="center", flip=False)
    check_usable((dataset[i] for i in range(len(dataset))), check_tries, str(root))
    sampler = TrainSampler(len(dataset), batch_size, seed, rank, world, start_step)
    info.update(kind="videos" if frames > 1 else "images", train_files=len(train), heldout_files=len(held),
                samples_per_epoch=len(train), readers=None)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate, **loading)
    return loader, heldout if held else None, info
