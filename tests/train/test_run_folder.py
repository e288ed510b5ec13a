"""The run folder: owned by one run at a time, never overwritten, resumed only with a config that fits,
tidy after a kill, and every bad input refused before anything is written (issue 14)."""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vitok.train import checkpoint as ckpt
from vitok.train import load_config, rundir, train
from vitok.train.config import check_data_paths, check_resume_compatible
from vitok.train.report import new_run_dir

from train_helpers import TINY, photo_folder  # noqa: F401 (a fixture)

HOST = socket.gethostname()


def _config(*extra):
    return load_config(None, TINY + ["train.stage1_steps=2", "train.stage2_steps=0", "train.checkpoint_every=2",
                                     *extra])


def _snapshot(folder: Path) -> dict:
    """Every file under folder with its bytes (to show that nothing was written)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _fake_run(folder: Path, config, stage: int = 1, step: int = 2) -> Path:
    """A run folder with config.yaml and one checkpoint holding config (no training needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    rundir.write_config(folder, config.to_dict())
    state = {"step": step, "stage": stage, "parallel": "replicated", "config": json.dumps(config.to_dict())}
    return ckpt.save_checkpoint(folder / "checkpoints", step, state)


# ---- 1. a resume whose config does not fit the checkpoint ---------------------------------------

@pytest.mark.parametrize("stage, override, message", [
    (1, "model.channels=8", "model.channels is 4 there, 8 now"),
    (1, "model.encoder_depth=2", "model.encoder_depth is 1 there, 2 now"),
    (1, "model.name=T-T/16", "model.name is 'T-T/8' there, 'T-T/16' now"),
    (1, "train.parallel=fsdp", "train.parallel is 'ddp' there, 'fsdp' now"),
    (2, "loss.disc_channels=16", "loss.disc_channels is 8 there, 16 now"),
    (2, "loss.disc_max_channels=32", "loss.disc_max_channels is 16 there, 32 now"),
])
def test_resume_refuses_fields_that_cannot_change(tmp_path, stage, override, message):
    stored = _config("train.stage2_steps=2")
    with pytest.raises(ValueError, match="cannot change on resume") as err:
        check_resume_compatible(_config("train.stage2_steps=2", override), stored.to_dict(), stage, tmp_path)
    assert message in str(err.value) and "What may change on resume" in str(err.value)
    assert f"pass {override.split('=')[0]}=" in str(err.value)  # the way back to the checkpoint's value


@pytest.mark.parametrize("stage, override", [
    (1, "loss.disc_channels=16"),  # no discriminator in a stage-1 checkpoint yet
    (2, "loss.disc_video=3d"),  # an image model has no video discriminator
    (2, "optim.lr=3e-4"), (2, "loss.kl_weight=0.01"), (2, "train.stage2_steps=50"), (2, "train.eval_every=5"),
])
def test_resume_accepts_fields_that_may_change(tmp_path, stage, override):
    stored = _config("train.stage2_steps=2")
    check_resume_compatible(_config("train.stage2_steps=2", override), stored.to_dict(), stage, tmp_path)


def test_resume_of_a_stage_two_checkpoint_needs_stage_two(tmp_path):
    stored = _config("train.stage2_steps=2")
    with pytest.raises(ValueError, match="is in stage 2 .* keep train.stage2_steps > 0 \\(it was 2\\)"):
        check_resume_compatible(_config(), stored.to_dict(), 2, tmp_path)


def test_a_refused_resume_writes_nothing_and_the_run_still_resumes(tmp_path, photo_folder, capsys):
    from vitok.cli import main

    run = tmp_path / "run"
    train(_config(f"data.source={photo_folder}"), out=run)
    before = _snapshot(run)
    assert main(["train", "--resume", str(run), "model.channels=8"]) == 2
    err = capsys.readouterr().err
    assert "model.channels is 4 there, 8 now" in err and "cannot change on resume" in err
    assert _snapshot(run) == before  # config.yaml untouched, so a plain --resume still works
    doc = train(load_config(run / "config.yaml", ["train.stage1_steps=3"]), resume=run)
    assert doc["steps"] == 3


# ---- 2. one run per folder ----------------------------------------------------------------------

def test_a_second_run_into_a_folder_in_use_is_refused_at_once(tmp_path):
    run = tmp_path / "run"
    _fake_run(run, _config())
    debris = run / "checkpoints" / ".tmp-step_00000004-999"  # the other run's checkpoint being written
    debris.mkdir()
    lock = rundir.RunLock.acquire(run)
    lock.record()
    before = _snapshot(run)
    try:
        expected = f"{run} is in use by the run of pid {os.getpid()} on {HOST}; wait for it or choose another --out"
        with pytest.raises(ValueError, match="is in use") as err:
            train(_config(), resume=run)
        assert str(err.value) == expected
        with pytest.raises(ValueError, match="is in use"):
            rundir.claim(run, fresh=True, config=_config().to_dict())
    finally:
        lock.release()
    assert debris.is_dir() and _snapshot(run) == before  # no recovery without the lock


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    code = ("import sys, time; from pathlib import Path; from vitok.train.rundir import RunLock; "
            "RunLock.acquire(Path(sys.argv[1])).record(); print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match=f"in use by the run of pid {proc.pid} on {HOST}"):
            rundir.RunLock.acquire(run)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    rundir.RunLock.acquire(run).release()  # the kernel dropped the lock with the process


def test_a_killed_holders_children_are_waited_for(tmp_path):
    """Data-loader workers forked by a killed run share its lock for a moment: the next run waits for them."""
    run = tmp_path / "run"
    run.mkdir()
    code = ("import os, sys, time; from pathlib import Path; from vitok.train.rundir import RunLock; "
            "RunLock.acquire(Path(sys.argv[1])).record()\n"
            "if os.fork() == 0:\n    time.sleep(1.5); os._exit(0)\n"
            "print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    started = time.monotonic()
    rundir.RunLock.acquire(run).release()
    assert time.monotonic() - started < rundir.ORPHAN_WAIT_S


# ---- 3. a new run never writes over anything ----------------------------------------------------

@pytest.mark.parametrize("files, listed", [
    (["report.md"], "report.md"),
    (["config.yaml"], "config.yaml"),  # the user's own, not this run's config
    (["metrics.jsonl", "notes.txt"], "metrics.jsonl, notes.txt"),
    ([".lock", "model/config.json", "report.json", "config.yaml"], "model, report.json"),  # a finished run
])
def test_a_new_run_refuses_a_folder_that_is_not_empty(tmp_path, files, listed):
    out = tmp_path / "out"
    for name in files:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("mine")
    before = _snapshot(out)
    with pytest.raises(ValueError, match="is not empty") as err:
        train(_config(), out=out)
    assert f"(it holds {listed})" in str(err.value)
    assert "choose another --out" in str(err.value) and f"--resume {out}" in str(err.value)
    assert _snapshot(out) == before


def test_a_new_run_refuses_a_folder_with_checkpoints_and_an_out_that_is_a_file(tmp_path):
    _fake_run(tmp_path / "run", _config())
    with pytest.raises(ValueError, match="already holds a run with checkpoints; continue it with --resume"):
        train(_config(), out=tmp_path / "run")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="--out .*file is a file, not a folder; choose a new folder"):
        train(_config(), out=tmp_path / "file")


def test_a_new_run_may_use_an_empty_folder_or_its_own(tmp_path):
    config = _config().to_dict()
    (tmp_path / "empty").mkdir()
    rundir.check_fresh(tmp_path / "empty", config)
    rundir.check_fresh(tmp_path / "new", config)
    # An earlier start that stopped before its first checkpoint.
    own = tmp_path / "own"
    (own / "checkpoints").mkdir(parents=True)
    for name in (".lock", "config.yaml", "metrics.jsonl", "train.log"):
        (own / name).write_text("")
    rundir.check_fresh(own, config)
    # What `vitok sweep` prepares: this very config and its log.
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    rundir.write_config(sweep, config)
    (sweep / "sweep.log").write_text("# launched\n")
    rundir.check_fresh(sweep, config)


# ---- 4. arguments -------------------------------------------------------------------------------

def test_overrides_are_accepted_anywhere_among_the_options():
    from vitok.cli import build_parser

    args = build_parser().parse_args(["train", "a.b=1", "--out", "X", "c.d=2", "--config", "demo", "e.f=3"])
    assert args.overrides == ["a.b=1", "c.d=2", "e.f=3"] and args.out == "X" and args.config == "demo"


def test_unknown_flags_are_still_named(capsys):
    from vitok.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "a.b=1", "--fast", "c.d=2"])
    assert "unrecognized arguments: --fast\n" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--resume", "{run}", "--out", "{tmp}/elsewhere"], "--resume continues {run} in place; drop --out"),
    (["--config", "{tmp}"], "--config {tmp} is a directory; expected a YAML file or a shipped config's name (demo"),
])
def test_bad_train_arguments_are_clear_errors(tmp_path, capsys, argv, message):
    from vitok.cli import main

    run = tmp_path / "run"
    _fake_run(run, _config())
    before = _snapshot(tmp_path)
    fill = {"run": run, "tmp": tmp_path}
    assert main(["train", *[a.format(**fill) for a in argv]]) == 2
    assert message.format(**fill) in capsys.readouterr().err
    assert _snapshot(tmp_path) == before and not (tmp_path / "elsewhere").exists()


