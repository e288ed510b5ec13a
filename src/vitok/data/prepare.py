"""`vitok prepare`: an image folder once, resized, into tar shards the training loader reads fast.

Training decodes every image for every crop: a folder of 4000-pixel JPEGs spends the data
loader's time in decoding pixels that the crop then throws away. This writes each readable image
once, its shorter side resized to --size (never upsampled: smaller images are kept as they are),
re-encoded (JPEG quality 95 by default, or PNG), into WebDataset-style .tar shards:

    OUT/shard-00000.tar    KEY.jpg (and KEY.cls with the class name when the source has class
    OUT/shard-00001.tar    sub-folders and --labels is given), --shard-size samples per shard
    OUT/prepare.json       source, size, format, counts, skipped files with reasons; written last

`vitok train data.source=OUT` (or `vitok latents` / `vitok eval --data OUT`) then reads the shards.
Files are assigned to shards in sorted order, so a shard's content is fixed by the source and
the settings; each shard is written through a temporary file and renamed, and a rerun skips the
shards already complete (a killed run resumes). Unreadable files are skipped and listed.
`--workers` processes encode in parallel.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image

from ..model.pretrained import atomic_write
from .datasets import tar_end_problem
from .images import decode_rgb, list_files, read_image_bytes

INDEX_FILE = "prepare.json"
FORMATS = {"jpg": "JPEG", "png": "PNG"}
SOURCE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.tar"


def _encode(path: Path, size: int, fmt: str, quality: int) -> tuple[bytes | None, str | None, tuple[int, int]]:
    """(encoded bytes, None, (H, W)) of one resized image, or (None, reason, (0, 0))."""
    try:
        img = decode_rgb(read_image_bytes(path), str(path))
    except (ValueError, OSError) as err:
        return None, str(err), (0, 0)
    w, h = img.size
    scale = size / min(w, h)
    if scale < 1:  # never upsample
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS, reducing_gap=3.0)
    out = io.BytesIO()
    if fmt == "jpg":
        img.save(out, format="JPEG", quality=quality, subsampling=0)
    else:
        img.save(out, format="PNG", compress_level=6)
    return out.getvalue(), None, (img.size[1], img.size[0])


def _write_shard(args: tuple) -> dict:
    """Encode one shard's files and write it atomically; returns its counts and skipped files."""
    number, items, out, size, fmt, quality = args
    path = Path(out) / shard_name(number)
    skipped, written, pixels = [], 0, 0
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for key, file, label in items:
            data, reason, (h, w) = _encode(Path(file), size, fmt, quality)
            if data is None:
                skipped.append({"file": file, "reason": reason})
                continue
            members = [(f"{key}.{fmt}", data)]
            if label is not None:
                members.append((f"{key}.cls", label.encode()))
            for name, payload in members:
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(payload), 0, 0o644
                tar.addfile(info, io.BytesIO(payload))
            written += 1
            pixels += h * w
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer.getvalue()))
    return {"shard": path.name, "samples": written, "skipped": skipped, "pixels": pixels}


def _complete(path: Path, expected: int, fmt: str) -> bool:
    """Whether a shard on disk reads back whole with at most `expected` samples (a rerun keeps it)."""
    try:
        with tarfile.open(path, "r:") as tar:
            members = list(tar)
            if tar_end_problem(tar, len(members)) is not None:  # cut at a member boundary
                return False
    except (tarfile.TarError, OSError, EOFError):
        return False
    images = sum(m.name.endswith(f".{fmt}") for m in members)
    return 0 < images <= expected


def prepare(source: str | Path, out: str | Path, size: int, shard_size: int = 1000, fmt: str = "jpg",
            quality: int = 95, labels: bool = False, workers: int = 0, log=print) -> dict:
    """Write the shards and prepare.json (see the module docstring); returns prepare.json's content."""
    source, out = Path(source), Path(out)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"--size must be a positive number of pixels (the shorter side), got {size!r}")
    if shard_size < 1:
        raise ValueError(f"--shard-size must be at least 1, got {shard_size}")
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if not 1 <= quality <= 100:
        raise ValueError(f"--quality must be in 1..100, got {quality}")
    if not source.is_dir():
        raise ValueError(f"{source} is not a folder of images")
    if out.resolve() == source.resolve() or source.resolve() in out.resolve().parents:
        raise ValueError(f"--out {out} lies inside the source {source}: the shards would be read as source files "
                         f"on a rerun; pass a folder outside it")
    files = sorted(list_files(source, SOURCE_SUFFIXES))
    if not files:
        raise ValueError(f"{source} holds no image files ({', '.join(SOURCE_SUFFIXES)})")
    items = []
    for i, path in enumerate(files):
        rel = path.relative_to(source)
        label = rel.parts[0] if labels and len(rel.parts) > 1 else None
        if labels and label is None:
            raise ValueError(f"--labels takes the class from the first sub-folder, but {path} lies directly in "
                             f"{source}; put every image in a class sub-folder, or leave --labels out")
        # Keys carry no dots or slashes (WebDataset splits a member name at its first dot).
        items.append((f"{i:08d}_" + "_".join(rel.with_suffix("").parts).replace(".", "_"), str(path), label))
    out.mkdir(parents=True, exist_ok=True)
    shards = [items[i:i + shard_size] for i in range(0, len(items), shard_size)]
    todo = [n for n in range(len(shards)) if not _complete(out / shard_name(n), len(shards[n]), fmt)]
    log(f"{len(files)} images in {len(shards)} shard(s), {len(shards) - len(todo)} already written")
    started = time.perf_counter()
    jobs = [(n, shards[n], str(out), size, fmt, quality) for n in todo]
    results = []
    if workers > 0 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for result in pool.map(_write_shard, jobs):
                results.append(result)
                log(f"{result['shard']}: {result['samples']} samples")
    else:
        for job in jobs:
            results.append(_write_shard(job))
            log(f"{results[-1]['shard']}: {results[-1]['samples']} samples")
    previous = {}
    if (out / INDEX_FILE).is_file():
        try:
            previous = {s["shard"]: s for s in json.loads((out / INDEX_FILE).read_text()).get("shards", [])}
        except (OSError, ValueError, KeyError, TypeError):
            previous = {}
    by_name = {**previous, **{r["shard"]: r for r in results}}
    index = {"format": "vitok-prepared-shards", "source": str(source), "size": size, "image_format": fmt,
             "quality": quality if fmt == "jpg" else None, "labels": labels, "files": len(files),
             "shards": [by_name.get(shard_name(n), {"shard": shard_name(n), "samples": None, "skipped": []})
                        for n in range(len(shards))],
             "seconds": time.perf_counter() - started, "workers": workers}
    index["samples"] = sum(s["samples"] or 0 for s in index["shards"])
    index["skipped_files"] = [f for s in index["shards"] for f in s["skipped"]]
    text = json.dumps(index, indent=2) + "\n"
    atomic_write(out / INDEX_FILE, lambda tmp: Path(tmp).write_text(text))
    return index


def default_workers() -> int:
    return max(0, min(8, (os.cpu_count() or 1) - 1))
