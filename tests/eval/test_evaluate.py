"""Dataset evaluation end to end on real photos: metrics, skipped files, reports, torchrun."""

import functools
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
from fake_networks import FakeTokenizer, random_inception, random_networks, save_fake_i3d
from vitok.data import bundled_photos, from_tensor, load_image
from vitok.data.datasets import ImageFolder, collate, prepare_image, to_model_range
from vitok.eval import run as run_module
from vitok.eval.evaluate import content_keys, evaluate, make_loader
from vitok.eval.run import evaluate_model, run_eval
from vitok.metrics import weights as weights_module
from vitok.metrics.frechet import FeatureStats, inception_score
from vitok.model import ViTok

ROOT = Path(__file__).resolve().parents[2]


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
    assert set(doc["metrics"]) == {"psnr", "ssim", "gmsd", "sharpness", "swd"}
    assert set(doc["swd_levels"]) == {"64", "32", "16"}
    # Learned metrics are listed with the file they need and where it goes; never a number.
    # MS-SSIM's five scales need 161 px; these images have 64.
    assert set(doc["not_computed"]) == {"lpips", "rfid", "ris", "rfvd", "ms_ssim", "temporal"}
    assert "at least 161x161" in doc["not_computed"]["ms_ssim"]
    assert "pt_inception-2015-12-05-6726825d.pth" in doc["not_computed"]["rfid"]
    assert "vgg16-397923af.pth" in doc["not_computed"]["lpips"]
    assert str(tmp_path / "no-weights") in doc["not_computed"]["rfid"]
    skipped = {Path(s["file"]).name: s["reason"] for s in doc["skipped_files"]}
    assert set(skipped) == {"empty.jpg", "truncated.jpg", "tiny.png"}
    assert "0 bytes" in skipped["empty.jpg"] and "smaller than the size 64" in skipped["tiny.png"]
    for name in ("report.json", "report.md", "worst_best.png", "psnr_histogram.png", "per_sample.jsonl"):
        assert (tmp_path / "report" / name).is_file(), name
    assert _strict_json((tmp_path / "report" / "report.json").read_text())["metrics"] == doc["metrics"]
    assert doc["notes"] == {} and doc["psnr_infinite"] == 0
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


def test_weight_free_metrics_are_the_metric_functions_over_the_set(checkpoint, photo_folder, tmp_path):
    from vitok.metrics import PatchSWD, gmsd, high_frequency_energy, ms_ssim

    model = ViTok.from_pretrained(checkpoint)
    doc = evaluate_model(model, str(photo_folder), torch.device("cpu"), image_size=192, batch_size=5, workers=0,
                         metrics=["psnr", "ms_ssim", "gmsd", "sharpness", "swd"], out=tmp_path / "report",
                         tiling=None)  # the reference below is the untiled forward
    assert set(doc["metrics"]) == {"psnr", "ms_ssim", "gmsd", "sharpness", "swd"} and doc["not_computed"] == {}
    # Second route: one batch of every photo through the metric functions and one accumulator.
    items = [item for item in ImageFolder(photo_folder, 192) if "pixels" in item]
    x = to_model_range(torch.stack([item["pixels"] for item in items]))
    with torch.no_grad():
        x_hat = model(x, sample=False)[0].clamp(-1, 1)
    swd = PatchSWD()
    swd.update(content_keys(x), x, x_hat)
    assert doc["num_samples"] == len(items) == 13
    assert doc["metrics"]["ms_ssim"] == pytest.approx(ms_ssim(x, x_hat).mean().item(), rel=1e-9)
    assert doc["metrics"]["gmsd"] == pytest.approx(gmsd(x, x_hat).mean().item(), rel=1e-9)
    ratio = (high_frequency_energy(x_hat).sum() / high_frequency_energy(x).sum()).item()
    assert doc["metrics"]["sharpness"] == pytest.approx(ratio, rel=1e-9)
    assert doc["metrics"]["swd"] == pytest.approx(swd.compute()["swd"], rel=1e-9)
    rows = [json.loads(line) for line in (tmp_path / "report" / "per_sample.jsonl").read_text().splitlines()]
    assert {"ms_ssim", "gmsd", "sharpness", "hf_energy_original", "hf_energy_reconstruction"} <= set(rows[0])
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "MS-SSIM" in markdown and "SWD x1e3" in markdown and "sharpness ratio" in markdown


