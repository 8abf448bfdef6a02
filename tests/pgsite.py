"""A throwaway cluster archiving into a coldkeep repository, for PostgreSQL tests (shared by
tests/integration/test_pg_pitr.py and tests/crash/test_crash_pg_backup.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coldkeep.postgres.cluster import TempCluster, chown_to

COLDKEEP = str(Path(sys.executable).parent / "coldkeep")


@dataclass
class Env:
    base: Path
    config: Path
    cluster: TempCluster
    cache: Path
    executable: str

    def ck(
        self,
        *args: str,
        expect: int | None = 0,
        timeout: float = 300,
        extra_env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, COLDKEEP_CACHE_DIR=str(self.cache), COLDKEEP_EXECUTABLE=self.executable)
        env.update(extra_env or {})
        proc = subprocess.run([COLDKEEP, "--config", str(self.config), *args], capture_output=True, text=True,
                              env=env, timeout=timeout)  # fmt: skip
        if expect is not None and proc.returncode != expect:
            raise AssertionError(
                f"coldkeep {' '.join(args)} exited {proc.returncode} (expected {expect})\n"
                f"stdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-3000:]}\nserver log: {self.cluster.log_text()[-3000:]}"
            )
        return proc

    def ckj(
        self,
        *args: str,
        expect: int | None = 0,
        timeout: float = 300,
        extra_env: dict[str, str] | None = None,
    ) -> Any:
        return json.loads(
            self.ck("--json", *args, expect=expect, timeout=timeout, extra_env=extra_env).stdout
        )

    def switch_and_wait(self) -> None:
        self.ck("pg", "check", "--timeout", "60")


def _config(base: Path, cluster: TempCluster, extra: str = "") -> str:
    return (
        f'[repository]\nurl = "file://{base}/repo"\nowner = "{cluster.os_user}"\n'
        f'[postgres]\ndsn = "{cluster.dsn}"\ndata_dir = "{cluster.data_dir}"\nbin_dir = "{cluster.bin_dir}"\n'
        f'os_user = "{cluster.os_user}"\narchive_timeout = 60\ncount_tables = ["marks"]\n'
        'check_sql = ["SELECT count(*) FROM marks"]\n' + extra
    )


def archiving_env(
    pg_cluster: TempCluster,
    pg_coldkeep: str,
    *,
    password: str | None = None,
    archive_async: bool | None = None,
) -> Iterator[Env]:
    """Repository + config in a directory the server's OS user can use, archiving switched on;
    with ``password``, an encrypted repository whose passphrase is in a file only that user reads;
    ``archive_async`` set: ``[postgres] archive_async`` (default: the config's default, true)."""
    base = Path(tempfile.mkdtemp(prefix="coldkeep-pitr-"))
    os.chmod(base, 0o755)  # the server's OS user reads the config and writes the repository
    chown_to(base, pg_cluster.os_user)
    config = base / "coldkeep.toml"
    text = _config(
        base, pg_cluster, "" if archive_async is None else f"archive_async = {str(archive_async).lower()}\n"
    )
    if password is not None:
        secret = base / "passphrase"
        secret.write_text(password + "\n")
        os.chmod(secret, 0o600)
        chown_to(secret, pg_cluster.os_user)
        text = text.replace("[postgres]\n", f'password_file = "{secret}"\n[postgres]\n', 1)
    config.write_text(text)
    os.chmod(config, 0o644)
    env = Env(base, config, pg_cluster, base / "cache", pg_coldkeep)
    env.ck("repo", "init")
    env.ck("pg", "setup", "--apply")
    pg_cluster.stop()
    pg_cluster.start()
    env.cluster.sql(
        "CREATE TABLE marks (id serial PRIMARY KEY, label text NOT NULL, at timestamptz DEFAULT clock_timestamp())"
    )
    try:
        yield env
    finally:
        for extra in base.glob("*.run"):
            pid = extra.parent / extra.name.removesuffix(".run") / "postmaster.pid"
            if pid.exists():
                TempCluster(extra, bin_dir=pg_cluster.bin_dir, data_dir=pid.parent).stop(mode="immediate")
        shutil.rmtree(base, ignore_errors=True)
