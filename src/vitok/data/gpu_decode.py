"""JPEG decoding on the GPU for training (`data.decode=gpu`).

The loader's workers stop short of the pixels: for a JPEG they read the bytes, parse the header,
and draw the sample's crop box and flip from the sample's rng exactly as the CPU path does
(`TrainImages._read`), returning a `Plan`. The training process then decodes the whole batch in
one call to nvJPEG (`torchvision.io.decode_jpeg` on CUDA) and cuts, resizes (antialiased bicubic,
Pillow's kernel) and flips each crop on the device. That moves the loader's dominant cost, the
entropy decode and the resize of a large photo, off the CPU cores that otherwise set the pace of
training (benchmarks/NOTES.md).

What stays on the CPU: files that are not 8-bit RGB or greyscale JPEGs (PNG, CMYK JPEG, ...), which
the workers decode as before, and any JPEG the GPU decoder rejects, which is decoded again with
Pillow in the training process (same crop plan) and skipped, with its reason, only if that fails
too. The crops are the same boxes as the CPU path draws; the pixels differ slightly, since the CPU
path decodes JPEGs at a reduced DCT scale when the box allows and the two decoders round differently.
"""

from __future__ import annotations

import queue
import threading
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .images import decode_rgb, read_header
from .transforms import TrainAugment, random_crop_box

__all__ = ["Plan", "plan_jpeg", "orient", "resize_box", "finish_crops", "crop_resize", "GpuDecoder",
           "gpu_decode_problem"]

# Decoded pixels per nvJPEG call at most (0.8 GB of RGB): 128 photos of 2 Mpixel, or 11 of 24 Mpixel.
DECODE_PIXELS = 2**28


@dataclass(frozen=True)
class Plan:
    """Where one training crop comes from: a box on the upright image, its flip, the EXIF orientation."""

    top: int
    left: int
    height: int
    width: int
    flip: bool
    orientation: int = 1
    pixels: int = 0  # the whole decoded image's pixel count (what decoding it costs in memory)


def plan_jpeg(data: bytes, augment: TrainAugment, rng: np.random.Generator) -> Plan | None:
    """The crop plan for a JPEG the GPU decoder can take, or None (the caller decodes it on the CPU).

    Draws from rng exactly what the CPU path draws (the box, then the flip), and only when it
    returns a plan, so a None leaves rng untouched for the CPU path. Only random-resized crops are
    planned: centre crops (held-out sets) are not a training hot path.
    """
    if augment.crop != "random" or data[:2] != b"\xff\xd8":
        return None
    try:
        header = read_header(data, "")
    except ValueError:
        return None  # the CPU path gives the precise error
    if header.format != "JPEG" or header.mode not in ("RGB", "L"):
        return None
    h, w = header.height, header.width
    top, left, bh, bw = random_crop_box(h, w, augment.scale, augment.ratio, rng)
    flip = bool(rng.random() < 0.5) if augment.flip else False
    return Plan(top, left, bh, bw, flip, header.orientation, h * w)


def orient(x: torch.Tensor, orientation: int) -> torch.Tensor:
    """C×H×W pixels as stored -> upright, for EXIF orientation 1-8 (Pillow's exif_transpose)."""
    if orientation == 2:
        return x.flip(-1)
    if orientation == 3:
        return x.flip(-2, -1)
    if orientation == 4:
        return x.flip(-2)
    if orientation == 5:
        return x.transpose(-2, -1)
    if orientation == 6:
        return torch.rot90(x, -1, dims=(-2, -1))
    if orientation == 7:
        return x.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:
        return torch.rot90(x, 1, dims=(-2, -1))
    return x


def resize_box(upright: torch.Tensor, plan: Plan, size: int) -> torch.Tensor:
    """3×H×W uint8 upright image -> 3×size×size float32: the plan's box resized, not yet rounded or flipped.

    torch's antialiased bicubic uses Pillow's kernel (a = -0.5, widened when downscaling), so this
    matches the CPU path's Image.resize(BICUBIC) up to rounding.
    """
    box = upright[:, plan.top:plan.top + plan.height, plan.left:plan.left + plan.width]
    return F.interpolate(box[None].float(), size=(size, size), mode="bicubic", antialias=True, align_corners=False)[0]


