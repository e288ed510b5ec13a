"""Bad inputs to latent generation (`vitok latents`, `vitok dit ...`) and the clear error each must produce,
before any work is done and before anything is written (issue 14)."""

import math
import os
import shutil

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file

from vitok.cli import main
from vitok.data.images import bundled_photos, load_image
from vitok.generate.diffusion import GaussianDiffusion
from vitok.generate.dit import DiTConfig
from vitok.generate.latents import LatentStore, encode_folder, shard_problem
from vitok.generate.folders import load_dit
from vitok.generate.train import DiTTrainConfig, load_run_config, parse_overrides
from vitok.model import ViTok, ViTokConfig

TINY_DIT = ["width=32", "depth=1", "heads=2", "batch_size=4", "log_every=1", "checkpoint_every=2",
            "sample_every=0", "num_preview=2", "preview_steps=2", "device=cpu", "ema_decay=0.99"]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A tiny tokenizer, a 2-class photo folder, its latent store (3 shards of 2) and a 2-step DiT run."""
    root = tmp_path_factory.mktemp("bad_inputs")
    torch.manual_seed(0)
    ViTok(ViTokConfig(encoder_width=32, encoder_depth=1, encoder_heads=2, decoder_width=32, decoder_depth=1,
                      decoder_heads=2, patch_size=8, channels=4, image_size=32)).save_pretrained(root / "tok")
    photos = bundled_photos()
    for i in range(6):
        crop = load_image(photos[i % len(photos)])[8 * i:8 * i + 40, 8 * i:8 * i + 40]
        folder = root / "data" / ("cat" if i % 2 else "ant")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(crop).save(folder / f"img{i}.png")
    assert main(["latents", str(root / "tok"), "--data", str(root / "data"), "--out", str(root / "lat"),
                 "--batch-size", "2", "--shard-size", "2"]) == 0
    assert main(["dit", "train", "--latents", str(root / "lat"), "--out", str(root / "run"), "steps=2",
                 *TINY_DIT]) == 0
    (root / "a_file.txt").write_text("not a folder\n")
    return root


def error_of(capsys, argv: list[str]) -> str:
    """The CLI's `error: ...` line for argv, after checking it exits 2."""
    capsys.readouterr()
    assert main(argv) == 2
    return capsys.readouterr().err


