"""The latent store, DiT training with exact resume, sampling and gFID/gIS plumbing, on tiny CPU models."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vitok.cli import main
from vitok.data.images import bundled_photos, load_image
from vitok.generate.latents import LatentStore, encode_folder
from vitok.generate.train import DiTTrainConfig, train_dit
from vitok.model import ViTok, ViTokConfig

from conftest import run_ranks

TINY_DIT = ["width=32", "depth=1", "heads=2", "batch_size=4", "log_every=1", "checkpoint_every=2",
            "sample_every=0", "num_preview=2", "preview_steps=2", "device=cpu", "ema_decay=0.99"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A tiny tokenizer, a 2-class folder of photo crops and its latent store (3 shards of 2)."""
    root = tmp_path_factory.mktemp("pipeline")
    torch.manual_seed(0)
    ViTok(ViTokConfig(encoder_width=32, encoder_depth=1, encoder_heads=2, decoder_width=32, decoder_depth=1,
                      decoder_heads=2, patch_size=8, channels=4, image_size=32)).save_pretrained(root / "tok")
    photos = bundled_photos()
    for i in range(6):
        img = load_image(photos[i % len(photos)])
        crop = img[8 * i:8 * i + 40, 8 * i:8 * i + 40]
        folder = root / "data" / ("cat" if i % 2 else "ant")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(crop).save(folder / f"img{i}.png")
    assert main(["latents", str(root / "tok"), "--data", str(root / "data"), "--out", str(root / "lat"),
                 "--batch-size", "2", "--shard-size", "2"]) == 0
    return root


