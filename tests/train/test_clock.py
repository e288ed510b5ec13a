"""StepClock: the GPU's idle share between training steps, from timing events (faked on the CPU)."""

import json
import time

import pytest
import torch

from vitok.train import load_config, train
from vitok.train.clock import StepClock

from train_helpers import TINY, photo_folder  # noqa: F401 (a fixture)


class FakeEvent:
    """A timing event whose device time is a number the test sets (seconds on `now`)."""

    now = 0.0

    def record(self) -> None:
        self.t = FakeEvent.now

    def synchronize(self) -> None:
        pass

    def elapsed_time(self, other: "FakeEvent") -> float:
        return (other.t - self.t) * 1e3  # milliseconds, as torch.cuda.Event


def run_steps(clock: StepClock, intervals: list[tuple[float, float]]) -> None:
    for start, stop in intervals:
        FakeEvent.now = start
        clock.begin()
        FakeEvent.now = stop
        clock.end()


def test_idle_share_is_the_span_less_the_steps():
    clock = StepClock(torch.device("cpu"), FakeEvent)
    # Steps of 1 s with gaps of 0.5 s and 0 s: 0.5 of a 3.5 s span idle.
    run_steps(clock, [(0.0, 1.0), (1.5, 2.5), (2.5, 3.5)])
    assert clock.idle_share() == pytest.approx(0.5 / 3.5)
    # A new window: back to back steps, nothing idle; the gap before the window's first step is not
    # counted (it is outside the window's span).
    run_steps(clock, [(10.0, 11.0), (11.0, 12.0)])
    assert clock.idle_share() == pytest.approx(0.0)


def test_one_step_no_events_and_reset_give_no_number():
    clock = StepClock(torch.device("cpu"), FakeEvent)
    run_steps(clock, [(0.0, 1.0)])
    assert clock.idle_share() is None  # one step has no gap
    run_steps(clock, [(0.0, 1.0), (5.0, 6.0)])
    clock.reset()  # e.g. an evaluation ran: the window starts again
    run_steps(clock, [(7.0, 8.0), (8.5, 9.5)])
    assert clock.idle_share() == pytest.approx(0.5 / 2.5)
    plain = StepClock(torch.device("cpu"))  # no CUDA events: nothing is measured
    assert not plain.enabled
    plain.begin(), plain.end(), plain.begin(), plain.end()
    assert plain.idle_share() is None


def test_training_logs_the_idle_share_when_the_device_has_events(tmp_path, photo_folder, monkeypatch):
    """The loop's wiring: begin/end around every step, the share at each log step, the mean in the report;
    host time stands in for the device's."""
    import vitok.train.loop as loop

    class HostEvent(FakeEvent):
        def record(self) -> None:
            self.t = time.perf_counter()

    monkeypatch.setattr(loop, "StepClock", lambda device: StepClock(device, HostEvent))
    config = load_config(None, TINY + [f"data.source={photo_folder}", "train.stage1_steps=4", "train.stage2_steps=0",
                                       "train.log_every=2"])
    report = train(config, out=tmp_path / "run")
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    idles = [l["gpu_idle"] for l in lines if "loss" in l]
    assert len(idles) == 2 and all(0 <= v < 1 for v in idles)
    assert report["gpu_idle"] == pytest.approx(sum(idles) / 2, abs=1e-4)
    assert "GPU idle between steps" in (tmp_path / "run" / "report.md").read_text()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA timing events")
def test_training_on_cuda_logs_the_idle_share_from_real_events(tmp_path, photo_folder):
    config = load_config(None, TINY + [f"data.source={photo_folder}", "train.stage1_steps=4", "train.stage2_steps=0",
                                       "train.log_every=2", "train.device=cuda"])
    report = train(config, out=tmp_path / "run")
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    idles = [l["gpu_idle"] for l in lines if "loss" in l]
    assert len(idles) == 2 and all(0 <= v <= 1 for v in idles) and 0 <= report["gpu_idle"] <= 1
