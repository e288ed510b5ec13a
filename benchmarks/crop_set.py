"""Build a labelled image set for the GPU check of latent generation from a folder of large photos.

The latent DiT needs class-labelled images (`vitok latents --data DIR` reads DIR/<class>/*).
This script cuts each source photo into `--per-image` random square crops and files them
under the photo's class, so a handful of large photos becomes a set of the size and shape the
check needs.

    python benchmarks/crop_set.py SRC_DIR OUT_DIR --per-image 64 --size 128 --min-scale 0.1 --seed 0

The class of a photo is its source collection, taken from its file name: the part before
the first "--" ("mate-backgrounds--Dune.jpg" is class "mate-backgrounds"). A name without
"--" takes `--default-class`, or stops the run before anything is written.

Each crop is a square whose area is a fraction, uniform in [min_scale, 1], of the largest
square that fits the photo (side min(width, height)), at a uniformly random position. It is
resized to size x size with Lanczos filtering and written as JPEG quality 95 to
OUT_DIR/<class>/<stem>-<k>.jpg. Photos are decoded with their EXIF orientation applied and
converted to RGB.

With `--class-by photo` every photo is its own class instead (named by its file stem): a set
for class-conditional generation where a class is one scene; cut the held-out set from the same
photos with another --seed.

The crops of a photo depend only on --seed and the photo's path below SRC_DIR, never on
--workers or the order photos are processed in. Photos Pillow cannot read are skipped and
named in the summary.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import random
import sys
from collections import Counter
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

from PIL import Image, ImageOps

from vitok.data.datasets import list_images

SEPARATOR = "--"


@dataclass(frozen=True)
class Job:
    """One photo and everything its crops depend on (picklable for the worker processes)."""

    source: Path
    key: str  # the path below SRC_DIR: names the photo in the summary and seeds its crops
    label: str
    out: Path
    per_image: int
    size: int
    min_scale: float
    seed: int


def class_of(name: str, default: str | None) -> str:
    """The class a file name carries: the part before the first "--", else `default`."""
    label, sep, _ = name.partition(SEPARATOR)
    if sep and label:
        return label
    if default:
        return default
    raise ValueError(f"{name}: no class in the file name; name photos <class>{SEPARATOR}<anything>.jpg "
                     f"(the class is the part before the first '{SEPARATOR}') or pass --default-class NAME")


def image_seed(seed: int, key: str) -> int:
    """A per-photo seed from the run's seed and the photo's name (stable across processes, unlike hash())."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def crop_boxes(width: int, height: int, count: int, min_scale: float, rng: random.Random) -> list[tuple]:
    """`count` square (left, top, right, bottom) boxes: area a fraction in [min_scale, 1] of the largest square."""
    largest = min(width, height)
    boxes = []
    for _ in range(count):
        side = max(1, round(largest * math.sqrt(rng.uniform(min_scale, 1.0))))
        left, top = rng.randint(0, width - side), rng.randint(0, height - side)
        boxes.append((left, top, left + side, top + side))
    return boxes


