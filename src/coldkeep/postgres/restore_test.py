"""``pg restore-test``: the spec's weekly restore test, done on the restored copy (not production).

Restore a backup to its consistency point in a scratch directory, start a private instance (own
socket directory and port, archiving off), run ``pg_amcheck`` on every database, check each
counted table's rows lie between its counts at backup start and stop, run the configured SQL
checks, record the result and duration in the repository, and clean up.  The live server is never
touched.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coldkeep import clock
from coldkeep.config import Config
from coldkeep.errors import ColdkeepError
from coldkeep.postgres import catalog
from coldkeep.postgres.cluster import TempCluster, chown_to, find_bin_dir
from coldkeep.postgres.restore import PgRestore, Target, describe_reached
from coldkeep.repository.locks import locked
from coldkeep.repository.repository import Repository


@dataclass
class RestoreTestResult:
    backup_id: str
    ok: bool = False
    checks: list[dict[str, Any]] = field(default_factory=list)
    duration_s: float = 0.0
    files_s: float = 0.0
    replay_s: float = 0.0
    bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append({"name": name, "ok": ok, "detail": detail})


def run_restore_test(config: Config, repo: Repository, backup_ref: str = "latest",
                     scratch: Path | None = None) -> RestoreTestResult:  # fmt: skip
    """The restore test, under a shared lock (restore and replay: no prune or expire under it)."""
    with locked(repo.backend, "pg restore-test", exclusive=False):
        return _restore_test(config, repo, backup_ref, scratch)


def _restore_test(
    config: Config, repo: Repository, backup_ref: str, scratch: Path | None
) -> RestoreTestResult:
    backup = catalog.find_backup(repo, backup_ref)
    result = RestoreTestResult(backup_id=backup.id)
    started = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="coldkeep-restore-test-", dir=str(scratch) if scratch else None))
    chown_to(base, config.postgres.os_user)
    cluster: TempCluster | None = None
    try:
        restorer = PgRestore(config, repo)
        try:
            report, _ = restorer.prepare(base / "data", target=Target("immediate"), backup_ref=backup.id)
            result.files_s, result.bytes = report.files_s, report.bytes
            result.add(
                "restore files", True, f"{report.files} files, {report.bytes} bytes in {report.files_s} s"
            )
            cluster = restorer.start(report, timeout=1800, scratch=True)
            result.replay_s = report.replay_s or 0.0
            result.add(
                "recovery",
                True,
                f"consistent and promoted in {report.replay_s} s; {describe_reached(report.reached)}",
            )
        except ColdkeepError as exc:
            result.add("restore", False, exc.message)
            return _finish(repo, result, started)
        amcheck(config, cluster, result)
        _counts(config, backup.meta, cluster, result)
        check_sql(config, cluster, result)
        result.ok = all(c["ok"] for c in result.checks)
        return _finish(repo, result, started)
    finally:
        if cluster is not None:
            cluster.stop(mode="immediate")
        shutil.rmtree(base, ignore_errors=True)


def _finish(repo: Repository, result: RestoreTestResult, started: float) -> RestoreTestResult:
    result.duration_s = round(time.monotonic() - started, 3)
    result.ok = bool(result.checks) and all(c["ok"] for c in result.checks)
    catalog.record_status(
        repo,
        result.backup_id,
        restore_test_ok=result.ok,
        restore_tested_at=clock.isoformat(clock.now()),
        restore_test_duration_s=result.duration_s,
        restore_test_checks=result.checks,
    )
    return result


def check_sql(config: Config, cluster: TempCluster, result: RestoreTestResult) -> None:
    """Each ``[postgres] check_sql`` query on ``cluster``, one check each (an error fails it)."""
    for i, query in enumerate(config.postgres.check_sql):
        try:
            rows = cluster.sql(query, dbname(config))
            result.add(f"check_sql[{i}]", True, f"{len(rows)} row(s)")
        except Exception as exc:
            result.add(f"check_sql[{i}]", False, " ".join(str(exc).split())[:200])


def dbname(config: Config) -> str:
    from coldkeep.postgres.pgconn import conninfo

    return conninfo(config.postgres.dsn).get("dbname", "postgres")


def amcheck(config: Config, cluster: TempCluster, result: RestoreTestResult) -> None:
    """``pg_amcheck --all --install-missing --heapallindexed`` on ``cluster``, as one check."""
    bin_dir = find_bin_dir(config.postgres.bin_dir)
    proc = cluster.run(
        [
            str(bin_dir / "pg_amcheck"),
            "-h",
            str(cluster.socket_dir),
            "-p",
            str(cluster.port),
            "-U",
            "postgres",
            "--all",
            "--install-missing",
            "--heapallindexed",
            "--no-strict-names",
        ],
        timeout=3600,
    )
    detail = (proc.stdout + proc.stderr).strip().splitlines()
    result.add("pg_amcheck --all", proc.returncode == 0,
               "no corruption found" if proc.returncode == 0 else " / ".join(detail[-3:]))  # fmt: skip


def count_rows(config: Config, cluster: TempCluster, table: str) -> int:
    """``count(*)`` of ``table`` in the configured database of ``cluster`` (psycopg errors raise)."""
    import psycopg
    from psycopg import sql

    from coldkeep.postgres.pgconn import table_ident

    with psycopg.connect(cluster.dsn_for(dbname(config)), autocommit=True) as conn:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table_ident(table))).fetchone()
        return int(row[0]) if row else -1


def _counts(config: Config, meta: dict[str, Any], cluster: TempCluster, result: RestoreTestResult) -> None:
    start = meta.get("row_counts_start", {})
    stop = meta.get("row_counts_stop", {})
    for table in config.postgres.count_tables:
        lo, hi = start.get(table), stop.get(table)
        try:
            count = count_rows(config, cluster, table)
        except Exception as exc:
            if lo is None and hi is None:
                result.add(f"rows {table}", True, "table absent at backup time and now")
            else:
                result.add(f"rows {table}", False, " ".join(str(exc).split())[:200])
            continue
        if lo is None or hi is None:
            result.add(f"rows {table}", False, f"{count} rows, but no counts recorded at backup time")
            continue
        low, high = min(lo, hi), max(lo, hi)
        ok = low <= count <= high
        result.add(f"rows {table}", ok, f"{count} rows; backup saw {lo} at start and {hi} at stop")
