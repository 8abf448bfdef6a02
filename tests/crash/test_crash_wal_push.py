"""``kill -9`` of ``pg wal-push``: at every storage call, at random instants, and under a real
PostgreSQL archiver.  Each time the retry succeeds and the archive holds no torn segment."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.helpers import base_env, read_counts
from tests.walsite import (
    PG_USER,
    WalSite,
    generate_wal,
    make_site,
    remove_site,
    server_environment,
    wait_archived,
)

from coldkeep.postgres import spool
from coldkeep.postgres.cluster import TempCluster, chown_to

pytestmark = pytest.mark.pg


@pytest.fixture
def site(pg_cluster: TempCluster, pg_coldkeep: str) -> Iterator[WalSite]:
    s = make_site(pg_cluster, pg_coldkeep)
    s.setup_archiving(restart=False)
    yield s
    remove_site(s)


def copy_segments(site: WalSite, names: list[str], dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names:
        shutil.copy(site.wal_file(name), dest / name)
        out.append(dest / name)
    return out


def assert_archive_intact(site: WalSite, sources: list[Path], tmp: Path) -> None:
    """Every source is archived bit-exactly; every archived object verifies; `repo check` passes."""
    for source in sources:
        dest = tmp / f"fetched-{source.name}"
        site.ok("pg", "wal-fetch", source.name, str(dest))
        assert dest.read_bytes() == source.read_bytes(), source.name
        dest.unlink()
    check = site.json("repo", "check", "--read-data")
    assert check["problems"] == [], check


def test_kill_at_every_storage_call(site: WalSite, tmp_path: Path) -> None:
    segment = copy_segments(site, ["000000010000000000000001"], tmp_path / "src")[0]
    counts_file = tmp_path / "counts.json"
    site.ok(
        "pg",
        "wal-push",
        str(segment),
        env={"COLDKEEP_FAULTS": "count", "COLDKEEP_FAULTS_COUNTS": str(counts_file)},
    )
    counts = read_counts(counts_file)
    assert counts["put_if_absent"] == 1 and counts["any"] >= 3, counts
    stored = site.archived_path(segment.name)
    for n in range(1, counts["any"] + 1):
        for when in ("before", "after"):
            stored.unlink(missing_ok=True)
            killed = site.run("pg", "wal-push", str(segment), env={"COLDKEEP_FAULTS": f"kill:any:{n}:{when}"})
            assert killed.returncode == -signal.SIGKILL, (n, when, killed.stderr)
            rerun = site.run("pg", "wal-push", str(segment))
            assert rerun.returncode == 0, (n, when, rerun.stderr)
            assert stored.is_file()
    assert_archive_intact(site, [segment], tmp_path)


def test_random_sigkills(site: WalSite, tmp_path: Path) -> None:
    names = generate_wal(site.cluster, segments=4, rows=5000)
    sources = copy_segments(site, names, tmp_path / "src")
    started = time.monotonic()
    site.ok("pg", "wal-push", str(sources[0]))
    typical = time.monotonic() - started
    rng = random.Random(20261126)
    kills = 0
    for i in range(8):
        source = sources[1 + i % (len(sources) - 1)]
        proc = subprocess.Popen(
            [site.coldkeep, "--config", str(site.config), "pg", "wal-push", str(source)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=base_env(),
        )  # fmt: skip
        time.sleep(rng.uniform(0, typical * 1.2))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.communicate(timeout=60)
        rerun = site.run("pg", "wal-push", str(source))
        assert rerun.returncode == 0, (i, rerun.stderr)
    assert kills >= 2  # the seed and the measured duration make most runs die somewhere inside
    assert_archive_intact(site, sources, tmp_path)


def test_postgres_retries_a_killed_archive_command(
    site: WalSite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real archiver: the first attempt for a segment is SIGKILLed right after the object was
    written (durable, but PostgreSQL never got the acknowledgement); the archiver dies, the
    postmaster restarts it (after PostgreSQL's 10 s archiver restart interval), the retry finds the
    identical object and succeeds.  The kill *before* the write is covered by the test above."""
    markers = site.base / "attempted"
    markers.mkdir()
    chown_to(markers, PG_USER)
    wrapper = site.base / "archive-wrapper.sh"
    push = f"{site.coldkeep} --config {site.config} pg wal-push"
    wrapper.write_text(f"""#!/bin/sh
marker="{markers}/$(basename "$1")"
if [ ! -e "$marker" ]; then
  touch "$marker"
  export COLDKEEP_FAULTS="kill:put_if_absent:1:after" COLDKEEP_TESTING=1  # a test hook needs the switch
fi
exec {push} "$1"
""")
    wrapper.chmod(0o755)
    site.cluster.sql(f"ALTER SYSTEM SET archive_command = '{wrapper} %p'")
    with server_environment(monkeypatch):
        site.cluster.stop()
        site.cluster.start()
    names = generate_wal(site.cluster, segments=1, rows=5000)
    sources = copy_segments(site, names, tmp_path / "src")
    stats = wait_archived(site.cluster, names[-1], timeout=90)
    assert sorted(p.name for p in markers.iterdir()) >= names
    log = site.cluster.log_text()
    # the kills really happened under PostgreSQL (sh reports a SIGKILLed child as 137)
    assert "archive command failed with exit code 137" in log or "terminated by signal 9" in log
    assert stats["last_archived_wal"] >= names[-1]
    assert_archive_intact(site, sources, tmp_path)
    assert json.loads(site.ok("--json", "pg", "check", "--timeout", "60").stdout)["segment"]


