"""Tests for vitok.data.training: exact resume, DDP equivalence, skips and shards of the training stream."""

from __future__ import annotations

import io
import shutil
import tarfile
from collections import Counter
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitok.data.images import bundled_photos, load_image, resize_center_crop
from vitok.data.training import TrainImages, TrainSampler, TrainShards, TrainVideos, make_train_loader

SIZE = 16


def batches(loader, count: int) -> list[dict]:
    return list(islice(iter(loader), count))


def assert_same_batches(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g["keys"] == w["keys"] and g["skipped"] == w["skipped"]
        torch.testing.assert_close(g["pixels"], w["pixels"], rtol=0, atol=0)


def small_jpeg(photo: Path, side: int = 48) -> bytes:
    """A photo shrunk to side×side and re-encoded, so decoding in tests costs next to nothing."""
    buf = io.BytesIO()
    Image.fromarray(resize_center_crop(load_image(photo), side)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for i, photo in enumerate(bundled_photos()):
        (root / f"{i}_{photo.stem}.jpg").write_bytes(small_jpeg(photo))
    return root


# --- TrainSampler -------------------------------------------------------------------------------

def sampler_batches(n: int, b: int, steps: int, rank: int = 0, world: int = 1, start_step: int = 0,
                    seed: int = 0) -> list[list[tuple[int, int]]]:
    stream = list(islice(TrainSampler(n, b, seed, rank, world, start_step), steps * b))
    return [stream[i * b:(i + 1) * b] for i in range(steps)]


def test_sampler_two_ranks_equal_one_rank_with_double_batch():
    single = sampler_batches(11, 6, steps=9)
    rank0 = sampler_batches(11, 3, steps=9, rank=0, world=2)
    rank1 = sampler_batches(11, 3, steps=9, rank=1, world=2)
    for s in range(9):
        assert rank0[s] + rank1[s] == single[s]  # chunk order, so also the same multiset


def test_sampler_every_index_once_per_epoch():
    n, b, world, steps = 7, 2, 3, 12  # global batch 6 does not divide 7: batches span epochs
    per_rank = [sampler_batches(n, b, steps, rank=r, world=world) for r in range(world)]
    stream = [item for s in range(steps) for r in range(world) for item in per_rank[r][s]]
    for position, (_, epoch) in enumerate(stream):
        assert epoch == position // n
    epochs = Counter(e for _, e in stream)
    for e in range(len(stream) // n):
        assert epochs[e] == n and sorted(i for i, ee in stream if ee == e) == list(range(n))
    assert [i for i, e in stream if e == 0] != [i for i, e in stream if e == 1]  # reshuffled


def test_sampler_resume_continues_the_unbroken_stream():
    for rank, world in [(0, 1), (1, 2)]:
        unbroken = sampler_batches(10, 4, steps=12, rank=rank, world=world)
        for start in (1, 5, 9):
            assert sampler_batches(10, 4, 12 - start, rank, world, start_step=start) == unbroken[start:]


def test_sampler_seed_and_argument_checks():
    assert sampler_batches(20, 5, 2, seed=0) != sampler_batches(20, 5, 2, seed=1)
    with pytest.raises(ValueError, match="rank"):
        TrainSampler(10, 2, rank=2, world=2)
    with pytest.raises(ValueError, match="per rank"):
        TrainSampler(10, 0)
    with pytest.raises(ValueError, match="empty"):
        TrainSampler(0, 2)


# --- image folders ------------------------------------------------------------------------------

def image_loader(source, **kw):
    kw = {"size": SIZE, "batch_size": 3, "seed": 5, "pin_memory": False, **kw}
    return make_train_loader(source, **kw)


def test_images_same_sample_same_pixels(photo_dir):
    files = sorted(photo_dir.iterdir())
    a, b = TrainImages(files, SIZE, seed=3), TrainImages(files, SIZE, seed=3)
    torch.testing.assert_close(a[(2, 4)]["pixels"], b[(2, 4)]["pixels"], rtol=0, atol=0)
    assert not torch.equal(a[(2, 4)]["pixels"], a[(2, 5)]["pixels"])  # another epoch, another view
    assert a[(2, 4)]["pixels"].shape == (3, SIZE, SIZE) and a[(2, 4)]["pixels"].dtype == torch.uint8


def test_image_loader_same_batches_with_0_and_2_workers(photo_dir):
    serial, _, info = image_loader(photo_dir, workers=0)
    parallel, _, _ = image_loader(photo_dir, workers=2)
    assert info["kind"] == "images" and info["samples_per_epoch"] == len(bundled_photos()) and info["global_batch"] == 3
    want = batches(serial, 6)
    assert want[0]["pixels"].shape == (3, 3, SIZE, SIZE) and want[0]["pixels"].dtype == torch.uint8
    assert_same_batches(batches(parallel, 6), want)


def test_image_loader_ddp_equivalence_and_resume(photo_dir):
    single = batches(image_loader(photo_dir, batch_size=4)[0], 8)
    ranks = [batches(image_loader(photo_dir, batch_size=2, rank=r, world=2)[0], 8) for r in range(2)]
    for s in range(8):
        assert ranks[0][s]["keys"] + ranks[1][s]["keys"] == single[s]["keys"]
        torch.testing.assert_close(torch.cat([ranks[0][s]["pixels"], ranks[1][s]["pixels"]]),
                                   single[s]["pixels"], rtol=0, atol=0)
    resumed = batches(image_loader(photo_dir, batch_size=4, start_step=5)[0], 3)
    assert_same_batches(resumed, single[5:])


def test_bad_images_are_skipped_and_named(photo_dir, tmp_path):
    for photo in sorted(photo_dir.iterdir())[:3]:
        shutil.copy(photo, tmp_path)
    (tmp_path / "empty.jpg").write_bytes(b"")
    data = small_jpeg(bundled_photos()[0])
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    loader, _, _ = image_loader(tmp_path, batch_size=5)
    skipped, kept = [], 0
    for batch in batches(loader, 2):  # 10 slots: one full epoch of 5 files and then some
        assert batch["pixels"].shape[0] + len(batch["skipped"]) == 5  # a skip keeps its slot
        skipped += batch["skipped"]
        kept += batch["pixels"].shape[0]
    reasons = {Path(s["file"]).name: s["reason"] for s in skipped}
    assert set(reasons) == {"empty.jpg", "truncated.jpg"}
    assert "0 bytes" in reasons["empty.jpg"] and "not a readable image" in reasons["truncated.jpg"]
    assert kept == 10 - len(skipped)


def test_unusable_and_empty_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        image_loader(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("a.jpg", "b.png"):
        (bad / name).write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"all failed to load(.|\n)*a\.jpg(.|\n)*b\.png"):
        image_loader(bad)
    with pytest.raises(ValueError, match="neither a folder nor"):
        image_loader(tmp_path / "missing")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        image_loader(bad, rank=1, world=1)


def test_image_holdout_is_a_centre_crop_set_outside_training(photo_dir):
    loader, heldout, info = image_loader(photo_dir, holdout=2, batch_size=5)
    assert info["train_files"] == len(bundled_photos()) - 2 and info["heldout_files"] == 2 and len(heldout) == 2
    held_keys = {heldout[i]["key"] for i in range(2)}
    epoch = -(-(len(bundled_photos()) - 2) // 5)  # batches covering one epoch of the training files
    trained = {k for batch in batches(loader, epoch) for k in batch["keys"]}
    assert len(trained) == len(bundled_photos()) - 2 and not trained & held_keys
    for i in range(2):
        item = heldout[i]
        want = resize_center_crop(load_image(item["key"]), SIZE).transpose(2, 0, 1)
        np.testing.assert_array_equal(item["pixels"].numpy(), want)
    assert image_loader(photo_dir)[1] is None  # holdout 0: no held-out set


# --- tar shards ---------------------------------------------------------------------------------

def write_shard(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def make_shards(root: Path, sizes: list[int], broken: str | None = None) -> list[Path]:
    """Shards shard-KK.tar holding sizes[k] images KKMM.jpg (plus a .cls sidecar each, which is ignored)."""
    root.mkdir(parents=True, exist_ok=True)
    photos = [small_jpeg(p, 32) for p in bundled_photos()]
    shards = []
    for k, count in enumerate(sizes):
        members = {}
        for m in range(count):
            data = photos[(k + m) % len(photos)]
            key = f"{k:02d}{m:02d}"
            members[f"{key}.jpg"] = data[: len(data) // 3] if key == broken else data
            members[f"{key}.cls"] = b"3"
        shards.append(write_shard(root / f"shard-{k:02d}.tar", members))
    return shards


def shard_loader(source, **kw):
    kw = {"size": SIZE, "batch_size": 3, "seed": 1, "pin_memory": False, **kw}
    return make_train_loader(source, **kw)


def test_shards_cover_each_epoch_once_across_2_ranks_x_2_workers(tmp_path):
    shards = make_shards(tmp_path, [3] * 8)  # 4 readers × 2 shards × 3 members: 2 batches of 3 per reader-epoch
    everything = sorted(f"{s.name}/{k:02d}{m:02d}.jpg" for k, s in enumerate(shards) for m in range(3))
    runs = [batches(shard_loader(tmp_path, rank=r, world=2, workers=2)[0], 8) for r in range(2)]
    for epoch in range(2):
        keys = [k for run in runs for batch in run[4 * epoch:4 * epoch + 4] for k in batch["keys"]]
        assert sorted(keys) == everything  # no duplicates, no gaps
    first = [k for run in runs for batch in run[:4] for k in batch["keys"]]
    second = [k for run in runs for batch in run[4:] for k in batch["keys"]]
    assert first != second  # the shard order is reshuffled per epoch


@pytest.mark.parametrize("workers", [0, 2])
def test_shards_resume_equals_tail_of_unbroken_run(tmp_path, workers):
    # Uneven shards and a batch that does not divide them: batches span shards and epochs.
    make_shards(tmp_path, [2, 5, 3, 4, 3], broken="0102")
    unbroken = batches(shard_loader(tmp_path, batch_size=2, workers=workers)[0], 14)
    skipped = [s["file"] for batch in unbroken for s in batch["skipped"]]
    assert "shard-01.tar/0102.jpg" in skipped
    for start in (3, 8):
        resumed = batches(shard_loader(tmp_path, batch_size=2, workers=workers, start_step=start)[0], 14 - start)
        assert_same_batches(resumed, unbroken[start:])


def test_too_few_shards_is_a_clear_error(tmp_path):
    make_shards(tmp_path, [2, 2, 2])
    with pytest.raises(ValueError, match=r"3 training tar shards .* 4 readers .*at least 4 shards.*fewer workers"):
        shard_loader(tmp_path, rank=0, world=2, workers=2)
    dataset = TrainShards(sorted(tmp_path.glob("*.tar")), SIZE, 2, world=4)
    with pytest.raises(ValueError, match="4 readers"):
        next(iter(dataset))


def test_shard_loader_sources_and_holdout(tmp_path):
    shards = make_shards(tmp_path / "s", [3, 3, 4])
    loader, heldout, info = shard_loader(str(tmp_path / "s" / "shard-*.tar"), holdout=2)
    assert info["kind"] == "shards" and info["train_files"] == 2 and info["heldout_files"] == 1
    held = list(heldout)
    assert len(held) == 2 and all(item["key"].startswith("shard-02.tar/") for item in held)
    assert held[0]["pixels"].shape == (3, SIZE, SIZE)
    batch = next(iter(loader))
    assert batch["pixels"].shape == (3, 3, SIZE, SIZE) and batch["pixels"].dtype == torch.uint8
    assert not any(k.startswith("shard-02.tar/") for b in batches(loader, 4) for k in b["keys"])
    # One .tar path, or a folder of them; a single shard has no held-out set.
    single, heldout, _ = shard_loader(shards[0], holdout=2)
    assert heldout is None and all(k.startswith("shard-00.tar/") for k in next(iter(single))["keys"])
    _, _, info = shard_loader(tmp_path / "s")
    assert info["train_files"] == 3
    with pytest.raises(ValueError, match="no tar shards match"):
        shard_loader(str(tmp_path / "none-*.tar"))


# --- video folders ------------------------------------------------------------------------------

T, STEP = 12, 20  # frames per video; red level per frame


def synthetic_video(t: int = T, h: int = 32, w: int = 40) -> np.ndarray:
    """Red = STEP × frame index everywhere (names the frame under any crop); green/blue = a static ramp."""
    ys, xs = np.mgrid[0:h, 0:w]
    v = np.zeros((t, h, w, 3), np.uint8)
    v[..., 0] = (STEP * np.arange(t))[:, None, None]
    v[..., 1] = 40 + 4 * xs
    v[..., 2] = 40 + 5 * ys
    return v


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory) -> Path:
    from vitok.data.video import write_video

    root = tmp_path_factory.mktemp("videos")
    for i in range(3):
        write_video(root / f"v{i}.mp4", synthetic_video())
    write_video(root / "short.mp4", synthetic_video(t=3))
    return root


def test_video_clips_share_one_crop_and_follow_the_stride(video_dir):
    files = sorted(video_dir.glob("v*.mp4"))
    dataset = TrainVideos(files, SIZE, frames=4, stride=2, seed=0)
    starts = set()
    for epoch in range(4):
        for i in range(len(files)):
            item = dataset[(i, epoch)]
            clip = item["pixels"].float()  # 3×T×H×W
            assert item["pixels"].shape == (3, 4, SIZE, SIZE) and item["pixels"].dtype == torch.uint8
            index = clip[0].mean(dim=(1, 2)) / STEP  # frame index from the red level
            start = int(round(index[0].item()))
            assert 0 <= start <= T - 7
            torch.testing.assert_close(index, start + 2 * torch.arange(4.0), atol=0.2, rtol=0)
            # Green and blue are static in the video, so one crop for all frames keeps them identical.
            assert (clip[1:, 1:] - clip[1:, :1]).abs().mean() < 3
            starts.add(start)
            torch.testing.assert_close(dataset[(i, epoch)]["pixels"], item["pixels"], rtol=0, atol=0)
    assert len(starts) > 1


def test_video_loader_skips_short_videos_and_holds_out_clips_from_the_start(video_dir):
    loader, heldout, info = make_train_loader(video_dir, size=SIZE, frames=4, stride=2, batch_size=2,
                                              holdout=1, seed=0, pin_memory=False)
    assert info["kind"] == "videos" and info["train_files"] == 3 and len(heldout) == 1
    held = heldout[0]
    assert Path(held["key"]).name == "v2.mp4"  # what holdout_seed 0 picks among the four files
    index = held["pixels"][0].float().mean(dim=(1, 2)) / STEP
    torch.testing.assert_close(index, 2 * torch.arange(4.0), atol=0.2, rtol=0)  # frames 0, 2, 4, 6
    skipped, keys = [], []
    for batch in batches(loader, 3):  # 6 slots: two epochs of short, v0, v1
        assert batch["pixels"].shape[1:] == (3, 4, SIZE, SIZE)
        skipped += batch["skipped"]
        keys += [Path(k).name for k in batch["keys"]]
    assert sorted(keys) == ["v0.mp4", "v0.mp4", "v1.mp4", "v1.mp4"]
    assert [Path(s["file"]).name for s in skipped] == ["short.mp4"] * 2
    assert "3 frames" in skipped[0]["reason"] and "need at least 7" in skipped[0]["reason"]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / mse) if mse else np.inf


@pytest.mark.parametrize("orientation, suffix", [(1, ".jpg"), (6, ".jpg"), (8, ".jpg"), (1, ".png")])
def test_reduced_decode_matches_full_decode(tmp_path, orientation, suffix):
    from PIL import Image

    from vitok.data.transforms import random_resized_crop

    big = Image.fromarray(load_image(bundled_photos()[0])).resize((1600, 1200), Image.Resampling.BICUBIC)
    path = tmp_path / f"big{suffix}"
    exif = Image.Exif()
    exif[0x0112] = orientation
    big.save(path, quality=95, exif=exif) if suffix == ".jpg" else big.save(path)
    data = TrainImages([path], 64, scale=(0.5, 1.0), flip=False, seed=1)
    full = load_image(path)  # EXIF applied: 1200x1600 for the quarter turns
    assert full.shape[:2] == ((1600, 1200) if orientation in (6, 8) else (1200, 1600))
    for epoch in range(4):
        fast = data[(0, epoch)]["pixels"].permute(1, 2, 0).numpy()
        # The reference: the same rng stream through the full-size decode.
        from vitok.data.transforms import sample_rng
        want = random_resized_crop(full, 64, (0.5, 1.0), (3 / 4, 4 / 3), rng=sample_rng(1, epoch, 0))
        assert fast.shape == want.shape == (64, 64, 3)
        if suffix == ".png":
            np.testing.assert_array_equal(fast, want)  # only JPEG decodes reduced
        else:
            # DCT-domain downscaling and box edges rounded to the reduced grid differ from a
            # bicubic resize of the full decode by a fraction of an output pixel; a wrong box
            # (e.g. axes swapped under EXIF rotation) would score around 15 dB.
            assert _psnr(fast, want) > 27, (epoch, _psnr(fast, want))