# ---- 5. the run's name --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".", "", "two words", "/abs"])
def test_a_name_that_is_not_a_plain_folder_name_is_refused(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    config = _config()
    config.name = name
    with pytest.raises(ValueError, match="cannot name a run folder under runs/: use letters, digits"):
        train(config)
    assert list(tmp_path.iterdir()) == []


def test_a_plain_name_makes_a_folder_under_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert new_run_dir("my-run_1.2").parent == Path("runs")


def test_a_run_folder_inside_the_data_folder_is_refused(tmp_path, photo_folder):
    config = _config(f"data.source={photo_folder}")
    with pytest.raises(ValueError, match="is inside data.source .*choose an --out outside"):
        check_data_paths(config, photo_folder / "run")
    check_data_paths(config, tmp_path / "run")


# ---- 6. a full disk -----------------------------------------------------------------------------

@pytest.mark.parametrize("failure, reason", [
    (OSError(errno.ENOSPC, "No space left on device"), "no space left on device"),
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 8388672 vs 8388560"),
     "no space left on device (the file was cut short"),
    (OSError(errno.EIO, "Input/output error"), "Input/output error"),
])
def test_a_failed_checkpoint_write_is_a_clear_error_and_leaves_no_debris(tmp_path, monkeypatch, failure, reason):
    good = ckpt.save_checkpoint(tmp_path, 1, {"step": 1})

    def full_disk(*args, **kwargs):
        raise failure

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    with pytest.raises(ckpt.CheckpointWriteError) as err:
        ckpt.save_checkpoint(tmp_path, 2, {"step": 2})
    assert str(err.value).startswith(f"could not write checkpoint step 2 to {tmp_path}: {reason}")
    assert f"the last good checkpoint is {good}" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000001"]


