"""The training loop end to end on CPU: artefacts, exact resume after SIGKILL, NaN guard, DDP."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vitok.model import ViTok
from vitok.train import TrainingDiverged, load_config, train
from vitok.train import checkpoint as ckpt

from train_helpers import TINY, free_port, photo_folder  # noqa: F401 (a fixture)


def _run_cli(args, env=None, wait=True):
    cmd = [sys.executable, "-m", "vitok", "train", *args]
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    if wait:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
        return out
    return proc


def _final_state(run_dir: Path) -> dict:
    return ckpt.load_checkpoint(ckpt.latest_checkpoint(run_dir / "checkpoints"))


def test_run_writes_every_artefact(tmp_path, photo_folder):
    config = load_config(None, TINY + [f"data.source={photo_folder}", "train.stage1_steps=4",
                                       "train.stage2_steps=2", "train.checkpoint_every=2", "train.keep_last=1",
                                       "train.eval_every=2"])
    doc = train(config, out=tmp_path / "run")
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "report.json", "report.md", "reconstructions.png", "losses.png"):
        assert (run / name).is_file(), name
    report = json.loads((run / "report.json").read_text())
    assert report == json.loads(json.dumps(doc))
    assert set(report["metrics"]) >= {"psnr", "ssim"} and report["steps"] == 6
    assert "lpips" in report["not_computed"] and "rfvd" not in report["not_computed"]
    assert report["loss_terms"]["lpips"].startswith("inactive") and "vgg16" in report["loss_terms"]["lpips"]
    skipped = {Path(s["file"]).name for s in report["skipped_files"]}
    assert skipped == {"empty.jpg", "truncated.jpg"}
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [l["step"] for l in lines if "loss" in l]
    assert steps == [1, 2, 3, 4, 5, 6] and lines[-1]["stage"] == 2 and "gan_d" in lines[-1]
    assert all(0 <= l["data_wait"] <= 1 for l in lines if "loss" in l) and 0 <= report["data_wait"] <= 1
    assert any("eval" in l for l in lines)
    # The last checkpoint and the best one are kept; the exported tokenizer loads and runs.
    kept = [s for s, _ in ckpt.list_checkpoints(run / "checkpoints")]
    best = ckpt.read_best(run / "checkpoints")
    assert kept == sorted({6, best["step"]})
    model = ViTok.from_pretrained(run / "model")
    assert model(torch.zeros(1, 3, 32, 32))[0].shape == (1, 3, 32, 32)


def test_sigkill_then_resume_is_bit_identical(tmp_path, photo_folder):
    # Killed inside stage 2 and in the middle of a log window (log every 3 steps).
    args = TINY + [f"data.source={photo_folder}", "train.stage1_steps=4", "train.stage2_steps=6",
                   "train.checkpoint_every=1", "train.keep_last=20", "train.deterministic=true",
                   "train.log_every=3", "loss.lecam_weight=0.1"]
    env = {"OMP_NUM_THREADS": "1"}
    _run_cli(args + ["--out", str(tmp_path / "whole")], env)

    proc = _run_cli(args + ["--out", str(tmp_path / "killed")], env, wait=False)
    deadline = time.time() + 240
    while ckpt.latest_checkpoint(tmp_path / "killed" / "checkpoints") is None or \
            ckpt.list_checkpoints(tmp_path / "killed" / "checkpoints")[-1][0] < 7:
        if proc.poll() is not None:
            raise AssertionError(f"training ended before it could be killed:\n{proc.stdout.read()[-3000:]}")
        assert time.time() < deadline, "no checkpoint past step 7 in time"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = ckpt.list_checkpoints(tmp_path / "killed" / "checkpoints")[-1][0]
    assert 7 <= stopped_at < 10
    _run_cli(["--resume", str(tmp_path / "killed")], env)

    whole, resumed = _final_state(tmp_path / "whole"), _final_state(tmp_path / "killed")
    assert whole["step"] == resumed["step"] == 10
    for part in ("model", "disc", "lecam"):
        for key, value in whole[part].items():
            assert torch.equal(value, resumed[part][key]), f"{part}.{key} differs after resume"
    for key, value in whole["ema"]["shadow"].items():
        assert torch.equal(value, resumed["ema"]["shadow"][key])
    for opt in ("opt_g", "opt_d"):
        for index, moments in whole[opt]["state"].items():
            for name, value in moments.items():
                assert torch.equal(value, resumed[opt]["state"][index][name]), f"{opt} {index} {name}"

    def logged(run):
        lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in l.items() if k not in ("images_per_second", "data_wait", "gpu_idle")} for l in lines if "loss" in l]

    # Nothing logged twice or lost across the kill, and the same values as the unbroken run.
    assert logged(tmp_path / "killed") == logged(tmp_path / "whole")
    assert [l["step"] for l in logged(tmp_path / "whole")] == [3, 6, 9, 10]


def test_non_finite_steps_are_skipped_then_the_run_stops(tmp_path, photo_folder, monkeypatch):
    import vitok.train.loop as loop

    real = loop.reconstruction_loss
    calls = {"n": 0}

    def sometimes_nan(x_hat, x, kind):
        calls["n"] += 1
        value = real(x_hat, x, kind)
        return value * float("nan") if calls["n"] in (2, 3) or calls["n"] >= 6 else value

    monkeypatch.setattr(loop, "reconstruction_loss", sometimes_nan)
    config = load_config(None, TINY + [f"data.source={photo_folder}", "train.stage1_steps=20", "train.stage2_steps=0",
                                       "train.checkpoint_every=4", "train.max_bad_steps=3"])
    with pytest.raises(TrainingDiverged, match="3 non-finite steps in a row at step 8") as err:
        train(config, out=tmp_path / "run")
    assert "step_00000004" in str(err.value)
    state = _final_state(tmp_path / "run")
    assert state["step"] == 4 and state["progress"]["bad_total"] == 2  # steps 2 and 3 were skipped
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def _launch_ranks(world: int, args: list[str], out: Path | None) -> None:
    port = free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": "1"}
        where = ["--out", str(out)] if out is not None else []
        procs.append(subprocess.Popen([sys.executable, "-m", "vitok", "train", *args, *where], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for proc in procs:
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    args = TINY + [ "train.stage1_steps=4", "train.stage2_steps=2",
                   "train.checkpoint_every=4", "train.keep_last=5"]
    _launch_ranks(1, args, tmp_path / "one")
    _launch_ranks(2, args, tmp_path / "two")
    one = ckpt.load_checkpoint(tmp_path / "one" / "checkpoints" / "step_00000004")
    two = ckpt.load_checkpoint(tmp_path / "two" / "checkpoints" / "step_00000004")
    for key, value in one["model"].items():
        torch.testing.assert_close(two["model"][key], value, rtol=1e-4, atol=1e-5, msg=f"{key} differs")
    # Stage 2 ran in both (discriminator gradients averaged over ranks) and finished.
    assert _final_state(tmp_path / "two")["step"] == 6
    assert json.loads((tmp_path / "two" / "report.json").read_text())["world_size"] == 2


def test_fsdp_matches_one_process_and_resumes(tmp_path):
    args = TINY + ["train.stage1_steps=4", "train.stage2_steps=2", "train.checkpoint_every=2", "train.keep_last=5",
                   "train.parallel=fsdp", "loss.adaptive_gan_weight=false"]
    _launch_ranks(1, args, tmp_path / "one")  # one process: nothing to shard
    _launch_ranks(2, args, tmp_path / "two")
    one = ckpt.load_checkpoint(tmp_path / "one" / "checkpoints" / "step_00000004")
    two = ckpt.load_checkpoint(tmp_path / "two" / "checkpoints" / "step_00000004")
    assert two["parallel"] == "fsdp" and one["parallel"] == "replicated"
    for key, value in one["model"].items():
        torch.testing.assert_close(two["model"][key], value, rtol=1e-4, atol=1e-5, msg=f"{key} differs")
    # Resume the sharded run from step 2 (as if it had died there): it reaches the same end.
    first = _final_state(tmp_path / "two")
    for step in (4, 6):
        shutil.rmtree(tmp_path / "two" / "checkpoints" / f"step_{step:08d}")
    _launch_ranks(2, ["--resume", str(tmp_path / "two")], None)
    again = _final_state(tmp_path / "two")
    assert again["step"] == first["step"] == 6
    for part in ("model", "disc"):
        for key, value in first[part].items():
            torch.testing.assert_close(again[part][key], value, rtol=0, atol=0, msg=f"{part}.{key} differs")
    for key, value in first["ema"]["shadow"].items():
        torch.testing.assert_close(again["ema"]["shadow"][key], value, rtol=0, atol=0)
    model = ViTok.from_pretrained(tmp_path / "two" / "model")
    assert model.num_params()["total"] == ViTok.from_pretrained(tmp_path / "one" / "model").num_params()["total"]


def test_a_fresh_run_refuses_a_folder_holding_a_run(tmp_path, photo_folder):
    args = TINY + [f"data.source={photo_folder}", "train.stage1_steps=2", "train.stage2_steps=0",
                   "train.checkpoint_every=2"]
    train(load_config(None, args), out=tmp_path / "run")
    with pytest.raises(ValueError, match="already holds a run with checkpoints; continue it with --resume"):
        train(load_config(None, args), out=tmp_path / "run")


def test_time_limit_stops_cleanly_and_resume_finishes(tmp_path, photo_folder, monkeypatch):
    import vitok.train.loop as loop

    clock = {"t": 0.0}
    monkeypatch.setattr(loop.time, "perf_counter", lambda: clock.__setitem__("t", clock["t"] + 1.0) or clock["t"])
    args = TINY + [f"data.source={photo_folder}", "train.stage1_steps=6", "train.stage2_steps=0",
                   "train.checkpoint_every=100", "train.log_every=2", "train.time_limit_minutes=0.05"]
    doc = train(load_config(None, args), out=tmp_path / "run")  # 3 "seconds" of budget, a "second" per clock read
    assert doc["stopped_early"] and doc["steps"] < 6
    assert ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")[-1][0] == doc["steps"]
    # A cut-off last line in metrics.jsonl (a kill mid-write) does not stop the resume.
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"step": 99, "lo')
    monkeypatch.setattr(loop.time, "perf_counter", time.perf_counter)
    doc = train(load_config(None, args[:-1]), resume=tmp_path / "run")
    assert doc["steps"] == 6 and not doc["stopped_early"]


def test_no_held_out_set_is_reported_not_silent(tmp_path, photo_folder):
    args = TINY + [f"data.source={photo_folder}", "data.holdout=0", "train.stage1_steps=2", "train.stage2_steps=0",
                   "train.checkpoint_every=2"]
    doc = train(load_config(None, args), out=tmp_path / "run")
    assert doc["metrics"] == {} and "no held-out set" in doc["not_computed"]["psnr"]
    assert "no held-out set" in (tmp_path / "run" / "train.log").read_text()


def test_stage_two_needs_a_power_of_two_size():
    with pytest.raises(ValueError, match="power of two .* or train stage 1 only with train.stage2_steps=0"):
        load_config(None, TINY + ["model.image_size=48"])
    load_config(None, TINY + ["model.image_size=48", "train.stage2_steps=0"])


def test_cli_reports_divergence_and_missing_data_cleanly(tmp_path, capsys):
    from vitok.cli import main

    assert main(["train", "--config", "sb16_256", "--out", str(tmp_path / "x")]) == 2
    assert "data.source /path/to/images-or-shards does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_leading_count():
    from vitok.train.loop import leading_count

    assert [leading_count(128, f) for f in (1.0, 0.5, 0.25, 0.01)] == [128, 64, 32, 2]
    assert leading_count(4, 0.3) == 2 and leading_count(3, 1e-6) == 1 and leading_count(8, 0.125) == 1


def test_lpips_and_discriminator_fractions_score_the_leading_samples(tmp_path, photo_folder, monkeypatch):
    # loss.lpips_fraction / loss.disc_fraction: LPIPS and every discriminator pass (generator, real,
    # fake, R1) see ceil(f·B) samples of the 4-sample batch, and the run trains as usual.
    import vitok.train.loop as loop
    from vitok.losses import Discriminator, PerceptualLoss
    from vitok.metrics.lpips import build_lpips

    seen = {"lpips": [], "disc": []}

    class Recording(PerceptualLoss):
        def forward(self, x_hat, x):
            seen["lpips"].append(x.shape[0])
            return super().forward(x_hat, x)

    plain_forward = Discriminator.forward

    def recording_forward(self, x):
        seen["disc"].append(x.shape[0])
        return plain_forward(self, x)

    monkeypatch.setattr(loop, "load_perceptual_loss", lambda folder: (Recording(build_lpips(None, None)), None))
    monkeypatch.setattr(Discriminator, "forward", recording_forward)
    args = TINY + [f"data.source={photo_folder}", "train.stage1_steps=1", "train.stage2_steps=2",
                   "train.checkpoint_every=3", "loss.lpips_weight=0.5", "loss.lpips_fraction=0.5",
                   "loss.disc_fraction=0.25"]
    doc = train(load_config(None, args), out=tmp_path / "run")
    assert doc["loss_terms"]["lpips"] == "active: eta 0.5"
    assert seen["lpips"] == [2, 2, 2]  # 3 steps, half of 4
    assert seen["disc"] and set(seen["disc"]) == {1}  # a quarter of 4; generator, real and fake passes
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
    assert all(torch.isfinite(torch.tensor(l["loss"])) for l in lines)


def test_lpips_term_trains_when_its_weights_load(tmp_path, photo_folder, monkeypatch):
    # Random VGG/LPIPS weights stand in for the published files: this checks the plumbing of an
    # active LPIPS term (gradients, logging, report), not its values.
    import vitok.train.loop as loop
    from vitok.losses import PerceptualLoss
    from vitok.metrics.lpips import build_lpips

    monkeypatch.setattr(loop, "load_perceptual_loss", lambda folder: (PerceptualLoss(build_lpips(None, None)), None))
    args = TINY + [f"data.source={photo_folder}", "train.stage1_steps=2", "train.stage2_steps=1",
                   "train.checkpoint_every=3", "loss.lpips_weight=0.5", "train.tensorboard=true"]
    doc = train(load_config(None, args), out=tmp_path / "run")
    assert doc["loss_terms"]["lpips"] == "active: eta 0.5"
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
    assert all("lpips" in l and l["lpips"] > 0 for l in lines)
    # The LPIPS network is frozen and stays out of the checkpoint.
    state = _final_state(tmp_path / "run")
    assert not any("lpips" in k or "vgg" in k for k in state["model"])
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        assert "pip install tensorboard" in (tmp_path / "run" / "train.log").read_text()
    else:
        assert (tmp_path / "run" / "tensorboard").is_dir()


def test_compile_and_residual_dtype_reach_the_model_and_lpips(tmp_path, photo_folder, monkeypatch):
    import vitok.train.loop as loop
    from vitok.losses import Discriminator, PerceptualLoss
    from vitok.metrics.lpips import build_lpips
    from vitok.model import ViTok

    calls, passes = [], []
    monkeypatch.setattr(loop, "load_perceptual_loss", lambda folder: (PerceptualLoss(build_lpips(None, None)), None))
    # The compilers themselves are tested elsewhere; here only that training asks for them.
    monkeypatch.setattr(ViTok, "compile_blocks", lambda self, **kw: calls.append("blocks") or self)
    monkeypatch.setattr(PerceptualLoss, "compile_network", lambda self, **kw: calls.append("lpips") or self)
    monkeypatch.setattr(Discriminator, "compiled",
                        lambda self, **kw: calls.append("disc") or (lambda x: passes.append(x.requires_grad) or self(x)))
    seen = []
    original = loop.Trainer.train_step

    def spy(self, x, step, weight):
        seen.append(self.model.residual_dtype)
        return original(self, x, step, weight)
    monkeypatch.setattr(loop.Trainer, "train_step", spy)
    args = TINY + [f"data.source={photo_folder}", "train.stage1_steps=1", "train.stage2_steps=2",
                   "loss.r1_every=2", "loss.lpips_weight=0.5", "model.compile=true", "model.residual_dtype=bfloat16"]
    train(load_config(None, args), out=tmp_path / "run")
    assert calls == ["blocks", "lpips", "disc"] and seen == [torch.bfloat16] * 3
    # Stage 2's steps 1 (no R1) and 2 (lazy R1): the compiled passes take the reconstructions both
    # times (they carry gradients to the decoder) and the reals only on the step without R1 (R1's
    # double backward runs on the module).
    assert passes == [True, False, True]


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def test_guard_backs_off_stops_and_exports_the_checkpoint_within_the_margin(tmp_path, photo_folder):
    # An absurd fixed lambda with a tenfold stage-2 lr drives held-out PSNR down within a few steps.
    args = TINY + [f"data.source={photo_folder}", "train.stage1_steps=6", "train.stage2_steps=10",
                   "train.eval_every=2", "train.keep_last=1", "loss.adaptive_gan_weight=false", "optim.scale_lr=false",
                   "loss.gan_weight=1000", "loss.gan_warmup_steps=1", "optim.stage2_lr_scale=10"]
    doc = train(load_config(None, args), out=tmp_path / "run")
    run = tmp_path / "run"
    stage2 = doc["stage2"]
    ref = stage2["reference"]
    assert ref["step"] == 6 and stage2["evaluations"][0]["step"] <= 6
    events = stage2["guard_events"]
    assert [e["action"].split(":")[0] for e in events] == ["backoff 1/2", "backoff 2/2", "stop stage 2 (still beyond "
                                                                                        "the margin after 2 backoffs)"]
    assert all(e["drop_db"] > 1.0 for e in events) and stage2["gan_scale"] == stage2["lr_scale"] == 0.25
    assert "guard stopped the run" in doc["stopped_early"] and doc["steps"] == events[-1]["step"] < 16
    # The exported tokenizer is the selected checkpoint, inside the margin, and the report measures it.
    chosen = doc["selection"]
    assert doc["exported_step"] == chosen["step"] != doc["steps"]
    assert chosen["metrics" if "metrics" in chosen else "value"] is not None
    assert ckpt.read_best(run / "checkpoints")["step"] == chosen["step"]
    exported = _weights(run / "model")
    kept = _weights(ckpt.step_dir(run / "checkpoints", chosen["step"]) / "model")
    assert exported.keys() == kept.keys() and all(torch.equal(exported[k], kept[k]) for k in kept)
    assert doc["metrics"]["psnr"] >= ref["metrics"]["psnr"] - 1.0
    assert doc["final_step_metrics"]["psnr"] < ref["metrics"]["psnr"] - 1.0
    log = (run / "train.log").read_text()
    assert log.count("guard: held-out PSNR") == 3 and "action: stop stage 2" in log
    markdown = (run / "report.md").read_text()
    assert "## Stage 2 and the guard" in markdown and f"Exported: step {chosen['step']}" in markdown
    assert (run / "heldout.png").is_file()


def test_a_stage_one_run_extended_by_stage_two_takes_its_reference(tmp_path, photo_folder):
    args = TINY + [f"data.source={photo_folder}", "train.stage1_steps=4", "train.checkpoint_every=100"]
    train(load_config(None, args + ["train.stage2_steps=0"]), out=tmp_path / "run")
    doc = train(load_config(None, args + ["train.stage2_steps=4", "train.eval_every=2"]), resume=tmp_path / "run")
    stage2 = doc["stage2"]
    assert stage2["reference"]["step"] == 4 and doc["steps"] == 8
    assert [e["step"] for e in stage2["evaluations"]] == [4, 6, 8]
    assert doc["selection"]["step"] in (4, 6, 8) and doc["selection"]["metric"] == "swd", (doc["selection"], stage2)


def test_adaptive_gan_weight_is_the_ratio_of_gradient_norms_at_the_last_layer(tmp_path, photo_folder):
    from vitok.losses import generator_loss, reconstruction_loss
    from vitok.train import distributed
    from vitok.train.loop import Trainer

    config = load_config(None, TINY + [f"data.source={photo_folder}", "train.stage1_steps=1",
                                       "train.stage2_steps=1"])
    trainer = Trainer(config, tmp_path / "run", distributed.setup("cpu"))
    trainer.enter_stage(2)
    torch.manual_seed(1)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    x_hat, _ = trainer.model(x, check=False)
    rec = reconstruction_loss(x_hat, x, "mse")
    gan = generator_loss(trainer.disc(x_hat), "non_saturating")
    # Second formulation: each loss's full backward pass, read off the last layer's .grad, in float64.
    last = trainer.model.unembed.weight
    norms = []
    for loss in (rec, gan):
        trainer.model.zero_grad(set_to_none=True)
        loss.backward(retain_graph=True)
        norms.append(last.grad.double().norm().item())
    trainer.model.zero_grad(set_to_none=True)
    weight = trainer.adaptive_gan_weight(x_hat, *trainer.pixel_gradients(x_hat, rec, gan))
    assert weight.item() == pytest.approx(norms[0] / (norms[1] + 1e-4), rel=1e-5)
    assert last.grad is None  # measuring the weight accumulates no gradient
    # And the step applies lambda x ramp x that weight, logged as gan_lambda.
    terms = trainer.train_step(x, step=1, weight=1.0)
    ramp = 1 / config.loss.gan_warmup_steps
    assert terms["gan_lambda"].item() == pytest.approx(config.loss.gan_weight * ramp * terms["gan_adaptive"].item())


# step 16: with lazy R1; compiled: the discriminator's passes as model.compile runs them (inductor on
# the CPU here), the reconstructions' compiled and R1's on the module.
@pytest.mark.parametrize("weight,step,compiled", [(1.0, 3, False), (0.5, 3, False), (1.0, 16, False),
                                                  (1.0, 16, True)])
def test_stage_two_gradients_equal_one_backward_of_the_whole_loss(tmp_path, photo_folder, weight, step, compiled):
    """The step's backward starts from the pixel gradients it took for the adaptive weight; the
    decoder's gradients must equal one plain backward of (rec + LPIPS + lambda GAN) x weight."""
    from vitok.losses import PerceptualLoss, discriminator_loss, generator_loss, r1_penalty, reconstruction_loss
    from vitok.metrics.lpips import build_lpips
    from vitok.train import distributed
    from vitok.train.loop import Trainer

    config = load_config(None, TINY + [f"data.source={photo_folder}", "train.stage1_steps=1",
                                       "train.stage2_steps=1", "optim.grad_clip=0"])
    trainer = Trainer(config, tmp_path / "run", distributed.setup("cpu"))
    torch.manual_seed(2)
    # LPIPS with random weights (no published weights here): its backward is what the step saves.
    trainer.perceptual = PerceptualLoss(build_lpips(None, None))
    if compiled:  # the discriminator's half of compile_losses (LPIPS compiles too slowly on a CPU)
        trainer.disc_passes = trainer.disc.compiled()
    tol = dict(rtol=1e-4, atol=1e-6) if compiled else dict(rtol=1e-5, atol=1e-8)
    trainer.enter_stage(2)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    terms = trainer.train_step(x, step=step, weight=weight)
    assert ("r1" in terms) == (step % config.loss.r1_every == 0)
    got = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    got_disc = {n: p.grad.clone() for n, p in trainer.disc.named_parameters()}
    assert got and all(g.abs().sum() > 0 for g in got.values())

    trainer.model.zero_grad(set_to_none=True)
    trainer.disc.zero_grad(set_to_none=True)
    trainer.disc.requires_grad_(False)
    x_hat, _ = trainer.model(x, noise=trainer.step_noise(step, 4), check=False)
    lo = config.loss
    total = lo.reconstruction_weight * reconstruction_loss(x_hat, x, lo.reconstruction)
    total = total + lo.lpips_weight * trainer.perceptual(x_hat, x)
    total = total + terms["gan_lambda"].detach() * generator_loss(trainer.disc(x_hat).float(), lo.gan_loss)
    (total * weight).backward()
    assert total.item() == pytest.approx(terms["loss"].item(), rel=tol["rtol"] / 10)
    for name, grad in got.items():
        want = dict(trainer.model.named_parameters())[name].grad
        assert torch.allclose(grad, want, **tol), name
    # The discriminator's step shares the generator's pass over the fakes; its gradients must be
    # those of its own passes over real and (detached) fake images, and none may reach the decoder.
    trainer.model.zero_grad(set_to_none=True)
    trainer.disc.requires_grad_(True)
    real = x.clone().requires_grad_(step % lo.r1_every == 0)
    real_logits = trainer.disc(real).float()
    d_loss = discriminator_loss(real_logits, trainer.disc(x_hat.detach()).float(), lo.gan_loss)
    assert d_loss.item() == pytest.approx(terms["gan_d"].item(), rel=tol["rtol"] / 10)
    if real.requires_grad:
        r1 = r1_penalty(real_logits, real)
        assert r1.item() == pytest.approx(terms["r1"].item(), rel=tol["rtol"])
        d_loss = d_loss + lo.r1_weight * lo.r1_every * r1
    (d_loss * weight).backward()
    for name, param in trainer.disc.named_parameters():
        assert torch.allclose(got_disc[name], param.grad, **tol), name


