"""Tiled encode/decode: the tiles cover the sample, the blend is a partition of unity, a local map
tiles exactly, a tile as large as the sample changes nothing, memory is bounded by the tile."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitok.metrics.seams import border_mask, seam_ratio, tile_edges
from vitok.model import ViTok
from vitok.model.tiling import (TileSpec, Tiling, auto_tiling, axis_tiles, decode_tiled, encode_tiled, tile_starts,
                                tile_weight, tiles)

from conftest import tiny_config


@pytest.mark.parametrize("length,tile,overlap", [(10, 4, 1), (17, 8, 2), (8, 8, 2), (5, 8, 2), (33, 6, 5), (9, 4, 0)])
def test_tiles_cover_the_axis_with_the_overlap_asked_for(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    size = min(tile, length)
    covered = np.zeros(length, dtype=int)
    for s in starts:
        covered[s:s + size] += 1
    assert covered.min() >= 1 and starts[0] == 0 and starts[-1] + size == length
    for a, b in zip(starts, starts[1:]):
        assert a + size - b >= overlap  # at least the requested overlap (the last may have more)
    for s, n, before, after in axis_tiles(length, tile, overlap):
        assert n == size and before >= 0 and after >= 0


def test_weights_are_a_partition_of_unity_and_ramp_linearly():
    grid, spec = (11, 14), TileSpec((4, 6), (2, 3))
    total = torch.zeros(grid, dtype=torch.float64)
    for where, overlaps in tiles(grid, spec):
        w = tile_weight(tuple(s.stop - s.start for s in where), overlaps)
        assert w.min() > 0 and w.max() <= 1
        total[where] += w
    assert total.min() > 0  # every position gets weight, so the normalised blend is defined
    # One axis: a ramp of 3 rises as (j + 0.5) / 3 into the tile.
    w = tile_weight((6,), ((3, 0),))
    torch.testing.assert_close(w, torch.tensor([1 / 6, 0.5, 5 / 6, 1, 1, 1], dtype=torch.float64))


def _patch_means(pixels: torch.Tensor, tubelet: tuple[int, ...]) -> torch.Tensor:
    """A local 'encoder': each token is its tubelet's mean colour (B×L×3), no interaction between tokens."""
    pooled = torch.nn.functional.avg_pool2d(pixels, tubelet) if len(tubelet) == 2 else \
        torch.nn.functional.avg_pool3d(pixels, tubelet)
    return pooled.flatten(2).transpose(1, 2)


