"""gFID/gIS (images) or gFVD (video) of a DiT run's samples against a reference folder, with the
evaluation's feature networks (Inception-v3, I3D) and their weight rules."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..arguments import check_device, check_out_folder
from .checks import check_sampling_args, check_steps_within


def _run_document(run: str | Path) -> dict:
    """A run's exported config.json: latents (grid, frames, image size, ...), diffusion, dit."""
    from .folders import MODEL_CONFIG, run_model_folder

    return json.loads((run_model_folder(run) / MODEL_CONFIG).read_text())


def check_reference(reference: str | Path, video: bool) -> None:
    """The reference folder exists and holds images (videos for a video run), checked before any sampling."""
    from ..data.datasets import list_images
    from ..data.video import list_videos

    what = "videos" if video else "images"
    folder = Path(reference)
    if not folder.is_dir():
        state = "is a file" if folder.exists() else "does not exist"
        raise ValueError(f"--reference {folder} {state}; pass the folder of real {what} to compare the samples with")
    if not (list_videos(folder) if video else list_images(folder)):
        raise ValueError(f"--reference {folder} holds no {what}; pass the folder of real {what} to compare the "
                         f"samples with")


@torch.no_grad()
def _features(net, pixels: torch.Tensor, batch_size: int, device: str) -> tuple[list[torch.Tensor], list]:
    """(pool features, Inception logits or []) of uint8 images or clips, batch by batch."""
    from ..data.datasets import to_model_range

    feats, logits = [], []
    for start in range(0, len(pixels), batch_size):
        out = net(to_model_range(pixels[start:start + batch_size].to(device)))
        if isinstance(out, tuple):  # Inception returns (pool features, logits)
            out, batch_logits = out
            logits.append(batch_logits.float().cpu())
        feats.append(out)
    return feats, logits


def feature_network(weights: str | None, frames: int) -> tuple[object | None, tuple[str, ...], dict, dict, bool]:
    """(network or None, metric names, {name: why not computable}, notes, published weights?) for samples of
    `frames` frames: Inception-v3 (gFID, gIS) for images, I3D (gFVD) for clips."""
    from ..eval.networks import load_networks
    from ..metrics.i3d import I3D_MIN_FRAMES

    notes = {}
    if frames > 1:
        networks = load_networks(weights, video=True, wanted={"rfvd"})
        net, names = networks.i3d, ("gfvd",)
        missing = {"gfvd": _generated(networks.missing.get("rfvd", "I3D network unavailable"))}
        if frames < I3D_MIN_FRAMES:
            net, missing = None, {"gfvd": f"I3D needs clips of at least {I3D_MIN_FRAMES} frames; this run "
                                          f"generates {frames}"}
        elif frames != 16:
            notes["gfvd"] = (f"computed on {frames}-frame clips: not comparable with published FVD numbers, "
                             f"which use 16 frames")
    else:
        networks = load_networks(weights, video=False, wanted={"rfid", "ris"})
        net, names = networks.inception, ("gfid", "gis")
        missing = {"gfid": _generated(networks.missing.get("rfid", "Inception network unavailable")),
                   "gis": _generated(networks.missing.get("ris", "Inception network unavailable"))}
    return net, names, missing, notes, networks.published_weights


def _generated(reason: str) -> str:
    """The weight loader's reason, worded for the generation metrics (the same network as rFID/rIS, rFVD)."""
    return reason.replace("rFID and rIS needs", "gFID and gIS need").replace("rFVD needs", "gFVD needs")


