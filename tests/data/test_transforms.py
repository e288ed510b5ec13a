"""Tests for vitok.data.transforms: crop boxes, resized crops of images and clips, flips, the held-out split."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vitok.data.images import load_image, bundled_photos, resize_center_crop
from vitok.data.transforms import (
    TrainAugment,
    center_crop,
    center_crop_clip,
    random_crop_box,
    random_flip,
    random_resized_crop,
    random_resized_crop_clip,
    sample_rng,
    split_holdout,
    stable_seed,
)

SCALE, RATIO = (0.5, 1.0), (3 / 4, 4 / 3)


def ramp(h: int, w: int) -> np.ndarray:
    """R = column index, G = row index, B = 0: every pixel names its own position (w, h <= 256)."""
    ys, xs = np.mgrid[0:h, 0:w]
    return np.stack([xs, ys, np.zeros_like(xs)], axis=-1).astype(np.uint8)


@pytest.mark.parametrize("h,w", [(48, 64), (120, 50), (64, 64), (9, 7)])
def test_crop_box_inside_with_requested_area_and_aspect(h, w):
    for seed in range(200):
        top, left, bh, bw = random_crop_box(h, w, SCALE, RATIO, np.random.default_rng(seed))
        assert 0 <= top and top + bh <= h and 0 <= left and left + bw <= w and bh >= 1 and bw >= 1
        if min(h, w) >= 48:  # rounding to whole pixels blurs area and aspect on tiny images
            assert SCALE[0] * 0.95 <= bh * bw / (h * w) <= 1.0
            assert RATIO[0] * 0.95 <= bw / bh <= RATIO[1] * 1.05


def test_crop_box_fallback_is_centred_with_clamped_aspect():
    # A 10×100 strip cannot hold any box of aspect <= 4/3 covering half its area: 10 misses, then the fallback.
    top, left, bh, bw = random_crop_box(10, 100, SCALE, RATIO, np.random.default_rng(0))
    assert (bh, bw) == (10, 13) and top == 0 and left == (100 - 13) // 2


def test_random_resized_crop_shows_the_drawn_box():
    img = ramp(200, 256)
    for seed in range(20):
        top, left, bh, bw = random_crop_box(200, 256, SCALE, RATIO, np.random.default_rng(seed))
        out = random_resized_crop(img, 24, SCALE, RATIO, rng=np.random.default_rng(seed))
        assert out.shape == (24, 24, 3) and out.dtype == np.uint8
        # A linear ramp resized stays linear: its mean is the box centre in source pixels.
        assert abs(out[..., 0].mean() - (left + (bw - 1) / 2)) < 1.0
        assert abs(out[..., 1].mean() - (top + (bh - 1) / 2)) < 1.0


def test_small_image_is_upsampled():
    out = random_resized_crop(ramp(12, 10), 32, rng=np.random.default_rng(0))
    assert out.shape == (32, 32, 3)


def test_clip_uses_one_box_for_every_frame():
    base = load_image(bundled_photos()[0])[:96, :128]
    frames = np.stack([np.roll(base, 7 * t, axis=1) for t in range(4)])  # different content per frame
    clip = random_resized_crop_clip(frames, 20, SCALE, RATIO, rng=np.random.default_rng(3))
    assert clip.shape == (4, 20, 20, 3) and clip.dtype == np.uint8
    for t in range(4):  # the same generator state draws the same box for a single frame
        np.testing.assert_array_equal(clip[t], random_resized_crop(frames[t], 20, SCALE, RATIO,
                                                                    rng=np.random.default_rng(3)))


def test_flip_is_a_mirror_driven_by_the_rng():
    img = load_image(bundled_photos()[1])[:40, :56]
    clip = np.stack([img, img[::-1]])
    outcomes = set()
    for seed in range(16):
        out = random_flip(img, np.random.default_rng(seed))
        flipped = not np.array_equal(out, img)
        if flipped:
            np.testing.assert_array_equal(out, img[:, ::-1])
        # Same draw for a clip: its frames flip together, along width.
        out_clip = random_flip(clip, np.random.default_rng(seed))
        np.testing.assert_array_equal(out_clip, clip[:, :, ::-1] if flipped else clip)
        outcomes.add(flipped)
    assert outcomes == {True, False}


def test_augment_flip_mirrors_the_same_crop():
    img = load_image(bundled_photos()[2])
    plain, flipping = TrainAugment(16, flip=False), TrainAugment(16, flip=True)
    for seed in range(8):
        a = plain(img, np.random.default_rng(seed))
        b = flipping(img, np.random.default_rng(seed))
        assert np.array_equal(b, a) or np.array_equal(b, a[:, ::-1])


def test_deterministic_given_the_seed():
    img = load_image(bundled_photos()[3])
    augment = TrainAugment(32)
    a = augment(img, sample_rng(0, 1, 2))
    np.testing.assert_array_equal(a, augment(img, sample_rng(0, 1, 2)))
    assert not np.array_equal(a, augment(img, sample_rng(0, 1, 3)))


def test_center_crop_matches_resize_center_crop():
    img = load_image(bundled_photos()[4])
    np.testing.assert_array_equal(center_crop(img, 24), resize_center_crop(img, 24))
    frames = np.stack([img, img[:, ::-1]])
    np.testing.assert_array_equal(center_crop_clip(frames, 24), [resize_center_crop(f, 24) for f in frames])
    # A centre crop without flip ignores the rng.
    augment = TrainAugment(24, crop="center", flip=False)
    np.testing.assert_array_equal(augment(img, np.random.default_rng(5)), resize_center_crop(img, 24))


def test_argument_checks():
    img = ramp(20, 20)
    with pytest.raises(ValueError, match="scale"):
        random_resized_crop(img, 8, scale=(0.0, 1.0), rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="ratio"):
        random_resized_crop(img, 8, ratio=(2.0, 1.0), rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="crop"):
        TrainAugment(8, crop="middle")
    with pytest.raises(ValueError, match="T×H×W×3"):
        random_resized_crop_clip(img, 8, rng=np.random.default_rng(0))


def test_stable_seed_is_the_same_in_another_process():
    here = stable_seed(7, "shard-000.tar", "a.jpg", 3)
    assert here == stable_seed(np.int64(7), "shard-000.tar", "a.jpg", np.int32(3))
    code = "from vitok.data.transforms import stable_seed; print(stable_seed(7, 'shard-000.tar', 'a.jpg', 3))"
    # A different string-hash salt in the child: Python's own hash() would change, ours must not.
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert int(out.stdout) == here


def touch(root: Path, names: list[str]) -> list[Path]:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    return sorted(root / n for n in names)


def test_split_holdout_disjoint_complete_and_stable(tmp_path):
    files = touch(tmp_path / "a", [f"img{i:03d}.jpg" for i in range(40)] + ["sub/x.png", "sub/y.png"])
    train, held = split_holdout(files, 5, seed=1, root=tmp_path / "a")
    assert len(held) == 5 and sorted(train + held) == files and not set(train) & set(held)
    assert train == sorted(train) and held == sorted(held)  # input order kept
    assert split_holdout(files, 5, 1, tmp_path / "a") == (train, held)
    assert split_holdout(files, 5, 2, tmp_path / "a")[1] != held

    # The split follows relative paths, so the same folder elsewhere splits the same way.
    moved = touch(tmp_path / "b", [f.relative_to(tmp_path / "a").as_posix() for f in files])
    assert [p.name for p in split_holdout(moved, 5, 1, tmp_path / "b")[1]] == [p.name for p in held]

    # Adding files never moves a training file to the held-out set; held-out places only go to newcomers.
    added = touch(tmp_path / "a", [f"new{i:03d}.jpg" for i in range(20)])
    train2, held2 = split_holdout(sorted(files + added), 5, seed=1, root=tmp_path / "a")
    assert set(train) <= set(train2)
    assert set(held2) <= set(held) | set(added)


def test_split_holdout_edges(tmp_path):
    files = touch(tmp_path, ["a.jpg", "b.jpg", "c.jpg"])
    assert split_holdout(files, 0, 0, tmp_path) == (files, [])
    assert len(split_holdout(files, 2, 0, tmp_path)[0]) == 1
    with pytest.raises(ValueError, match="holdout 3 .* only 3 files"):
        split_holdout(files, 3, 0, tmp_path)
    with pytest.raises(ValueError, match=">= 0"):
        split_holdout(files, -1, 0, tmp_path)
