"""A drill whose live server answers but cannot be marked fails (adversarial pass on drill.py).

Observed: with the live server's ``archive_command`` failing, the restore point the drill makes
never reaches the repository; the drill logged "live server not used (... was not archived in
time); recovering the whole archive" as a *passed* "mark" check, recovered an old archive and
exited 0 with verdict "passed" — the one condition a disaster drill exists to find (WAL is not
being archived: the RPO grows without bound) reported as a success.  Only a server that does not
answer at all (the disaster itself) may be left out silently.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from coldkeep.postgres.cluster import TempCluster
from tests.pgsite import Env, archiving_env

pytestmark = [pytest.mark.pg, pytest.mark.slow]


@pytest.fixture
def pgenv(pg_cluster: TempCluster, pg_coldkeep: str) -> Iterator[Env]:
    # one wal-push per segment: "archiving broke" is simulated by archive_command = /bin/false,
    # which a live `wal-push --async` pusher (it archives `.ready` segments ahead of the archiver
    # for up to 5 s of idleness) would not notice
    yield from archiving_env(pg_cluster, pg_coldkeep, archive_async=False)


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


def test_a_live_server_that_refuses_the_restore_point_fails_the_mark_in_one_line(pgenv: Env) -> None:
    """pg_create_restore_point refused (a server in recovery; here a role without the right to
    it) was a psycopg error no one caught: 'internal error', exit 1, no drill recorded."""
    env = pgenv
    env.cluster.sql("INSERT INTO marks (label) SELECT 'seed' FROM generate_series(1, 50)")
    env.ck("pg", "backup")
    env.cluster.sql("CREATE ROLE drill_reader LOGIN; GRANT SELECT ON marks TO drill_reader")
    text = env.config.read_text()
    env.config.write_text(
        text.replace(f'dsn = "{env.cluster.dsn}"', f'dsn = "{env.cluster.dsn} user=drill_reader"')
    )
    proc = env.ck("--json", "drill", "--scenario", "database", expect=3, timeout=600)
    assert "internal error" not in proc.stderr, proc.stderr
    assert "repo repair" not in proc.stderr, proc.stderr  # nothing is wrong with the repository
    mark = next(c for c in json.loads(proc.stdout)["checks"] if c["name"] == "mark")
    assert not mark["ok"] and "pg_create_restore_point" in mark["detail"], mark