def test_gpu_decode_trains_like_cpu_decode_and_is_refused_without_cuda(tmp_path, photo_folder, monkeypatch):
    # nvJPEG needs CUDA: here Pillow stands in for it and the device check is lifted, so the
    # trainer's whole data.decode=gpu path (planning workers, the decode thread, skips) runs on CPU.
    import io

    from PIL import Image

    from vitok.data import gpu_decode
    from vitok.train import distributed, loop
    from vitok.train.config import validate

    args = TINY + [f"data.source={photo_folder}", "train.stage1_steps=3", "train.stage2_steps=0",
                   "data.decode=gpu"]
    with pytest.raises(ValueError, match="set data.decode=cpu"):
        loop.Trainer(load_config(None, args), tmp_path / "refused", distributed.setup("cpu"))
    auto = load_config(None, args[:-1])  # data.decode=auto, the default: the CPU path where nvJPEG cannot run
    assert auto.data.decode == "auto"
    assert loop.Trainer(auto, tmp_path / "auto", distributed.setup("cpu")).gpu_decoder is None

    def pillow(datas, device):
        out = []
        for data in datas:
            try:
                with Image.open(io.BytesIO(data.numpy().tobytes())) as img:
                    out.append(torch.from_numpy(__import__("numpy").asarray(img.convert("RGB")).copy()).permute(2, 0, 1))
            except OSError:
                out.append(None)
        return out

    monkeypatch.setattr(loop, "gpu_decode_problem", lambda device: None)
    monkeypatch.setattr(gpu_decode, "_nvjpeg", pillow)
    assert loop.Trainer(auto, tmp_path / "auto2", distributed.setup("cpu")).gpu_decoder is not None
    gpu = train(load_config(None, args), out=tmp_path / "gpu")
    cpu = train(load_config(None, args[:-1] + ["data.decode=cpu"]), out=tmp_path / "cpu")
    assert gpu["steps"] == cpu["steps"] == 3
    assert {Path(s["file"]).name for s in gpu["skipped_files"]} == {"empty.jpg", "truncated.jpg"}
    assert gpu["skipped_files"] == cpu["skipped_files"]
    # Same crops, resampled by another kernel: the tiny model's PSNR agrees closely.
    assert abs(gpu["metrics"]["psnr"] - cpu["metrics"]["psnr"]) < 0.5
    with pytest.raises(ValueError, match="video"):
        validate(load_config(None, TINY + ["model.name=T-T/4x8", "model.frames=8", "data.decode=gpu"]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the compiled backward donates buffers on CUDA only")
def test_stage_two_runs_with_compiled_lpips_and_the_adaptive_weight(tmp_path, photo_folder):
    """The shipped recipe on a GPU: LPIPS and the discriminator's passes compiled (compile_losses, as
    model.compile=true does), adaptive lambda. The old weight differentiated through the compiled LPIPS
    with retain_graph=True, which PyTorch 2.11's compiled backward refuses ("non-empty donated
    buffers"); stage 2 crashed whenever LPIPS weights were present. The compiled pass over the
    reconstructions is differentiated twice (generator, discriminator) and must not trip it either."""
    from vitok.losses import PerceptualLoss
    from vitok.metrics.lpips import build_lpips
    from vitok.train import distributed
    from vitok.train.loop import Trainer

    config = load_config(None, TINY + [f"data.source={photo_folder}", "train.stage1_steps=1", "train.stage2_steps=2",
                                       "train.device=cuda"])
    trainer = Trainer(config, tmp_path / "run", distributed.setup("cuda"))
    trainer.perceptual = PerceptualLoss(build_lpips(None, None)).to(trainer.device)
    trainer.compile_losses()
    trainer.enter_stage(2)
    x = torch.rand(4, 3, 32, 32, device=trainer.device) * 2 - 1
    for step in (2, 3):  # r1_every=2 in TINY: one step with R1, one without
        terms = trainer.train_step(x, step=step, weight=1.0)
        trainer.apply_step(terms)
    assert all(torch.isfinite(v).all() for v in terms.values())
