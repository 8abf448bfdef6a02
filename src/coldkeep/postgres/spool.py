"""Asynchronous ``pg wal-push --async``: a background pusher works ahead of PostgreSQL's archiver.

PostgreSQL's archiver runs ``archive_command`` for one segment at a time and waits for it, so a
synchronous push (interpreter start, imports, read, hash, zstd, fsync) caps the archiving rate at
one segment per process lifetime.  In async mode (pgBackRest's ``archive-async`` is the model)
the per-segment command only *acknowledges*, and one long-lived background process (the
*pusher*) does the work, several segments at a time:

* spool directory: ``<pg_wal>/.coldkeep-archive/<tag>/`` next to the WAL file (``<tag>``: a
  hash of the absolute config path, so two configurations never share acknowledgements;
  PostgreSQL and ``pg_basebackup`` ignore sub-directories of ``pg_wal``);
* ``<name>.ok`` — written by the pusher only after ``put_named`` returned, i.e. after the object
  was fsynced and linked into the repository (or an identical one was already there).  It holds
  the size and BLAKE3 digest of the content that was pushed and the identity (device, inode,
  size, mtime) of the config file the pusher used;
* ``<name>.err`` — the pusher's error for a segment the foreground asked for (exit code, message);
* ``<name>.req`` — "PostgreSQL is asking for this one now" (holds the absolute path), pushed
  before anything else;
* ``pusher.lock`` — ``flock``-ed by the one live pusher.

The foreground (:func:`push_async`, stdlib + blake3 + :mod:`coldkeep.durable` only;
:mod:`coldkeep.cli.entry` calls it before anything else is imported): if ``<name>.ok``
matches the file (same size, same BLAKE3 digest of its current content, config unchanged) it
exits 0 at once.  Otherwise it writes ``<name>.req``, makes sure a pusher runs (takes the lock
itself, then forks a detached pusher that inherits the locked descriptor, so at most one runs),
and waits — bounded — for ``<name>.ok`` (exit 0) or ``<name>.err`` (its exit code: PostgreSQL
retries).  While waiting it re-checks the lock, so a pusher that died (``kill -9``) is replaced.

The pusher scans ``<pg_wal>/archive_status/*.ready`` (PostgreSQL's own queue) and the ``.req``
files, pushes up to ``workers`` files at once on threads of one process (one interpreter start,
imports once, one open repository; zstd and BLAKE3 release the GIL), writes the markers, removes
``.ok`` markers once PostgreSQL has renamed ``.ready`` to ``.done``, and exits after
:data:`IDLE_EXIT_S` seconds without work, when its spool directory disappears, or when the config
file changes.  Between scans it sleeps on inotify (a new ``.ready`` or ``.req``, a finished push)
instead of polling, so an idle or lightly loaded pusher costs the database no CPU (polling every
10 ms cost ~30 ms of CPU per second, as much as archiving 1 segment/s).

Why acknowledging is safe: exit 0 happens only for a marker that was created after the object was
durable, and whose digest equals the digest of the file PostgreSQL is asking about right now, so
the acknowledged bytes are in the repository.  Markers are written through a temp file and a
rename (never torn) and are not fsynced: a marker lost in a crash only costs a re-push, which is
an identical duplicate (success); a marker that survives a crash was created after the object's
fsync.  A segment already archived with different content fails in the pusher with
:class:`~coldkeep.postgres.archive.WalExists`; the ``.err`` marker turns that into exit 3 and a
loud error in PostgreSQL's log, as the synchronous path does.  ``kill -9`` of the pusher leaves no
marker for the object it was writing (or a complete object without a marker: the retry is an
identical duplicate); ``kill -9`` of the foreground only makes PostgreSQL retry.
"""

from __future__ import annotations

import os
import sys
import time

from coldkeep.durable import write_atomic

TYPE_CHECKING = False  # typing itself is not imported on the per-segment path
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

SPOOL_DIR = ".coldkeep-archive"
LOCK_NAME = "pusher.lock"
#: the pusher exits after this many seconds without work (``$COLDKEEP_WAL_ASYNC_IDLE`` overrides)
IDLE_EXIT_S = 5.0
IDLE_ENV = "COLDKEEP_WAL_ASYNC_IDLE"
#: the foreground gives up (exit 1, PostgreSQL retries) after waiting this long for its marker
WAIT_TIMEOUT_S = 300.0
#: marker files older than this that belong to nothing are removed
STALE_S = 600.0
MARKER_VERSION = "v1"
EXIT_FAILED = 1


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 2))


