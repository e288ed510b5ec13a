"""Shared settings and fixtures for the training tests."""

import shutil
import socket

import pytest

from vitok.data.images import bundled_photos

# A tokenizer small enough that a handful of steps take about a second on two CPU cores.
TINY = [
    "model.name=T-T/8", "model.encoder_width=64", "model.encoder_depth=1", "model.encoder_heads=2",
    "model.decoder_width=64", "model.decoder_depth=1", "model.decoder_heads=2", "model.channels=4",
    "model.image_size=32", "loss.disc_channels=8", "loss.disc_max_channels=16", "loss.r1_every=2",
    "train.batch_size=4", "data.workers=0", "data.holdout=2", "data.eval_limit=4", "train.log_every=1",
    "train.eval_every=0", "train.image_every=1000", "train.progress=false", "optim.warmup_steps=2",
    "optim.disc_warmup_steps=1", "optim.lr=1.0e-3", "train.ema_decay=0.9", "train.device=cpu",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def photo_folder(tmp_path):
    """The bundled photos plus one zero-byte and one truncated file that training must skip."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in bundled_photos():
        shutil.copy(path, folder / path.name)
    (folder / "empty.jpg").write_bytes(b"")
    data = bundled_photos()[0].read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    return folder