def finish_crops(resized: torch.Tensor, flips: Sequence[bool]) -> torch.Tensor:
    """b×3×S×S float32 resized boxes -> uint8 training crops, rounded, clamped and flipped where planned,
    a few kernels for the whole batch (per sample, these launches were half of the crop loop's)."""
    out = resized.round_().clamp_(0, 255).to(torch.uint8)
    flipped = [i for i, flip in enumerate(flips) if flip]
    if flipped:
        index = torch.tensor(flipped)
        if out.is_cuda:  # from pinned memory: a pageable copy would make the host wait for the stream
            index = index.pin_memory().to(out.device, non_blocking=True)
        out[index] = out[index].flip(-1)
    return out


def crop_resize(upright: torch.Tensor, plan: Plan, size: int) -> torch.Tensor:
    """3×H×W uint8 upright image -> 3×size×size uint8: the plan's box, resized, flipped if planned."""
    return finish_crops(resize_box(upright, plan, size)[None], [plan.flip])[0]


def _pillow_decode(data: torch.Tensor, key: str) -> torch.Tensor:
    """3×H×W uint8 of a JPEG, upright (EXIF orientation applied), decoded by Pillow: the fallback decoder."""
    img = decode_rgb(data.numpy().tobytes(), key)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


def gpu_decode_problem(device: torch.device) -> str | None:
    """Why JPEGs cannot be decoded on `device` (with the fix), or None when they can."""
    if device.type != "cuda":
        return (f"data.decode=gpu decodes JPEGs with nvJPEG on a CUDA device, but training runs on {device}; "
                f"set data.decode=cpu")
    try:
        import torchvision.io

        torchvision.io.decode_jpeg  # the attribute: present since torchvision 0.8, batched on CUDA since 0.19
    except Exception as err:  # ImportError, or a torchvision built for another torch
        return (f"data.decode=gpu needs torchvision (its io.decode_jpeg) matching this torch, which failed to "
                f"import ({err}); install the torchvision built for torch {torch.__version__}, or set data.decode=cpu")
    return None


