"""Sample images from a trained DiT run: latents by diffusion, de-normalised, decoded by the tokenizer."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..arguments import check_device, check_out_folder
from .checks import check_sampling_args, check_steps_within
from .diffusion import GaussianDiffusion
from .dit import DiT
from .folders import load_dit, run_model_folder
from .latents import check_tokenizer, denormalise


@torch.no_grad()
def sample_latents(model: DiT, diffusion: GaussianDiffusion, grid: tuple[int, ...], labels: torch.Tensor,
                   steps: int = 250, cfg: float = 1.5, method: str = "ddim", eta: float = 0.0, seed: int = 0,
                   device: str | torch.device = "cpu") -> torch.Tensor:
    """Normalised latents B×L×c for the given labels (B), guided by cfg."""
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    shape = (len(labels), math.prod(grid), model.config.in_channels)
    labels = labels.to(device)
    return diffusion.sample(lambda x, t, y, s: model.forward_with_cfg(x, t, y, s, tuple(grid)), shape,
                            steps=steps, eta=eta, cfg_scale=cfg, labels=labels, generator=generator,
                            method=method, device=device)


@torch.no_grad()
def decode_latents(tokenizer, z: torch.Tensor, latents_info: dict) -> torch.Tensor:
    """Normalised latents B×L×c -> uint8 images B×3×H×W (video: B×3×T×H×W) through the tokenizer."""
    raw = denormalise(z, latents_info["mean"], latents_info["std"])
    size = latents_info["image_size"]
    frames = latents_info.get("frames", 1)
    shape = (frames, size, size) if tokenizer.config.is_video else (size, size)
    pixels = tokenizer.decode(raw, size=shape).clamp(-1, 1)
    return ((pixels + 1) * 127.5).round().to(torch.uint8).cpu()


def frame_strips(videos: torch.Tensor, max_frames: int = 8) -> torch.Tensor:
    """B×3×T×H×W -> B×3×H×(k·W): up to `max_frames` evenly spaced frames of each clip side by side."""
    frames = videos.shape[2]
    index = torch.linspace(0, frames - 1, min(frames, max_frames)).round().long()
    picked = videos.index_select(2, index)  # B×3×k×H×W
    return picked.permute(0, 1, 3, 2, 4).flatten(3)  # B×3×H×(k·W)


def save_grid(images: torch.Tensor, path: Path, columns: int = 8) -> None:
    """A PNG tiling B×3×H×W uint8 images, `columns` per row; clips (B×3×T×H×W) become one frame strip per row."""
    if images.dim() == 5:
        images, columns = frame_strips(images), 1
    B, _, H, W = images.shape
    columns = min(columns, B)
    rows = -(-B // columns)
    canvas = np.zeros((rows * H, columns * W, 3), dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, columns)
        canvas[r * H:(r + 1) * H, c * W:(c + 1) * W] = img.permute(1, 2, 0).numpy()
    tmp = path.with_suffix(".tmp.png")
    Image.fromarray(canvas).save(tmp)
    tmp.replace(path)


def generate(run: str | Path, num: int, cfg: float = 1.5, steps: int = 250, method: str = "ddim",
             eta: float = 0.0, batch_size: int = 32, class_id: int | None = None, seed: int = 0,
             device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images N×3×H×W or clips N×3×T×H×W, labels N) from a run's EMA DiT; labels cycle over classes
    unless class_id."""
    from ..model import ViTok

    check_sampling_args(num, cfg, steps, eta, batch_size)
    check_device(device)
    model, document = load_dit(run_model_folder(run), device)
    info = document["latents"]
    if class_id is not None and not 0 <= class_id < info["num_classes"]:
        raise ValueError(f"--class-id {class_id} is outside [0, {info['num_classes']}); classes are {info['classes']}")
    check_steps_within(steps, document["diffusion"]["timesteps"], run)
    tokenizer_folder = Path(info["tokenizer"])
    if not tokenizer_folder.is_dir():
        raise ValueError(f"the run's tokenizer {tokenizer_folder} is missing; restore it there to decode samples")
    check_tokenizer(info, f"DiT run {run}")
    tokenizer = ViTok.from_pretrained(tokenizer_folder, device=device)
    diffusion = GaussianDiffusion(**document["diffusion"])
    labels = torch.full((num,), class_id) if class_id is not None else torch.arange(num) % info["num_classes"]
    images = []
    for start in range(0, num, batch_size):
        z = sample_latents(model, diffusion, info["grid"], labels[start:start + batch_size], steps, cfg, method,
                           eta, seed=seed + start, device=device)
        images.append(decode_latents(tokenizer, z, info))
    return torch.cat(images), labels


def write_samples(images: torch.Tensor, labels: torch.Tensor, out: str | Path, fps: int = 8) -> list[Path]:
    """sample_NNNNN_classK.png per image (.mp4 per clip, at `fps`) and grid.png; returns the sample paths."""
    out = check_out_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (img, y) in enumerate(zip(images, labels.tolist())):
        if img.dim() == 4:  # 3×T×H×W clip
            from ..data.video import write_video

            path = out / f"sample_{i:05d}_class{y}.mp4"
            write_video(path, img.permute(1, 2, 3, 0).numpy(), fps=fps)
        else:
            path = out / f"sample_{i:05d}_class{y}.png"
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(path)
        paths.append(path)
    save_grid(images[:64], out / "grid.png")
    return paths
