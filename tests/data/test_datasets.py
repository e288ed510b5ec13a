"""Tar shards split over ranks and loader workers, the global --limit, and which sources open_dataset accepts."""

import io
import tarfile
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from vitok.data import datasets
from vitok.data.datasets import TarShards, collate, open_dataset, reader_limit

SHARDS, PER_SHARD = 5, 3  # uneven on purpose: 5 shards over 2, 3, 4 or 6 readers


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def shards(tmp_path):
    """SHARDS tar files of PER_SHARD 8x8 PNGs each; every key is unique."""
    paths = []
    for s in range(SHARDS):
        path = tmp_path / f"shard{s:02d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(PER_SHARD):
                data = _png(s * PER_SHARD + i)
                info = tarfile.TarInfo(f"img{i}.png")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths


def _keys_read(paths, world: int, workers: int, limit=None, monkeypatch=None) -> list[list[str]]:
    """Keys each (rank, worker) reader yields, with the DataLoader's worker info simulated."""
    out = []
    for rank in range(world):
        for worker in range(workers):
            monkeypatch.setattr(datasets, "get_worker_info", lambda: SimpleNamespace(id=worker, num_workers=workers))
            out.append([item["key"] for item in TarShards(paths, 8, rank=rank, world=world, limit=limit)])
    return out


@pytest.mark.parametrize("world,workers", [(1, 1), (1, 2), (2, 1), (2, 2), (3, 2), (2, 3)])
def test_readers_split_the_shards_without_duplicates_or_gaps(shards, world, workers, monkeypatch):
    per_reader = _keys_read(shards, world, workers, monkeypatch=monkeypatch)
    keys = [k for reader in per_reader for k in reader]
    expected = {f"shard{s:02d}.tar/img{i}.png" for s in range(SHARDS) for i in range(PER_SHARD)}
    assert len(keys) == len(set(keys)) == len(expected) and set(keys) == expected


@pytest.mark.parametrize("world,workers,limit", [(1, 1, 7), (2, 1, 5), (2, 2, 7), (1, 2, 1), (2, 2, 2), (5, 1, 9),
                                                 (2, 2, 100), (1, 1, 0)])
def test_limit_is_a_global_cap_over_all_readers(shards, world, workers, limit, monkeypatch):
    per_reader = _keys_read(shards, world, workers, limit=limit, monkeypatch=monkeypatch)
    keys = [k for reader in per_reader for k in reader]
    assert len(keys) == len(set(keys)) == min(limit, SHARDS * PER_SHARD)
    # Reader i gets limit // readers, one more for the first limit % readers (capped by what it has).
    readers = world * workers
    for i, reader in enumerate(per_reader):
        available = len(shards[i::readers]) * PER_SHARD
        assert len(reader) == min(limit // readers + (i < limit % readers), available)


def test_reader_limit_shares_add_up():
    for limit in range(0, 30):
        for readers in range(1, 9):
            shares = [reader_limit(limit, i, readers) for i in range(readers)]
            assert sum(shares) == limit and max(shares) - min(shares) <= 1


def test_real_loader_workers_and_ranks_read_each_sample_once_within_the_limit(shards):
    """Two ranks of two real DataLoader worker processes each."""
    keys = []
    for rank in range(2):
        dataset = open_dataset(shards[0].parent / "*.tar", 8, limit=10, rank=rank, world=2)
        for batch in DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=collate):
            keys += batch["keys"]
            assert batch["pixels"].dtype == torch.uint8
    assert len(keys) == len(set(keys)) == 10


def test_video_models_need_a_folder_of_videos_not_tar_shards(shards, tmp_path):
    for source in (shards[0], shards[0].parent / "*.tar", shards[0].parent):
        with pytest.raises(ValueError, match="video evaluation needs a folder of video files"):
            open_dataset(source, 8, frames=4)
    # The same sources still open as images.
    assert isinstance(open_dataset(shards[0].parent, 8), TarShards)
