"""Reconstruct a video of any length in memory bounded by the clip: chunks in, blended frames out.

The video is read frame by frame and cut into overlapping temporal chunks of `chunk` frames (the
model's clip length by default, overlap a quarter of it); each chunk is encoded and decoded on its
own (with spatial tiles when its frames are large, model/tiling.py) and the decoded chunks are
blended in pixel space with the same normalised linear ramps as tiled decoding, so a frame in an
overlap fades from one chunk's reconstruction to the next one's. A frame is written to the output
video, scored and dropped as soon as no later chunk covers it: at most chunk + overlap frames are
held, whatever the video's length.

Scores: PSNR and SSIM per frame (reported as means), and the temporal metrics of
metrics/temporal.py over consecutive frames, at the chunk edges and inside chunks.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..data.video import VideoWriter, iter_frames, video_info
from ..metrics.image import psnr, ssim
from ..metrics.temporal import border_transitions, summarise, transition_errors
from ..model import ViTok
from ..model.tiling import axis_tiles, default_overlap, ramp


def _frames_tensor(frames: list[np.ndarray], device) -> torch.Tensor:
    """T frames H×W×3 uint8 -> 1×3×T×H×W float in [-1, 1]."""
    x = torch.from_numpy(np.stack(frames)).to(device).permute(3, 0, 1, 2)[None]
    return x.float() / 127.5 - 1.0


def reconstruct_video(model: ViTok, path: str | Path, out: str | Path | None = None, size: int | None = None,
                      limit: int | None = None, chunk: int | None = None, overlap: int | None = None,
                      spatial: object = "auto", device: str | torch.device = "cpu", sample: bool = False) -> dict:
    """Encode and decode every frame of `path` (or the first `limit`) in chunks; write `out` (mp4) if given.

    size: shorter side resized and centre-cropped to it (default: the model's image size). chunk /
    overlap in frames (multiples of q; defaults: the model's clip length and a quarter of it, at
    least q). spatial: the tiling of each chunk's frames ("auto", None or a Tiling without chunk).
    Returns {"frames", "fps", "chunks", "psnr", "ssim", "temporal_rmse", "border_ratio", ...}.
    """
    config = model.config
    if not config.is_video:
        raise ValueError("reconstruct_video needs a video model (temporal_patch and frames); this is an image model")
    q, p = config.temporal_patch, config.patch_size
    size = size or config.image_size
    if size % p:
        raise ValueError(f"size {size} is not a multiple of the patch size {p}")
    chunk = chunk or config.frames
    if chunk % q or chunk < q:
        raise ValueError(f"chunk {chunk} is not a positive multiple of the temporal patch {q}")
    if overlap is None:
        overlap = default_overlap(chunk, q)
    if overlap % q or not 0 <= overlap < chunk:
        raise ValueError(f"overlap {overlap} must be a multiple of {q} and smaller than the chunk ({chunk})")
    total, fps = video_info(path)
    total = min(total, limit) if limit else total
    if total < q:
        raise ValueError(f"{path} has {total} frames; the model needs at least {q}")
    total -= total % q  # whole tubelets; the last (total mod q) frames are left out
    device = torch.device(device)
    chunk_tiles = axis_tiles(total // q, chunk // q, overlap // q)  # in tubelets
    started = time.perf_counter()
    writer = None
    pending: dict[int, list] = {}  # frame -> [weighted sum (3×H×W), weight, original]
    prev = None  # (original, reconstruction) of the last frame emitted, for the temporal metric
    errors, psnrs, ssims = [], [], []
    reader = iter_frames(path, size=size, limit=total)
    read: list[np.ndarray] = []  # frames read but not yet consumed by a chunk, from index `first`
    first = 0
    for k, (start, length, before, after) in enumerate(chunk_tiles):
        lo, hi = start * q, (start + length) * q
        while first + len(read) < hi:
            read.append(next(reader))
        frames = read[lo - first:hi - first]
        x = _frames_tensor(frames, device)
        with torch.no_grad():
            posterior = model.encode(x, check=False, tiling=spatial)
            z = posterior.sample() if sample else posterior.mode()
            x_hat = model.decode(z, size=tuple(x.shape[2:]), check=False, tiling=spatial).clamp(-1, 1)
        weights = ramp(length * q, before * q, after * q).tolist()
        for i in range(hi - lo):
            entry = pending.setdefault(lo + i, [0.0, 0.0, frames[i]])
            entry[0] = entry[0] + x_hat[0, :, i].double().cpu() * weights[i]
            entry[1] += weights[i]
        # Frames before the next chunk's start are final.
        done_below = chunk_tiles[k + 1][0] * q if k + 1 < len(chunk_tiles) else total
        for index in sorted(i for i in pending if i < done_below):
            total_sum, weight, original = pending.pop(index)
            recon = (total_sum / weight).float()[None]
            orig = torch.from_numpy(np.array(original)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
            psnrs.append(float(psnr(orig, recon)[0]))
            ssims.append(float(ssim(orig, recon)[0]))
            if prev is not None:  # the transition from the previous frame: B×3×2×H×W pairs
                errors.append(float(transition_errors(torch.stack([prev[0], orig], 2), torch.stack([prev[1], recon], 2))))
            prev = (orig, recon)
            pixels = ((recon[0] + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
            if out is not None:
                if writer is None:
                    writer = VideoWriter(out, pixels.shape[1] // 2 * 2, pixels.shape[0] // 2 * 2, fps)
                writer.write(pixels[:writer.size[0], :writer.size[1]])
        read = read[done_below - first:]
        first = done_below
    if writer is not None:
        writer.close()
    report = {"file": str(path), "frames": total, "fps": float(fps), "size": size, "chunk": chunk,
              "overlap": overlap, "chunks": len(chunk_tiles), "psnr": float(np.mean(psnrs)),
              "ssim": float(np.mean(ssims)), "psnr_per_frame": psnrs,
              **summarise(torch.tensor([errors], dtype=torch.float64), border_transitions(total, chunk, overlap)),
              "seconds": time.perf_counter() - started, "output": str(out) if out is not None else None}
    return report
