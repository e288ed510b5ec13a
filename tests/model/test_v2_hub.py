"""Released v2 checkpoints by name, offline: a Hugging Face cache laid out as huggingface_hub lays it out.

A test-only RELEASED entry points at a fake repo whose snapshot holds the tiny reference fixture, and
HF_HUB_OFFLINE=1 keeps huggingface_hub in its cache: nothing here touches the network.
"""

import sys
from pathlib import Path

import pytest
import torch

from vitok.cli import main
from vitok.model import ViTok
from vitok.model import vitok_v2
from vitok.model.vitok_v2 import DECODER_FILE, ENCODER_FILE, Released

from conftest import use_offline_hub_cache, write_hub_repo

pytest.importorskip("huggingface_hub.constants")

FIXTURE = Path(__file__).parent / "fixtures" / "vitok_v2"
REPO = "vitok-test/ViTok-v2-tiny"
NAME = "tiny-test"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
# The fixture's sizes (its README): encoder 64 wide x 2 blocks, decoder 96 x 3, 4 heads, patch 8, 8 channels.
TINY = Released(REPO, (64, 2, 4), (96, 3, 4), 8, 8)


@pytest.fixture(params=[True, False], ids=["symlinked-blobs", "real-files"])
def hub(request, tmp_path, monkeypatch) -> Path:
    """An offline Hugging Face cache holding the fake release; VITOK_CACHE in tmp; returns the snapshot folder."""
    cache = use_offline_hub_cache(tmp_path, monkeypatch)
    snapshot = write_hub_repo(cache, REPO, COMMIT, [FIXTURE / ENCODER_FILE, FIXTURE / DECODER_FILE], request.param)
    monkeypatch.setenv("VITOK_CACHE", str(tmp_path / "vitok-cache"))
    monkeypatch.setitem(vitok_v2.RELEASED, NAME, TINY)
    return snapshot


def direct(tmp_path: Path) -> ViTok:
    """The fixture converted by vitok_v2.convert straight from its folder: what a load by name must equal."""
    vitok_v2.convert(FIXTURE, tmp_path / "direct")
    return ViTok.from_pretrained(tmp_path / "direct")


def assert_same_weights(a: ViTok, b: ViTok) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_load_by_name_converts_once_then_reuses_the_cache(hub, tmp_path, monkeypatch):
    model = ViTok.from_pretrained(f"vitok-v2/{NAME}")
    assert model.config.architecture == "vitok-v2" and model.config.name == f"vitok-v2/{NAME}"
    assert_same_weights(model, direct(tmp_path))
    converted = tmp_path / "vitok-cache" / "vitok-v2" / f"{NAME}@{COMMIT}"
    assert (converted / "config.json").is_file() and (converted / "model.safetensors").is_file()
    assert [p.name for p in converted.parent.iterdir()] == [converted.name]  # no temporary folder left behind
    stamp = (converted / "model.safetensors").stat().st_mtime_ns

    def no_second_conversion(*args, **kwargs):
        raise AssertionError("converted again although the cache holds the folder")

    monkeypatch.setattr(vitok_v2, "convert", no_second_conversion)
    again = ViTok.from_pretrained(f"vitok-v2/{NAME}", revision=COMMIT)  # the same commit, named explicitly
    assert_same_weights(again, model)
    assert (converted / "model.safetensors").stat().st_mtime_ns == stamp


def test_released_folder_keys_the_cache_by_image_size(hub):
    plain = vitok_v2.released_folder(NAME)
    larger = vitok_v2.released_folder(f"vitok-v2/{NAME}", image_size=512)
    assert plain.name == f"{NAME}@{COMMIT}" and larger.name == f"{NAME}@{COMMIT}@512px"
    assert ViTok.from_pretrained(larger).config.image_size == 512
    assert ViTok.from_pretrained(plain).config.image_size == 256


def test_offline_cache_miss_and_unknown_names_are_clear_errors(hub, monkeypatch):
    monkeypatch.setitem(vitok_v2.RELEASED, "absent", Released("vitok-test/absent", (64, 2, 4), (96, 3, 4), 8, 8))
    with pytest.raises(ValueError, match="cannot fetch .* vitok-test/absent .*HF_HUB_OFFLINE is set"):
        ViTok.from_pretrained("vitok-v2/absent")
    with pytest.raises(ValueError, match="unknown released v2 checkpoint 'vitok-v2/nope'.*vitok-v2/350M-f16x64"):
        ViTok.from_pretrained("vitok-v2/nope")


def test_revision_with_a_folder_is_refused(tmp_path):
    vitok_v2.convert(FIXTURE, tmp_path / "ckpt")
    with pytest.raises(ValueError, match="revision='main' picks a version of a released checkpoint"):
        ViTok.from_pretrained(tmp_path / "ckpt", revision="main")


def test_an_existing_folder_wins_over_the_release(tmp_path, monkeypatch):
    vitok_v2.convert(FIXTURE, tmp_path / "vitok-v2" / "350M-f16x64")
    monkeypatch.chdir(tmp_path)

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded although a folder of that name exists")

    monkeypatch.setattr(vitok_v2, "released_folder", no_download)
    assert ViTok.from_pretrained("vitok-v2/350M-f16x64").config.encoder_width == 64


def test_without_huggingface_hub_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # makes `import huggingface_hub` fail
    with pytest.raises(ValueError, match=r"pip install 'vitok\[hub\]'.*vitok convert vitok-v2 FOLDER OUT"):
        ViTok.from_pretrained("vitok-v2/350M-f16x64")


def test_cli_converts_a_released_name_into_dst(hub, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["convert", "vitok-v2", NAME, str(out), "--image-size", "128"]) == 0
    printed = capsys.readouterr().out
    assert f"vitok-v2/{NAME} (vitok-v2)" in printed and "parameters 465,528" in printed
    model = ViTok.from_pretrained(out)
    assert model.config.name == f"vitok-v2/{NAME}" and model.config.image_size == 128
    assert_same_weights(model, direct(tmp_path))
    assert not (tmp_path / "vitok-cache").exists()  # written to DST only, not also into the load cache


def test_cli_revision_with_a_local_source_is_refused(tmp_path, capsys):
    assert main(["convert", "vitok-v2", str(FIXTURE), str(tmp_path / "out"), "--revision", "main"]) == 2
    assert "drop --revision" in capsys.readouterr().err
