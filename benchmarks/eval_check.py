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


def time_stages(model, nets, scratch: Path, batch_size: int, workers: int, device) -> dict:
    """Seconds per batch of each stage of the evaluation step, and of the data loader alone."""
    from vitok.data.datasets import ImageFolder, to_model_range
    from vitok.eval.evaluate import _candidates, _quantised, make_loader
    from vitok.metrics import FeatureStats, psnr, ssim

    loader = make_loader(ImageFolder(scratch, 256), batch_size, workers, device)
    start = time.perf_counter()
    n = 0
    for batch in loader:
        n += len(batch["keys"])
    loader_rate = n / (time.perf_counter() - start)
    x = to_model_range(next(iter(loader))["pixels"].to(device))
    model.amp_dtype = torch.bfloat16
    stats = FeatureStats(device=device)
    with torch.no_grad():
        x_hat = model(x, sample=False, check=False)[0].clamp(-1, 1)
        feats = nets.inception(x)[0]
        stages = {
            "tokenizer_bf16": lambda: model(x, sample=False, check=False),
            "psnr": lambda: psnr(x, x_hat),
            "ssim": lambda: ssim(x, x_hat),
            "lpips": lambda: nets.lpips(_quantised(x), _quantised(x_hat)),
            "inception_x2": lambda: (nets.inception(x), nets.inception(x_hat)),
            "feature_stats_x2": lambda: (stats.update(feats), stats.update(feats)),
            "candidates": lambda: _candidates(psnr(x, x_hat).tolist(), [str(i) for i in range(len(x))], x, x_hat, 6),
        }
        out = {"loader_images_per_second": loader_rate, "batch": len(x)}
        for name, fn in stages.items():
            for _ in range(2):
                fn()
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(5):
                fn()
            torch.cuda.synchronize()
            out[f"{name}_ms"] = (time.perf_counter() - t) / 5 * 1e3
    model.amp_dtype = None
    return out


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
    stages = time_stages(model, nets, Path(args.scratch), args.batch_size, args.workers, device) if rank == 0 else {}
    torch.cuda.synchronize()
    start = time.perf_counter()
    doc = evaluate_model(model, args.scratch, device, batch_size=args.batch_size, workers=args.workers,
                         networks=nets, progress=False, out=Path(args.out).with_suffix(""))
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    # The same pass with PSNR/SSIM only: loader + tokenizer + pixel metrics, no feature networks.
    start = time.perf_counter()
    evaluate_model(model, args.scratch, device, batch_size=args.batch_size, workers=args.workers,
                   networks=FeatureNetworks(), progress=False)
    torch.cuda.synchronize()
    pixel_only = time.perf_counter() - start
    if rank == 0:
        report = json.loads((Path(args.out).with_suffix("") / "report.json").read_text())
        summary = {"world_size": doc["world_size"], "num_samples": doc["num_samples"], "seconds": seconds,
                   "images_per_second": doc["num_samples"] / seconds,
                   "pixel_metrics_only_images_per_second": doc["num_samples"] / pixel_only,
                   "metrics": doc["metrics"],
                   "plumbing_only_random_weights": report.get("plumbing_only_random_weights"),
                   "device": torch.cuda.get_device_name(), "stages": stages}
        Path(args.out).write_text(json.dumps(summary, indent=2))
        print(json.dumps(summary))
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
