"""Training-loader throughput alone (no model): images per second a `vitok train` loader delivers.

    python benchmarks/loader_bench.py SOURCE [SOURCE ...] --size 256 --batch 64 --workers 8 --batches 40
        [--decode cpu,gpu]

Each SOURCE is what data.source takes (an image folder, or the shards of `vitok prepare`). The
loader is the training one (random-resized crops and flips at --size), built as the Trainer builds
it; the first 5 batches are warm-up (worker start-up), the next --batches are timed. Prints and
returns images/s per source; compare it with the model-only training step's images/s on the same
machine (benchmarks/bench.py) to see whether the loader sets the pace. --decode gpu times the
data.decode=gpu path: workers plan the crops, nvJPEG decodes and the crops are resized on the GPU
(gpu_decode.GpuDecoder.ahead, as the trainer runs it), the clock stopped after a device sync.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from vitok.data.gpu_decode import GpuDecoder, gpu_decode_problem
from vitok.data.training import make_train_loader


def throughput(source: str, size: int, batch: int, workers: int, batches: int, warmup: int = 5,
               decode: str = "cpu") -> dict:
    gpu = decode == "gpu"
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    problem = gpu_decode_problem(device) if gpu else None
    if problem:
        raise SystemExit(problem)
    loader, _, info = make_train_loader(source, size=size, batch_size=batch, workers=workers, holdout=0,
                                        pin_memory=gpu, gpu_jpeg=gpu)
    it = iter(loader)
    if gpu:
        decoder = GpuDecoder(size, device)
        it = decoder.ahead(it)
    for _ in range(warmup):
        next(it)
    if gpu:
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    images = 0
    for _ in range(batches):
        pixels = next(it)["pixels"]
        images += pixels.shape[0] if pixels is not None else 0
    if gpu:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    return {"source": source, "decode": decode, "size": size, "batch": batch, "workers": workers, "images": images,
            "seconds": seconds, "images_per_second": images / seconds,
            "gpu_fallbacks": decoder.fallbacks if gpu else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sources", nargs="+")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--decode", default="cpu", help="comma list of cpu,gpu (where JPEGs are decoded)")
    args = ap.parse_args()
    rows = [throughput(s, args.size, args.batch, args.workers, args.batches, decode=d)
            for s in args.sources for d in args.decode.split(",")]
    for row in rows:
        print(f"{row['images_per_second']:8.1f} images/s  {row['source']}  decode {row['decode']} ({row['workers']} workers, "
              f"{row['size']} px, batch {row['batch']})")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
