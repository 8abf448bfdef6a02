"""A scratch directory the server's OS user cannot enter (adversarial pass on drill.py).

Observed: with ``--scratch`` below a directory only root may enter, the drill restored the whole
base backup first (an hour for 1 TB), then failed its "restore" check with pg_ctl's "Permission
denied", as exit 3 with the hint to check and repair the repository — nothing was wrong with it.
Expected: refused before anything is restored, naming the directory and the OS user.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from coldkeep.postgres.cluster import TempCluster, running_as_root
from tests.helpers import need
from tests.pgsite import Env, archiving_env

pytestmark = [pytest.mark.pg, pytest.mark.slow]


@pytest.fixture
def pgenv(pg_cluster: TempCluster, pg_coldkeep: str) -> Iterator[Env]:
    yield from archiving_env(pg_cluster, pg_coldkeep)


def test_a_scratch_directory_the_server_user_cannot_enter_is_refused_first(
    pgenv: Env, tmp_path: Path
) -> None:
    need(running_as_root(), "the scratch server runs as another OS user only when coldkeep runs as root")
    env = pgenv
    env.ck("pg", "backup")
    closed = tmp_path / "root-only"
    closed.mkdir(mode=0o700)
    scratch = closed / "scratch"
    scratch.mkdir(mode=0o777)
    os.chmod(scratch, 0o777)
    proc = env.ck("drill", "--no-live", "--scratch", str(scratch), expect=2)
    assert env.cluster.os_user in proc.stderr and str(scratch) in proc.stderr, proc.stderr
    assert "restore files" not in proc.stdout, proc.stdout  # refused before restoring anything
    assert list(scratch.iterdir()) == []