# ---- 7. no debris after a kill ------------------------------------------------------------------

def test_recover_removes_every_leftover_of_a_kill(tmp_path):
    good = ckpt.save_checkpoint(tmp_path, 1, {"step": 1})
    (tmp_path / "step_00000002").mkdir()  # empty: never a checkpoint
    (tmp_path / "step_00000003").mkdir()
    (tmp_path / "step_00000003" / "notes.txt").write_text("not ours to delete")
    (tmp_path / ".best.json.tmp").write_text('{"st')
    (tmp_path / ".tmp-step_00000004-77").mkdir()
    assert ckpt.latest_checkpoint(tmp_path) == good
    ckpt.recover(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000001", "step_00000003"]
    assert ckpt.latest_checkpoint(tmp_path) == good


def test_recover_puts_back_a_complete_checkpoint_over_an_incomplete_one(tmp_path):
    ckpt.save_checkpoint(tmp_path, 5, {"v": 1})
    os.replace(tmp_path / "step_00000005", tmp_path / ".old-step_00000005-42")
    (tmp_path / "step_00000005").mkdir()  # there, but holds no state.pt
    ckpt.recover(tmp_path)
    assert ckpt.load_checkpoint(tmp_path / "step_00000005")["v"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000005"]


def test_taking_a_run_folder_removes_stale_temporary_files(tmp_path):
    run = tmp_path / "run"
    _fake_run(run, _config())
    for name in ("metrics.tmp", ".config.yaml.tmp", "reconstructions.tmp.png", "checkpoints/.best.json.tmp"):
        (run / name).write_text("cut short")
    rundir.claim(run, fresh=False, config=_config().to_dict()).release()
    assert sorted(p.name for p in run.iterdir()) == [".lock", "checkpoints", "config.yaml"]
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000002"]


# ---- 8. ordinary permissions --------------------------------------------------------------------

def test_files_of_a_run_folder_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        run = tmp_path / "run"
        lock = rundir.claim(run, fresh=True, config=_config().to_dict())
        rundir.write_config(run, _config().to_dict())
        lock.release()
        path = ckpt.save_checkpoint(run / "checkpoints", 1, {"step": 1})
        ckpt.write_best(run / "checkpoints", {"step": 1})
        files = [run / ".lock", run / "config.yaml", path / "state.pt", run / "checkpoints" / "best.json"]
        assert {str(p): oct(p.stat().st_mode & 0o777) for p in files} == {str(p): "0o644" for p in files}
        assert oct(path.stat().st_mode & 0o777) == "0o755"
    finally:
        os.umask(old)


def test_a_full_disk_on_any_training_write_names_the_last_good_checkpoint(tmp_path, monkeypatch):
    import vitok.train.report as report

    args = TINY + ["train.stage1_steps=4", "train.stage2_steps=0", "train.checkpoint_every=2"]
    real = report.RunLogger.log
    calls = {"n": 0}

    def log_until_full(self, record):
        calls["n"] += 1
        if calls["n"] > 3:  # metrics.jsonl appends fail once the disk fills, after the step-2 checkpoint
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, record)

    monkeypatch.setattr(report.RunLogger, "log", log_until_full)
    with pytest.raises(ckpt.CheckpointWriteError) as err:
        train(load_config(None, args), out=tmp_path / "run")
    message = str(err.value)
    assert message.startswith(f"could not write into {tmp_path / 'run'}: No space left on device")
    assert "step_00000002" in message and f"vitok train --resume {tmp_path / 'run'}" in message
