"""Shared fixtures: tiny configurations that run in milliseconds on a CPU."""

import os

import pytest
import torch

# Without a GPU, Triton (where installed: the test extra on Linux x86-64) runs model/kernels.py's
# kernels in its interpreter, so tests/model/test_kernels.py checks them on CPU too. Triton reads
# this when a kernel is defined, so it must be set before vitok is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from vitok.model import ViTok, ViTokConfig  # noqa: E402


def tiny_config(**overrides) -> ViTokConfig:
    """A two-block-per-side tokenizer small enough for CPU tests."""
    fields = dict(encoder_width=32, encoder_depth=1, encoder_heads=2, decoder_width=48, decoder_depth=2,
                  decoder_heads=4, patch_size=8, channels=4, image_size=32)
    fields.update(overrides)
    return ViTokConfig(**fields)


@pytest.fixture
def tiny_image_model() -> ViTok:
    torch.manual_seed(0)
    return ViTok(tiny_config()).eval()


@pytest.fixture
def tiny_video_model() -> ViTok:
    torch.manual_seed(0)
    return ViTok(tiny_config(temporal_patch=2, frames=4)).eval()


@pytest.fixture
def checkpoint(tmp_path):
    """The tiny image tokenizer saved as a checkpoint folder (tmp_path/ckpt)."""
    torch.manual_seed(0)
    ViTok(tiny_config()).save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def run_ranks(args: list[str], world: int) -> list[str]:
    """`python -m vitok ARGS` as `world` gloo processes (torchrun's environment); returns their outputs."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, "-m", "vitok", *args], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outputs = []
    for proc in procs:
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output
        outputs.append(output)
    return outputs


def use_offline_hub_cache(root, monkeypatch):
    """An empty Hugging Face cache under root/hf/hub, used offline (HF_HUB_OFFLINE=1); returns the cache folder."""
    from huggingface_hub import constants

    cache = root / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(root / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub (2.x as installed here, and earlier releases) reads both variables once, at import.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def write_hub_repo(cache, repo: str, commit: str, sources, linked: bool = True):
    """models--OWNER--NAME with refs/main -> commit and snapshots/commit/<file> for each source file.

    huggingface_hub stores each file once under blobs/ (named by its hash) and links it from the
    snapshot with a relative symlink; where links are unavailable it keeps real files in the snapshot.
    """
    import hashlib
    import shutil
    from pathlib import Path

    root = cache / ("models--" + repo.replace("/", "--"))
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (root / "blobs").mkdir()
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    for source in sources:
        if linked:
            blob = root / "blobs" / hashlib.sha256(source.read_bytes()).hexdigest()
            shutil.copyfile(source, blob)
            (snapshot / source.name).symlink_to(Path("..", "..", "blobs", blob.name))
        else:
            shutil.copyfile(source, snapshot / source.name)
    return snapshot