def snapshot(folder) -> dict:
    """Every file under folder with its bytes: what must not change."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- dit sample / dit eval arguments: refused before anything is loaded (the run folder does not even exist) ----

@pytest.mark.parametrize("args, message", [
    (["--num", "-1"], "--num must be a positive integer, got -1"),
    (["--num", "0"], "--num must be a positive integer, got 0"),
    (["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
    (["--steps", "0"], "--steps must be a positive integer, got 0"),
    (["--cfg", "nan"], "--cfg must be a finite number >= 0"),
    (["--cfg", "inf"], "--cfg must be a finite number >= 0"),
    (["--cfg", "-1"], "--cfg must be a finite number >= 0"),
    (["--eta", "2"], "--eta must lie in [0, 1]"),
    (["--device", "foo"], "--device 'foo' is not a torch device; pass cpu, cuda or cuda:N"),
    pytest.param(["--device", "cuda"], "--device cuda: CUDA is not available here", marks=NO_CUDA),
])
@pytest.mark.parametrize("action", ["sample", "eval"])
def test_sampling_arguments_are_refused_before_loading(capsys, tmp_path, action, args, message):
    extra = ["--reference", str(tmp_path)] if action == "eval" else []
    err = error_of(capsys, ["dit", action, str(tmp_path / "no_such_run"), *args, *extra])
    assert message in err


def test_sample_out_that_is_a_file_is_refused_before_sampling(made, capsys):
    err = error_of(capsys, ["dit", "sample", str(made / "run"), "--out", str(made / "a_file.txt")])
    assert f"--out {made / 'a_file.txt'} is an existing file, not a folder" in err
    err = error_of(capsys, ["dit", "sample", str(made / "run"), "--out", str(made / "a_file.txt" / "x")])
    assert "is a file, so no folder can be made under it" in err


def test_sample_steps_beyond_the_runs_timesteps(made, capsys):
    err = error_of(capsys, ["dit", "sample", str(made / "run"), "--steps", "5000", "--out", str(made / "s")])
    assert "--steps 5000 exceeds the 1000 diffusion timesteps" in err and "pass --steps 1000 or fewer" in err
    assert not (made / "s").exists()


@pytest.mark.parametrize("build, message", [
    ("tokenizer_run", "is a tokenizer run folder (vitok train), not a DiT run; pass a folder written by "
                      "`vitok dit train`"),
    ("tokenizer_run_unfinished", "is a tokenizer run folder (vitok train), not a DiT run"),
    ("tokenizer_checkpoint", "is a tokenizer checkpoint folder (ViTok.save_pretrained), not a DiT run"),
    ("latent_store", "is a latent store (written by vitok latents), not a DiT run"),
    ("empty", "is not a DiT run: it has neither model/ nor checkpoints/ with a DiT"),
    ("missing", "does not exist; pass a run folder written by `vitok dit train`"),
    ("file", "is a file; pass a run folder written by `vitok dit train`"),
])
def test_sample_names_what_a_folder_that_is_no_dit_run_is(made, tmp_path, capsys, build, message):
    folder = tmp_path / build
    if build.startswith("tokenizer_run"):
        folder.mkdir()
        (folder / "config.yaml").write_text(yaml.safe_dump({"model": {"channels": 4}, "train": {"steps": 2}}))
        if build == "tokenizer_run":
            shutil.copytree(made / "tok", folder / "model")
    elif build == "tokenizer_checkpoint":
        shutil.copytree(made / "tok", folder)
    elif build == "latent_store":
        shutil.copytree(made / "lat", folder)
    elif build == "empty":
        folder.mkdir()
    elif build == "file":
        folder.write_text("x")
    err = error_of(capsys, ["dit", "sample", str(folder), "--out", str(tmp_path / "out")])
    assert message in err
    assert not (tmp_path / "out").exists()


def test_sample_takes_a_dit_model_folder_itself(made, tmp_path):
    assert main(["dit", "sample", str(made / "run" / "model"), "--num", "1", "--steps", "2",
                 "--out", str(tmp_path / "s")]) == 0
    assert (tmp_path / "s" / "sample_00000_class0.png").is_file()


@pytest.mark.parametrize("reference, message", [
    ("nope", "does not exist; pass the folder of real images to compare the samples with"),
    ("a_file.txt", "is a file; pass the folder of real images"),
    ("empty", "holds no images; pass the folder of real images"),
])
def test_eval_reference_must_be_a_folder_of_images(made, tmp_path, capsys, reference, message):
    (made / "empty").mkdir(exist_ok=True)
    err = error_of(capsys, ["dit", "eval", str(made / "run"), "--reference", str(made / reference), "--num", "2",
                            "--steps", "2", "--out", str(tmp_path / "ev")])
    assert f"--reference {made / reference} {message}" in err
    assert not (tmp_path / "ev").exists()


# ---- vitok latents arguments ----

@pytest.mark.parametrize("args, message", [
    (["--out", "{root}/a_file.txt"], "--out {root}/a_file.txt is an existing file, not a folder"),
    (["--out", "{root}/new", "--device", "foo"], "--device 'foo' is not a torch device"),
    pytest.param(["--out", "{root}/new", "--device", "cuda"], "--device cuda: CUDA is not available here",
                 marks=NO_CUDA),
    (["--out", "{root}/new", "--image-size", "0"], "--image-size must be a positive number of pixels, got 0"),
])
def test_latents_arguments_are_refused_before_work(made, capsys, args, message):
    args = [a.format(root=made) for a in args]
    err = error_of(capsys, ["latents", str(made / "tok"), "--data", str(made / "data"), *args])
    assert message.format(root=made) in err
    assert not (made / "new").exists()


# ---- DiT config values ----

@pytest.mark.parametrize("overrides, message", [
    (["ema_decay=2"], "ema_decay must be in [0, 1), got 2.0"),
    (["ema_decay=1"], "ema_decay must be in [0, 1), got 1.0"),
    (["ema_decay=-0.5"], "ema_decay must be in [0, 1), got -0.5"),
    (["ema_decay=nan"], "ema_decay must be in [0, 1), got nan"),
    (["class_dropout=1"], "class_dropout must be in [0, 1), got 1.0"),
    (["lr=nan"], "lr must be a finite number > 0, got nan"),
    (["lr=inf"], "lr must be a finite number > 0, got inf"),
    (["lr=0"], "lr must be a finite number > 0, got 0.0"),
    (["weight_decay=-1"], "weight_decay must be >= 0 and finite, got -1.0"),
    (["grad_clip=nan"], "grad_clip must be >= 0 and finite, got nan"),
    (["preview_cfg=inf"], "preview_cfg must be >= 0 and finite, got inf"),
    (["time_limit_minutes=inf"], "time_limit_minutes must be >= 0 and finite, got inf"),
    (["steps=0"], "steps must be at least 1, got 0"),
    (["batch_size=0"], "batch_size must be at least 1, got 0"),
    (["num_preview=0"], "num_preview must be at least 1, got 0"),
    (["preview_steps=0"], "preview_steps must be at least 1, got 0"),
    (["width=-32"], "width must be >= 0, got -32"),
    (["warmup_steps=-1"], "warmup_steps must be >= 0, got -1"),
    (["seed=-1"], "seed must be >= 0, got -1"),
    (["timesteps=1"], "the linear schedule needs timesteps >= 21 (its betas reach 1 below that), got 1"),
    (["timesteps=20"], "the linear schedule needs timesteps >= 21"),
    (["schedule=cosine", "timesteps=1"], "preview_steps=50 exceeds timesteps=1: a sampler visits at most one step"),
    (["schedule=quadratic"], "schedule must be one of ('linear', 'cosine'), got 'quadratic'"),
    (["prediction=x0"], "unknown prediction 'x0'"),
    (["model=DiT-Q"], "cannot parse DiT name 'DiT-Q'"),
    (["width=30", "heads=4"], "width 30 is not divisible by heads 4"),
    (["precision=fp16"], "precision must be bf16 or fp32, got 'fp16'"),
])
def test_dit_train_config_ranges(overrides, message):
    config = parse_overrides(DiTTrainConfig(latents="lat"), overrides)
    with pytest.raises(ValueError) as err:
        config.validate()
    assert message in str(err.value)


def test_dit_train_with_a_bad_value_writes_nothing(made, tmp_path, capsys):
    err = error_of(capsys, ["dit", "train", "--latents", str(made / "lat"), "--out", str(tmp_path / "r"), "steps=4",
                            *TINY_DIT[:-1], "ema_decay=2"])
    assert "ema_decay must be in [0, 1), got 2.0" in err
    assert not (tmp_path / "r").exists()


def test_dit_train_config_types_from_a_hand_edited_yaml():
    with pytest.raises(ValueError, match="ema_decay takes a float, got 'high'"):
        DiTTrainConfig(latents="lat", ema_decay="high").validate()
    with pytest.raises(ValueError, match="compile takes a bool, got 'yes'"):
        DiTTrainConfig(latents="lat", compile="yes").validate()


@pytest.mark.parametrize("field, value, message", [
    ("rope_theta", math.nan, "'rope_theta' must be a finite number > 0, got nan"),
    ("rope_theta", "abc", "'rope_theta' must be a finite number > 0, got 'abc'"),
    ("norm_eps", 0.0, "'norm_eps' must be a finite number > 0, got 0.0"),
    ("norm_eps", -1e-6, "'norm_eps' must be a finite number > 0"),
    ("class_dropout", math.nan, "class_dropout must lie in [0, 1), got nan"),
    ("qk_norm", "yes", "'qk_norm' must be true or false, got 'yes'"),
    ("learn_sigma", 1, "'learn_sigma' must be true or false, got 1"),
])
def test_dit_model_config_ranges(field, value, message):
    with pytest.raises(ValueError) as err:
        DiTConfig(width=32, depth=1, heads=2, **{field: value})
    assert message in str(err.value)


def test_linear_schedule_needs_enough_timesteps():
    with pytest.raises(ValueError, match="needs timesteps >= 21"):
        GaussianDiffusion("linear", 20)
    assert bool((GaussianDiffusion("linear", 21).alphas_cumprod > 0).all())
    assert GaussianDiffusion("cosine", 1).timesteps == 1


# ---- dit train --resume ----

@pytest.mark.parametrize("overrides, message", [
    (["width=128"], "width 32 -> 128"),
    (["depth=2"], "depth 1 -> 2"),
    (["heads=4"], "heads 2 -> 4"),
    (["model=DiT-S/2"], "group 1 -> 2"),
    (["prediction=v"], "prediction 'eps' -> 'v'"),
    (["schedule=cosine"], "schedule 'linear' -> 'cosine'"),
    (["timesteps=500"], "timesteps 1000 -> 500"),
    (["width=64", "depth=3"], "width 32 -> 64, depth 1 -> 3"),
])
def test_resume_refuses_architecture_changes_and_writes_nothing(made, capsys, overrides, message):
    before = snapshot(made / "run")
    err = error_of(capsys, ["dit", "train", "--resume", str(made / "run"), *overrides])
    assert f"--resume {made / 'run'}: {message}" in err
    assert "cannot change on resume" in err
    assert snapshot(made / "run") == before
    with pytest.raises(ValueError, match="cannot change on resume"):
        load_run_config(made / "run", overrides)


@pytest.mark.parametrize("flags, message", [
    (["--out", "{root}/elsewhere"], "continues that run in its own folder; drop --out"),
    (["--latents", "{root}/lat"], "drop --latents (key=value overrides of other fields still apply)"),
    (["--model", "DiT-B"], "drop --model"),
    (["--latents", "{root}/lat", "--model", "DiT-B"], "drop --latents and --model"),
])
def test_resume_refuses_flags_it_would_ignore(made, capsys, flags, message):
    before = snapshot(made / "run")
    err = error_of(capsys, ["dit", "train", "--resume", str(made / "run"), *[f.format(root=made) for f in flags]])
    assert message in err
    assert snapshot(made / "run") == before and not (made / "elsewhere").exists()


def test_resume_refuses_a_latent_store_with_other_statistics(made, tmp_path, capsys):
    """A store from other images (other per-channel statistics) would train on differently normalised latents."""
    data = tmp_path / "data"
    shutil.copytree(made / "data", data)
    (data / "ant" / "img0.png").unlink()
    assert main(["latents", str(made / "tok"), "--data", str(data), "--out", str(tmp_path / "lat2")]) == 0
    run = tmp_path / "run"
    shutil.copytree(made / "run", run)
    before = snapshot(run)
    err = error_of(capsys, ["dit", "train", "--resume", str(run), f"latents={tmp_path / 'lat2'}"])
    assert "checkpoint step_00000002 holds another model than this config builds (latent store mean" in err
    assert "cannot change on resume" in err
    assert snapshot(run) == before
    # A moved copy of the run's own store is the same store: resuming from it works.
    shutil.copytree(made / "lat", tmp_path / "moved")
    assert main(["dit", "train", "--resume", str(run), f"latents={tmp_path / 'moved'}", "steps=3"]) == 0


def test_resume_of_a_tokenizer_run_folder(made, tmp_path, capsys):
    (tmp_path / "tokrun").mkdir()
    shutil.copytree(made / "tok", tmp_path / "tokrun" / "model")
    err = error_of(capsys, ["dit", "train", "--resume", str(tmp_path / "tokrun")])
    assert "is a tokenizer run folder (vitok train), not a DiT run" in err


# ---- dit train --out ----

def test_fresh_run_writes_only_into_a_new_or_empty_folder(made, tmp_path, capsys):
    before = snapshot(made / "run")
    err = error_of(capsys, ["dit", "train", "--latents", str(made / "lat"), "--out", str(made / "run"), *TINY_DIT])
    assert "already holds files" in err and f"vitok dit train --resume {made / 'run'}" in err
    assert snapshot(made / "run") == before
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "report.md").write_text("my notes\n")
    err = error_of(capsys, ["dit", "train", "--latents", str(made / "lat"), "--out", str(tmp_path / "mine"),
                            *TINY_DIT])
    assert "already holds files (report.md)" in err and "pass a new or empty folder" in err
    assert (tmp_path / "mine" / "report.md").read_text() == "my notes\n"
    err = error_of(capsys, ["dit", "train", "--latents", str(made / "lat"), "--out", str(made / "a_file.txt")])
    assert "is an existing file, not a folder" in err


# ---- a damaged latent store ----

def _truncate(path, size):
    data = path.read_bytes()
    path.write_bytes(data[:size])


DAMAGE = {
    "cut_in_data": (lambda p: _truncate(p, p.stat().st_size - 7), "bytes, but its header describes"),
    "cut_in_header": (lambda p: _truncate(p, 40), "shorter than its"),
    "empty": (lambda p: _truncate(p, 0), "is 0 bytes, too short for a safetensors header (truncated)"),
    "garbage": (lambda p: p.write_bytes(b"\xff" * 64), "does not start with a safetensors header"),
    "extra_bytes": (lambda p: p.write_bytes(p.read_bytes() + b"junk"), "(damaged)"),
    "other_tensors": (lambda p: save_file({"x": torch.zeros(2)}, str(p)), "holds no latents or labels tensor"),
    "missing": (lambda p: p.unlink(), "is missing"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_shard_is_named_by_dit_train_and_rewritten_by_latents(made, tmp_path, capsys, damage):
    store = tmp_path / "lat"
    shutil.copytree(made / "lat", store)
    shard = store / "shard_00001.safetensors"
    original = {k: v.clone() for k, v in load_file(shard).items()}  # load_file maps the file: copy first
    spoil, problem = DAMAGE[damage]
    spoil(shard)
    if damage != "missing":
        assert problem in shard_problem(shard)
    with pytest.raises(ValueError) as err:
        LatentStore(store)
    assert f"shard {shard} " in str(err.value) and problem in str(err.value)
    assert f"rerun `vitok latents {made / 'tok'} --data DATA --out {store}`" in str(err.value)
    # dit train fails before training, writing nothing.
    err = error_of(capsys, ["dit", "train", "--latents", str(store), "--out", str(tmp_path / "r"), *TINY_DIT])
    assert f"shard {shard} " in err and "rerun `vitok latents" in err
    assert not (tmp_path / "r").exists()
    # The rerun the message asks for encodes that shard again, keeps the others, and the store reads back.
    lines = []
    encode_folder(made / "tok", made / "data", store, batch_size=2, shard_size=2, log=lines.append)
    assert lines[0] == "shard_00000.safetensors: already written, skipped"
    if damage != "missing":
        assert lines[1].startswith("shard_00001.safetensors: on disk but unreadable (")
        assert lines[1].endswith("); encoding it again")
    assert "shard_00001.safetensors: 2 latents" in lines
    assert shard_problem(shard) is None
    rewritten = load_file(shard)
    assert rewritten.keys() == original.keys() and torch.equal(rewritten["labels"], original["labels"])
    torch.testing.assert_close(rewritten["latents"].float(), original["latents"].float(), atol=2e-3, rtol=1e-3)
    assert len(LatentStore(store)) == 6


def test_latents_removes_temporaries_of_an_interrupted_run(made, tmp_path):
    store = tmp_path / "lat"
    shutil.copytree(made / "lat", store)
    (store / ".shard_00002.safetensors.k3j2.tmp").write_bytes(b"half a shard")
    lines = []
    encode_folder(made / "tok", made / "data", store, batch_size=2, shard_size=2, log=lines.append)
    assert "removed .shard_00002.safetensors.k3j2.tmp, left by an interrupted run" in lines
    assert not list(store.glob(".*.tmp"))


def test_store_whose_shards_disagree_with_its_index(made, tmp_path):
    store = tmp_path / "lat"
    shutil.copytree(made / "lat", store)
    shard = store / "shard_00002.safetensors"
    tensors = load_file(shard)
    save_file({k: v[:1] for k, v in tensors.items()}, str(shard))
    with pytest.raises(ValueError, match=r"the shards hold 5 latents but index.json counts 6; rerun `vitok latents"):
        LatentStore(store)


# ---- a damaged DiT model folder ----

@pytest.mark.parametrize("damage, message", [
    ("truncated", "model.safetensors cannot be read"),
    ("nan", "are not finite floating-point values"),
    ("other_width", "model.safetensors does not fit the DiT that config.json describes"),
    ("not_a_dit", "is not a DiT's config (no format='vitok-dit'"),
])
def test_load_dit_refuses_an_inconsistent_model_folder(made, tmp_path, damage, message):
    import json

    folder = tmp_path / "model"
    shutil.copytree(made / "run" / "model", folder)
    weights, config = folder / "model.safetensors", folder / "config.json"
    if damage == "truncated":
        _truncate(weights, weights.stat().st_size // 2)
    elif damage == "nan":
        tensors = load_file(weights)
        tensors["embed.weight"][0, 0] = math.nan
        save_file(tensors, str(weights))
    elif damage == "other_width":
        document = json.loads(config.read_text())
        document["dit"]["width"] = 64
        config.write_text(json.dumps(document))
    else:
        config.write_text(json.dumps({"format": "vitok", "config": {}}))
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        load_dit(folder)


def test_a_dit_run_folder_in_use_is_refused(made, capsys):
    from vitok.train.rundir import RunLock

    lock = RunLock.acquire(made / "run")  # as if another `dit train --resume` were running there
    lock.record()
    try:
        err = error_of(capsys, ["dit", "train", "--resume", str(made / "run"), "steps=99"])
    finally:
        lock.release()
    assert f"{made / 'run'} is in use by the run of pid {os.getpid()}" in err
