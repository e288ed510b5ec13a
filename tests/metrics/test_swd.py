"""Tests for vitok.metrics.swd: pyramid, projection step, protocol and streaming determinism."""

from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import convolve
from scipy.stats import wasserstein_distance

from vitok.metrics import PatchSWD, to_uint8
from vitok.metrics.swd import laplacian_pyramid, level_shapes, random_directions, sliced_wasserstein

_spec = importlib.util.spec_from_file_location("metric_inputs", Path(__file__).parent / "fixtures" / "metric_inputs.py")
mi = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mi)

PHOTOS = ("astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "rocket")
KEYS = [f"photo/{name}" for name in PHOTOS]
BINOMIAL = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256.0


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """8×3×64×64 [-1, 1] centre crops of real photos."""
    return torch.stack([mi.photo(name, 64, 64) for name in PHOTOS])


def _swd(real: torch.Tensor, fake: torch.Tensor, **kwargs) -> dict:
    acc = PatchSWD(**kwargs)
    acc.update(KEYS[: len(real)], real, fake)
    return acc.compute()


# --- pyramid -------------------------------------------------------------------------------


def _ref_down(g: np.ndarray) -> np.ndarray:
    """cv2.pyrDown-style reference: 5×5 binomial, scipy 'mirror' (= torch reflect), every 2nd pixel."""
    return convolve(g, BINOMIAL, mode="mirror")[::2, ::2]


def _ref_up(g: np.ndarray, h: int, w: int) -> np.ndarray:
    up = np.zeros((2 * g.shape[0], 2 * g.shape[1]))
    up[::2, ::2] = g
    return convolve(up[:h, :w], 4.0 * BINOMIAL, mode="mirror")


@pytest.mark.parametrize("size", [(64, 48), (45, 37)])
def test_laplacian_pyramid_matches_scipy_and_collapses(size):
    img = to_uint8(mi.photo("coffee", *size)).to(torch.float32)
    levels = laplacian_pyramid(img.unsqueeze(0), 3)
    assert [tuple(lv.shape[-2:]) for lv in levels] == level_shapes(*size, min_size=8)[:3]
    for c in range(3):
        gauss = [img[c].double().numpy()]
        for _ in range(2):
            gauss.append(_ref_down(gauss[-1]))
        ref = [g - _ref_up(gn, *g.shape) for g, gn in zip(gauss, gauss[1:])] + [gauss[-1]]
        for lv, r in zip(levels, ref):
            np.testing.assert_allclose(lv[0, c].numpy(), r, rtol=0, atol=1e-3)
        # Collapse the pyramid with the reference upsampler: exactly the image again.
        rec = levels[-1][0, c].double().numpy()
        for lv in reversed(levels[:-1]):
            rec = lv[0, c].double().numpy() + _ref_up(rec, *lv.shape[-2:])
        np.testing.assert_allclose(rec, img[c].numpy(), rtol=0, atol=1e-3)


def test_level_shapes():
    assert [min(s) for s in level_shapes(256, 256)] == [256, 128, 64, 32, 16]
    assert level_shapes(64, 64) == [(64, 64), (32, 32), (16, 16)]
    assert level_shapes(96, 128) == [(96, 128), (48, 64), (24, 32)]
    with pytest.raises(ValueError, match="16 px"):
        level_shapes(15, 64)


# --- projection step and protocol ------------------------------------------------------------


def test_sliced_wasserstein_matches_scipy():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 147, generator=g)
    b = 1.3 * torch.randn(300, 147, generator=g) + 0.2
    dirs = random_directions(147, 200, seed=1)  # more than one 128-direction chunk
    torch.testing.assert_close(dirs.norm(dim=0), torch.ones(200, dtype=torch.float64))
    an, bn = a.double().numpy(), b.double().numpy()
    ref = np.mean([wasserstein_distance(an @ d, bn @ d) for d in dirs.numpy().T])
    got = sliced_wasserstein(a, b, dirs)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(ref, rel=1e-9)


def test_compute_matches_numpy_protocol(photos):
    fake = mi.gaussian_blur(photos, 1.0)
    acc = PatchSWD(directions=256)
    acc.update(KEYS, photos, fake)
    got = acc.compute()
    dirs = random_directions(147, 256, seed=0).numpy()

    def normalise(d: np.ndarray) -> np.ndarray:
        v = d.astype(np.float64).reshape(len(d), 3, 49)
        return ((v - v.mean(axis=(0, 2), keepdims=True)) / v.std(axis=(0, 2), keepdims=True)).reshape(len(d), -1)

    ref = {}
    for size, level in zip(["64", "32", "16"], acc.state()["levels"]):
        assert level["real"].shape == level["fake"].shape == (len(KEYS) * 128, 147)
        pa = np.sort(normalise(level["real"].numpy()) @ dirs, axis=0)
        pb = np.sort(normalise(level["fake"].numpy()) @ dirs, axis=0)
        ref[size] = 1e3 * np.abs(pa - pb).mean()
    assert list(got["levels"]) == ["64", "32", "16"]
    for size, value in ref.items():
        assert got["levels"][size] == pytest.approx(value, rel=1e-9)
    assert got["swd"] == pytest.approx(np.mean(list(ref.values())), rel=1e-9)


