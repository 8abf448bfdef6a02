"""Prefetching WAL for recovery: ``pg wal-fetch --prefetch K``.

PostgreSQL's startup process runs ``restore_command`` for one segment at a time and replays it
before asking for the next, so every fetch (interpreter start, repository read, decompress,
verify) adds to the recovery time.  With ``--prefetch K``, every fetch records the segment asked
for in a *spool* next to the destination, ``pg_wal/.coldkeep-prefetch/<tag>/`` (``.wanted``), and
makes sure the spool's one long-lived :class:`~coldkeep.postgres.prefetcher.Prefetcher` runs: a detached process that opens the
repository once and keeps the K segments after the newest request fetched, verified and
decompressed in the spool, two at a time, as recovery moves on (as pgBackRest's asynchronous
archive-get does).  A request for a spooled segment is then one BLAKE3 pass over the file (read
through ``mmap``: no copy) and a rename, in a process that imports nothing but ``os``, ``time``
and ``blake3`` (:func:`serve_spooled`, called by :mod:`coldkeep.cli.entry` before anything else).

Safety, because a wrong segment served to PostgreSQL could end recovery early:

* the spool belongs to one recovery: ``<tag>`` is derived from the config file, the lineage and
  the system identifier in the data directory's ``global/pg_control`` (when ``%p`` is in a data
  directory's ``pg_wal``), so two restores into one directory, or a spool left by the recovery of
  another cluster, never share it;
* a spooled file is named ``<segment>.<digest>``; the prefetcher writes it only after verifying
  the segment against the repository (chunk checksums, header, the lineage's system identifier)
  and, when the data directory's system identifier is known, after checking the header carries
  that one too.  The digest is BLAKE3 over ``coldkeep-prefetch\\0<system identifier>\\0<segment>\\0``
  and the content's BLAKE3 (the one the repository verified the segment against: spooling
  hashes nothing again), so it binds the bytes to the segment name and the cluster: a damaged,
  truncated, renamed or foreign file does not match its name and is deleted instead of served
  (the segment is then fetched from the repository as usual);
* files appear under their final name only through ``rename`` (readers never see partial files);
  a prefetcher that dies leaves a claim file and at most a ``.tmp`` file, both ignored and
  cleaned up later;
* the prefetcher never creates the spool directory's parents and gives up silently on any
  error: the foreground fetch is always the fallback, and only it answers "not archived" (exit 1).

After recovery the spool holds at most K unused files: the ``recovery_end_command`` that ``pg
restore`` writes deletes it (PostgreSQL itself ignores the directory).
"""

from __future__ import annotations

import os
import time

import blake3

from coldkeep.durable import write_atomic
from coldkeep.processes import pid_alive

TYPE_CHECKING = False  # not ``typing``'s: the spool-hit path imports neither it nor ``collections``
if TYPE_CHECKING:
    from collections.abc import Callable

    from coldkeep.repository.repository import Repository

SPOOL_DIR = ".coldkeep-prefetch"
#: a claim older than this belongs to a prefetcher that died
CLAIM_TTL_S = 120.0
#: the newest request: "<segment> <segment size> <window>", rewritten by every wal-fetch
WANTED_NAME = ".wanted"
#: flock'ed by the one running prefetcher of a spool
LOCK_NAME = ".prefetcher"
#: the spool's subdirectory holding the one segment PostgreSQL will ask for next, under its plain
#: name, for the shell fast path of ``restore_command`` (:func:`ready_fast_path`)
READY_DIR = "ready"
#: test hook (:func:`coldkeep.testhooks.kill_point`): SIGKILL the prefetcher at ``fetched`` (a
#: segment read and verified, its claim held, nothing written) or ``spooled`` (the file renamed
#: into place, the claim not yet removed)
KILL_ENV = "COLDKEEP_PREFETCH_KILL_AT"

_HEX = frozenset("0123456789ABCDEF")


def is_segment_name(name: str) -> bool:
    """``name`` is a WAL segment's name (24 upper-case hex digits), checked without
    :mod:`coldkeep.postgres.wal` (the spool-hit path does not import it)."""
    return len(name) == 24 and _HEX.issuperset(name)


