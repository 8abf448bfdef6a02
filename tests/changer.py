"""Change a file from another process the moment someone opens it (inotify ``IN_OPEN``).

``python tests/changer.py PATH truncate|append BYTES`` prints ``ready`` once the watch is in
place, waits for the first open of PATH, truncates it to BYTES or appends BYTES bytes, prints
``done`` and exits.  The walk of a backup only ``lstat``s files, so the first open of PATH is the
backup starting to read it: the change lands between the walk and the end of the read (the read
of a file of hundreds of MB takes far longer than this process takes to act).  Linux only.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

IN_OPEN = 0x20


def change_on_open(path: Path, action: str, nbytes: int) -> subprocess.Popen[str]:
    """Start the changer for ``path`` and return once its watch is in place."""
    proc = subprocess.Popen(
        [sys.executable, __file__, str(path), action, str(nbytes)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", f"changer did not start: {line!r}"
    return proc


def finish(proc: subprocess.Popen[str]) -> None:
    """Wait for the changer: it must have acted (``done``) and exited 0."""
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "done" in out, (proc.returncode, out)


def main(path: str, action: str, nbytes: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_CLOEXEC)
    if fd < 0 or libc.inotify_add_watch(fd, os.fsencode(path), IN_OPEN) < 0:
        raise OSError(ctypes.get_errno(), "inotify")
    print("ready", flush=True)
    os.read(fd, 4096)  # blocks until the first open
    if action == "truncate":
        os.truncate(path, nbytes)
    else:
        with open(path, "ab") as f:
            f.write(b"appended while read\n" * (nbytes // 20 + 1))
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
