"""`vitok prepare`: resized shards that the training loader and the latent store read, resumable."""

from __future__ import annotations

import io
import json
import shutil
import tarfile

import numpy as np
import pytest
from PIL import Image

from vitok.cli import main
from vitok.data.images import bundled_photos, load_image
from vitok.data.prepare import prepare, shard_name
from vitok.data.training import make_train_loader


@pytest.fixture
def photos(tmp_path):
    root = tmp_path / "photos"
    for i, path in enumerate(bundled_photos()):
        folder = root / ("cats" if i % 2 else "dogs")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / path.name)
    Image.new("RGB", (40, 30), (10, 200, 10)).save(root / "dogs" / "small.png")  # smaller than --size: kept
    (root / "cats" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return root


def members(shard):
    with tarfile.open(shard) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}


def test_prepare_writes_resized_shards(photos, tmp_path):
    out = tmp_path / "shards"
    index = prepare(photos, out, 64, shard_size=5, labels=True, log=lambda line: None)
    files = sorted(p for p in photos.rglob("*") if p.is_file())
    assert index["files"] == len(files) == 15 and index["samples"] == 14 and len(index["shards"]) == 3
    assert [s["file"] for s in index["skipped_files"]] == [str(photos / "cats" / "broken.jpg")]
    assert json.loads((out / "prepare.json").read_text()) == json.loads(json.dumps(index))
    seen = {}
    for n in range(3):
        for name, data in members(out / shard_name(n)).items():
            seen[name] = data
    images = {k: v for k, v in seen.items() if k.endswith(".jpg")}
    labels = {k[:-4]: v.decode() for k, v in seen.items() if k.endswith(".cls")}
    assert len(images) == 14 and set(labels.values()) == {"cats", "dogs"}
    for name, data in images.items():
        key = name[:-4]
        assert "." not in key and "/" not in key
        img = np.array(Image.open(io.BytesIO(data)))
        original = next(p for p in files if key.endswith(p.stem.replace(".", "_")))
        h, w = load_image(original).shape[:2]
        if min(h, w) > 64:
            assert min(img.shape[:2]) == 64 and abs(img.shape[1] / img.shape[0] - w / h) < 0.05
        else:
            assert img.shape[:2] == (h, w)  # never upsampled
        assert labels[key] == original.parent.name
    # The training loader reads them.
    loader, _, info = make_train_loader(out, size=32, batch_size=4, holdout=0)
    batch = next(iter(loader))
    assert batch["pixels"].shape == (4, 3, 32, 32)


def test_prepare_resumes_and_rewrites_a_damaged_shard(photos, tmp_path, capsys):
    out = tmp_path / "shards"
    assert main(["prepare", str(photos), "--out", str(out), "--size", "48", "--shard-size", "6",
                 "--workers", "0"]) == 0
    assert "skipped 1 unreadable" in capsys.readouterr().err
    first = (out / shard_name(0)).stat().st_mtime_ns
    data = (out / shard_name(1)).read_bytes()
    (out / shard_name(1)).write_bytes(data[: len(data) // 2])  # cut short, as by a full disk
    lines = []
    index = prepare(photos, out, 48, shard_size=6, log=lines.append)
    assert lines[0].endswith("2 already written") and lines[1].startswith(shard_name(1))
    assert (out / shard_name(0)).stat().st_mtime_ns == first
    assert members(out / shard_name(1)).keys() and index["samples"] == 14
    assert not any(name.endswith(".cls") for name in members(out / shard_name(0)))  # no --labels


def test_prepare_errors(photos, tmp_path):
    with pytest.raises(ValueError, match="inside the source"):
        prepare(photos, photos / "shards", 64)
    with pytest.raises(ValueError, match="positive number of pixels"):
        prepare(photos, tmp_path / "o", 0)
    with pytest.raises(ValueError, match="--format"):
        prepare(photos, tmp_path / "o", 64, fmt="gif")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        prepare(tmp_path / "empty", tmp_path / "o", 64)
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(bundled_photos()[0], flat / "a.jpg")
    with pytest.raises(ValueError, match="class sub-folder"):
        prepare(flat, tmp_path / "o", 64, labels=True)