def control_system_identifier(dest: str | os.PathLike[str]) -> int:
    """The system identifier in ``<data directory>/global/pg_control`` when ``dest`` (``%p``) is in
    a data directory's ``pg_wal``; 0 when it is not or that cannot be read.  ``ControlFileData``
    starts with the 64-bit ``system_identifier`` (read little-endian, as
    :mod:`coldkeep.postgres.wal` reads WAL page headers)."""
    pg_wal = os.path.dirname(os.path.abspath(dest))
    if os.path.basename(pg_wal) != "pg_wal":
        return 0
    try:
        fd = os.open(
            os.path.join(os.path.dirname(pg_wal), "global", "pg_control"), os.O_RDONLY | os.O_CLOEXEC
        )
    except OSError:
        return 0
    try:
        raw = os.pread(fd, 8, 0)
    except OSError:
        return 0
    finally:
        os.close(fd)
    return int.from_bytes(raw, "little") if len(raw) == 8 else 0


def _cksum(path: str) -> bytes | None:
    """POSIX ``cksum`` of ``path`` (``"<CRC-32> <size>\\n"``, what the fast path compares); ``None``
    when it cannot be run."""
    import subprocess

    try:
        with open(path, "rb") as fh:
            return subprocess.run(["cksum"], stdin=fh, capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def _unlink(path: str) -> None:
    try:  # noqa: SIM105 (no contextlib on the per-segment path)
        os.unlink(path)
    except OSError:
        pass


class Spool:
    """One recovery's spool directory (``root``, a plain path string) for the cluster with
    ``system_identifier`` (0: unknown)."""

    def __init__(self, root: str, system_identifier: int = 0) -> None:
        self.root = root
        self.system_identifier = system_identifier

    @classmethod
    def for_dest(cls, dest: str | os.PathLike[str], config_path: str, lineage: str | None) -> Spool:
        sysid = control_system_identifier(dest)
        identity = f"{os.path.abspath(config_path)}\0{lineage or ''}\0{sysid}".encode()
        tag = blake3.blake3(identity).hexdigest()[:16]
        return cls(os.path.join(os.path.dirname(os.path.abspath(dest)), SPOOL_DIR, tag), sysid)

    def path(self, entry: str) -> str:
        return os.path.join(self.root, entry)

    def entry_digest(self, name: str, content: bytes) -> str:
        """The digest in the name of a spooled copy of segment ``name`` whose content has the
        BLAKE3 digest ``content``: BLAKE3 of ``coldkeep-prefetch\\0<system identifier>\\0<name>\\0``
        and ``content`` (bound to the name and the cluster, not only to the bytes)."""
        bound = f"coldkeep-prefetch\0{self.system_identifier}\0{name}\0".encode() + content
        return str(blake3.blake3(bound).hexdigest())

    def digest(self, name: str, data: bytes | memoryview) -> str:
        """The digest a spooled copy of segment ``name`` with content ``data`` is named with."""
        return self.entry_digest(name, blake3.blake3(data, max_threads=1).digest())

    def _verifies(self, name: str, entry: str) -> int | None:
        """The size of spool file ``entry`` when its content hashes to its name, else ``None``."""
        path = self.path(entry)
        try:
            size = os.stat(path).st_size
            if not size:
                return None
            hasher = blake3.blake3(max_threads=1)
            hasher.update_mmap(path)  # no copy: the page cache is hashed in place
            return size if self.entry_digest(name, hasher.digest()) == entry[len(name) + 1 :] else None
        except Exception:  # unreadable, vanished: not served
            return None

    def _entries(self) -> list[str]:
        try:
            return os.listdir(self.root)
        except OSError:
            return []

    def take(self, name: str, dest: str | os.PathLike[str]) -> int | None:
        """Move a verified spooled ``name`` to ``dest`` and return its segment size; ``None``
        when there is none (or it no longer verifies: then it is deleted)."""
        for entry in self._entries():
            if not entry.startswith(name + "."):
                continue
            seg_size = self._verifies(name, entry)
            if seg_size is not None:
                try:
                    os.replace(self.path(entry), dest)
                except OSError:
                    return None
                self.unready(name)  # the same file: never served a second time
                return seg_size
            _unlink(self.path(entry))
            self.unready(name)  # the same (damaged) file, if it was made ready
        return None

    def ready_path(self, name: str) -> str:
        return os.path.join(self.root, READY_DIR, name)

    def place(self, name: str) -> bool:
        """Make the spooled segment ``name`` ready for the shell fast path: its POSIX ``cksum``
        (CRC-32 and size, what the fast path checks again when it serves the file) is taken
        first, then the spool file is verified again (BLAKE3, bound to the name and the cluster),
        then the checksum is written as ``ready/<name>.crc`` and the file hard-linked as
        ``ready/<name>`` (one file, two names: whichever path takes it, the other name is
        dropped).  A byte that changes after the BLAKE3 check fails the fast path's ``cksum``:
        it falls through to ``wal-fetch``, which re-hashes and refetches.  ``False`` when it is
        not spooled or no longer verifies (then it is deleted and not made ready), or when
        ``cksum`` cannot be run (no fast path: every request takes the foreground path)."""
        for entry in self._entries():
            if not entry.startswith(name + "."):
                continue
            path = self.path(entry)
            crc = _cksum(path)
            if crc is None:
                return False
            if self._verifies(name, entry) is None:
                _unlink(path)
                return False
            try:
                os.makedirs(os.path.join(self.root, READY_DIR), mode=0o700, exist_ok=True)
                write_atomic(self.ready_path(name) + ".crc", crc, sync=False)
                os.link(path, self.ready_path(name))
            except FileExistsError:
                return True
            except OSError:
                return False
            return True
        return False

    def stream_in(
        self,
        repo: Repository,
        name: str,
        lineage: str | None,
        temp: str,
        owner: tuple[int, int] | None = None,
    ) -> bytes | None:
        """Stream archived segment ``name`` from ``repo`` into ``temp``, a new file of this spool
        (created exclusively, mode 0600, given to ``owner``), through one reused buffer, verified as
        ``wal-fetch`` verifies it (chunk checksums, size, header, the lineage's system identifier).
        Returns the content digest the bytes verified against; ``None`` when this spool's system
        identifier is known and the segment's header names another.  Raises what the read raises
        (:class:`~coldkeep.errors.NotArchived`, any ``ColdkeepError``, ``OSError``).  In every case
        ``temp`` is the caller's to rename or delete (it may hold part of a segment)."""
        from coldkeep.postgres.archive import stream_archived

        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            if owner is not None:
                os.fchown(fd, *owner)

            def write(piece: memoryview) -> None:
                while piece:
                    piece = piece[os.write(fd, piece) :]

            _, content, _, header = stream_archived(repo, name, write, prefix=lineage)
        finally:
            os.close(fd)
        sysid = self.system_identifier
        if sysid and (header is None or header.system_identifier != sysid):
            return None
        return content

    def stage_ready(self, name: str, temp: str, content: bytes, owner: tuple[int, int] | None = None) -> bool:
        """Make ``temp`` (a file in this spool holding segment ``name``, whose content's BLAKE3
        digest the repository verified as ``content``) ready for the shell fast path, with no
        spool name: its ``cksum`` first, then BLAKE3 again against ``content`` (the same order as
        :meth:`place`), then ``ready/<name>.crc`` and a rename of ``temp`` to ``ready/<name>``.
        ``pg restore`` stages the backup's own first segments this way, so even the first
        requests of a recovery take no interpreter.  ``False`` (``temp`` deleted, nothing made
        ready) when ``cksum`` cannot be run or the file no longer hashes to ``content``."""
        try:
            crc = _cksum(temp)
            if crc is None:
                return False
            hasher = blake3.blake3(max_threads=1)
            hasher.update_mmap(temp)
            if hasher.digest() != content:
                return False
            ready = os.path.join(self.root, READY_DIR)
            os.makedirs(ready, mode=0o700, exist_ok=True)
            if owner is not None:
                os.chown(ready, *owner)
            write_atomic(self.ready_path(name) + ".crc", crc, sync=False, owner=owner)
            os.rename(temp, self.ready_path(name))
            return True
        except OSError:
            return False
        finally:
            _unlink(temp)  # gone after the rename

    def unready(self, name: str) -> None:
        """Drop ``ready/<name>`` and its checksum."""
        _unlink(self.ready_path(name))
        _unlink(self.ready_path(name) + ".crc")

    def taken(self, name: str) -> bool:
        """``ready/<name>`` was moved away (by the shell fast path) while its spool file is still
        here: PostgreSQL has it.  The spool file is then dropped."""
        if os.path.lexists(self.ready_path(name)):
            return False
        _unlink(self.ready_path(name) + ".crc")
        gone = False
        for entry in self._entries():
            if entry.startswith(name + "."):
                _unlink(self.path(entry))
                gone = True
        return gone

    def in_flight(self, name: str) -> bool:
        """A live prefetcher is fetching ``name`` (its claim is fresh and its pid exists)."""
        claim = self.path(f".{name}.claim")
        try:
            if time.time() - os.stat(claim).st_mtime > CLAIM_TTL_S:
                return False
            with open(claim, "rb") as fh:
                pid = int(fh.read() or b"0")
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
        """Drop spooled segments that sort before ``before`` (recovery is past them), ready
        segments other than ``before``'s successors, and stale claims and temp files."""
        now = time.time()
        try:
            for entry in os.listdir(os.path.join(self.root, READY_DIR)):
                if entry[:24] <= before[:24]:
                    _unlink(self.ready_path(entry))
        except OSError:
            pass
        for entry in self._entries():
            path = self.path(entry)
            try:
                if entry in (WANTED_NAME, LOCK_NAME, READY_DIR):
                    continue
                if entry.startswith("."):
                    if now - os.stat(path).st_mtime > CLAIM_TTL_S:
                        os.unlink(path)
                elif entry[:24] < before[:24]:
                    os.unlink(path)
            except OSError:
                continue

    def want(self, name: str, seg_size: int, count: int) -> None:
        """Record that PostgreSQL asked for segment ``name`` (the prefetcher keeps the ``count``
        after it spooled); a rename, so the prefetcher never reads half a line."""
        write_atomic(self.path(WANTED_NAME), f"{name} {seg_size} {count}".encode(), sync=False)

    def wanted(self) -> tuple[str, int, int] | None:
        try:
            with open(self.path(WANTED_NAME), "rb") as fh:
                name, seg_size, count = fh.read().decode().split()
            if not is_segment_name(name):
                return None
            return name, int(seg_size), max(1, min(int(count), 64))
        except (OSError, ValueError):
            return None

    def prefetcher_running(self) -> bool:
        """A prefetcher holds this spool's lock."""
        import fcntl

        try:
            fd = os.open(self.path(LOCK_NAME), os.O_RDONLY | os.O_CLOEXEC)
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

    def _claim(self, name: str) -> str | None:
        claim = self.path(f".{name}.claim")
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
                    os.unlink(claim)
                except OSError:
                    return None
            except OSError:
                return None
        return None

    def put(self, name: str, data: bytes | memoryview, content: bytes | None = None) -> None:
        """Spool ``data`` (verified by the caller) as segment ``name``: written under a temp
        name, renamed to ``<name>.<digest>``.  ``content``: the BLAKE3 digest of ``data`` when
        the caller has it (the repository verified the bytes against it): no hashing here."""
        digest = self.digest(name, data) if content is None else self.entry_digest(name, content)
        write_atomic(self.path(f"{name}.{digest}"), data, sync=False)

    def fill(self, names: list[str], fetch: Callable[[str], bytes | None]) -> int:
        """Fetch ``names`` in order into the spool (``fetch`` returns verified bytes, or ``None``
        when the segment is not archived: stop there).  Returns how many were spooled."""
        done = 0
        for name in names:
            if not os.path.isdir(self.root):
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
                self.put(name, data)
                done += 1
            finally:
                _unlink(claim)
        return done


def next_segments(name: str, seg_size: int, count: int) -> list[str]:
    from coldkeep.postgres import wal

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
        try:  # noqa: SIM105 (no contextlib on the per-segment path)
            work()
        except BaseException:
            pass
    finally:
        os._exit(0)


def refill(spool: Spool, config_path: str, name: str, seg_size: int, count: int, lineage: str | None) -> None:
    """Tell the spool's prefetcher that PostgreSQL asked for ``name`` (it keeps the ``count``
    segments after it spooled), starting one when none runs (best effort: any failure only means
    the next fetch goes to the repository itself)."""
    try:
        os.makedirs(spool.root, mode=0o700, exist_ok=True)
        spool.clean(name)
        if spool.wanted() != (name, seg_size, count):
            spool.want(name, seg_size, count)
        if spool.prefetcher_running():
            return
    except Exception:
        return
    spawn(lambda: _run_prefetcher(spool, config_path, lineage))


def _run_prefetcher(spool: Spool, config_path: str, lineage: str | None) -> None:
    from coldkeep.postgres.prefetcher import Prefetcher

    Prefetcher(spool, config_path, lineage).run()


def serve_spooled(config_path: str, name: str, dest: str, lineage: str | None, count: int) -> bool:
    """Move a verified spooled copy of segment ``name`` to ``dest`` (waiting for a live
    prefetcher that is fetching it) and keep the spool ``count`` segments ahead (best effort: the
    segment is in place); ``False`` when there is none or ``name`` is not a segment: the caller
    fetches it from the repository.  Imports nothing but ``os``, ``time``, ``fcntl`` and
    ``blake3`` (no click, no repository modules, not even :mod:`coldkeep.postgres.wal`):
    :mod:`coldkeep.cli.entry` calls it for ``wal-fetch --prefetch K`` before anything else."""
    if not is_segment_name(name):
        return False
    spool = Spool.for_dest(dest, config_path, lineage)
    before = spool.wanted()
    if before is not None:  # the request first: a prefetcher never spools what is taken now again
        try:  # noqa: SIM105 (no contextlib on the per-segment path)
            spool.want(name, before[1], count)
        except OSError:
            pass
    spool.wait(name)  # being prefetched right now: wait rather than fetch it twice
    seg_size = spool.take(name, dest)
    if seg_size is None:
        return False
    try:  # noqa: SIM105 (the segment is in place: refilling is best effort)
        refill(spool, config_path, name, seg_size, count, lineage)
    except Exception:
        pass
    return True


def ready_fast_path(data_dir: str | os.PathLike[str], config_path: str, lineage: str | None) -> str:
    """The shell prefix of ``restore_command`` that serves the segment the prefetcher made ready
    (:meth:`Spool.place`) with ``cksum`` and ``mv``, no interpreter: ``r=<ready>/%f; { read -r c
    < $r.crc && [ "$(cksum < $r)" = "$c" ] && mv -f -- $r %p; } 2>/dev/null || `` (PostgreSQL
    runs ``restore_command`` through ``sh`` in the data directory; a missing or changed file falls
    through to ``wal-fetch``).  ``<ready>`` is relative to the data directory, in the spool
    of this config, lineage and cluster (``data_dir``'s ``global/pg_control``), as
    :meth:`Spool.for_dest` names it at recovery time."""
    spool = Spool.for_dest(os.path.join(os.fspath(data_dir), "pg_wal", "RECOVERYXLOG"), config_path, lineage)
    ready = "/".join(("pg_wal", SPOOL_DIR, os.path.basename(spool.root), READY_DIR))
    return f'r={ready}/%f; {{ read -r c < $r.crc && [ "$(cksum < $r)" = "$c" ] && mv -f -- $r %p; }} 2>/dev/null || '


def remove_spool(pg_wal: str | os.PathLike[str]) -> None:
    """Delete ``pg_wal/.coldkeep-prefetch`` (after recovery)."""
    import shutil

    shutil.rmtree(os.path.join(pg_wal, SPOOL_DIR), ignore_errors=True)
