"""WAL archive acceptance: pg setup / pg check / wal-push / wal-fetch on real PostgreSQL 15.

archive_command really runs as the ``postgres`` OS user with a service-like environment (no
virtualenv on PATH, no COLDKEEP_* variables, no writable cache dir configured).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.helpers import AWS_ENV, flip_byte, need, one_line_error
from tests.walsite import (
    PG_USER,
    SEGMENT_1,
    WalSite,
    file_owner,
    generate_wal,
    make_site,
    remove_site,
    wait_archived,
)

from coldkeep.errors import RESTORE_COMMAND_FATAL
from coldkeep.postgres import wal
from coldkeep.postgres.cluster import TempCluster, running_as_root
from coldkeep.postgres.prefetch import LOCK_NAME, SPOOL_DIR, remove_spool

pytestmark = pytest.mark.pg


@pytest.fixture
def site(pg_cluster: TempCluster, pg_coldkeep: str) -> Iterator[WalSite]:
    s = make_site(pg_cluster, pg_coldkeep)
    yield s
    remove_site(s)


@pytest.fixture
def registered(site: WalSite) -> WalSite:
    """Archiving configured (lineage recorded), the server not restarted: pushes are by hand."""
    site.setup_archiving(restart=False)
    return site


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fresh_cluster(base: Path, bin_dir: Path) -> TempCluster:
    """A cluster of its own initdb (so a different system identifier), not started."""
    cluster = TempCluster(base, bin_dir=bin_dir)
    cluster.initdb(checksums=True)
    return cluster


# ------------------------------------------------------------------------------------------------
# setup, check, the real archiver


def test_setup_check_and_real_archiving(
    site: WalSite, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    shown = site.json("pg", "setup")
    settings = {s["name"]: s for s in shown["settings"]}
    assert shown["applied"] is False and shown["restart_needed"] is True
    assert shown["lineage_action"] == "would-record"
    assert settings["archive_mode"]["desired"] == "on" and settings["archive_mode"]["needs_restart"]
    assert settings["archive_command"]["desired"].endswith(f"--config {site.config} pg wal-push --async %p")
    assert settings["archive_timeout"]["desired"] == "60"
    assert not (site.repo_dir / "state" / "pg-lineage").exists()  # show only: nothing recorded

    applied = site.setup_archiving(restart=True, monkeypatch=monkeypatch)
    assert applied["applied"] is True and applied["restart_needed"] is True
    assert applied["lineage"]["prefix"] == "wal" and applied["lineage_action"] == "recorded"
    sysid = int(site.cluster.sql("SELECT system_identifier FROM pg_control_system()")[0][0])
    assert applied["lineage"]["system_identifier"] == sysid

    again = site.json("pg", "setup")  # idempotent: the same coldkeep path is kept
    assert [s["name"] for s in again["settings"] if s["changes"]] == []
    assert again["lineage_action"] == "unchanged" and again["restart_needed"] is False
    command = site.cluster.sql("SHOW archive_command")[0][0]
    assert str(command).startswith(site.coldkeep)

    check = site.json("pg", "check", "--timeout", "60")
    assert site.archived_path(check["segment"]).is_file()

    names = generate_wal(site.cluster, segments=3)
    stats = wait_archived(site.cluster, names[-1])
    assert stats["failed_count"] == 0, site.cluster.log_text()[-3000:]
    assert "archive command failed" not in site.cluster.log_text()

    archived = sorted(p for p in (site.named / "wal" / "00000001").iterdir())
    assert {p.name for p in archived} >= {check["segment"], *names}
    for path in [site.repo_dir, *site.repo_dir.rglob("*")]:
        assert file_owner(path) == PG_USER, path
    # every archived segment verifies, and equals pg_wal's copy while the server still has it
    compared = 0
    for path in archived:
        dest = tmp_path / path.name
        site.ok("pg", "wal-fetch", path.name, str(dest))
        original = site.wal_file(path.name)
        if original.exists() and path.name in names:
            assert sha(dest) == sha(original)
            compared += 1
    assert compared >= 1


def test_check_refuses_archiving_off_and_reports_archiver_failures(
    site: WalSite, monkeypatch: pytest.MonkeyPatch
) -> None:
    site.setup_archiving(restart=False)  # archive_mode needs the restart we do not do yet
    proc = site.run("pg", "check", "--timeout", "5")
    assert proc.returncode == 1
    assert "archive_mode is off (changed, waiting for a restart)" in one_line_error(proc)

    site.setup_archiving(restart=True, monkeypatch=monkeypatch)
    site.cluster.sql("ALTER SYSTEM SET archive_command = '/bin/false'")
    site.cluster.sql("SELECT pg_reload_conf()")
    proc = site.run("pg", "check", "--timeout", "4")
    assert proc.returncode == 1, proc.stderr
    line = one_line_error(proc)
    assert "did not reach the repository within 4 s" in line and "failed_count" in line


def test_setup_refuses_a_coldkeep_postgres_cannot_run(site: WalSite, tmp_path: Path) -> None:
    need(running_as_root(), "needs root: the server must run as another user than the test")
    private = tmp_path / "coldkeep"  # tmp_path is 0700 root: postgres cannot reach it
    private.write_text("#!/bin/sh\nexit 0\n")
    private.chmod(0o755)
    proc = site.run("pg", "setup", "--apply", "--coldkeep-path", str(private))
    assert proc.returncode == 1
    assert f"{PG_USER} cannot run {private}" in one_line_error(proc)
    assert site.cluster.sql("SHOW archive_mode")[0][0] == "off"
    assert not (site.repo_dir / "state" / "pg-lineage").exists()


# ------------------------------------------------------------------------------------------------
# wal-push: duplicates, damage, other clusters


def test_duplicate_identical_and_different(registered: WalSite, tmp_path: Path) -> None:
    site = registered
    segment = site.wal_file(SEGMENT_1)
    site.ok("pg", "wal-push", str(segment))
    stored = site.archived_path(SEGMENT_1)
    assert stored.is_file() and file_owner(stored) == PG_USER
    before = sha(stored)

    again = site.ok("pg", "wal-push", str(segment))
    assert "warning:" in again.stderr and "already archived with identical content" in again.stderr

    other = tmp_path / "other" / SEGMENT_1
    other.parent.mkdir()
    shutil.copy(segment, other)
    flip_byte(other, 4 * 1024 * 1024)  # header intact: same name, same cluster, different content
    proc = site.run("pg", "wal-push", str(other))
    assert proc.returncode == 3
    line = one_line_error(proc)
    assert SEGMENT_1 in line and "DIFFERENT content" in line and "refusing to overwrite" in line
    assert sha(stored) == before


def test_push_refuses_files_that_are_not_their_name(registered: WalSite, tmp_path: Path) -> None:
    site = registered
    segment = site.wal_file(SEGMENT_1)
    renamed = tmp_path / "000000010000000000000009"
    shutil.copy(segment, renamed)
    truncated = tmp_path / "trunc" / SEGMENT_1
    truncated.parent.mkdir()
    truncated.write_bytes(segment.read_bytes()[: 1024 * 1024])
    garbage = tmp_path / "000000010000000000000002"
    garbage.write_bytes(b"\x00" * 16 * 1024 * 1024)
    for path, needle in [(renamed, "header says it starts at LSN 0/1000000"), (truncated, "truncated"),
                         (garbage, "not a WAL segment")]:  # fmt: skip
        proc = site.run("pg", "wal-push", str(path))
        assert proc.returncode == 3, proc.stderr
        line = one_line_error(proc)
        assert path.name in line and needle in line
    assert not (site.named / "wal" / "00000001").exists()
    bad_name = tmp_path / "RECOVERYXLOG"
    shutil.copy(segment, bad_name)
    assert site.run("pg", "wal-push", str(bad_name)).returncode == 2
    missing = site.run("pg", "wal-push", str(tmp_path / "000000010000000000000005"))
    assert missing.returncode == 1 and "cannot read" in one_line_error(missing)


def test_history_backup_and_partial_files(registered: WalSite, tmp_path: Path) -> None:
    site = registered
    history = tmp_path / "00000002.history"
    history.write_text("1\t0/3000000\tno recovery target specified\n")
    backup = tmp_path / "000000010000000000000002.00000028.backup"
    backup.write_text("START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n")
    partial = tmp_path / f"{SEGMENT_1}.partial"
    shutil.copy(site.wal_file(SEGMENT_1), partial)
    for path in (history, backup, partial):
        site.ok("pg", "wal-push", str(path))
    assert site.archived_path("00000002.history").is_file()
    for path in (history, backup, partial):
        dest = tmp_path / "out" / path.name
        dest.parent.mkdir(exist_ok=True)
        site.ok("pg", "wal-fetch", path.name, str(dest))
        assert dest.read_bytes() == path.read_bytes()


def test_other_cluster_refused_then_new_lineage_after_upgrade(
    registered: WalSite, pg_bin_dir: Path, tmp_path: Path
) -> None:
    site = registered

    def frozen(live: Path, where: str) -> Path:
        """A copy of a live segment: a running server keeps writing into the file in pg_wal, and
        comparing a fetched copy with that file raced the server (what is fetched is what was
        pushed)."""
        copy = site.base / where / live.name
        copy.parent.mkdir()
        shutil.copyfile(live, copy)
        for path in (copy.parent, copy):
            shutil.chown(path, PG_USER, PG_USER)
        return copy

    old_segment = frozen(site.wal_file(SEGMENT_1), "old-segment")
    site.ok("pg", "wal-push", str(old_segment))

    upgraded = fresh_cluster(site.base / "new-pg", pg_bin_dir)  # pg_upgrade makes a new system identifier
    new_segment = frozen(upgraded.data_dir / "pg_wal" / SEGMENT_1, "new-segment")
    # a push from another cluster is refused (and stores nothing)
    before = sha(site.archived_path(SEGMENT_1))
    proc = site.run("pg", "wal-push", str(new_segment))
    assert proc.returncode == 3
    line = one_line_error(proc)
    assert SEGMENT_1 in line and "belongs to the cluster with system identifier" in line
    assert "another cluster" in proc.stderr
    assert sha(site.archived_path(SEGMENT_1)) == before

    upgraded.start()
    try:
        site.write_config(upgraded)
        proc = site.run("pg", "setup", "--apply", "--coldkeep-path", site.coldkeep)
        assert proc.returncode == 1
        assert "system identifier" in one_line_error(proc) and "--new-lineage" in proc.stderr
        result = site.json("pg", "setup", "--apply", "--new-lineage", "--coldkeep-path", site.coldkeep)
        sysid = result["system_identifier"]
        assert result["lineage"]["prefix"] == f"wal-{sysid}" and result["lineage_action"] == "new-lineage"

        site.ok("pg", "wal-push", str(new_segment))
        assert site.archived_path(SEGMENT_1, f"wal-{sysid}").is_file()
        assert site.run("pg", "wal-push", str(old_segment)).returncode == 3  # old cluster: refused now

        old_dest, new_dest = tmp_path / "old", tmp_path / "new"
        site.ok("pg", "wal-fetch", "--lineage", "wal", SEGMENT_1, str(old_dest))
        site.ok("pg", "wal-fetch", SEGMENT_1, str(new_dest))
        assert old_dest.read_bytes() == old_segment.read_bytes()
        assert new_dest.read_bytes() == new_segment.read_bytes()
        unknown = site.run("pg", "wal-fetch", "--lineage", "wal-1", SEGMENT_1, str(tmp_path / "x"))
        assert unknown.returncode == RESTORE_COMMAND_FATAL
    finally:
        upgraded.remove()


# ------------------------------------------------------------------------------------------------
# wal-fetch exit codes: 1 only for "not archived"


#: both ways a wal-fetch runs: the lean path and the click command
FETCH_MODES = [{}, {"COLDKEEP_WAL_FASTPATH": "0"}]


def test_fetch_success_missing_and_corrupt(registered: WalSite, tmp_path: Path) -> None:
    site = registered
    segment = site.wal_file(SEGMENT_1)
    site.ok("pg", "wal-push", str(segment))
    dest = tmp_path / "pg_wal" / "RECOVERYXLOG"
    dest.parent.mkdir()
    for env in FETCH_MODES:
        site.ok("pg", "wal-fetch", SEGMENT_1, str(dest), env=env)
        assert dest.read_bytes() == segment.read_bytes()
        assert [p.name for p in dest.parent.iterdir()] == ["RECOVERYXLOG"]  # no temp file left
        for missing in ("000000010000000000000002", "00000002.history"):
            proc = site.run("pg", "wal-fetch", missing, str(tmp_path / "x"), env=env)
            assert proc.returncode == 1, proc.stderr
            assert "not in the WAL archive" in one_line_error(proc)

    flip_byte(site.archived_path(SEGMENT_1))
    dest.unlink()
    for env in FETCH_MODES:
        proc = site.run("pg", "wal-fetch", SEGMENT_1, str(dest), env=env)
        assert proc.returncode == RESTORE_COMMAND_FATAL
        assert SEGMENT_1 in one_line_error(proc)
        assert not dest.exists()


BAD_FETCH_LINES = [
    (["RECOVERYXLOG", "/tmp/x"], "not a WAL file name"),
    ([SEGMENT_1], ""),  # DEST missing
    (["--bogus", SEGMENT_1, "/tmp/x"], "No such option"),
    ([SEGMENT_1, "/nonexistent-dir/RECOVERYXLOG"], "No such file or directory"),
]


def test_fetch_bad_command_lines_stop_recovery(registered: WalSite) -> None:
    registered.ok("pg", "wal-push", str(registered.wal_file(SEGMENT_1)))
    for env in FETCH_MODES:
        for args, needle in BAD_FETCH_LINES:
            proc = registered.run("pg", "wal-fetch", *args, env=env)
            assert proc.returncode == RESTORE_COMMAND_FATAL, (args, env, proc.stderr)
            assert needle in proc.stderr and "Traceback" not in proc.stderr


def test_fetch_unreachable_repository_is_fatal(
    site: WalSite, tmp_path: Path, s3_stopped_endpoint: str
) -> None:
    # before pg setup: no lineage recorded
    proc = site.run("pg", "wal-fetch", SEGMENT_1, str(tmp_path / "x"))
    assert proc.returncode == RESTORE_COMMAND_FATAL
    assert "no PostgreSQL cluster is registered" in one_line_error(proc)
    # the repository's disk is gone (unmounted): not "missing segment"
    site.write_config(url=f"file://{tmp_path}/unmounted/repo")
    proc = site.run("pg", "wal-fetch", SEGMENT_1, str(tmp_path / "x"))
    assert proc.returncode == RESTORE_COMMAND_FATAL and SEGMENT_1 in one_line_error(proc)
    # an S3 endpoint that is down
    site.extra_repo = {"endpoint_url": s3_stopped_endpoint}
    site.write_config(url="s3://coldkeep-test/wal")
    proc = site.run("pg", "wal-fetch", SEGMENT_1, str(tmp_path / "x"), env=AWS_ENV)
    assert proc.returncode == RESTORE_COMMAND_FATAL
    assert SEGMENT_1 in one_line_error(proc)
    # no config at all
    site.config.unlink()
    proc = site.run("pg", "wal-fetch", SEGMENT_1, str(tmp_path / "x"))
    assert proc.returncode == RESTORE_COMMAND_FATAL


def test_encrypted_repository_with_password_file(
    pg_cluster: TempCluster, pg_coldkeep: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Secrets come from a file named in the config: the server's environment has none."""
    site = make_site(pg_cluster, pg_coldkeep, password="correct horse battery staple")
    try:
        site.setup_archiving(restart=True, monkeypatch=monkeypatch)
        check = site.json("pg", "check", "--timeout", "60")
        dest = tmp_path / "seg"
        site.ok("pg", "wal-fetch", check["segment"], str(dest))
        assert dest.stat().st_size == 16 * 1024 * 1024
        assert b"correct horse" not in site.archived_path(check["segment"]).read_bytes()
    finally:
        remove_site(site)


