"""Prefetching WAL for recovery: ``pg wal-fetch --prefetch K``.

PostgreSQL's startup process runs ``restore_command`` for one segment at a time and replays it
before asking for the next, so every fetch (interpreter start, repository read, decompress,
verify) adds to the recovery time.  With ``--prefetch K``, every fetch records the segment asked
for in a *spool* next to the destination, ``pg_wal/.coldkeep-prefetch/<tag>/`` (``.wanted``), and
makes sure the spool's one long-lived :class:`Prefetcher` runs: a detached process that opens the
repository once and keeps the K segments after the newest request fetched, verified and
decompressed in the spool, two at a time, as recovery moves on (as pgBackRest's asynchronous
archive-get does).  A request for a spooled segment is then a re-hash and a rename.

Safety, because a wrong segment served to PostgreSQL could end recovery early:

* a spooled file is named ``<segment>.<blake3 hex of its content>`` and was verified against the
  repository (checksum, header, system identifier) before it was written; it is served only if
  its content still hashes to its name and its header still matches the segment name — else it
  is deleted and the segment is fetched from the repository as usual;
* ``<tag>`` is derived from the config file and the lineage, so two restores into one directory
  never share a spool;
* files appear under their final name only through ``rename`` (readers never see partial files);
  a prefetcher that dies leaves a claim file and at most a ``.tmp`` file, both ignored and
  cleaned up later;
* the prefetcher never creates the spool directory's parents and gives up silently on any
  error: the foreground fetch is always the fallback.

After recovery the spool holds at most K unused files: the ``recovery_end_command`` that ``pg
restore`` writes deletes it (PostgreSQL itself ignores the directory).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

from coldkeep.durable import write_atomic
from coldkeep.postgres import wal
from coldkeep.processes import pid_alive

SPOOL_DIR = ".coldkeep-prefetch"
#: a claim older than this belongs to a prefetcher that died
CLAIM_TTL_S = 120.0
#: the newest request: "<segment> <segment size> <window>", rewritten by every wal-fetch
WANTED_NAME = ".wanted"
#: flock'ed by the one running prefetcher of a spool
LOCK_NAME = ".prefetcher"
#: a prefetcher with no new request for this long stops (recovery paused or over)
IDLE_S = 30.0
#: how often a prefetcher with nothing to do looks for a new request
POLL_S = 0.01
#: a segment that was not archived is asked for again after this long
NOT_ARCHIVED_RETRY_S = 1.0


def _digest(data: bytes) -> str:
    import blake3

    return str(blake3.blake3(data, max_threads=1).hexdigest())


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def for_dest(cls, dest: str | os.PathLike[str], config_path: str, lineage: str | None) -> Spool:
        tag = hashlib.sha256(f"{os.path.abspath(config_path)}\0{lineage or ''}".encode()).hexdigest()[:16]
        return cls(Path(os.path.abspath(dest)).parent / SPOOL_DIR / tag)

    def _entries(self) -> list[str]:
        try:
            return os.listdir(self.root)
        except OSError:
            return []

    def take(self, name: str, dest: str | os.PathLike[str]) -> int | None:
        """Move a verified spooled ``name`` to ``dest`` and return its segment size; ``None``
        when there is none (or it no longer verifies: then it is deleted)."""
        parsed = wal.parse_name(name)
        for entry in self._entries():
            if not entry.startswith(name + "."):
                continue
            path = self.root / entry
            seg_size = None
            try:
                data = path.read_bytes()
                header = wal.check_segment(parsed, data)
                if _digest(data) == entry[len(name) + 1 :]:
                    seg_size = header.seg_size
            except Exception:  # unreadable or not the segment: drop it, fetch from the repository
                seg_size = None
            if seg_size is not None:
                try:
                    os.replace(path, dest)
                    return seg_size
                except OSError:
                    return None
            with contextlib.suppress(OSError):
                path.unlink()
        return None

    def in_flight(self, name: str) -> bool:
        """A live prefetcher is fetching ``name`` (its claim is fresh and its pid exists)."""
        claim = self.root / f".{name}.claim"
        try:
            if time.time() - claim.stat().st_mtime > CLAIM_TTL_S:
                return False
            pid = int(claim.read_text() or "0")
        except (OSError, ValueError):
            return False
        if pid <= 0:
            return True  # being written right now
        return pid_alive(pid)

    def pending(self, name: str) -> bool:
        """Spooled, or being fetched by a live prefetcher."""
        return self.has(name) or self.in_flight(name)

    def wait(self, name: str, timeout: float = CLAIM_TTL_S, poll: float = 0.01) -> None:
        """While a live prefetcher fetches ``name`` (and it is not spooled yet), wait for it:
        cheaper than fetching it a second time."""
        deadline = time.monotonic() + timeout
        while not self.has(name) and self.in_flight(name) and time.monotonic() < deadline:
            time.sleep(poll)

    def clean(self, before: str) -> None:
        """Drop spooled segments that sort before ``before`` (recovery is past them) and stale
        claims and temp files."""
        now = time.time()
        for entry in self._entries():
            path = self.root / entry
            try:
                if entry in (WANTED_NAME, LOCK_NAME):
                    continue
                if entry.startswith("."):
                    if now - path.stat().st_mtime > CLAIM_TTL_S:
                        path.unlink()
                elif entry[:24] < before[:24]:
                    path.unlink()
            except OSError:
                continue

    def want(self, name: str, seg_size: int, count: int) -> None:
        """Record that PostgreSQL asked for segment ``name`` (the prefetcher keeps the ``count``
        after it spooled); a rename, so the prefetcher never reads half a line."""
        write_atomic(self.root / WANTED_NAME, f"{name} {seg_size} {count}".encode(), sync=False)

    def wanted(self) -> tuple[str, int, int] | None:
        try:
            name, seg_size, count = (self.root / WANTED_NAME).read_text().split()
            wal.parse_name(name)
            return name, int(seg_size), max(1, min(int(count), 64))
        except (OSError, ValueError):
            return None

    def prefetcher_running(self) -> bool:
        """A prefetcher holds this spool's lock."""
        import fcntl

        try:
            fd = os.open(self.root / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)  # also releases the shared lock taken just now
        return False

    def has(self, name: str) -> bool:
        return any(e.startswith(name + ".") for e in self._entries())

    def _claim(self, name: str) -> Path | None:
        claim = self.root / f".{name}.claim"
        for _ in range(2):
            try:
                fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
                try:
                    os.write(fd, str(os.getpid()).encode())
                finally:
                    os.close(fd)
                return claim
            except FileExistsError:
                if self.in_flight(name):
                    return None
                try:
                    claim.unlink()
                except OSError:
                    return None
            except OSError:
                return None
        return None

    def fill(self, names: list[str], fetch: Callable[[str], bytes | None]) -> int:
        """Fetch ``names`` in order into the spool (``fetch`` returns verified bytes, or ``None``
        when the segment is not archived: stop there).  Returns how many were spooled."""
        done = 0
        for name in names:
            if not self.root.is_dir():
                break
            if self.has(name):
                continue
            claim = self._claim(name)
            if claim is None:
                continue
            try:
                data = fetch(name)
                if data is None:
                    break
                write_atomic(self.root / f"{name}.{_digest(data)}", data, sync=False)
                done += 1
            finally:
                with contextlib.suppress(OSError):
                    claim.unlink()
        return done


