"""Encode a labelled image (or video) folder once through a frozen tokenizer into a compact latent store.

Layout of a store folder::

    shard_00000.safetensors   "latents" N×L×c (float16 or bfloat16), "labels" N int64, optionally "std"
    shard_00001.safetensors   ...
    index.json                class names, tokenizer folder and config, grid, count, per-channel mean/std

Classes are the sub-folders of the data folder; their sorted names give the ids 0, 1, ... .
The data may also be WebDataset-style .tar shards whose samples carry their class in a
"KEY.cls" member (an integer id or a name; see labelled_shard_items).
With a video tokenizer the files are videos, one clip each, and L = (T/q)(H/p)(W/p) tokens on the
grid (t, h, w) that index.json records.
Each shard is written through a temporary file and renamed, so a killed run leaves whole
shards only; a rerun skips the shards already on disk (checking they hold the same files),
encodes again any shard that does not read back whole (cut short by a full disk or a copy:
see shard_problem) and deletes the temporaries a killed run left. LatentStore refuses a store
with such a shard, naming it and that rerun.
Under torchrun the shards are spread over the processes (shard n on rank n mod world).
index.json is written last: a store without it is unfinished. The per-channel mean and std
that a DiT normalises with are the tokenizer's own statistics (`vitok stats`, in its
config.json) when it has them ("normalisation": "tokenizer"), else computed in float64 over the
stored (rounded) latents ("normalisation": "store"; also kept as store_mean/store_std either way).
The index records the tokenizer's weights fingerprint: check_tokenizer refuses a store whose
tokenizer has since changed weights or statistics.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

from ..data.datasets import list_images, prepare_image, to_model_range
from ..data.images import decode_image, load_image
from ..model.pretrained import atomic_write, read_latent_stats, weights_fingerprint
from ..arguments import check_device, check_out_folder

INDEX_FILE = "index.json"
STORAGE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
SAFETENSORS_MAX_HEADER = 100_000_000  # the format's own limit on the JSON header's size


def labelled_images(root: str | Path, video: bool = False) -> tuple[list[str], list[tuple[Path, int]]]:
    """(sorted class names, [(file, class id)]) for a folder whose sub-folders are the classes.

    The files are images, or with video=True video files (mp4, webm, avi, mkv, mov).
    """
    from ..data.video import list_videos

    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"data folder {root} does not exist or is not a folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"data folder {root} has no class sub-folders; put each class's "
                         f"{'videos' if video else 'images'} in {root}/<class name>/")
    listing = list_videos if video else list_images
    items = [(path, label) for label, name in enumerate(classes) for path in listing(root / name)]
    if not items:
        raise ValueError(f"the class sub-folders of {root} ({', '.join(classes[:5])}, ...) hold no "
                         f"{'video files (mp4, webm, avi, mkv, mov)' if video else 'images'}")
    return classes, items


@dataclass(frozen=True)
class TarMember:
    """An image inside an uncompressed .tar shard, read by offset (no tar index is rebuilt per image)."""

    shard: Path
    name: str
    offset: int
    size: int

    def __str__(self) -> str:
        return f"{self.shard}/{self.name}"

    def read(self) -> bytes:
        with open(self.shard, "rb") as f:
            f.seek(self.offset)
            return f.read(self.size)


def labelled_shard_items(shards: list[Path]) -> tuple[list[str], list[tuple[TarMember, int]]]:
    """(class names, [(image member, class id)]) of WebDataset-style shards whose samples carry a label.

    A sample is the members sharing a key (the member name up to the first "." of its file name):
    one image and a "KEY.cls" text member holding the class, an integer id (names "0", "1", ...
    up to the largest id) or a class name (sorted names give the ids). A sample without a label
    is an error naming it; one without an image is ignored.
    """
    import tarfile

    from ..data.datasets import IMAGE_SUFFIXES, tar_end_problem

    samples: list[tuple[TarMember, str]] = []
    for shard in shards:
        images, labels = {}, {}
        try:
            with tarfile.open(shard, "r:") as tar:  # uncompressed: members are read by offset below
                count = 0
                for count, member in enumerate(tar, start=1):
                    if not member.isfile():
                        continue
                    folder, _, base = member.name.rpartition("/")
                    stem, _, extension = base.partition(".")
                    key = f"{folder}/{stem}" if folder else stem
                    if extension.lower() == "cls":
                        labels[key] = tar.extractfile(member).read().decode().strip()
                    elif "." + extension.lower() in IMAGE_SUFFIXES:  # "KEY.seg.png" is no sample image
                        images[key] = TarMember(shard, member.name, member.offset_data, member.size)
                # A shard cut between two members reads as a shorter one: a store built from it would
                # silently lack the samples after the cut.
                problem = tar_end_problem(tar, count)
                if problem:
                    raise ValueError(f"{shard}: {problem}. A latent store is built from whole shards: repair it, "
                                     f"or leave it out of --data")
        except tarfile.ReadError as err:
            raise ValueError(f"{shard} cannot be read as an uncompressed .tar shard ({err}); latent stores read "
                             f"plain .tar files, so unpack compressed shards first") from err
        unlabelled = sorted(set(images) - set(labels))
        if unlabelled:
            raise ValueError(f"{shard}: sample {unlabelled[0]!r} (and {len(unlabelled) - 1} more) has no "
                             f"{unlabelled[0]}.cls member; every image needs its class in a .cls text member")
        samples += [(images[key], labels[key]) for key in images]
    if not samples:
        raise ValueError(f"the shards ({shards[0]}, ...) hold no images with a .cls label")
    raw = [label for _, label in samples]
    if all(label.lstrip("-").isdigit() for label in raw):
        ids = [int(label) for label in raw]
        if min(ids) < 0:
            raise ValueError(f"class ids in .cls members must be >= 0, found {min(ids)}")
        classes = [str(i) for i in range(max(ids) + 1)]
        return classes, [(member, i) for (member, _), i in zip(samples, ids)]
    classes = sorted(set(raw))
    lookup = {name: i for i, name in enumerate(classes)}
    return classes, [(member, lookup[label]) for member, label in samples]


def labelled_items(data: str | Path, video: bool) -> tuple[list[str], list[tuple[Path | TarMember, int]], Path]:
    """(classes, items, root) for a class-folder tree, or for labelled .tar shards (a .tar, glob or folder of them)."""
    from ..data.datasets import shard_paths

    shards = None if video else shard_paths(data)
    if shards is not None:
        return (*labelled_shard_items(shards), Path(os.path.commonpath([shard.parent for shard in shards])))
    return (*labelled_images(data, video), Path(data))


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


def _relative(item: Path | TarMember, root: Path) -> str:
    if isinstance(item, TarMember):
        return f"{item.shard.relative_to(root)}/{item.name}"
    return str(item.relative_to(root))


def _fingerprint(items: list[tuple[Path | TarMember, int]], root: Path, size: int,
                 clip: tuple[int, int] = (1, 1)) -> str:
    """Hash of a shard's files, labels, image size and clip (frames, stride): other inputs must not reuse it."""
    text = "\n".join(f"{_relative(p, root)}\t{y}" for p, y in items) + f"\n{size}"
    if clip != (1, 1):  # images keep the fingerprints of stores written before video support
        text += f"\n{clip[0]}x{clip[1]}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _shard_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def _header(path: Path) -> tuple[int, int, dict]:
    """(file size, where the tensor data starts, safetensors header) of a shard; ValueError saying why not."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"is {size} bytes, too short for a safetensors header (truncated)")
        length = int.from_bytes(head, "little")  # the header's byte count, then the header's JSON
        if length > SAFETENSORS_MAX_HEADER:
            raise ValueError("does not start with a safetensors header (damaged, or not a shard)")
        if length > size - 8:
            raise ValueError(f"is {size} bytes, shorter than its {length}-byte header (truncated)")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ValueError("has a safetensors header that is not valid JSON (damaged)") from None
    if not isinstance(header, dict):
        raise ValueError("has a safetensors header that is not a table of tensors (damaged)")
    return size, 8 + length, header


def shard_problem(path: Path) -> str | None:
    """Why a shard does not read back whole (e.g. "is 812 bytes, but its header describes 1270 bytes
    (truncated)"), or None when its header, its size and the tensors a store needs agree.

    A header check, not a read of every value: it catches the usual damage, a file cut short by a
    full disk, a killed copy or transfer, without loading the latents."""
    try:
        size, data_start, header = _header(path)
        ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
        expected = data_start + max(ends, default=0)
    except OSError as err:
        return f"cannot be read ({err})"
    except ValueError as err:
        return str(err)
    except (TypeError, KeyError, IndexError):
        return "has a safetensors header without the tensors' offsets (damaged)"
    if size != expected:
        damage = "truncated" if size < expected else "damaged"
        return f"is {size} bytes, but its header describes {expected} bytes ({damage})"
    missing = [name for name in ("latents", "labels") if name not in header]
    if missing:
        return f"holds no {' or '.join(missing)} tensor (not a shard written by `vitok latents`)"
    try:
        _shard_metadata(path)  # safetensors' own checks: dtypes and shapes against the offsets
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error type for every kind of damage
        return f"is rejected by safetensors ({err})"
    return None


@torch.no_grad()
def encode_folder(checkpoint: str | Path, data: str | Path, out: str | Path, image_size: int | None = None,
                  batch_size: int = 32, shard_size: int = 1024, dtype: str = "float16", store_std: bool = False,
                  upsample: bool = False, device: str = "cpu", frame_stride: int = 1, log=print) -> dict:
    """Encode every image of `data` (posterior mode) into shards under `out`; returns the index.

    A video tokenizer encodes videos instead: one clip per file, the model's number of frames
    taken every `frame_stride` frames from the middle of the video, resized and centre-cropped.

    Under torchrun, shard n is encoded by rank n mod world (each on its own GPU with --device
    cuda); shards do not depend on which process wrote them, so a store is the same for any
    number of processes and a rerun with another number resumes it. Rank 0 writes index.json
    once every shard is on disk; every rank returns the index.
    """
    from ..model import ViTok
    from ..train.distributed import all_gather_objects, barrier, broadcast_object, setup

    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"unknown latent storage dtype {dtype!r}; choose one of {sorted(STORAGE_DTYPES)}")
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard_size and batch_size must be positive, got {shard_size} and {batch_size}")
    if frame_stride < 1:
        raise ValueError(f"frame_stride must be at least 1, got {frame_stride}")
    if image_size is not None and image_size < 1:  # 0 would silently mean "the model's size"
        raise ValueError(f"--image-size must be a positive number of pixels, got {image_size}; leave it out to "
                         f"use the tokenizer's size")
    out = check_out_folder(out)
    check_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = 0
    if world > 1:  # one process per GPU (or CPU processes with gloo): the local rank picks the GPU
        dist = setup("cuda" if str(device).startswith("cuda") else "cpu")
        rank, device = dist.rank, dist.device
    checkpoint = ViTok.resolve_folder(checkpoint)  # a released name or repo id: the folder it lives in
    model = ViTok.from_pretrained(checkpoint, device=device)
    video = model.config.is_video
    clip = (model.config.frames, frame_stride) if video else (1, 1)
    size = image_size or model.config.image_size
    classes, items, root = labelled_items(data, video)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(out, log)
    barrier()
    prefix = f"[rank {rank}] " if world > 1 else ""
    shards = [items[i:i + shard_size] for i in range(0, len(items), shard_size)]
    error = None
    try:
        for number in range(rank, len(shards), world):
            _encode_shard(model, shards[number], number, root, out, size, clip, batch_size, dtype, store_std,
                          upsample, device, lambda line: log(prefix + line))
    except ValueError as err:  # reported by every rank below, so none waits forever at the barrier
        error = str(err)
    errors = [e for e in all_gather_objects(error) if e]
    if errors:
        raise ValueError(errors[0])
    index = None
    if rank == 0:
        skipped = [entry for n in range(len(shards))
                   for entry in json.loads(_shard_metadata(out / shard_name(n)).get("skipped", "[]"))]
        index = write_index(out, classes, model, Path(checkpoint), size, dtype, len(shards), skipped, clip)
    barrier()
    return broadcast_object(index)


def _remove_stale_temporaries(out: Path, log) -> None:
    """Delete the temporary shard files a killed run left behind (atomic_write names them .shard_*.tmp)."""
    for stale in sorted(out.glob(".shard_*.safetensors.*.tmp")):
        stale.unlink(missing_ok=True)
        log(f"removed {stale.name}, left by an interrupted run")


def _load(file: Path | TarMember, size: int, clip: tuple[int, int], upsample: bool) -> torch.Tensor:
    """One image as 3×H×W, or one clip of clip[0] frames every clip[1] as 3×T×H×W, uint8."""
    if isinstance(file, TarMember):
        return prepare_image(decode_image(file.read(), str(file)), size, upsample, str(file))
    if clip == (1, 1):
        return prepare_image(load_image(file), size, upsample, str(file))
    from ..data.video import read_clip

    frames = read_clip(file, clip[0], stride=clip[1], size=size)  # T×H×W×3, centred in the video
    return torch.from_numpy(frames).permute(3, 0, 1, 2).contiguous()


def _encode_shard(model, shard_items: list[tuple[Path, int]], number: int, root: Path, out: Path, size: int,
                  clip: tuple[int, int], batch_size: int, dtype: str, store_std: bool, upsample: bool, device,
                  log) -> None:
    """Write shard `number` (skipped when a shard of the same inputs is already on disk)."""
    path, fingerprint = out / shard_name(number), _fingerprint(shard_items, root, size, clip)
    if path.is_file():
        problem = shard_problem(path)
        if problem is None:
            if _shard_metadata(path).get("fingerprint") != fingerprint:
                raise ValueError(f"{path} was written from other images or another size; delete {out} "
                                 f"or pass another --out")
            log(f"{path.name}: already written, skipped")
            return
        # A shard that does not read back is unfinished work, not data: encoding it again loses nothing.
        log(f"{path.name}: on disk but unreadable ({problem}); encoding it again")
    latents, stds, labels, skipped = [], [], [], []
    for start in range(0, len(shard_items), batch_size):
        pixels, batch_labels = [], []
        for file, label in shard_items[start:start + batch_size]:
            try:
                pixels.append(_load(file, size, clip, upsample))
                batch_labels.append(label)
            except (ValueError, OSError) as err:
                skipped.append({"file": str(file), "reason": str(err)})
        if not pixels:
            continue
        posterior = model.encode(to_model_range(torch.stack(pixels).to(device)))
        latents.append(posterior.mode().float().cpu())  # B×L×c
        if store_std:
            stds.append(posterior.std.float().cpu())
        labels += batch_labels
    if not latents:
        raise ValueError(f"no image of shard {number} could be used: {skipped[:3]}")
    tensors = {"latents": torch.cat(latents).to(STORAGE_DTYPES[dtype]),
               "labels": torch.tensor(labels, dtype=torch.int64)}
    if store_std:
        tensors["std"] = torch.cat(stds).to(STORAGE_DTYPES[dtype])
    meta = {"fingerprint": fingerprint, "skipped": json.dumps(skipped)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    log(f"{path.name}: {len(labels)} latents")


def write_index(out: Path, classes: list[str], model, checkpoint: Path, size: int, dtype: str,
                num_shards: int, skipped: list[dict], clip: tuple[int, int] = (1, 1)) -> dict:
    """Per-channel float64 statistics over every stored latent, written as index.json (atomically)."""
    from ..model.latent_stats import MomentAccumulator

    acc, tokens, channels = None, None, None
    for number in range(num_shards):
        latents = load_file(out / shard_name(number))["latents"]  # N×L×c
        tokens, channels = tokens or latents.shape[1], latents.shape[-1]
        acc = acc or MomentAccumulator(channels)
        acc.update(latents)  # float64 sums per channel
    count = acc.samples
    mean, std = acc.moments()  # population std; the shifted form is accurate enough for latents of order 1
    stats = model.latent_stats
    normalisation = {"normalisation": "tokenizer", "mean": list(stats.mean), "std": list(stats.std),
                     "stats_fingerprint": stats.fingerprint} if stats is not None else \
        {"normalisation": "store", "mean": mean.tolist(), "std": std.tolist()}
    patch = model.config.patch_size
    grid = [size // patch, size // patch]
    if model.config.is_video:
        grid = [clip[0] // model.config.temporal_patch, *grid]
    index = {
        "format": "vitok-latents", "version": 1,
        "classes": classes, "num_classes": len(classes), "count": count,
        "num_shards": num_shards, "dtype": dtype,
        "grid": grid, "tokens": tokens, "channels": channels, "image_size": size,
        "frames": clip[0], "frame_stride": clip[1],
        **normalisation, "store_mean": mean.tolist(), "store_std": std.tolist(),
        "tokenizer": str(checkpoint.resolve()), "tokenizer_config": model.config.to_dict(),
        "tokenizer_weights": weights_fingerprint(checkpoint) if (checkpoint / "model.safetensors").is_file() else None,
        "skipped_files": skipped,
    }
    atomic_write(out / INDEX_FILE, lambda tmp: Path(tmp).write_text(json.dumps(index, indent=2) + "\n"))
    return index


def read_index(path: str | Path) -> dict:
    """The index.json of a finished store, with a clear error when it is missing."""
    file = Path(path) / INDEX_FILE
    if not file.is_file():
        raise ValueError(f"{path} is not a finished latent store (no {INDEX_FILE}); build it with "
                         f"`vitok latents CKPT --data DIR --out {path}`")
    return json.loads(file.read_text())


def check_tokenizer(info: dict, where: str) -> None:
    """Refuse latents (a store's index, or a DiT run's record of it) that the tokenizer would misread.

    The tokenizer (its recorded folder) must hold the weights the latents were encoded with, and,
    if it now has statistics, the latents must have been normalised with them. A tokenizer folder
    that is gone is not checked here (decoding will say so)."""
    folder = Path(info.get("tokenizer") or "")
    if not (folder / "model.safetensors").is_file():
        return
    recorded = info.get("tokenizer_weights")
    current_weights = weights_fingerprint(folder) if recorded else None
    if recorded and current_weights != recorded:
        raise ValueError(f"{where} holds latents of another tokenizer: the weights in {folder} have changed since "
                         f"they were encoded (fingerprint {recorded}, now {current_weights}); encode "
                         f"again with `vitok latents {folder} --data DIR --out NEW_STORE`")
    stats = read_latent_stats(folder)
    if stats is not None:
        from ..model.latent_stats import LatentStats

        current = LatentStats.from_dict(stats, f"{folder}/config.json: latent_stats")
        if not current.same_normalisation(info["mean"], info["std"]):
            how = ("with the tokenizer's earlier statistics" if info.get("normalisation") == "tokenizer"
                   else "with their own statistics, before the tokenizer had any")
            raise ValueError(f"{where} holds latents normalised {how}, and {folder} now has other statistics "
                             f"(computed on {current.data or 'unknown data'}, fingerprint {current.fingerprint}); "
                             f"encode again with `vitok latents {folder} --data DIR --out NEW_STORE` so that "
                             f"training and decoding use one normalisation")


class LatentStore(Dataset):
    """A finished latent store in memory: item i is (normalised latent L×c float32, label)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.index = read_index(path)
        self._check_shards()
        shards = [load_file(self.path / shard_name(n)) for n in range(self.index["num_shards"])]
        self.latents = torch.cat([s["latents"] for s in shards])  # N×L×c, storage dtype
        self.labels = torch.cat([s["labels"] for s in shards])  # N
        self.std = torch.cat([s["std"] for s in shards]) if all("std" in s for s in shards) else None
        if len(self.labels) != self.index["count"]:
            raise ValueError(f"latent store {self.path}: the shards hold {len(self.labels)} latents but "
                             f"{INDEX_FILE} counts {self.index['count']}; {self._fix()}")
        self.mean_c = torch.tensor(self.index["mean"], dtype=torch.float32)
        self.std_c = torch.tensor(self.index["std"], dtype=torch.float32).clamp(min=1e-8)

    def _fix(self) -> str:
        """The command that repairs the store: a `vitok latents` rerun into it."""
        return (f"rerun `vitok latents {self.index.get('tokenizer', 'TOKENIZER')} --data DATA --out {self.path}` "
                f"(with the data it was built from), which encodes missing or unreadable shards again, keeps the "
                f"good ones and rewrites {INDEX_FILE}")

    def _check_shards(self) -> None:
        """Every shard index.json counts is on disk and reads back, before any is loaded (and before training)."""
        for number in range(self.index["num_shards"]):
            path = self.path / shard_name(number)
            problem = "is missing" if not path.is_file() else shard_problem(path)
            if problem is not None:
                raise ValueError(f"latent store {self.path}: shard {path} {problem}; {self._fix()}")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.index["grid"])

    @property
    def num_classes(self) -> int:
        return self.index["num_classes"]

    def normalise(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents (…×c) -> zero-mean, unit-std per channel, float32."""
        return (z.float() - self.mean_c.to(z.device)) / self.std_c.to(z.device)

    def batch(self, indices: torch.Tensor, generator: torch.Generator | None = None,
              sample: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised latents B×L×c and labels B; sample=True draws from the posterior (needs stored std)."""
        z = self.latents[indices].float()
        if sample:
            if self.std is None:
                raise ValueError(f"{self.path} stores no posterior std; rebuild it with --store-std")
            z = z + self.std[indices].float() * torch.randn(z.shape, generator=generator)
        return self.normalise(z), self.labels[indices]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.normalise(self.latents[i]), int(self.labels[i])


def denormalise(z: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """Inverse of LatentStore.normalise for B×L×c latents, with the stats of an index."""
    mean_t = torch.tensor(mean, dtype=torch.float32, device=z.device)
    std_t = torch.tensor(std, dtype=torch.float32, device=z.device).clamp(min=1e-8)
    return z.float() * std_t + mean_t
