"""A drill whose live server answers but cannot be marked fails (adversarial pass on drill.py).

Observed: with the live server's ``archive_command`` failing, the restore point the drill makes
never reaches the repository; the drill logged "live server not used (... was not archived in
time); recovering the whole archive" as a *passed* "mark" check, recovered an old archive and
exited 0 with verdict "passed" — the one condition a disaster drill exists to find (WAL is not
being archived: the RPO grows without bound) reported as a success.  Only a server that does not
answer at all (the disaster itself) may be left out silently.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from coldkeep.postgres.cluster import TempCluster
from tests.pgsite import Env, archiving_env

pytestmark = [pytest.mark.pg, pytest.mark.slow]


@pytest.fixture
def pgenv(pg_cluster: TempCluster, pg_coldkeep: str) -> Iterator[Env]:
    yield from archiving_env(pg_cluster, pg_coldkeep)


def test_a_restore_point_never_archived_fails_the_drill(pgenv: Env) -> None:
    env = pgenv
    env.cluster.sql("INSERT INTO marks (label) SELECT 'seed' FROM generate_series(1, 50)")
    env.ck("pg", "backup")
    env.cluster.sql("ALTER SYSTEM SET archive_command = '/bin/false'")  # archiving broke
    env.cluster.sql("SELECT pg_reload_conf()")
    result = env.ckj("drill", "--scenario", "database", expect=3, timeout=600)
    mark = next(c for c in result["checks"] if c["name"] == "mark")
    assert not mark["ok"] and "not archived" in mark["detail"], mark
    assert result["verdict"] == "failed" and not result["ok"]
