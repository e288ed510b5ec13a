"""Training on the other data sources: a video folder (video model) and WebDataset tar shards."""

import io
import json
import tarfile

import numpy as np
import pytest

from vitok.data.images import bundled_photos, load_image
from vitok.model import ViTok
from vitok.train import load_config, train

from train_helpers import TINY

VIDEO = [o for o in TINY if not o.startswith(("model.name", "model.image_size"))] + [
    "model.name=T-T/2x8", "model.frames=4", "model.image_size=32", "loss.disc_video=frame"]


def test_video_model_trains_on_a_video_folder(tmp_path):
    av = pytest.importorskip("av")
    del av
    from vitok.data.video import write_video

    folder = tmp_path / "videos"
    rng = np.random.default_rng(0)
    for i, photo in enumerate(bundled_photos()[:4]):
        img = load_image(photo)[:96, :96]
        # A slow pan across a real photo: 12 frames of 64x64.
        frames = np.stack([img[k:k + 64, 2 * k:2 * k + 64] for k in range(12)])
        write_video(folder / f"clip{i}.mp4", frames)
    (folder / "broken.mp4").write_bytes(rng.integers(0, 255, 1000, dtype=np.uint8).tobytes())
    config = load_config(None, VIDEO + [f"data.source={folder}", "data.holdout=1", "train.stage1_steps=3",
                                        "train.stage2_steps=2", "train.checkpoint_every=5"])
    doc = train(config, out=tmp_path / "run")
    assert doc["steps"] == 5 and set(doc["metrics"]) == {"psnr", "ssim", "gmsd", "sharpness", "swd"}
    assert "rfvd" in doc["not_computed"] and "rfid" not in doc["not_computed"]
    assert any(s["file"].endswith("broken.mp4") for s in doc["skipped_files"])
    model = ViTok.from_pretrained(tmp_path / "run" / "model")
    assert model.config.is_video and model.config.frames == 4
    assert (tmp_path / "run" / "reconstructions.png").is_file()


def _write_shard(path, photos):
    with tarfile.open(path, "w") as tar:
        for photo in photos:
            data = photo.read_bytes()
            info = tarfile.TarInfo(f"{photo.stem}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_image_model_trains_on_tar_shards(tmp_path):
    photos = bundled_photos()
    for i in range(3):
        _write_shard(tmp_path / f"shard-{i}.tar", photos[2 * i:2 * i + 3])
    config = load_config(None, TINY + [f"data.source={tmp_path}/shard-*.tar", "data.holdout=3",
                                       "train.stage1_steps=3", "train.stage2_steps=0", "train.checkpoint_every=3"])
    doc = train(config, out=tmp_path / "run")
    assert doc["data"]["kind"] == "shards" and doc["data"]["train_files"] == 2
    assert doc["num_eval_samples"] == 3  # the last shard is held out
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines if "loss" in l] == [1, 2, 3]
