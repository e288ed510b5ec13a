"""The Hugging Face Hub, offline: load by repo id from a cache laid out as huggingface_hub lays it out;
push exercised up to the upload call; the model card checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vitok.cli import main
from vitok.model import ViTok
from vitok.model.latent_stats import MomentAccumulator
from vitok.integrations import hub

from conftest import tiny_config, use_offline_hub_cache, write_hub_repo

pytest.importorskip("huggingface_hub.constants")
huggingface_hub = pytest.importorskip("huggingface_hub")

REPO = "someone/vitok-tiny"
COMMIT = "89abcdef0123456789abcdef0123456789abcdef"


@pytest.fixture
def model() -> ViTok:
    torch.manual_seed(0)
    tok = ViTok(tiny_config()).eval()
    acc = MomentAccumulator(4)
    with torch.no_grad():
        acc.update(tok.encode(torch.rand(2, 3, 32, 32) * 2 - 1).mode())
    tok.latent_stats = acc.result(data="two noise images", fingerprint="0123456789abcdef", image_size=32)
    return tok


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    return use_offline_hub_cache(tmp_path, monkeypatch)


def cache_repo(cache: Path, files: Path, repo: str = REPO, commit: str = COMMIT) -> Path:
    return write_hub_repo(cache, repo, commit, sorted(files.iterdir()))


def test_load_by_repo_id_from_the_offline_cache(model, offline_cache, tmp_path):
    model.save_pretrained(tmp_path / "saved")
    snapshot = cache_repo(offline_cache, tmp_path / "saved")
    for revision in (None, "main", COMMIT):
        loaded = ViTok.from_pretrained(REPO, revision=revision)
        for key, value in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key
        assert loaded.latent_stats == model.latent_stats
    assert hub.hub_folder(REPO) == snapshot
    with pytest.raises(ValueError, match="fetching it from the Hugging Face Hub failed.*HF_HUB_OFFLINE is set"):
        ViTok.from_pretrained("someone/absent")
    # A repo that is not a vitok tokenizer is named as such.
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "config.json").write_text("{}")
    cache_repo(offline_cache, tmp_path / "foreign", repo="someone/foreign")
    with pytest.raises(ValueError, match="has no model.safetensors: it is not a vitok tokenizer"):
        ViTok.from_pretrained("someone/foreign")


def test_a_local_folder_wins_and_paths_are_not_repo_ids(model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model.save_pretrained(tmp_path / "someone" / "vitok-tiny")
    assert not hub.looks_like_repo_id(REPO)  # it exists as a folder here
    assert ViTok.from_pretrained(REPO).latent_stats == model.latent_stats
    assert hub.looks_like_repo_id("other/name") and not hub.looks_like_repo_id("a/b/c")
    assert not hub.looks_like_repo_id("../up") and not hub.looks_like_repo_id(Path("x/y"))


class FakeApi:
    """Stands in for huggingface_hub.HfApi: records the calls and what upload_folder would send."""

    calls: list = []
    uploaded: dict = {}

    def __init__(self, token=None):
        FakeApi.calls.append(("init", token))

    def create_repo(self, repo_id, private=False, exist_ok=False):
        FakeApi.calls.append(("create_repo", repo_id, private, exist_ok))

    def create_branch(self, repo_id, branch, exist_ok=False):
        FakeApi.calls.append(("create_branch", repo_id, branch))

    def upload_folder(self, repo_id, folder_path, revision=None, commit_message=None):
        FakeApi.calls.append(("upload_folder", repo_id, revision, commit_message))
        FakeApi.uploaded = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        return type("Commit", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()


def test_push_to_hub_uploads_the_saved_files_and_a_card(model, tmp_path, monkeypatch):
    FakeApi.calls, FakeApi.uploaded = [], {}
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = model.push_to_hub(REPO, private=True, license="apache-2.0", revision="v1")
    assert url.endswith("/commit/abc")
    assert [c[0] for c in FakeApi.calls] == ["init", "create_repo", "create_branch", "upload_folder"]
    assert FakeApi.calls[1] == ("create_repo", REPO, True, True) and FakeApi.calls[3][2] == "v1"
    assert sorted(FakeApi.uploaded) == ["README.md", "config.json", "model.safetensors"]  # nothing pickled
    model.save_pretrained(tmp_path / "saved")
    assert FakeApi.uploaded["config.json"] == (tmp_path / "saved" / "config.json").read_bytes()
    from safetensors.torch import load

    sent = load(FakeApi.uploaded["model.safetensors"])  # a safetensors header's key order is not fixed
    assert sent.keys() == model.state_dict().keys()
    assert all(torch.equal(sent[k], v) for k, v in model.state_dict().items())
    card = FakeApi.uploaded["README.md"].decode()
    assert card.startswith("---\nlicense: apache-2.0\nlibrary_name: vitok\n")
    assert "| E = L·c | 64 floats per sample |" in card and "| tokens L | 16 (grid 4×4) |" in card
    assert "two noise images" in card and f"scaling_factor {model.latent_stats.scaling_factor:.6g}" in card
    assert f'ViTok.from_pretrained("{REPO}")' in card and "normalise=True" in card


def test_vitok_push_from_a_run_folder(model, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    model.save_pretrained(run / "model")
    (run / "report.json").write_text(json.dumps({
        "steps": 120, "stage1_steps": 100, "stage2_steps": 20, "global_batch": 8, "precision": "bf16",
        "device": "cuda:0", "num_eval_samples": 50, "metrics": {"psnr": 27.5, "ssim": 0.81},
        "not_computed": {"rfid": "no weights"}, "data": {"train_files": 900}}))
    (run / "config.yaml").write_text("data:\n  source: /data/photos/train\n")
    assert main(["push", str(run), REPO, "--dry-run", str(tmp_path / "staged"), "--license", "cc-by-4.0"]) == 0
    assert "nothing uploaded" in capsys.readouterr().out
    card = (tmp_path / "staged" / "README.md").read_text()
    assert "license: cc-by-4.0" in card and "- steps: 120 (100 + 20" in card
    assert "/data/photos/train (900 training files)" in card and "| psnr | 27.5 |" in card
    assert "| rfid | not computed" in card
    assert (tmp_path / "staged" / "model.safetensors").read_bytes() == (run / "model" / "model.safetensors").read_bytes()
    FakeApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert main(["push", str(run), REPO, "--message", "first"]) == 0
    assert ("upload_folder", REPO, None, "first") in FakeApi.calls
    # Errors: not a model, not a repo id.
    assert main(["push", str(tmp_path), REPO, "--dry-run", str(tmp_path / "x")]) == 2
    assert "neither a tokenizer folder" in capsys.readouterr().err
    assert main(["push", str(run), "no-owner", "--dry-run", str(tmp_path / "y")]) == 2
    assert "not a Hub repo id" in capsys.readouterr().err


def test_without_huggingface_hub_the_errors_say_what_to_install(model, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ValueError, match=r"pip install 'vitok\[hub\]'"):
        ViTok.from_pretrained("someone/anything")
    with pytest.raises(ValueError, match=r"pip install 'vitok\[hub\]'"):
        model.push_to_hub(REPO)
