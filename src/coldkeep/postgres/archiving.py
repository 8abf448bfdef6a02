"""``pg setup`` (configure WAL archiving) and ``pg check`` (prove it works).

``pg setup`` compares the server's settings with what coldkeep needs and, with ``apply``, sets
them with ``ALTER SYSTEM`` + ``pg_reload_conf()``:

* ``wal_level = replica`` (``logical`` is kept), ``archive_mode = on`` (``always`` is kept) — both
  need a restart, which is reported, never done;
* ``archive_command = '<absolute coldkeep> --config <absolute config> pg wal-push %p'`` —
  PostgreSQL runs it as its OS user with the server's environment, so both paths are absolute and
  are checked to be usable by ``[postgres].os_user`` before anything is applied;
* ``archive_library = ''`` (it would take precedence over ``archive_command``);
* ``archive_timeout = [postgres].archive_timeout`` — the most WAL (in seconds of commits) a lost
  server can take with it when nothing fills a segment;
* with ``synchronous``: the physical replication slot ``[postgres].receive_slot`` (default
  ``coldkeep``) and, only once a receiver with that ``application_name`` is streaming
  (``coldkeep pg receive-wal --synchronous``), ``synchronous_standby_names`` = that name (set
  without a receiver, every commit would wait forever).

The cluster's system identifier is recorded in the repository (the WAL lineage) *before*
archiving is switched on, so the first ``wal-push`` finds it.

``pg check`` forces a segment switch (after writing a little WAL: switching an empty segment does
nothing), waits until that segment is in the repository and verifies it; on timeout it reports
``pg_stat_archiver`` (failed count, last failed segment and time).
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from coldkeep import clock
from coldkeep.config import Config
from coldkeep.errors import EXIT_FAILED, ColdkeepError, PostgresError, UsageError
from coldkeep.postgres import archive, children, pgconn, wal
from coldkeep.postgres.cluster import running_as_root
from coldkeep.repository.repository import Repository

SLOT_NAME = "coldkeep"
EXECUTABLE_ENV = "COLDKEEP_EXECUTABLE"

# ------------------------------------------------------------------------------------------------
# the command PostgreSQL runs


def coldkeep_executable(explicit: str | None = None) -> str:
    """Absolute path of the ``coldkeep`` command to write into ``archive_command`` /
    ``restore_command``: ``explicit``, else ``$COLDKEEP_EXECUTABLE``, else the script next to this
    interpreter, else ``coldkeep`` on ``PATH``."""
    for candidate in (explicit, os.environ.get(EXECUTABLE_ENV)):
        if candidate:
            path = Path(candidate)
            if not path.is_absolute():
                raise UsageError(f"the coldkeep path must be absolute (got {candidate!r})")
            if not path.is_file():
                raise UsageError(f"{candidate}: no such file")
            return str(path)
    beside = Path(sys.executable).parent / "coldkeep"
    if beside.is_file():
        return str(beside)
    found = shutil.which("coldkeep")
    if found:
        return os.path.abspath(found)
    raise PostgresError(
        "cannot find the coldkeep executable to put in archive_command",
        hint="pass --coldkeep-path /absolute/path/to/coldkeep",
    )


def configured_executable(current_command: str, config_path: str) -> str | None:
    """The coldkeep path in an ``archive_command`` that ``pg setup`` wrote for this config file
    (so that rerunning ``pg setup`` keeps it), else ``None``."""
    try:
        parts = shlex.split(current_command.replace("%%", "%"))
    except ValueError:
        return None
    expected = ["--config", config_path, "pg", "wal-push"]
    if len(parts) < 6 or parts[1:5] != expected or parts[-1] != "%p":
        return None
    options = parts[5:-1]  # --async [--workers N]
    async_forms = len(options) == 3 and options[:2] == ["--async", "--workers"] and options[2].isdigit()
    if options not in ([], ["--async"]) and not async_forms:
        return None
    if os.path.isabs(parts[0]) and os.path.isfile(parts[0]):
        return parts[0]
    return None


def _pg_quote(part: str) -> str:
    """Shell-quote for ``archive_command``; ``%`` is doubled (PostgreSQL expands ``%p``/``%f``)."""
    return shlex.quote(part).replace("%", "%%")


def archive_command(executable: str, config_path: str, *, async_push: bool = False, workers: int = 0) -> str:
    """``archive_command``; ``async_push``: ``wal-push --async`` (:mod:`coldkeep.postgres.spool`)
    with ``workers`` pusher threads (0: the default)."""
    if not os.path.isabs(executable) or not os.path.isabs(config_path):
        raise UsageError("archive_command needs absolute paths (PostgreSQL does not have our PATH or cwd)")
    parts = [executable, "--config", config_path, "pg", "wal-push"]
    if async_push:
        parts.append("--async")
        if workers:
            parts += ["--workers", str(int(workers))]
    return " ".join(_pg_quote(p) for p in parts) + " %p"


def restore_command(
    executable: str, config_path: str, lineage: str | None = None, prefetch: int = 0, fast_path: str = ""
) -> str:
    """``restore_command`` for a restore: ``wal-fetch`` exits 1 only for "not archived";
    ``prefetch`` > 0 fetches that many segments ahead (:mod:`coldkeep.postgres.prefetch`);
    ``fast_path``: a shell prefix that serves a ready segment first
    (:func:`~coldkeep.postgres.prefetch.ready_fast_path`)."""
    if not os.path.isabs(executable) or not os.path.isabs(config_path):
        raise UsageError("restore_command needs absolute paths (PostgreSQL does not have our PATH or cwd)")
    parts = [executable, "--config", config_path, "pg", "wal-fetch"]
    if lineage:
        parts += ["--lineage", lineage]
    if prefetch:
        parts += ["--prefetch", str(int(prefetch))]
    return fast_path + " ".join(_pg_quote(p) for p in parts) + " %f %p"


# ------------------------------------------------------------------------------------------------
# can the server's OS user run it?


def access_problems(config: Config, executable: str, config_path: str) -> list[str]:
    """What would stop ``[postgres].os_user`` from running ``executable --config config_path``
    with the repository (empty: nothing found).  Checked by running as that user when we are
    root, directly when we are that user, and skipped otherwise."""
    os_user = config.postgres.os_user
    me = pwd.getpwuid(os.geteuid()).pw_name
    if not running_as_root() and me != os_user:
        return []
    checks: list[tuple[list[str], str]] = [
        ([executable, "--version"], f"cannot run {executable} (is it and its Python interpreter readable by {os_user}?)"),
        (["test", "-r", config_path], f"cannot read the config file {config_path}"),
    ]  # fmt: skip
    if config.repository.password_file:
        pw = config.repository.password_file
        checks.append((["test", "-r", pw], f"cannot read [repository].password_file {pw}"))
    if config.postgres.passfile:
        checks.append((["test", "-r", config.postgres.passfile], f"cannot read [postgres].passfile {config.postgres.passfile}"))  # fmt: skip
    url = urlsplit(config.repository.url)
    if url.scheme == "file":
        root = unquote(url.path)
        if os.path.isdir(root):
            checks.append(
                (["test", "-w", root, "-a", "-x", root], f"cannot write the repository directory {root}")
            )
    problems = []
    for argv, problem in checks:
        try:  # as the server would: its account, no virtualenv on PATH, no coldkeep variables
            proc = children.run(argv, os_user=os_user, timeout=60, extra_env={"PATH": children.SAFE_PATH})
        except OSError as exc:  # the program itself cannot be executed by that account
            problems.append(f"{os_user} {problem} ({exc.strerror or exc})")
            continue
        except subprocess.SubprocessError as exc:
            problems.append(f"{problem}: {exc}")
            continue
        if proc.returncode != 0:
            problems.append(f"{os_user} {problem}")
    if running_as_root() and config.repository.owner != os_user and url.scheme == "file":
        problems.append(
            f"[repository].owner is {config.repository.owner!r} but PostgreSQL runs wal-push as {os_user!r}: "
            "files coldkeep writes as root would not be writable by the archiver"
        )
    return problems


# ------------------------------------------------------------------------------------------------
# pg setup


@dataclass
class Setting:
    name: str
    current: str
    desired: str
    context: str  # pg_settings.context: postmaster settings need a restart
    apply: bool = True  # False: shown but deliberately not applied (see note)
    note: str = ""

    @property
    def changes(self) -> bool:
        return self.current != self.desired

    def to_json(self) -> dict[str, Any]:
        return {
            **self.__dict__,
            "changes": self.changes,
            "needs_restart": self.changes and self.context == "postmaster",
        }


@dataclass
class SetupResult:
    system_identifier: int
    server_version: int
    settings: list[Setting]
    applied: bool
    restart_needed: bool
    lineage: dict[str, Any] | None
    lineage_action: str  # "recorded", "unchanged", "new-lineage", "would-record", "would-start-new-lineage"
    slot: dict[str, Any] | None = None
    pending_restart: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        doc = dict(self.__dict__)
        doc["settings"] = [s.to_json() for s in self.settings]
        return doc


def _settings(conn: Any, names: list[str]) -> dict[str, tuple[str, str, bool]]:
    rows = conn.execute(
        "SELECT name, setting, context, pending_restart FROM pg_settings WHERE name = ANY(%s)", (names,)
    ).fetchall()
    return {str(r[0]): (str(r[1]), str(r[2]), bool(r[3])) for r in rows}


def _value(conn: Any, query: str, params: tuple[Any, ...] = ()) -> Any:
    """The first column of the one row ``query`` returns."""
    row = conn.execute(query, params).fetchone()
    if row is None:
        raise PostgresError(f"no row from {query!r}")
    return row[0]


def system_identifier(conn: Any) -> int:
    return int(_value(conn, "SELECT system_identifier FROM pg_control_system()"))


def setup(
    config: Config,
    repo: Repository,
    *,
    apply: bool = False,
    synchronous: bool = False,
    new_lineage: bool = False,
    executable: str | None = None,
) -> SetupResult:
    if not config.source:
        raise UsageError("pg setup needs a config file (archive_command names it with --config)")
    config_path = os.path.abspath(config.source)
    warnings: list[str] = []
    with pgconn.connect(config.postgres) as conn:
        if _value(conn, "SELECT pg_is_in_recovery()"):
            raise PostgresError("the server is in recovery (a standby); run pg setup on the primary")
        sysid = system_identifier(conn)
        version = int(_value(conn, "SHOW server_version_num"))
        names = ["wal_level", "archive_mode", "archive_command", "archive_timeout", "archive_library",
                 "synchronous_standby_names", "max_wal_senders"]  # fmt: skip
        current = _settings(conn, names)
        kept = (
            None
            if executable or os.environ.get(EXECUTABLE_ENV)
            else configured_executable(current.get("archive_command", ("",))[0], config_path)
        )
        exe = kept or coldkeep_executable(executable)
        command = archive_command(exe, config_path, async_push=config.postgres.archive_async,
                                  workers=config.postgres.archive_async_workers)  # fmt: skip

        def setting(name: str, desired: str, **kw: Any) -> Setting:
            value, context, _ = current.get(name, ("", "sighup", False))
            return Setting(name, value, desired, context, **kw)

        wal_level = current["wal_level"][0]
        archive_mode = current["archive_mode"][0]
        wanted = [
            setting("wal_level", wal_level if wal_level == "logical" else "replica"),
            setting("archive_mode", archive_mode if archive_mode == "always" else "on"),
            setting("archive_command", command),
            setting("archive_timeout", str(config.postgres.archive_timeout)),
        ]
        if "archive_library" in current:
            wanted.append(setting("archive_library", ""))
        slot: dict[str, Any] | None = None
        slot_name = config.postgres.receive_slot
        if synchronous:
            row = conn.execute(
                "SELECT slot_type, active FROM pg_replication_slots WHERE slot_name = %s", (slot_name,)
            ).fetchone()
            receiving = _value(
                conn,
                "SELECT count(*) FROM pg_stat_replication WHERE application_name = %s AND state = 'streaming'",
                (slot_name,),
            )
            slot = {"name": slot_name, "exists": row is not None, "active": bool(row and row[1]),
                    "receiver_streaming": bool(receiving)}  # fmt: skip
            if row is not None and row[0] != "physical":
                raise PostgresError(f"a {row[0]} replication slot named {slot_name!r} already exists")
            sync = setting("synchronous_standby_names", slot_name, apply=bool(receiving))
            if not receiving:
                sync.note = f"no receiver named {slot_name} is streaming (commits would wait forever)"
                warnings.append(
                    f"synchronous_standby_names is left alone until a WAL receiver named {slot_name!r} streams "
                    "(start `coldkeep pg receive-wal --synchronous`, then rerun this command); "
                    "the slot keeps WAL on the server until it does (drop it with "
                    f"SELECT pg_drop_replication_slot('{slot_name}') if you do not start one)"
                )
            wanted.append(sync)
            if int(current.get("max_wal_senders", ("0",))[0]) < 1:
                warnings.append(
                    "max_wal_senders is 0: no WAL receiver can connect (needs a restart to change)"
                )

        # the lineage: checked always, recorded only when applying
        lineage_before = archive.current_lineage(repo)
        if lineage_before is None:
            lineage_action = "would-record"
        elif int(lineage_before["system_identifier"]) == sysid:
            lineage_action = "unchanged"
        elif new_lineage:
            lineage_action = "would-start-new-lineage"
        else:
            raise archive.OtherCluster(recorded=lineage_before["system_identifier"], found=sysid)
        lineage = lineage_before
        problems = access_problems(config, exe, config_path)
        result = SetupResult(
            sysid, version, wanted, False, False, lineage, lineage_action, slot, [], warnings
        )
        if not apply:
            warnings.extend(problems)
            result.restart_needed = any(s.changes and s.apply and s.context == "postmaster" for s in wanted)
            return result
        if problems:
            raise PostgresError(
                "PostgreSQL could not run the archive_command: " + "; ".join(problems),
                hint="install coldkeep where the server's OS user can run it, or pass --coldkeep-path",
            )
        lineage, changed = archive.record_system_identifier(
            repo, sysid, new_lineage=new_lineage, pg_version=version // 10000
        )
        result.lineage = lineage
        result.lineage_action = (
            "unchanged" if not changed else "new-lineage" if lineage_before is not None else "recorded"
        )
        if synchronous and slot is not None and not slot["exists"]:
            conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", (slot_name,))
            slot["exists"] = True
            slot["created"] = True
        from psycopg import sql

        for s in wanted:
            if s.changes and s.apply:
                conn.execute(
                    sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(s.name), sql.Literal(s.desired))
                )
        conn.execute("SELECT pg_reload_conf()")
        result.applied = True
        result.restart_needed = any(s.changes and s.apply and s.context == "postmaster" for s in wanted)
        result.pending_restart = _pending_restart(conn, [s.name for s in wanted if s.changes and s.apply])
    return result


def _pending_restart(conn: Any, changed: list[str], wait_s: float = 2.0) -> list[str]:
    """Settings PostgreSQL reports as waiting for a restart (the reload is asynchronous)."""
    deadline = time.monotonic() + wait_s
    pending: list[str] = []
    while True:
        rows = conn.execute("SELECT name FROM pg_settings WHERE pending_restart").fetchall()
        pending = sorted(str(r[0]) for r in rows)
        if not changed or set(changed) & set(pending) or time.monotonic() > deadline:
            return pending
        sighup = _settings(conn, changed)
        if all(ctx != "postmaster" for _, ctx, _ in sighup.values()):
            return pending
        time.sleep(0.1)


# ------------------------------------------------------------------------------------------------
# pg check


class ArchiveCheckFailed(PostgresError):
    exit_code = EXIT_FAILED
    template = "{detail}"
    hint = "the server log shows archive_command's errors; `coldkeep pg setup` shows the settings"


@dataclass
class CheckResult:
    segment: str
    key: str
    lsn: str
    elapsed_s: float
    archiver: dict[str, Any]
    system_identifier: int
    lineage: str

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def archiver_stats(conn: Any) -> dict[str, Any]:
    """``pg_stat_archiver``'s counts, last archived and last failed segment and their times."""
    row = conn.execute(
        "SELECT archived_count, last_archived_wal, last_archived_time, failed_count, last_failed_wal, "
        "last_failed_time FROM pg_stat_archiver"
    ).fetchone()
    if row is None:
        raise PostgresError("pg_stat_archiver returned no row")
    keys = ("archived_count", "last_archived_wal", "last_archived_time", "failed_count", "last_failed_wal",
            "last_failed_time")  # fmt: skip
    return {
        k: (clock.isoformat(v) if hasattr(v, "astimezone") else v) for k, v in zip(keys, row, strict=True)
    }


