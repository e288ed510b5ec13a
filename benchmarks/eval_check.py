"""GPU check of `vitok eval`'s machinery: end-to-end throughput and multi-GPU agreement.

Cuts `--crops` random 256x256 crops from a folder of real photos into a scratch image folder,
then evaluates a randomly initialised S-B/16 through evaluate_model with every metric's network
(random weights: no published weights on the device, so these are plumbing numbers, not metrics)
and writes what rank 0 saw. Run once with one process and once under torchrun with two; the
per-sample PSNR/SSIM/LPIPS and the Frechet/IS plumbing numbers must agree.

    python benchmarks/eval_check.py --photos DIR --scratch /tmp/crops --out one.json
    torchrun --nproc_per_node=2 benchmarks/eval_check.py --photos DIR --scratch /tmp/crops --out two.json
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
import torch.distributed as dist

from vitok.data.datasets import list_images
from vitok.data.images import load_image
from vitok.eval.networks import FeatureNetworks
from vitok.eval.run import evaluate_model, setup_distributed
from vitok.metrics.inception import build_fid_inception
from vitok.metrics.lpips import build_lpips
from vitok.model import ViTok


def make_crops(photos: Path, scratch: Path, count: int, size: int = 256) -> None:
    """Random crops of the photos, written once (rank 0) as PNG so decoding costs what real data costs."""
    from PIL import Image

    scratch.mkdir(parents=True, exist_ok=True)
    if len(list(scratch.glob("*.png"))) >= count:
        return
    rng = random.Random(0)
    images = [load_image(p) for p in list_images(photos)]
    for i in range(count):
        img = images[i % len(images)]
        h, w = img.shape[:2]
        y, x = rng.randrange(h - size + 1), rng.randrange(w - size + 1)
        Image.fromarray(img[y:y + size, x:x + size]).save(scratch / f"crop{i:05d}.png")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", required=True)
    parser.add_argument("--scratch", required=True)
    parser.add_argument("--crops", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=6)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    device = setup_distributed()
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        make_crops(Path(args.photos), Path(args.scratch), args.crops)
    if dist.is_initialized():
        dist.barrier()
    torch.manual_seed(0)  # the same random weights on every rank
    model = ViTok.from_name("S-B/16", channels=16, image_size=256).to(device)
    nets = FeatureNetworks(inception=build_fid_inception(None), lpips=build_lpips(None, None),
                           published_weights=False).to(device)
    torch.cuda.synchronize()
    start = time.perf_counter()
    doc = evaluate_model(model, args.scratch, device, batch_size=args.batch_size, workers=args.workers,
                         networks=nets, progress=False, out=Path(args.out).with_suffix(""))
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if rank == 0:
        report = json.loads((Path(args.out).with_suffix("") / "report.json").read_text())
        summary = {"world_size": doc["world_size"], "num_samples": doc["num_samples"], "seconds": seconds,
                   "images_per_second": doc["num_samples"] / seconds, "metrics": doc["metrics"],
                   "plumbing_only_random_weights": report.get("plumbing_only_random_weights"),
                   "device": torch.cuda.get_device_name()}
        Path(args.out).write_text(json.dumps(summary, indent=2))
        print(json.dumps(summary))
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
