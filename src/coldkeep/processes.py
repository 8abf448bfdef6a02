"""Whether a process is alive (stdlib only: the per-segment WAL path uses it too)."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """``True`` when process ``pid`` exists on this machine (in this PID namespace), whoever
    owns it: a process of another user answers ``kill(pid, 0)`` with EPERM, and is alive."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
