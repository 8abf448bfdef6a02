"""A drill of a primary with synchronous standbys (adversarial pass on drill.py / pg restore).

Observed: the base backup carries the primary's ``synchronous_standby_names`` (here from ALTER
SYSTEM, as `pg receive-wal --synchronous` setups have it), so the scratch instance waits for a
standby that can never connect at its first commit: ``pg_amcheck --install-missing`` creates the
amcheck extension and hangs there (for its one-hour timeout), and the drill with it.  The scratch
instance is nobody's primary: it is started without synchronous standbys.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from coldkeep.postgres.cluster import TempCluster
from tests.pgsite import Env, archiving_env

pytestmark = [pytest.mark.pg, pytest.mark.slow]


@pytest.fixture
def pgenv(pg_cluster: TempCluster, pg_coldkeep: str) -> Iterator[Env]:
    yield from archiving_env(pg_cluster, pg_coldkeep)


def _stop_scratch_servers(scratch: Path) -> None:
    for pidfile in scratch.glob("coldkeep-drill-*/data/postmaster.pid"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)


def test_a_drill_of_a_primary_with_synchronous_standbys_does_not_wait_for_them(pgenv: Env) -> None:
    env = pgenv
    env.cluster.sql("INSERT INTO marks (label) SELECT 'seed' FROM generate_series(1, 50)")
    env.cluster.sql("ALTER SYSTEM SET synchronous_standby_names = 'coldkeep_receiver'")
    env.cluster.sql("SELECT pg_reload_conf()")
    env.ck("pg", "backup")
    scratch = env.base / "scratch"
    scratch.mkdir()
    os.chmod(scratch, 0o777)
    try:
        result = env.ckj("drill", "--no-live", "--scratch", str(scratch), timeout=300)  # a hang guard
    finally:
        _stop_scratch_servers(scratch)
    assert result["verdict"] == "passed", result["checks"]
