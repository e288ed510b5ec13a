"""`vitok stats`, and the latent store and DiT using (and insisting on) the tokenizer's statistics."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from vitok.cli import main
from vitok.data.datasets import prepare_image, to_model_range
from vitok.data.images import bundled_photos, load_image
from vitok.generate.latents import check_tokenizer, read_index
from vitok.generate.train import DiTTrainConfig, parse_overrides, train_dit
from vitok.model import ViTok

from conftest import run_ranks, tiny_config

TINY_DIT = ["width=32", "depth=1", "heads=2", "batch_size=4", "steps=1", "log_every=1", "checkpoint_every=1",
            "sample_every=0", "num_preview=2", "preview_steps=2", "device=cpu"]


@pytest.fixture
def tokenizer(checkpoint):
    return checkpoint


@pytest.fixture
def photos(tmp_path):
    """The bundled photos, two classes, plus one unreadable file."""
    root = tmp_path / "photos"
    for i, path in enumerate(bundled_photos()[:6]):
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / path.name)
    (root / "b" / "broken.jpg").write_bytes(b"not a jpeg")
    return root


def test_stats_match_a_direct_float64_reference(tokenizer, photos, capsys):
    assert main(["stats", str(tokenizer), "--data", str(photos), "--workers", "0", "--batch-size", "4"]) == 0
    out = capsys.readouterr()
    assert "statistics written to" in out.out and "skipped 1" in out.err
    saved = json.loads((tokenizer / "config.json").read_text())["latent_stats"]
    model = ViTok.from_pretrained(tokenizer)
    files = sorted(p for p in photos.rglob("*.jpg") if p.name != "broken.jpg")
    x = torch.stack([prepare_image(load_image(p), 32, False, str(p)) for p in files])
    with torch.no_grad():
        z = model.encode(to_model_range(x)).mode().double().reshape(-1, 4).numpy()
    np.testing.assert_allclose(saved["mean"], z.mean(0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(saved["std"], z.std(0), rtol=1e-6)
    assert saved["shift_factor"] == pytest.approx(z.mean(), rel=1e-6)
    assert saved["scaling_factor"] == pytest.approx(1 / z.std(), rel=1e-6)
    assert (saved["num_samples"], saved["num_tokens"], saved["image_size"]) == (6, 6 * 16, 32)
    assert model.latent_stats.to_dict() == saved
    # The fingerprint names the data, not where it lives or how it is batched.
    moved = photos.parent / "elsewhere"
    shutil.copytree(photos, moved)
    assert main(["stats", str(tokenizer), "--data", str(moved), "--workers", "0", "--batch-size", "5"]) == 0
    again = json.loads((tokenizer / "config.json").read_text())["latent_stats"]
    assert again["fingerprint"] == saved["fingerprint"]
    np.testing.assert_allclose(again["mean"], saved["mean"], rtol=1e-9)
    assert main(["stats", str(tokenizer), "--data", str(moved), "--workers", "0", "--limit", "3"]) == 0
    assert json.loads((tokenizer / "config.json").read_text())["latent_stats"]["fingerprint"] != saved["fingerprint"]


def test_stats_errors(tokenizer, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "bad.png").write_bytes(b"nope")
    assert main(["stats", str(tokenizer), "--data", str(tmp_path / "empty"), "--workers", "0"]) == 2
    assert "no readable samples" in capsys.readouterr().err
    assert main(["stats", str(tokenizer), "--data", str(tmp_path), "--image-size", "30"]) == 2
    assert "multiple of the model's patch size" in capsys.readouterr().err
    assert main(["stats", str(tmp_path / "nothing"), "--data", str(tmp_path)]) == 2


def _labelled(root):
    photos = bundled_photos()
    for i in range(6):
        img = load_image(photos[i % len(photos)])
        folder = root / ("cat" if i % 2 else "ant")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[8 * i:8 * i + 40, 8 * i:8 * i + 40]).save(folder / f"img{i}.png")
    return root


def test_latents_use_the_tokenizers_statistics_and_dit_refuses_others(tokenizer, photos, tmp_path, capsys):
    data = _labelled(tmp_path / "labelled")
    # Before any statistics: the store normalises with its own.
    assert main(["latents", str(tokenizer), "--data", str(data), "--out", str(tmp_path / "own")]) == 0
    own = read_index(tmp_path / "own")
    assert own["normalisation"] == "store" and own["mean"] == own["store_mean"]
    assert len(own["tokenizer_weights"]) == 16
    assert main(["stats", str(tokenizer), "--data", str(photos), "--workers", "0"]) == 0
    stats = json.loads((tokenizer / "config.json").read_text())["latent_stats"]
    # Now the store's normalisation is the tokenizer's, whatever its own moments are.
    assert main(["latents", str(tokenizer), "--data", str(data), "--out", str(tmp_path / "tok_stats")]) == 0
    index = read_index(tmp_path / "tok_stats")
    assert index["normalisation"] == "tokenizer" and index["stats_fingerprint"] == stats["fingerprint"]
    assert (index["mean"], index["std"]) == (stats["mean"], stats["std"])
    assert index["store_mean"] == pytest.approx(own["store_mean"])
    check_tokenizer(index, "store")
    # The store made before the statistics existed is refused for DiT training, with the fix.
    config = parse_overrides(DiTTrainConfig(latents=str(tmp_path / "own")), TINY_DIT)
    with pytest.raises(ValueError, match="normalised with their own statistics.*vitok latents"):
        train_dit(config, out=tmp_path / "dit_own")
    run = tmp_path / "dit"
    train_dit(parse_overrides(DiTTrainConfig(latents=str(tmp_path / "tok_stats")), TINY_DIT), out=run)
    capsys.readouterr()
    assert main(["dit", "sample", str(run), "--num", "2", "--steps", "2", "--out", str(tmp_path / "s.png")]) == 0
    # New statistics, or new weights, and the run's latents no longer match the tokenizer: refused.
    assert main(["stats", str(tokenizer), "--data", str(data), "--workers", "0"]) == 0
    assert main(["dit", "sample", str(run), "--num", "2", "--steps", "2", "--out", str(tmp_path / "t.png")]) == 2
    assert "earlier statistics" in capsys.readouterr().err
    torch.manual_seed(1)
    retrained = ViTok(tiny_config())
    retrained.save_pretrained(tokenizer)
    with pytest.raises(ValueError, match="another tokenizer"):
        check_tokenizer(index, "store")


def test_stats_from_two_processes_equal_one(tokenizer, photos, tmp_path):
    """torchrun-style `vitok stats`: each of 2 gloo processes takes half the files; the sums are all-reduced."""
    assert main(["stats", str(tokenizer), "--data", str(photos), "--workers", "0", "--device", "cpu"]) == 0
    one = json.loads((tokenizer / "config.json").read_text())["latent_stats"]
    run_ranks(["stats", str(tokenizer), "--data", str(photos), "--workers", "0", "--device", "cpu"], 2)
    two = json.loads((tokenizer / "config.json").read_text())["latent_stats"]
    assert two["num_samples"] == one["num_samples"] == 6 and two["fingerprint"] == one["fingerprint"]
    np.testing.assert_allclose(two["mean"], one["mean"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(two["std"], one["std"], rtol=1e-9)
    assert two["scaling_factor"] == pytest.approx(one["scaling_factor"], rel=1e-9)


def test_stats_refuse_to_edit_the_hub_cache(capsys):
    assert main(["stats", "someone/some-tokenizer", "--data", "."]) == 2
    assert "Hugging Face cache" in capsys.readouterr().err


def test_stats_of_a_video_tokenizer_on_real_footage(tmp_path):
    pytest.importorskip("av")
    from pathlib import Path

    from vitok.data.datasets import VideoFolder

    torch.manual_seed(0)
    ViTok(tiny_config(temporal_patch=2, frames=4)).save_pretrained(tmp_path / "vid")
    clips = tmp_path / "clips"
    clips.mkdir()
    shutil.copy(Path(__file__).parents[1] / "data" / "fixtures" / "carphone_32f.mp4", clips / "carphone.mp4")
    assert main(["stats", str(tmp_path / "vid"), "--data", str(clips), "--workers", "0", "--frames", "8"]) == 0
    saved = json.loads((tmp_path / "vid" / "config.json").read_text())["latent_stats"]
    model = ViTok.from_pretrained(tmp_path / "vid")
    x = to_model_range(next(iter(VideoFolder(clips, 32, 8)))["pixels"])[None]
    with torch.no_grad():
        z = model.encode(x).mode().double().reshape(-1, 4).numpy()  # 8 frames > the 4-frame clip: chunked
    assert (saved["num_samples"], saved["num_tokens"]) == (1, 4 * 4 * 4)
    np.testing.assert_allclose(saved["mean"], z.mean(0), rtol=1e-6, atol=1e-9)
