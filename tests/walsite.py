"""A WAL-archiving setup for tests: a cluster, a config and a repository PostgreSQL can use.

PostgreSQL runs ``archive_command`` as ``postgres``, so everything it touches lives in a directory
that user can reach (pytest's ``tmp_path`` is 0700 under root): the config (0644) in a 0755
directory, the repository created by ``repo init`` with ``[repository].owner = "postgres"``.
Commands run by the test itself run as the test user (root) through the venv's ``coldkeep``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from coldkeep.postgres.cluster import TempCluster, chown_to, running_as_root
from tests.fixtures.pg_exec import SCRUBBED_PATH
from tests.helpers import ME, run_coldkeep, toml_str

PG_USER = "postgres" if running_as_root() else ME
SEGMENT_1 = "000000010000000000000001"


@dataclass
class WalSite:
    base: Path
    cluster: TempCluster
    coldkeep: str  # runnable by the server's OS user
    password_file: str = ""
    extra_repo: dict[str, str] = field(default_factory=dict)

    @property
    def config(self) -> Path:
        return self.base / "coldkeep.toml"

    @property
    def repo_dir(self) -> Path:
        return self.base / "repo"

    @property
    def named(self) -> Path:
        return self.repo_dir / "named"

    def write_config(self, cluster: TempCluster | None = None, url: str | None = None) -> None:
        cluster = cluster or self.cluster
        repo = {"url": url or f"file://{self.repo_dir}", "owner": PG_USER, **self.extra_repo}
        if self.password_file:
            repo["password_file"] = self.password_file
        lines = ["[repository]", *(f"{k} = {toml_str(v)}" for k, v in repo.items()), "",
                 "[postgres]", f"dsn = {toml_str(cluster.dsn)}", f"os_user = {toml_str(PG_USER)}",
                 f"data_dir = {toml_str(str(cluster.data_dir))}", f"bin_dir = {toml_str(str(cluster.bin_dir))}",
                 "archive_timeout = 60", ""]  # fmt: skip
        self.config.write_text("\n".join(lines), encoding="utf-8")
        os.chmod(self.config, 0o644)

    def run(
        self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        return run_coldkeep(self.config, *args, env={"COLDKEEP_CACHE_DIR": str(self.base / "cache"), **(env or {})},
                            timeout=timeout)  # fmt: skip

    def ok(self, *args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        proc = self.run(*args, env=env)
        assert proc.returncode == 0, f"coldkeep {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}"
        return proc

    def json(self, *args: str) -> Any:
        import json

        return json.loads(self.ok("--json", *args).stdout)

    def setup_archiving(self, *, restart: bool, monkeypatch: pytest.MonkeyPatch | None = None) -> Any:
        """``pg setup --apply`` with the postgres-runnable coldkeep; optionally restart the server
        with an environment like a system service's (no virtualenv, no coldkeep variables)."""
        result = self.json("pg", "setup", "--apply", "--coldkeep-path", self.coldkeep)
        if restart:
            assert monkeypatch is not None
            with server_environment(monkeypatch):
                self.cluster.stop()
                self.cluster.start()
        return result

    def wal_file(self, name: str, cluster: TempCluster | None = None) -> Path:
        return (cluster or self.cluster).data_dir / "pg_wal" / name

    def archived_path(self, name: str, prefix: str = "wal") -> Path:
        return self.named / prefix / name[:8] / name


@contextmanager
def server_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """While starting a server: the environment a service manager would give it."""
    with monkeypatch.context() as m:
        for key in list(os.environ):
            if key.startswith(("COLDKEEP_", "VIRTUAL_ENV", "PYTHON", "AWS_")):
                m.delenv(key)
        m.setenv("PATH", SCRUBBED_PATH)
        yield


def make_site(cluster: TempCluster, coldkeep: str, *, init: bool = True, password: str = "") -> WalSite:
    base = Path(tempfile.mkdtemp(prefix="coldkeep-walsite-"))
    os.chmod(base, 0o755)
    site = WalSite(base, cluster, coldkeep)
    if password:
        secret = base / "secrets"
        secret.mkdir(mode=0o700)
        chown_to(secret, PG_USER)
        pw = secret / "repo-password"
        pw.write_text(password + "\n")
        os.chmod(pw, 0o600)
        chown_to(pw, PG_USER)
        site.password_file = str(pw)
    site.write_config()
    if init:
        site.ok("repo", "init")
    return site


def remove_site(site: WalSite) -> None:
    shutil.rmtree(site.base, ignore_errors=True)


def generate_wal(cluster: TempCluster, segments: int = 3, rows: int = 20000) -> list[str]:
    """Write ``rows`` rows and switch segments ``segments`` times; the switched segments' names."""
    cluster.sql("CREATE TABLE IF NOT EXISTS walgen (id bigserial PRIMARY KEY, v text)")
    names = []
    for _ in range(segments):
        cluster.sql(
            f"INSERT INTO walgen (v) SELECT md5(g::text) || md5((g * 7)::text) FROM generate_series(1, {rows}) g"
        )
        lsn = cluster.sql("SELECT pg_switch_wal()")[0][0]
        names.append(str(cluster.sql(f"SELECT pg_walfile_name('{lsn}')")[0][0]))
    return names


def wait_archived(cluster: TempCluster, name: str, timeout: float = 60) -> dict[str, Any]:
    """Until ``pg_stat_archiver.last_archived_wal`` reaches ``name``; returns the row."""
    deadline = time.monotonic() + timeout
    row: dict[str, Any] = {}
    while time.monotonic() < deadline:
        values = cluster.sql(
            "SELECT archived_count, last_archived_wal, failed_count, last_failed_wal FROM pg_stat_archiver"
        )[0]
        row = dict(
            zip(
                ("archived_count", "last_archived_wal", "failed_count", "last_failed_wal"),
                values,
                strict=True,
            )
        )
        if row["last_archived_wal"] and str(row["last_archived_wal"]) >= name:
            return row
        time.sleep(0.2)
    raise AssertionError(f"{name} not archived within {timeout} s: {row}\n{cluster.log_text()[-3000:]}")


def file_owner(path: Path) -> str:
    import pwd

    return pwd.getpwuid(path.stat().st_uid).pw_name
