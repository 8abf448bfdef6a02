"""The database drill: ``coldkeep drill --scenario database [--from-copy NAME] [--no-live]``.

The database drill does what a replacement machine would do after losing the database server,
never touching the live server's files or its archive:

1. **Mark** (when the live server answers): count the rows of ``[postgres] count_tables``, create a
   restore point ``coldkeep-drill-<time>``, switch WAL, wait until the segment holding the restore
   point is in the repository and every transaction running at the restore point has ended, and
   count again.  The counts before and after bracket what the restored copy must hold at the
   restore point under insert load.
   Without a live server (the total-loss case, ``--from-copy``) the drill recovers everything the
   archive holds and checks the counts against the backup's own.
2. **Files**: restore the newest base backup into a scratch directory (the same restore path as
   ``pg restore``: verified chunks, prefetched WAL).
3. **Replay**: start it on a private socket and port, archiving off, recovering to the restore point
   (or to the end of the archive), and wait for promotion.
4. **Checks**: ``pg_amcheck --all --heapallindexed``, the row counts, ``[postgres] check_sql``.

Each step is timed; the result holds the achieved RPO (the live server's clock at the mark minus
the last transaction the copy recovered, from the server's own log), the throughput of the files
step in MB/s next to the 280 MB/s that 1 TB in one hour needs, and a projection of the RTO at
``[postgres] database_size`` (default: the live database's size at the mark) from the measured
throughput.  ``--from-copy NAME`` runs it against the repository copy ``NAME`` alone: the restored
server's ``restore_command`` reads the copy (through a drill config file naming it).

"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from coldkeep import clock
from coldkeep.config import Config, parse_size
from coldkeep.errors import ColdkeepError, PostgresError, PostgresUnreachable, UsageError
from coldkeep.ops.drill_common import DrillResult, copy_repository, make_scratch, project
from coldkeep.postgres import catalog
from coldkeep.postgres.cluster import TempCluster, chown_to, run, running_as_root
from coldkeep.postgres.restore import PgRestore, Target, describe_reached
from coldkeep.postgres.restore_test import RestoreTestResult, amcheck, check_sql, count_rows
from coldkeep.repository.repository import Repository

#: seconds the mark waits for transactions in progress at the restore point to end before its
#: upper count (a transaction running longer most likely commits after it)
INFLIGHT_WAIT_S = 30.0


@dataclass
class _Mark:
    restore_point: str
    at: datetime
    counts_before: dict[str, int]
    counts_after: dict[str, int]
    database_bytes: int


def drill_database(
    config: Config,
    repo: Repository,
    result: DrillResult,
    copy_name: str | None,
    scratch: Path | None,
    live: bool,
) -> None:
    """The database scenario (see the module doc) into ``result``; skipped when the repository
    holds no base backup and ``[postgres]`` is not configured (nothing to protect)."""
    if not catalog.list_backups(repo) and not config.postgres.in_use:
        result.skip("no base backup in the repository and no [postgres] section")
        return
    base = make_scratch(config, scratch)
    chown_to(base, config.postgres.os_user)
    cluster: TempCluster | None = None
    try:
        _check_reachable(base, config.postgres.os_user)
        drill_config = _config_for(config, copy_name, base) if copy_name else config
        mark = None
        if live:
            t = time.monotonic()
            try:
                mark = _mark(config, repo)
                result.add(
                    "mark",
                    True,
                    f"restore point {mark.restore_point} archived; rows "
                    + (", ".join(f"{table} {n}" for table, n in mark.counts_before.items()) or "-"),
                )
            except PostgresUnreachable as exc:  # the disaster itself: no live server to mark
                result.add(
                    "mark", True, f"live server not used ({exc.message}); recovering the whole archive"
                )
            except ColdkeepError as exc:  # it answered, but its restore point never reached the archive
                result.add("mark", False, f"{exc.message}; recovering the whole archive instead")
            result.steps["mark"] = round(time.monotonic() - t, 3)
        try:
            backup = catalog.find_backup(repo, "latest")
        except ColdkeepError as exc:  # [postgres] is configured: a database without a backup
            result.add("base backup", False, f"{exc.message} in the {result.source}")
            return
        result.backup_id = backup.id
        target = Target("name", mark.restore_point) if mark else Target("latest")
        restorer = PgRestore(drill_config, repo)
        try:
            report, _ = restorer.prepare(base / "data", target=target, backup_ref=backup.id)
            result.steps["files"] = report.files_s
            result.bytes = report.bytes
            result.add(
                "restore files", True, f"{report.files} files, {report.bytes} bytes in {report.files_s} s"
            )
            cluster = restorer.start(report, timeout=3600, scratch=True)
            result.steps["replay"] = report.replay_s or 0.0
            result.add(
                "recovery", True, f"promoted in {report.replay_s} s; {describe_reached(report.reached)}"
            )
        except ColdkeepError as exc:
            result.add("restore", False, exc.message + _keep_log(base))
            return
        t = time.monotonic()
        check = RestoreTestResult(backup_id=backup.id)
        amcheck(drill_config, cluster, check)
        _counts(drill_config, cluster, backup.meta, mark, check)
        check_sql(config, cluster, check)
        result.checks += check.checks
        result.steps["checks"] = round(time.monotonic() - t, 3)
        _rpo(result, cluster, mark)
        size = parse_size(config.postgres.database_size) if config.postgres.database_size else None
        fixed = result.steps.get("replay", 0.0) + result.steps.get("checks", 0.0)
        project(result, result.steps.get("files") or 0.0,
                size if size else (mark.database_bytes if mark else result.bytes), fixed, "database_bytes")  # fmt: skip
    finally:
        if cluster is not None:
            cluster.stop(mode="immediate")
        shutil.rmtree(base, ignore_errors=True)


def _check_reachable(base: Path, os_user: str) -> None:
    """:class:`UsageError` unless ``os_user`` (who runs the scratch server) can enter ``base``:
    a scratch directory below one only root may enter failed only after the whole database was
    restored, as a "restore" check failing with pg_ctl's "Permission denied"."""
    if not running_as_root():
        return  # the scratch server runs as this user, who made the directory
    proc = run(["test", "-x", str(base)], os_user=os_user, timeout=30)
    if proc.returncode != 0:
        raise UsageError(
            f"the scratch directory {base.parent} cannot be entered by {os_user}, who runs the scratch server",
            hint="--scratch names a directory the [postgres] os_user can enter (every parent too)",
        )


