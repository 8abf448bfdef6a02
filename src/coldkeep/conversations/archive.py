"""``conversations archive``: exactly-once, streamed, batched.

One run, under the archive lock (:func:`coldkeep.conversations.db.archive_lock`):

1. **Recover.**  Delete ``*.tmp`` files and final-named batch files the ledger does not list (a
   run that died before its commit); note ledger batches whose file is missing.
2. **Archive.**  One ``COPY (SELECT id, xmin, row_to_json(row) …) TO STDOUT`` per window of up to
   12 months streams the eligible rows (``archived IS NOT TRUE AND timestamp < cutoff``); PostgreSQL
   builds each JSON line, so ``metadata`` is the jsonb's own text and nothing is re-encoded here.
   Lines go to one open :class:`~coldkeep.conversations.files.BatchWriter` per UTC month; a writer
   that reaches ``batch_rows`` rows (or 256 MiB) is handed to a committer thread, which makes the
   file durable (fsync, rename, fsync dir) and then runs ONE transaction: insert the ledger row
   (file, SHA-256, size, row count, the sorted ids and their SHA-256) and
   ``UPDATE … SET archived = true, archive_file = F WHERE id = ANY(ids) AND xmin = <as read>``.
   If a row changed since it was read (its ``xmin`` differs) the count falls short: the transaction
   rolls back, the file is deleted, and another pass re-reads what is left.  Memory is bounded by
   the open writers (≤ 12 months × ~1 MiB of lines + a compressor) and the committers' queue.
3. **Store** each ledger batch not yet in the repository as a write-once named object
   (``conversations/<schema.table>/<YYYY-MM>/<file>``) and record its name in the ledger.
4. **Purge** (``--purge``): for each stored, unpurged batch whose repository copy reads back with the
   ledger's SHA-256 and whose local file re-verifies (SHA-256, row count, ids), delete in one transaction the
   rows whose current JSON line still hashes (md5) to the archived line; rows changed since are kept
   and counted.

Steps 1, 3 and 4 and the ledger they read are :mod:`coldkeep.conversations.ledger`; this module
is the run and its streaming pipeline (step 2).
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from coldkeep import clock, testhooks
from coldkeep.config import Config
from coldkeep.conversations import db
from coldkeep.conversations.db import CSV_RAW, ROW_JSON, Target, connect, open_target
from coldkeep.conversations.files import (
    ArchiveDir,
    BatchWriter,
    bound_heap,
    kill_point,
)
from coldkeep.conversations.ledger import purge, recover, store_pending
from coldkeep.errors import EXIT_FAILED, EXIT_INTEGRITY, EXIT_OK, ColdkeepError, StorageFull, UsageError

WINDOW_MONTHS = 12
CHUNK_BYTES = 1 << 20
#: a batch ends at this many bytes of JSON lines ...
MAX_BATCH_BYTES = 256 << 20
#: ... or when its file could exceed this (the repository stores a batch file as one object, in memory)
MAX_FILE_BYTES = 12 << 20
MAX_PASSES = 3
COMMITTERS = 2
#: a batch may be handed to an idle committer once it has batch_rows / EARLY_DIVISOR rows
EARLY_DIVISOR = 4
EARLIEST = datetime(1, 1, 1, tzinfo=UTC)


def hook_int(name: str, default: int) -> int:
    """The test hook ``name`` as a positive whole number, else ``default`` (always ``default``
    outside tests: :mod:`coldkeep.testhooks`)."""
    text = (testhooks.value(name) or "").strip()
    return int(text) if text.isdigit() and int(text) > 0 else default


def month_start(ts: datetime) -> datetime:
    return datetime(ts.year, ts.month, 1, tzinfo=UTC)


def add_months(ts: datetime, n: int) -> datetime:
    y, m = divmod(ts.month - 1 + n, 12)
    return datetime(ts.year + y, m + 1, 1, tzinfo=UTC)


def parse_month(text: str) -> datetime:
    try:
        year, month = (int(p) for p in text.split("-"))
        if len(text) != 7:
            raise ValueError
        return datetime(year, month, 1, tzinfo=UTC)
    except ValueError:
        raise UsageError(f"not a month: {text!r}", hint="write YYYY-MM, e.g. 2025-01") from None


@dataclass
class ArchiveResult:
    table: str
    archive_dir: str
    cutoff: str
    dry_run: bool = False
    batches: list[dict[str, Any]] = field(default_factory=list)
    months: dict[str, dict[str, int]] = field(default_factory=dict)
    rows_archived: int = 0
    bytes_written: int = 0
    orphans_removed: list[str] = field(default_factory=list)
    retried_rows: int = 0
    passes: int = 0
    repo: dict[str, Any] = field(default_factory=dict)
    purge: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    phases_s: dict[str, float] = field(default_factory=dict)
    duration_s: float = 0.0

    @property
    def exit_code(self) -> int:
        if self.problems:
            return EXIT_INTEGRITY
        if self.purge is not None and self.purge.get("refused"):
            return EXIT_FAILED
        return EXIT_OK

    def to_json(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "archive_dir": self.archive_dir,
            "cutoff": self.cutoff,
            "dry_run": self.dry_run,
            "rows_archived": self.rows_archived,
            "bytes_written": self.bytes_written,
            "files": len(self.batches),
            "months": self.months,
            "batches": self.batches,
            "orphans_removed": self.orphans_removed,
            "retried_rows": self.retried_rows,
            "passes": self.passes,
            "repository": self.repo,
            "purge": self.purge,
            "problems": self.problems,
            "warnings": self.warnings,
            "phases_s": self.phases_s,
            "duration_s": self.duration_s,
            "rows_per_s": round(self.rows_archived / self.duration_s) if self.duration_s else 0,
            "exit_code": self.exit_code,
        }


@contextlib.contextmanager
def _phase(result: ArchiveResult, name: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    finally:
        result.phases_s[name] = round(time.monotonic() - started, 3)


class _Mismatch(Exception):
    def __init__(self, updated: int) -> None:
        super().__init__(updated)
        self.updated = updated


Hook = Callable[..., None]


class _Pipeline:
    """Committer threads, each with its own connection, fed by a bounded queue of full writers."""

    def __init__(self, archiver: Archiver, conns: list[psycopg.Connection[Any]]) -> None:
        self.archiver = archiver
        self.queue: queue.Queue[BatchWriter | None] = queue.Queue(maxsize=max(1, len(conns)))
        self.pool = ThreadPoolExecutor(max(1, min(2, os.cpu_count() or 1)), thread_name_prefix="ck-compress")
        self.error: BaseException | None = None
        self.lock = threading.Lock()
        #: committers waiting for work (read without the lock: a hint, not a guarantee)
        self.idle = 0
        self.committed: list[dict[str, Any]] = []
        self.mismatched_rows = 0
        self.threads = [
            threading.Thread(target=self._loop, args=(c,), name=f"ck-commit-{i}", daemon=True)
            for i, c in enumerate(conns)
        ]
        for t in self.threads:
            t.start()

    def submit(self, writer: BatchWriter) -> None:
        writer.flush_chunk()
        while True:
            if self.error is not None:
                writer.discard()
                raise self.error
            try:
                self.queue.put(writer, timeout=0.2)
                return
            except queue.Full:
                continue

    def hungry(self) -> bool:
        """Is a committer waiting with nothing queued?"""
        return self.idle > 0 and self.queue.empty()

    def _loop(self, conn: psycopg.Connection[Any]) -> None:
        while True:
            with self.lock:
                self.idle += 1
            writer = self.queue.get()
            with self.lock:
                self.idle -= 1
            if writer is None:
                return
            if self.error is not None:
                writer.discard()
                continue
            try:
                self.archiver._commit(conn, writer, self)
            except BaseException as exc:
                with self.lock:
                    if self.error is None:
                        self.error = exc

    def close(self) -> None:
        for _ in self.threads:
            self.queue.put(None)
        for t in self.threads:
            t.join()
        self.pool.shutdown(wait=True)
        if self.error is not None:
            raise self.error


class Archiver:
    def __init__(
        self,
        config: Config,
        *,
        older_than: timedelta | None = None,
        batch_rows: int | None = None,
        dry_run: bool = False,
        purge: bool = False,
        lock_wait: float = 30.0,
        committers: int | None = None,
        store: bool = True,
        hooks: dict[str, Hook] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.cfg = config.conversations
        self.older_than = (
            older_than if older_than is not None else timedelta(days=self.cfg.archive_after_days)
        )
        self.batch_rows = batch_rows or self.cfg.batch_rows
        self.early_rows = max(1, self.batch_rows // hook_int("COLDKEEP_CONV_EARLY_DIV", EARLY_DIVISOR))
        self.dry_run = dry_run
        self.purge = purge
        self.lock_wait = lock_wait
        self.committers = committers or hook_int("COLDKEEP_CONV_COMMITTERS", COMMITTERS)
        self.store = store
        self.hooks = hooks or {}
        self.log = log or (lambda _msg: None)
        self.adir = ArchiveDir(Path(self.cfg.archive_dir))
        self.fmt = self.cfg.format
        self._repo: Any = None
        self._repo_error: str | None = None
        self._target: Target

    def _hook(self, stage: str, **info: Any) -> None:
        fn = self.hooks.get(stage)
        if fn is not None:
            fn(**info)

    # -- the run -----------------------------------------------------------------------------------

    def run(self) -> ArchiveResult:
        db.require_section(self.config)
        bound_heap()
        started = time.monotonic()
        cutoff = clock.now() - self.older_than
        conn = connect(self.config.postgres, "conversations archive")
        try:
            target = self._target = open_target(conn, self.cfg)
            result = ArchiveResult(
                table=target.qualified,
                archive_dir=str(self.adir.root),
                cutoff=clock.isoformat(cutoff),
                dry_run=self.dry_run,
            )
            if not target.scan_index_exists:
                result.warnings.append(
                    f"index {target.scan_index_name} is missing; the scan reads the whole table "
                    "(`coldkeep conversations init-schema` creates it)"
                )
            if self.dry_run:
                self._dry_run(conn, target, cutoff, result)
            else:
                with db.archive_lock(conn, target, wait_s=self.lock_wait):
                    self.adir.ensure({**db.system_identity(conn), "table": target.qualified})
                    with _phase(result, "recover"):
                        recover(conn, target, self.adir, result)
                    with _phase(result, "archive"):
                        self._archive(conn, target, cutoff, result)
                    if self.store:
                        with _phase(result, "store"):
                            self._store(conn, target, result)
                    if self.purge:
                        with _phase(result, "purge"):
                            self._purge(conn, target, result)
        finally:
            conn.close()
            if self._repo is not None:
                with contextlib.suppress(Exception):
                    self._repo.close()
        result.duration_s = round(time.monotonic() - started, 3)
        return result

    def _dry_run(
        self, conn: psycopg.Connection[Any], target: Target, cutoff: datetime, result: ArchiveResult
    ) -> None:
        rows = conn.execute(
            sql.SQL(
                "SELECT to_char(\"timestamp\", 'YYYY-MM'), count(*), sum(octet_length(content))::bigint "
                'FROM {t} WHERE archived IS NOT TRUE AND "timestamp" >= %s AND "timestamp" < %s '
                "GROUP BY 1 ORDER BY 1"
            ).format(t=target.table),
            (EARLIEST, cutoff),
        ).fetchall()
        for month, count, content_bytes in rows:
            result.months[str(month)] = {"rows": int(count), "content_bytes": int(content_bytes or 0)}
            result.rows_archived += int(count)
        known = {str(r[0]) for r in conn.execute(sql.SQL("SELECT file FROM {}").format(target.ledger))}
        scan = self.adir.scan()
        result.orphans_removed = sorted(scan.tmp + [f for f in scan.final if f not in known])
        result.warnings.append("dry run: nothing written; orphans_removed lists what a real run would delete")

    # -- archiving -------------------------------------------------------------------------------

    def _windows(
        self, conn: psycopg.Connection[Any], target: Target, cutoff: datetime
    ) -> list[tuple[datetime, datetime]]:
        row = conn.execute(
            sql.SQL(
                'SELECT min("timestamp") FROM {t} WHERE archived IS NOT TRUE AND "timestamp" >= %s AND "timestamp" < %s'
            ).format(t=target.table),
            (EARLIEST, cutoff),
        ).fetchone()
        if row is None or row[0] is None:
            return []
        lo = month_start(row[0].astimezone(UTC))
        windows = []
        while lo < cutoff:
            hi = add_months(lo, WINDOW_MONTHS)
            windows.append((lo, min(hi, cutoff)))
            lo = hi
        return windows

    def _archive(
        self, conn: psycopg.Connection[Any], target: Target, cutoff: datetime, result: ArchiveResult
    ) -> None:
        for pass_no in range(1, MAX_PASSES + 1):
            windows = self._windows(conn, target, cutoff)
            if not windows:
                break
            result.passes = pass_no
            with contextlib.ExitStack() as stack:
                reader = stack.enter_context(connect(self.config.postgres, "conversations archive reader"))
                committers = [
                    stack.enter_context(connect(self.config.postgres, "conversations archive commit"))
                    for _ in range(self.committers)
                ]
                for c in committers:
                    db.acquire(c, target.lock_key(db.LOCK_COMMITTERS), wait_s=self.lock_wait, shared=True)
                pipe = _Pipeline(self, committers)
                read_started = time.monotonic()
                try:
                    for lo, hi in windows:
                        self._stream(reader, target, lo, hi, pipe)
                    result.phases_s["read"] = round(
                        result.phases_s.get("read", 0.0) + time.monotonic() - read_started, 3
                    )
                finally:
                    pipe.close()
            for batch in pipe.committed:
                result.batches.append(batch)
                result.rows_archived += batch["rows"]
                result.bytes_written += batch["bytes"]
                m = result.months.setdefault(batch["month"], {"rows": 0, "files": 0, "bytes": 0})
                m["rows"] += batch["rows"]
                m["files"] += 1
                m["bytes"] += batch["bytes"]
            result.retried_rows += pipe.mismatched_rows
            if pipe.mismatched_rows == 0:
                break
            self.log(f"{pipe.mismatched_rows} rows changed while being archived; reading them again")
        else:
            if result.retried_rows:
                result.warnings.append(
                    "some rows kept changing while being archived; the next run archives them"
                )

    def _stream(
        self, reader: psycopg.Connection[Any], target: Target, lo: datetime, hi: datetime, pipe: _Pipeline
    ) -> None:
        query = sql.SQL(
            'COPY (SELECT c.id, c.xmin, {row} FROM {t} c WHERE c.archived IS NOT TRUE AND c."timestamp" >= {lo} '
            'AND c."timestamp" < {hi}) TO STDOUT {csv}'
        ).format(
            row=sql.SQL(ROW_JSON),
            t=target.table,
            lo=sql.Literal(lo),
            hi=sql.Literal(hi),
            csv=sql.SQL(CSV_RAW),
        )
        root, fmt, pool, batch_rows = self.adir.root, self.fmt, pipe.pool, self.batch_rows
        writers: dict[bytes, BatchWriter] = {}
        try:
            with reader.cursor() as cur, cur.copy(query) as copy:
                rest = b""
                for data in copy:
                    row = bytes(data)
                    if rest or row[-1:] != b"\n" or row.count(b"\n") != 1:
                        # the server sends one row per message; cope with any other framing
                        rest += row
                        *rows, rest = rest.split(b"\n")
                        for r in rows:
                            self._route(r + b"\n", writers, root, fmt, pool, batch_rows, pipe)
                        continue
                    i, x, line = row.split(b"\x02", 2)
                    k = line.find(b',"timestamp":"')
                    month = line[k + 14 : k + 21]
                    w = writers.get(month)
                    if w is None:
                        w = writers[month] = BatchWriter(root, month.decode(), fmt, pool)
                    w.lines.append(line)
                    w.pending += len(line)
                    w.rows += 1
                    w.ids += i
                    w.ids += b","
                    w.xmins += x
                    w.xmins += b","
                    if w.pending >= CHUNK_BYTES or w.rows >= batch_rows:
                        self._maybe_seal(w, writers, month, pipe)
                if rest:
                    raise ColdkeepError(f"COPY ended inside a row ({len(rest)} bytes without a newline)")
            for month, w in list(writers.items()):
                del writers[month]
                pipe.submit(w)
        except BaseException:
            for w in writers.values():
                w.discard()
            raise

    def _route(
        self,
        row: bytes,
        writers: dict[bytes, BatchWriter],
        root: Path,
        fmt: str,
        pool: Any,
        batch_rows: int,
        pipe: _Pipeline,
    ) -> None:
        i, x, line = row.split(b"\x02", 2)
        k = line.find(b',"timestamp":"')
        month = line[k + 14 : k + 21]
        w = writers.get(month)
        if w is None:
            w = writers[month] = BatchWriter(root, month.decode(), fmt, pool)
        w.lines.append(line)
        w.pending += len(line)
        w.rows += 1
        w.ids += i + b","
        w.xmins += x + b","
        if w.pending >= CHUNK_BYTES or w.rows >= batch_rows:
            self._maybe_seal(w, writers, month, pipe)

    def _maybe_seal(
        self, w: BatchWriter, writers: dict[bytes, BatchWriter], month: bytes, pipe: _Pipeline
    ) -> None:
        if w.pending >= CHUNK_BYTES:
            w.flush_chunk()
        if (
            w.rows >= self.batch_rows
            or w.raw >= MAX_BATCH_BYTES
            or w.size_bound >= MAX_FILE_BYTES
            # a committer has nothing to do: hand it a part-full batch rather than let it idle
            # (when ids do not follow timestamps, every month fills at once and full batches
            # would only be ready near the end of the scan)
            or (w.rows >= self.early_rows and pipe.hungry())
        ):
            del writers[month]
            pipe.submit(w)

    def _commit(self, conn: psycopg.Connection[Any], w: BatchWriter, pipe: _Pipeline) -> None:
        """Make ``w``'s file durable, then record it and mark its rows in one transaction."""
        try:
            w.finish()
        except OSError as exc:
            w.discard()
            if exc.errno == errno.ENOSPC:
                raise StorageFull(str(self.adir.root)) from None
            raise ColdkeepError(
                f"cannot write batch file {self.adir.root / w.rel}: {exc.strerror or exc}"
            ) from None
        except BaseException:
            w.discard()
            raise
        kill_point("renamed")
        self._hook("before_commit", batch_id=str(w.batch_id), file=w.rel, ids=w.ids_literal)
        target = self._target
        try:
            with conn.transaction():
                db.by_id_lookups(conn)
                conn.execute(
                    sql.SQL(
                        "INSERT INTO {ledger} (batch_id, month, file, format, sha256, bytes, row_count, ids, "
                        "ids_sha256, min_id, max_id, created_by) "
                        "SELECT %(batch)s, %(month)s, %(file)s, %(fmt)s, %(sha)s, %(bytes)s, %(rows)s, s.ids, "
                        "encode(sha256(convert_to(array_to_string(s.ids, ','), 'UTF8')), 'hex'), "
                        "s.ids[1], s.ids[cardinality(s.ids)], %(by)s "
                        "FROM (SELECT array_agg(x ORDER BY x) AS ids FROM unnest(%(ids)s::bigint[]) AS x) s"
                    ).format(ledger=target.ledger),
                    {
                        "batch": w.batch_id,
                        "month": w.month,
                        "file": w.rel,
                        "fmt": w.fmt,
                        "sha": w.sha.hexdigest(),
                        "bytes": w.bytes,
                        "rows": w.rows,
                        "ids": w.ids_literal,
                        "by": db.run_label(),
                    },
                )
                # no join (see db.by_id_lookups): index probes for the ids, each row's xmin
                # looked up in a jsonb map {"id": "xmin"}
                cur = conn.execute(
                    sql.SQL(
                        "UPDATE {t} c SET archived = true, archive_file = %(file)s "
                        "WHERE c.id = ANY(%(ids)s::bigint[]) AND c.archived IS NOT TRUE "
                        "AND c.xmin::text = (%(xmins)s::jsonb ->> c.id::text)"
                    ).format(t=target.table),
                    {"file": w.rel, "ids": w.ids_literal, "xmins": db.jsonb_text(w.xmin_map())},
                )
                if cur.rowcount != w.rows:
                    raise _Mismatch(cur.rowcount)
                kill_point("before_commit")
        except _Mismatch as mismatch:
            # rolled back: nothing refers to the file, so it goes now (else the next run would)
            self.adir.remove([w.rel])
            with pipe.lock:
                pipe.mismatched_rows += w.rows - mismatch.updated
            return
        kill_point("committed")
        batch = {
            "batch_id": str(w.batch_id),
            "month": w.month,
            "file": w.rel,
            "rows": w.rows,
            "bytes": w.bytes,
            "raw_bytes": w.raw,
            "sha256": w.sha.hexdigest(),
        }
        with pipe.lock:
            pipe.committed.append(batch)

    # -- repository ------------------------------------------------------------------------------

    def _open_repo(self) -> Any:
        if self._repo is None and self._repo_error is None:
            try:
                from coldkeep.repository.setup import open_repository

                self._repo = open_repository(self.config)
            except ColdkeepError as exc:
                self._repo_error = exc.message
            except OSError as exc:
                self._repo_error = str(exc)
        return self._repo

    def _store(self, conn: psycopg.Connection[Any], target: Target, result: ArchiveResult) -> None:
        result.repo = store_pending(self, conn, target)

    def _purge(self, conn: psycopg.Connection[Any], target: Target, result: ArchiveResult) -> None:
        result.purge = purge(self, conn, target, result)
