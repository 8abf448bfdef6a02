"""A live lock of another machine that has the same host name (adversarial pass 2).

A lock is stale "when its pid is dead on this host", and "this host" is the host name alone.  Two
machines with the same name (cloned VMs, `localhost`, containers given one hostname) share a
repository on S3: a backup running on one is a lock with this host name and a pid that does not
exist here — so `repo prune` on the other ignores it as stale and deletes the packs that backup
is writing (orphans: in no index yet) or deduplicating against: the backup's snapshot then does
not restore.  The lock document should say which machine holds it (e.g. /etc/machine-id or the
boot id) and the pid rule apply only on that machine; elsewhere only the 30-minute rule.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from tests.helpers import Site


def test_prune_respects_a_fresh_lock_of_a_namesake_machine(tmp_path: Path) -> None:
    site = Site(tmp_path / "site")
    site.ok("repo", "init")
    now = time.time()
    lock = {
        "host": socket.gethostname(),  # another machine, same name
        "pid": 4_000_000,  # a process there; no such pid here
        "user": "root",
        "operation": "backup",
        "exclusive": False,
        "created": now - 5,
        "refreshed": now,  # refreshed a moment ago: alive
        "machine_id": "another-machine",
        "boot_id": "another-boot",
    }
    (site.repo_dir / "locks").mkdir(exist_ok=True)
    (site.repo_dir / "locks" / f"{int(now)}-0123456789ab").write_text(json.dumps(lock))
    proc = site.run("repo", "prune")
    assert proc.returncode == 4, proc.stdout + proc.stderr  # observed: 0, the prune ran


def test_a_lock_of_an_earlier_boot_of_this_machine_is_stale_even_if_its_pid_lives() -> None:
    """After a reboot a lock's pid may belong to another process: the boot id decides."""
    import os

    from coldkeep.repository.locks import LockInfo, machine_identity

    machine, boot = machine_identity()
    now = time.time()
    alive = os.getpid()
    common = dict(id="x", host=socket.gethostname(), pid=alive, user="root", operation="backup",
                  exclusive=False, created=now, refreshed=now)  # fmt: skip
    assert not LockInfo(**common, machine_id=machine, boot_id=boot).is_stale()  # type: ignore[arg-type]
    if machine and boot:  # (a machine without them falls back to the host name rule)
        assert LockInfo(**common, machine_id=machine, boot_id="an-earlier-boot").is_stale()  # type: ignore[arg-type]
    assert not LockInfo(**common, machine_id="another-machine", boot_id="b").is_stale()  # type: ignore[arg-type]
