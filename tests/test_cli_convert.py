"""`vitok convert vitok-v2` on the tiny reference fixture, and `vitok info` of the released v2 checkpoints."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vitok.cli import main
from vitok.info import describe, released_config
from vitok.model import ViTok
from vitok.model import vitok_v2

FIXTURE = Path(__file__).parent / "model" / "fixtures" / "vitok_v2"
REFERENCE = json.loads((FIXTURE / "released_checkpoints.json").read_text())


def test_convert_a_folder_prints_the_summary_and_loads(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["convert", "vitok-v2", str(FIXTURE), str(out), "--name", "tiny", "--image-size", "64"]) == 0
    printed = capsys.readouterr().out
    for text in (f"wrote {out / 'config.json'} and {out / 'model.safetensors'}: tiny (vitok-v2)",
                 "encoder  64 wide x 2 blocks, 4 heads", "decoder  96 wide x 3 blocks, 4 heads",
                 "patch p=8  channels c=8  nominal image size 64", "parameters 465,528 (0.5M)"):
        assert text in printed, text
    model = ViTok.from_pretrained(out)
    assert model.config.architecture == "vitok-v2"
    assert (model.config.name, model.config.image_size, model.config.channels) == ("tiny", 64, 8)
    assert model.num_params()["total"] == 465_528


def test_convert_one_file_holding_both_halves(tmp_path, capsys):
    both = {**load_file(str(FIXTURE / "encoder.safetensors")), **load_file(str(FIXTURE / "decoder.safetensors"))}
    save_file(both, str(tmp_path / "both.safetensors"))
    assert main(["convert", "vitok-v2", str(tmp_path / "both.safetensors"), str(tmp_path / "one")]) == 0
    assert main(["convert", "vitok-v2", str(FIXTURE), str(tmp_path / "two")]) == 0
    one, two = ViTok.from_pretrained(tmp_path / "one"), ViTok.from_pretrained(tmp_path / "two")
    for key, value in one.state_dict().items():
        assert torch.equal(value, two.state_dict()[key]), key


@pytest.mark.parametrize("src, message", [
    ("missing-folder", "SRC {tmp}/missing-folder does not exist; pass a folder holding encoder.safetensors"),
    ("missing.safetensors", "SRC {tmp}/missing.safetensors does not exist"),
    ("empty", "no v2 weights at"),
    ("vitok-v2/1B-f16x16", "unknown released v2 checkpoint 'vitok-v2/1B-f16x16'; the released ones are "
                           "vitok-v2/350M-f16x16"),
], ids=["missing-folder", "missing-file", "folder-without-weights", "unknown-release"])
def test_convert_bad_sources_are_one_line_errors(tmp_path, capsys, src, message):
    (tmp_path / "empty").mkdir()
    src = src if src.startswith("vitok-v2/") else str(tmp_path / src)
    assert main(["convert", "vitok-v2", src, str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert message.format(tmp=tmp_path) in err
    assert not (tmp_path / "out").exists()


def test_convert_bad_destination_and_image_size(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert main(["convert", "vitok-v2", str(FIXTURE), str(tmp_path / "file")]) == 2
    assert "DST" in capsys.readouterr().err
    assert main(["convert", "vitok-v2", str(FIXTURE), str(tmp_path / "out"), "--image-size", "0"]) == 2
    assert "--image-size 0 is out of range" in capsys.readouterr().err


def test_convert_knows_only_its_formats(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["convert", "vitok-v1", str(FIXTURE), "out"])
    assert exit_.value.code == 2 and "invalid choice: 'vitok-v1'" in capsys.readouterr().err


def test_info_of_a_release_needs_no_download(capsys, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("info downloaded a checkpoint")

    monkeypatch.setattr(vitok_v2, "download_released", no_download)
    monkeypatch.setattr(vitok_v2, "released_folder", no_download)
    assert main(["info", "vitok-v2/350M-f16x64", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["name"] == "vitok-v2/350M-f16x64" and d["params_total"] == REFERENCE["350M-f16x64"]["params"]
    assert (d["tokens"], d["channels"], d["input"]) == (256, 64, "3x256x256")
    assert main(["info", "350M-f16x64", "--image-size", "512"]) == 0
    assert "vitok-v2/350M-f16x64  input 3x512x512  token grid 32x32" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(vitok_v2.RELEASED))
def test_released_parameter_counts_equal_the_references(name):
    # The reference's LayerNorm bottleneck has no parameters, so every tensor of both sides is counted once.
    assert describe(released_config(name))["params_total"] == REFERENCE[name]["params"]


def test_the_table_names_the_references_checkpoints():
    assert sorted(REFERENCE) == sorted(vitok_v2.RELEASED)
    for name, release in vitok_v2.RELEASED.items():
        assert release.repo == REFERENCE[name]["hub_repo"]


@pytest.mark.parametrize("argv, message", [
    (["info", "vitok-v2/350M-f16x64", "--channels", "16"],
     "has c=64 latent channels, fixed by its weights; drop --channels 16 or describe a release with 16: "
     "vitok-v2/350M-f16x16, vitok-v2/5B-f16x16"),
    (["info", "vitok-v2/350M-f16x64", "--frames", "4"], "is an image tokenizer; drop --frames 4"),
    (["info", "vitok-v2/350M"], "unknown released v2 checkpoint 'vitok-v2/350M'"),
])
def test_info_of_a_release_refuses_what_its_weights_fix(capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
