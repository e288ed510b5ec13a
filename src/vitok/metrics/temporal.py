"""Temporal consistency of a reconstructed video: does it move the way the original moves?

Per-frame metrics (PSNR, SSIM) cannot see flicker: a reconstruction whose every frame is equally
good can still jitter from frame to frame, and a video encoded in temporal chunks can jump where
one chunk hands over to the next. This metric compares temporal gradients, weight-free:

    Δx_t = x_{t+1} - x_t                         (the original's frame-to-frame change)
    e_t  = mean over pixels and channels of (Δx̂_t - Δx_t)²        one value per transition t
    temporal_rmse = sqrt(mean_t e_t) × 127.5     in 8-bit levels (inputs in [-1, 1])

0 means the reconstruction changes exactly as the original does (a constant error in every frame
also gives 0: it does not flicker). Where the video was cut into chunks, the transitions at a
chunk edge (between the last frame before a chunk starts or ends and the next) are compared with
the others:

    border_ratio = mean of e_t at chunk edges / mean of e_t elsewhere

1.0 means the chunk seams are indistinguishable from the rest; flicker at a seam shows as a ratio
above 1.
"""

from __future__ import annotations

import math

import torch

from .seams import tile_edges


def transition_errors(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """e_t for videos B×3×T×H×W (float, [-1, 1]): B×(T-1), float64."""
    if x.shape != x_hat.shape:
        raise ValueError(f"x and x_hat differ in shape: {tuple(x.shape)} and {tuple(x_hat.shape)}")
    if x.dim() != 5 or x.shape[2] < 2:
        raise ValueError(f"expected videos B×3×T×H×W with T >= 2, got shape {tuple(x.shape)}")
    dx = x.double().diff(dim=2)
    dx_hat = x_hat.double().diff(dim=2)
    return (dx_hat - dx).pow(2).mean(dim=(1, 3, 4))


def temporal_rmse(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Per video (B,): the RMS error of the temporal gradient in 8-bit levels (see the module doc)."""
    return transition_errors(x, x_hat).mean(dim=1).sqrt() * 127.5


def border_transitions(frames: int, chunk: int, overlap: int) -> list[int]:
    """Indices t of the transitions (t -> t+1) that cross a chunk edge of chunks of `chunk` frames."""
    return [e - 1 for e in tile_edges(frames, chunk, overlap)]


def summarise(e: torch.Tensor, borders: list[int] | None = None) -> dict:
    """The report of transition errors e (B×(T-1), transition_errors): "temporal_rmse" and, when some but
    not all transitions are chunk-edge ones (`borders`), "border_rmse", "inside_rmse", "border_ratio",
    "border_transitions" (8-bit levels)."""
    e = torch.as_tensor(e, dtype=torch.float64).reshape(-1, e.shape[-1])
    report = {"temporal_rmse": math.sqrt(float(e.mean())) * 127.5 if e.numel() else None,
              "transitions": int(e.shape[1])}
    if borders and len(borders) < e.shape[1]:
        mask = torch.zeros(e.shape[1], dtype=torch.bool)
        mask[borders] = True
        inside = e[:, ~mask].mean()
        report.update(border_transitions=borders,
                      border_rmse=math.sqrt(float(e[:, mask].mean())) * 127.5,
                      inside_rmse=math.sqrt(float(inside)) * 127.5,
                      border_ratio=float(e[:, mask].mean() / inside) if float(inside) > 0 else math.inf)
    return report


def temporal_report(x: torch.Tensor, x_hat: torch.Tensor, chunk: int | None = None, overlap: int = 0) -> dict:
    """summarise() of videos x and x_hat B×3×T×H×W, with the chunk edges of chunks of `chunk` frames."""
    borders = border_transitions(x.shape[2], chunk, overlap) if chunk is not None else None
    return summarise(transition_errors(x, x_hat), borders)
