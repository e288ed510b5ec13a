"""`vitok eval`: load a checkpoint and a dataset, evaluate (optionally under torchrun), write the report."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist

from ..data.datasets import open_dataset
from ..metrics.i3d import I3D_MIN_FRAMES
from ..model import ViTok
from .evaluate import IMAGE_METRICS, RIS_SPLITS, VIDEO_METRICS, EvalResult, evaluate, make_loader
from .networks import FeatureNetworks, load_networks
from .report import report_document, write_report

# The FVD literature measures 16-frame clips; other lengths give numbers on a different scale.
FVD_FRAMES = 16


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
    if device is not None:
        from ..arguments import check_device

        try:
            check_device(device)
        except ValueError as err:
            raise ValueError(f"{err}, or leave --device out to use CUDA only where it exists") from None
    # The same checks evaluate_model makes, here before the checkpoint is loaded.
    _check_positive({flag: options.get(key) for key, flag in _POSITIVE_OPTIONS.items()})
    out = Path(out) if out else default_out(checkpoint)
    _check_out(out)
    dev = setup_distributed(device)
    model = ViTok.from_pretrained(checkpoint, device=dev)
    return evaluate_model(model, data, dev, out=out, context={"checkpoint": str(checkpoint)}, **options)


def _check_out(out: Path | None) -> None:
    if out is not None and out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is an existing file, but the report is a folder: "
                         f"pass a new or existing folder path instead")


# evaluate_model's keyword -> the `vitok eval` option it comes from.
_POSITIVE_OPTIONS = {"image_size": "--image-size", "frames": "--frames", "stride": "--frame-stride",
                     "limit": "--limit", "batch_size": "--batch-size"}


def _check_positive(values: dict[str, int | None]) -> None:
    """Each value is None (use the default) or a positive integer, else a ValueError naming its option."""
    for name, value in values.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_pyav() -> None:
    try:
        import av  # noqa: F401
    except ImportError:
        raise ValueError("this is a video model, and reading video clips needs PyAV, which is not installed: "
                         "pip install av (or install vitok with the video extra: pip install 'vitok[video]')") from None


def open_stream(config, data: str, image_size: int | None, frames: int | None, stride: int, upsample: bool,
                limit: int | None, batch_size: int, workers: int):
    """Check the data-set options against the model, then open this rank's share of the data (`vitok eval`,
    `vitok stats`): (dataset, image size, clip length, rank, world size)."""
    _check_positive({"--image-size": image_size, "--frames": frames, "--frame-stride": stride, "--limit": limit,
                     "--batch-size": batch_size})
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"--workers must be a non-negative integer, got {workers!r}")
    size = image_size or config.image_size
    if size % config.patch_size and not config.is_v2:  # v2 pads to whole patches and crops back
        raise ValueError(f"--image-size {size} is not a multiple of the model's patch size {config.patch_size}")
    if not config.is_video and (frames is not None or stride != 1):
        flag = f"--frames {frames}" if frames is not None else f"--frame-stride {stride}"
        raise ValueError(f"{flag}: --frames and --frame-stride apply to video models; this model is an image "
                         f"model: leave them out")
    clip = frames or config.frames
    if config.is_video and clip % config.temporal_patch:
        raise ValueError(f"--frames {clip} is not a multiple of the model's temporal patch {config.temporal_patch}")
    if config.is_video:
        _check_pyav()
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    dataset = open_dataset(data, size, frames=clip if config.is_video else 1, stride=stride, upsample=upsample,
                           limit=limit, rank=rank, world=world)
    return dataset, size, clip, rank, world


def evaluate_model(model: ViTok, data: str, device: torch.device, out: Path | None = None,
                   image_size: int | None = None, frames: int | None = None, stride: int = 1,
                   batch_size: int = 32, workers: int = 4, limit: int | None = None, weights: str | None = None,
                   upsample: bool = False, metrics: list[str] | None = None, bf16: bool = True,
                   networks: FeatureNetworks | None = None, context: dict | None = None,
                   progress: bool = True, ris_splits: int = RIS_SPLITS, tiling: object = "auto") -> dict | None:
    """Evaluate an in-memory tokenizer on a dataset (any torchrun world size); rank 0 gets the report dict.

    With `out`, rank 0 also writes report.json, report.md, per_sample.jsonl and the plots there.
    Pass `networks` to reuse loaded feature networks across calls (e.g. during training).
    Only the requested `metrics` (default: all) appear in the report, under `metrics` or, with
    the reason, under `not_computed`; metrics not requested are left out of both. `tiling`: as
    ViTok.encode's ("auto" tiles only samples above the model's budget; None never).
    """
    config = model.config
    _check_positive({"ris_splits": ris_splits})
    _check_out(out)
    every = set(IMAGE_METRICS + VIDEO_METRICS)
    wanted = set(metrics or every)
    if wanted - every:
        raise ValueError(f"unknown metrics {sorted(wanted - every)}; choose from {sorted(every)}")
    dataset, size, clip, rank, world = open_stream(config, data, image_size, frames, stride, upsample, limit, batch_size,
                                             workers)
    # I3D cannot run on clips this short: say so instead of failing inside the network.
    short_clip = config.is_video and "rfvd" in wanted and clip < I3D_MIN_FRAMES
    if networks is None:
        networks = load_networks(weights, config.is_video, wanted - {"rfvd"} if short_clip else wanted).to(device)
    if short_clip:
        networks = replace(networks, i3d=None, missing={
            **networks.missing, "rfvd": f"I3D needs clips of at least {I3D_MIN_FRAMES} frames and these have "
                                        f"{clip}: pass --frames {FVD_FRAMES} (the FVD convention) or at least "
                                        f"{I3D_MIN_FRAMES}"})
    previous_amp = model.amp_dtype
    if device.type == "cuda" and bf16:
        model.amp_dtype = torch.bfloat16
    try:
        result = evaluate(model, make_loader(dataset, batch_size, workers, device), networks, device,
                          progress=progress, metrics=wanted, ris_splits=ris_splits, tiling=tiling)
    finally:
        model.amp_dtype = previous_amp
    _explain_missing(result, wanted, config.is_video)
    if clip != FVD_FRAMES and ("rfvd" in result.metrics or "rfvd" in result.plumbing_only):
        result.notes["rfvd"] = (f"computed on {clip}-frame clips: not comparable with published rFVD numbers, "
                                f"which use {FVD_FRAMES}-frame clips")
    if rank != 0:
        return None
    context = {**(context or {}), "tiling": tiling if tiling in (None, "auto") else str(tiling),
               "data": str(data), "model": config.name or "custom", "image_size": size,
               "metrics_requested": sorted(wanted), "weights": networks.provenance, "world_size": world,
               "device": str(device)}
    if config.is_video:
        context.update(frames=clip, frame_stride=stride)
    elif "ris" in wanted:
        context.update(ris_splits=ris_splits)
    return report_document(result, context) if out is None else write_report(result, out, context)


def _explain_missing(result: EvalResult, wanted: set[str], video: bool) -> None:
    """Every requested metric ends up reported or under not_computed with a reason."""
    for name in sorted(wanted):
        if name in result.metrics or name in result.plumbing_only or name in result.not_computed:
            continue
        if name not in (VIDEO_METRICS if video else IMAGE_METRICS):
            result.not_computed[name] = ("image metric: not computed for video models" if video
                                         else "video metric: not computed for image models")
        else:
            result.not_computed[name] = "no feature network for it was given to evaluate_model"
