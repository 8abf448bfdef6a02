"""Base backups, point-in-time recovery for every target type, restore tests and expiry, on real
PostgreSQL 15 clusters with archive_command = coldkeep pg wal-push (run by the server as its OS
user) and restore_command = coldkeep pg wal-fetch."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.pgsite import Env, archiving_env

from coldkeep.postgres.cluster import TempCluster, chown_to

pytestmark = [pytest.mark.pg, pytest.mark.slow]


@pytest.fixture
def pgenv(pg_cluster: TempCluster, pg_coldkeep: str) -> Iterator[Env]:
    yield from archiving_env(pg_cluster, pg_coldkeep)


def mark(cluster: TempCluster, label: str) -> None:
    cluster.sql(f"INSERT INTO marks (label) VALUES ('{label}')")


def labels_in(env: Env, report: dict[str, Any]) -> list[str]:
    import psycopg

    dsn = f"host={report['socket_dir']} port={report['port']} dbname=postgres user=postgres"
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [r[0] for r in conn.execute("SELECT label FROM marks ORDER BY id")]


def stop_restored(env: Env, report: dict[str, Any]) -> None:
    data = Path(report["data_dir"])
    TempCluster(data.with_name(data.name + ".run"), bin_dir=env.cluster.bin_dir, data_dir=data).stop()


def restore(env: Env, name: str, *args: str) -> dict[str, Any]:
    report: dict[str, Any] = env.ckj("pg", "restore", "--target-dir", str(env.base / name), "--start", *args)
    return report


def test_pitr_every_target_type(pgenv: Env) -> None:
    env, c = pgenv, pgenv.cluster
    mark(c, "before-backup")
    backup = env.ckj("pg", "backup", "--label", "first")
    assert backup["start_wal"] and backup["stop_wal"] and backup["row_counts_start"]["marks"] == 1
    mark(c, "before-time")
    time.sleep(1.1)
    target_time = str(c.sql("SELECT now()")[0][0].isoformat())
    time.sleep(1.1)
    mark(c, "after-time")
    mark(c, "at-xid")
    xid = str(c.sql("SELECT xmin::text FROM marks WHERE label = 'at-xid'")[0][0])
    mark(c, "after-xid")
    lsn = str(c.sql("SELECT pg_current_wal_insert_lsn()")[0][0])
    mark(c, "after-lsn")
    c.sql("SELECT pg_create_restore_point('coldkeep-rp')")
    mark(c, "after-name")
    mark(c, "latest")
    env.switch_and_wait()

    everything = [
        "before-backup",
        "before-time",
        "after-time",
        "at-xid",
        "after-xid",
        "after-lsn",
        "after-name",
        "latest",
    ]
    cases = {
        "time": (["--time", target_time], everything[:2]),
        "xid": (["--xid", xid], everything[:4]),
        "lsn": (["--lsn", lsn], everything[:5]),
        "name": (["--name", "coldkeep-rp"], everything[:6]),
        "immediate": (["--immediate"], everything[:1]),
        "latest": ([], everything),
    }
    for kind, (args, expected) in cases.items():
        report = restore(env, f"r-{kind}", *args)
        try:
            assert labels_in(env, report) == expected, kind
            assert report["started"] and report["replay_s"] is not None
            data = Path(report["data_dir"])
            auto = (data / "postgresql.auto.conf").read_text()
            assert "wal-fetch" in auto and "--prefetch 8" in auto  # the default restore path prefetches
            assert (
                "recovery_end_command = 'rm -rf -- pg_wal/.coldkeep-prefetch-ended; mv -- pg_wal/.coldkeep-prefetch"
                in auto
            )
            assert not (data / "pg_wal" / ".coldkeep-prefetch").exists()  # nothing left once promoted
        finally:
            stop_restored(env, report)
    # the restored copies did not archive into the production archive: still one timeline
    assert not [n for n in (env.base / "repo" / "named" / "wal").rglob("*.history")]


def test_unreachable_targets_are_refused_before_writing(pgenv: Env) -> None:
    env, c = pgenv, pgenv.cluster
    mark(c, "x")
    env.ck("pg", "backup")
    env.switch_and_wait()
    target = env.base / "never"
    proc = env.ck(
        "pg", "restore", "--target-dir", str(target), "--time", "2001-01-01T00:00:00+00:00", expect=2
    )
    assert "no backup finished before" in proc.stderr
    proc = env.ck(
        "pg", "restore", "--target-dir", str(target), "--time", "2999-01-01T00:00:00+00:00", expect=2
    )
    assert "after the newest archived WAL" in proc.stderr
    proc = env.ck("pg", "restore", "--target-dir", str(target), "--time", "2026-01-01T00:00:00", expect=2)
    assert "no UTC offset" in proc.stderr
    assert not target.exists()


def test_restore_tests_do_not_branch_the_archive_then_pitr_twice(pgenv: Env) -> None:
    env, c = pgenv, pgenv.cluster
    mark(c, "one")
    env.ck("pg", "backup")
    for _ in range(2):
        result = env.ckj("pg", "restore-test")
        assert result["ok"], result
        assert {ch["name"] for ch in result["checks"]} >= {"pg_amcheck --all", "rows marks", "check_sql[0]"}
    mark(c, "newest")
    env.switch_and_wait()
    report = restore(env, "r1")
    try:
        assert labels_in(env, report)[-1] == "newest"
        assert report["reached"]["timeline"] == 2
        listing = env.ckj("pg", "backups")
        assert listing[0]["restore_tested"] is True
    finally:
        stop_restored(env, report)
    # an existing directory is moved aside, never deleted
    again = restore(env, "r1")
    try:
        assert again["moved_aside"] and Path(again["moved_aside"]).is_dir()
    finally:
        stop_restored(env, again)


def test_second_pitr_from_a_restored_server_on_timeline_2(pgenv: Env) -> None:
    env, c = pgenv, pgenv.cluster
    mark(c, "a")
    env.ck("pg", "backup")
    mark(c, "b")
    env.switch_and_wait()
    c.stop()
    # fail over: the restored copy archives (timeline 2) into the same repository
    report = restore(env, "failover", "--archive-mode", "on")
    promoted = TempCluster(Path(report["data_dir"] + ".run"), bin_dir=c.bin_dir, data_dir=Path(report["data_dir"]),
                           port=report["port"])  # fmt: skip
    assert report["reached"]["timeline"] == 2
    promoted.sql("INSERT INTO marks (label) VALUES ('on-timeline-2')")
    promoted.sql("SELECT pg_switch_wal()")
    deadline = time.time() + 60
    while time.time() < deadline:
        if promoted.sql("SELECT last_archived_wal FROM pg_stat_archiver")[0][0]:
            break
        time.sleep(0.5)
    promoted.stop()
    second = restore(env, "second")
    try:
        assert labels_in(env, second) == ["a", "b", "on-timeline-2"]
        assert second["reached"]["timeline"] == 3
    finally:
        stop_restored(env, second)


def test_flipped_byte_in_needed_wal_stops_recovery_without_promoting(pgenv: Env) -> None:
    env, c = pgenv, pgenv.cluster
    env.ck("pg", "backup")
    mark(c, "after-backup")
    env.switch_and_wait()
    listing = env.ckj("pg", "backups")
    stop_wal = listing[-1]["stop_wal"]
    names = sorted(
        p
        for p in (env.base / "repo" / "named" / "wal").rglob("*")
        if p.is_file() and len(p.name) == 24 and p.name > stop_wal
    )
    victim = names[0]
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    victim.write_bytes(bytes(raw))
    proc = env.ck("pg", "restore", "--target-dir", str(env.base / "broken"), "--start", expect=1, timeout=300)
    log = (env.base / "broken.run" / "server.log").read_text()
    assert victim.name in proc.stderr  # the error names the segment recovery could not restore
    assert (
        f"error: named object wal/00000001/{victim.name}" in log or victim.name in log
    )  # wal-fetch said why
    assert "selected new timeline ID" not in log  # it never promoted
    assert not (env.base / "broken" / "postmaster.pid").exists()  # and the server is down
    proc = env.ck("repo", "check", "--read-data", expect=3)
    assert victim.name in proc.stdout + proc.stderr


def test_restore_test_catches_damaged_backup_and_missing_wal(pgenv: Env) -> None:
    env, c = pgenv, pgenv.cluster
    mark(c, "x")
    backup = env.ckj("pg", "backup")
    env.switch_and_wait()
    wal_dir = env.base / "repo" / "named" / "wal"
    start = next(p for p in wal_dir.rglob(backup["start_wal"]))
    saved = start.read_bytes()
    start.unlink()
    proc = env.ck("--json", "pg", "restore-test", expect=3)
    assert json.loads(proc.stdout)["ok"] is False
    proc = env.ck("pg", "verify", expect=3)
    assert backup["start_wal"] in proc.stdout + proc.stderr
    start.write_bytes(saved)
    chown_to(start, c.os_user)
    env.ck("pg", "verify")
    # damage a data file's pack: verify and restore-test fail with exit 3
    packs = sorted(
        (env.base / "repo" / "data").rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0
    )
    pack = packs[-1]
    raw = bytearray(pack.read_bytes())
    raw[100] ^= 0xFF
    pack.write_bytes(bytes(raw))
    env.ck("pg", "verify", expect=3)
    env.ck("pg", "restore-test", expect=3)


def test_expire_keeps_what_kept_backups_need(pgenv: Env) -> None:
    env, c = pgenv, pgenv.cluster
    ids = []
    for i in range(3):
        mark(c, f"gen{i}")
        ids.append(env.ckj("pg", "backup")["id"])
        env.switch_and_wait()
    env.ck("pg", "verify", "--all")
    # pretend a month passed: every backup is older than the window
    later = {"COLDKEEP_NOW": "2099-01-01T00:00:00+00:00"}
    os.environ.update(later)
    try:
        plan = env.ckj("pg", "expire", "--dry-run")
        kept = [b["id"] for b in plan["backups"] if b["keep"]]
        assert kept == [ids[-1]]  # the newest before the cutoff covers the window's oldest day
        env.ckj("pg", "expire")
    finally:
        os.environ.pop("COLDKEEP_NOW")
    listing = env.ckj("pg", "backups")
    assert [b["id"] for b in listing] == [ids[-1]]
    env.ck("pg", "verify", "--all")  # its WAL chain is intact
    report = restore(env, "after-expire")
    try:
        assert labels_in(env, report) == ["gen0", "gen1", "gen2"]
    finally:
        stop_restored(env, report)
    env.ck("repo", "check", "--read-data")
