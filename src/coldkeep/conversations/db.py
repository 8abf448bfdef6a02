"""The database side of the conversation archive: connections, the table, the ledger, the lock.

The table is the spec's (``id, session_id, timestamp, speaker, content, metadata, archived,
archive_file``); coldkeep adds, never removes:

* ``<table>_archive_scan`` — a partial index ``(timestamp) WHERE archived IS NOT TRUE``, so the
  archive scan and its retries read only rows still to archive (rows leave the index once marked);
* ``<table>_archive_ledger`` — one row per batch file: the file, its SHA-256 and size, the row
  count, the batch's exact ids (sorted ``bigint[]``) and their SHA-256, and whether the file is
  stored in the repository and its rows purged.  A row is archived exactly when the ledger says so.

One archive/compact/restore at a time: a session-level advisory lock held by the connection that
commits ledger transactions, so it is released only after that connection's last transaction is
resolved (a killed run's in-flight commit finishes or aborts before the next run may look for
orphan files).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from coldkeep.config import Config, ConversationsConfig, PostgresConfig
from coldkeep.errors import (
    EXIT_LOCKED,
    ColdkeepError,
    ConfigError,
    IntegrityError,
    NotFound,
    PostgresUnreachable,
    UsageError,
)

#: the row as one JSON object, built by PostgreSQL (``c`` is the table's alias)
ROW_JSON = (
    '(SELECT row_to_json(r) FROM (SELECT c.id, c.session_id, c."timestamp", c.speaker, c.content, '
    "c.metadata) r)"
)
#: COPY's CSV mode with delimiter/quote bytes that JSON never contains raw: lines pass untouched
CSV_RAW = "WITH (FORMAT csv, DELIMITER E'\\x02', QUOTE E'\\x01')"

#: column -> accepted ``pg_type.typname`` values
DATA_COLUMNS: dict[str, tuple[str, ...]] = {
    "id": ("int8", "int4", "int2"),
    "session_id": ("uuid", "text", "varchar"),
    "timestamp": ("timestamptz",),
    "speaker": ("text", "varchar", "bpchar"),
    "content": ("text", "varchar"),
    "metadata": ("jsonb",),
}
ARCHIVE_COLUMNS: dict[str, tuple[str, ...]] = {
    "archived": ("bool",),
    "archive_file": ("text", "varchar"),
}
SPEC_DDL = """
CREATE TABLE IF NOT EXISTS {table} (
    id bigserial PRIMARY KEY,
    session_id uuid,
    "timestamp" timestamptz,
    speaker text,
    content text,
    metadata jsonb,
    archived boolean DEFAULT false,
    archive_file text
)
"""
LEDGER_DDL = """
CREATE TABLE IF NOT EXISTS {ledger} (
    batch_id      uuid PRIMARY KEY,
    month         text NOT NULL CHECK (month ~ '^[0-9]{{4}}-[0-9]{{2}}$'),
    file          text NOT NULL UNIQUE,
    format        text NOT NULL,
    kind          text NOT NULL DEFAULT 'batch' CHECK (kind IN ('batch', 'compacted')),
    sha256        text NOT NULL,
    bytes         bigint NOT NULL,
    row_count     integer NOT NULL CHECK (row_count > 0),
    ids           bigint[] NOT NULL,
    ids_sha256    text NOT NULL,
    min_id        bigint NOT NULL,
    max_id        bigint NOT NULL,
    replaces      uuid[],
    created_at    timestamptz NOT NULL DEFAULT now(),
    created_by    text NOT NULL DEFAULT '',
    repo_object   text,
    stored_at     timestamptz,
    purged_at     timestamptz,
    purged_rows   bigint NOT NULL DEFAULT 0,
    kept_rows     bigint NOT NULL DEFAULT 0
)
"""
#: high 32 bits of the advisory lock keys (low 32 bits: the table's oid); "ck" + 1 / 2
LOCK_MAIN = 0x636B0001
LOCK_COMMITTERS = 0x636B0002


class SchemaError(UsageError):
    """The table is not the spec's shape (a column missing or of the wrong type)."""

    hint = "the archive needs the spec's columns; `coldkeep conversations init-schema` adds the archive ones"


class TableNotFound(NotFound):
    template = "table {detail} does not exist"
    hint = "create it with `coldkeep conversations init-schema`, or fix [conversations].table"


class LedgerMissing(UsageError):
    template = "{detail}"
    hint = "run `coldkeep conversations init-schema` once (it only adds what is missing)"