def next_segments(name: str, seg_size: int, count: int) -> list[str]:
    parsed = wal.parse_name(name)
    start = parsed.segno_for(seg_size)
    return [wal.segment_name(parsed.timeline, start + i, seg_size) for i in range(1, count + 1)]


def spawn(work: Callable[[], None]) -> None:
    """Run ``work`` in a detached grandchild (own session, no stdio) and return at once.

    PostgreSQL waits for ``restore_command``'s process, not for this one.  The grandchild leaves
    through ``os._exit``: no atexit handlers, no flushing of buffers it inherited."""
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)
        return
    try:
        os.setsid()
        if os.fork():
            os._exit(0)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        with contextlib.suppress(BaseException):
            work()
    finally:
        os._exit(0)


def refill(spool: Spool, config_path: str, name: str, seg_size: int, count: int, lineage: str | None) -> None:
    """Tell the spool's prefetcher that PostgreSQL asked for ``name`` (it keeps the ``count``
    segments after it spooled), starting one when none runs (best effort: any failure only means
    the next fetch goes to the repository itself)."""
    try:
        spool.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        spool.clean(name)
        spool.want(name, seg_size, count)
        if spool.prefetcher_running():
            return
    except Exception:
        return
    spawn(lambda: Prefetcher(spool, config_path, lineage).run())


