"""kill -9 of `coldkeep pg backup` at deterministic storage calls and at random moments: afterwards
the repository checks clean, earlier backups still verify, a rerun completes and restores."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.pgsite import COLDKEEP, Env, archiving_env

from coldkeep.postgres.cluster import TempCluster

pytestmark = [pytest.mark.pg, pytest.mark.slow]


@pytest.fixture
def pgenv(pg_cluster: TempCluster, pg_coldkeep: str) -> Iterator[Env]:
    yield from archiving_env(pg_cluster, pg_coldkeep)


def _popen(env: Env, extra_env: dict[str, str]) -> subprocess.Popen[str]:
    full = dict(
        os.environ, COLDKEEP_CACHE_DIR=str(env.cache), COLDKEEP_EXECUTABLE=env.executable, **extra_env
    )
    return subprocess.Popen([COLDKEEP, "--config", str(env.config), "pg", "backup"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full)  # fmt: skip


def _no_basebackup_left(cluster: TempCluster) -> None:
    """The walsender of a killed backup goes away (pg_basebackup dies of the broken pipe)."""
    deadline = time.time() + 30
    while time.time() < deadline:
        if not cluster.sql("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender'")[0][0]:
            return
        time.sleep(0.2)
    raise AssertionError("a base backup is still running on the server after its coldkeep was killed")


def test_kill_pg_backup_then_check_and_rerun(pgenv: Env, tmp_path: Path) -> None:
    env, c = pgenv, pgenv.cluster
    c.sql("INSERT INTO marks (label) SELECT 'row ' || g FROM generate_series(1, 20000) g")
    first = env.ckj("pg", "backup")
    env.switch_and_wait()
    counts = tmp_path / "counts.json"
    env.ckj("pg", "backup", extra_env={"COLDKEEP_FAULTS": "count", "COLDKEEP_FAULTS_COUNTS": str(counts)})
    calls = json.loads(counts.read_text())
    writes = int(calls.get("put_if_absent", 0)) + int(calls.get("put", 0))
    assert writes >= 4, calls
    points = sorted({max(1, round(i * writes / 6)) for i in range(1, 7)})
    rng = random.Random(4)
    for n in points:
        c.sql(f"INSERT INTO marks (label) VALUES ('before kill {n}')")
        proc = _popen(env, {"COLDKEEP_FAULTS": f"kill:write:{n}", "COLDKEEP_PACK_TARGET": "262144"})
        proc.communicate(timeout=300)
        assert proc.returncode == -signal.SIGKILL, (n, proc.returncode)
        _no_basebackup_left(c)
        env.ck("repo", "check")
    for _ in range(3):  # random moments
        proc = _popen(env, {})
        time.sleep(rng.uniform(0.2, 2.5))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        _no_basebackup_left(c)
        env.ck("repo", "check")
    # earlier backups are intact, a rerun completes, and everything verifies and restores
    env.ck("pg", "verify", first["id"][:12])
    c.sql("INSERT INTO marks (label) VALUES ('final')")
    env.ckj("pg", "backup")
    env.switch_and_wait()
    env.ck("pg", "verify", "--all")
    env.ck("repo", "check", "--read-data")
    result = env.ckj("pg", "restore-test")
    assert result["ok"], result
