"""Dataset evaluation end to end on real photos: metrics, skipped files, reports, torchrun."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from conftest import tiny_config
from vitok.data import bundled_photos, from_tensor
from vitok.data.datasets import ImageFolder, collate, to_model_range
from vitok.eval.evaluate import evaluate, make_loader
from vitok.eval.networks import FeatureNetworks
from vitok.eval.run import run_eval
from vitok.model import ViTok

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    ViTok(tiny_config()).save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt"


@pytest.fixture
def photo_folder(tmp_path):
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    for i, photo in enumerate(bundled_photos()):
        shutil.copy(photo, folder / ("nested" if i % 2 else "") / photo.name)
    (folder / "empty.jpg").write_bytes(b"")
    data = bundled_photos()[0].read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    Image.new("RGB", (20, 20), (200, 10, 10)).save(folder / "tiny.png")
    (folder / "notes.txt").write_text("not an image, and not listed")
    return folder


def test_eval_report_on_real_photos(checkpoint, photo_folder, tmp_path):
    doc = run_eval(checkpoint, str(photo_folder), image_size=64, batch_size=3, workers=0,
                   out=tmp_path / "report", weights=str(tmp_path / "no-weights"), device="cpu")
    assert doc["num_samples"] == len(bundled_photos())
    assert set(doc["metrics"]) == {"psnr", "ssim"}
    # Learned metrics are listed with the file they need and where it goes; never a number.
    assert set(doc["not_computed"]) == {"lpips", "rfid", "ris", "rfvd"}
    assert "pt_inception-2015-12-05-6726825d.pth" in doc["not_computed"]["rfid"]
    assert "vgg16-397923af.pth" in doc["not_computed"]["lpips"]
    assert str(tmp_path / "no-weights") in doc["not_computed"]["rfid"]
    skipped = {Path(s["file"]).name: s["reason"] for s in doc["skipped_files"]}
    assert set(skipped) == {"empty.jpg", "truncated.jpg", "tiny.png"}
    assert "0 bytes" in skipped["empty.jpg"] and "smaller than the size 64" in skipped["tiny.png"]
    for name in ("report.json", "report.md", "worst_best.png", "psnr_histogram.png", "per_sample.jsonl"):
        assert (tmp_path / "report" / name).is_file(), name
    assert json.loads((tmp_path / "report" / "report.json").read_text())["metrics"] == doc["metrics"]
    assert doc["worst"][0]["psnr"] <= doc["best"][0]["psnr"]

    # The numbers are the mean of scikit-image's per-image PSNR/SSIM on the same 8-bit images.
    model = ViTok.from_pretrained(checkpoint)
    ps, ss = [], []
    for item in ImageFolder(photo_folder, 64):
        if "pixels" not in item:
            continue
        x = to_model_range(item["pixels"])
        with torch.no_grad():
            x_hat, _ = model(x[None], sample=False)
        a, b = from_tensor(x), from_tensor(x_hat[0].clamp(-1, 1))
        ps.append(peak_signal_noise_ratio(a, b, data_range=255))
        ss.append(structural_similarity(a, b, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False, data_range=255))
    assert doc["metrics"]["psnr"] == pytest.approx(np.mean(ps), abs=1e-4)
    assert doc["metrics"]["ssim"] == pytest.approx(np.mean(ss), abs=1e-4)


def test_random_weight_networks_never_report_under_a_metric_name(checkpoint, photo_folder):
    from vitok.metrics.inception import build_fid_inception
    from vitok.metrics.lpips import build_lpips

    model = ViTok.from_pretrained(checkpoint)
    nets = FeatureNetworks(inception=build_fid_inception(None), lpips=build_lpips(None, None),
                           published_weights=False)
    # Inception at 299x299 and a 2048-dim Frechet distance are slow on a CPU: four photos suffice.
    dataset = ImageFolder(photo_folder, 64)
    dataset.files = [f for f in dataset.files if f.name in {p.name for p in bundled_photos()[:4]}]
    loader = make_loader(dataset, 2, 0, torch.device("cpu"))
    result = evaluate(model, loader, nets, torch.device("cpu"), progress=False)
    assert set(result.metrics) == {"psnr", "ssim"}
    assert set(result.plumbing_only) == {"lpips", "rfid", "ris"}
    assert result.plumbing_only["rfid"] >= 0 and result.plumbing_only["ris"] >= 1
    assert len(result.per_sample["lpips"]) == result.num_samples == 4


def test_eval_errors(checkpoint, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no image files"):
        run_eval(checkpoint, str(tmp_path / "empty"), image_size=64, workers=0, device="cpu")
    with pytest.raises(ValueError, match="does not exist"):
        run_eval(tmp_path / "no-ckpt", str(tmp_path / "empty"), workers=0, device="cpu")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="no usable samples"):
        run_eval(checkpoint, str(bad), image_size=64, workers=0, device="cpu", out=tmp_path / "r")
    with pytest.raises(ValueError, match="not a multiple of the model's patch size 8"):
        run_eval(checkpoint, str(bad), image_size=60, workers=0, device="cpu")
    with pytest.raises(ValueError, match="unknown metrics \\['fid'\\]"):
        run_eval(checkpoint, str(bad), image_size=64, workers=0, device="cpu", metrics=["fid"])


def test_eval_with_loader_workers_matches_inline(checkpoint, photo_folder, tmp_path):
    a = run_eval(checkpoint, str(photo_folder), image_size=64, batch_size=2, workers=0, out=tmp_path / "a",
                 device="cpu", metrics=["psnr", "ssim"])
    b = run_eval(checkpoint, str(photo_folder), image_size=64, batch_size=5, workers=2, out=tmp_path / "b",
                 device="cpu", metrics=["psnr", "ssim"])
    assert a["metrics"] == pytest.approx(b["metrics"], abs=1e-12)
    assert sorted(s["file"] for s in a["skipped_files"]) == sorted(s["file"] for s in b["skipped_files"])


def test_torchrun_two_processes_count_each_sample_once(checkpoint, photo_folder, tmp_path):
    single = run_eval(checkpoint, str(photo_folder), image_size=64, batch_size=2, workers=0,
                      out=tmp_path / "one", device="cpu")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           "-m", "vitok", "eval", str(checkpoint), "--data", str(photo_folder), "--image-size", "64",
           "--batch-size", "2", "--workers", "0", "--device", "cpu", "--out", str(tmp_path / "two")]
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=240)
    double = json.loads((tmp_path / "two" / "report.json").read_text())
    assert double["world_size"] == 2
    assert double["num_samples"] == single["num_samples"]
    keys = [json.loads(line)["key"] for line in (tmp_path / "two" / "per_sample.jsonl").read_text().splitlines()]
    assert len(keys) == len(set(keys)) == single["num_samples"]
    assert double["metrics"] == pytest.approx(single["metrics"], abs=1e-6)
    assert len(double["skipped_files"]) == len(single["skipped_files"]) == 3


def test_collate_separates_skipped_items():
    batch = collate([{"pixels": torch.zeros(3, 8, 8), "key": "a"}, {"skipped": "b", "reason": "broken"}])
    assert batch["pixels"].shape == (1, 3, 8, 8) and batch["keys"] == ["a"]
    assert batch["skipped"] == [{"file": "b", "reason": "broken"}]
    assert collate([{"skipped": "b", "reason": "x"}])["pixels"] is None


def test_video_eval_reports_psnr_ssim_and_why_rfvd_is_missing(tmp_path):
    pytest.importorskip("av")  # the optional [video] dependency
    from vitok.data.video import write_video

    torch.manual_seed(0)
    ViTok(tiny_config(temporal_patch=2, frames=4)).save_pretrained(tmp_path / "vckpt")
    rng = np.random.default_rng(0)
    (tmp_path / "videos").mkdir()
    for i in range(3):
        base = rng.integers(0, 255, (1, 32, 32, 3))
        frames = np.clip(base + np.arange(6)[:, None, None, None] * 10, 0, 255).astype(np.uint8)
        write_video(tmp_path / "videos" / f"clip{i}.mp4", frames)
    short = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    write_video(tmp_path / "videos" / "short.mp4", short)
    doc = run_eval(tmp_path / "vckpt", str(tmp_path / "videos"), image_size=32, workers=0, device="cpu",
                   out=tmp_path / "vreport", weights=str(tmp_path / "none"))
    assert doc["num_samples"] == 3 and doc["frames"] == 4
    assert set(doc["metrics"]) == {"psnr", "ssim"}
    assert "i3d_torchscript.pt" in doc["not_computed"]["rfvd"]
    assert "not computed for video models" in doc["not_computed"]["rfid"]
    assert [Path(s["file"]).name for s in doc["skipped_files"]] == ["short.mp4"]
    assert (tmp_path / "vreport" / "worst_best.png").is_file()


def test_in_memory_evaluation_for_training_loops(checkpoint, photo_folder, tmp_path):
    from vitok.eval.run import evaluate_model

    model = ViTok.from_pretrained(checkpoint)
    doc = evaluate_model(model, str(photo_folder), torch.device("cpu"), image_size=64, workers=0,
                         metrics=["psnr", "ssim"], progress=False)
    assert set(doc["metrics"]) == {"psnr", "ssim"} and doc["num_samples"] == len(bundled_photos())
    assert doc["not_computed"]["rfid"] == "not requested (--metrics)"
    assert not list(tmp_path.glob("*-eval"))  # nothing written without out
