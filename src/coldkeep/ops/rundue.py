"""``coldkeep run-due``: run every scheduled job that is due now, one at a time, under a lock.

Which jobs are due is :mod:`coldkeep.ops.schedule`'s rule (the latest slot has no run record):
after downtime each job runs once, not once per missed slot.  Each job runs as its own
``coldkeep --config FILE <command>`` process — the same command a timer or crontab line runs — so
it records its own run; ``run-due`` adds no record of its own.  The lock is a local ``flock`` on
``<cache dir>/run-due-<hash of the config path>.lock``: a second ``run-due`` (an overlapping cron
minute) exits 4 instead of running the same jobs twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from coldkeep import clock
from coldkeep.errors import LockHeld
from coldkeep.ops.schedule import JobState
from coldkeep.repository.index import cache_root


@dataclass
class Ran:
    type: str
    command: list[str]
    exit_code: int

    def to_json(self) -> dict[str, object]:
        return {"type": self.type, "command": self.command, "exit_code": self.exit_code}


def lock_path(config_path: str) -> Path:
    digest = hashlib.sha256(os.path.abspath(config_path).encode()).hexdigest()[:16]
    return cache_root() / f"run-due-{digest}.lock"


@contextmanager
def run_due_lock(config_path: str) -> Iterator[None]:
    """Hold the run-due lock of ``config_path``; :class:`LockHeld` (exit 4) when another has it."""
    path = lock_path(config_path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise LockHeld(f"another `coldkeep run-due` (pid {holder}, {path})",
                           hint="it runs the due jobs one at a time; let it finish") from None  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def run_due(due: list[JobState], executable: str, config_path: str, *, on_start: object = None) -> list[Ran]:
    """Run the ``due`` jobs in order, each to completion, as ``executable --config config_path
    ARGS``; a failing job does not stop the next.  Returns what ran with its exit code."""
    ran: list[Ran] = []
    for state in due:
        command = [executable, "--config", config_path, *state.job.argv]
        if callable(on_start):
            on_start(state, clock.now())
        # the job's output goes to stderr: standard output stays run-due's own (``--json``)
        done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno(), check=False)
        ran.append(Ran(state.job.type, command, done.returncode))
    return ran
