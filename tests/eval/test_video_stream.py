"""Long videos on real footage: chunked reconstruction against a direct computation, bounded memory,
the temporal metric against numpy, and `vitok reconstruct` with a video model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vitok.cli import main
from vitok.data.video import iter_frames, video_info
from vitok.eval import video_stream
from vitok.eval.video_stream import reconstruct_video
from vitok.metrics.temporal import border_transitions, temporal_report, temporal_rmse, transition_errors
from vitok.model import ViTok
from vitok.model.tiling import axis_tiles, ramp

from conftest import tiny_config

pytest.importorskip("av")
CLIP = Path(__file__).parents[1] / "data" / "fixtures" / "carphone_32f.mp4"


@pytest.fixture(scope="module")
def video_model():
    torch.manual_seed(0)
    return ViTok(tiny_config(temporal_patch=2, frames=4)).eval()


def test_temporal_metric_against_numpy():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 9, 8, 8, generator=g) * 2 - 1
    x_hat = x + 0.1 * torch.randn(x.shape, generator=g)
    xn, hn = x.double().numpy(), x_hat.double().numpy()
    e = ((np.diff(hn, axis=2) - np.diff(xn, axis=2)) ** 2).mean(axis=(1, 3, 4))
    np.testing.assert_allclose(transition_errors(x, x_hat).numpy(), e, rtol=1e-12)
    np.testing.assert_allclose(temporal_rmse(x, x_hat).numpy(), np.sqrt(e.mean(1)) * 127.5, rtol=1e-12)
    # A constant error does not flicker: 0.
    assert float(temporal_rmse(x, x + 0.2).max()) == pytest.approx(0, abs=1e-4)  # float32 rounding of x + 0.2
    report = temporal_report(x, x_hat, chunk=4, overlap=1)
    assert report["border_transitions"] == border_transitions(9, 4, 1) == [2, 3, 4, 6]  # chunks 0-3, 3-6, 5-8
    mask = np.zeros(8, bool)
    mask[[2, 3, 4, 6]] = True
    assert report["border_ratio"] == pytest.approx(e[:, mask].mean() / e[:, ~mask].mean(), rel=1e-12)
    # A jump at a chunk edge shows.
    jumped = x_hat.clone()
    jumped[:, :, 4:] += 0.3
    assert temporal_report(x, jumped, chunk=4, overlap=1)["border_ratio"] > 1.5  # one of the 4 edges jumps


def direct(model, frames: np.ndarray, chunk: int, overlap: int, q: int) -> np.ndarray:
    """The same chunked reconstruction, computed over the whole clip at once (the test's reference)."""
    x = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    T = x.shape[2]
    acc = torch.zeros(x.shape[1:], dtype=torch.float64)
    weight = torch.zeros(T, dtype=torch.float64)
    for start, length, before, after in axis_tiles(T // q, chunk // q, overlap // q):
        lo, hi = start * q, (start + length) * q
        with torch.no_grad():
            part = x[:, :, lo:hi]
            rec = model.decode(model.encode(part, tiling=None).mode(), size=tuple(part.shape[2:]), tiling=None)
        w = ramp(hi - lo, before * q, after * q)
        acc[:, lo:hi] += rec[0].clamp(-1, 1).double() * w[None, :, None, None]
        weight[lo:hi] += w
    return (acc / weight[None, :, None, None]).float()


def test_chunked_reconstruction_equals_the_direct_computation(video_model, tmp_path):
    frames = np.stack(list(iter_frames(CLIP, size=32, limit=20)))
    want = direct(video_model, frames, 4, 2, 2)
    report = reconstruct_video(video_model, CLIP, tmp_path / "r.mp4", size=32, limit=20)
    assert (report["frames"], report["chunk"], report["overlap"], report["chunks"]) == (20, 4, 2, 9)
    x = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    from vitok.metrics.image import psnr

    per_frame = [float(psnr(x[:, :, t], want[None, :, t])[0]) for t in range(20)]
    np.testing.assert_allclose(report["psnr_per_frame"], per_frame, rtol=1e-5)
    ref = temporal_report(x, want[None], chunk=4, overlap=2)
    assert report["temporal_rmse"] == pytest.approx(ref["temporal_rmse"], rel=1e-5)
    assert report["border_ratio"] == pytest.approx(ref["border_ratio"], rel=1e-5)
    assert video_info(tmp_path / "r.mp4")[0] == 20


def test_memory_is_bounded_by_the_chunk(video_model, monkeypatch):
    """However long the video, encode never sees more than one chunk of frames."""
    seen = []
    encode = video_model.encode

    def spy(x, **kwargs):
        seen.append(x.shape[2])
        return encode(x, **kwargs)

    monkeypatch.setattr(video_model, "encode", spy)
    report = reconstruct_video(video_model, CLIP, None, size=32, chunk=8, overlap=2)
    assert report["frames"] == 32 and max(seen) == 8 and len(seen) == report["chunks"] == 5
    held = []
    original = video_stream._frames_tensor

    def count(frames, device):
        held.append(len(frames))
        return original(frames, device)

    monkeypatch.setattr(video_stream, "_frames_tensor", count)
    reconstruct_video(video_model, CLIP, None, size=32, chunk=8, overlap=2)
    assert max(held) == 8


def test_vitok_reconstruct_writes_mp4_for_a_video_model(video_model, tmp_path, capsys):
    video_model.save_pretrained(tmp_path / "vid")
    out = tmp_path / "out"
    assert main(["reconstruct", str(tmp_path / "vid"), str(CLIP), "--out", str(out), "--size", "32",
                 "--frames", "12", "--chunk", "4", "--chunk-overlap", "2"]) == 0
    assert "chunk-edge ratio" in capsys.readouterr().out
    summary = json.loads((out / "metrics.json").read_text())
    row = summary["videos"][0]
    assert row["frames"] == 12 and row["output"].endswith("carphone_32f.mp4") and "temporal_rmse" in row
    assert video_info(out / "carphone_32f.mp4")[0] == 12
    for flags, match in ((["--chunk", "3"], "multiple of the temporal patch"),
                         (["--chunk", "4", "--chunk-overlap", "4"], "smaller than the chunk")):
        assert main(["reconstruct", str(tmp_path / "vid"), str(CLIP), "--out", str(tmp_path / "e"), "--size", "32",
                     *flags]) == 1
        assert match in capsys.readouterr().err


def test_vitok_eval_chunks_clips_longer_than_the_model(video_model, tmp_path):
    """--frames 12 on a 4-frame model: encode and decode in chunks (auto), the temporal metric reported."""
    import shutil

    from vitok.data.datasets import VideoFolder, to_model_range
    from vitok.eval.run import run_eval
    from vitok.metrics.image import psnr
    from vitok.model.tiling import Tiling

    video_model.save_pretrained(tmp_path / "vid")
    (tmp_path / "clips").mkdir()
    shutil.copy(CLIP, tmp_path / "clips" / CLIP.name)
    for tiling, flags in (("auto", {}), (Tiling(chunk=8, chunk_overlap=2), {"tiling": Tiling(chunk=8, chunk_overlap=2)})):
        doc = run_eval(tmp_path / "vid", str(tmp_path / "clips"), image_size=32, frames=12, workers=0, device="cpu",
                       out=tmp_path / f"r{len(flags)}", weights=str(tmp_path / "none"), metrics=["psnr", "temporal"],
                       **flags)
        x = to_model_range(next(iter(VideoFolder(tmp_path / "clips", 32, 12)))["pixels"])[None]
        with torch.no_grad():
            z = video_model.encode(x, tiling=tiling).mode()
            x_hat = video_model.decode(z, size=(12, 32, 32), tiling=tiling).clamp(-1, 1)
        assert doc["metrics"]["psnr"] == pytest.approx(float(psnr(x, x_hat)[0]), rel=1e-6)
        assert doc["metrics"]["temporal"] == pytest.approx(float(temporal_rmse(x, x_hat)[0]), rel=1e-6)
