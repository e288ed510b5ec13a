"""Tiled encode and decode: large images and long videos in memory bounded by the tile, blended without seams.

ViTok attends over every token of a sample, so time grows with the square of the token count and
memory with it. Above a budget the sample is cut into overlapping tiles on the token grid (spatial
tiles of `tile` pixels, temporal chunks of `chunk` frames), each tile is encoded or decoded on its
own, and the tiles are put back together by a normalised weighted average:

    out[i] = sum_k w_k(i) · tile_k[i] / sum_k w_k(i)

Each tile's weight is a separable product of 1-D ramps that rise linearly over the overlap it
shares with a neighbour (w = (j + 0.5) / r at distance j from that edge, r the overlap) and are 1
elsewhere and at the sample's own borders: how far a position lies from any cut edge of the tile.

- decode blends in pixel space: out[i] = sum_k w_k(i) · tile_k[i] / sum_k w_k(i), so where two
  tiles overlap the image fades from one reconstruction to the other, no tile edge is ever used
  alone, and where tiles do not overlap it is the tile's pixels exactly;
- encode selects in latent space: each token is taken from the one tile where its weight is
  largest (the tile in which it lies farthest from a cut; the earlier tile on a tie). Latents are
  not averaged: the same token encoded in two contexts can land far apart in latent space (on real
  video up to 4 units apart in some tubelets), and their average is a latent neither context produces,
  which showed as flicker at chunk edges (docs/video_check).

With a tile at least as large as the sample nothing is cut and the result is the untiled one
exactly.

Only one batch of tiles is in flight at a time: peak memory is set by the tile batch, not by the
sample. By default (`Tiling.batch` = 0) a batch holds about TILE_BATCH_TOKENS tokens (tiles x samples
x tokens per tile): small tiles run many at once, since a forward pass over a few hundred tokens leaves
a GPU mostly idle (8 tiles of 64 tokens at a time made a 4096-pixel photo 14x slower than untiled on
an H200; docs/tiling_check).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TileSpec:
    """Tile sizes and overlaps, per grid axis, in tokens: (t, h, w) for video, (h, w) for images."""

    tile: tuple[int, ...]
    overlap: tuple[int, ...]

    def __post_init__(self) -> None:
        for t, o in zip(self.tile, self.overlap):
            if t < 1 or o < 0 or o >= t:
                raise ValueError(f"a tile of {t} tokens with an overlap of {o} does not tile: the overlap must be "
                                 f"at least 0 and smaller than the tile")


def default_overlap(size: int, step: int) -> int:
    """The overlap a tile or chunk of `size` (pixels or frames, a multiple of `step`) gets unless told
    otherwise: a quarter of it in whole steps, at least one step; none for a tile of one step."""
    return max(step, size // 4 // step * step) if size > step else 0


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start indices of tiles of `tile` covering range(length) with at least `overlap` shared between
    neighbours; the last tile ends at `length` (its overlap may be larger)."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def ramp(size: int, before: int, after: int, device=None) -> torch.Tensor:
    """1-D weight of a tile of `size`: linear rise over `before` positions, fall over `after`, 1 between."""
    i = torch.arange(size, dtype=torch.float64, device=device)
    w = torch.ones(size, dtype=torch.float64, device=device)
    if before > 0:
        w = torch.minimum(w, (i + 0.5) / before)
    if after > 0:
        w = torch.minimum(w, (size - i - 0.5) / after)
    return w


def axis_tiles(length: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(start, size, overlap with the previous tile, overlap with the next) along one axis."""
    starts = tile_starts(length, tile, overlap)
    size = min(tile, length)
    out = []
    for k, s in enumerate(starts):
        before = starts[k - 1] + size - s if k > 0 else 0
        after = s + size - starts[k + 1] if k + 1 < len(starts) else 0
        out.append((s, size, before, after))
    return out


def tiles(grid: tuple[int, ...], spec: TileSpec) -> list[tuple[tuple[slice, ...], tuple[tuple[int, int], ...]]]:
    """Every tile of a grid: (its slices, per axis (overlap before, overlap after))."""
    per_axis = [axis_tiles(n, t, o) for n, t, o in zip(grid, spec.tile, spec.overlap)]
    out = []
    for combo in itertools.product(*per_axis):
        out.append((tuple(slice(s, s + n) for s, n, _, _ in combo), tuple((b, a) for _, _, b, a in combo)))
    return out