class ArchiveLocked(ColdkeepError):
    exit_code = EXIT_LOCKED
    template = "another conversation archive run holds the lock on {detail}"
    hint = "wait for it to finish (or pass a longer --lock-wait); the lock goes when its session ends"


class ArchiveIntegrityError(IntegrityError):
    hint = "run `coldkeep conversations verify`; each batch file is also a named object in the repository"


def require_section(config: Config) -> None:
    """The conversation commands act only on a config that asks for them (else the defaults would
    point them at /mnt/hdd/conversation_archives on a machine that never configured it)."""
    if not config.conversations.in_use:
        where = f"{config.source}: " if config.source else ""
        raise ConfigError(
            f"{where}the [conversations] section is missing or has enabled = false",
            hint="add [conversations] with at least archive_dir (and [postgres].dsn) to the config",
        )


def connect(pg: PostgresConfig, purpose: str = "conversations") -> psycopg.Connection[tuple[Any, ...]]:
    """An autocommit connection in UTC and UTF-8 (what the archive's JSON and months rely on)."""
    # prepare_threshold=None: never server-prepared, so every statement is planned with its actual
    # parameter values (a batch's ids, the jsonb maps) rather than a generic plan
    kwargs: dict[str, Any] = {
        "autocommit": True,
        "application_name": f"coldkeep {purpose}",
        "prepare_threshold": None,
    }
    if pg.passfile:
        kwargs["passfile"] = pg.passfile
    try:
        conn = psycopg.connect(pg.dsn, **kwargs)
    except psycopg.Error as exc:
        raise PostgresUnreachable(
            str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        ) from None
    conn.execute("SET TimeZone = 'UTC'")
    conn.execute("SET client_encoding = 'UTF8'")
    return conn


@dataclass
class Target:
    """The configured table, resolved: its schema, oid, columns and coldkeep's objects next to it."""

    schema: str
    name: str
    oid: int
    columns: dict[str, str] = field(default_factory=dict)  # name -> typname
    ledger_exists: bool = False
    scan_index_exists: bool = False

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def table(self) -> sql.Composed:
        return sql.SQL(".").join([sql.Identifier(self.schema), sql.Identifier(self.name)])

    @property
    def ledger_name(self) -> str:
        return f"{self.name}_archive_ledger"[:63]

    @property
    def ledger(self) -> sql.Composed:
        return sql.SQL(".").join([sql.Identifier(self.schema), sql.Identifier(self.ledger_name)])

    @property
    def scan_index_name(self) -> str:
        return f"{self.name}_archive_scan"[:63]

    def lock_key(self, kind: int = LOCK_MAIN) -> int:
        return (kind << 32) | self.oid

    def problems(self, *, need_archive_columns: bool = True) -> list[str]:
        """Shape problems, each naming the column (empty: the table is usable)."""
        wanted = dict(DATA_COLUMNS)
        if need_archive_columns:
            wanted.update(ARCHIVE_COLUMNS)
        missing = [c for c in wanted if c not in self.columns]
        out: list[str] = []
        if missing:
            names = ", ".join(f'"{c}"' for c in missing)
            out.append(f"table {self.qualified} has no column{'s' if len(missing) > 1 else ''} {names}")
        for col, types in wanted.items():
            typ = self.columns.get(col)
            if typ is not None and typ not in types:
                out.append(f"column {self.qualified}.{col} is {typ}; the archive needs {' or '.join(types)}")
        return out

    def check(self, *, need_archive_columns: bool = True, need_ledger: bool = True) -> None:
        problems = self.problems(need_archive_columns=need_archive_columns)
        if problems:
            missing = [c for c in {**DATA_COLUMNS, **ARCHIVE_COLUMNS} if c not in self.columns]
            only_archive = bool(missing) and all(c in ARCHIVE_COLUMNS for c in missing)
            hint = "add them with `coldkeep conversations init-schema`" if only_archive else None
            raise SchemaError("; ".join(problems), hint=hint)
        if need_ledger and not self.ledger_exists:
            raise LedgerMissing(f"the archive ledger {self.schema}.{self.ledger_name} does not exist")


def _split_name(table: str) -> tuple[str | None, str]:
    schema, dot, name = table.rpartition(".")
    return (schema if dot else None), name


