"""Where per-image outputs go (`vitok reconstruct`): names planned before any work, and checks that
nothing the user has is written over.

An output may replace only what an earlier run of the same command wrote into that folder (as
listed in its metrics.json); it may never be one of the inputs, by path, by a symbolic link or
by a hard link.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["METRICS_FILE", "check_outputs", "plan_outputs"]

METRICS_FILE = "metrics.json"


def plan_outputs(inputs: list[Path], out: Path, suffix: str = ".png") -> list[Path]:
    """OUT/STEM.png (or another suffix, e.g. .mp4) per input, in order; a stem already taken gets "_"
    appended until it is free.

    Planned for every input, readable or not, so that a file's output name does not depend on
    which other files fail to load, and so that every target is known before any work.
    """
    used: set[str] = set()
    paths = []
    for path in inputs:
        name = path.stem
        while name in used:
            name += "_"
        used.add(name)
        paths.append(out / f"{name}{suffix}")
    return paths


def _same_file(a: Path, b: Path) -> bool:
    """Whether a and b name one file: the same resolved path (links followed) or the same inode (hard links)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): then they are not one file
        return False


def _earlier_outputs(out: Path) -> set[str] | None:
    """Names of the files an earlier run listed in OUT/metrics.json; None when that file is not such a list."""
    try:
        document = json.loads((out / METRICS_FILE).read_text())
    except (OSError, ValueError):
        return None
    rows = document.get("images", document.get("videos")) if isinstance(document, dict) else None
    if not isinstance(rows, list) or "checkpoint" not in document:
        return None
    return {Path(row["output"]).name for row in rows if isinstance(row, dict) and row.get("output")}


def check_outputs(inputs: list[Path], outputs: list[Path], out: Path, flag: str = "--out") -> None:
    """Raise ValueError, before any work, if writing `outputs` and OUT/metrics.json could lose a user's file.

    Refused: a target that is one of the inputs (also through a link), and an existing target
    that an earlier run into `out` did not write (a user's own metrics.json or PNG).
    """
    targets = [*outputs, out / METRICS_FILE]
    for target in targets:
        for source in inputs:
            if _same_file(target, source):
                raise ValueError(f"{flag} {out} would write {target} over the input {source}: an input is never "
                                 f"replaced by its reconstruction; pass another {flag} folder, e.g. "
                                 f"{flag} {out / 'reconstructed'}")
    existing = [t for t in targets if os.path.lexists(t)]
    if not existing:
        return
    ours = _earlier_outputs(out) if (out / METRICS_FILE).is_file() else None
    if ours is None:
        raise ValueError(f"{flag} {out} already holds {existing[0]}, which vitok did not write there (no "
                         f"{METRICS_FILE} of an earlier run lists it); it is not overwritten: pass another {flag} "
                         f"folder, or move the file away")
    for target in existing:
        if target.name != METRICS_FILE and (target.name not in ours or not target.is_file()):
            raise ValueError(f"{flag} {out} already holds {target}, which the earlier run's {METRICS_FILE} does "
                             f"not list as its output; it is not overwritten: pass another {flag} folder, or move "
                             f"the file away")