def tile_weight(sizes: tuple[int, ...], overlaps: tuple[tuple[int, int], ...], scale: tuple[int, ...] = (),
                device=None) -> torch.Tensor:
    """The separable weight of one tile on its grid, or on pixels when `scale` gives pixels per token."""
    scale = scale or (1,) * len(sizes)
    w = None
    for n, (before, after), k in zip(sizes, overlaps, scale):
        r = ramp(n * k, before * k, after * k, device)
        w = r if w is None else w[..., None] * r
    return w


class Selector:
    """Keeps, per grid position, the values of the tile with the largest weight so far (ties: the first),
    for several outputs at once (e.g. a posterior's mean and log-variance) chosen by one comparison."""

    def __init__(self, shapes: list[tuple[int, ...]], device, dtype=torch.float32) -> None:
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for shape in shapes]
        self.best = torch.full(shapes[0][2:], -1.0, device=device, dtype=torch.float64)

    def add(self, where: tuple[slice, ...], values: list[torch.Tensor], weight: torch.Tensor) -> None:
        better = weight > self.best[where]
        self.best[where] = torch.where(better, weight, self.best[where])
        for buffer, value in zip(self.values, values):
            region = buffer[(slice(None), slice(None), *where)]
            region.copy_(torch.where(better, value.to(region.dtype), region))

    def result(self) -> list[torch.Tensor]:
        return self.values


class Blender:
    """Accumulates weighted tiles into a B×C×(grid…) buffer in float32; result() divides by the weights."""

    def __init__(self, shape: tuple[int, ...], device, dtype=torch.float32) -> None:
        self.sum = torch.zeros(shape, device=device, dtype=dtype)
        self.weight = torch.zeros(shape[2:], device=device, dtype=dtype)

    def add(self, where: tuple[slice, ...], value: torch.Tensor, weight: torch.Tensor) -> None:
        weight = weight.to(self.sum.dtype)
        self.sum[(slice(None), slice(None), *where)] += value.to(self.sum.dtype) * weight
        self.weight[where] += weight

    def result(self) -> torch.Tensor:
        return self.sum / self.weight


@dataclass(frozen=True)
class Tiling:
    """How to tile, in pixels and frames (ViTok.encode/decode's `tiling`; "auto" picks one, None never tiles).

    tile_size / overlap cut height and width (multiples of p; overlap defaults to a quarter of the
    tile); chunk / chunk_overlap cut time for video (multiples of q; overlap a quarter of the chunk);
    None leaves that dimension whole. `batch` tiles run at once (memory grows with it); 0 picks as many as
    hold about TILE_BATCH_TOKENS tokens."""

    tile_size: int | None = None
    overlap: int | None = None
    chunk: int | None = None
    chunk_overlap: int | None = None
    batch: int = 0

    def spec(self, grid: tuple[int, ...], patch: int, temporal_patch: int, video: bool) -> TileSpec | None:
        """The TileSpec on a token grid; None when no dimension is cut (the tiles would be the sample)."""
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 0:
            raise ValueError(f"tiling batch must be a whole number >= 0 (0 = as many as fit TILE_BATCH_TOKENS), "
                             f"got {self.batch!r}")
        tile, overlap = list(grid), [0] * len(grid)
        spatial = range(len(grid) - 2, len(grid))
        if self.tile_size is not None:
            t, o = _tokens("tile_size", self.tile_size, patch), self.overlap
            o = _tokens("overlap", o, patch, zero=True) if o is not None else default_overlap(t, 1)
            for axis in spatial:
                tile[axis], overlap[axis] = t, o
        if self.chunk is not None:
            if not video:
                raise ValueError("tiling.chunk cuts time, and this is an image model: leave it out")
            t, o = _tokens("chunk", self.chunk, temporal_patch), self.chunk_overlap
            o = _tokens("chunk_overlap", o, temporal_patch, zero=True) if o is not None else default_overlap(t, 1)
            tile[0], overlap[0] = t, o
        cut = [i for i, (n, t) in enumerate(zip(grid, tile)) if t < n]
        if not cut:
            return None
        # An axis the tile covers whole needs no overlap (and would not pass TileSpec's check).
        overlap = [o if t < n else 0 for o, t, n in zip(overlap, tile, grid)]
        tile = [min(t, n) for t, n in zip(tile, grid)]
        return TileSpec(tuple(tile), tuple(overlap))


# Tokens in flight per tile batch when Tiling.batch is 0: about 1.4 GB peak for S-B/16 in bf16.
TILE_BATCH_TOKENS = 16384