def _nvjpeg(datas: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Each JPEG decoded to 3×H×W uint8 on device (as stored), None where the decoder refused it."""
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return list(decode_jpeg(list(datas), mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        # One bad JPEG fails the batched call: decode one by one to find it.
        out: list[torch.Tensor | None] = []
        for data in datas:
            try:
                out.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                out.append(None)
        return out


class GpuDecoder:
    """Turns a loader batch with pending JPEGs into the usual batch, its pixels on `device`.

    decode: the batch decoder (a list of 1-D uint8 byte tensors -> a list of 3×H×W uint8 tensors
    as stored, None for a refused file); nvJPEG on CUDA by default. Tests pass Pillow's.
    """

    def __init__(self, size: int, device: torch.device | str,
                 decode: Callable[[Sequence[torch.Tensor], torch.device], list] | None = None, group: int = 128,
                 group_pixels: int = DECODE_PIXELS) -> None:
        self.size, self.device, self.group, self.group_pixels = size, torch.device(device), group, group_pixels
        self.decode = decode or _nvjpeg
        self.fallbacks = 0  # JPEGs the GPU decoder refused and Pillow decoded
        self.warned = False

    def _groups(self, items: list[dict]) -> Iterator[list[dict]]:
        """items cut into consecutive groups of at most `group` items and `group_pixels` decoded pixels."""
        group, pixels = [], 0
        for item in items:
            cost = item["plan"].pixels if "span" in item else 0
            if group and (len(group) == self.group or pixels + cost > self.group_pixels):
                yield group
                group, pixels = [], 0
            group.append(item)
            pixels += cost
        if group:
            yield group

    def _crop(self, item: dict, data: torch.Tensor, image: torch.Tensor | None) -> torch.Tensor:
        """One pending JPEG's resized box (float, unrounded: finish_crops completes the batch) from its
        decoded pixels (None: the GPU decoder refused it, so Pillow decodes its bytes `data`)."""
        plan = item["plan"]
        if image is None:
            self.fallbacks += 1
            upright = _pillow_decode(data, item["key"]).to(self.device)
        else:
            upright = orient(image, plan.orientation)
        if upright.shape[-2] < plan.top + plan.height or upright.shape[-1] < plan.left + plan.width:
            raise ValueError(f"{item['key']}: decoded size {tuple(upright.shape[-2:])} disagrees with the "
                             f"JPEG header's (the file is damaged)")
        return resize_box(upright, plan, self.size)

    def __call__(self, batch: dict) -> dict:
        """{"pending": [...], "jpegs", "keys", "skipped"} (datasets.collate) -> {"pixels": b×3×S×S uint8 on
        device or None, "keys", "skipped"}."""
        if "pending" not in batch:
            return batch
        items, packed = batch["pending"], batch["jpegs"]
        pixels, flips, keys, skipped = [], [], [], list(batch["skipped"])
        # Decode a group at a time: full-size decodes are transient (a 12-Mpixel photo is 36 MB), so
        # a group of at most `group` images and `group_pixels` pixels bounds their memory whatever
        # the batch and photo sizes; the crops kept are size x size. The measured setting
        # (benchmarks/NOTES.md: 128 photos of ~1 Mpixel) is one call per batch.
        for group in self._groups(items):
            jpegs = [i for i, item in enumerate(group) if "span" in item]
            datas = {i: packed[slice(*group[i]["span"])] for i in jpegs}  # views of the one buffer
            decoded = self.decode([datas[i] for i in jpegs], self.device) if jpegs else []
            images: dict[int, torch.Tensor] = dict(zip(jpegs, decoded))
            if len(jpegs) > 1 and all(d is None for d in decoded) and not self.warned:
                # Every JPEG refused: the decoder itself fails here, and Pillow in this one process
                # would be far slower than the CPU path's loader processes.
                self.warned = True
                warnings.warn("the GPU JPEG decoder refused every JPEG of a batch, so they are decoded with "
                              "Pillow in the training process (slow); set data.decode=cpu", RuntimeWarning,
                              stacklevel=2)
            for i, item in enumerate(group):
                if "pixels" in item:  # decoded, cut and flipped on the CPU by the worker: exact in float
                    pixels.append(item["pixels"].to(self.device, non_blocking=True).float())
                    flips.append(False)
                    keys.append(item["key"])
                    continue
                try:
                    pixels.append(self._crop(item, datas[i], images.pop(i, None)))
                    flips.append(item["plan"].flip)
                    keys.append(item["key"])
                except (ValueError, OSError) as err:
                    skipped.append({"file": item["key"], "reason": str(err)})
        out = finish_crops(torch.stack(pixels), flips) if pixels else None
        return {"pixels": out, "keys": keys, "skipped": skipped}

    def ahead(self, batches: Iterator[dict], depth: int = 2) -> Iterator[dict]:
        """The decoded batches of `batches`, decoded up to `depth` batches ahead in a background thread.

        On CUDA the thread decodes on its own stream, so decoding batch k+1 overlaps the training
        step on batch k instead of adding to it; the consumer's stream waits on an event before it
        touches the pixels. The thread is a daemon: an abandoned iterator never blocks exit.
        """
        cuda = self.device.type == "cuda"
        side = torch.cuda.Stream(self.device) if cuda else None
        ready: queue.Queue = queue.Queue(maxsize=depth)

        def work() -> None:
            try:
                while True:
                    batch = next(batches)
                    if side is None:
                        ready.put((self(batch), None))
                        continue
                    with torch.cuda.stream(side):
                        out = self(batch)
                        event = torch.cuda.Event()
                        event.record(side)
                    ready.put((out, event))
            except BaseException as err:  # handed to the consumer, raised there
                ready.put((err, None))

        threading.Thread(target=work, name="vitok-gpu-decode", daemon=True).start()
        while True:
            out, event = ready.get()
            if isinstance(out, BaseException):
                raise out
            if event is not None:
                stream = torch.cuda.current_stream(self.device)
                stream.wait_event(event)
                if out["pixels"] is not None:
                    out["pixels"].record_stream(stream)  # allocated on the side stream, used on this one
            yield out
