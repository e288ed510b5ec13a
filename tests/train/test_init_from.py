"""`vitok train` from an existing tokenizer (model.init): decoder fine-tuning of a converted v2 checkpoint,
stage-1 fine-tuning, and everything a wrong model.init or model section is refused with."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vitok.model import ViTok, vitok_v2
from vitok.train import checkpoint as ckpt
from vitok.train import load_config, train
from vitok.train.config import resolve_model_config

from train_helpers import TINY, photo_folder  # noqa: F401 (a fixture)

FIXTURE = Path(__file__).resolve().parents[1] / "model" / "fixtures" / "vitok_v2"
# TINY's training settings; the model's sizes come from model.init (patch 8, c=8, widths 64 and 96).
BASE = [a for a in TINY if not a.startswith("model.")] + ["model.image_size=32"]
ENCODER = ("embed.", "encoder.", "to_latent.", "to_moments.")


@pytest.fixture
def v2_folder(tmp_path) -> Path:
    """The tiny reference v2 tokenizer converted into a vitok checkpoint folder."""
    out = tmp_path / "v2"
    vitok_v2.convert(FIXTURE, out, image_size=64)
    return out


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def _is_encoder(key: str) -> bool:
    return key.startswith(ENCODER)


def test_decoder_fine_tuning_of_a_converted_v2_checkpoint(tmp_path, photo_folder, v2_folder, monkeypatch):
    run = tmp_path / "run"
    args = BASE + [f"data.source={photo_folder}", f"model.init={v2_folder}", "train.stage1_steps=0",
                   "train.stage2_steps=3", "train.eval_every=2", "train.checkpoint_every=100", "train.keep_last=5"]
    doc = train(load_config(None, args), out=run)
    init = _weights(v2_folder)
    live = ckpt.load_checkpoint(ckpt.latest_checkpoint(run / "checkpoints"))["model"]
    exported = _weights(run / "model")
    assert live.keys() == init.keys() == exported.keys()
    # Stage 2 froze the encoder (bitwise) and trained the decoder.
    for key, value in init.items():
        if _is_encoder(key):
            assert torch.equal(live[key], value) and torch.equal(exported[key], value), key
    assert any(not torch.equal(live[k], v) for k, v in init.items() if not _is_encoder(k))
    assert json.loads((run / "model" / "config.json").read_text())["config"]["architecture"] == "vitok-v2"

    # The initial model is the guard's reference, with a checkpoint the selection may export.
    stage2 = doc["stage2"]
    assert stage2["reference"]["step"] == 0 and stage2["reference_is"].startswith("the initial model")
    assert not stage2["guard_rule"].startswith("inactive")
    assert [e["step"] for e in stage2["evaluations"]] == [0, 2, 3]
    assert 0 in {s for s, _ in ckpt.list_checkpoints(run / "checkpoints")}
    assert doc["selection"]["step"] in (0, 2, 3)

    # The report names the init checkpoint and why KL is inactive.
    assert doc["init"] == str(v2_folder) and doc["architecture"] == "vitok-v2"
    assert "deterministic" in doc["loss_terms"]["kl"]
    markdown = (run / "report.md").read_text()
    assert f"initialised from: `{v2_folder}`" in markdown and "the initial model" in markdown
    assert (run / "config.yaml").read_text().count(f"init: {v2_folder}") == 1

    # Resumable; on --resume the weights come from the run's checkpoint, never from model.init.
    import vitok.train.loop as loop

    def no_init(self):
        raise AssertionError("a resumed run loaded model.init")

    monkeypatch.setattr(loop.Trainer, "load_init", no_init)
    doc = train(load_config(run / "config.yaml", ["train.stage2_steps=4"]), resume=run)
    assert doc["steps"] == 4
    live = ckpt.load_checkpoint(ckpt.latest_checkpoint(run / "checkpoints"))["model"]
    assert all(torch.equal(live[k], v) for k, v in init.items() if _is_encoder(k))

    # Moved away, model.init fails to resolve; any folder of the same model then serves on resume.
    v2_folder.rename(tmp_path / "moved")
    with pytest.raises(ValueError, match="model.init: checkpoint folder .* does not exist"):
        load_config(run / "config.yaml")
    same = ckpt.latest_checkpoint(run / "checkpoints") / "model"
    doc = train(load_config(run / "config.yaml", [f"model.init={same}", "train.stage2_steps=5"]), resume=run)
    assert doc["steps"] == 5
    # Another model is refused before anything is written.
    other = tmp_path / "other"
    ViTok(resolve_model_config(load_config(None, TINY))).save_pretrained(other)
    with pytest.raises(ValueError, match="describes another model than checkpoint .* pass model.init="):
        train(load_config(run / "config.yaml", [f"model.init={other}", "train.stage2_steps=6"]), resume=run)


def test_stage_one_on_a_deterministic_latent_needs_kl_weight_zero(tmp_path, photo_folder, v2_folder, monkeypatch):
    args = BASE + [f"data.source={photo_folder}", f"model.init={v2_folder}", "train.stage1_steps=2",
                   "train.stage2_steps=0", "train.checkpoint_every=100"]
    with pytest.raises(ValueError, match="deterministic latent .* set loss.kl_weight=0 .* or "
                                         "train.stage1_steps=0"):
        load_config(None, args)
    assert not (tmp_path / "run").exists()

    import vitok.train.loop as loop

    def no_kl(posterior):
        raise AssertionError("kl_loss called on a deterministic latent")

    monkeypatch.setattr(loop, "kl_loss", no_kl)
    doc = train(load_config(None, args + ["loss.kl_weight=0"]), out=tmp_path / "run")
    assert doc["steps"] == 2 and "deterministic" in doc["loss_terms"]["kl"]
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
    assert len(lines) == 2 and all("kl" not in l and l["loss"] > 0 for l in lines)
    # Stage 1 trains the encoder too.
    init, after = _weights(v2_folder), _weights(tmp_path / "run" / "model")
    assert any(not torch.equal(after[k], v) for k, v in init.items() if _is_encoder(k))


def test_stage_one_fine_tuning_of_a_vitok_checkpoint_starts_from_its_weights(tmp_path, photo_folder):
    source = tmp_path / "tok"
    torch.manual_seed(123)  # other weights than the run's own seeded init
    ViTok(resolve_model_config(load_config(None, TINY))).save_pretrained(source)
    # A learning rate so small that one step leaves the weights where they started.
    args = BASE + [f"data.source={photo_folder}", f"model.init={source}", "train.stage1_steps=1",
                   "train.stage2_steps=0", "optim.lr=1e-12", "train.checkpoint_every=100"]
    doc = train(load_config(None, args), out=tmp_path / "run")
    assert doc["architecture"] == "vitok" and doc["loss_terms"]["kl"].startswith("active")
    init, after = _weights(source), _weights(tmp_path / "run" / "model")
    for key, value in init.items():
        torch.testing.assert_close(after[key], value, rtol=0, atol=1e-6, msg=key)
    line = next(json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"loss"' in l)
    assert "kl" in line


@pytest.mark.parametrize("override, message", [
    ("model.channels=4", "model.channels is 4 here but 8 there"),
    ("model.encoder_width=128", "model.encoder_width is 128 here but 64 there"),
    ("model.frames=2", "model.frames is 2 here but 1 there"),
    ("model.name=T-T/8", "model.name is 'T-T/8' here but '' there"),
])
def test_model_fields_that_contradict_the_init_checkpoint_are_refused(v2_folder, override, message):
    with pytest.raises(ValueError, match="fixes the model's architecture and sizes") as err:
        load_config(None, BASE + [f"model.init={v2_folder}", "train.stage1_steps=0", override])
    assert message in str(err.value)
    assert f"{override.split('=')[0]}=" in str(err.value)  # the default that means "from the checkpoint"
    if override.startswith("model.name"):
        assert "give way when model.init is an override" in str(err.value)


def test_init_on_the_command_line_replaces_the_config_files_model(v2_folder):
    """`vitok train model.init=X` without --config reads the demo config, whose model is T-T/8 with c=16:
    the checkpoint's architecture wins over the file's, an override on the command line does not."""
    config = load_config("demo", [f"model.init={v2_folder}", "train.stage1_steps=0", "train.stage2_steps=2"])
    assert resolve_model_config(config).architecture == "vitok-v2"
    assert (config.model.name, config.model.channels) == ("S-B/16", 16)  # the defaults: "from the checkpoint"
    with pytest.raises(ValueError, match="model.channels is 4 here but 8 there"):
        load_config("demo", [f"model.init={v2_folder}", "train.stage1_steps=0", "model.channels=4"])


def test_model_fields_equal_to_the_checkpoint_or_the_default_are_accepted(v2_folder):
    config = load_config(None, BASE + [f"model.init={v2_folder}", "train.stage1_steps=0", "model.channels=8",
                                       "model.encoder_width=64", "model.decoder_depth=3", "model.qk_norm=true",
                                       "model.patch_size=8"])
    model = resolve_model_config(config)
    assert (model.architecture, model.image_size, model.channels, model.decoder_width) == ("vitok-v2", 32, 8, 96)
    # image_size is the training crop: it must fit the checkpoint's patch.
    with pytest.raises(ValueError, match="model.image_size 36 with model.init .* not divisible by patch_size 8"):
        load_config(None, BASE + [f"model.init={v2_folder}", "train.stage2_steps=0", "loss.kl_weight=0",
                                  "model.image_size=36"])


def test_a_released_name_resolves_without_a_download():
    config = load_config(None, BASE + ["model.init=vitok-v2/350M-f16x64", "train.stage1_steps=0",
                                       "model.image_size=256"])
    model = resolve_model_config(config)
    assert (model.architecture, model.encoder_width, model.channels, model.name) == \
        ("vitok-v2", 1024, 64, "vitok-v2/350M-f16x64")
    with pytest.raises(ValueError, match="not a released checkpoint; the released ones are vitok-v2/350M-f16x16"):
        load_config(None, BASE + ["model.init=vitok-v2/nope", "train.stage1_steps=0"])


def test_a_missing_init_folder_is_refused_before_any_run_folder(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match=f"model.init: checkpoint folder {missing} does not exist.*save_pretrained"):
        load_config(None, BASE + [f"model.init={missing}", "train.stage1_steps=0"])
    # A config built in Python is checked again by train() before the run folder is made.
    config = load_config(None, BASE + ["train.stage1_steps=0"])
    config.model.init = str(missing)
    with pytest.raises(ValueError, match="does not exist"):
        train(config, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    from vitok.cli import main

    assert main(["train", "--out", str(tmp_path / "cli"), f"model.init={missing}", "train.stage1_steps=0"]) == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "cli").exists()
