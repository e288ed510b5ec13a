"""Weight files: lookup order, SHA-256 verification and the messages for missing or wrong files."""

import hashlib

import pytest
import torch

from vitok.cli import main
from vitok.metrics import weights
from vitok.metrics.weights import WeightFile, WeightsUnavailable, describe_weights, load_state_dict, locate


def test_lookup_order(tmp_path, monkeypatch):
    monkeypatch.setenv("VITOK_WEIGHTS", str(tmp_path / "env"))
    assert weights.weights_dir(tmp_path / "arg") == tmp_path / "arg"
    assert weights.weights_dir() == tmp_path / "env"
    monkeypatch.delenv("VITOK_WEIGHTS")
    assert str(weights.weights_dir()).endswith(".cache/vitok/weights")


def test_missing_file_names_metric_file_folder_and_source(tmp_path):
    with pytest.raises(WeightsUnavailable) as err:
        locate("inception", tmp_path, needed_for="rFID")
    message = str(err.value)
    for text in ("rFID needs pt_inception-2015-12-05-6726825d.pth", str(tmp_path), "pytorch-fid/releases",
                 "VITOK_WEIGHTS"):
        assert text in message


def test_wrong_file_is_rejected_by_digest(tmp_path):
    (tmp_path / "pt_inception-2015-12-05-6726825d.pth").write_bytes(b"not the weights")
    with pytest.raises(WeightsUnavailable, match="has sha256 .* expected 6726825d0af5.*not the published file"):
        locate("inception", tmp_path)
    rows = {r["key"]: r for r in describe_weights(tmp_path)}
    assert rows["inception"]["state"] == "mismatch"
    assert rows["vgg16"]["state"] == "missing"


def test_verified_file_loads_as_a_state_dict(tmp_path, monkeypatch):
    path = tmp_path / "tiny.pth"
    torch.save({"w": torch.arange(3.0)}, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setitem(weights.WEIGHT_FILES, "tiny", WeightFile("tiny", "tiny.pth", digest, "a test", "nowhere"))
    assert locate("tiny", tmp_path) == tmp_path / "tiny.pth"
    assert torch.equal(load_state_dict("tiny", tmp_path)["w"], torch.arange(3.0))
    # A published prefix (torch.hub's file-name convention) verifies too.
    monkeypatch.setitem(weights.WEIGHT_FILES, "tiny", WeightFile("tiny", "tiny.pth", digest[:8], "a test", "nowhere"))
    assert {r["key"]: r["state"] for r in describe_weights(tmp_path)}["tiny"] == "verified"


def test_every_known_file_has_a_purpose_and_source():
    for spec in weights.WEIGHT_FILES.values():
        assert spec.purpose and spec.source.startswith("https://") and spec.filename


def test_vitok_weights_command(tmp_path, capsys):
    assert main(["weights", "--weights", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path) in out
    for spec in weights.WEIGHT_FILES.values():
        assert spec.filename in out
    assert "[missing]" in out