def spool_root(wal_path: str, config_path: str) -> str:
    """The spool directory for a WAL file at ``wal_path`` archived with ``config_path``."""
    import hashlib

    tag = hashlib.sha256(os.path.abspath(config_path).encode()).hexdigest()[:16]
    return os.path.join(os.path.dirname(os.path.abspath(wal_path)), SPOOL_DIR, tag)


def config_identity(config_path: str) -> str:
    st = os.stat(config_path)
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def file_digest(path: str) -> tuple[int, str]:
    """(size, BLAKE3 hex) of a file's current content."""
    import blake3

    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return 0, str(blake3.blake3(b"").hexdigest())
        hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
        hasher.update_mmap(path)
        return size, str(hasher.hexdigest())


def _unlink(path: str) -> None:
    try:  # noqa: SIM105 (contextlib is not imported on the per-segment path)
        os.unlink(path)
    except OSError:
        pass


def _write_file(path: str, text: str) -> None:
    """Write ``path`` through a temp file and a rename (readers never see a partial marker)."""
    write_atomic(path, text.encode(), sync=False)


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except (OSError, UnicodeDecodeError):
        return None


def marker_text(size: int, digest: str, config_ident: str, key: str = "") -> str:
    return f"{MARKER_VERSION} {size} {digest} {config_ident} {key}\n"


def acknowledged(root: str, name: str, wal_path: str, config_ident: str) -> bool:
    """Whether ``<name>.ok`` says this very content is durable in this config's repository.  A
    marker that does not match (other content, changed config, unreadable) is removed."""
    marker = os.path.join(root, f"{name}.ok")
    text = _read(marker)
    if text is None:
        return False
    parts = text.split()
    ok = False
    if len(parts) >= 4 and parts[0] == MARKER_VERSION and parts[3] == config_ident:
        try:
            size, digest = file_digest(wal_path)
            ok = str(size) == parts[1] and digest == parts[2]
        except OSError:
            return False  # the file is unreadable: the push will say so
    if not ok:
        _unlink(marker)
    return ok


# ------------------------------------------------------------------------------------------------
# the foreground: once per segment, run by PostgreSQL's archiver


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def push_async(
    config_path: str,
    wal_path: str,
    *,
    workers: int = 0,
    timeout: float = WAIT_TIMEOUT_S,
    verbose: int = 0,
    emit: Callable[[dict[str, Any]], None] | None = None,
) -> int:
    """``wal-push --async``: 0 once a durable marker matches the file, else the pusher's error
    code (1 failed, 3 integrity) or 1 on a timeout."""
    started = time.monotonic()
    path = os.path.abspath(wal_path)
    name = os.path.basename(path)
    config_path = os.path.abspath(config_path)
    workers = workers or default_workers()
    try:
        ident = config_identity(config_path)
        root = spool_root(path, config_path)
        os.makedirs(root, mode=0o700, exist_ok=True)
    except OSError as exc:
        _say(f"error: wal-push {name}: cannot use the async spool: {exc}")
        _say("hint: the directory of the WAL file must be writable by PostgreSQL's OS user")
        return EXIT_FAILED

    def done(how: str) -> int:
        if emit is not None:
            emit({"name": name, "async": True, "acknowledged": how,
                  "duration_s": round(time.monotonic() - started, 4)})  # fmt: skip
        elif verbose:
            _say(f"{name} durable in the repository ({how}) after {time.monotonic() - started:.3f} s")
        _unlink(os.path.join(root, f"{name}.req"))
        return 0

    if acknowledged(root, name, path, ident):
        return done("pushed ahead")
    _unlink(os.path.join(root, f"{name}.err"))  # an old failure: this call is the retry
    _write_file(os.path.join(root, f"{name}.req"), path)
    deadline = started + timeout
    next_lock_check = 0.0
    poll = 0.002
    while True:
        now = time.monotonic()
        if now >= next_lock_check:
            ensure_pusher(root, os.path.dirname(path), config_path, workers)
            next_lock_check = now + 0.25
        if acknowledged(root, name, path, ident):
            return done("pushed now")
        err = _read(os.path.join(root, f"{name}.err"))
        if err is not None:
            _unlink(os.path.join(root, f"{name}.err"))
            _unlink(os.path.join(root, f"{name}.req"))
            code_text, _, message = err.partition("\n")
            code = int(code_text) if code_text.strip().isdigit() else EXIT_FAILED
            for line in message.strip().splitlines():
                _say(line)
            return code or EXIT_FAILED
        if now >= deadline:
            _say(f"error: wal-push {name}: the background pusher did not store it within {timeout:.0f} s")
            _say("hint: PostgreSQL retries; check the repository and the spool " + root)
            return EXIT_FAILED
        time.sleep(poll)
        poll = min(poll * 1.5, 0.01)