def resolve(conn: psycopg.Connection[Any], table: str) -> Target | None:
    """Find the configured table (``name`` through the search path, or ``schema.name``)."""
    schema, name = _split_name(table)
    ident = (
        sql.SQL(".").join([sql.Identifier(schema), sql.Identifier(name)]) if schema else sql.Identifier(name)
    )
    row = conn.execute(
        sql.SQL(
            "SELECT c.oid::bigint, n.nspname, c.relname FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass({})"
        ).format(sql.Literal(ident.as_string(conn)))
    ).fetchone()
    if row is None:
        return None
    target = Target(schema=row[1], name=row[2], oid=int(row[0]))
    cols = conn.execute(
        "SELECT a.attname, t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
        "WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped",
        (target.oid,),
    ).fetchall()
    target.columns = {str(c): str(t) for c, t in cols}
    target.ledger_exists = (
        conn.execute("SELECT to_regclass(%s)", (f'"{target.schema}"."{target.ledger_name}"',)).fetchone()
        or (None,)
    )[0] is not None
    target.scan_index_exists = (
        conn.execute(
            "SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE i.indrelid = %s AND c.relname = %s AND i.indisvalid",
            (target.oid, target.scan_index_name),
        ).fetchone()
        is not None
    )
    return target


def open_target(
    conn: psycopg.Connection[Any],
    cfg: ConversationsConfig,
    *,
    need_archive_columns: bool = True,
    need_ledger: bool = True,
) -> Target:
    target = resolve(conn, cfg.table)
    if target is None:
        raise TableNotFound(cfg.table)
    target.check(need_archive_columns=need_archive_columns, need_ledger=need_ledger)
    return target


def init_schema(config: Config) -> dict[str, Any]:
    """Create the spec's table if missing, else add only what is missing (archive columns, the
    scan index, an index on ``id`` if there is none, the ledger).  Never drops or rewrites."""
    require_section(config)
    cfg = config.conversations
    done: list[str] = []
    with connect(config.postgres, "conversations init-schema") as conn:
        target = resolve(conn, cfg.table)
        if target is None:
            schema, name = _split_name(cfg.table)
            ident = (
                sql.SQL(".").join([sql.Identifier(schema), sql.Identifier(name)])
                if schema
                else sql.Identifier(name)
            )
            conn.execute(sql.SQL(SPEC_DDL).format(table=ident))
            done.append(f"created table {cfg.table}")
            target = resolve(conn, cfg.table)
            assert target is not None
        else:
            problems = target.problems(need_archive_columns=False)
            if problems:
                raise SchemaError("; ".join(problems))
            bad = [p for p in target.problems() if "is " in p and "has no column" not in p]
            if bad:
                raise SchemaError("; ".join(bad))
            if "archived" not in target.columns:
                conn.execute(
                    sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS archived boolean DEFAULT false").format(
                        target.table
                    )
                )
                done.append("added column archived")
            if "archive_file" not in target.columns:
                conn.execute(
                    sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS archive_file text").format(target.table)
                )
                done.append("added column archive_file")
        if not _has_id_index(conn, target):
            conn.execute(
                sql.SQL("CREATE INDEX CONCURRENTLY IF NOT EXISTS {} ON {} (id)").format(
                    sql.Identifier(f"{target.name}_archive_id"[:63]), target.table
                )
            )
            done.append("created an index on id")
        if not target.scan_index_exists:
            # an invalid leftover of an interrupted CREATE INDEX CONCURRENTLY is ours to replace
            conn.execute(
                sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(
                    sql.SQL(".").join([sql.Identifier(target.schema), sql.Identifier(target.scan_index_name)])
                )
            )
            conn.execute(
                sql.SQL('CREATE INDEX CONCURRENTLY {} ON {} ("timestamp") WHERE archived IS NOT TRUE').format(
                    sql.Identifier(target.scan_index_name), target.table
                )
            )
            done.append(f"created index {target.scan_index_name}")
        if not target.ledger_exists:
            conn.execute(sql.SQL(LEDGER_DDL).format(ledger=target.ledger))
            conn.execute(
                sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (month)").format(
                    sql.Identifier(f"{target.ledger_name}_month"[:63]), target.ledger
                )
            )
            done.append(f"created ledger {target.schema}.{target.ledger_name}")
        target = resolve(conn, cfg.table)
        assert target is not None
        target.check()
    return {
        "table": target.qualified,
        "ledger": f"{target.schema}.{target.ledger_name}",
        "scan_index": target.scan_index_name,
        "changes": done,
    }


