"""Connections to the configured PostgreSQL server (passwords only from a passfile/environment)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

from coldkeep.config import PostgresConfig
from coldkeep.errors import PostgresUnreachable, UsageError


def conninfo(dsn: str) -> dict[str, str]:
    try:
        return {k: str(v) for k, v in psycopg.conninfo.conninfo_to_dict(dsn).items() if v is not None}
    except psycopg.ProgrammingError as exc:
        raise UsageError(f"postgres.dsn: {exc}") from None


@contextmanager
def connect(pg: PostgresConfig, dsn: str | None = None, **kwargs: Any) -> Iterator[psycopg.Connection[Any]]:
    params: dict[str, Any] = {"connect_timeout": 10, "autocommit": True, **kwargs}
    if pg.passfile:
        params["passfile"] = pg.passfile
    try:
        conn = psycopg.connect(dsn or pg.dsn, **params)
    except psycopg.OperationalError as exc:
        raise PostgresUnreachable(" ".join(str(exc).split())[:300]) from None
    try:
        yield conn
    finally:
        conn.close()


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")


def table_ident(name: str) -> sql.Composable:
    if not _IDENT.match(name):
        raise UsageError(f"not a plain table name: {name!r}")
    return sql.SQL(".").join(sql.Identifier(part) for part in name.split("."))


def count_rows(conn: psycopg.Connection[Any], tables: Sequence[str]) -> dict[str, int | None]:
    """``count(*)`` per table; ``None`` for a table that does not exist."""
    counts: dict[str, int | None] = {}
    for table in tables:
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
        if not exists or not exists[0]:
            counts[table] = None
            continue
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table_ident(table))).fetchone()
        counts[table] = int(row[0]) if row else None
    return counts
