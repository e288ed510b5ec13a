"""Train every point of a sweep: one after another in this process, or one process per GPU.

Rerunning a sweep is always safe: finished points are skipped, interrupted ones resume from
their newest checkpoint (exactly, as `vitok train --resume` does), and the rest start fresh.
Before any training, every point's config is compared with the config.yaml its folder
already holds, so a sweep never mixes points trained under different settings.
"""

from __future__ import annotations

import gc
import glob
import os
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import yaml

from ..train import TrainConfig, TrainingDiverged, train
from ..train.config import flatten, save_config
from .spec import Point, SweepSpec
from .state import ERROR_FILE, read_state

# Settings that change how a run is watched, not what it computes: a resumed point may differ here.
WATCHING_ONLY = ("train.time_limit_minutes", "train.progress", "train.tensorboard")


@dataclass
class SweepOutcome:
    """What one `run_sweep` call did, by point name."""

    skipped: list[str] = field(default_factory=list)  # already finished
    started: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # point -> reason
    generated: list[str] = field(default_factory=list)  # points whose generation phase finished in this call
    generation_failed: dict[str, str] = field(default_factory=dict)


def run_sweep(spec: SweepSpec, gpus: int = 1, log: Callable[[str], None] = print) -> SweepOutcome:
    """Train every unfinished point; gpus > 1 runs that many `vitok train` processes at once."""
    if gpus < 1:
        raise ValueError(f"gpus must be >= 1, got {gpus}")
    points = spec.points()
    configs = {point: spec.point_config(point) for point in points}
    check_data_sources(configs[points[0]])
    for point in points:
        check_unchanged(configs[point], spec.point_dir(point), point)
    spec.out.mkdir(parents=True, exist_ok=True)
    (spec.out / "sweep.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))

    outcome = SweepOutcome()
    todo = []
    for point in points:
        state = read_state(spec.point_dir(point))
        if state.finished:
            outcome.skipped.append(point.name)
        else:
            (outcome.resumed if state.resumable else outcome.started).append(point.name)
            todo.append(point)
    log(f"sweep {spec.name}: {len(points)} points, {len(outcome.skipped)} finished, "
        f"{len(outcome.resumed)} to resume, {len(outcome.started)} to start; folder {spec.out}")
    if gpus == 1:
        _run_here(spec, todo, configs, outcome, log)
    else:
        _run_processes(spec, todo, configs, gpus, outcome, log)
    if spec.generation is not None:
        _run_generation(spec, points, outcome, log)
    return outcome


def _run_generation(spec: SweepSpec, points: list[Point], outcome: SweepOutcome, log: Callable[[str], None]) -> None:
    """The generation phase of every point whose tokenizer has finished, one after another in this process."""
    from .generation import (GENERATION_ERROR_FILE, check_generation_unchanged, ensure_classifier,
                             generation_finished, run_generation)

    ready = [p for p in points if read_state(spec.point_dir(p)).finished]
    for point in ready:
        check_generation_unchanged(spec.generation, spec.point_dir(point), point.name)
    waiting = [p.name for p in points if p not in ready]
    todo = [p for p in ready if not generation_finished(spec.point_dir(p))]
    log(f"generation: {len(ready) - len(todo)} of {len(points)} points done, {len(todo)} to run"
        + (f"; waiting for their tokenizers: {', '.join(waiting)}" if waiting else ""))
    classifier = ensure_classifier(spec.generation, spec.out, log) if todo else None
    for i, point in enumerate(todo, 1):
        run_dir = spec.point_dir(point)
        (run_dir / GENERATION_ERROR_FILE).unlink(missing_ok=True)
        log(f"[generation {i}/{len(todo)}] {point.name}")
        try:
            run_generation(spec.generation, spec.out, run_dir, point.name, log, classifier)
            outcome.generated.append(point.name)
        except torch.cuda.OutOfMemoryError as err:  # this point's problem; the sweep goes on
            reason = f"{type(err).__name__}: {err}"
            (run_dir / GENERATION_ERROR_FILE).write_text(reason + "\n")
            outcome.generation_failed[point.name] = reason
            log(f"  {point.name} generation failed: {reason}")
        finally:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def check_data_sources(config: TrainConfig) -> None:
    """Fail before the first point when data.source or data.val_source names nothing."""
    for key, source in (("data.source", config.data.source), ("data.val_source", config.data.val_source)):
        if not source:
            continue
        is_glob = any(ch in source for ch in "*?[")
        if not (glob.glob(source) if is_glob else Path(source).exists()):
            raise ValueError(f"{key} {source} does not exist; point it at your data by adding "
                             f"{key}=PATH after the spec (every point trains on the same data)")


def check_unchanged(config: TrainConfig, run_dir: Path, point: Point) -> None:
    """A point folder trained under other settings cannot join this sweep; say which differ."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    saved, wanted = flatten(yaml.safe_load(saved_path.read_text()) or {}), flatten(config.to_dict())
    differ = sorted(k for k in set(saved) | set(wanted) if k not in WATCHING_ONLY and saved.get(k) != wanted.get(k))
    if differ:
        details = ", ".join(f"{k}: {saved.get(k)!r} there, {wanted.get(k)!r} now" for k in differ[:6])
        raise ValueError(f"point {point.name} in {run_dir} was trained with other settings ({details}); "
                         f"restore the spec and overrides, delete that folder to retrain it, or use another --out")


def _record_failure(run_dir: Path, reason: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ERROR_FILE).write_text(reason + "\n")


def _run_here(spec: SweepSpec, todo: list[Point], configs: dict[Point, TrainConfig], outcome: SweepOutcome,
              log: Callable[[str], None]) -> None:
    """Train the points one after another in this process."""
    for i, point in enumerate(todo, 1):
        run_dir = spec.point_dir(point)
        state = read_state(run_dir)
        (run_dir / ERROR_FILE).unlink(missing_ok=True)
        how = f"resuming from step {state.checkpoint_step}" if state.resumable else "starting"
        log(f"[{i}/{len(todo)}] {point.name} ({point.model_name}, c={point.channels}): {how}")
        try:
            train(configs[point], out=run_dir, resume=run_dir if state.resumable else None)
        # A point that diverges or does not fit in memory is that point's problem; the sweep goes on.
        # Anything else (bad data, a bug) would fail every point alike, so it stops the sweep.
        except (TrainingDiverged, torch.cuda.OutOfMemoryError) as err:
            reason = f"{type(err).__name__}: {err}"
            _record_failure(run_dir, reason)
            outcome.failed[point.name] = reason
            log(f"  {point.name} failed: {reason}")
        finally:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def _device_ids(gpus: int) -> list[str]:
    """The ids to hand out, one per process: the first `gpus` of CUDA_VISIBLE_DEVICES if set."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else [str(i) for i in range(gpus)]
    if len(ids) < gpus:
        raise ValueError(f"--gpus {gpus} but CUDA_VISIBLE_DEVICES={visible} shows only {len(ids)}; "
                         f"pass --gpus {len(ids)} or widen CUDA_VISIBLE_DEVICES")
    return ids[:gpus]


def _launch(point: Point, run_dir: Path, config: TrainConfig, device: str) -> subprocess.Popen:
    """`vitok train` for one point on one GPU, its output appended to the point's sweep.log."""
    run_dir.mkdir(parents=True, exist_ok=True)
    state = read_state(run_dir)
    (run_dir / ERROR_FILE).unlink(missing_ok=True)
    # The child reads the point's config from its folder: a fresh run from it, a resumed one beside it.
    save_config(config, run_dir / "config.yaml")
    args = (["--resume", str(run_dir)] if state.resumable
            else ["--config", str(run_dir / "config.yaml"), "--out", str(run_dir)])
    command = [sys.executable, "-m", "vitok", "train", *args]
    with open(run_dir / "sweep.log", "a") as logfile:
        logfile.write(f"# CUDA_VISIBLE_DEVICES={device} {' '.join(command)}\n")
        logfile.flush()
        return subprocess.Popen(command, env={**os.environ, "CUDA_VISIBLE_DEVICES": device},
                                stdout=logfile, stderr=subprocess.STDOUT)


def _run_processes(spec: SweepSpec, todo: list[Point], configs: dict[Point, TrainConfig], gpus: int,
                   outcome: SweepOutcome, log: Callable[[str], None]) -> None:
    """Keep one `vitok train` process per GPU busy until every point has run."""
    queue = deque(todo)
    running: dict[str, tuple[subprocess.Popen, Point]] = {}
    free = _device_ids(gpus)
    try:
        while queue or running:
            while free and queue:
                device, point = free.pop(0), queue.popleft()
                log(f"{point.name} ({point.model_name}, c={point.channels}): GPU {device}, "
                    f"log in {spec.point_dir(point) / 'sweep.log'}")
                running[device] = (_launch(point, spec.point_dir(point), configs[point], device), point)
            time.sleep(0.5)
            for device, (proc, point) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[device]
                free.append(device)
                if proc.returncode != 0:
                    reason = f"vitok train exited with code {proc.returncode}; see {spec.point_dir(point) / 'sweep.log'}"
                    _record_failure(spec.point_dir(point), reason)
                    outcome.failed[point.name] = reason
                    log(f"  {point.name} failed: {reason}")
                else:
                    log(f"  {point.name} finished")
    finally:
        # On Ctrl-C or an error here, stop the children; their points resume next time.
        for proc, _ in running.values():
            proc.terminate()
        for proc, _ in running.values():
            proc.wait()
