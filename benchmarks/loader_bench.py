"""Training-loader throughput alone (no model): images per second a `vitok train` loader delivers.

    python benchmarks/loader_bench.py SOURCE [SOURCE ...] --size 256 --batch 64 --workers 8 --batches 40

Each SOURCE is what data.source takes (an image folder, or the shards of `vitok prepare`). The
loader is the training one (random-resized crops and flips at --size), built as the Trainer builds
it; the first 5 batches are warm-up (worker start-up), the next --batches are timed. Prints and
returns images/s per source; compare it with the model-only training step's images/s on the same
machine (benchmarks/bench.py) to see whether the loader sets the pace.
"""

from __future__ import annotations

import argparse
import json
import time

from vitok.data.training import make_train_loader


def throughput(source: str, size: int, batch: int, workers: int, batches: int, warmup: int = 5) -> dict:
    loader, _, info = make_train_loader(source, size=size, batch_size=batch, workers=workers, holdout=0,
                                        pin_memory=False)
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    started = time.perf_counter()
    images = 0
    for _ in range(batches):
        images += next(it)["pixels"].shape[0]
    seconds = time.perf_counter() - started
    return {"source": source, "size": size, "batch": batch, "workers": workers, "images": images,
            "seconds": seconds, "images_per_second": images / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sources", nargs="+")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--batches", type=int, default=40)
    args = ap.parse_args()
    rows = [throughput(s, args.size, args.batch, args.workers, args.batches) for s in args.sources]
    for row in rows:
        print(f"{row['images_per_second']:8.1f} images/s  {row['source']}  ({row['workers']} workers, "
              f"{row['size']} px, batch {row['batch']})")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
