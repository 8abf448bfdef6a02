"""Repository locks: shared for readers and for writers that only add, exclusive for deleters.

Which command takes which lock is the table "Locks" in ``docs/design.md``: readers of pack data
(restore, ``repo check``, ``pg verify``/``restore``/``restore-test``, the source of ``repo
copy``) and writers that only add (backup, ``pg backup``, copy's destination) take a shared lock;
whatever deletes (``repo prune``, ``forget``, ``pg expire``, ``rebuild-index``, ``key remove``) an
exclusive one.

A lock is a small JSON object ``locks/<id>`` recording host, pid, user, time, the operation and
whether it is exclusive.  Taking a lock writes it first and then checks for conflicts, so two
processes racing for an exclusive lock both see each other and at least one backs off.  A lock is
*stale* when its process is dead on this host, or when it was not refreshed within
:data:`STALE_AFTER_S` (a holder on another host that vanished).

Waiting
    ``acquire(wait_s)``: on a conflict the caller removes its own document (so it blocks nobody
    while it waits), sleeps (backing off, with jitter) and tries again until ``wait_s`` seconds
    passed; then :class:`~coldkeep.errors.LockHeld` names the holder.  ``wait_s=0``: at once.

Keeping a lock
    A background thread refreshes the document every :data:`REFRESH_S` seconds: it reads it
    (``repo unlock --all``, or a host that judged it stale, removes it: the lock is then lost for
    good) and rewrites it only if it is still the version read (a compare-and-swap: a plain
    rewrite after the check brought back a document removed in between); a failed refresh is logged and retried
    every :data:`RETRY_S` seconds.  :meth:`Lock.ok` is false once the document was removed or no
    refresh succeeded for :data:`LOST_AFTER_S` (a third of the stale time, so the holder stops
    long before another host may take its lock for stale; the thread does not need to run for
    this: a refresh hanging in a dead connection counts too).  Time is the boot clock, which
    counts a suspended machine's sleep.  Holders check at safe points, through
    :func:`check_held` (``Repository.check_lock``): before each pack, index and snapshot is
    written, before each read of pack data, and before prune, forget and expire delete anything;
    a lost lock raises :class:`~coldkeep.errors.LockLost`, so a backup whose lock was lost never
    writes its snapshot and a restore never blames the repository for packs a prune removed.

Re-entry
    A thread holding a lock on a backend that asks for a lock the held one covers (shared under
    shared or exclusive, exclusive under exclusive) gets the held lock back, without a second
    document: ``pg restore`` holds a shared lock and the restore inside it asks for one too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from coldkeep.errors import LockHeld, LockLost, ObjectNotFound
from coldkeep.processes import pid_alive
from coldkeep.repository.format import LOCK_PREFIX
from coldkeep.storage.base import UNCOUNTED_THREAD, Backend
from coldkeep.storage.wrappers import unwrap

log = logging.getLogger("coldkeep.locks")

#: seconds between two refreshes of a held lock
REFRESH_S = 60.0
#: seconds before a failed refresh is tried again
RETRY_S = 10.0
#: a lock not refreshed for this long (by a holder on another host) is stale
STALE_AFTER_S = 30 * 60.0
#: a holder whose refreshes failed for this long stops (well before others may call it stale)
LOST_AFTER_S = STALE_AFTER_S / 3
#: first and longest pause between two tries of a waiting ``acquire``
POLL_S = 0.5
POLL_MAX_S = 5.0


def _now() -> float:
    """Seconds on a clock that counts suspend (``CLOCK_BOOTTIME``), for the lost-lock rule."""
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return time.monotonic()


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
    #: ``/etc/machine-id`` and the kernel's boot id of the holder ("" in locks of older versions)
    machine_id: str = ""
    boot_id: str = ""

    def describe(self) -> str:
        kind = "exclusive" if self.exclusive else "shared"
        return f"{self.operation} ({kind}, pid {self.pid} on {self.host}, since {time.ctime(self.created)})"

    def is_stale(self, now: float | None = None) -> bool:
        """Whether the holder is gone.  On the holder's own machine (same machine id and host
        name; for a lock of an older version without a machine id, the same host name) and the
        same boot: when its pid is dead; same machine, another boot: always (a reboot ended it,
        and its pid may be another process's now).  A lock of another machine — including one
        that merely has the same host name, as cloned VMs do, or the same machine and boot id
        under another host name, as containers of one image do, each in its own pid namespace —
        only when not refreshed for :data:`STALE_AFTER_S`."""
        now = time.time() if now is None else now
        here_machine, here_boot = machine_identity()
        if self.machine_id:  # unknown here: maybe another machine (only the clock decides then)
            same_machine = self.machine_id == here_machine and self.host == socket.gethostname()
        else:  # a lock of an older version, or of a machine without an id
            same_machine = self.host == socket.gethostname()
        if same_machine and self.boot_id and here_boot and self.boot_id != here_boot:
            return True
        if same_machine:
            return not pid_alive(self.pid)  # alive here: never stale, however long it runs
        return now - self.refreshed > STALE_AFTER_S


_identity: tuple[str, str] | None = None


def machine_identity() -> tuple[str, str]:
    """(machine id, boot id) of this machine: ``/etc/machine-id`` (or dbus's copy) and
    ``/proc/sys/kernel/random/boot_id``; "" for what cannot be read.  A host name alone does not
    tell two machines apart (cloned VMs, containers), and a pid means nothing after a reboot."""
    global _identity
    if _identity is None:

        def first(*paths: str) -> str:
            for path in paths:
                try:
                    with open(path, encoding="ascii", errors="replace") as fh:
                        value = fh.read().strip()
                except OSError:
                    continue
                if value:
                    return value
            return ""

        _identity = (
            first("/etc/machine-id", "/var/lib/dbus/machine-id"),
            first("/proc/sys/kernel/random/boot_id"),
        )
    return _identity


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
            machine_id=str(doc.get("machine_id", "")),
            boot_id=str(doc.get("boot_id", "")),
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


# ------------------------------------------------------------------------------------------------
# the locks this process holds

#: the locks this process holds, per innermost backend *object* (weakly: an entry goes with its
#: backend; keyed by ``id()`` it outlived it, and a new backend at the same address — a later
#: repository object — inherited a lock it never took)
_held: weakref.WeakKeyDictionary[Backend, list[Lock]] = weakref.WeakKeyDictionary()
_held_guard = threading.Lock()


def _slot(backend: Backend) -> Backend:
    """Locks are registered under the innermost backend (wrappers around it share them)."""
    return unwrap(backend)


def held_locks(backend: Backend) -> list[Lock]:
    """The locks this process holds on ``backend``, taken by any thread."""
    with _held_guard:
        return list(_held.get(_slot(backend), ()))


def check_held(backend: Backend, *, confirm: bool = False) -> None:
    """Raise :class:`LockLost` if a lock this process holds on ``backend`` was lost.

    ``confirm``: also ask the backend whether each lock document still exists (one ``stat``
    each), for the points after which a removed lock would cost data — before an index or a
    snapshot is written, before prune deletes — rather than wait for the next refresh to see it
    (up to :data:`REFRESH_S`, in which ``repo unlock --all`` and a prune can both run)."""
    for lock in held_locks(backend):
        lock.check(confirm=confirm)


class Lock:
    def __init__(self, backend: Backend, operation: str, exclusive: bool) -> None:
        self.backend = backend
        self.operation = operation
        self.exclusive = exclusive
        self.id = f"{int(time.time())}-{uuid.uuid4().hex[:12]}"
        self.created = time.time()
        self.thread = threading.get_ident()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_ok = _now()  # the last time the document was known to be stored
        self._removed = False
        self._failure = ""  # the last refresh error, while refreshes fail

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
                "machine_id": machine_identity()[0],
                "boot_id": machine_identity()[1],
            }
        ).encode()

    def describe(self) -> str:
        return f"{self.operation} ({'exclusive' if self.exclusive else 'shared'})"

    # -- taking and giving back -------------------------------------------------------------------

    def _conflict(self) -> LockInfo | None:
        """The first live lock ``self`` conflicts with; stale locks seen on the way are removed
        (a dead process's, a previous boot's, another machine's not refreshed for 30 minutes:
        their holders are gone or count them lost, so nothing piles up until `repo unlock`)."""
        for other in list_locks(self.backend):
            if other.id == self.id:
                continue
            if other.is_stale():
                try:
                    self.backend.delete(LOCK_PREFIX + other.id)
                    log.info("removed the stale lock of %s", other.describe())
                except Exception as exc:  # another command may have removed it first; or cannot delete
                    log.debug("could not remove the stale lock %s: %s", other.id, exc)
                continue
            if self.exclusive or other.exclusive:
                return other
        return None

    def acquire(self, wait_s: float = 0.0) -> None:
        """Take the lock, waiting up to ``wait_s`` seconds for conflicting holders to finish;
        :class:`LockHeld` naming one of them after that."""
        deadline = time.monotonic() + max(0.0, wait_s)
        pause = POLL_S
        announced = False
        while True:
            self.backend.put(self.key, self._doc())
            try:
                holder = self._conflict()
            except BaseException:
                self.backend.delete(self.key)
                raise
            if holder is None:
                break
            self.backend.delete(self.key)  # blocks nobody while it waits
            left = deadline - time.monotonic()
            if left <= 0:
                waited = f"; waited {wait_s:g} s" if wait_s > 0 else ""
                raise LockHeld(holder.describe() + waited)
            if not announced:  # once: the holder may change while we wait
                log.warning("%s waits up to %g s for the repository lock held by %s",
                            self.describe(), wait_s, holder.describe())  # fmt: skip
                announced = True
            time.sleep(min(left, pause * random.uniform(0.5, 1.0)))
            pause = min(POLL_MAX_S, pause * 2)
        self._last_ok = _now()
        with _held_guard:
            _held.setdefault(_slot(self.backend), []).append(self)
        self._thread = threading.Thread(target=self._refresh, name=UNCOUNTED_THREAD, daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with _held_guard:
            mine = _held.get(_slot(self.backend), [])
            if self in mine:
                mine.remove(self)
            if not mine:
                _held.pop(_slot(self.backend), None)
        with contextlib.suppress(Exception):
            self.backend.delete(self.key)

    # -- keeping it ------------------------------------------------------------------------------

    def refresh(self) -> bool:
        """One refresh: ``True`` if the document is stored again now.  A removed document makes
        the lock lost for good; other failures are recorded (see :meth:`ok`)."""
        if self._removed:
            return False
        try:
            _, version = self.backend.get_version(self.key)
        except ObjectNotFound:
            return self._lost()
        except Exception as exc:
            return self._failed(exc)
        try:
            # only if it is still the document just read: a plain put after the check would
            # bring back a document removed in between (by `repo unlock --all`, or by a host that
            # took the lock for stale and may be pruning now)
            stored = self.backend.put_if_version(self.key, self._doc(), version)
        except Exception as exc:
            return self._failed(exc)
        if not stored:  # removed (or replaced) since it was read: nobody else writes our document
            return self._lost()
        self._last_ok = _now()
        self._failure = ""
        return True

    def _lost(self) -> bool:
        self._removed = True
        log.error("%s: the lock document %s was removed; stopping", self.describe(), self.key)
        return False

    def _failed(self, exc: Exception) -> bool:
        self._failure = " ".join(str(exc).split()) or type(exc).__name__
        log.warning(
            "%s: refreshing the lock %s failed (%s); retrying", self.describe(), self.key, self._failure
        )
        return False

    def _refresh(self) -> None:
        interval = REFRESH_S
        while not self._stop.wait(interval):
            if self.refresh():
                interval = REFRESH_S
            elif self._removed:
                return
            else:
                interval = min(RETRY_S, REFRESH_S)

    def ok(self) -> bool:
        """Whether the lock still holds: its document was not removed and was stored within the
        last :data:`LOST_AFTER_S` seconds."""
        return not self._removed and _now() - self._last_ok < LOST_AFTER_S

    def check(self, *, confirm: bool = False) -> None:
        """:class:`LockLost` unless :meth:`ok`; ``confirm``: first ``stat`` the document (a
        removed one is lost for good; any other failure is left to the refresh rules)."""
        if confirm and not self._removed:
            try:
                self.backend.stat(self.key)
            except ObjectNotFound:
                self._removed = True
                log.error("%s: the lock document %s was removed; stopping", self.describe(), self.key)
            except Exception:  # unreachable storage: the refresh rules decide
                pass
        if self._removed:
            raise LockLost(
                f"{self.describe()}: its document {self.key} was removed "
                "(by `repo unlock --all`, or by a host that took it for stale)"
            )
        idle = _now() - self._last_ok
        if idle >= LOST_AFTER_S:
            why = f"; last error: {self._failure}" if self._failure else ""
            raise LockLost(f"{self.describe()}: not refreshed for {idle:.0f} s{why}")


def _covering(backend: Backend, exclusive: bool) -> Lock | None:
    """A lock the current thread holds on ``backend`` that covers the one asked for."""
    me = threading.get_ident()
    for lock in held_locks(backend):
        if lock.thread == me and (lock.exclusive or not exclusive):
            return lock
    return None


@contextlib.contextmanager
def locked(backend: Backend, operation: str, *, exclusive: bool, wait_s: float = 0.0) -> Iterator[Lock]:
    """Hold a lock on ``backend`` for the block (see the module doc: waiting, re-entry)."""
    outer = _covering(backend, exclusive)
    if outer is not None:
        outer.check()
        yield outer
        return
    lock = Lock(backend, operation, exclusive)
    lock.acquire(wait_s)
    try:
        yield lock
    finally:
        lock.release()