def ensure_pusher(root: str, wal_dir: str, config_path: str, workers: int) -> bool:
    """Start a pusher unless one holds the lock; ``True`` if this call started one."""
    import fcntl

    fd = os.open(os.path.join(root, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    # we hold the lock; the detached grandchild inherits the locked open file, so the lock stays
    # held exactly as long as the pusher lives (kill -9 releases it)
    pid = os.fork()
    if pid:
        os.close(fd)
        os.waitpid(pid, 0)
        return True
    try:
        os.setsid()
        if os.fork():
            os._exit(0)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # for operators (and the crash tests)
        devnull = os.open(os.devnull, os.O_RDWR)
        for target in (0, 1, 2):
            os.dup2(devnull, target)
        keep = sorted({0, 1, 2, fd})
        for low, high in zip(keep, [*keep[1:], 65536], strict=True):
            if high > low + 1:
                os.closerange(low + 1, high)
        try:  # noqa: SIM105
            run_pusher(root, wal_dir, config_path, workers)
        except BaseException:
            pass
    finally:
        os._exit(0)


# ------------------------------------------------------------------------------------------------
# the background pusher


def pusher_pid(root: str | os.PathLike[str]) -> int | None:
    """The pid of the live pusher of ``root``, or ``None``."""
    import fcntl

    try:
        fd = os.open(os.path.join(root, LOCK_NAME), os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else None
        return None
    finally:
        os.close(fd)


def _idle_exit_s() -> float:
    try:
        return float(os.environ.get(IDLE_ENV, "") or IDLE_EXIT_S)
    except ValueError:
        return IDLE_EXIT_S


def _ready_names(status_dir: str) -> list[str]:
    try:
        entries = os.listdir(status_dir)
    except OSError:
        return []
    names = [e[:-6] for e in entries if e.endswith(".ready")]
    # PostgreSQL's archiver takes timeline history files first, then WAL order
    return sorted(names, key=lambda n: (not n.endswith(".history"), n))


class Pusher:
    """Pushes ``.req`` and ``.ready`` files with ``workers`` threads; see the module docstring."""

    def __init__(
        self,
        root: str,
        wal_dir: str,
        config_ident: str,
        push: Callable[[str, str], tuple[int, str, str]],
        workers: int,
    ) -> None:
        self.root = root
        self.wal_dir = wal_dir
        self.status_dir = os.path.join(wal_dir, "archive_status")
        self.config_ident = config_ident
        self.push = push  # (name, path) -> (size, blake3 hex, key); raises on failure
        self.workers = max(1, workers)
        self.failed_ahead: set[str] = set()

    def _requests(self, entries: list[str]) -> dict[str, str]:
        reqs: dict[str, str] = {}
        for entry in entries:
            if entry.endswith(".req") and not entry.startswith("."):
                text = _read(os.path.join(self.root, entry))
                if text:
                    reqs[entry[:-4]] = text.strip()
        return reqs

    def _clean(self, entries: list[str], ready: set[str], reqs: dict[str, str]) -> None:
        now = time.time()
        for entry in entries:
            path = os.path.join(self.root, entry)
            try:
                if entry.endswith(".ok") and not entry.startswith("."):
                    name = entry[:-3]
                    if name not in ready and name not in reqs:
                        os.unlink(path)  # PostgreSQL has renamed .ready to .done (or gave it up)
                elif entry != LOCK_NAME and now - os.stat(path).st_mtime > STALE_S:
                    os.unlink(path)  # stale temp files, old errors and requests
            except OSError:
                continue

    def _one(self, name: str, path: str, requested: bool) -> None:
        try:
            size, digest, key = self.push(name, path)
        except BaseException as exc:
            code, message = _error_of(exc, name)
            if requested or os.path.exists(os.path.join(self.root, f"{name}.req")):
                _write_file(os.path.join(self.root, f"{name}.err"), f"{code}\n{message}\n")
            else:
                self.failed_ahead.add(name)
            return
        _write_file(os.path.join(self.root, f"{name}.ok"), marker_text(size, digest, self.config_ident, key))

    def run(self, config_path: str, idle_exit: float, poll: float = 0.01) -> None:
        """Push until idle for ``idle_exit`` s.  Between scans it sleeps until something happens
        (:class:`_Waker`: a file appears in the spool or in ``archive_status``, a push ends), or
        for :data:`RESCAN_S` at most; without inotify it scans every ``poll`` seconds."""
        from concurrent.futures import Future, ThreadPoolExecutor

        inflight: dict[str, Future[None]] = {}
        last_work = time.monotonic()
        last_clean = 0.0
        waker = _Waker([self.root, self.status_dir])
        try:
            with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="wal-push") as pool:
                while True:
                    waker.clear()
                    if not os.path.isdir(self.root):
                        break
                    try:
                        if config_identity(config_path) != self.config_ident:
                            break  # a new pusher starts with the new configuration
                    except OSError:
                        break
                    for name in [n for n, f in inflight.items() if f.done()]:
                        inflight.pop(name).result()
                    entries = os.listdir(self.root)
                    present = set(entries)
                    reqs = self._requests(entries)
                    ready = _ready_names(self.status_dir)
                    now = time.monotonic()
                    if now - last_clean > 1.0:
                        self._clean(entries, set(ready), reqs)
                        last_clean = now
                    self.failed_ahead -= set(reqs)
                    for name in [*sorted(reqs), *ready]:
                        if len(inflight) >= self.workers:
                            break
                        if name in inflight or f"{name}.ok" in present or f"{name}.err" in present:
                            continue
                        if name in self.failed_ahead:
                            continue
                        path = reqs.get(name) or os.path.join(self.wal_dir, name)
                        future = pool.submit(self._one, name, path, name in reqs)
                        future.add_done_callback(waker.wake)
                        inflight[name] = future
                    if inflight:
                        last_work = time.monotonic()
                    elif time.monotonic() - last_work > idle_exit:
                        break
                    waker.wait(poll if not waker.events else min(RESCAN_S, max(poll, idle_exit)))
                for future in inflight.values():
                    future.result()
        finally:
            waker.close()


#: with inotify, the pusher rescans at least this often anyway (a missed event costs this much)
RESCAN_S = 1.0
_IN_CLOSE_WRITE, _IN_MOVED_TO, _IN_CREATE = 0x8, 0x80, 0x100


class _Waker:
    """Sleep until a file is created in (or renamed into) one of ``dirs``, :meth:`wake` is
    called (a push ended), or a timeout; inotify through ``ctypes`` on Linux.  ``events`` is
    false where inotify is unavailable: the caller then polls."""

    def __init__(self, dirs: list[str]) -> None:
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._inotify = -1
        self.events = False
        try:
            import ctypes
            import ctypes.util

            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            if fd < 0:
                return
            mask = _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_CREATE
            if all(libc.inotify_add_watch(fd, d.encode(), mask) >= 0 for d in dirs):
                self._inotify, self.events = fd, True
            else:
                os.close(fd)
        except (OSError, AttributeError):
            return

    def wake(self, _future: object = None) -> None:
        try:  # noqa: SIM105
            os.write(self._wake_w, b"x")
        except OSError:  # the pipe is full: a wake-up is pending anyway
            pass

    def clear(self) -> None:
        for fd in (self._wake_r, self._inotify):
            if fd < 0:
                continue
            try:
                while os.read(fd, 65536):
                    pass
            except OSError:  # BlockingIOError: drained
                pass

    def wait(self, timeout: float) -> None:
        import select

        fds = [fd for fd in (self._wake_r, self._inotify) if fd >= 0]
        select.select(fds, [], [], timeout)

    def close(self) -> None:
        for fd in (self._wake_r, self._wake_w, self._inotify):
            if fd >= 0:
                os.close(fd)
        self._inotify = -1


def _error_of(exc: BaseException, name: str) -> tuple[int, str]:
    from coldkeep.errors import ColdkeepError

    if isinstance(exc, ColdkeepError):
        lines = f"error: wal-push {name}: {exc.message}"
        if exc.hint:
            lines += f"\nhint: {exc.hint}"
        return exc.exit_code or EXIT_FAILED, lines
    return EXIT_FAILED, f"error: wal-push {name}: internal error: {type(exc).__name__}: {exc}"


def run_pusher(root: str, wal_dir: str, config_path: str, workers: int) -> None:
    """The pusher's body (in the detached process): open the repository once, push until idle."""
    import blake3

    from coldkeep.lean.config import load_repository_section
    from coldkeep.postgres.archive import read_wal_file, wal_push
    from coldkeep.repository.setup import open_repository_section

    ident = config_identity(config_path)
    try:
        repo = open_repository_section(load_repository_section(config_path))
    except BaseException as exc:  # config or repository unusable: tell every waiting foreground
        for entry in os.listdir(root):
            if entry.endswith(".req") and not entry.startswith("."):
                code, message = _error_of(exc, entry[:-4])
                _write_file(os.path.join(root, entry[:-4] + ".err"), f"{code}\n{message}\n")
        raise
    with repo:

        def push(name: str, path: str) -> tuple[int, str, str]:
            data = read_wal_file(path)
            digest = str(blake3.blake3(data, max_threads=1).hexdigest())  # = format.digest
            result = wal_push(repo, path, name=name, data=data, blake3_hex=digest)
            return len(data), digest, result.key

        Pusher(root, wal_dir, ident, push, workers).run(config_path, _idle_exit_s())