def tiles_per_batch(batch: int, samples: int, spec: TileSpec) -> int:
    """Tiles per forward pass: `batch`, or for 0 as many as hold TILE_BATCH_TOKENS tokens (at least one)."""
    return batch if batch > 0 else max(1, TILE_BATCH_TOKENS // (samples * math.prod(spec.tile)))


def _tokens(name: str, value: int, step: int, zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (value == 0 and not zero):
        raise ValueError(f"tiling.{name} must be a {'non-negative' if zero else 'positive'} whole number, "
                         f"got {value!r}")
    if value % step:
        raise ValueError(f"tiling.{name} {value} is not a multiple of the tubelet side {step}; use "
                         f"{max(step, value // step * step)}")
    return value // step


def auto_tiling(grid: tuple[int, ...], nominal: tuple[int, ...], budget: int, image_size: int, frames: int,
                patch: int, temporal_patch: int, video: bool) -> Tiling | None:
    """The tiling "auto" chooses: spatial tiles at the training size when a frame holds more than `budget`
    tokens, temporal chunks of the training clip length when a video is longer than it."""
    tile_size = chunk = None
    if math.prod(grid[-2:]) > budget:
        tile_size = image_size
    if video and grid[0] > nominal[0]:
        chunk = frames
    if tile_size is None and chunk is None:
        return None
    overlap = default_overlap(image_size, patch) if tile_size else None
    chunk_overlap = default_overlap(frames, temporal_patch) if chunk else None
    return Tiling(tile_size, overlap, chunk, chunk_overlap)


def _to_grid(tokens: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """B×L×c -> B×c×(grid…)."""
    B, _, c = tokens.shape
    return tokens.reshape(B, *grid, c).movedim(-1, 1)


def _to_tokens(values: torch.Tensor) -> torch.Tensor:
    """B×c×(grid…) -> B×L×c."""
    return values.movedim(1, -1).flatten(1, -2)


def encode_tiled(encode, x: torch.Tensor, grid: tuple[int, ...], spec: TileSpec, tubelet: tuple[int, ...],
                 batch: int) -> list[torch.Tensor]:
    """`encode` over the tiles of x, each token from the tile where it is most central: encode(pixels of n
    tiles stacked) -> list of N·n×Lt×c tensors (e.g. [mean, logvar]); returns the B×L×c tensors.
    tubelet: pixels per token on each axis."""
    B = x.shape[0]
    all_tiles = tiles(grid, spec)
    batch = tiles_per_batch(batch, B, spec)
    selector = None
    for start in range(0, len(all_tiles), batch):
        group = all_tiles[start:start + batch]
        crops = [x[(Ellipsis, *[slice(s.start * k, s.stop * k) for s, k in zip(where, tubelet)])] for where, _ in group]
        outputs = encode(torch.cat(crops))
        if selector is None:
            selector = Selector([(B, o.shape[-1], *grid) for o in outputs], x.device)
        for k, (where, overlaps) in enumerate(group):
            sizes = tuple(s.stop - s.start for s in where)
            weight = tile_weight(sizes, overlaps, device=x.device)
            selector.add(where, [_to_grid(out[k * B:(k + 1) * B], sizes) for out in outputs], weight)
    return [_to_tokens(value) for value in selector.result()]


def decode_tiled(decode, z: torch.Tensor, grid: tuple[int, ...], spec: TileSpec, tubelet: tuple[int, ...],
                 batch: int) -> torch.Tensor:
    """Blend `decode` over the tiles of the B×L×c latents z on `grid`: decode(N·n×Lt×c tokens, tile grid) ->
    N·n×3×(tile pixels…); returns B×3×(pixels…), blended in pixel space."""
    B = z.shape[0]
    values = _to_grid(z, grid)
    all_tiles = tiles(grid, spec)
    batch = tiles_per_batch(batch, B, spec)
    blender = None
    for start in range(0, len(all_tiles), batch):
        group = all_tiles[start:start + batch]
        sizes = tuple(s.stop - s.start for s in group[0][0])
        chunk = torch.cat([_to_tokens(values[(slice(None), slice(None), *where)]) for where, _ in group])
        pixels = decode(chunk, sizes)
        if blender is None:
            shape = (B, pixels.shape[1], *[n * k for n, k in zip(grid, tubelet)])
            blender = Blender(shape, z.device)
        for k, (where, overlaps) in enumerate(group):
            weight = tile_weight(sizes, overlaps, tubelet, device=z.device)
            pixel_where = tuple(slice(s.start * t, s.stop * t) for s, t in zip(where, tubelet))
            blender.add(pixel_where, pixels[k * B:(k + 1) * B], weight)
    return blender.result()
