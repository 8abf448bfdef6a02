"""Where each blob lives: index documents in the repository and a local SQLite cache of them.

Index documents (``index/<id>``) list, per pack, the blobs it holds.  A backup writes one index
document after its packs and before its snapshot.  Prune writes a full index of what survives
and then deletes the index documents it replaces.

Memory: lookups go to a SQLite file under the cache directory, not to a Python dict, so RAM does
not grow with the repository.  The cache row per blob is ~90 bytes on disk (32-byte id, pack id,
offsets), i.e. ~90 MB per million chunks (~1 TB of 1 MiB chunks); SQLite's page cache is capped at
64 MiB.  The cache records which index documents it holds and is rebuilt from the repository when
one of them disappears (after a prune) or when ``repo rebuild-cache`` asks.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from coldkeep.errors import IntegrityError
from coldkeep.repository.crypto import KeyRing
from coldkeep.repository.format import INDEX_PREFIX, decode_document, encode_document, object_id
from coldkeep.repository.packer import BlobEntry
from coldkeep.storage.base import Backend

INDEX_AAD = b"coldkeep-index-v1"
#: ids per ``IN (...)`` query (SQLite allows 999 parameters in its most conservative builds)
LOOKUP_BATCH = 500


def encode_index(
    keys: KeyRing, packs: dict[str, list[BlobEntry]], sizes: dict[str, int]
) -> tuple[str, bytes]:
    doc = {
        "version": 1,
        "packs": [
            {"id": pack_id, "size": sizes.get(pack_id, 0), "blobs": [e.to_row() for e in entries]}
            for pack_id, entries in sorted(packs.items())
        ],
    }
    data = encode_document(keys, doc, INDEX_AAD)
    return object_id(data), data


def decode_index(keys: KeyRing, data: bytes, index_id: str) -> Iterator[tuple[str, int, list[BlobEntry]]]:
    what = f"index {index_id}"
    if object_id(data) != index_id:
        raise IntegrityError(f"{what}: content does not match its name")
    doc: Any = decode_document(keys, data, INDEX_AAD, what)
    try:
        for pack in doc["packs"]:
            pack_id = str(pack["id"])
            entries = [
                BlobEntry(bytes.fromhex(i), str(k), pack_id, int(o), int(n), int(r))
                for i, k, o, n, r in pack["blobs"]
            ]
            yield pack_id, int(pack.get("size", 0)), entries
    except (KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(f"{what}: malformed ({exc})") from None


def cache_root() -> Path:
    env = os.environ.get("COLDKEEP_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "coldkeep" if xdg else Path.home() / ".cache" / "coldkeep"


class IndexCache:
    """SQLite cache of every index document of one repository (thread-safe)."""

    def __init__(self, repo_id: str, path: Path | None = None) -> None:
        self.path = path or cache_root() / repo_id / "index.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA cache_size=-65536")  # 64 MiB
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS blobs (
                id BLOB PRIMARY KEY, pack TEXT NOT NULL, kind TEXT NOT NULL,
                offset INTEGER NOT NULL, length INTEGER NOT NULL, raw_length INTEGER NOT NULL
            ) WITHOUT ROWID;
            CREATE INDEX IF NOT EXISTS blobs_pack ON blobs(pack);
            CREATE TABLE IF NOT EXISTS packs (id TEXT PRIMARY KEY, size INTEGER NOT NULL, index_id TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS index_files (id TEXT PRIMARY KEY);
            """
        )

    def close(self) -> None:
        with self._lock:
            self.db.close()

    # -- sync with the repository ----------------------------------------------------------------

    def known_index_files(self) -> set[str]:
        with self._lock:
            return {row[0] for row in self.db.execute("SELECT id FROM index_files")}

    def sync(self, backend: Backend, keys: KeyRing, *, full: bool = False) -> None:
        present = {info.key.removeprefix(INDEX_PREFIX) for info in backend.list(INDEX_PREFIX)}
        known = self.known_index_files()
        if full or (known - present):
            self.clear()
            known = set()
        for index_id in sorted(present - known):
            data = backend.get(INDEX_PREFIX + index_id)
            self.add_index(index_id, decode_index(keys, data, index_id))

    def clear(self) -> None:
        with self._lock:
            self.db.execute("BEGIN")
            self.db.execute("DELETE FROM blobs")
            self.db.execute("DELETE FROM packs")
            self.db.execute("DELETE FROM index_files")
            self.db.execute("COMMIT")

    def add_index(self, index_id: str, packs: Iterable[tuple[str, int, list[BlobEntry]]]) -> None:
        with self._lock:
            self.db.execute("BEGIN")
            try:
                for pack_id, size, entries in packs:
                    self.db.execute("INSERT OR IGNORE INTO packs VALUES (?, ?, ?)", (pack_id, size, index_id))
                    self.db.executemany(
                        "INSERT OR IGNORE INTO blobs VALUES (?, ?, ?, ?, ?, ?)",
                        [(e.id, e.pack, e.kind, e.offset, e.length, e.raw_length) for e in entries],
                    )
                self.db.execute("INSERT OR IGNORE INTO index_files VALUES (?)", (index_id,))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    # -- lookups ---------------------------------------------------------------------------------

    def has(self, blob_id: bytes) -> bool:
        with self._lock:
            return self.db.execute("SELECT 1 FROM blobs WHERE id = ?", (blob_id,)).fetchone() is not None

    def present(self, blob_ids: Iterable[bytes]) -> set[bytes]:
        """Which of ``blob_ids`` the index has (one query per :data:`LOOKUP_BATCH` ids)."""
        ids = list(blob_ids)
        found: set[bytes] = set()
        with self._lock:
            for i in range(0, len(ids), LOOKUP_BATCH):
                batch = ids[i : i + LOOKUP_BATCH]
                marks = ",".join("?" * len(batch))
                found.update(
                    row[0] for row in self.db.execute(f"SELECT id FROM blobs WHERE id IN ({marks})", batch)
                )
        return found

    def get_many(self, blob_ids: Iterable[bytes]) -> dict[bytes, BlobEntry]:
        """The entries of those of ``blob_ids`` the index has (one query per :data:`LOOKUP_BATCH`)."""
        ids = list(dict.fromkeys(blob_ids))
        out: dict[bytes, BlobEntry] = {}
        with self._lock:
            for i in range(0, len(ids), LOOKUP_BATCH):
                batch = ids[i : i + LOOKUP_BATCH]
                marks = ",".join("?" * len(batch))
                rows = self.db.execute(
                    f"SELECT id, pack, kind, offset, length, raw_length FROM blobs WHERE id IN ({marks})",
                    batch,
                ).fetchall()
                for r in rows:
                    out[r[0]] = BlobEntry(r[0], r[2], r[1], r[3], r[4], r[5])
        return out

    def get(self, blob_id: bytes) -> BlobEntry | None:
        with self._lock:
            row = self.db.execute(
                "SELECT pack, kind, offset, length, raw_length FROM blobs WHERE id = ?", (blob_id,)
            ).fetchone()
        if row is None:
            return None
        return BlobEntry(blob_id, row[1], row[0], row[2], row[3], row[4])

    def packs(self) -> dict[str, int]:
        with self._lock:
            return {row[0]: row[1] for row in self.db.execute("SELECT id, size FROM packs")}

    def blobs_in_pack(self, pack_id: str) -> list[BlobEntry]:
        with self._lock:
            rows = self.db.execute(
                "SELECT id, kind, offset, length, raw_length FROM blobs WHERE pack = ? ORDER BY offset",
                (pack_id,),
            ).fetchall()
        return [BlobEntry(r[0], r[1], pack_id, r[2], r[3], r[4]) for r in rows]

    def all_blobs(self) -> Iterator[BlobEntry]:
        with self._lock:
            rows = self.db.execute("SELECT id, kind, pack, offset, length, raw_length FROM blobs").fetchall()
        for r in rows:
            yield BlobEntry(r[0], r[1], r[2], r[3], r[4], r[5])

    def stats(self) -> tuple[int, int]:
        """(blob count, sum of stored blob lengths)."""
        with self._lock:
            row = self.db.execute("SELECT count(*), coalesce(sum(length), 0) FROM blobs").fetchone()
        return int(row[0]), int(row[1])
