"""Seam metric for tiled reconstructions: is the error larger along the tile borders than elsewhere?

    seam_ratio = mean squared error in bands of ±band pixels around every interior tile edge
                 / mean squared error everywhere else

1.0 means the borders are indistinguishable from the rest of the image (no seam); a visible seam
shows as a ratio above 1. The edges are those of the tiles that model/tiling.py cuts (every tile's
first and last pixel row and column inside the image), so the ratio is about exactly the places
where one tile's contribution starts or stops.
"""

from __future__ import annotations

import torch

from ..model.tiling import tile_starts


def tile_edges(length: int, tile: int, overlap: int) -> list[int]:
    """Pixel positions along one axis where a tile begins or ends inside (0, length)."""
    if length <= tile:
        return []
    edges = set()
    for s in tile_starts(length, tile, overlap):
        edges.update(e for e in (s, s + tile) if 0 < e < length)
    return sorted(edges)


def border_mask(height: int, width: int, tile: int, overlap: int, band: int) -> torch.Tensor:
    """H×W bool: within `band` pixels of an interior tile edge (rows or columns)."""
    mask = torch.zeros(height, width, dtype=torch.bool)
    for e in tile_edges(height, tile, overlap):
        mask[max(0, e - band):e + band, :] = True
    for e in tile_edges(width, tile, overlap):
        mask[:, max(0, e - band):e + band] = True
    return mask


def seam_ratio(x: torch.Tensor, x_hat: torch.Tensor, tile: int, overlap: int, band: int = 2) -> float:
    """Error near tile edges over error elsewhere, for images …×H×W in any common range (see module doc)."""
    if x.shape != x_hat.shape:
        raise ValueError(f"x and x_hat differ in shape: {tuple(x.shape)} and {tuple(x_hat.shape)}")
    mask = border_mask(x.shape[-2], x.shape[-1], tile, overlap, band).to(x.device)
    if not bool(mask.any()):
        raise ValueError(f"an image of {x.shape[-2]}x{x.shape[-1]} fits one tile of {tile}: it has no seams")
    if bool(mask.all()):
        raise ValueError("the border bands cover the whole image; use a smaller band")
    err = (x.double() - x_hat.double()).pow(2)
    err = err.reshape(-1, *err.shape[-2:]).mean(0)  # H×W: averaged over batch and channels
    inside, outside = err[mask].mean(), err[~mask].mean()
    return float(inside / outside) if float(outside) > 0 else float("inf") if float(inside) > 0 else 1.0
