"""A drill killed with SIGKILL (adversarial pass on drill.py).

Observed: `coldkeep drill` killed while its scratch instance runs leaves that PostgreSQL server
running on its private port and the whole restored copy in the scratch directory (as big as the
database), and nothing ever removes them: every later drill makes a new one.  The live server and
its lock are fine (the lock of a dead process is stale and removed by the next command).
Expected: the next drill stops a dead drill's scratch server and removes its directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coldkeep.postgres.cluster import TempCluster
from tests.helpers import COLDKEEP
from tests.pgsite import Env, archiving_env

pytestmark = [pytest.mark.pg, pytest.mark.slow]


@pytest.fixture
def pgenv(pg_cluster: TempCluster, pg_coldkeep: str) -> Iterator[Env]:
    yield from archiving_env(pg_cluster, pg_coldkeep)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _postmaster(scratch: Path) -> tuple[Path, int] | None:
    for pidfile in scratch.glob("coldkeep-drill-*/data/postmaster.pid"):
        try:
            return pidfile.parent.parent, int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return None


def test_the_next_drill_removes_what_a_killed_drill_left(pgenv: Env) -> None:
    env = pgenv
    scratch = env.base / "scratch"  # a directory the server's OS user can enter
    scratch.mkdir()
    os.chmod(scratch, 0o777)
    env.cluster.sql("INSERT INTO marks (label) SELECT 'seed' FROM generate_series(1, 50)")
    env.ck("pg", "backup")
    envvars = dict(os.environ, COLDKEEP_CACHE_DIR=str(env.cache), COLDKEEP_EXECUTABLE=env.executable)
    proc = subprocess.Popen([COLDKEEP, "--config", str(env.config), "drill", "--no-live", "--scratch", str(scratch)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=envvars)  # fmt: skip
    found = None
    deadline = time.monotonic() + 300  # a hang guard
    while found is None and proc.poll() is None and time.monotonic() < deadline:
        found = _postmaster(scratch)
        time.sleep(0.1)
    assert found is not None, f"the drill ended before its scratch server started: {proc.communicate()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left, postmaster = found
    try:
        env.ck("drill", "--no-live", "--scratch", str(scratch), timeout=600)
        assert not _alive(postmaster), "the killed drill's scratch server still runs"
        assert not left.exists(), f"the killed drill's scratch copy is still there: {left}"
    finally:
        if _alive(postmaster):
            os.kill(postmaster, signal.SIGKILL)
