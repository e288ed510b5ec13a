"""Camera pans over still photos, and the real clips cut into train / held-out parts: a small video set.

    python benchmarks/pan_clips.py PHOTOS_DIR VIDEOS_DIR OUT [--size 128] [--frames 32] [--per-photo 2]

OUT/train/*.mp4: per training photo (PHOTOS_DIR/train) --per-photo pans: a size x size window
moving in a straight line at 1-4 px per frame (random direction, seed 0), --frames frames; and
the first 75 % of every real clip in VIDEOS_DIR, resized (shorter side) and centre-cropped to size.
OUT/val/*.mp4: pans over the held-out photos (PHOTOS_DIR/val, seed 1) and the last 25 % of every
real clip. The pans have real image content but synthetic motion; the real clips are the only
camera footage (see each clip's README), which is very little video to learn from.
"""

from __future__ import annotations

import argparse
import math
import random
from pathlib import Path

import numpy as np
from PIL import Image

from vitok.data.images import load_image, resize_center_crop
from vitok.data.video import iter_frames, list_videos, write_video


def pan(img: np.ndarray, size: int, frames: int, rng: random.Random) -> np.ndarray | None:
    """frames x size x size x 3: a window sliding over img in a straight line (None if img is too small)."""
    h, w = img.shape[:2]
    scale = max(1.0, 1.6 * size / min(h, w))  # room to move: the photo at least 1.6 windows wide
    if scale > 1.0:
        img = np.array(Image.fromarray(img).resize((round(w * scale), round(h * scale)), Image.LANCZOS))
        h, w = img.shape[:2]
    speed = rng.uniform(1.0, 4.0)
    angle = rng.uniform(0, 2 * math.pi)
    dx, dy = speed * math.cos(angle), speed * math.sin(angle)
    span_x, span_y = abs(dx) * (frames - 1), abs(dy) * (frames - 1)
    if span_x > w - size or span_y > h - size:
        return None
    x0 = rng.uniform(0, w - size - span_x) + (span_x if dx < 0 else 0)
    y0 = rng.uniform(0, h - size - span_y) + (span_y if dy < 0 else 0)
    out = []
    for t in range(frames):
        x, y = x0 + dx * t, y0 + dy * t
        # Sub-pixel positions by an affine crop, so the motion is smooth rather than stepping.
        window = Image.fromarray(img).transform((size, size), Image.AFFINE, (1, 0, x, 0, 1, y), Image.BICUBIC)
        out.append(np.array(window))
    return np.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("photos")
    ap.add_argument("videos")
    ap.add_argument("out")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--per-photo", type=int, default=2)
    args = ap.parse_args()
    out = Path(args.out)
    counts = {"train": 0, "val": 0}
    for split, seed in (("train", 0), ("val", 1)):
        rng = random.Random(seed)
        for path in sorted((Path(args.photos) / split).iterdir()):
            img = load_image(path)
            for k in range(args.per_photo):
                clip = pan(img, args.size, args.frames, rng)
                if clip is not None:
                    write_video(out / split / f"pan-{path.stem}-{k}.mp4", clip, fps=25)
                    counts[split] += 1
    for video in list_videos(args.videos):
        frames = np.stack([resize_center_crop(f, args.size) for f in iter_frames(video)])
        cut = int(len(frames) * 0.75)
        write_video(out / "train" / f"real-{video.stem}.mp4", frames[:cut], fps=25)
        write_video(out / "val" / f"real-{video.stem}.mp4", frames[cut:], fps=25)
        counts["train"] += 1
        counts["val"] += 1
    print(f"{counts['train']} training and {counts['val']} held-out clips of {args.size}px under {out}")


if __name__ == "__main__":
    main()
