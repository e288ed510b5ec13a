"""Running a sweep: skip finished points, resume interrupted ones, record failures, refuse changed settings.

The first tests swap training for a stand-in that writes report.json, so they check the
runner's decisions in milliseconds; test_tiny_sweep_end_to_end trains the shipped tiny spec.
"""

import json
import os
import shutil
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from vitok.cli import main
from vitok.sweep import load_spec, parse_spec, read_state, run_sweep, write_report
from vitok.sweep import runner
from vitok.sweep.spec import resolve_spec_path
from vitok.train import TrainingDiverged
from vitok.train import checkpoint as ckpt
from vitok.train.config import save_config


class FakeTrain:
    """Stands in for vitok.train.train: records calls, writes a report, or fails for chosen runs."""

    def __init__(self, fail=()):
        self.calls, self.fail = [], set(fail)

    def __call__(self, config, out=None, resume=None):
        run_dir = resume or out
        run_dir.mkdir(parents=True, exist_ok=True)
        self.calls.append((run_dir.name, resume is not None))
        save_config(config, run_dir / "config.yaml")
        if run_dir.name in self.fail:
            raise TrainingDiverged("5 non-finite steps in a row")
        (run_dir / "report.json").write_text(json.dumps({"metrics": {"psnr": 20.0}, "stopped_early": None}))
        return {}


def tiny_spec(tmp_path, overrides=(), **changes):
    data = yaml.safe_load(resolve_spec_path("tiny").read_text())
    data.update(changes)
    return parse_spec(data, "tiny", overrides, out=tmp_path / "sweep")


def test_runner_skips_resumes_and_records_failures(tmp_path, monkeypatch):
    spec = tiny_spec(tmp_path)
    done, interrupted, failing, fresh = spec.points()
    fake = FakeTrain(fail={failing.name})
    monkeypatch.setattr(runner, "train", fake)
    (spec.point_dir(done)).mkdir(parents=True)
    (spec.point_dir(done) / "report.json").write_text('{"metrics": {"psnr": 30.0}}')
    ckpt.save_checkpoint(spec.point_dir(interrupted) / "checkpoints", 2, {"step": 2})

    outcome = run_sweep(spec, log=lambda message: None)
    assert outcome.skipped == [done.name] and outcome.resumed == [interrupted.name]
    assert outcome.started == [failing.name, fresh.name]
    assert fake.calls == [(interrupted.name, True), (failing.name, False), (fresh.name, False)]
    assert list(outcome.failed) == [failing.name] and "TrainingDiverged" in outcome.failed[failing.name]
    assert read_state(spec.point_dir(failing)).describe().startswith("failed: TrainingDiverged")
    assert yaml.safe_load((spec.out / "sweep.yaml").read_text())["grid"]["channels"] == [4, 8]

    # Next time only the failed point trains again, and its old failure note goes away once it succeeds.
    fake.calls, fake.fail = [], set()
    outcome = run_sweep(spec, log=lambda message: None)
    assert fake.calls == [(failing.name, False)] and not outcome.failed
    assert read_state(spec.point_dir(failing)).describe() == "done"


def test_time_limited_point_resumes(tmp_path, monkeypatch):
    spec = tiny_spec(tmp_path, grid={"channels": [4, 8], "patch_size": [8]})
    stopped = spec.point_dir(spec.points()[0])
    ckpt.save_checkpoint(stopped / "checkpoints", 2, {"step": 2})
    (stopped / "report.json").write_text(json.dumps({"metrics": {}, "stopped_early": "time limit reached"}))
    fake = FakeTrain()
    monkeypatch.setattr(runner, "train", fake)
    run_sweep(spec, log=lambda message: None)
    assert (stopped.name, True) in fake.calls


def test_changed_settings_are_refused_before_training(tmp_path, monkeypatch):
    spec = tiny_spec(tmp_path)
    fake = FakeTrain()
    monkeypatch.setattr(runner, "train", fake)
    run_sweep(spec, log=lambda message: None)
    fake.calls = []
    changed = tiny_spec(tmp_path, ["train.stage1_steps=5", "train.time_limit_minutes=30"])
    with pytest.raises(ValueError, match=r"train.stage1_steps: 3 there, 5 now.*delete that folder to retrain"):
        run_sweep(changed, log=lambda message: None)
    assert fake.calls == []
    # How a run is watched may change between sessions.
    run_sweep(tiny_spec(tmp_path, ["train.time_limit_minutes=30"]), log=lambda message: None)


