"""A live lock of a container on this machine (adversarial pass on the stale-lock cleanup).

Containers started from one image share its ``/etc/machine-id`` and the kernel's boot id, but
not the pid namespace: a backup running in one container holds a lock with this machine id, this
boot id, its own host name and a pid that does not exist here.  The pid rule judged it dead, and
since every command taking a lock now removes the stale locks it sees, `repo prune` in the other
container removed the live backup's lock and pruned under it.  A lock of another host name is
judged by the 30-minute rule, as one of another machine.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from coldkeep.repository.locks import machine_identity
from tests.helpers import Site


def test_prune_respects_a_fresh_lock_of_a_container_of_this_machine(tmp_path: Path) -> None:
    site = Site(tmp_path / "site")
    site.ok("repo", "init")
    machine, boot = machine_identity()
    now = time.time()
    lock = {
        "host": "backup-container-7f3a",  # the other container's host name
        "pid": 4_000_000,  # its process, in its own pid namespace: no such pid here
        "user": "root",
        "operation": "backup",
        "exclusive": False,
        "created": now - 5,
        "refreshed": now,  # refreshed a moment ago: alive
        "machine_id": machine,  # the image's machine id, as here
        "boot_id": boot,  # one kernel
    }
    key = site.repo_dir / "locks" / f"{int(now)}-0123456789ab"
    key.parent.mkdir(exist_ok=True)
    key.write_text(json.dumps(lock))
    proc = site.run("repo", "prune")
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert key.exists()