def _keep_log(base: Path) -> str:
    """Keep the scratch server's log beside the scratch directory (which is removed) and say
    where: the failure's hint named a file inside it."""
    log_file = base / "data.run" / "server.log"
    if not log_file.is_file():
        return ""
    kept = base.with_name(base.name + ".server.log")
    try:
        shutil.copyfile(log_file, kept)
    except OSError:
        return ""
    return f"; the scratch server's log is kept at {kept}"


def _config_for(config: Config, copy_name: str, base: Path) -> Config:
    """``config`` reading the copy ``copy_name`` as its repository, with a config file of its own
    (the restored server's ``restore_command`` names it) that the server's OS user can read."""
    repository = copy_repository(config, copy_name)
    path = base / "drill.toml"
    lines = ["[repository]"]
    for key in ("url", "endpoint_url", "region", "password_file", "owner"):
        value = str(getattr(repository, key))
        lines.append(f"{key} = {_toml_string(value)}")
    lines += [f"connect_timeout = {repository.connect_timeout}", f"read_timeout = {repository.read_timeout}"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.chmod(path, 0o644)
    chown_to(path, config.postgres.os_user)
    drilled = config.model_copy(update={"repository": repository})
    drilled.source = str(path)
    return drilled


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _mark(config: Config, repo: Repository) -> _Mark:
    """Counts, a restore point, counts again; then wait until the restore point is archived.
    :class:`PostgresUnreachable` when there is no live server; :class:`PostgresError` when it
    answered but could not be marked (a server in recovery) or the restore point was not
    archived in time (``archive_command`` failing)."""
    import psycopg

    from coldkeep.postgres import pgconn

    name = "coldkeep-drill-" + clock.now().strftime("%Y%m%dT%H%M%S%f")
    with pgconn.connect(config.postgres) as conn:
        try:
            return _marked(config, repo, conn, name)
        except psycopg.Error as exc:  # a server in recovery cannot make a restore point
            raise PostgresError(f"cannot mark the live server: {' '.join(str(exc).split())[:200]}") from None


def _marked(config: Config, repo: Repository, conn: Any, name: str) -> _Mark:
    from psycopg import sql

    from coldkeep.postgres import archive, wal
    from coldkeep.postgres.pgconn import table_ident

    def counts() -> dict[str, int]:
        out: dict[str, int] = {}
        for table in config.postgres.count_tables:
            try:
                row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table_ident(table))).fetchone()
            except Exception:
                continue  # absent here: absent in the copy too (checked there)
            out[table] = int(row[0]) if row else 0
        return out

    before = counts()
    row = conn.execute("SELECT pg_create_restore_point(%s), now(), pg_database_size(current_database())",
                       (name,)).fetchone()  # fmt: skip
    assert row is not None
    lsn, at, size = str(row[0]), row[1], int(row[2])
    conn.execute("SELECT txid_current()")  # a switch needs WAL after the restore point
    conn.execute("SELECT pg_switch_wal()")
    segment = str(conn.execute("SELECT pg_walfile_name(%s::pg_lsn)", (lsn,)).fetchone()[0])
    lineage = archive.find_lineage(repo)
    key = wal.archive_key(segment, str(lineage["prefix"]))
    deadline = time.monotonic() + max(60.0, 2.0 * config.postgres.archive_timeout)
    while not any(n == key for n, _ in repo.list_named(key)):
        if time.monotonic() > deadline:
            raise PostgresError(f"the restore point's segment {segment} was not archived in time")
        time.sleep(0.2)
    # the upper bound last: once the restore point is archived and the transactions in flight at
    # it have ended (margin for commits whose WAL preceded it but which were not yet visible)
    _wait_for_inflight(conn)
    after = counts()
    return _Mark(name, at, before, after, size)


