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