# ------------------------------------------------------------------------------------------------
# prefetch


def wait_for(predicate: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_fetch_prefetches_the_next_segments(registered: WalSite, tmp_path: Path) -> None:
    site = registered
    names = generate_wal(site.cluster, segments=4, rows=2000)
    sources = {}
    for name in names:
        sources[name] = site.wal_file(name).read_bytes()
        site.ok("pg", "wal-push", str(site.wal_file(name)))
    pg_wal = tmp_path / "pg_wal"
    pg_wal.mkdir()
    dest = pg_wal / "RECOVERYXLOG"
    first, *rest = names

    result = json.loads(site.ok("--json", "pg", "wal-fetch", "--prefetch", "2", first, str(dest)).stdout)
    assert result["name"] == first and dest.read_bytes() == sources[first]
    spool_root = pg_wal / SPOOL_DIR

    def spooled() -> list[str]:
        return sorted(
            p.name[:24]
            for d in spool_root.iterdir()
            for p in d.iterdir()
            if not p.name.startswith(".") and p.is_file()
        )

    wait_for(lambda: spooled() == rest[:2])

    # served from the spool, verified: even with the repository gone
    site.repo_dir.rename(site.base / "repo-away")
    try:
        result = json.loads(
            site.ok("--json", "pg", "wal-fetch", "--prefetch", "2", rest[0], str(dest)).stdout
        )
        assert result.get("prefetched") is True and dest.read_bytes() == sources[rest[0]]
        # a damaged spool file is not served: it is dropped, and the repository (gone) is asked
        (spool_file,) = [p for d in spool_root.iterdir() for p in d.iterdir() if p.name.startswith(rest[1])]
        flip_byte(spool_file, 2 * 1024 * 1024)
        proc = site.run("pg", "wal-fetch", "--prefetch", "2", rest[1], str(dest))
        assert proc.returncode == RESTORE_COMMAND_FATAL, proc.stderr
        assert not spool_file.exists()
    finally:
        (site.base / "repo-away").rename(site.repo_dir)
    proc = site.ok("--json", "pg", "wal-fetch", "--prefetch", "2", rest[1], str(dest))
    assert dest.read_bytes() == sources[rest[1]] and "prefetched" not in json.loads(proc.stdout)
    # the end of the archive: the prefetcher stops there, PostgreSQL gets exit 1 for the next one
    wait_for(lambda: spooled() == rest[2:])
    after_last = wal.segment_name(1, wal.parse_name(names[-1]).segno + 1)
    assert site.run("pg", "wal-fetch", "--prefetch", "2", after_last, str(dest)).returncode == 1
    remove_spool(pg_wal)
    assert not spool_root.exists()


def _prefetchers(spool_root: Path) -> set[int]:
    """Pids of the processes that hold a spool's ``.prefetcher`` lock file open."""
    locks = {str(p) for p in spool_root.glob(f"*/{LOCK_NAME}")}
    pids = set()
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            if os.readlink(fd) in locks:
                pids.add(int(fd.parts[2]))
        except OSError:
            continue
    return pids


def test_one_long_lived_prefetcher_keeps_ahead_survives_a_kill_and_stops_with_recovery(
    registered: WalSite, tmp_path: Path
) -> None:
    """Issue 18: one prefetcher per spool opens the repository once and follows the requests; a
    prefetcher killed mid-fetch is replaced by the next fetch; removing the spool (what
    recovery_end_command does) stops it; every served segment is byte-exact."""
    site = registered
    names = generate_wal(site.cluster, segments=6, rows=2000)
    sources = {}
    for name in names:
        sources[name] = site.wal_file(name).read_bytes()
        site.ok("pg", "wal-push", str(site.wal_file(name)))
    pg_wal = tmp_path / "pg_wal"
    pg_wal.mkdir()
    dest = pg_wal / "RECOVERYXLOG"
    spool_root = pg_wal / SPOOL_DIR

    def spooled() -> list[str]:
        return sorted(
            p.name[:24]
            for d in spool_root.iterdir()
            for p in d.iterdir()
            if not p.name.startswith(".") and p.is_file()
        )

    def fetch(name: str) -> None:
        site.ok("pg", "wal-fetch", "--prefetch", "2", name, str(dest))
        assert dest.read_bytes() == sources[name]

    fetch(names[0])
    wait_for(lambda: spooled() == names[1:3])
    (first,) = _prefetchers(spool_root)
    fetch(names[1])  # a spool hit: the same prefetcher moves one further
    wait_for(lambda: spooled() == names[2:4])
    assert _prefetchers(spool_root) == {first}

    os.kill(first, signal.SIGKILL)  # killed (perhaps mid-fetch): leaves at most a claim and a temp file
    wait_for(lambda: not _prefetchers(spool_root))
    fetch(names[2])
    fetch(names[3])
    wait_for(lambda: spooled() == names[4:6])
    (second,) = _prefetchers(spool_root)
    assert second != first
    fetch(names[4])
    fetch(names[5])
    shutil.rmtree(spool_root)  # recovery ended: recovery_end_command removes the spool
    wait_for(lambda: not _prefetchers(spool_root) and not spool_root.exists())
