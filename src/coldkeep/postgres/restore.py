"""``pg restore``: a base backup plus archived WAL to a running server, to any recovery target.

Recovery is PostgreSQL's own (PostgreSQL 12+): ``recovery.signal`` plus ``restore_command`` (our
``pg wal-fetch``, which exits 1 only for "not archived" and 126 for anything else, so a damaged
or unreachable archive stops recovery instead of promoting early), ``recovery_target_*`` and
``recovery_target_action = 'promote'`` in ``postgresql.auto.conf``, replacing earlier lines rather
than appending to them.  A restored copy does not archive (``archive_mode = off``) unless asked,
so it never writes into the production archive.  An existing directory is moved aside, never
deleted.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from coldkeep import clock
from coldkeep.config import Config, parse_size
from coldkeep.durable import fsync_file
from coldkeep.errors import ColdkeepError, PostgresError, UsageError
from coldkeep.postgres import catalog, wal
from coldkeep.postgres.cluster import TempCluster, chown_to, find_bin_dir, free_port, os_owner
from coldkeep.processes import pid_alive
from coldkeep.repository.locks import locked
from coldkeep.repository.repository import Repository
from coldkeep.repository.restore import Restorer
from coldkeep.repository.snapshot import Snapshot

#: worker threads of ``pg restore`` (0: twice the CPUs, at least 4); ``COLDKEEP_RESTORE_THREADS``
RESTORE_THREADS = int(os.environ.get("COLDKEEP_RESTORE_THREADS", "0") or 0)
TARGET_KINDS = ("time", "xid", "lsn", "name", "immediate", "latest")
_MANAGED = re.compile(
    r"^\s*(restore_command|recovery_end_command|recovery_target\w*|archive_mode|primary_conninfo|primary_slot_name)\s*=",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Target:
    kind: str
    value: str = ""

    def settings(self) -> dict[str, str]:
        if self.kind == "latest":
            return {}
        if self.kind == "immediate":
            return {"recovery_target": "immediate"}
        return {f"recovery_target_{self.kind}": self.value}

    def describe(self) -> str:
        return self.kind if not self.value else f"{self.kind} {self.value}"


def make_target(
    *, time_: str | None, xid: str | None, lsn: str | None, name: str | None, immediate: bool
) -> Target:
    given = [
        (k, v) for k, v in (("time", time_), ("xid", xid), ("lsn", lsn), ("name", name)) if v is not None
    ]
    if immediate:
        given.append(("immediate", ""))
    if len(given) > 1:
        raise UsageError("give at most one recovery target (--time, --xid, --lsn, --name, --immediate)")
    if not given:
        return Target("latest")
    kind, value = given[0]
    if kind == "time":
        ts = clock.parse_timestamp(value, require_offset=True)
        return Target("time", ts.isoformat())
    if kind == "xid" and not value.isdigit():
        raise UsageError(f"--xid must be a transaction id number, got {value!r}")
    if kind == "lsn":
        wal.parse_lsn(value)
    return Target(kind, value)


@dataclass
class RestoreReport:
    backup_id: str
    target: str
    data_dir: str
    moved_aside: str | None = None
    files: int = 0
    bytes: int = 0
    files_s: float = 0.0
    wal_staged: int = 0
    started: bool = False
    replay_s: float | None = None
    wal_segments_replayed: int | None = None
    reached: dict[str, Any] = field(default_factory=dict)
    port: int | None = None
    socket_dir: str | None = None
    projection: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def restore_command(config: Config, lineage: str, data_dir: Path | None = None) -> str:
    """``wal-fetch`` with ``--prefetch [postgres].restore_prefetch`` (8 by default: the next
    segments are fetched, decompressed and verified into a spool while the server replays),
    behind the shell fast path that serves the segment the prefetcher made ready with one ``mv``
    (:func:`~coldkeep.postgres.prefetch.ready_fast_path`; needs the restored ``data_dir``)."""
    from coldkeep.postgres import archiving, prefetch

    if not config.source:
        raise UsageError("restore needs a config file (PostgreSQL runs wal-fetch with --config)")
    config_path = os.path.abspath(config.source)
    fast = ""
    if config.postgres.restore_prefetch and data_dir is not None:
        fast = prefetch.ready_fast_path(data_dir, config_path, lineage)
    return archiving.restore_command(
        archiving.coldkeep_executable(),
        config_path,
        lineage,
        prefetch=config.postgres.restore_prefetch,
        fast_path=fast,
    )


#: how many of the backup's own WAL segments ``pg restore`` stages for the fast path (at most)
STAGE_SEGMENTS = 4


def stage_backup_wal(repo: Repository, config: Config, backup: Snapshot, data_dir: Path) -> int:
    """Stage the first WAL segments of ``backup`` (from the one holding its start LSN; at most
    :data:`STAGE_SEGMENTS`) ready for the ``restore_command``'s shell fast path
    (:meth:`~coldkeep.postgres.prefetch.Spool.stage_ready`): recovery's first requests are
    exactly these, and without them each is an interpreter start plus a repository open on the
    startup process's critical path.  Each is read and verified as ``wal-fetch`` would (content
    BLAKE3, size, the header's segment and the lineage's system identifier), checked against the
    restored ``global/pg_control``'s system identifier, and owned by the server's OS user.  Best
    effort: a segment that is not archived (streamed only), damaged or unreadable is left to
    ``wal-fetch``, which reports it as it always did.  Returns how many were staged."""
    from coldkeep import testhooks
    from coldkeep.postgres import prefetch, walchain

    if not config.postgres.restore_prefetch or not config.source:
        return 0
    lineage = str(backup.meta["wal_lineage"])
    try:
        names = walchain.segments_for_backup(int(backup.meta["timeline"]), str(backup.meta["start_lsn"]),
                                             str(backup.meta["stop_lsn"]), int(backup.meta["wal_segment_size"]))  # fmt: skip
    except (KeyError, ValueError, ColdkeepError):
        return 0
    spool = prefetch.Spool.for_dest(
        data_dir / "pg_wal" / "RECOVERYXLOG", os.path.abspath(config.source), lineage
    )
    if not spool.system_identifier:
        return 0
    owner = os_owner(config.postgres.os_user)
    os.makedirs(spool.root, mode=0o700, exist_ok=True)
    staged = 0
    for name in names[:STAGE_SEGMENTS]:
        temp = spool.path(f".{name}.{os.getpid()}.staged.tmp")
        try:
            content = spool.stream_in(repo, name, lineage, temp, owner)
        except (ColdkeepError, OSError):
            content = None
        testhooks.kill_point(prefetch.KILL_ENV, "stage-streamed")
        # not archived (streamed only), damaged or another cluster's: wal-fetch fetches (or reports) it
        if content is None or not spool.stage_ready(name, temp, content, owner):  # (removes temp)
            Path(temp).unlink(missing_ok=True)
            break
        testhooks.kill_point(prefetch.KILL_ENV, "stage-ready")
        staged += 1
    if owner is not None:
        for path in (data_dir / "pg_wal" / prefetch.SPOOL_DIR, Path(spool.root)):
            if path.exists():
                os.chown(path, *owner)
    return staged


#: ``recovery_end_command``: once recovery ends, the segments still prefetched are not needed
#: (PostgreSQL runs it in the data directory).  The spool is renamed first: a prefetcher still
#: writing into it (recovery to `immediate` ends while it fetches ahead) then finds its path gone
#: and stops, where a plain ``rm -rf`` raced with its next file and left the directory behind
SPOOL_CLEANUP = (
    "rm -rf -- pg_wal/.coldkeep-prefetch-ended; mv -- pg_wal/.coldkeep-prefetch pg_wal/.coldkeep-prefetch-ended "
    "2>/dev/null; rm -rf -- pg_wal/.coldkeep-prefetch-ended"
)


def check_passphrase_source(config: Config, repo: Repository) -> None:
    """Refuse, before anything is written, an encrypted repository without
    ``[repository].password_file``: the restored server runs ``wal-fetch`` without
    ``COLDKEEP_PASSWORD`` (no child process gets it), so recovery could not read a segment."""
    if repo.config.encrypted and not config.repository.password_file:
        raise UsageError(
            "the repository is encrypted and [repository].password_file is not set: the restored server's "
            "restore_command (coldkeep pg wal-fetch) cannot read the passphrase (COLDKEEP_PASSWORD is never "
            "passed to a server)",
            hint="put the passphrase in a file the PostgreSQL OS user can read and name it in [repository].password_file",
        )


def choose_backup(backups: list[Snapshot], target: Target, ref: str | None) -> Snapshot:
    if not backups:
        raise PostgresError("there are no base backups to restore", hint="take one with `coldkeep pg backup`")
    if ref:
        matches = [b for b in backups if b.id.startswith(ref)]
        if len(matches) != 1:
            raise UsageError(
                f"--backup {ref!r} matches {len(matches)} backups", hint="see `coldkeep pg backups`"
            )
        return matches[0]
    if target.kind == "time":
        when = clock.parse_timestamp(target.value)
        fitting = [b for b in backups if catalog.stop_time(b) <= when]
        if not fitting:
            raise UsageError(
                f"no backup finished before {target.value} (oldest stops {backups[0].meta['stop_time']})",
                hint="choose a later time",
            )
        return fitting[-1]
    if target.kind == "lsn":
        lsn = wal.parse_lsn(target.value)
        fitting = [b for b in backups if catalog.stop_lsn(b) <= lsn]
        if not fitting:
            raise UsageError(f"no backup stops at or before LSN {target.value}", hint="choose a later LSN")
        return fitting[-1]
    return backups[-1]


def check_reachable(repo: Repository, backup: Snapshot, target: Target) -> None:
    """Refuse targets that cannot be reached, before anything is written."""
    from coldkeep.postgres import walchain as archive

    if target.kind == "time":
        when = clock.parse_timestamp(target.value)
        if when < catalog.stop_time(backup):
            raise UsageError(
                f"target time {target.value} is before backup {backup.short_id} finished ({backup.meta['stop_time']})",
                hint="choose a later time or an older --backup",
            )
        newest = archive.newest_segment_time(repo, str(backup.meta["wal_lineage"]))
        streamed = _streamed_reach(repo, backup)  # `pg receive-wal` reaches further than the archiver
        if streamed is not None and (newest is None or streamed[1] > newest):
            newest = streamed[1]
        if newest is not None and when > newest:
            raise UsageError(
                f"target time {target.value} is after the newest archived WAL ({clock.isoformat(newest)})",
                hint="use --time with an earlier time, or omit the target to recover to the end of the archive",
            )
    if target.kind == "lsn":
        lsn = wal.parse_lsn(target.value)
        if lsn < catalog.stop_lsn(backup):
            raise UsageError(f"target LSN {target.value} is before backup {backup.short_id}'s stop LSN "
                             f"{backup.meta['stop_lsn']}")  # fmt: skip
        end = archive.archive_end_lsn(
            repo, str(backup.meta["wal_lineage"]), int(backup.meta["wal_segment_size"])
        )
        streamed = _streamed_reach(repo, backup)
        if streamed is not None and (end is None or streamed[0] > end):
            end = streamed[0]
        if end is not None and lsn > end:
            raise UsageError(
                f"target LSN {target.value} is beyond the newest archived WAL ({wal.format_lsn(end)})"
            )


def _streamed_reach(repo: Repository, backup: Snapshot) -> tuple[int, datetime] | None:
    """End LSN and store time of the newest state streamed by `pg receive-wal`, if any."""
    from coldkeep.postgres import walstream

    reach = walstream.newest_reach(
        repo, str(backup.meta["wal_lineage"]), int(backup.meta["wal_segment_size"])
    )
    return None if reach is None else (reach[0], datetime.fromtimestamp(reach[1], UTC))


def move_aside(path: Path) -> str | None:
    """Make room for a restore at ``path``: nothing to do when it is missing or an empty
    directory; a PostgreSQL data directory (it has ``PG_VERSION``) whose server is not running is
    renamed ``PATH.coldkeep-old-<time>`` (returned).  Anything else is refused (:class:`UsageError`):
    a directory one level above a data directory (holding a running cluster, say), a home
    directory or a file is never moved away by a typo in ``--target-dir``."""
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
        return None
    if path.is_symlink() or not path.is_dir() or not (path / "PG_VERSION").is_file():
        raise UsageError(
            f"{path} is not a PostgreSQL data directory (no PG_VERSION) and not empty; not moving it aside",
            hint="name a new or empty directory, or the data directory itself (it is renamed .coldkeep-old-TIME)",
        )
    pid_file = path / "postmaster.pid"
    if pid_file.exists():
        try:
            pid = int(pid_file.read_text().splitlines()[0])
        except (ValueError, IndexError, OSError):
            pid = 0
        if pid_alive(pid):  # the server's OS user's process answers EPERM to another user: alive
            raise UsageError(f"a PostgreSQL server is running in {path} (pid {pid})", hint="stop it first")
    aside = path.with_name(f"{path.name}.coldkeep-old-{clock.now().strftime('%Y%m%dT%H%M%S')}")
    os.rename(path, aside)
    return str(aside)


def write_recovery_settings(data_dir: Path, settings: dict[str, str], os_user: str) -> None:
    auto = data_dir / "postgresql.auto.conf"
    lines = auto.read_text().splitlines() if auto.exists() else []
    kept = [line for line in lines if not _MANAGED.match(line)]
    kept.append("# --- written by coldkeep pg restore ---")
    for key, value in settings.items():
        kept.append(f"{key} = '{value.replace(chr(39), chr(39) * 2)}'")
    auto.write_text("\n".join(kept) + "\n")
    (data_dir / "recovery.signal").write_text("")
    for p in (auto, data_dir / "recovery.signal"):
        chown_to(p, os_user)
        os.chmod(p, 0o600)


def _chown_tree(root: Path, os_user: str) -> None:
    """Give everything under ``root`` to ``os_user``, touching only what is owned by someone else:
    a chown dirties the inode even when nothing changes, and PostgreSQL's start-up sync would then
    commit the file system journal once per file of the freshly fsynced data directory."""
    want = os_owner(os_user)
    if want is None:
        return
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if (st.st_uid, st.st_gid) != want:
                os.chown(path, *want, follow_symlinks=False)
                if name != "." and not stat.S_ISLNK(st.st_mode):
                    fsync_file(path)


class PgRestore:
    def __init__(self, config: Config, repo: Repository) -> None:
        self.config = config
        self.pg = config.postgres
        self.repo = repo

    def prepare(
        self,
        data_dir: Path,
        *,
        target: Target,
        backup_ref: str | None = None,
        timeline: str = "latest",
        exclusive: bool = False,
        archive_mode: str = "off",
    ) -> tuple[RestoreReport, Snapshot]:
        """Restore the files and write the recovery settings, under a shared lock (a caller that
        also replays with :meth:`start` holds one around both, as ``pg restore --start`` does)."""
        with locked(self.repo.backend, "pg restore", exclusive=False):
            return self._prepare(data_dir, target, backup_ref, timeline, exclusive, archive_mode)

    def _prepare(
        self,
        data_dir: Path,
        target: Target,
        backup_ref: str | None,
        timeline: str,
        exclusive: bool,
        archive_mode: str,
    ) -> tuple[RestoreReport, Snapshot]:
        backup = choose_backup(catalog.list_backups(self.repo), target, backup_ref)
        check_reachable(self.repo, backup, target)
        check_passphrase_source(self.config, self.repo)
        data_dir = Path(os.path.abspath(data_dir))
        report = RestoreReport(backup_id=backup.id, target=target.describe(), data_dir=str(data_dir))
        report.moved_aside = move_aside(data_dir)
        data_dir.mkdir(parents=True, mode=0o700)
        started = time.monotonic()
        # durable: every file fsynced by its worker before it takes its name, then the directories,
        # so PostgreSQL's start-up sync (SyncDataDirectory) finds nothing dirty; threads beyond the
        # CPU count keep fetching and decompressing while others wait for the disk
        # verify_files=False: every chunk is checked against its BLAKE3 id (one hash per byte, as
        # pgBackRest's one SHA-1); `pg verify` checks whole files against the backup manifest
        restorer = Restorer(
            self.repo,
            threads=RESTORE_THREADS or max(4, 2 * (os.cpu_count() or 2)),
            durable=True,
            verify_files=False,
        )
        result = restorer.run(backup, data_dir, includes=())
        config_dir = data_dir / "_config"
        if config_dir.exists():  # Debian keeps configuration outside the data directory
            shutil.move(str(config_dir), str(data_dir.with_name(data_dir.name + ".config")))
        if result.damage:
            raise PostgresError(f"restoring backup {backup.short_id} failed: {result.damage[0]}",
                                hint="run `coldkeep pg verify` and `coldkeep repo check --read-data`")  # fmt: skip
        if result.errors:
            raise PostgresError(f"restoring backup {backup.short_id} into {data_dir} failed: {result.errors[0]}",
                                hint=f"the target refused the files; the repository is not damaged: free space or "
                                     f"fix permissions in {data_dir.parent}, or restore elsewhere")  # fmt: skip
        for sub in ("pg_wal", "pg_wal/archive_status"):
            (data_dir / sub).mkdir(exist_ok=True)
        report.wal_staged = stage_backup_wal(self.repo, self.config, backup, data_dir)
        _chown_tree(data_dir, self.pg.os_user)
        os.chmod(data_dir, 0o700)
        report.files, report.bytes = result.files, result.bytes
        report.files_s = round(time.monotonic() - started, 3)
        settings = {
            "restore_command": restore_command(self.config, str(backup.meta["wal_lineage"]), data_dir),
            **({"recovery_end_command": SPOOL_CLEANUP} if self.config.postgres.restore_prefetch else {}),
            "recovery_target_timeline": timeline,
            "recovery_target_action": "promote",
            "archive_mode": "on" if archive_mode == "on" else "off",
            **target.settings(),
        }
        if target.kind not in ("latest", "immediate"):
            settings["recovery_target_inclusive"] = "false" if exclusive else "true"
        write_recovery_settings(data_dir, settings, self.pg.os_user)
        for path in (data_dir / "postgresql.auto.conf", data_dir / "recovery.signal", data_dir / "pg_wal",
                     data_dir / "pg_wal/archive_status", data_dir):  # fmt: skip
            fsync_file(path)
        report.projection = self._projection(report)
        return report, backup

    def _projection(self, report: RestoreReport) -> dict[str, Any]:
        mb_s = (report.bytes / 1e6) / report.files_s if report.files_s > 0 else None
        out: dict[str, Any] = {"files_mb_s": round(mb_s, 1) if mb_s else None}
        if self.pg.database_size and mb_s:
            size = parse_size(self.pg.database_size)
            out["database_size"] = self.pg.database_size
            out["projected_files_s"] = round(size / 1e6 / mb_s, 1)
        return out

    def start(
        self, report: RestoreReport, *, port: int | None = None, timeout: float = 3600, scratch: bool = False
    ) -> TempCluster:
        """Start the restored directory on a private socket/port and wait for promotion.
        ``scratch`` (a drill's or restore test's instance, nobody's primary): without the backed-up
        server's synchronous standbys, which can never connect to it (its first commit, pg_amcheck
        creating its extension, waited for them for good)."""
        data_dir = Path(report.data_dir)
        run_dir = data_dir.with_name(data_dir.name + ".run")
        cluster = TempCluster(run_dir, bin_dir=find_bin_dir(self.pg.bin_dir), os_user=self.pg.os_user,
                              port=port or free_port(), data_dir=data_dir)  # fmt: skip
        started = time.monotonic()
        options = (
            ["-c", "archive_mode=off"]
            if "archive_mode = 'on'" not in (data_dir / "postgresql.auto.conf").read_text()
            else []
        )
        # The restore fsynced every file and directory, so the start-up sync of a data directory
        # that was "interrupted" (SyncDataDirectory: open + fsync of every file) has nothing left
        # to flush; syncfs does that check in one call.  For this start only: not written to the
        # restored configuration.
        major = int((data_dir / "PG_VERSION").read_text().strip().split(".")[0] or 0)
        if major >= 14:
            options += ["-c", "recovery_init_sync_method=syncfs"]
        if scratch:
            options += ["-c", "synchronous_standby_names=''"]
        if report.target == "immediate" and major >= 15:
            # replay ends inside the backup's own WAL: WAL read-ahead (recovery_prefetch) would
            # only fetch segments after it, one restore_command process each, never replayed
            options += ["-c", "recovery_prefetch=off"]
        # psycopg (~80 ms of imports) loads while pg_ctl waits for the server, not after it
        loader = threading.Thread(target=_import_psycopg, name="coldkeep-import-psycopg", daemon=True)
        loader.start()
        try:
            cluster.start(timeout=timeout, options=options)
            loader.join()
            deadline = time.monotonic() + timeout
            while True:
                try:
                    in_recovery = cluster.sql("SELECT pg_is_in_recovery()")[0][0]
                except Exception:
                    in_recovery = True
                if not in_recovery:
                    break
                if not (data_dir / "postmaster.pid").exists() or time.monotonic() > deadline:
                    raise PostgresError(f"recovery did not finish: {last_error(cluster.log_text())}",
                                        hint=f"see {cluster.log_file}")  # fmt: skip
                time.sleep(
                    0.02
                )  # promotion is polled: every poll interval counts in restore-to-running wall time
        except ColdkeepError as exc:
            log = cluster.log_text()
            raise PostgresError(f"{exc.message}; {last_error(log)}", hint=f"see {cluster.log_file}") from None
        report.started = True
        report.replay_s = round(time.monotonic() - started, 3)
        log = cluster.log_text()
        report.wal_segments_replayed = len(re.findall(r"restored log file \"[0-9A-F]{24}\"", log))
        report.port, report.socket_dir = cluster.port, str(cluster.socket_dir)
        ((lsn, timeline),) = cluster.sql(
            "SELECT pg_current_wal_lsn(), (SELECT timeline_id FROM pg_control_checkpoint())"
        )
        report.reached = {
            "lsn": str(lsn),
            "timeline": int(str(timeline)),
            "recovery_stop": recovery_stop(log),
        }
        return cluster


def _import_psycopg() -> None:
    import psycopg  # noqa: F401


def describe_reached(reached: dict[str, Any]) -> str:
    """``RestoreReport.reached`` for people: ``LSN 0/401EAA0 on timeline 2 (redo done at 0/401EA28)``."""
    if not reached:
        return "-"
    stop = str(reached.get("recovery_stop") or "").split(" system usage:", 1)[0].strip()
    text = f"LSN {reached.get('lsn')} on timeline {reached.get('timeline')}"
    return f"{text} ({stop})" if stop else text


def last_error(log: str) -> str:
    lines = [line for line in log.splitlines() if "FATAL" in line or "ERROR" in line or "PANIC" in line]
    return lines[-1].strip() if lines else "no error in the server log"


def recovery_stop(log: str) -> str:
    lines = [line for line in log.splitlines() if "recovery stopping" in line or "consistent recovery state" in line
             or "redo done" in line]  # fmt: skip
    return lines[-1].split("LOG:", 1)[-1].strip() if lines else ""


def target_from_time(value: datetime) -> Target:
    return Target("time", value.isoformat())