def test_store_round_trip_and_float64_stats(store):
    index = json.loads((store / "lat" / "index.json").read_text())
    assert index["classes"] == ["ant", "cat"] and index["count"] == 6 and index["num_shards"] == 3
    assert index["grid"] == [4, 4] and index["channels"] == 4
    shards = [load_file(store / "lat" / f"shard_{n:05d}.safetensors") for n in range(3)]
    raw = torch.cat([s["latents"] for s in shards])
    assert raw.dtype == torch.float16 and raw.shape == (6, 16, 4)
    assert torch.cat([s["labels"] for s in shards]).tolist() == [0, 0, 0, 1, 1, 1]
    flat = raw.numpy().astype(np.float64).reshape(-1, 4)
    np.testing.assert_allclose(index["mean"], flat.mean(0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(index["std"], flat.std(0), rtol=1e-7)
    # The stored latents are the posterior mode of the tokenizer, to float16 precision.
    tok = ViTok.from_pretrained(store / "tok")
    img = load_image(store / "data" / "ant" / "img0.png")
    from vitok.data.datasets import prepare_image, to_model_range
    mode = tok.encode(to_model_range(prepare_image(img, 32, False, "x")[None])).mode()
    torch.testing.assert_close(raw[0].float(), mode[0], atol=2e-3, rtol=1e-3)
    dataset = LatentStore(store / "lat")
    z, y = dataset[4]
    assert z.dtype == torch.float32 and z.shape == (16, 4) and y == 1
    expected = (raw[4].double().numpy() - np.array(index["mean"])) / np.array(index["std"])
    np.testing.assert_allclose(z.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_rerun_skips_finished_shards(store, tmp_path):
    before = {p.name: p.stat().st_mtime_ns for p in (store / "lat").glob("shard_*.safetensors")}
    (store / "lat" / "shard_00002.safetensors").unlink()
    lines = []
    encode_folder(store / "tok", store / "data", store / "lat", batch_size=2, shard_size=2, log=lines.append)
    assert lines[:2] == ["shard_00000.safetensors: already written, skipped",
                         "shard_00001.safetensors: already written, skipped"]
    assert lines[2] == "shard_00002.safetensors: 2 latents"
    after = {p.name: p.stat().st_mtime_ns for p in (store / "lat").glob("shard_*.safetensors")}
    assert after["shard_00000.safetensors"] == before["shard_00000.safetensors"]
    with pytest.raises(ValueError, match="other images"):
        encode_folder(store / "tok", store / "data", store / "lat", batch_size=2, shard_size=3)


def test_dit_training_resumes_bit_identically(store, tmp_path):
    lat = str(store / "lat")
    assert main(["dit", "train", "--latents", lat, "--out", str(tmp_path / "full"), "steps=4", *TINY_DIT]) == 0
    assert main(["dit", "train", "--latents", lat, "--out", str(tmp_path / "half"), "steps=2", *TINY_DIT]) == 0
    assert main(["dit", "train", "--resume", str(tmp_path / "half"), "steps=4"]) == 0
    for name in ("config.yaml", "metrics.jsonl", "samples.png", "losses.png", "report.json", "model/config.json"):
        assert (tmp_path / "full" / name).is_file(), name
    full = torch.load(tmp_path / "full/checkpoints/step_00000004/state.pt", weights_only=True)
    half = torch.load(tmp_path / "half/checkpoints/step_00000004/state.pt", weights_only=True)
    for key in full["model"]:
        assert torch.equal(full["model"][key], half["model"][key]), key
        assert torch.equal(full["ema"]["shadow"][key], half["ema"]["shadow"][key]), key
    logs = [(tmp_path / r / "metrics.jsonl").read_text().splitlines() for r in ("full", "half")]
    assert [json.loads(x)["loss"] for x in logs[0]] == [json.loads(x)["loss"] for x in logs[1]]
    report = json.loads((tmp_path / "full" / "report.json").read_text())
    assert report["steps"] == 4 and report["num_latents"] == 6


def test_sample_and_eval_without_weights(store, tmp_path):
    config = DiTTrainConfig(latents=str(store / "lat"), width=32, depth=1, heads=2, steps=2, batch_size=4,
                            log_every=1, checkpoint_every=2, sample_every=0, num_preview=2, preview_steps=2,
                            device="cpu")
    train_dit(config, out=tmp_path / "run")
    out = tmp_path / "samples"
    assert main(["dit", "sample", str(tmp_path / "run"), "--num", "3", "--steps", "3", "--batch-size", "2",
                 "--out", str(out)]) == 0
    files = sorted(out.glob("sample_*.png"))
    assert [f.name for f in files] == ["sample_00000_class0.png", "sample_00001_class1.png", "sample_00002_class0.png"]
    assert Image.open(files[0]).size == (32, 32) and (out / "grid.png").is_file()
    assert main(["dit", "sample", str(tmp_path / "run"), "--num", "1", "--steps", "2", "--class-id", "1",
                 "--out", str(out / "one")]) == 0
    assert (out / "one" / "sample_00000_class1.png").is_file()
    (tmp_path / "no_weights").mkdir()
    assert main(["dit", "eval", str(tmp_path / "run"), "--reference", str(store / "data" / "ant"), "--num", "2",
                 "--weights", str(tmp_path / "no_weights"), "--out", str(tmp_path / "ev")]) == 0
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["metrics"] == {}
    assert set(report["not_computed"]) == {"gfid", "gis"}
    assert "inception" in report["not_computed"]["gfid"].lower()


def test_two_processes_match_one(store, tmp_path):
    """DDP over gloo: 2 processes with half the batch each end where 1 process with the whole batch does."""
    for world, out in ((1, tmp_path / "one"), (2, tmp_path / "two")):
        run_ranks(["dit", "train", "--latents", str(store / "lat"), "--out", str(out), "steps=3", *TINY_DIT], world)
    one = torch.load(tmp_path / "one/checkpoints/step_00000003/state.pt", weights_only=True)
    two = torch.load(tmp_path / "two/checkpoints/step_00000003/state.pt", weights_only=True)
    for key, value in one["model"].items():
        torch.testing.assert_close(two["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_latents_from_two_processes_equal_one(store, tmp_path):
    """torchrun-style `vitok latents`: shards spread over 2 processes, the store identical to one process's,
    files skipped on either rank all listed in index.json."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(store / "data", data)
    (data / "cat" / "broken.png").write_bytes(b"not an image")  # sorts first in its shard
    args = [str(store / "tok"), "--data", str(data), "--batch-size", "2", "--shard-size", "2"]
    run_ranks(["latents", *args, "--out", str(tmp_path / "one")], 1)
    outputs = run_ranks(["latents", *args, "--out", str(tmp_path / "two")], 2)
    assert "[rank 1] shard_00001.safetensors" in outputs[1] and "index:" in outputs[0] and "index:" not in outputs[1]
    index_one = json.loads((tmp_path / "one" / "index.json").read_text())
    index_two = json.loads((tmp_path / "two" / "index.json").read_text())
    assert index_one["count"] == 6 and index_one["num_shards"] == 4
    assert [entry["file"] for entry in index_one["skipped_files"]] == [str(data / "cat" / "broken.png")]
    assert index_two == index_one
    assert "cannot identify the image format" in index_one["skipped_files"][0]["reason"]
    for n in range(4):
        a = load_file(tmp_path / "one" / f"shard_{n:05d}.safetensors")
        b = load_file(tmp_path / "two" / f"shard_{n:05d}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # A rerun with another process count resumes: every shard is found and kept.
    again = run_ranks(["latents", *args, "--out", str(tmp_path / "one")], 2)
    assert sum(line.count("already written") for line in again) == 4


def test_time_limit_stops_early_and_resume_finishes(store, tmp_path):
    run = tmp_path / "run"
    assert main(["dit", "train", "--latents", str(store / "lat"), "--out", str(run), "steps=4",
                 "time_limit_minutes=1e-6", *TINY_DIT]) == 0
    report = json.loads((run / "report.json").read_text())
    assert report["stopped_early"] is True and report["time_limit_minutes"] == 1e-6
    assert report["steps"] < 4 and report["planned_steps"] == 4 and report["wall_seconds"] > 0
    # checkpoint_every=2 and the limit passes at the first log step: the stop writes its own checkpoint.
    assert (run / "checkpoints" / f"step_{report['steps']:08d}" / "state.pt").is_file()
    assert (run / "model" / "config.json").is_file()
    assert f"stopping at step {report['steps']}" in (run / "train.log").read_text()
    assert "stopped early" in (run / "report.md").read_text()
    assert main(["dit", "train", "--resume", str(run), "time_limit_minutes=0"]) == 0
    report = json.loads((run / "report.json").read_text())
    assert report["steps"] == 4 and report["stopped_early"] is False and report["time_limit_minutes"] == 0
    assert (run / "checkpoints" / "step_00000004" / "state.pt").is_file()


def test_report_md_summarises_the_run(store, tmp_path):
    run = tmp_path / "run"
    assert main(["dit", "train", "--latents", str(store / "lat"), "--out", str(run), "steps=2", *TINY_DIT]) == 0
    report = json.loads((run / "report.json").read_text())
    text = (run / "report.md").read_text()
    assert f"final loss: {report['final_loss']:.5g}" in text
    assert "![losses](losses.png)" in text and "![samples](samples.png)" in text
    assert "2 of 2 planned" in text and "6 latents, 2 classes (ant, cat)" in text
    assert report["stopped_early"] is False and report["wall_seconds"] > 0
    assert not list(run.glob(".*.tmp"))


def test_negative_time_limit_is_rejected():
    with pytest.raises(ValueError, match="time_limit_minutes must be >= 0"):
        DiTTrainConfig(latents="lat", time_limit_minutes=-1.0).validate()


def test_class_check_script_runs_on_a_tiny_run(store, tmp_path):
    """benchmarks/dit_class_check.py (the GPU check's latent-space measures) end to end on CPU."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "dit_class_check.py"
    spec = importlib.util.spec_from_file_location("vitok_dit_class_check", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    run = tmp_path / "run"
    assert main(["dit", "train", "--latents", str(store / "lat"), "--out", str(run), "steps=2", *TINY_DIT]) == 0
    result = module.main([str(run), "--per-class", "3", "--cfg", "1", "2", "--steps", "2", "--device", "cpu",
                          "--out", str(tmp_path / "check.json")])
    assert json.loads((tmp_path / "check.json").read_text()) == json.loads(json.dumps(result))
    assert result["chance"] == 0.5 and set(result["by_cfg"]) == {"1.0", "2.0"}
    for entry in result["by_cfg"].values():
        assert 0 <= entry["accuracy"] <= 1 and len(entry["per_class"]) == 2 and entry["nn_ratio_median"] > 0


def test_class_check_classifier_separates_separable_data():
    """The linear probe reaches 100 % on linearly separable classes and the nearest-neighbour helper is exact."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "dit_class_check.py"
    spec = importlib.util.spec_from_file_location("vitok_dit_class_check", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 5, generator=g)
    score = x[:, 0] + 0.5 * x[:, 1]
    x, score = x[score.abs() > 0.2], score[score.abs() > 0.2]  # a margin, so the fit must be exact
    y = (score > 0).long()
    head = module.fit_classifier(x, y, 2)
    acc, per_class = module.accuracy(head, x, y)
    assert acc == 1.0 and per_class == [1.0, 1.0]
    ref = torch.randn(50, 5, generator=g)
    brute = torch.tensor([min(float((a - b).norm()) for b in ref) for a in x[:20]])
    torch.testing.assert_close(module.nearest(x[:20], ref, chunk=7), brute)


class _FakeI3D(torch.nn.Module):
    """Stands in for I3D in plumbing tests: B×3×T×H×W in [-1, 1] -> B×6 features (random conv, mean-pooled)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(3, 6, 3)

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3, 4))


def test_video_latents_dit_samples_and_gfvd_plumbing(tmp_path, monkeypatch):
    """A video tokenizer end to end: clip latents on the (t, h, w) grid, a DiT over them, mp4 samples with a
    frame-strip grid, and gFVD computed with a stand-in I3D (reported as plumbing only) or not without weights."""
    pytest.importorskip("av")
    import vitok.eval.networks as networks_module
    from vitok.data.video import read_clip, write_video
    from vitok.eval.networks import FeatureNetworks
    from vitok.metrics.i3d import I3D_MIN_FRAMES

    frames = I3D_MIN_FRAMES + 2  # 12 frames, q = 4: a 3×4×4 latent grid
    torch.manual_seed(0)
    ViTok(ViTokConfig(encoder_width=32, encoder_depth=1, encoder_heads=2, decoder_width=32, decoder_depth=1,
                      decoder_heads=2, patch_size=8, temporal_patch=4, frames=frames, channels=4,
                      image_size=32)).save_pretrained(tmp_path / "tok")
    photos = bundled_photos()
    for i in range(4):
        img = load_image(photos[i])[:96, :96]
        clip = np.stack([img[k:k + 40, 2 * k:2 * k + 40] for k in range(frames + 4)])  # a pan, 40x40
        write_video(tmp_path / "videos" / ("pan" if i % 2 else "still") / f"clip{i}.mp4", clip)
    (tmp_path / "videos" / "pan" / "broken.mp4").write_bytes(b"not a video")
    assert main(["latents", str(tmp_path / "tok"), "--data", str(tmp_path / "videos"), "--out",
                 str(tmp_path / "lat"), "--batch-size", "2", "--frame-stride", "1"]) == 0
    index = json.loads((tmp_path / "lat" / "index.json").read_text())
    assert index["grid"] == [3, 4, 4] and index["tokens"] == 48 and index["frames"] == frames
    assert index["count"] == 4 and [s["file"] for s in index["skipped_files"]] == [
        str(tmp_path / "videos" / "pan" / "broken.mp4")]
    # The stored latent is the posterior mode of the clip read as the store reads it.
    tok = ViTok.from_pretrained(tmp_path / "tok")
    clip = torch.from_numpy(read_clip(tmp_path / "videos" / "pan" / "clip1.mp4", frames, size=32))  # first stored
    mode = tok.encode(clip.permute(3, 0, 1, 2)[None].float() / 127.5 - 1).mode()
    stored = load_file(tmp_path / "lat" / "shard_00000.safetensors")["latents"][0].float()
    torch.testing.assert_close(stored, mode[0], atol=2e-3, rtol=1e-3)

    run = tmp_path / "run"
    assert main(["dit", "train", "--latents", str(tmp_path / "lat"), "--out", str(run), "steps=2",
                 *TINY_DIT]) == 0
    assert Image.open(run / "samples.png").size == (8 * 32, 2 * 32)  # 2 previews, 8-frame strips
    out = tmp_path / "samples"
    assert main(["dit", "sample", str(run), "--num", "2", "--steps", "2", "--out", str(out)]) == 0
    clips = sorted(out.glob("sample_*.mp4"))
    assert [c.name for c in clips] == ["sample_00000_class0.mp4", "sample_00001_class1.mp4"]
    assert read_clip(clips[0], frames, size=32).shape == (frames, 32, 32, 3)

    (tmp_path / "no_weights").mkdir()
    assert main(["dit", "eval", str(run), "--reference", str(tmp_path / "videos" / "still"), "--num", "2",
                 "--steps", "2", "--weights", str(tmp_path / "no_weights"), "--out", str(tmp_path / "ev0")]) == 0
    report = json.loads((tmp_path / "ev0" / "report.json").read_text())
    assert report["metrics"] == {} and set(report["not_computed"]) == {"gfvd"}
    assert "i3d" in report["not_computed"]["gfvd"].lower()

    monkeypatch.setattr(networks_module, "load_networks", lambda folder, video, wanted: FeatureNetworks(
        i3d=_FakeI3D(), published_weights=False))
    assert main(["dit", "eval", str(run), "--reference", str(tmp_path / "videos"), "--num", "3", "--steps", "2",
                 "--out", str(tmp_path / "ev1")]) == 0
    report = json.loads((tmp_path / "ev1" / "report.json").read_text())
    assert report["metrics"] == {} and report["num_reference"] == 4
    assert report["plumbing_only_random_weights"]["gfvd"] > 0
    assert "not comparable" in report["notes"]["gfvd"]


def _add(tar, name: str, data: bytes) -> None:
    import io
    import tarfile

    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_latents_from_labelled_tar_shards(store, tmp_path):
    """WebDataset-style shards: KEY.png + KEY.cls samples, classes from integer ids or names, each latent the
    posterior mode of its image; unusable images skipped and named, unlabelled images an error."""
    import tarfile

    images = sorted((store / "data").rglob("*.png"))  # 6 crops, 40x40
    blobs = [p.read_bytes() for p in images]
    (tmp_path / "shards").mkdir()
    with tarfile.open(tmp_path / "shards" / "a.tar", "w") as tar:
        for i in range(3):
            _add(tar, f"s{i}.png", blobs[i])
            _add(tar, f"s{i}.cls", f"{i % 2 * 2}\n".encode())  # ids 0 and 2: class "1" has no sample
        _add(tar, "lonely.cls", b"1")  # a label without an image is ignored
        _add(tar, "s0.seg.png", blobs[5])  # another field of sample s0 (a mask), not a second image
    with tarfile.open(tmp_path / "shards" / "b.tar", "w") as tar:
        for i in range(3, 6):
            _add(tar, f"dir/s{i}.png", blobs[i])
            _add(tar, f"dir/s{i}.cls", b"0")
        _add(tar, "dir/bad.png", b"not a png")
        _add(tar, "dir/bad.cls", b"2")
    out = tmp_path / "lat"
    assert main(["latents", str(store / "tok"), "--data", str(tmp_path / "shards" / "*.tar"), "--out", str(out),
                 "--batch-size", "4"]) == 0
    index = json.loads((out / "index.json").read_text())
    assert index["classes"] == ["0", "1", "2"] and index["count"] == 6
    assert [s["file"] for s in index["skipped_files"]] == [f"{tmp_path / 'shards' / 'b.tar'}/dir/bad.png"]
    shard = load_file(out / "shard_00000.safetensors")
    assert shard["labels"].tolist() == [0, 2, 0, 0, 0, 0]
    tok = ViTok.from_pretrained(store / "tok")
    from vitok.data.datasets import prepare_image, to_model_range
    pixels = torch.stack([prepare_image(load_image(p), 32, False, "x") for p in images])
    mode = tok.encode(to_model_range(pixels)).mode()
    torch.testing.assert_close(shard["latents"].float(), mode, atol=2e-3, rtol=1e-3)

    # Class names instead of ids: sorted names give the ids.
    with tarfile.open(tmp_path / "named.tar", "w") as tar:
        for i, name in enumerate(["zebra", "ant", "zebra"]):
            _add(tar, f"n{i}.png", blobs[i])
            _add(tar, f"n{i}.cls", name.encode())
    assert main(["latents", str(store / "tok"), "--data", str(tmp_path / "named.tar"), "--out",
                 str(tmp_path / "named")]) == 0
    named = json.loads((tmp_path / "named" / "index.json").read_text())
    assert named["classes"] == ["ant", "zebra"]
    assert load_file(tmp_path / "named" / "shard_00000.safetensors")["labels"].tolist() == [1, 0, 1]

    with tarfile.open(tmp_path / "unlabelled.tar", "w") as tar:
        _add(tar, "x.png", blobs[0])
    with pytest.raises(ValueError, match=r"sample 'x' .* has no x.cls member"):
        encode_folder(store / "tok", tmp_path / "unlabelled.tar", tmp_path / "u")
    with tarfile.open(tmp_path / "packed.tar.gz", "w:gz") as tar:
        _add(tar, "x.png", blobs[0])
    (tmp_path / "gz").mkdir()
    (tmp_path / "packed.tar.gz").rename(tmp_path / "gz" / "packed.tar")
    with pytest.raises(ValueError, match="unpack compressed shards first"):
        encode_folder(store / "tok", tmp_path / "gz" / "packed.tar", tmp_path / "g")


def test_a_labelled_shard_cut_between_two_members_is_refused(store, tmp_path):
    import tarfile

    blobs = [p.read_bytes() for p in sorted((store / "data").rglob("*.png"))[:2]]
    whole = tmp_path / "whole.tar"
    with tarfile.open(whole, "w") as tar:
        for i, blob in enumerate(blobs):
            _add(tar, f"s{i}.png", blob)
            _add(tar, f"s{i}.cls", b"0")
    # Cut right after the first sample's two members: tarfile alone would read one sample and stop.
    with tarfile.open(whole) as tar:
        members = tar.getmembers()
    end = members[2].offset
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole.read_bytes()[:end])
    with pytest.raises(ValueError, match=r"cut.tar: truncated or damaged tar shard: no end-of-archive marker .*"
                                         r"A latent store is built from whole shards"):
        encode_folder(store / "tok", cut, tmp_path / "lat")
    assert not (tmp_path / "lat" / "index.json").exists()
