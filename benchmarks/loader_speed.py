"""Images per second of the training loader alone (decode, random-resized crop, flip, collate, pin).

Run once per copy of the package, so a change is a ratio against a baseline in the same session:

    git archive BASE src | tar -x -C .baseline
    python benchmarks/loader_speed.py PHOTOS --src .baseline/src --workers 6,12 --out base.json
    python benchmarks/loader_speed.py PHOTOS --workers 6,12 --out cur.json

No model runs: the number is the ceiling the loader puts on a training step's rate.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def measure(source: str, size: int, batch: int, workers: int, batches: int, warmup: int) -> dict:
    import torch

    from vitok.data.training import make_train_loader

    loader, _, _ = make_train_loader(source, size=size, batch_size=batch, workers=workers,
                                     pin_memory=torch.cuda.is_available(), scale=(0.1, 1.0))
    it = iter(loader)
    for _ in range(warmup):  # worker start-up and the first prefetches
        next(it)
    start = time.perf_counter()
    images = 0
    for _ in range(batches):
        b = next(it)
        images += b["pixels"].shape[0]
    seconds = time.perf_counter() - start
    del it, loader
    return {"workers": workers, "batch": batch, "size": size, "images": images, "seconds": seconds,
            "images_per_s": images / seconds}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="an image folder (or tar shards)")
    parser.add_argument("--src", default=str(Path(__file__).resolve().parents[1] / "src"))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--workers", default="6,12", help="comma list of loader process counts")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    sys.path.insert(0, args.src)
    rows = []
    for w in (int(v) for v in args.workers.split(",")):
        row = {"src": args.src, **measure(args.source, args.size, args.batch, w, args.batches, args.warmup)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
