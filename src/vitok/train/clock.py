"""How long the GPU sat between training steps: the device-side view of whether data sets the pace.

The host's wait for the next batch (`data_wait`) overstates a data bottleneck whenever the host runs
ahead of the GPU: it then waits for the loader while the GPU still has queued steps to run, so the
wait costs nothing. What costs GPU hours is the device idling between one step's last kernel and the
next step's first. `StepClock` measures that with timing events on the training stream: one before
each step's work (after the batch is there), one after it. Events complete in stream order, so at a
log step (which synchronises) the window's span from the first step's start to the last step's end,
less the time inside steps, is the time the stream had no step to run: waiting on the GPU decoder's
event, or on a host that had not yet launched the next step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class StepClock:
    """Timing events around each training step on CUDA; `idle_share()` at a log step, None elsewhere.

    ``event_factory`` makes the events (default: CUDA events with timing on the device's current
    stream); anything with ``record()``, ``synchronize()`` and ``elapsed_time(other)`` in
    milliseconds will do, which the tests use.
    """

    def __init__(self, device: torch.device, event_factory: Callable[[], Any] | None = None) -> None:
        if event_factory is None and device.type == "cuda":
            def event_factory():
                return torch.cuda.Event(enable_timing=True)
        self.make = event_factory
        self.steps: list[tuple[Any, Any]] = []
        self.open: Any = None

    @property
    def enabled(self) -> bool:
        return self.make is not None

    def begin(self) -> None:
        """Mark the start of a step's device work (call once its batch is in hand)."""
        if self.make is not None:
            self.open = self.make()
            self.open.record()

    def end(self) -> None:
        """Mark the end of the step begun last."""
        if self.make is not None and self.open is not None:
            event = self.make()
            event.record()
            self.steps.append((self.open, event))
            self.open = None

    def reset(self) -> None:
        """Forget the window (after work that is not training steps: evaluation, checkpoints)."""
        self.steps, self.open = [], None

    def idle_share(self) -> float | None:
        """The share of the window's device span spent between steps; starts a new window.

        None on a device without events or with fewer than two steps in the window (one step has
        no gap to measure).
        """
        steps, self.steps = self.steps, []
        if self.make is None or len(steps) < 2:
            return None
        steps[-1][1].synchronize()
        span = steps[0][0].elapsed_time(steps[-1][1])
        busy = sum(start.elapsed_time(stop) for start, stop in steps)
        return min(max(1.0 - busy / span, 0.0), 1.0) if span > 0 else 0.0
