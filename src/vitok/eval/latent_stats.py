"""`vitok stats`: stream a data set through a tokenizer's encoder and store its latent statistics.

The latents are the posterior mean (v2: the deterministic z) of every readable sample, at the
model's size or --image-size; their per-channel float64 moments (model/latent_stats.py) are summed
on every process and all-reduced under torchrun, so the result does not depend on the number of
processes. The data set's fingerprint is an order-free hash of the sample keys seen and the image
size: the same files give the same fingerprint whatever the sharding. Unreadable files are skipped
and counted (recorded with the statistics).
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ..data.datasets import to_model_range
from ..model import ViTok
from ..model.latent_stats import LatentStats, MomentAccumulator
from ..model.pretrained import write_latent_stats
from .evaluate import make_loader
from .run import open_stream, setup_distributed

_MASK = (1 << 64) - 1


def key_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


def _relative(key: str, root: str) -> str:
    """A folder's file keys relative to the folder: the fingerprint does not depend on where the data lives."""
    return os.path.relpath(key, root) if root and key.startswith(root) else key


@torch.no_grad()
def compute_latent_stats(model: ViTok, data: str, device: torch.device, image_size: int | None = None,
                         batch_size: int = 32, workers: int = 4, limit: int | None = None,
                         frames: int | None = None, stride: int = 1, upsample: bool = False,
                         progress: bool = True) -> tuple[LatentStats, dict]:
    """(statistics, details: skipped files, seconds, world size) of the model's latents over `data`."""
    from tqdm.auto import tqdm

    config = model.config
    dataset, size, clip, rank, world = open_stream(config, data, image_size, frames, stride, upsample, limit, batch_size,
                                             workers)
    root = str(data) if Path(data).is_dir() else ""
    started = time.perf_counter()
    acc = MomentAccumulator(config.channels)
    fingerprint, skipped = 0, []
    model.eval()
    loader = make_loader(dataset, batch_size, workers, device)
    for batch in tqdm(loader, desc="stats", unit="batch", disable=not progress or rank != 0, dynamic_ncols=True):
        skipped.extend(batch["skipped"])
        if batch["pixels"] is None:
            continue
        x = to_model_range(batch["pixels"].to(device, non_blocking=True))
        acc.update(model.encode(x, check=False).mode())
        for key in batch["keys"]:
            fingerprint = (fingerprint + key_hash(_relative(key, root))) & _MASK
    if world > 1:
        state = acc.state().to(device)
        dist.all_reduce(state)
        acc.load_state(state.cpu())
        parts = [None] * world
        dist.all_gather_object(parts, (fingerprint, skipped))
        fingerprint = sum(p[0] for p in parts) & _MASK
        skipped = [s for p in parts for s in p[1]]
    if acc.samples == 0:
        shown = "; ".join(f"{s['file']}: {s['reason']}" for s in skipped[:3])
        raise ValueError(f"no readable samples in {data}" + (f" ({len(skipped)} skipped, e.g. {shown})" if skipped
                                                             else ""))
    digest = hashlib.sha256(f"{fingerprint:016x}/{acc.samples}/{size}/{clip}x{stride}".encode()).hexdigest()[:16]
    stats = acc.result(data=str(data), fingerprint=digest, image_size=size)
    return stats, {"skipped": skipped, "seconds": time.perf_counter() - started, "world_size": world,
                   "device": str(device)}


def run_stats(checkpoint: str | Path, data: str, device: str | None = None, bf16: bool = False,
              **options) -> tuple[LatentStats, dict] | None:
    """`vitok stats`: compute the statistics and write them into the checkpoint folder's config.json (rank 0).

    The weights are not touched; statistics already there are replaced. Returns (statistics,
    details) on rank 0, None elsewhere."""
    if device is not None:
        from ..arguments import check_device

        check_device(device)
    dev = setup_distributed(device)
    from ..model.pretrained import looks_like_repo_id

    if looks_like_repo_id(checkpoint):
        raise ValueError(f"{checkpoint} is a Hub repo: its files live in the Hugging Face cache, which vitok does "
                         f"not edit. Save it to a folder first (ViTok.from_pretrained({str(checkpoint)!r})"
                         f".save_pretrained(DIR)), run `vitok stats DIR --data ...`, then push DIR")
    folder = ViTok.resolve_folder(checkpoint)
    model = ViTok.from_pretrained(folder, device=dev)
    if dev.type == "cuda" and bf16:
        model.amp_dtype = torch.bfloat16
    stats, details = compute_latent_stats(model, data, dev, **options)
    if dist.is_initialized() and dist.get_rank() != 0:
        dist.barrier()
        return None
    write_latent_stats(folder, stats.to_dict())
    details["folder"] = str(folder)
    if dist.is_initialized():
        dist.barrier()
    return stats, details
