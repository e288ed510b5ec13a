"""What a point's run folder says about it: finished, resumable, failed or not started.

A point is finished when its training wrote report.json after the full step budget. A
report from a run stopped by train.time_limit_minutes does not count: that run has a
checkpoint and continues on the next `vitok sweep`, as does one killed mid-run. The sweep
writes sweep_error.txt when a point's training fails, so the report can say why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..train import checkpoint as ckpt

ERROR_FILE = "sweep_error.txt"


@dataclass
class PointState:
    """The state of one run folder."""

    report: dict | None  # report.json of a finished run
    checkpoint_step: int | None  # newest complete checkpoint
    stopped_early: str | None  # why a written report does not count as finished
    error: str | None  # the last failure's first line

    @property
    def finished(self) -> bool:
        return self.report is not None

    @property
    def resumable(self) -> bool:
        return self.report is None and self.checkpoint_step is not None

    def describe(self) -> str:
        """One phrase for the results table."""
        if self.finished:
            return "done"
        if self.error:
            return f"failed: {self.error}"
        if self.stopped_early:
            return f"stopped early at step {self.checkpoint_step}"
        if self.checkpoint_step is not None:
            return f"interrupted at step {self.checkpoint_step}"
        return "not started"


def read_state(run_dir: Path) -> PointState:
    """Read report.json, the checkpoints and any recorded failure of one point's run folder."""
    report, stopped = None, None
    try:
        report = json.loads((run_dir / "report.json").read_text())
    except (OSError, json.JSONDecodeError):
        pass  # absent, or cut short by a kill while being written: not finished
    if report is not None and report.get("stopped_early"):
        report, stopped = None, report["stopped_early"]
    checkpoints = ckpt.list_checkpoints(run_dir / "checkpoints")
    error = None
    if report is None and (run_dir / ERROR_FILE).is_file():
        error = ((run_dir / ERROR_FILE).read_text().strip().splitlines() or ["unknown error"])[0]
    return PointState(report, checkpoints[-1][0] if checkpoints else None, stopped, error)
