"""Repository locks: shared for writers that only add (backup, copy), exclusive for prune.

A lock is a small JSON object ``locks/<id>`` recording host, pid, user, time, the operation and
whether it is exclusive.  Its holder refreshes it every :data:`REFRESH_S` seconds from a
background thread, so a long backup never looks stale.  A lock is *stale* when its process is
dead on this host, or when it was not refreshed within :data:`STALE_AFTER_S` (a holder on another
host that vanished).  Taking a lock writes it first and then checks for conflicts, so two
processes racing for an exclusive lock both see each other and at least one backs off.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from coldkeep.errors import LockHeld, ObjectNotFound
from coldkeep.repository.format import LOCK_PREFIX
from coldkeep.storage.base import Backend

REFRESH_S = 60.0
STALE_AFTER_S = 30 * 60.0


@dataclass(frozen=True)
class LockInfo:
    id: str
    host: str
    pid: int
    user: str
    operation: str
    exclusive: bool
    created: float
    refreshed: float

    def describe(self) -> str:
        kind = "exclusive" if self.exclusive else "shared"
        return f"{self.operation} ({kind}, pid {self.pid} on {self.host}, since {time.ctime(self.created)})"

    def is_stale(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        if self.host == socket.gethostname():
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                pass  # alive, another user's
            return False  # alive here: never stale, however long it runs
        return now - self.refreshed > STALE_AFTER_S


def _parse(key: str, data: bytes) -> LockInfo | None:
    try:
        doc: dict[str, Any] = json.loads(data)
        return LockInfo(
            id=key.removeprefix(LOCK_PREFIX),
            host=str(doc["host"]),
            pid=int(doc["pid"]),
            user=str(doc.get("user", "")),
            operation=str(doc.get("operation", "")),
            exclusive=bool(doc["exclusive"]),
            created=float(doc["created"]),
            refreshed=float(doc["refreshed"]),
        )
    except (ValueError, KeyError, TypeError):
        return None


def list_locks(backend: Backend) -> list[LockInfo]:
    locks = []
    for info in backend.list(LOCK_PREFIX):
        try:
            data = backend.get(info.key)
        except ObjectNotFound:
            continue
        lock = _parse(info.key, data)
        if lock is not None:
            locks.append(lock)
    return locks


def remove_stale(backend: Backend, *, all_locks: bool = False) -> list[LockInfo]:
    removed = []
    for lock in list_locks(backend):
        if all_locks or lock.is_stale():
            backend.delete(LOCK_PREFIX + lock.id)
            removed.append(lock)
    return removed


class Lock:
    def __init__(self, backend: Backend, operation: str, exclusive: bool) -> None:
        self.backend = backend
        self.operation = operation
        self.exclusive = exclusive
        self.id = f"{int(time.time())}-{uuid.uuid4().hex[:12]}"
        self.created = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def key(self) -> str:
        return LOCK_PREFIX + self.id

    def _doc(self) -> bytes:
        try:
            user = os.getlogin()
        except OSError:
            user = str(os.geteuid())
        return json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "user": user,
                "operation": self.operation,
                "exclusive": self.exclusive,
                "created": self.created,
                "refreshed": time.time(),
            }
        ).encode()

    def acquire(self) -> None:
        self.backend.put(self.key, self._doc())
        try:
            for other in list_locks(self.backend):
                if other.id == self.id or other.is_stale():
                    continue
                if self.exclusive or other.exclusive:
                    raise LockHeld(other.describe())
        except BaseException:
            self.backend.delete(self.key)
            raise
        self._thread = threading.Thread(target=self._refresh, name="coldkeep-lock", daemon=True)
        self._thread.start()

    def _refresh(self) -> None:
        while not self._stop.wait(REFRESH_S):
            with contextlib.suppress(Exception):
                self.backend.put(self.key, self._doc())

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with contextlib.suppress(Exception):
            self.backend.delete(self.key)


@contextlib.contextmanager
def locked(backend: Backend, operation: str, *, exclusive: bool) -> Iterator[Lock]:
    lock = Lock(backend, operation, exclusive)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()