def test_identical_is_zero(photos):
    result = _swd(photos, photos.clone())
    assert result["swd"] == 0.0
    assert result["levels"] == {"64": 0.0, "32": 0.0, "16": 0.0}


def test_grows_with_blur(photos):
    results = [_swd(photos, mi.gaussian_blur(photos, s)) for s in (0.5, 1.0, 2.0)]
    swd = [r["swd"] for r in results]
    finest = [r["levels"]["64"] for r in results]
    assert 0 < swd[0] < swd[1] < swd[2], swd
    assert 0 < finest[0] < finest[1] < finest[2], finest


def test_grows_with_noise(photos):
    swd = [_swd(photos, mi.add_noise(photos, s, seed=4))["swd"] for s in (0.02, 0.05, 0.1)]
    assert 0 < swd[0] < swd[1] < swd[2], swd


# --- streaming ---------------------------------------------------------------------------------


def test_batch_split_and_order_do_not_matter(photos):
    fake = mi.add_noise(mi.gaussian_blur(photos, 1.0), 0.02, seed=6)
    single = _swd(photos, fake)
    acc = PatchSWD()
    for idx in ([5, 2], [7], [0, 6, 1], [4, 3]):
        acc.update([KEYS[i] for i in idx], photos[idx], fake[idx])
    assert acc.compute() == single  # bit-equal floats

    # Two "ranks", states through pickle (as all_gather_object does), merged either way round.
    parts = []
    for idx in ([1, 3, 5, 7], [6, 4, 2, 0]):
        part = PatchSWD()
        part.update([KEYS[i] for i in idx], photos[idx], fake[idx])
        parts.append(pickle.loads(pickle.dumps(part.state())))
    for first, second in (parts, parts[::-1]):
        merged = PatchSWD.from_state(first)
        merged.merge(PatchSWD.from_state(second))
        assert merged.num_samples == len(KEYS)
        assert merged.compute() == single


def test_bottom_k_cap_is_mergeable(photos):
    fake = mi.gaussian_blur(photos, 1.0)
    full = PatchSWD(max_patches=300)  # 8 images × 128 = 1024 descriptors per level before the cap
    full.update(KEYS, photos, fake)
    assert all(len(level["priority"]) == 300 for level in full.state()["levels"])
    merged = PatchSWD(max_patches=300)
    for idx in ([2, 5, 7], [0], [1, 3, 4, 6]):
        part = PatchSWD(max_patches=300)
        part.update([KEYS[i] for i in idx], photos[idx], fake[idx])
        merged.merge(PatchSWD.from_state(part.state()))
    assert merged.compute() == full.compute()
    uncapped = _swd(photos, fake)
    assert merged.compute() != uncapped  # the cap really dropped descriptors


def test_repeated_keys_are_ignored(photos):
    fake = mi.gaussian_blur(photos, 2.0)
    once = _swd(photos, fake)
    acc = PatchSWD()
    acc.update(KEYS, photos, fake)
    acc.update(KEYS[:3], photos[:3], fake[:3])  # e.g. DistributedSampler padding
    other = PatchSWD()
    other.update(KEYS[2:4], photos[2:4], fake[2:4])
    acc.merge(other)
    assert acc.num_samples == len(KEYS)
    assert acc.compute() == once


def test_video_frames_are_images(photos):
    real = photos.view(4, 2, 3, 64, 64).transpose(1, 2)  # 4 videos × 2 frames
    fake = mi.gaussian_blur(photos, 1.0).view(4, 2, 3, 64, 64).transpose(1, 2)
    keys = [f"video/{i}" for i in range(4)]
    acc = PatchSWD()
    acc.update(keys, real, fake)
    assert all(len(level["priority"]) == 4 * 2 * 128 for level in acc.state()["levels"])
    result = acc.compute()
    assert result["swd"] > 0
    split = PatchSWD()
    for i in (3, 1, 0, 2):
        split.update([keys[i]], real[i : i + 1], fake[i : i + 1])
    assert split.compute() == result
    same = PatchSWD()
    same.update(keys, real, real.clone())
    assert same.compute()["swd"] == 0.0


def test_input_errors(photos):
    with pytest.raises(ValueError, match="at least 1 sample"):
        PatchSWD().compute()
    acc = PatchSWD()
    acc.update(KEYS[:1], photos[:1], photos[:1])
    assert acc.compute()["swd"] == 0.0  # one image's patches are already a distribution
    with pytest.raises(ValueError, match="same size"):
        acc.update(["other"], photos[:1, :, :32, :32], photos[:1, :, :32, :32])
    with pytest.raises(ValueError, match="keys"):
        acc.update(KEYS[:1], photos[:2], photos[:2])
    with pytest.raises(ValueError, match="merge"):
        acc.merge(PatchSWD(seed=1))
