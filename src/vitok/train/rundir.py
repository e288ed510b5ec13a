"""Who may write into a run folder, and what a new run may find there.

A run owns its folder for as long as it runs: it holds an OS-level lock (flock) on
RUN/.lock, which names its pid and host. The kernel drops the lock when the process ends,
however it ends (SIGKILL included), so a lock is never stale; the file itself stays and marks
the folder as a vitok run's. Only the holder tidies (deletes half-written files) or writes.

A new run starts only in a folder that does not exist, is empty, or is its own: an earlier
start of a run (marked by .lock) that stopped before its first checkpoint, holding nothing
but the files a run writes. Anything else a folder holds is the user's, and is never
overwritten.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import time
from pathlib import Path

import yaml

from . import checkpoint as ckpt

LOCK_FILE = ".lock"
# What a run writes at its top level before its first checkpoint (and the temporary names of
# its atomic writes): a folder with .lock holding only these is an earlier start of a run.
EARLY_RUN_FILES = {LOCK_FILE, "config.yaml", ".config.yaml.tmp", "metrics.jsonl", "metrics.tmp", "train.log",
                   "tensorboard", "checkpoints", "reconstructions.png", "reconstructions.tmp.png", "losses.png",
                   "heldout.png"}
# `vitok sweep` keeps its log and failure note beside a point's run, and launches the run there.
SWEEP_FILES = {"sweep.log", "sweep_error.txt"}
# Leftovers of writes cut short by a kill, removed by tidy() (the checkpoints' own: checkpoint.recover).
STALE_TMP = ("metrics.tmp", "reconstructions.tmp.png", ".config.yaml.tmp")
# How long to wait for a lock whose recorded holder has died: its data-loader workers (which share
# the lock through fork) see their parent gone within 5 s (torch's MP_STATUS_CHECK_INTERVAL) and exit.
ORPHAN_WAIT_S = 15.0
_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def check_run_name(name: str) -> None:
    """`name` becomes a folder name under runs/: letters, digits, '.', '_' and '-' only."""
    if not _NAME.match(name or "") or name in (".", ".."):
        raise ValueError(f"name {name!r} cannot name a run folder under runs/: use letters, digits, '.', '_' "
                         f"and '-' only (no path separators, not '.' or '..'), e.g. name=my-run; to put the "
                         f"run elsewhere, pass --out DIR")


class RunLock:
    """An exclusive flock on RUN/.lock, held from acquire() until release() or the end of the process."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self.fd = path, fd

    @classmethod
    def acquire(cls, run_dir: Path) -> RunLock:
        path = run_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # 0o666 less the umask
        deadline = time.monotonic() + ORPHAN_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                record = _record(fd)
                # A killed run's data-loader workers share its lock (through fork) until they notice and exit.
                ended = record is not None and record["host"] == socket.gethostname() and not _alive(record["pid"])
                if ended and time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                os.close(fd)
                holder = (f"pid {record['pid']} on {record['host']}" if record
                          else "another process (pid and host not yet recorded)")
                note = " (that process has ended, but processes it started still hold the folder: end them)"
                raise ValueError(f"{run_dir} is in use by the run of {holder}; wait for it or choose "
                                 f"another --out{note if ended else ''}") from None
            except OSError as err:
                os.close(fd)
                raise ValueError(f"cannot lock {path} ({err.strerror}); the run folder must be on a file system "
                                 f"with file locks (flock): choose another --out") from None
        return cls(path, fd)

    def record(self) -> None:
        """Name this process as the holder (after the checks, so that a refused run leaves the file as it was)."""
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, (json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n").encode(), 0)

    def release(self) -> None:
        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1


def _record(fd: int) -> dict | None:
    """The holder's {"pid", "host"} from a lock file (written just after the checks, so it may be empty)."""
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return {"pid": int(record["pid"]), "host": str(record["host"])}
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _same_config(path: Path, config: dict) -> bool:
    """Whether a config.yaml holds exactly `config` (writing it again then changes nothing)."""
    try:
        return yaml.safe_load(path.read_text()) == config
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False


def check_fresh(run_dir: Path, config: dict) -> None:
    """Refuse a folder that a new run would overwrite (see the module's docstring); reads only."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--out {run_dir} is a file, not a folder; choose a new folder for the run")
    if not run_dir.is_dir():
        return
    if ckpt.list_checkpoints(run_dir / "checkpoints"):
        raise ValueError(f"{run_dir} already holds a run with checkpoints; continue it with --resume {run_dir}, "
                         f"or choose another --out")
    names = sorted(p.name for p in run_dir.iterdir())
    own = EARLY_RUN_FILES if LOCK_FILE in names else set()
    foreign = [n for n in names if n not in own | SWEEP_FILES
               and not (n == "config.yaml" and _same_config(run_dir / n, config))]
    if foreign:
        shown = ", ".join(foreign[:6]) + (f" and {len(foreign) - 6} more" if len(foreign) > 6 else "")
        raise ValueError(f"{run_dir} is not empty (it holds {shown}); a new run writes only into an empty or new "
                         f"folder, so nothing there is overwritten: choose another --out, or, if it is a run "
                         f"folder, continue it with --resume {run_dir}")


def claim(run_dir: Path, fresh: bool, config: dict) -> RunLock:
    """Take the run folder (creating it for a new run) and tidy it; the caller releases the lock at the end."""
    if fresh and not (run_dir / LOCK_FILE).is_file():
        check_fresh(run_dir, config)  # before anything is created (a run's folder: first, is it in use?)
    elif not fresh and not run_dir.is_dir():
        raise ValueError(f"--resume {run_dir}: no such run folder; pass a folder written by vitok train")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot create the run folder {run_dir} ({err.strerror}); choose another --out") from None
    lock = RunLock.acquire(run_dir)
    try:
        if fresh:
            check_fresh(run_dir, config)  # again under the lock: another run may have written meanwhile
        lock.record()
        tidy(run_dir)
    except BaseException:
        lock.release()
        raise
    return lock


def tidy(run_dir: Path) -> None:
    """Remove what writes cut short by a kill left behind (call only while holding the lock)."""
    ckpt.recover(run_dir / "checkpoints")
    for name in STALE_TMP:
        (run_dir / name).unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    """Write a file of the run folder atomically (through .NAME.tmp, which tidy() removes if a kill leaves it)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:  # open() creates with 0o666 less the umask
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_config(run_dir: Path, config: dict) -> None:
    """RUN/config.yaml: the resolved config the run trains with (what --resume reads back)."""
    write_text(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