class Prefetcher:
    """The one long-lived prefetcher of a spool: opens the repository once and keeps the segments
    after the newest one PostgreSQL asked for (:meth:`Spool.wanted`) spooled, two at a time, as
    recovery moves on (across timeline switches: it follows the timeline of the request).

    It runs while it holds the spool's ``.prefetcher`` lock, and stops when the spool directory
    is gone (``recovery_end_command`` removes it once recovery ends), when no new request came
    for :data:`IDLE_S` seconds (recovery paused or over), or on any error.  A segment that is not
    archived is tried again after :data:`NOT_ARCHIVED_RETRY_S` (the archive may still grow)."""

    def __init__(self, spool: Spool, config_path: str, lineage: str | None) -> None:
        self.spool = spool
        self.config_path = config_path
        self.lineage = lineage
        self.not_archived: dict[str, float] = {}

    def run(self) -> None:
        import fcntl

        fd = os.open(self.spool.root / LOCK_NAME, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return  # another prefetcher has this spool
        try:
            with contextlib.suppress(OSError):  # the spool removed under it: recovery is over
                self._loop()
        finally:
            os.close(fd)

    def _loop(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from coldkeep.lean.config import load_repository_section
        from coldkeep.postgres.archive import NotArchived, read_archived
        from coldkeep.repository.setup import open_repository_section

        with (
            open_repository_section(load_repository_section(self.config_path)) as repo,
            ThreadPoolExecutor(2) as pool,
        ):

            def fetch(segment: str) -> bool:
                """Spool ``segment`` (verified); ``False`` when it is not archived."""
                claim = self.spool._claim(segment)
                if claim is None:
                    return True  # being fetched by someone else
                try:
                    try:
                        data = read_archived(repo, segment, prefix=self.lineage)[2]
                    except NotArchived:
                        self.not_archived[segment] = time.monotonic() + NOT_ARCHIVED_RETRY_S
                        return False
                    now_wanted = self.spool.wanted()
                    if now_wanted is not None and segment <= now_wanted[0]:
                        return True  # asked for meanwhile: served already (or fetched by the asker)
                    write_atomic(self.spool.root / f"{segment}.{_digest(data)}", data, sync=False)
                    return True
                finally:
                    with contextlib.suppress(OSError):
                        claim.unlink()

            last: tuple[str, int, int] | None = None
            idle_since = time.monotonic()
            while self.spool.root.is_dir():
                wanted = self.spool.wanted()
                now = time.monotonic()
                if wanted != last:
                    last, idle_since = wanted, now
                elif now - idle_since > IDLE_S:
                    return
                todo = self._todo(wanted, now) if wanted else []
                if not todo:
                    time.sleep(POLL_S)
                    continue
                for ok in pool.map(fetch, todo[:2]):  # in order: the first is needed first
                    if not ok:
                        break

    def _todo(self, wanted: tuple[str, int, int], now: float) -> list[str]:
        name, seg_size, count = wanted
        todo = []
        for segment in next_segments(name, seg_size, count):
            if self.not_archived.get(segment, 0.0) > now:
                break  # not archived a moment ago: nothing after it either
            if not self.spool.pending(segment):
                todo.append(segment)
        return todo


def serve_spooled(config_path: str, name: str, dest: str, lineage: str | None, count: int) -> bool:
    """Move a verified spooled copy of segment ``name`` to ``dest`` (waiting for a live
    prefetcher that is fetching it) and keep the spool ``count`` segments ahead (best effort: the
    segment is in place); ``False`` when there is none or ``name`` is not a segment: the caller
    fetches it from the repository.  Imports neither click nor the repository modules:
    :mod:`coldkeep.cli.entry` calls it for ``wal-fetch --prefetch K`` before anything else."""
    if wal.parse_name(name).kind != "segment":
        return False
    spool = Spool.for_dest(dest, config_path, lineage)
    before = spool.wanted()
    if before is not None:  # the request first: a prefetcher never spools what is taken now again
        with contextlib.suppress(OSError):
            spool.want(name, before[1], count)
    spool.wait(name)  # being prefetched right now: wait rather than fetch it twice
    seg_size = spool.take(name, dest)
    if seg_size is None:
        return False
    with contextlib.suppress(Exception):  # the segment is in place: refilling is best effort
        refill(spool, config_path, name, seg_size, count, lineage)
    return True


def remove_spool(pg_wal: str | os.PathLike[str]) -> None:
    """Delete ``pg_wal/.coldkeep-prefetch`` (after recovery)."""
    import shutil

    shutil.rmtree(Path(pg_wal) / SPOOL_DIR, ignore_errors=True)
