"""`coldkeep drill --scenario conversations` on a real archive (PostgreSQL 15, batches stored in
the repository): `conversations verify` with the repository check passes and a randomly chosen
archived session comes back equal to its archived lines; a damaged batch file fails the drill
naming it (issue 16)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.convsite import ConvSite
from tests.helpers import flip_byte

from coldkeep.errors import EXIT_INTEGRITY
from coldkeep.postgres.cluster import TempCluster

pytestmark = [pytest.mark.pg]


def test_conversations_drill_retrieves_a_random_archived_session(
    pg_cluster: TempCluster, tmp_path: Path
) -> None:
    site = ConvSite(pg_cluster, tmp_path / "site", batch_rows=200).create()
    site.load(600, seed=5)
    site.ok("conversations", "archive", "--purge")
    out = site.ok("drill", "--scenario", "conversations", "--seed", "3")
    assert out["verdict"] == "passed" and out["seed"] == 3, out["checks"]
    session = out["recovered"]["session"]
    assert [c["name"] for c in out["checks"]] == [
        "conversations verify",
        f"archived session {session['session_id']}",
    ]
    assert all(c["ok"] for c in out["checks"])
    assert "each equal to its archived line" in out["checks"][1]["detail"]
    assert set(out["steps"]) == {"verify", "session"}
    # rows of the session came from the archive (purged from the table)
    wanted = site.ok("conversations", "get", "--session", session["session_id"])
    assert wanted["from_archive"] > 0

    batch = site.archive_dir / session["batch"]
    flip_byte(batch)  # the local archive file damaged
    proc = site.run("drill", "--scenario", "conversations", "--seed", "3")
    assert proc.returncode == EXIT_INTEGRITY, proc.stderr
    assert "drill failed: conversations verify" in proc.stderr and session["batch"] in proc.stderr
