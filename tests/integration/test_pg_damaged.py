"""Damaged PostgreSQL objects on a real cluster (issue 11, items 15 and 16).

* A damaged base-backup snapshot document: `pg backups` and `pg restore` name it in a warning and
  go on with the other backups (the file-snapshot commands are in test_damaged_snapshot.py).
* A timeline history file that cannot be read (one flipped byte) is a problem for `pg verify`
  (exit 3, naming it), not skipped: without it the WAL chain can follow the wrong timeline.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
from tests.helpers import flip_byte
from tests.pgsite import Env, archiving_env

from coldkeep.postgres import archive, wal
from coldkeep.postgres.cluster import TempCluster
from coldkeep.repository.repository import Repository
from coldkeep.storage.local import LocalBackend

pytestmark = [pytest.mark.pg, pytest.mark.slow]


@pytest.fixture
def pgenv(pg_cluster: TempCluster, pg_coldkeep: str) -> Iterator[Env]:
    yield from archiving_env(pg_cluster, pg_coldkeep)


def warned(stderr: str, snapshot_id: str) -> bool:
    pattern = rf"^warning: snapshot {snapshot_id} is damaged \(.+\); skipped — run `coldkeep repo check`$"
    return re.search(pattern, stderr, re.MULTILINE) is not None


def test_damaged_backup_document_and_history_file(pgenv: Env) -> None:
    env = pgenv
    env.cluster.sql("INSERT INTO marks (label) VALUES ('one')")
    first = env.ckj("pg", "backup", "--label", "first")
    second = env.ckj("pg", "backup", "--label", "second")
    repo_dir = env.base / "repo"
    doc = repo_dir / "snapshots" / second["id"]
    doc.write_bytes(doc.read_bytes()[:-40])  # the newest backup's document, truncated

    proc = env.ck("--json", "pg", "backups")
    assert [b["id"] for b in json.loads(proc.stdout)] == [first["id"]]
    assert warned(proc.stderr, second["id"]), proc.stderr

    proc = env.ck("--json", "pg", "restore", "--target-dir", str(env.base / "restored"))
    assert json.loads(proc.stdout)["backup_id"] == first["id"]  # the newest readable one
    assert warned(proc.stderr, second["id"]), proc.stderr
    assert (env.base / "restored" / "PG_VERSION").is_file()

    # a history file for a timeline 2 that branched off timeline 1, archived, then damaged
    with Repository.open(LocalBackend(repo_dir, owner=env.cluster.os_user)) as repo:
        prefix = str(archive.find_lineage(repo)["prefix"])
        key = wal.archive_key("00000002.history", prefix)
        repo.put_named(
            key, b"1\t0/9000000\tno recovery target specified\n", {"kind": "history", "timeline": 2}
        )
    env.ck("pg", "verify", first["id"])  # readable, it is no problem (timeline 2 has no WAL yet)
    history = repo_dir / "named" / key
    flip_byte(history, history.stat().st_size // 2)
    proc = env.ck("--json", "pg", "verify", first["id"], expect=3)
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert "00000002.history" in line and "Traceback" not in proc.stderr, proc.stderr
    (result,) = json.loads(proc.stdout)
    assert any("history file 00000002.history cannot be read" in p for p in result["problems"]), result