def test_a_local_map_tiles_exactly():
    """When tokens do not interact, blending the tiles must give back the untiled result exactly."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 40, 56, generator=g)
    p = 4
    grid = (10, 14)
    whole = _patch_means(x, (p, p))
    calls = []

    def encode(pixels):
        calls.append(pixels.shape)
        return [_patch_means(pixels, (p, p)), 2 * _patch_means(pixels, (p, p))]

    mean, other = encode_tiled(encode, x, grid, TileSpec((4, 6), (1, 2)), (p, p), batch=3)
    torch.testing.assert_close(mean, whole)
    torch.testing.assert_close(other, 2 * whole)
    # Memory bounded by the tile: never more than 3 tiles of 16x24 pixels per call.
    assert all(shape == (2 * n, 3, 16, 24) for shape, n in zip(calls, [3] * len(calls))) or \
        all(shape[0] <= 6 and tuple(shape[-2:]) == (16, 24) for shape in calls)

    def decode(tokens, sizes):  # a local 'decoder': every token paints its tubelet in its colour
        B = tokens.shape[0]
        img = tokens.transpose(1, 2).reshape(B, 3, *sizes)
        return img.repeat_interleave(p, -2).repeat_interleave(p, -1)

    painted = decode(whole, grid)
    torch.testing.assert_close(decode_tiled(decode, whole, grid, TileSpec((4, 6), (1, 2)), (p, p), 2), painted)
    # Video: chunks in time as well.
    v = torch.rand(1, 3, 12, 16, 16, generator=g)
    vgrid = (6, 4, 4)
    vwhole = _patch_means(v, (2, 4, 4))
    got = encode_tiled(lambda px: [_patch_means(px, (2, 4, 4))], v, vgrid, TileSpec((2, 2, 4), (1, 1, 0)), (2, 4, 4), 4)
    torch.testing.assert_close(got[0], vwhole)


def test_vitok_tile_as_large_as_the_sample_is_the_untiled_result():
    torch.manual_seed(0)
    model = ViTok(tiny_config()).eval()
    x = torch.rand(2, 3, 48, 64) * 2 - 1
    with torch.no_grad():
        plain = model.encode(x, tiling=None)
        same = model.encode(x, tiling=Tiling(tile_size=64))
        torch.testing.assert_close(same.mean, plain.mean, rtol=0, atol=0)
        torch.testing.assert_close(same.logvar, plain.logvar, rtol=0, atol=0)
        tiled = model.encode(x, tiling=Tiling(tile_size=32, overlap=8))
        assert tiled.mean.shape == plain.mean.shape and torch.isfinite(tiled.mean).all()
        pixels = model.decode(plain.mean, size=(48, 64), tiling=Tiling(tile_size=32, overlap=16))
        assert pixels.shape == (2, 3, 48, 64) and torch.isfinite(pixels).all()
        torch.testing.assert_close(model.decode(plain.mean, size=(48, 64), tiling=Tiling(tile_size=64)),
                                   model.decode(plain.mean, size=(48, 64), tiling=None), rtol=0, atol=0)


def test_auto_tiling_starts_above_the_budget():
    torch.manual_seed(0)
    model = ViTok(tiny_config()).eval()  # 32 px nominal, p = 8: a 4x4 grid, budget 16 x 16 tokens
    assert model.tile_budget == 256
    assert auto_tiling((16, 16), (4, 4), 256, 32, 1, 8, 1, False) is None
    assert auto_tiling((17, 16), (4, 4), 256, 32, 1, 8, 1, False) == Tiling(32, 8, None, None)
    model.tile_budget = 8
    x = torch.rand(1, 3, 32, 40) * 2 - 1
    with torch.no_grad():
        auto = model.encode(x)
        explicit = model.encode(x, tiling=Tiling(tile_size=32, overlap=8))
        untiled = model.encode(x, tiling=None)
    torch.testing.assert_close(auto.mean, explicit.mean, rtol=0, atol=0)
    assert not torch.equal(auto.mean, untiled.mean)
    # A checked encode refuses too many tokens untiled; tiled it runs (one tile at a time).
    model.tile_budget = 16 * 16
    big = torch.zeros(1, 3, 1032, 1032)
    with pytest.raises(ValueError, match="above the limit"):
        model.encode(big, tiling=None)


def test_video_chunks_in_time():
    torch.manual_seed(0)
    model = ViTok(tiny_config(temporal_patch=2, frames=4)).eval()
    x = torch.rand(1, 3, 12, 32, 32) * 2 - 1
    with torch.no_grad():
        auto = model.encode(x)  # 12 frames > the 4-frame clip: chunks of 4 frames, 2 shared
        explicit = model.encode(x, tiling=Tiling(chunk=4, chunk_overlap=2))
        whole = model.encode(x, tiling=Tiling(chunk=12))
        plain = model.encode(x, tiling=None)
        frames = model.decode(auto.mean, size=(12, 32, 32))
    torch.testing.assert_close(auto.mean, explicit.mean, rtol=0, atol=0)
    torch.testing.assert_close(whole.mean, plain.mean, rtol=0, atol=0)
    assert frames.shape == (1, 3, 12, 32, 32) and torch.isfinite(frames).all()


def test_v2_pads_then_tiles():
    torch.manual_seed(0)
    model = ViTok(tiny_config(architecture="vitok-v2")).eval()
    x = torch.rand(1, 3, 45, 70) * 2 - 1
    with torch.no_grad():
        z = model.encode(x, tiling=Tiling(tile_size=32, overlap=8))
        out = model.decode(z.mode(), size=(45, 70), tiling=Tiling(tile_size=32, overlap=8))
    assert z.deterministic and z.mean.shape == (1, 6 * 9, 4) and out.shape == (1, 3, 45, 70)


def test_tiling_errors():
    torch.manual_seed(0)
    model = ViTok(tiny_config()).eval()
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    for tiling, match in ((Tiling(tile_size=30), "multiple of the tubelet side 8"),
                          (Tiling(tile_size=32, overlap=32), "smaller than the tile"),
                          (Tiling(tile_size=0), "positive"), (Tiling(chunk=4), "image model"),
                          (Tiling(tile_size=32, batch=-1), "batch"), ("tiles", "tiling must be")):
        with pytest.raises(ValueError, match=match):
            model.encode(x, tiling=tiling)


def test_seam_ratio_against_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 40, 50, generator=g)
    noise = 0.05 * torch.randn(x.shape, generator=g)
    assert tile_edges(40, 16, 4) == [12, 16, 24, 28]
    assert tile_edges(10, 16, 4) == []
    mask = border_mask(40, 50, 16, 4, 2).numpy()
    err = (((x + noise).double() - x.double()) ** 2).mean(dim=(0, 1)).numpy()
    ref = err[mask].mean() / err[~mask].mean()
    assert seam_ratio(x, x + noise, 16, 4) == pytest.approx(ref, rel=1e-12)
    assert 0.8 < ref < 1.25  # noise without seams: about 1
    seamed = x + noise
    seamed[..., :, 23:25] += 0.3  # a bright line at a tile edge
    assert seam_ratio(x, seamed, 16, 4) > 2.5  # the line covers 2 of the bands' ~40 columns and rows
    with pytest.raises(ValueError, match="no seams"):
        seam_ratio(x[..., :10, :10], x[..., :10, :10], 16, 4)


def test_encode_takes_each_token_from_its_most_central_tile():
    """Latents are selected, never averaged: a token's value comes from exactly one tile, the one in
    which it lies farthest from a cut edge (the first such tile on a tie)."""
    grid, spec, p = (9, 11), TileSpec((4, 5), (2, 2)), 2
    x = torch.zeros(1, 3, grid[0] * p, grid[1] * p)
    all_tiles = tiles(grid, spec)
    calls = iter(range(1000))

    def encode(pixels):  # tile k's tokens all hold the value k + 1 (one call per tile: batch=1)
        k = next(calls)
        return [torch.full((pixels.shape[0], 4 * 5, 1), float(k + 1))]

    (got,) = encode_tiled(encode, x, grid, spec, (p, p), batch=1)
    got = got.reshape(*grid)
    best = np.full(grid, -1.0)
    want = np.zeros(grid)
    for k, (where, overlaps) in enumerate(all_tiles):
        w = tile_weight(tuple(s.stop - s.start for s in where), overlaps).numpy()
        region_best, region_want = best[where], want[where]
        better = w > region_best
        region_best[better], region_want[better] = w[better], k + 1
    np.testing.assert_array_equal(got.numpy(), want)
    assert set(np.unique(got.numpy())) <= set(range(1, len(all_tiles) + 1))  # no averages


def test_default_tile_batch_holds_a_token_budget():
    from vitok.model.tiling import TILE_BATCH_TOKENS, TileSpec, tiles_per_batch

    spec = TileSpec((8, 8), (2, 2))
    assert tiles_per_batch(0, 1, spec) == TILE_BATCH_TOKENS // 64
    assert tiles_per_batch(0, 4, spec) == TILE_BATCH_TOKENS // 256
    assert tiles_per_batch(0, 10**6, spec) == 1 and tiles_per_batch(3, 1, spec) == 3
