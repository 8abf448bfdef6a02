"""The snapshot catalog: a local SQLite cache of the repository's snapshot documents.

Listing snapshots used to read and decrypt every snapshot document each time (one request per
snapshot: a thousand checkpoints, a thousand GETs from S3).  The catalog keeps every document it
has read, verified, next to the index cache (``<cache dir>/<repository id>/snapshots.sqlite``),
with the columns services query by (kind, tags, host, time); a listing then reads only the
documents it has not seen (see :func:`coldkeep.repository.snapshot.list_snapshots`):

* it lists ``snapshots/`` (one request), reads the documents whose id it lacks or whose stored
  object's size or modification time changed since it read them (a document rewritten or
  damaged in place is read again, and a damaged one is skipped with the usual warning and
  dropped from the catalog), and drops the ids no longer listed (forgotten, expired);
* it answers from the catalog.

It is a cache: everything in it comes from the repository, and deleting the file (or ``repo
rebuild-cache``) only costs one full read at the next listing.  Snapshot ids name their content,
so a row is right for every repository that lists that id (a copy of the repository shares the
repository id, hence the file).  Whoever can read the cache directory (0700, the file 0600) can
read the snapshots' metadata, as they can the index cache's: in an encrypted repository that is
plaintext on the local disk, never in the repository.  Text is stored JSON-encoded (ASCII), so
names that are not UTF-8 survive.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from coldkeep import clock
from coldkeep.repository.index import cache_root

if TYPE_CHECKING:
    from coldkeep.repository.snapshot import Snapshot

#: bumped when the layout changes: an older file is emptied and filled again
SCHEMA_VERSION = 1
#: how long a writer waits for another process's transaction on the file
BUSY_TIMEOUT_S = 30.0

#: ``(size, mtime)`` of a snapshot object as listed: a cached row is used while they match
Stamp = tuple[int, float]


def _text(value: object) -> str:
    return json.dumps(value, sort_keys=True)


class SnapshotCatalog:
    """SQLite cache of one repository's snapshot documents (thread-safe)."""

    def __init__(self, repo_id: str, path: Path | None = None) -> None:
        self.path = path or cache_root() / repo_id / "snapshots.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        self._lock = threading.Lock()
        self.db = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_S
        )
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            if self.db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                self._create()
        except BaseException:
            self.db.close()
            raise

    def _create(self) -> None:
        self.db.executescript(
            f"""
            BEGIN;
            DROP TABLE IF EXISTS snapshots;
            DROP TABLE IF EXISTS tags;
            CREATE TABLE snapshots (
                id TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime REAL NOT NULL,
                time_key REAL NOT NULL, kind TEXT NOT NULL, host TEXT NOT NULL, doc TEXT NOT NULL
            ) WITHOUT ROWID;
            CREATE INDEX snapshots_kind ON snapshots(kind, time_key);
            CREATE TABLE tags (
                id TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (id, key)
            ) WITHOUT ROWID;
            CREATE INDEX tags_pair ON tags(key, value);
            PRAGMA user_version = {SCHEMA_VERSION};
            COMMIT;
            """
        )

    def close(self) -> None:
        with self._lock:
            self.db.close()

    def stamps(self) -> dict[str, Stamp]:
        """``id -> (size, mtime)`` of every cached document, as listed when it was read."""
        with self._lock:
            return {
                row[0]: (row[1], row[2]) for row in self.db.execute("SELECT id, size, mtime FROM snapshots")
            }

    def update(self, add: Iterable[tuple[Snapshot, Stamp]], remove: Iterable[str]) -> None:
        """Cache the verified documents ``add`` (each with its object's stamp) and drop the ids
        ``remove``, in one transaction."""
        rows: list[tuple[str, int, float, float, str, str, str]] = []
        tags: list[tuple[str, str, str]] = []
        for snap, (size, mtime) in add:
            when = clock.parse_timestamp(snap.time).timestamp()
            doc = json.dumps(snap.to_doc(), separators=(",", ":"))
            rows.append((snap.id, size, mtime, when, _text(snap.kind), _text(snap.host), doc))
            tags.extend((snap.id, _text(k), _text(v)) for k, v in snap.tags.items())
        gone = [(i,) for i in remove] + [(row[0],) for row in rows]
        if not gone:
            return
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.executemany("DELETE FROM snapshots WHERE id = ?", gone)
                self.db.executemany("DELETE FROM tags WHERE id = ?", gone)
                self.db.executemany("INSERT INTO snapshots VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
                self.db.executemany("INSERT INTO tags VALUES (?, ?, ?)", tags)
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def clear(self) -> None:
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("DELETE FROM snapshots")
            self.db.execute("DELETE FROM tags")
            self.db.execute("COMMIT")

    def query(
        self,
        *,
        kind: str | None = None,
        tags: Mapping[str, str] | None = None,
        host: str | None = None,
    ) -> list[Snapshot]:
        """The cached snapshots of ``kind`` with every tag of ``tags`` (and on ``host``), in no
        particular order."""
        from coldkeep.repository.snapshot import Snapshot

        where: list[str] = []
        args: list[str] = []
        if kind is not None:
            where.append("kind = ?")
            args.append(_text(kind))
        if host is not None:
            where.append("host = ?")
            args.append(_text(host))
        for key, value in (tags or {}).items():
            where.append("EXISTS (SELECT 1 FROM tags t WHERE t.id = s.id AND t.key = ? AND t.value = ?)")
            args.extend((_text(key), _text(value)))
        sql = "SELECT id, doc FROM snapshots s" + (" WHERE " + " AND ".join(where) if where else "")
        with self._lock:
            rows = self.db.execute(sql, args).fetchall()
        return [Snapshot.from_doc(row[0], json.loads(row[1])) for row in rows]

    def count(self) -> int:
        with self._lock:
            return int(self.db.execute("SELECT count(*) FROM snapshots").fetchone()[0])