def describe_archiver(now: dict[str, Any], before: dict[str, Any] | None = None) -> str:
    """``pg_stat_archiver`` in one line: failed count (and how many failures since ``before``),
    the last failed segment and when, the last archived segment."""
    failed = f"failed_count {now['failed_count']}"
    if before is not None:
        failed += f" ({int(now['failed_count'] or 0) - int(before['failed_count'] or 0):+d} meanwhile)"
    return (
        f"pg_stat_archiver: {failed}, last_failed_wal {now['last_failed_wal'] or '-'} at "
        f"{now['last_failed_time'] or '-'}, last_archived_wal {now['last_archived_wal'] or '-'}"
    )


def check(config: Config, repo: Repository, *, timeout: float = 60.0, poll_s: float = 0.2) -> CheckResult:
    with pgconn.connect(config.postgres) as conn:
        if _value(conn, "SELECT pg_is_in_recovery()"):
            raise PostgresError("the server is in recovery (a standby); run pg check on the primary")
        settings = _settings(conn, ["archive_mode", "archive_command", "wal_level"])
        mode, _, pending = settings["archive_mode"]
        if mode == "off":
            raise ArchiveCheckFailed(
                f"archive_mode is off{' (changed, waiting for a restart)' if pending else ''}: no WAL is archived",
                hint="run `coldkeep pg setup --apply` and restart PostgreSQL",
            )
        sysid = system_identifier(conn)
        lineage = archive.find_lineage(repo)
        if int(lineage["system_identifier"]) != sysid:
            raise archive.OtherCluster(recorded=lineage["system_identifier"], found=sysid)
        before = archiver_stats(conn)
        # an empty segment is not switched: write a little WAL first (a transaction id's commit)
        conn.execute("SELECT txid_current()")
        lsn = str(_value(conn, "SELECT pg_switch_wal()"))
        segment = str(_value(conn, "SELECT pg_walfile_name(%s::pg_lsn)", (lsn,)))
        key = wal.archive_key(segment, str(lineage["prefix"]))
        started = time.monotonic()
        deadline = started + timeout
        while True:
            if any(name == key for name, _ in repo.list_named(key)):
                break
            if time.monotonic() > deadline:
                detail = f"{segment} did not reach the repository within {timeout:g} s; " + describe_archiver(
                    archiver_stats(conn), before
                )
                raise ArchiveCheckFailed(detail)
            time.sleep(poll_s)
        elapsed = round(time.monotonic() - started, 3)
        try:
            archive.read_archived(repo, segment, prefix=str(lineage["prefix"]))
        except ColdkeepError as exc:
            raise ArchiveCheckFailed(f"{segment} was archived but does not verify: {exc.message}") from None
        stats = archiver_stats(conn)
    return CheckResult(segment, key, lsn, elapsed, stats, sysid, str(lineage["prefix"]))
