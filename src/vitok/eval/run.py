"""`vitok eval`: load a checkpoint and a dataset, evaluate (optionally under torchrun), write the report."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

from ..data.datasets import open_dataset
from ..model import ViTok
from .evaluate import IMAGE_METRICS, VIDEO_METRICS, evaluate, make_loader
from .networks import FeatureNetworks, load_networks
from .report import write_report


def default_out(checkpoint: str | Path) -> Path:
    """Reports go next to the checkpoint folder: CKPT-eval/."""
    ckpt = Path(checkpoint).resolve()
    return ckpt.parent / f"{ckpt.name}-eval"


def setup_distributed(device: str | None = None) -> torch.device:
    """Join the torchrun process group when launched by torchrun; return this process's device."""
    use_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if device is not None and not (use_cuda and device == "cuda"):
        return torch.device(device)
    if use_cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def run_eval(checkpoint: str | Path, data: str, device: str | None = None, out: str | Path | None = None,
             **options) -> dict | None:
    """`vitok eval`: evaluate a saved checkpoint; rank 0 writes the report (default CKPT-eval/)."""
    dev = setup_distributed(device)
    model = ViTok.from_pretrained(checkpoint, device=dev)
    return evaluate_model(model, data, dev, out=Path(out) if out else default_out(checkpoint),
                          context={"checkpoint": str(checkpoint)}, **options)


def evaluate_model(model: ViTok, data: str, device: torch.device, out: Path | None = None,
                   image_size: int | None = None, frames: int | None = None, stride: int = 1,
                   batch_size: int = 32, workers: int = 4, limit: int | None = None, weights: str | None = None,
                   upsample: bool = False, metrics: list[str] | None = None, bf16: bool = True,
                   networks: FeatureNetworks | None = None, context: dict | None = None,
                   progress: bool = True) -> dict | None:
    """Evaluate an in-memory tokenizer on a dataset (any torchrun world size); rank 0 gets the report dict.

    With `out`, rank 0 also writes report.json, report.md, per_sample.jsonl and the plots there.
    Pass `networks` to reuse loaded feature networks across calls (e.g. during training).
    """
    config = model.config
    size = image_size or config.image_size
    if size % config.patch_size:
        raise ValueError(f"--image-size {size} is not a multiple of the model's patch size {config.patch_size}")
    clip = frames or config.frames
    if config.is_video and clip % config.temporal_patch:
        raise ValueError(f"--frames {clip} is not a multiple of the model's temporal patch {config.temporal_patch}")
    every = set(IMAGE_METRICS + VIDEO_METRICS)
    wanted = set(metrics or every)
    if wanted - every:
        raise ValueError(f"unknown metrics {sorted(wanted - every)}; choose from {sorted(every)}")
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    dataset = open_dataset(data, size, frames=clip if config.is_video else 1, stride=stride, upsample=upsample,
                           limit=limit, rank=rank, world=world)
    if networks is None:
        networks = load_networks(weights, config.is_video, wanted).to(device)
    previous_amp = model.amp_dtype
    if device.type == "cuda" and bf16:
        model.amp_dtype = torch.bfloat16
    try:
        result = evaluate(model, make_loader(dataset, batch_size, workers, device), networks, device,
                          progress=progress)
    finally:
        model.amp_dtype = previous_amp
    for name in sorted(every - wanted):
        result.not_computed.setdefault(name, "not requested (--metrics)")
    if rank != 0:
        return None
    context = {**(context or {}), "data": str(data), "model": config.name or "custom", "image_size": size,
               "weights": networks.provenance, "world_size": world, "device": str(device)}
    if config.is_video:
        context.update(frames=clip, frame_stride=stride)
    if out is None:
        return {**context, "num_samples": result.num_samples, "metrics": result.metrics,
                "not_computed": result.not_computed, "skipped_files": result.skipped}
    return write_report(result, out, context)
