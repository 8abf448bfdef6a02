"""`coldkeep drill --scenario database` on a real PostgreSQL 15 cluster archiving into coldkeep:
under write load it passes with the counts bracketed at its restore point and an RPO measured;
a damaged WAL segment or base-backup pack fails it naming it; from the copy alone (the local repository
gone) the full drill passes too, every scenario from the copy (issue 16)."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.pgsite import Env, archiving_env

from coldkeep.postgres.cluster import TempCluster

pytestmark = [pytest.mark.pg, pytest.mark.slow]


@pytest.fixture
def pgenv(pg_cluster: TempCluster, pg_coldkeep: str) -> Iterator[Env]:
    yield from archiving_env(pg_cluster, pg_coldkeep)


class Writer:
    """Inserts marks rows until stopped: the write load a drill must not be confused by."""

    def __init__(self, cluster: TempCluster) -> None:
        import psycopg

        self.conn = psycopg.connect(cluster.dsn_for("postgres"), autocommit=True)
        self.stop = threading.Event()
        self.rows = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            self.conn.execute("INSERT INTO marks (label) VALUES ('load')")
            self.rows += 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        self.conn.close()


def test_database_drill_under_write_load_passes_and_is_recorded(pgenv: Env) -> None:
    env = pgenv
    env.cluster.sql("INSERT INTO marks (label) SELECT 'seed' FROM generate_series(1, 500)")
    env.ck("pg", "backup", "--label", "drill")
    writer = Writer(env.cluster)
    try:
        result = env.ckj("drill", "--scenario", "database", timeout=600)
    finally:
        writer.close()
    assert writer.rows > 0
    assert result["verdict"] == "passed" and result["ok"], result["checks"]
    names = {c["name"] for c in result["checks"]}
    assert {"mark", "restore files", "recovery", "pg_amcheck --all", "rows marks", "check_sql[0]"} <= names
    rows = next(c for c in result["checks"] if c["name"] == "rows marks")
    assert "the live server had" in rows["detail"]  # bracketed at the drill's own restore point
    assert set(result["steps"]) >= {"mark", "files", "replay", "checks"}
    assert result["restore_point"].startswith("coldkeep-drill-") and result["rpo_s"] is not None
    assert result["rpo_s"] >= 0 and result["files_mb_s"] > 0
    assert result["projection"]["one_tb_in_an_hour_mb_s"] == pytest.approx(277.8, abs=0.1)
    assert "projected_rto_s" in result["projection"]
    # recorded in the repository, where status and the report read it
    from coldkeep.ops.drill import history
    from coldkeep.repository.repository import Repository
    from coldkeep.storage.local import LocalBackend

    with Repository.open(LocalBackend(env.base / "repo")) as repo:
        assert [d["restore_point"] for d in history(repo)] == [result["restore_point"]]
    # a run record, from which the metrics take the drill's RTO and RPO
    (run,) = env.ckj("runs", "--job", "drill")
    assert run["result"] == "ok" and run["figures"]["rto_s"] == result["total_s"]
    assert run["figures"]["rpo_s"] == result["rpo_s"]
    # the live server was never touched: still running, still archiving, one timeline
    assert env.cluster.sql("SELECT pg_is_in_recovery()")[0][0] is False
    assert not list((env.base / "repo" / "named" / "wal").rglob("*.history"))


def test_a_damaged_wal_segment_fails_the_drill_naming_it(pgenv: Env) -> None:
    env = pgenv
    env.ck("pg", "backup")
    env.cluster.sql("INSERT INTO marks (label) SELECT 'after' FROM generate_series(1, 200)")
    env.switch_and_wait()
    stop_wal = env.ckj("pg", "backups")[-1]["stop_wal"]
    segments = sorted(p for p in (env.base / "repo" / "named" / "wal").rglob("*")
                      if p.is_file() and len(p.name) == 24 and p.name > stop_wal)  # fmt: skip
    victim = segments[0]
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    victim.write_bytes(bytes(raw))
    proc = env.ck("drill", "--no-live", expect=3, timeout=600)
    assert victim.name in proc.stderr and "drill failed" in proc.stderr
    kept = proc.stderr.split("the scratch server's log is kept at ")[1].split()[0]
    assert victim.name in Path(kept).read_text()  # the log outlives the scratch copy it came from
    Path(kept).unlink()


def test_full_drill_from_the_copy_alone_after_losing_the_repository(pgenv: Env) -> None:
    """The total-loss case: every scenario from the offsite copy alone (database, checkpoint and
    dataset pass; conversations, not configured here, is skipped)."""
    from tests.ckptfiles import write_checkpoint
    from tests.datasetsite import make_dataset

    env = pgenv
    copy = env.base / "offsite"
    models = env.base / "models"
    write_checkpoint(models / "cet-d-phase1" / "production-20251010_000000", shards=1, per_shard=2)
    with env.config.open("a") as f:
        f.write(f'[checkpoints]\nroot = "{models}"\nsettle_seconds = 0\n'
                f'[repository.copies.offsite]\nurl = "file://{copy}"\n')  # fmt: skip
    env.ck("checkpoints", "backup")
    env.ck(
        "datasets",
        "snapshot",
        "--version",
        "v1",
        "--root",
        str(make_dataset(env.base / "data", train=1, holdout=1)),
    )
    env.cluster.sql("INSERT INTO marks (label) SELECT 'seed' FROM generate_series(1, 300)")
    env.ck("pg", "backup")
    env.cluster.sql("INSERT INTO marks (label) SELECT 'later' FROM generate_series(1, 100)")
    env.switch_and_wait()
    env.ck("repo", "copy", "--to", "offsite")
    shutil.rmtree(env.base / "repo")  # the local repository is lost
    result = env.ckj("drill", "--scenario", "full", "--from-copy", "offsite", timeout=600)
    assert result["verdict"] == "passed" and result["source"] == "copy offsite", result["checks"]
    subs = result["scenarios"]
    assert [subs[s]["verdict"] for s in ("database", "checkpoint", "dataset", "conversations")] == [
        "passed", "passed", "passed", "skipped"]  # fmt: skip
    database = subs["database"]
    assert "mark" not in database["steps"]  # a restore point made now would not be in the copy
    rows = next(c for c in database["checks"] if c["name"] == "rows marks")
    assert rows["ok"] and rows["detail"].startswith("400 rows")  # everything the copy holds
    assert "no live server to compare with" in rows["detail"]
    assert "database: rows marks" in {c["name"] for c in result["checks"]}
    assert subs["checkpoint"]["recovered"]["production"]["name"] == "cet-d-phase1/production-20251010_000000"
    assert result["total_s"] >= sum(result["steps"].values()) - 0.01


def test_a_damaged_base_backup_pack_fails_the_drill_naming_it(pgenv: Env) -> None:
    env = pgenv
    env.ck("pg", "backup")
    packs = sorted(
        (env.base / "repo" / "data").rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0
    )
    victim = packs[-1]  # the biggest pack: base-backup data (WAL lives under named/wal)
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    victim.write_bytes(bytes(raw))
    proc = env.ck("drill", "--no-live", expect=3, timeout=600)
    assert "drill failed" in proc.stderr
    assert victim.name[:8] in proc.stderr or victim.name in proc.stderr, proc.stderr