def test_swd_does_not_depend_on_where_the_files_are(checkpoint, photo_folder, tmp_path):
    moved = tmp_path / "elsewhere" / "renamed"
    shutil.copytree(photo_folder, moved)
    for path in sorted(moved.rglob("*.jpg"))[:3]:
        path.rename(path.with_name("x" + path.name))
    model = ViTok.from_pretrained(checkpoint)
    swd = [evaluate_model(model, str(folder), torch.device("cpu"), image_size=64, batch_size=4, workers=0,
                          metrics=["swd"])["metrics"]["swd"] for folder in (photo_folder, moved)]
    assert swd[0] == swd[1]


def _strict_json(text: str):
    """Parse JSON, failing on the non-standard NaN and Infinity tokens that json.loads otherwise accepts."""
    def refuse(token):
        raise AssertionError(f"invalid JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def _four_photos(photo_folder: Path, order=None) -> ImageFolder:
    """Four of the photos, in `order` of the sorted list if given.

    Inception at 299x299 is slow on a CPU: these tests feed it one batch of four each time, since
    oneDNN prepares its convolutions once per input shape.
    """
    dataset = ImageFolder(photo_folder, 64)
    dataset.files = [f for f in dataset.files if f.name in {p.name for p in bundled_photos()[:4]}]
    if order is not None:
        dataset.files = [dataset.files[i] for i in order]
    return dataset


@functools.lru_cache(maxsize=None)
def _photos_inception(names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The random Inception's pool features and logits of bundled photos at 64x64 (cached: slow on a CPU)."""
    photos = {p.name: p for p in bundled_photos()}
    pixels = torch.stack([prepare_image(load_image(photos[name]), 64, False, name) for name in names])
    return random_inception()(to_model_range(pixels))


def _inception_outputs(dataset: ImageFolder) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Features and logits of the dataset's photos in key (sorted path) order, and the features' total variance."""
    feats, logits = _photos_inception(tuple(f.name for f in sorted(dataset.files, key=str)))
    stats = FeatureStats()
    stats.update(feats)
    return feats, logits, float(stats.cov().trace())


def test_random_weight_networks_never_report_under_a_metric_name(checkpoint, photo_folder):
    model = ViTok.from_pretrained(checkpoint)
    dataset = _four_photos(photo_folder)
    result = evaluate(model, make_loader(dataset, 4, 0, torch.device("cpu")), random_networks(),
                      torch.device("cpu"), progress=False, ris_splits=2)
    assert set(result.metrics) == {"psnr", "ssim", "gmsd", "sharpness", "swd"}  # weight-free (MS-SSIM needs 161 px)
    assert set(result.plumbing_only) == {"lpips", "rfid", "ris"}
    assert len(result.per_sample["lpips"]) == result.num_samples == 4
    # An untrained tokenizer's reconstructions are far from the photos, and the calibrated random
    # Inception sees it (uncalibrated, its features are ~1e-8 and every distance ~1e-17).
    _, _, spread = _inception_outputs(dataset)
    assert spread > 1.0
    assert result.plumbing_only["rfid"] > 0.01 * spread and result.plumbing_only["ris"] >= 1


def test_perfect_reconstruction_delivered_out_of_order(photo_folder):
    """rFID of identical images is ~0, and rIS is the score of the logits in key order, whatever order
    the samples arrive in (that order depends on the number of ranks)."""
    cpu, config = torch.device("cpu"), tiny_config(image_size=64)
    order = [3, 0, 1, 2]
    dataset = _four_photos(photo_folder, order)
    result = evaluate(FakeTokenizer(config), make_loader(dataset, 4, 0, cpu), random_networks(), cpu,
                      progress=False, metrics={"rfid", "ris"}, ris_splits=2)
    _, in_key_order, spread = _inception_outputs(dataset)
    assert spread > 1.0
    assert 0 <= result.plumbing_only["rfid"] < 1e-6 * spread
    expected = inception_score(in_key_order, splits=2, seed=2020)[0]
    assert expected > 1.0 + 1e-3
    assert result.plumbing_only["ris"] == pytest.approx(expected, rel=1e-6)
    # This order puts other samples together in a split: unsorted, the score would differ.
    as_delivered = in_key_order[torch.tensor([sorted(dataset.files, key=str).index(f) for f in dataset.files])]
    assert abs(inception_score(as_delivered, splits=2, seed=2020)[0] - expected) > 1e-4
    assert set(result.plumbing_only) == {"rfid", "ris"} and set(result.per_sample) == {"key", "psnr"}


def test_ris_needs_as_many_samples_as_splits(photo_folder):
    cpu, config = torch.device("cpu"), tiny_config(image_size=64)
    result = evaluate(FakeTokenizer(config), make_loader(_four_photos(photo_folder), 4, 0, cpu), random_networks(),
                      cpu, progress=False, metrics={"ris"}, ris_splits=5)
    assert result.not_computed == {"ris": "needs at least 5 samples for its 5 splits, got 4"}
    assert result.plumbing_only == {} and result.metrics == {}


def test_unrequested_metrics_are_left_out_of_the_report(photo_folder, tmp_path):
    model = FakeTokenizer(tiny_config(image_size=64), noise=0.1)
    doc = evaluate_model(model, str(photo_folder), torch.device("cpu"), workers=0, metrics=["psnr", "lpips"],
                         networks=random_networks(), progress=False, out=tmp_path / "r")
    assert set(doc["metrics"]) == {"psnr"} and set(doc["plumbing_only_random_weights"]) == {"lpips"}
    assert doc["not_computed"] == {} and doc["metrics_requested"] == ["lpips", "psnr"]
    rows = [json.loads(line) for line in (tmp_path / "r" / "per_sample.jsonl").read_text().splitlines()]
    assert set(rows[0]) == {"key", "psnr", "lpips"}
    # Requested but impossible still says why; unrequested ones stay out.
    doc = evaluate_model(model, str(photo_folder), torch.device("cpu"), workers=0, metrics=["ssim", "rfvd"],
                         weights=str(tmp_path / "none"), progress=False)
    assert set(doc["metrics"]) == {"ssim"}
    assert doc["not_computed"] == {"rfvd": "video metric: not computed for image models"}


def test_identical_reconstructions_have_infinite_psnr_kept_out_of_the_mean_and_the_json(photo_folder, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for photo in bundled_photos()[:3]:
        shutil.copy(photo, folder / photo.name)
    for i, colour in enumerate([(10, 200, 30), (250, 250, 250)]):
        Image.new("RGB", (64, 64), colour).save(folder / f"flat{i}.png")
    cpu, config = torch.device("cpu"), tiny_config(image_size=64)
    doc = evaluate_model(FakeTokenizer(config, noise=0.05), str(folder), cpu, workers=0, batch_size=2,
                         metrics=["psnr", "ssim"], progress=False, out=tmp_path / "r")
    assert doc["psnr_infinite"] == 2 and doc["num_samples"] == 5
    report = _strict_json((tmp_path / "r" / "report.json").read_text())
    rows = [_strict_json(line) for line in (tmp_path / "r" / "per_sample.jsonl").read_text().splitlines()]
    by_name = {Path(r["key"]).name: r["psnr"] for r in rows}
    assert by_name["flat0.png"] is None and by_name["flat1.png"] is None
    finite = [v for name, v in by_name.items() if not name.startswith("flat")]
    assert report["metrics"]["psnr"] == pytest.approx(np.mean(finite), abs=1e-9)
    assert report["psnr_infinite"] == 2 and report["best"][0]["psnr"] is None
    assert "identical to the original" in (tmp_path / "r" / "report.md").read_text()
    # Nothing but identical images: no finite PSNR to average, and the report says so.
    for photo in bundled_photos()[:3]:
        (folder / photo.name).unlink()
    doc = evaluate_model(FakeTokenizer(config), str(folder), cpu, workers=0, metrics=["psnr", "ssim"],
                         progress=False, out=tmp_path / "r2")
    assert "psnr" not in doc["metrics"] and "infinite PSNR" in doc["not_computed"]["psnr"]
    assert doc["metrics"]["ssim"] == pytest.approx(1.0)
    _strict_json((tmp_path / "r2" / "report.json").read_text())


def test_eval_errors(checkpoint, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no image files"):
        run_eval(checkpoint, str(tmp_path / "empty"), image_size=64, workers=0, device="cpu")
    with pytest.raises(ValueError, match="does not exist"):
        run_eval(tmp_path / "no-ckpt", str(tmp_path / "empty"), workers=0, device="cpu")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="no usable samples") as err:
        run_eval(checkpoint, str(bad), image_size=64, workers=0, device="cpu", out=tmp_path / "r")
    assert f"{bad / 'a.jpg'}: " in str(err.value) and "0 bytes" in str(err.value)
    with pytest.raises(ValueError, match="not a multiple of the model's patch size 8"):
        run_eval(checkpoint, str(bad), image_size=60, workers=0, device="cpu")
    with pytest.raises(ValueError, match="unknown metrics \\['fid'\\]"):
        run_eval(checkpoint, str(bad), image_size=64, workers=0, device="cpu", metrics=["fid"])
    for option, value, message in (("image_size", 0, "--image-size"), ("stride", 0, "--frame-stride"),
                                   ("limit", -3, "--limit"), ("limit", 2.5, "--limit"), ("frames", 0, "--frames"),
                                   ("batch_size", 0, "--batch-size")):
        with pytest.raises(ValueError, match=f"{message} must be a positive integer, got {value}"):
            run_eval(checkpoint, str(bad), workers=0, device="cpu", **{option: value})


def test_eval_checks_out_device_and_pyav_up_front(checkpoint, tmp_path, monkeypatch):
    (tmp_path / "photos").mkdir()
    shutil.copy(bundled_photos()[0], tmp_path / "photos")
    (tmp_path / "taken").write_text("a file, not a folder")
    with pytest.raises(ValueError, match="is an existing file, but the report is a folder"):
        run_eval(checkpoint, str(tmp_path / "photos"), image_size=64, workers=0, device="cpu",
                 out=tmp_path / "taken")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="--device cuda: CUDA is not available.*--device cpu"):
        run_eval(checkpoint, str(tmp_path / "photos"), image_size=64, workers=0, device="cuda")
    ViTok(tiny_config(temporal_patch=2, frames=4)).save_pretrained(tmp_path / "vckpt")
    monkeypatch.setitem(sys.modules, "av", None)  # what an environment without PyAV gives `import av`
    with pytest.raises(ValueError, match=r"needs PyAV, which is not installed: pip install av .*vitok\[video\]"):
        run_eval(tmp_path / "vckpt", str(tmp_path / "photos"), image_size=32, workers=0, device="cpu")


def test_eval_with_loader_workers_matches_inline(checkpoint, photo_folder, tmp_path):
    a = run_eval(checkpoint, str(photo_folder), image_size=64, batch_size=2, workers=0, out=tmp_path / "a",
                 device="cpu", metrics=["psnr", "ssim"])
    b = run_eval(checkpoint, str(photo_folder), image_size=64, batch_size=5, workers=2, out=tmp_path / "b",
                 device="cpu", metrics=["psnr", "ssim"])
    assert a["metrics"] == pytest.approx(b["metrics"], abs=1e-12)
    assert sorted(s["file"] for s in a["skipped_files"]) == sorted(s["file"] for s in b["skipped_files"])


def test_torchrun_two_processes_count_each_sample_once(checkpoint, photo_folder, tmp_path, monkeypatch):
    # Every metric's plumbing, with the random networks pickled so both ranks hold the same weights.
    networks = random_networks()
    torch.save(networks, tmp_path / "networks.pt")
    monkeypatch.setattr(run_module, "load_networks", lambda folder, video, wanted: networks)
    single = run_eval(checkpoint, str(photo_folder), image_size=64, batch_size=4, workers=0,
                      out=tmp_path / "one", device="cpu", ris_splits=2)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests" / "eval")]),
           "OMP_NUM_THREADS": "1"}
    # --standalone: the rendezvous takes a free port, so parallel test runs cannot collide.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(Path(__file__).with_name("torchrun_eval.py")), str(tmp_path / "networks.pt"), "2", "--",
           "eval", str(checkpoint), "--data", str(photo_folder), "--image-size", "64",
           "--batch-size", "4", "--workers", "0", "--device", "cpu", "--out", str(tmp_path / "two")]
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=240)
    double = _strict_json((tmp_path / "two" / "report.json").read_text())
    assert double["world_size"] == 2
    assert double["num_samples"] == single["num_samples"]
    keys = [json.loads(line)["key"] for line in (tmp_path / "two" / "per_sample.jsonl").read_text().splitlines()]
    assert len(keys) == len(set(keys)) == single["num_samples"]
    assert double["metrics"] == pytest.approx(single["metrics"], abs=1e-6)
    assert set(single["plumbing_only_random_weights"]) == {"lpips", "rfid", "ris"}
    assert single["plumbing_only_random_weights"]["rfid"] > 1.0
    # rIS splits samples by key, so one process and two give the same number.
    assert double["plumbing_only_random_weights"] == pytest.approx(single["plumbing_only_random_weights"], rel=1e-5)
    assert len(double["skipped_files"]) == len(single["skipped_files"]) == 3


def test_collate_separates_skipped_items():
    batch = collate([{"pixels": torch.zeros(3, 8, 8), "key": "a"}, {"skipped": "b", "reason": "broken"}])
    assert batch["pixels"].shape == (1, 3, 8, 8) and batch["keys"] == ["a"]
    assert batch["skipped"] == [{"file": "b", "reason": "broken"}]
    assert collate([{"skipped": "b", "reason": "x"}])["pixels"] is None


def _videos(folder: Path, count: int, frames: int) -> Path:
    """`count` small 32x32 clips with different colours and a brightening ramp over time."""
    from vitok.data.video import write_video

    rng = np.random.default_rng(0)
    folder.mkdir()
    for i in range(count):
        base = rng.integers(0, 200, (1, 32, 32, 3))
        clip = np.clip(base + np.arange(frames)[:, None, None, None] * 4, 0, 255).astype(np.uint8)
        write_video(folder / f"clip{i}.mp4", clip)
    return folder


@pytest.fixture
def fake_i3d_weights(tmp_path, monkeypatch):
    """A weights folder whose i3d_torchscript.pt is the scripted FakeI3D, accepted as the published file."""
    import hashlib
    from dataclasses import replace

    path = save_fake_i3d(tmp_path / "weights")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setitem(weights_module.WEIGHT_FILES, "i3d", replace(weights_module.WEIGHT_FILES["i3d"], sha256=digest))
    return path.parent


def test_video_eval_reports_psnr_ssim_and_why_rfvd_is_missing(tmp_path, fake_i3d_weights):
    pytest.importorskip("av")  # the optional [video] dependency
    from vitok.data.video import write_video

    torch.manual_seed(0)
    ViTok(tiny_config(temporal_patch=2, frames=4)).save_pretrained(tmp_path / "vckpt")
    videos = _videos(tmp_path / "videos", 3, 6)
    write_video(videos / "short.mp4", np.zeros((2, 32, 32, 3), dtype=np.uint8))
    doc = run_eval(tmp_path / "vckpt", str(videos), image_size=32, workers=0, device="cpu",
                   out=tmp_path / "vreport", weights=str(tmp_path / "none"))
    assert doc["num_samples"] == 3 and doc["frames"] == 4
    # per frame (MS-SSIM needs 161 px), and over the clip: the temporal metric
    assert set(doc["metrics"]) == {"psnr", "ssim", "gmsd", "sharpness", "swd", "temporal"}
    assert "not computed for video models" in doc["not_computed"]["rfid"]
    assert [Path(s["file"]).name for s in doc["skipped_files"]] == ["short.mp4"]
    assert (tmp_path / "vreport" / "worst_best.png").is_file()
    # 4-frame clips are too short for I3D: even with its weights at hand, rFVD says why instead of crashing.
    doc = run_eval(tmp_path / "vckpt", str(videos), image_size=32, workers=0, device="cpu",
                   weights=str(fake_i3d_weights), metrics=["psnr", "rfvd"])
    assert set(doc["metrics"]) == {"psnr"}
    assert doc["not_computed"] == {"rfvd": "I3D needs clips of at least 10 frames and these have 4: "
                                            "pass --frames 16 (the FVD convention) or at least 10"}
    # Without the weights, the same: the clip length is the first thing to fix.
    doc = run_eval(tmp_path / "vckpt", str(videos), image_size=32, workers=0, device="cpu",
                   weights=str(tmp_path / "none"), metrics=["rfvd"])
    assert "at least 10 frames" in doc["not_computed"]["rfvd"]


def _fvd_reference(model: ViTok, folder: Path, frames: int) -> float:
    """rFVD with FakeI3D's features (channel means of the 8-bit clips) and scipy's matrix square root;
    the covariances divide by N, as StyleGAN-V's FVD does."""
    import scipy.linalg

    from vitok.data.datasets import VideoFolder
    from vitok.metrics.image import to_uint8

    real, fake = [], []
    for item in VideoFolder(folder, 32, frames):
        x = to_model_range(item["pixels"])[None]
        with torch.no_grad():
            x_hat = model(x, sample=False)[0].clamp(-1, 1)
        for clip, out in ((x, real), (x_hat, fake)):
            out.append((to_uint8(clip).double() / 127.5 - 1).mean(dim=(2, 3, 4))[0].numpy())
    real, fake = np.array(real), np.array(fake)
    s1, s2 = np.cov(real, rowvar=False, bias=True), np.cov(fake, rowvar=False, bias=True)
    diff = real.mean(0) - fake.mean(0)
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(np.real(scipy.linalg.sqrtm(s1 @ s2))))


@pytest.mark.parametrize("frames", [10, 16])
def test_rfvd_end_to_end_with_a_fake_i3d(tmp_path, fake_i3d_weights, frames):
    pytest.importorskip("av")
    torch.manual_seed(0)
    model = ViTok(tiny_config(temporal_patch=2, frames=frames))
    model.save_pretrained(tmp_path / "vckpt")
    videos = _videos(tmp_path / "videos", 5, frames)
    doc = run_eval(tmp_path / "vckpt", str(videos), image_size=32, workers=0, device="cpu", batch_size=2,
                   weights=str(fake_i3d_weights), metrics=["psnr", "rfvd"], out=tmp_path / "report")
    assert doc["num_samples"] == 5 and doc["not_computed"] == {}
    assert doc["weights"]["i3d"].startswith("i3d: verified")
    assert doc["metrics"]["rfvd"] == pytest.approx(_fvd_reference(model.eval(), videos, frames), rel=1e-6, abs=1e-9)
    assert doc["metrics"]["rfvd"] > 1e-4
    if frames == 16:
        assert doc["notes"] == {}
    else:
        assert doc["notes"]["rfvd"] == ("computed on 10-frame clips: not comparable with published rFVD numbers, "
                                        "which use 16-frame clips")
        assert "10-frame clips" in (tmp_path / "report" / "report.md").read_text()


def test_in_memory_evaluation_for_training_loops(checkpoint, photo_folder, tmp_path):
    model = ViTok.from_pretrained(checkpoint)
    doc = evaluate_model(model, str(photo_folder), torch.device("cpu"), image_size=64, workers=0,
                         metrics=["psnr", "ssim"], progress=False)
    assert set(doc["metrics"]) == {"psnr", "ssim"} and doc["num_samples"] == len(bundled_photos())
    assert doc["not_computed"] == {}  # unrequested metrics are not listed
    assert not list(tmp_path.glob("*-eval"))  # nothing written without out


def test_v2_models_evaluate_at_sizes_that_are_not_whole_patches(tmp_path):
    """A v2 tokenizer pads to whole patches and crops back, so --image-size need not be a multiple of p."""
    from conftest import tiny_config

    torch.manual_seed(0)
    ViTok(tiny_config(architecture="vitok-v2")).save_pretrained(tmp_path / "v2")
    doc = run_eval(tmp_path / "v2", str(Path(bundled_photos()[0]).parent), image_size=30, workers=0, device="cpu",
                   metrics=["psnr"], limit=2)
    assert doc["num_samples"] == 2 and doc["image_size"] == 30
    ViTok(tiny_config()).save_pretrained(tmp_path / "v1")
    with pytest.raises(ValueError, match="not a multiple of the model's patch size"):
        run_eval(tmp_path / "v1", str(Path(bundled_photos()[0]).parent), image_size=30, workers=0, device="cpu")
