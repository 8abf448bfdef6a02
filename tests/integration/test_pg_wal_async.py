"""``pg wal-push --async``: a background pusher works ahead of PostgreSQL's archiver
(:mod:`coldkeep.postgres.spool`).  Real clusters; archive_command runs as the server's OS user."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.helpers import flip_byte, one_line_error
from tests.walsite import SEGMENT_1, WalSite, generate_wal, make_site, remove_site, wait_archived

from coldkeep.postgres import spool
from coldkeep.postgres.cluster import TempCluster

pytestmark = pytest.mark.pg

FAST_IDLE = {"COLDKEEP_WAL_ASYNC_IDLE": "0.3"}


@pytest.fixture
def site(pg_cluster: TempCluster, pg_coldkeep: str) -> Iterator[WalSite]:
    s = make_site(pg_cluster, pg_coldkeep)
    yield s
    remove_site(s)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def spool_of(site: WalSite, wal_dir: Path) -> Path:
    return Path(spool.spool_root(str(wal_dir / SEGMENT_1), str(site.config)))


def pusher_alive(root: Path) -> bool:
    lock = root / spool.LOCK_NAME
    if not lock.exists():
        return False
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def wait_pusher_gone(root: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while pusher_alive(root):
        assert time.monotonic() < deadline, f"the pusher of {root} did not exit"
        time.sleep(0.1)


def enable_async(site: WalSite, workers: int = 2) -> None:
    with open(site.config, "a", encoding="utf-8") as fh:
        fh.write(f"archive_async = true\narchive_async_workers = {workers}\n")


def test_async_archiving_under_the_real_archiver(
    site: WalSite, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    enable_async(site)
    shown = site.json("pg", "setup", "--coldkeep-path", site.coldkeep)
    command = {s["name"]: s for s in shown["settings"]}["archive_command"]["desired"]
    assert command.endswith(f"--config {site.config} pg wal-push --async --workers 2 %p")
    site.setup_archiving(restart=True, monkeypatch=monkeypatch)
    assert (
        site.json("pg", "setup")["settings"]
        and str(site.cluster.sql("SHOW archive_command")[0][0]) == command
    )

    # a backlog: archiving paused while WAL is written, then switched back on
    site.cluster.sql("ALTER SYSTEM SET archive_command = ''")
    site.cluster.sql("SELECT pg_reload_conf()")
    names = generate_wal(site.cluster, segments=8, rows=5000)
    status = site.cluster.data_dir / "pg_wal" / "archive_status"
    time.sleep(0.5)
    assert len(list(status.glob("*.ready"))) >= 8
    copies = tmp_path / "copies"
    copies.mkdir()
    for name in names:
        shutil.copy(site.wal_file(name), copies / name)
    quoted = command.replace("'", "''")
    site.cluster.sql(f"ALTER SYSTEM SET archive_command = '{quoted}'")
    site.cluster.sql("SELECT pg_reload_conf()")
    stats = wait_archived(site.cluster, names[-1], timeout=120)
    assert stats["failed_count"] == 0, site.cluster.log_text()[-3000:]
    deadline = time.monotonic() + 30
    while list(status.glob("*.ready")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not list(status.glob("*.ready"))

    for name in names:  # every segment archived bit-exactly
        dest = tmp_path / f"fetched-{name}"
        site.ok("pg", "wal-fetch", name, str(dest))
        assert sha(dest) == sha(copies / name)
    assert site.json("repo", "check", "--read-data")["problems"] == []
    root = spool_of(site, site.cluster.data_dir / "pg_wal")
    assert root.is_dir()
    # markers go once PostgreSQL has marked the segments .done; the pusher exits when idle
    deadline = time.monotonic() + 30
    while any(root.glob("*.ok")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not list(root.glob("*.ok")) and not list(root.glob("*.err")) and not list(root.glob("*.req"))
    wait_pusher_gone(root)
    assert "archive command failed" not in site.cluster.log_text()


def test_async_by_hand_duplicates_and_errors(site: WalSite, tmp_path: Path) -> None:
    site.setup_archiving(restart=False)
    wal_dir = tmp_path / "wal"
    wal_dir.mkdir()
    segment = wal_dir / SEGMENT_1
    shutil.copy(site.wal_file(SEGMENT_1), segment)
    root = spool_of(site, wal_dir)

    first = site.ok("pg", "wal-push", "--async", str(segment), env=FAST_IDLE)
    assert first.stderr == ""
    stored = site.archived_path(SEGMENT_1)
    assert stored.is_file()
    before = sha(stored)
    again = site.ok("pg", "wal-push", "--async", "--workers", "1", str(segment), env=FAST_IDLE)
    assert "error" not in again.stderr

    # different content under an archived name: a loud error, exit 3, never an overwrite
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = other_dir / SEGMENT_1
    shutil.copy(segment, other)
    flip_byte(other, 4 * 1024 * 1024)
    proc = site.run("pg", "wal-push", "--async", str(other), env=FAST_IDLE)
    assert proc.returncode == 3, proc.stderr
    line = one_line_error(proc)
    assert SEGMENT_1 in line and "DIFFERENT content" in line and "refusing to overwrite" in line
    assert sha(stored) == before

    # not a segment of its name, a missing file: the sync path's codes
    renamed = wal_dir / "000000010000000000000009"
    shutil.copy(segment, renamed)
    proc = site.run("pg", "wal-push", "--async", str(renamed), env=FAST_IDLE)
    assert proc.returncode == 3 and "000000010000000000000009" in one_line_error(proc)
    missing = site.run("pg", "wal-push", "--async", str(wal_dir / "000000010000000000000005"), env=FAST_IDLE)
    assert missing.returncode == 1 and "cannot read" in one_line_error(missing)
    # --json goes through cli/walfast.py, the same spool
    doc = site.json("pg", "wal-push", "--async", str(segment))
    assert doc["name"] == SEGMENT_1 and doc["async"] is True
    wait_pusher_gone(root)
    wait_pusher_gone(spool_of(site, other_dir))


def test_a_marker_acknowledges_only_the_content_it_names(site: WalSite, tmp_path: Path) -> None:
    """A forged or stale ``.ok`` (other digest, other config) is not an acknowledgement: the
    file is pushed for real (and a different one fails)."""
    site.setup_archiving(restart=False)
    wal_dir = tmp_path / "wal"
    wal_dir.mkdir()
    segment = wal_dir / SEGMENT_1
    shutil.copy(site.wal_file(SEGMENT_1), segment)
    root = spool_of(site, wal_dir)
    root.mkdir(parents=True)
    ident = spool.config_identity(str(site.config))
    size = segment.stat().st_size
    (root / f"{SEGMENT_1}.ok").write_text(spool.marker_text(size, "00" * 32, ident))
    site.ok("pg", "wal-push", "--async", str(segment), env=FAST_IDLE)
    assert site.archived_path(SEGMENT_1).is_file()  # pushed despite the forged marker

    # a marker matching the file but written for another config file
    wait_pusher_gone(root)
    flip_byte(segment, 4 * 1024 * 1024)
    size, digest = spool.file_digest(str(segment))
    (root / f"{SEGMENT_1}.ok").write_text(spool.marker_text(size, digest, "1:2:3:4"))
    proc = site.run("pg", "wal-push", "--async", str(segment), env=FAST_IDLE)
    assert proc.returncode == 3 and "DIFFERENT content" in one_line_error(proc)
    wait_pusher_gone(root)


def test_setup_keeps_the_async_command(site: WalSite, monkeypatch: pytest.MonkeyPatch) -> None:
    enable_async(site, workers=0)
    site.setup_archiving(restart=True, monkeypatch=monkeypatch)
    command = str(site.cluster.sql("SHOW archive_command")[0][0])
    assert command.endswith(" pg wal-push --async %p")
    again = site.json("pg", "setup")
    assert [s["name"] for s in again["settings"] if s["changes"]] == []


def test_pusher_pushes_ahead_of_the_archiver(site: WalSite, tmp_path: Path) -> None:
    """With several ``.ready`` files, one request makes the pusher store the others too; their
    later requests are acknowledged from the markers."""
    site.setup_archiving(restart=False)
    names = generate_wal(site.cluster, segments=4, rows=3000)
    wal_dir = tmp_path / "pg_wal"
    status = wal_dir / "archive_status"
    status.mkdir(parents=True)
    for name in names:
        shutil.copy(site.wal_file(name), wal_dir / name)
        (status / f"{name}.ready").touch()
    root = Path(spool.spool_root(str(wal_dir / names[0]), str(site.config)))
    site.ok("pg", "wal-push", "--async", str(wal_dir / names[0]), env={"COLDKEEP_WAL_ASYNC_IDLE": "3"})
    deadline = time.monotonic() + 60
    while len(list(root.glob("*.ok"))) < len(names) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert {p.name[:-3] for p in root.glob("*.ok")} == set(names)
    for name in names:
        assert site.archived_path(name).is_file()
        proc = site.ok("-v", "pg", "wal-push", "--async", str(wal_dir / name))
        assert "pushed ahead" in proc.stderr, proc.stderr
        (status / f"{name}.ready").rename(status / f"{name}.done")
    deadline = time.monotonic() + 30
    while any(root.glob("*.ok")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not list(root.glob("*.ok"))  # cleaned once .done
    wait_pusher_gone(root)


def test_an_unusable_repository_fails_fast_with_its_error(site: WalSite, tmp_path: Path) -> None:
    """The pusher cannot open the repository: the waiting foreground gets that error at once
    (not a timeout), and PostgreSQL would retry."""
    site.setup_archiving(restart=False)
    wal_dir = tmp_path / "wal"
    wal_dir.mkdir()
    segment = wal_dir / SEGMENT_1
    shutil.copy(site.wal_file(SEGMENT_1), segment)
    site.write_config(url=f"file://{tmp_path}/no-repository-here")
    started = time.monotonic()
    proc = site.run("pg", "wal-push", "--async", str(segment), env=FAST_IDLE)
    assert proc.returncode != 0 and time.monotonic() - started < 60
    line = one_line_error(proc)
    assert SEGMENT_1 in line and "no-repository-here" in line, proc.stderr
    wait_pusher_gone(spool_of(site, wal_dir))