def test_missing_data_is_refused_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "train", FakeTrain())
    with pytest.raises(ValueError, match="data.source /no/such/folder does not exist; point it at your data"):
        run_sweep(tiny_spec(tmp_path, ["data.source=/no/such/folder"]), log=lambda message: None)
    with pytest.raises(ValueError, match=r"data.val_source /no/\*.tar does not exist"):
        run_sweep(tiny_spec(tmp_path, ["data.val_source=/no/*.tar"]), log=lambda message: None)
    with pytest.raises(ValueError, match="gpus must be >= 1"):
        run_sweep(tiny_spec(tmp_path), gpus=0)


def test_tiny_sweep_end_to_end(tmp_path, monkeypatch, capsys):
    """The shipped tiny spec on CPU: train all, rerun (nothing trains), then resume a cut-short point."""
    calls = []
    real_train = runner.train

    def spy(config, out=None, resume=None):
        calls.append((config.name, resume is not None))
        return real_train(config, out=out, resume=resume)

    monkeypatch.setattr(runner, "train", spy)
    spec = load_spec("tiny", out=tmp_path / "tiny")
    started = time.perf_counter()
    outcome = run_sweep(spec)
    seconds = time.perf_counter() - started
    assert outcome.started == [p.name for p in spec.points()] and not outcome.failed
    print(f"tiny sweep: {len(calls)} points in {seconds:.1f} s")
    reports = {p.name: spec.point_dir(p) / "report.json" for p in spec.points()}
    for path in reports.values():
        report = json.loads(path.read_text())
        assert report["steps"] == 4 and {"psnr", "ssim"} <= set(report["metrics"])
    stamps = {name: os.stat(path).st_mtime_ns for name, path in reports.items()}

    # Rerunning through the CLI trains nothing and rebuilds the report.
    calls.clear()
    assert main(["sweep", "tiny", "--out", str(spec.out)]) == 0
    assert calls == [] and "4 of 4 points finished" in capsys.readouterr().out
    assert {name: os.stat(path).st_mtime_ns for name, path in reports.items()} == stamps
    assert (spec.out / "plots" / "e_sweep-psnr.png").is_file() and (spec.out / "fits.json").is_file()

    # Cut one point back to its step-3 checkpoint (the end of stage 1, which the stage-2 guard always
    # checkpoints as its reference): it resumes there and ends where it ended before
    # (train.deterministic makes CPU training bit-identical across a resume).
    point = spec.points()[2]
    run_dir = spec.point_dir(point)
    final_weights = load_file(run_dir / "model" / "model.safetensors")
    reports[point.name].unlink()
    for step, folder in ckpt.list_checkpoints(run_dir / "checkpoints"):
        if step > 3:
            shutil.rmtree(folder)
    assert read_state(run_dir).describe() == "interrupted at step 3"
    calls.clear()
    outcome = run_sweep(spec)
    assert outcome.resumed == [point.name] and outcome.skipped == [p.name for p in spec.points() if p != point]
    assert calls == [(f"tiny-{point.name}", True)]
    resumed_weights = load_file(run_dir / "model" / "model.safetensors")
    assert all(torch.equal(final_weights[k], resumed_weights[k]) for k in final_weights)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "loss" in line] == [1, 2, 3, 4]
    assert [line["step"] for line in lines if "eval" in line] == [3]  # the guard's reference
    assert all(row.status == "done" for row in write_report(spec)["rows"])


def test_one_process_per_gpu(tmp_path, monkeypatch):
    """--gpus 2 on CPU: two `vitok train` processes, each given its own CUDA_VISIBLE_DEVICES."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    spec = tiny_spec(tmp_path, grid={"patch_size": [16], "channels": [4, 8]}, study="grid")
    outcome = run_sweep(spec, gpus=2, log=lambda message: None)
    assert not outcome.failed and outcome.started == [p.name for p in spec.points()]
    devices = set()
    for point in spec.points():
        assert read_state(spec.point_dir(point)).finished
        header = (spec.point_dir(point) / "sweep.log").read_text().splitlines()[0]
        devices.add(header.split()[1])
    assert devices == {"CUDA_VISIBLE_DEVICES=0", "CUDA_VISIBLE_DEVICES=1"}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with pytest.raises(ValueError, match="--gpus 2 but CUDA_VISIBLE_DEVICES=3 shows only 1"):
        run_sweep(tiny_spec(tmp_path / "other"), gpus=2, log=lambda message: None)