# ------------------------------------------------------------------------------------------------
# wal-push --async: the background pusher and the foreground killed (coldkeep.postgres.spool)


def _fake_pg_wal(site: WalSite, names: list[str], dest: Path) -> list[Path]:
    """Copies of the segments in a directory laid out like pg_wal, each with a ``.ready``."""
    status = dest / "archive_status"
    status.mkdir(parents=True)
    out = copy_segments(site, names, dest)
    for name in names:
        (status / f"{name}.ready").touch()
    return out


def _wait_for(predicate: Callable[[], bool], timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def _wait_pusher_gone(root: Path, timeout: float = 30) -> None:
    assert _wait_for(lambda: spool.pusher_pid(root) is None, timeout), f"pusher of {root} still running"


@pytest.mark.parametrize("when", ["before", "after"])
def test_async_pusher_killed_around_the_write(site: WalSite, tmp_path: Path, when: str) -> None:
    """The pusher dies (fault injection: SIGKILL at its first object write, before or after it is
    durable); the foreground is killed while it waits; the retry acknowledges only once the
    object is really there."""
    segment = _fake_pg_wal(site, ["000000010000000000000001"], tmp_path / "pg_wal")[0]
    root = Path(spool.spool_root(str(segment), str(site.config)))
    stored = site.archived_path(segment.name)
    env = base_env({"COLDKEEP_FAULTS": f"kill:put_if_absent:1:{when}", "COLDKEEP_WAL_ASYNC_IDLE": "0.3"})
    proc = subprocess.Popen(
        [site.coldkeep, "--config", str(site.config), "pg", "wal-push", "--async", str(segment)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    if when == "after":
        assert _wait_for(stored.is_file), "the pusher never wrote the object"
    else:
        assert _wait_for(lambda: any(root.glob("*.req")))
        time.sleep(1.0)  # pushers start and die at their first write, again and again
    assert proc.poll() is None  # no acknowledgement without a marker
    assert not list(root.glob("*.ok"))
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    _wait_pusher_gone(root)
    assert stored.is_file() == (when == "after")
    rerun = site.run("pg", "wal-push", "--async", str(segment), env={"COLDKEEP_WAL_ASYNC_IDLE": "0.3"})
    assert rerun.returncode == 0, rerun.stderr
    _wait_pusher_gone(root)
    assert_archive_intact(site, [segment], tmp_path)


def test_async_random_sigkills_of_pusher_and_foreground(site: WalSite, tmp_path: Path) -> None:
    names = generate_wal(site.cluster, segments=6, rows=4000)
    sources = _fake_pg_wal(site, names, tmp_path / "pg_wal")
    root = Path(spool.spool_root(str(sources[0]), str(site.config)))
    env = base_env({"COLDKEEP_WAL_ASYNC_IDLE": "0.5"})
    rng = random.Random(20261127)
    kills = {"pusher": 0, "foreground": 0}
    for i, source in enumerate(sources):
        # the archiver's loop: retry the segment until its command exits 0
        for attempt in range(20):
            proc = subprocess.Popen(
                [site.coldkeep, "--config", str(site.config), "pg", "wal-push", "--async", "--workers", "2",
                 str(source)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
            )  # fmt: skip
            if attempt < 2:
                time.sleep(rng.uniform(0, 0.4))
                victim = rng.choice(["pusher", "foreground"])
                pid = spool.pusher_pid(root) if victim == "pusher" else proc.pid
                if pid is not None and (victim == "pusher" or proc.poll() is None):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                        kills[victim] += 1
            _, err = proc.communicate(timeout=120)
            if proc.returncode == 0:
                break
            assert proc.returncode == -signal.SIGKILL, (i, attempt, proc.returncode, err)
        else:
            raise AssertionError(f"{source.name} never acknowledged")
        assert site.archived_path(source.name).is_file()  # acknowledged => stored
        (root.parent.parent / "archive_status" / f"{source.name}.ready").rename(
            root.parent.parent / "archive_status" / f"{source.name}.done"
        )
    assert kills["pusher"] >= 1 and kills["foreground"] >= 1, kills
    _wait_pusher_gone(root)
    assert not list(root.glob("*.err"))
    assert_archive_intact(site, sources, tmp_path)
    # no torn object: every object in the archive is complete and verifies
    check = site.run("--json", "repo", "check", "--read-data")  # reads and verifies every object
    assert check.returncode == 0 and json.loads(check.stdout)["problems"] == [], check.stdout + check.stderr


def _async_foregrounds(pusher: int | None) -> list[int]:
    """Pids of running ``wal-push --async`` processes other than the pusher."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == pusher:
            continue
        try:
            cmdline = Path("/proc", entry, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"wal-push" in cmdline and b"--async" in cmdline:
            found.append(int(entry))
    return found


def test_real_archiver_survives_kills_of_pusher_and_foreground(
    site: WalSite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """archive_command = wal-push --async under PostgreSQL's archiver; while a backlog drains
    the pusher is SIGKILLed at random moments and once a per-segment process: PostgreSQL's
    retries archive everything, nothing torn, ``repo check --read-data`` passes."""
    command = f"{site.coldkeep} --config {site.config} pg wal-push --async --workers 2 %p"
    site.cluster.sql("ALTER SYSTEM SET archive_command = ''")
    with server_environment(monkeypatch):
        site.cluster.stop()
        site.cluster.start()
    names = generate_wal(site.cluster, segments=10, rows=4000)
    sources = copy_segments(site, names, tmp_path / "src")
    root = Path(spool.spool_root(str(site.wal_file(names[0])), str(site.config)))
    site.cluster.sql(f"ALTER SYSTEM SET archive_command = '{command}'")
    site.cluster.sql("SELECT pg_reload_conf()")
    rng = random.Random(20261128)
    kills = {"pusher": 0, "foreground": 0}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and kills["pusher"] < 3:
        time.sleep(rng.uniform(0.05, 0.4))
        pid = spool.pusher_pid(root)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                kills["pusher"] += 1
        if kills["foreground"] == 0:
            for fg in _async_foregrounds(spool.pusher_pid(root)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(fg, signal.SIGKILL)
                    kills["foreground"] += 1
                break
    assert kills["pusher"] >= 1, kills
    wait_archived(site.cluster, names[-1], timeout=120)
    status = site.cluster.data_dir / "pg_wal" / "archive_status"
    assert _wait_for(lambda: not list(status.glob("*.ready")), 60)
    _wait_pusher_gone(root)
    assert_archive_intact(site, sources, tmp_path)
    check = site.run("--json", "repo", "check", "--read-data")  # reads and verifies every object
    assert check.returncode == 0 and json.loads(check.stdout)["problems"] == [], check.stdout + check.stderr
