"""`vitok eval`: load a checkpoint and a dataset, evaluate (optionally under torchrun), write the report."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

from ..data.datasets import open_dataset
from ..model import ViTok
from .evaluate import IMAGE_METRICS, VIDEO_METRICS, evaluate, make_loader
from .networks import load_networks
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


def run_eval(checkpoint: str | Path, data: str, image_size: int | None = None, frames: int | None = None,
             stride: int = 1, batch_size: int = 32, workers: int = 4, limit: int | None = None,
             out: str | Path | None = None, weights: str | None = None, device: str | None = None,
             upsample: bool = False, metrics: list[str] | None = None, bf16: bool = True) -> dict | None:
    """Evaluate a checkpoint on a dataset; rank 0 writes the report and returns its JSON document."""
    dev = setup_distributed(device)
    model = ViTok.from_pretrained(checkpoint, device=dev)
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
    if dev.type == "cuda" and bf16:
        model.amp_dtype = torch.bfloat16
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    dataset = open_dataset(data, size, frames=clip if config.is_video else 1, stride=stride, upsample=upsample,
                           limit=limit, rank=rank, world=world)
    networks = load_networks(weights, config.is_video, wanted).to(dev)
    loader = make_loader(dataset, batch_size, workers, dev)
    result = evaluate(model, loader, networks, dev)
    for name in sorted(every - wanted):
        result.not_computed.setdefault(name, "not requested (--metrics)")
    if rank != 0:
        return None
    context = {"checkpoint": str(checkpoint), "data": str(data), "model": config.name or "custom",
               "image_size": size, "weights": networks.provenance, "world_size": world, "device": str(dev)}
    if config.is_video:
        context.update(frames=clip, frame_stride=stride)
    return write_report(result, Path(out) if out else default_out(checkpoint), context)