def _has_id_index(conn: psycopg.Connection[Any], target: Target) -> bool:
    row = conn.execute(
        "SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
        "WHERE i.indrelid = %s AND a.attname = 'id' AND i.indisvalid AND i.indpred IS NULL",
        (target.oid,),
    ).fetchone()
    return row is not None


# ------------------------------------------------------------------------------------------------
# the advisory lock


def _holder(conn: psycopg.Connection[Any], key: int) -> str:
    row = conn.execute(
        "SELECT a.pid, a.application_name, coalesce(host(a.client_addr), 'local'), a.backend_start "
        "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.classid::bigint = %s AND l.objid::bigint = %s "
        "LIMIT 1",
        (key >> 32, key & 0xFFFFFFFF),
    ).fetchone()
    if row is None:
        return "a session that has just ended"
    return f"backend pid {row[0]} ({row[1] or 'no application name'}, {row[2]}, since {row[3]:%Y-%m-%d %H:%M:%S})"


def acquire(conn: psycopg.Connection[Any], key: int, *, wait_s: float, shared: bool = False) -> None:
    """Take the session advisory lock ``key`` on ``conn``, waiting up to ``wait_s`` seconds."""
    fn = "pg_advisory_lock_shared" if shared else "pg_advisory_lock"
    try_fn = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
    if wait_s <= 0:
        row = conn.execute(sql.SQL("SELECT {}(%s)").format(sql.Identifier(try_fn)), (key,)).fetchone()
        if row is None or not row[0]:
            raise ArchiveLocked(_holder(conn, key))
        return
    conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{int(wait_s * 1000)}ms")))
    try:
        conn.execute(sql.SQL("SELECT {}(%s)").format(sql.Identifier(fn)), (key,))
    except psycopg.errors.LockNotAvailable:
        raise ArchiveLocked(_holder(conn, key)) from None
    finally:
        conn.execute("RESET lock_timeout")


def release(conn: psycopg.Connection[Any], key: int, *, shared: bool = False) -> None:
    fn = "pg_advisory_unlock_shared" if shared else "pg_advisory_unlock"
    conn.execute(sql.SQL("SELECT {}(%s)").format(sql.Identifier(fn)), (key,))


@contextlib.contextmanager
def archive_lock(
    conn: psycopg.Connection[Any], target: Target, *, wait_s: float, shared: bool = False
) -> Iterator[None]:
    """The run lock.  Exclusive (archive, compact, restore) also proves that no committer
    connection of an earlier run is still alive (it holds ``LOCK_COMMITTERS`` shared)."""
    acquire(conn, target.lock_key(LOCK_MAIN), wait_s=wait_s, shared=shared)
    try:
        if not shared:
            acquire(conn, target.lock_key(LOCK_COMMITTERS), wait_s=wait_s)
            release(conn, target.lock_key(LOCK_COMMITTERS))
        yield
    finally:
        with contextlib.suppress(psycopg.Error):
            release(conn, target.lock_key(LOCK_MAIN), shared=shared)


def by_id_lookups(conn: psycopg.Connection[Any]) -> None:
    """Inside a transaction: make the planner join a batch's ids to the table by primary-key lookups.

    A batch is a few thousand ids out of millions of rows, but right after a run marked (or a purge
    deleted) most of the table, the statistics still describe the table before it.  Joining the
    table to ``unnest(ids, …)`` was seen to run for minutes: the planner put a full scan of the table
    outside a nested loop over the ids (stale statistics said almost no row would qualify).  So the
    per-batch statements never join: ``id = ANY(ids)`` (one index probe per id) and a lookup of each
    row's expected value in a jsonb map; and with sequential scans, hash and merge joins off for the
    transaction the index is the only way in."""
    conn.execute("SET LOCAL enable_seqscan = off")
    conn.execute("SET LOCAL enable_hashjoin = off")
    conn.execute("SET LOCAL enable_mergejoin = off")


def jsonb_text(text: str) -> Jsonb:
    """A parameter typed jsonb (parsed once by the server) from JSON text built by the caller."""
    return Jsonb(text, dumps=lambda obj: str(obj))


def run_label() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def system_identity(conn: psycopg.Connection[Any]) -> dict[str, str]:
    row = conn.execute(
        "SELECT (SELECT system_identifier::text FROM pg_control_system()), current_database()"
    ).fetchone()
    assert row is not None
    return {"system_identifier": str(row[0]), "database": str(row[1])}
