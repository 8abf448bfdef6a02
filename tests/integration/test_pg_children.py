"""PostgreSQL child processes on real PostgreSQL 15 clusters.

* ``pg backup`` while ``archive_command`` fails: the server waits for the archiver at the end of
  ``pg_basebackup`` (``BackupWaitWalArchive``); the backup must stop after
  ``[postgres].backup_wal_timeout`` with an error naming ``pg_stat_archiver``'s failing segment,
  record nothing, kill ``pg_basebackup``, end the server's wait and release its lock; once
  archiving works again the next backup succeeds.
* Secrets: ``pg_basebackup``, ``pg_receivewal`` and the servers ``pg restore --start`` starts never
  see ``COLDKEEP_PASSWORD`` or AWS keys (read from ``/proc/PID/environ`` while they run); a
  server sees only where S3 credential files are.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.pgsite import COLDKEEP, Env, archiving_env
from tests.receivesite import Receiver, pid_alive, use_spool
from tests.walsite import make_site, remove_site

from coldkeep.postgres.cluster import TempCluster

pytestmark = [pytest.mark.pg, pytest.mark.slow]

#: set in coldkeep's own environment; no PostgreSQL child may inherit them
SECRETS = {
    "COLDKEEP_PASSWORD": "coldkeep-secret-not-for-children",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-not-for-children",
    "AWS_ACCESS_KEY_ID": "AKIANOTFORCHILDREN",
}


@pytest.fixture
def pgenv(pg_cluster: TempCluster, pg_coldkeep: str) -> Iterator[Env]:
    # encrypted, with the passphrase in a file: the secrets below are then also the ones coldkeep
    # itself would use (an unencrypted repository refuses to open with a passphrase configured)
    yield from archiving_env(pg_cluster, pg_coldkeep, password=SECRETS["COLDKEEP_PASSWORD"])


def _popen(env: Env, *args: str, extra_env: dict[str, str]) -> subprocess.Popen[str]:
    full = dict(
        os.environ, COLDKEEP_CACHE_DIR=str(env.cache), COLDKEEP_EXECUTABLE=env.executable, **extra_env
    )
    return subprocess.Popen([COLDKEEP, "--config", str(env.config), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=full)  # fmt: skip


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    parents[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        children = [p for p, ppid in parents.items() if ppid == pid]
        found += children
        frontier += children
    return found


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _wait_for_descendant(proc: subprocess.Popen[str], name: str, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for pid in _descendants(proc.pid):
            if _comm(pid) == name:
                return pid
        time.sleep(0.05)
    raise AssertionError(f"no {name} child of coldkeep appeared (coldkeep exit {proc.poll()})")


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.decode(errors="replace").partition("=")[::2] for item in raw.split(b"\0") if item)


#: what a server may know of S3: where the credential files are (for its restore_command)
AWS_FILE_SETTINGS = {"AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_PROFILE", "AWS_CA_BUNDLE"}


def assert_no_secrets(pid: int, what: str, *, server: bool = False) -> dict[str, str]:
    environ = environ_of(pid)
    allowed = AWS_FILE_SETTINGS if server else set()
    leaked = sorted(k for k in environ if k.startswith(("AWS_", "COLDKEEP_")) and k not in allowed)
    assert not leaked, f"{what} (pid {pid}) inherited {leaked}"
    values = set(SECRETS.values())
    assert not [k for k, v in environ.items() if any(s in v for s in values)], f"{what} sees a secret value"
    return environ


def _set_archive_command(cluster: TempCluster, command: str) -> None:
    quoted = command.replace("'", "''")
    cluster.sql(f"ALTER SYSTEM SET archive_command = '{quoted}'")
    cluster.sql("SELECT pg_reload_conf()")


def _walsenders(cluster: TempCluster) -> int:
    return int(
        str(cluster.sql("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender'")[0][0])
    )


def _until(predicate: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_backup_stops_when_archiving_fails_and_records_nothing(pgenv: Env) -> None:
    env, c = pgenv, pgenv.cluster
    with open(env.config, "a", encoding="utf-8") as fh:
        fh.write("backup_wal_timeout = 10\n")  # [postgres] is the config's last section
    c.sql("INSERT INTO marks (label) SELECT 'row ' || g FROM generate_series(1, 5000) g")
    env.switch_and_wait()
    working = str(c.sql("SHOW archive_command")[0][0])
    _set_archive_command(c, "/bin/false")

    proc = _popen(env, "pg", "backup", extra_env=SECRETS)
    try:
        child = _wait_for_descendant(proc, "pg_basebackup")
        assert_no_secrets(child, "pg_basebackup")
        _, stderr = proc.communicate(timeout=240)  # a guard against the old endless wait only
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    archiver = c.sql("SELECT last_failed_wal, failed_count FROM pg_stat_archiver")[0]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1, stderr
    assert len(errors) == 1, stderr
    assert "not archived within 10 s" in errors[0], errors[0]
    assert f"last_failed_wal {archiver[0]}" in errors[0] and "failed_count" in errors[0], errors[0]
    assert "secret" not in stderr
    # nothing recorded, nothing left running, no lock
    assert env.ckj("pg", "backups") == []
    assert not list((env.base / "repo" / "locks").iterdir())
    _until(lambda: not pid_alive(child) or _comm(child) != "pg_basebackup", "pg_basebackup still runs")
    _until(lambda: _walsenders(c) == 0, "the server still runs the cancelled base backup")
    env.ck("repo", "check")

    _set_archive_command(c, working)
    backup = env.ckj("pg", "backup")
    assert [b["id"] for b in env.ckj("pg", "backups")] == [backup["id"]]
    env.ck("pg", "verify")


def test_restored_server_does_not_inherit_secrets(pgenv: Env) -> None:
    env, c = pgenv, pgenv.cluster
    c.sql("INSERT INTO marks (label) VALUES ('one')")
    env.ck("pg", "backup")
    env.switch_and_wait()
    target = env.base / "restored"
    credentials = str(env.base / "aws-credentials")  # where restore_command would find S3 keys
    report = env.ckj("pg", "restore", "--target-dir", str(target), "--start",
                     extra_env={**SECRETS, "AWS_SHARED_CREDENTIALS_FILE": credentials})  # fmt: skip
    restored = TempCluster(target.with_name("restored.run"), bin_dir=c.bin_dir, data_dir=target)
    try:
        postmaster = int((target / "postmaster.pid").read_text().splitlines()[0])
        environ = assert_no_secrets(postmaster, "the restored server", server=True)
        assert environ.get("PATH"), environ  # it still has what it needs to run restore_command
        assert environ.get("AWS_SHARED_CREDENTIALS_FILE") == credentials
        for pid in _descendants(postmaster):  # its own children (startup, checkpointer, ...)
            if pid_alive(pid):
                assert_no_secrets(pid, f"server child {_comm(pid)}", server=True)
        assert report["started"]
    finally:
        restored.stop()


def test_pg_receivewal_does_not_inherit_secrets(pgenv: Env) -> None:
    use_spool(pgenv)
    receiver = Receiver(pgenv, (), extra_env=SECRETS).start()
    try:
        pid = int(receiver.event("streaming")["pid"])
        assert _comm(pid) == "pg_receivewal"
        assert_no_secrets(pid, "pg_receivewal")
    finally:
        receiver.close()


def test_encrypted_restore_needs_the_password_file_not_the_environment(
    pg_cluster: TempCluster, pg_coldkeep: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The restored server's restore_command never gets COLDKEEP_PASSWORD: an encrypted repository
    without [repository].password_file is refused before anything is written."""
    site = make_site(pg_cluster, pg_coldkeep, password="correct horse battery staple")
    try:
        site.setup_archiving(restart=True, monkeypatch=monkeypatch)
        site.ok("pg", "backup")
        site.ok("pg", "check", "--timeout", "60")
        passphrase = Path(site.password_file).read_text().strip()
        site.password_file = ""
        site.write_config()  # the same repository, the passphrase only in the environment
        target = site.base / "restored"
        proc = site.run("pg", "restore", "--target-dir", str(target), "--start",
                        env={"COLDKEEP_PASSWORD": passphrase})  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert "[repository].password_file is not set" in proc.stderr
        assert passphrase not in proc.stderr
        assert not target.exists()
    finally:
        target = site.base / "restored"
        if (target / "postmaster.pid").exists():  # the old code restored and started it
            TempCluster(site.base / "restored.run", bin_dir=pg_cluster.bin_dir, data_dir=target).stop(
                "immediate"
            )
        remove_site(site)