@torch.no_grad()
def score_samples(net, names: tuple[str, ...], published: bool, samples: torch.Tensor, reference: str | Path,
                  batch_size: int = 32, device: str = "cpu", frame_stride: int = 1) -> dict:
    """Frechet distance (and IS for images) of uint8 samples N×3×H×W (clips N×3×T×H×W) against the reference
    folder read at the samples' size: {"metrics", "not_computed", "num_reference"} (numbers from networks
    without the published weights go to "plumbing_only_random_weights", never under a metric's name)."""
    from ..data.datasets import ImageFolder, VideoFolder, collate, to_model_range
    from ..metrics.frechet import FeatureStats, frechet_of_stats, inception_score

    net = net.to(device)
    result: dict = {"metrics": {}, "not_computed": {}}
    fake_stats = FeatureStats(device=device)
    feats, logits = _features(net, samples, batch_size, device)
    for f in feats:
        fake_stats.update(f)
    size = samples.shape[-1]
    dataset = (VideoFolder(reference, size, samples.shape[2], frame_stride) if samples.dim() == 5
               else ImageFolder(reference, size, upsample=True))
    real_stats = FeatureStats(device=device)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    for batch in loader:
        if batch["pixels"] is not None:
            real = net(to_model_range(batch["pixels"].to(device)))
            real_stats.update(real[0] if isinstance(real, tuple) else real)
    result["num_reference"] = real_stats.n
    fd_name = names[0]
    if real_stats.n < 2 or fake_stats.n < 2:
        result["not_computed"][fd_name] = (f"needs at least 2 samples on each side, got {real_stats.n} "
                                           f"reference and {fake_stats.n} generated")
    else:
        result["metrics"][fd_name] = float(frechet_of_stats(fd_name, real_stats, fake_stats))
    if logits:
        splits = min(10, len(samples))
        result["metrics"]["gis"] = float(inception_score(torch.cat(logits), splits=splits, seed=2020)[0])
    for name in [k for k, v in result["metrics"].items() if not math.isfinite(v)]:
        result["not_computed"][name] = f"came out as {result['metrics'].pop(name)} (non-finite)"
    if not published:  # test networks: their numbers must not carry a metric's name
        result["plumbing_only_random_weights"], result["metrics"] = result["metrics"], {}
    return result


@torch.no_grad()
def evaluate_run(run: str | Path, reference: str | Path, num: int, weights: str | None = None, cfg: float = 1.5,
                 steps: int = 250, method: str = "ddim", eta: float = 0.0, batch_size: int = 32, seed: int = 0,
                 device: str = "cpu", out: str | Path | None = None, frame_stride: int = 1) -> dict:
    """Sample `num` images (clips for a video run) and compare their features with the reference folder's:
    gFID and gIS with Inception-v3 for images, gFVD with I3D for video; writes report.json.

    The reference folder holds images, or for a video run video files, read as the tokenizer's
    clips (its frames, every `frame_stride`-th, from the middle of each video).
    """
    from .sample import generate

    check_sampling_args(num, cfg, steps, eta, batch_size)
    check_device(device)
    out = check_out_folder(out) if out else Path(run) / "gen-eval"
    if frame_stride < 1:
        raise ValueError(f"--frame-stride must be at least 1, got {frame_stride}")
    exported = _run_document(run)
    check_steps_within(steps, exported["diffusion"]["timesteps"], run)
    frames = exported["latents"].get("frames", 1)
    check_reference(reference, frames > 1)
    document = {"run": str(run), "reference": str(reference), "num_samples": num, "cfg": cfg, "steps": steps,
                "sampler": method, "metrics": {}, "not_computed": {}, "notes": {}}
    net, names, missing, notes, published = feature_network(weights, frames)
    document["notes"].update(notes)
    if net is None:
        # Without the published weights nothing may be reported under these names.
        document["not_computed"].update({name: missing[name] for name in names})
    else:
        samples, _ = generate(run, num, cfg, steps, method, eta, batch_size, seed=seed, device=device)
        scores = score_samples(net, names, published, samples, reference, batch_size, device, frame_stride)
        document["metrics"].update(scores.pop("metrics"))
        document["not_computed"].update(scores.pop("not_computed"))
        document.update(scores)
    if not document["notes"]:
        del document["notes"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(document, indent=2) + "\n")
    document["report"] = str(out / "report.json")
    return document