def crop_one(job: Job) -> tuple[Job, str | None]:
    """Write one photo's crops; returns (job, None) or (job, why it was skipped)."""
    try:
        with Image.open(job.source) as opened:
            # Decode fully before writing anything, so an unreadable photo leaves no partial crops.
            image = ImageOps.exif_transpose(opened).convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        return job, f"{type(error).__name__}: {error}"
    rng = random.Random(image_seed(job.seed, job.key))
    folder = job.out / job.label
    folder.mkdir(parents=True, exist_ok=True)
    for k, box in enumerate(crop_boxes(image.width, image.height, job.per_image, job.min_scale, rng)):
        # reducing_gap shrinks big crops by a cheap integer factor first; Lanczos does the last 3x or less.
        crop = image.resize((job.size, job.size), Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
        crop.save(folder / f"{job.source.stem}-{k}.jpg", quality=95)
    return job, None


def plan(src: Path, out: Path, per_image: int, size: int, min_scale: float, seed: int,
         default_class: str | None, class_by: str = "collection") -> list[Job]:
    """Check the arguments and every file name before any crop is written."""
    if per_image < 1 or size < 1:
        raise ValueError(f"--per-image and --size must be at least 1, got {per_image} and {size}")
    if not 0 < min_scale <= 1:
        raise ValueError(f"--min-scale must be in (0, 1], got {min_scale}")
    if class_by not in ("collection", "photo"):
        raise ValueError(f"--class-by must be collection or photo, got {class_by!r}")
    sources = list_images(src)
    if not sources:
        raise ValueError(f"{src} holds no images Pillow can read (.jpg, .png, ...)")
    jobs, outputs = [], {}
    for path in sources:
        key = path.relative_to(src).as_posix()
        label = path.stem if class_by == "photo" else class_of(path.name, default_class)
        job = Job(path, key, label, out, per_image, size, min_scale, seed)
        # Crops are named by stem, so two photos with one stem in one class would overwrite each other.
        target = (job.label, path.stem)
        if target in outputs:
            raise ValueError(f"{outputs[target]} and {key} would both write {job.label}/{path.stem}-<k>.jpg; "
                             f"rename one of them")
        outputs[target] = key
        jobs.append(job)
    return jobs


def build_set(src: str | Path, out: str | Path, per_image: int = 64, size: int = 128, min_scale: float = 0.1,
              seed: int = 0, workers: int | None = None, default_class: str | None = None,
              class_by: str = "collection") -> dict:
    """Crop every photo of src into out/<class>/; returns {"classes": {class: crops}, "photos", "skipped"}."""
    src, out = Path(src), Path(out)
    jobs = plan(src, out, per_image, size, min_scale, seed, default_class, class_by)
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    if workers == 1:
        results = [crop_one(job) for job in jobs]
    else:
        with Pool(min(workers, len(jobs))) as pool:
            results = list(pool.imap_unordered(crop_one, jobs))
    crops, photos, skipped = Counter(), Counter(), {}
    for job, error in results:
        if error is None:
            crops[job.label] += job.per_image
            photos[job.label] += 1
        else:
            skipped[job.key] = error
    return {"classes": dict(sorted(crops.items())), "photos": dict(sorted(photos.items())),
            "skipped": dict(sorted(skipped.items()))}


def main(argv: list[str] | None = None) -> dict:
    """Parse the command line, build the set and print a summary; returns build_set's summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", metavar="SRC_DIR", help="folder of photos named <class>--<anything>.<ext>")
    parser.add_argument("out", metavar="OUT_DIR", help="where OUT_DIR/<class>/<stem>-<k>.jpg go")
    parser.add_argument("--per-image", type=int, default=64, help="crops per photo")
    parser.add_argument("--size", type=int, default=128, help="side of the written crops, in pixels")
    parser.add_argument("--min-scale", type=float, default=0.1,
                        help="smallest crop area, as a fraction of the largest square that fits the photo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all CPUs)")
    parser.add_argument("--default-class", default=None, help="class of photos whose name has no '--'")
    parser.add_argument("--class-by", choices=("collection", "photo"), default="collection",
                        help="a class per source collection (the name before '--'), or per photo")
    args = parser.parse_args(argv)
    summary = build_set(args.src, args.out, args.per_image, args.size, args.min_scale, args.seed, args.workers,
                        args.default_class, args.class_by)
    for label, count in summary["classes"].items():
        print(f"{label}: {count} crops from {summary['photos'][label]} photo(s)")
    print(f"{sum(summary['classes'].values())} crops in {len(summary['classes'])} classes under {args.out}")
    if summary["skipped"]:
        print(f"skipped {len(summary['skipped'])} unreadable file(s):")
        for key, reason in summary["skipped"].items():
            print(f"  {key}: {reason}")
    return summary


if __name__ == "__main__":
    try:
        main()
    except ValueError as error:
        sys.exit(f"crop_set.py: error: {error}")