def _wait_for_inflight(conn: Any) -> None:
    """Wait (at most :data:`INFLIGHT_WAIT_S`) for the transactions in progress just after the
    restore point to end.  A commit is written to WAL before the transaction becomes visible
    (after its flush, or a synchronous standby's answer): one written before the restore point
    but not yet visible is in the recovered copy, yet was missing from a count made at once, and
    the copy held one row more than the live server's upper count (a failed drill under load)."""
    running = "SELECT backend_xid::text FROM pg_stat_activity WHERE backend_xid IS NOT NULL"
    inflight = [r[0] for r in conn.execute(running + " AND pid <> pg_backend_pid()").fetchall()]
    deadline = time.monotonic() + INFLIGHT_WAIT_S
    while inflight and time.monotonic() < deadline:
        time.sleep(0.05)
        # (not txid_status, nor a snapshot's xip: the commit log says "committed", and the newest
        # transaction is above every snapshot's xmax, while it is still invisible)
        inflight = [
            r[0] for r in conn.execute(running + " AND backend_xid::text = ANY(%s)", (inflight,)).fetchall()
        ]


def _counts(
    config: Config, cluster: TempCluster, meta: dict[str, Any], mark: _Mark | None, check: RestoreTestResult
) -> None:
    for table in config.postgres.count_tables:
        try:
            count = count_rows(config, cluster, table)
        except Exception as exc:
            check.add(f"rows {table}", False, " ".join(str(exc).split())[:200])
            continue
        if mark is not None and table in mark.counts_before:
            lo, hi = sorted((mark.counts_before[table], mark.counts_after[table]))
            check.add(f"rows {table}", lo <= count <= hi,
                      f"{count} rows; the live server had {lo}..{hi} at the restore point")  # fmt: skip
            continue
        # no live server to compare with at the recovery point: rows deleted after the backup
        # (an archive purge) make any bound wrong, so the count is reported, not judged
        start = meta.get("row_counts_start", {}).get(table)
        stop = meta.get("row_counts_stop", {}).get(table, start)
        seen = (
            f"the backup saw {start} at start and {stop} at stop"
            if start is not None
            else "not counted by the backup"
        )
        check.add(f"rows {table}", True, f"{count} rows ({seen}; no live server to compare with)")


_LAST_TX = re.compile(r"last completed transaction was at log time (\S+ \S+)")


def _rpo(result: DrillResult, cluster: TempCluster, mark: _Mark | None) -> None:
    """The last transaction the copy recovered (PostgreSQL logs it at the end of recovery), and
    the RPO: how much before the mark (the moment the drill declared the disaster) it is."""
    found = _LAST_TX.findall(cluster.log_text())
    if not found:
        return
    text = found[-1].replace(" ", "T", 1)
    if re.search(r"[+-]\d\d$", text):  # PostgreSQL writes "+00"
        text += ":00"
    try:
        recovered = datetime.fromisoformat(text)
    except ValueError:
        return
    if recovered.tzinfo is None:
        return
    result.recovered_until = recovered.isoformat()
    if mark is not None:
        result.marked_at = mark.at.isoformat()
        result.restore_point = mark.restore_point
        result.rpo_s = round(max(0.0, (mark.at - recovered).total_seconds()), 3)
