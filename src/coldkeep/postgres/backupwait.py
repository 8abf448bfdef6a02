"""The wait for WAL archiving at the end of a base backup, bounded by ``[postgres].backup_wal_timeout``.

``pg_basebackup -X none`` asks the server to wait (``BASE_BACKUP`` without ``WAIT 0``): after the
last data file, ``pg_backup_stop`` waits until the archiver has archived the backup's last
segment (wait event ``BackupWaitWalArchive``) and only then sends ``backup_manifest``.  With a
failing ``archive_command`` that wait never ends and the server sends nothing, so coldkeep,
blocked reading the stream, would wait forever holding its repository lock.

:class:`ArchiveWatch` runs next to ``pg_basebackup`` on a connection of its own: it finds the
backup's walsender by its unique ``application_name`` and, once that walsender has been in
``BackupWaitWalArchive`` for the timeout (and still is), reads ``pg_stat_archiver``, ends the server's wait
(``pg_terminate_backend``) and kills ``pg_basebackup``.  The backup then fails with
:class:`ArchiveWaitTimeout`, naming the last failed segment, the failure count and time.  The
same budget (counted from the start of the server's wait, or from the end of the stream when that
wait was too short to be seen) bounds coldkeep's own wait for the backup's segments to be in the
repository (``wal-push --async`` acknowledges before it pushes).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from coldkeep.config import PostgresConfig
from coldkeep.errors import EXIT_FAILED, PostgresError
from coldkeep.postgres import pgconn

log = logging.getLogger(__name__)

WAIT_EVENT = "BackupWaitWalArchive"


class ArchiveWaitTimeout(PostgresError):
    exit_code = EXIT_FAILED
    template = "the backup's WAL was not archived within {timeout:g} s ({detail}); the backup is not complete and was not recorded"  # fmt: skip
    hint = "archive_command fails or is too slow (the server log says why, `coldkeep pg check` tests it); fix it (or raise [postgres].backup_wal_timeout) and run pg backup again"  # fmt: skip


def application_name() -> str:
    """A name no other connection has: finds this backup's walsender in ``pg_stat_activity``."""
    return f"coldkeep-basebackup-{os.getpid()}-{os.urandom(4).hex()}"


def describe_archiver_now(pg: PostgresConfig, conn: Any = None) -> str:
    """``pg_stat_archiver`` in one line (on ``conn``, or a new connection), or why it is unknown."""
    from coldkeep.postgres.archiving import archiver_stats, describe_archiver

    try:
        if conn is not None:
            return describe_archiver(archiver_stats(conn))
        with pgconn.connect(pg) as fresh:
            return describe_archiver(archiver_stats(fresh))
    except Exception as exc:  # the error being reported matters more than the detail
        return f"pg_stat_archiver unreadable: {' '.join(str(exc).split())[:200]}"


class ArchiveWatch:
    """Watch one ``pg_basebackup`` (by its ``application_name``) on a thread and connection of its
    own; end it with :class:`ArchiveWaitTimeout` when the server's wait for the archiver exceeds
    ``timeout_s``.  ``on_expire`` (set once ``pg_basebackup`` runs) is called from the watch
    thread after the server's wait is ended; it kills ``pg_basebackup``.  A lost watch connection
    is reopened at the next poll; until then the wait is not timed."""

    def __init__(self, pg: PostgresConfig, app_name: str, timeout_s: float,
                 on_expire: Callable[[], None] | None = None, *, poll_s: float = 0.5) -> None:  # fmt: skip
        self.pg = pg
        self.app_name = app_name
        self.timeout_s = timeout_s
        self.on_expire = on_expire
        self.poll_s = poll_s
        self.waiting_since: float | None = None  # monotonic time the server's archive wait was first seen
        self.expired: ArchiveWaitTimeout | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="coldkeep-archive-watch", daemon=True)
        self._conn: contextlib.ExitStack | None = None
        self._db: Any = None

    def __enter__(self) -> ArchiveWatch:
        self._connect()  # in the caller's thread: an unreachable server fails the backup up front
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._close()

    def _connect(self) -> None:
        stack = contextlib.ExitStack()
        self._db = stack.enter_context(pgconn.connect(self.pg, application_name="coldkeep-archive-watch"))
        self._conn = stack

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        self._conn = self._db = None

    def deadline(self, fallback_start: float) -> float:
        """When coldkeep's own wait for the backup's WAL ends: the same budget as the server's."""
        start = self.waiting_since if self.waiting_since is not None else fallback_start
        return start + self.timeout_s

    def error(self, detail: str) -> ArchiveWaitTimeout:
        return ArchiveWaitTimeout(detail, timeout=self.timeout_s)

    def _server_waits(self) -> bool:
        if self._db is None:
            self._connect()
        rows = self._db.execute(
            "SELECT wait_event FROM pg_stat_activity WHERE backend_type = 'walsender' AND application_name = %s",
            (self.app_name,),
        ).fetchall()
        return any(r[0] == WAIT_EVENT for r in rows)

    def cancel_server_side(self) -> None:
        """End this backup's walsender (best effort: the role may lack the right, the server may
        be gone); without it the walsender would notice only when it next warns the client."""
        with contextlib.suppress(Exception):
            if self._db is None:
                self._connect()
            self._db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE backend_type = 'walsender' AND application_name = %s",
                (self.app_name,),
            )

    def _run(self) -> None:
        warned = False
        while not self._stop.wait(self.poll_s):
            try:
                waits = self._server_waits()
            except Exception as exc:  # keep the backup going; try again at the next poll
                self._close()
                if not warned:
                    warned = True
                    log.warning(
                        "watching the base backup's archive wait: %s", " ".join(str(exc).split())[:200]
                    )
                continue
            now = time.monotonic()
            if self.waiting_since is None and waits:
                self.waiting_since = now
            if waits and self.waiting_since is not None and now - self.waiting_since > self.timeout_s:
                self.expired = self.error(describe_archiver_now(self.pg, self._db))
                self.cancel_server_side()
                if self.on_expire is not None:
                    self.on_expire()
                return
