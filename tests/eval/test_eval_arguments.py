"""`vitok eval` arguments that cannot work: each is refused before the checkpoint loads or a file is written."""

import numpy as np
import pytest
import torch
from PIL import Image

from vitok.cli import main
from vitok.eval.run import run_eval


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.full((32, 32, 3), 60 * i, dtype=np.uint8)).save(folder / f"{i}.jpg")
    return folder


@pytest.mark.parametrize("options, message", [
    ({"image_size": 0}, "--image-size must be a positive integer, got 0"),
    ({"image_size": -5}, "--image-size must be a positive integer, got -5"),
    ({"frames": -1}, "--frames must be a positive integer, got -1"),
    ({"device": "foo"}, r"--device 'foo' is not a torch device; pass cpu, cuda or cuda:N"),
    ({"device": "meta"}, r"--device 'meta': vitok runs on cpu, cuda or mps, not meta"),
])
def test_bad_arguments_are_refused_before_the_checkpoint_loads(tmp_path, options, message):
    # The checkpoint does not exist: the argument's error must come first.
    with pytest.raises(ValueError, match=message):
        run_eval(tmp_path / "no-checkpoint", str(tmp_path), workers=0, **{"device": "cpu", **options})
    assert not (tmp_path / "no-checkpoint-eval").exists()


def test_cuda_without_cuda_is_refused_before_the_checkpoint_loads(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="--device cuda: CUDA is not available.*--device cpu"):
        run_eval(tmp_path / "no-checkpoint", str(tmp_path), workers=0, device="cuda")


@pytest.mark.parametrize("options, flag", [({"frames": 4}, "--frames 4"), ({"stride": 2}, "--frame-stride 2")])
def test_video_options_on_an_image_model_are_errors(checkpoint, images, tmp_path, options, flag):
    with pytest.raises(ValueError, match=f"{flag}: --frames and --frame-stride apply to video models; this model "
                                         f"is an image model"):
        run_eval(checkpoint, str(images), workers=0, device="cpu", out=tmp_path / "r", **options)
    assert not (tmp_path / "r").exists()


def test_cli_eval_frames_on_an_image_model(checkpoint, images, tmp_path, capsys):
    assert main(["eval", str(checkpoint), "--data", str(images), "--frames", "4", "--device", "cpu",
                 "--workers", "0", "--out", str(tmp_path / "r")]) == 2
    assert "this model is an image model" in capsys.readouterr().err


def test_eval_reads_a_glob_of_images(checkpoint, images, tmp_path):
    doc = run_eval(checkpoint, str(images / "*.jpg"), image_size=32, workers=0, device="cpu",
                   metrics=["psnr", "ssim"], out=tmp_path / "r")
    assert doc["num_samples"] == 2 and not doc["skipped_files"]
