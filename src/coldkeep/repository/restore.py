"""Restoring a snapshot into a directory.

Every chunk is verified against its id (BLAKE3, keyed when encrypted), every file's size against
the snapshot's and, unless ``verify_files=False``, its whole-file SHA-256 too, before it takes its
final name: a small file (one chunk) is verified in memory before it is created (``O_EXCL``), a
bigger one is written to an unnamed file in its directory (or a fresh random temporary name where
that is not possible, see :mod:`~coldkeep.repository.restore_io`) and named only when it
verified, so a corrupt chunk never leaves a corrupt file behind, and nothing already in the
target is opened, written into or deleted: a name in the way is replaced by a rename.  Paths that
would land outside the target (absolute, ``..``, NUL, through a symlink) are refused: every name
is checked before anything is written, and every directory on the way once (see :class:`_Dirs`).
Chunk locations are looked up a batch of files at a time; small files go to the workers in
groups of tree neighbours (one task per group, not per file); the chunks of a big file are read,
decompressed and verified on worker threads ahead of the one being written.  A sparse file's
all-zero chunks are left as holes.  The second and later names of a hard-linked file are linked
to its first name once that is restored; then symlinks are created, and modes and mtimes of
directories set last (deepest first).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ctypes.util
import fnmatch
import hashlib
import os
import stat
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from coldkeep.durable import fsync_dir
from coldkeep.errors import IntegrityError, NotFound, UsageError
from coldkeep.repository.locks import locked
from coldkeep.repository.packer import BlobEntry
from coldkeep.repository.repository import Progress, Repository, Snapshot
from coldkeep.repository.restore_io import Names, is_zero, write_all, write_sparse


class TargetError(str):
    """An error message about the restore *target*, not the repository's data: the system refused
    a write (no space, read-only, permission, file-size limit, a name too long, a file where a
    directory goes) or the restore refused a path there.  The data verified (or was never read);
    the restore can be run again once the target is fixed."""

    __slots__ = ()


def _target_error(entry: dict[str, Any], exc: OSError | UsageError) -> TargetError:
    if isinstance(exc, UsageError):
        return TargetError(exc.message)
    return TargetError(f"{entry['path']}: {exc.strerror or exc}")


@dataclass
class RestoreResult:
    snapshot_id: str
    target: str
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    duration_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    #: what was restored, but not as the snapshot has it (a hard link restored as a copy)
    warnings: list[str] = field(default_factory=list)

    @property
    def damage(self) -> list[str]:
        """The errors that are about the data (it did not verify), not about the target."""
        return [e for e in self.errors if not isinstance(e, TargetError)]

    def to_json(self) -> dict[str, Any]:
        return {
            "snapshot_id": self.snapshot_id,
            "target": self.target,
            "files": self.files,
            "dirs": self.dirs,
            "symlinks": self.symlinks,
            "bytes": self.bytes,
            "duration_s": self.duration_s,
            "errors": self.errors,
            "target_errors": [e for e in self.errors if isinstance(e, TargetError)],
            "warnings": self.warnings,
        }


#: with ``durable``: start writeback of a file every this many bytes written
WRITEBACK_STEP = 8 * 1024 * 1024


def _load_sync_file_range() -> Callable[[int, int, int], None] | None:
    """``sync_file_range(fd, offset, n, SYNC_FILE_RANGE_WRITE)`` from libc (Linux), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        func = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    func.restype = ctypes.c_int

    def start_writeback(fd: int, offset: int, nbytes: int) -> None:
        func(fd, offset, nbytes, 2)  # SYNC_FILE_RANGE_WRITE: queue, do not wait; errors show at fsync

    return start_writeback


_start_writeback = _load_sync_file_range()

#: without the whole-file SHA-256, files at least this big are written by several threads at
#: once, in segments of at least :data:`SEGMENT_PART` bytes
SEGMENT_MIN = 64 * 1024 * 1024
SEGMENT_PART = 32 * 1024 * 1024

#: a run of a file's chunks (read with one request) covers at most this many stored bytes and
#: holds at most this many bytes of content
RUN_BYTES = 2 * 1024 * 1024


def safe_relpath(name: str) -> PurePosixPath:
    """``name`` as a path relative to the target; refuses absolute paths, ``..`` and NUL bytes."""
    rel = PurePosixPath(name)
    if rel.is_absolute() or any(part in ("..", "") for part in rel.parts) or not rel.parts or "\0" in name:
        raise UsageError(f"refusing to restore {name!r}: it would land outside the target directory")
    return rel


def _matches(name: str, includes: Sequence[str]) -> bool:
    if not includes:
        return True
    for pattern in includes:
        pat = pattern.lstrip("/")
        if fnmatch.fnmatchcase(name, pat) or name.startswith(pat.rstrip("/") + "/"):
            return True
    return False


class _Dirs:
    """Directories of the target, each checked once to be a real directory (not a symlink).

    Names are validated by :func:`safe_relpath` (no absolute path, no ``..``); what is left to
    refuse is a path whose directory is a symlink (say, one already in a non-empty target), so
    every directory on the way is ``lstat``-ed, or created, once, and remembered.  That replaces a
    ``realpath`` per file.  Symlinks of the snapshot are created after every file, and re-checked
    without the memory (:meth:`check_fresh`).
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self._ok: set[str] = {""}

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else self.root

    def ensure(self, rel: str, mode: int = 0o777) -> str:
        """The absolute path of directory ``rel`` (``""`` is the target), created if missing."""
        if rel in self._ok:
            return self.path(rel)
        parts = rel.split("/")
        known = len(parts) - 1  # the deepest directory on the way already checked
        while known > 0 and "/".join(parts[:known]) not in self._ok:
            known -= 1
        for depth in range(known + 1, len(parts) + 1):
            sub = "/".join(parts[:depth])
            path = self.path(sub)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(path, mode if depth == len(parts) else 0o777)
                st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode):
                raise UsageError(
                    f"refusing to restore into {path}: it is not a directory (a symlink would lead outside the target)"
                )
            self._ok.add(sub)
        return self.path(rel)

    def check_fresh(self, rel: str) -> None:
        """Every existing directory on the way to ``rel`` is a real directory, checked now."""
        parts = rel.split("/") if rel else []
        for i in range(1, len(parts) + 1):
            path = self.path("/".join(parts[:i]))
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                return
            if not stat.S_ISDIR(st.st_mode):
                raise UsageError(f"refusing to restore {self.path(rel)}: {path} is not a directory")


class Restorer:
    """Restore a snapshot (or part of it) into a directory.

    ``durable=True``: each file is fsynced by the worker thread that wrote it before it is
    renamed into place (writeback is started every :data:`WRITEBACK_STEP` bytes with
    ``sync_file_range``, so the disk works while the next chunks are fetched and the final
    ``fsync`` has little left to do), and every directory is fsynced at the end: a restore that
    returned survives a power cut, and whoever starts on the result (PostgreSQL's start-up
    ``SyncDataDirectory``) finds nothing dirty.

    ``verify_files=False`` skips the whole-file SHA-256 (one hash over every byte instead of two,
    as ``pg restore`` does): each chunk is still checked against its id, and the chunk list comes
    from a tree blob that is itself checked against its id, so the file is still proved to be the
    one backed up.  Chunks stored back to back in one pack are read with one request per run of
    up to :data:`RUN_BYTES` and written with one ``writev``.
    """

    #: tasks (a big file, or a group of small ones) whose chunk locations are looked up in one
    #: index query
    LOOKUP_TASKS = 16
    #: chunks of one file read, decompressed and verified ahead of the one being written
    PREFETCH = 4
    #: small (one-chunk) files restored by one worker task, at most this many ...
    SMALL_GROUP_FILES = 16
    #: ... and about this many bytes
    SMALL_GROUP_BYTES = 4 * 1024 * 1024

    def __init__(
        self,
        repo: Repository,
        *,
        threads: int | None = None,
        progress: Progress | None = None,
        durable: bool = False,
        verify_files: bool = True,
    ) -> None:
        self.repo = repo
        self.verify_files = verify_files
        self.threads = threads or max(2, os.cpu_count() or 2)
        self.progress = progress or Progress()
        self.as_root = os.geteuid() == 0
        self.durable = durable
        self.names = Names()

    def _runs(
        self, entry: dict[str, Any], located: dict[bytes, BlobEntry]
    ) -> list[list[tuple[bytes, BlobEntry]]]:
        """A file's chunks in order, grouped into runs that one request reads: consecutive chunks
        of one pack whose covering range is at most :data:`RUN_BYTES` and mostly theirs (packs
        hold a file's chunks nearly in order; parallel compression swaps neighbours), and whose
        contents add up to at most :data:`RUN_BYTES` (memory stays bounded: a run of one
        repeated all-zero chunk is tiny in the pack)."""
        runs: list[list[tuple[bytes, BlobEntry]]] = []
        run: list[tuple[bytes, BlobEntry]] = []
        lo = hi = used = raw = 0
        for hex_id in entry.get("chunks", ()):
            blob_id = bytes.fromhex(hex_id)
            loc = located.get(blob_id)
            if loc is None:
                raise IntegrityError(f"blob {blob_id.hex()[:16]} is not in the index")
            end = loc.offset + loc.length
            if run:
                new_lo, new_hi = min(lo, loc.offset), max(hi, end)
                span = new_hi - new_lo
                if (
                    loc.pack == run[0][1].pack
                    and span <= RUN_BYTES
                    and raw + loc.raw_length <= RUN_BYTES
                    and 4 * (used + loc.length) >= 3 * span
                ):
                    run.append((blob_id, loc))
                    lo, hi, used, raw = new_lo, new_hi, used + loc.length, raw + loc.raw_length
                    continue
                runs.append(run)
            run, lo, hi, used, raw = [(blob_id, loc)], loc.offset, end, loc.length, loc.raw_length
        if run:
            runs.append(run)
        return runs

    def _chunks(
        self, entry: dict[str, Any], located: dict[bytes, BlobEntry], pool: ThreadPoolExecutor | None
    ) -> Iterator[list[bytes]]:
        """The verified contents of a file's chunks, in order, a run of chunks at a time; read
        ahead on ``pool`` when given."""
        runs = self._runs(entry, located)
        read = self.repo.read_blob_run
        if pool is None or len(runs) < 2:
            for run in runs:
                yield read(run)
            return
        window: collections.deque[Future[list[bytes]]] = collections.deque()
        try:
            for run in runs:
                window.append(pool.submit(read, run))
                if len(window) >= self.PREFETCH:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        finally:
            for future in window:
                future.cancel()

    def _write_segments(
        self, fd: int, entry: dict[str, Any], located: dict[bytes, BlobEntry], pool: ThreadPoolExecutor
    ) -> int:
        """Write a big file as a few contiguous segments at once, one ``pwritev`` per run at its
        offset: one file no longer waits for one thread (a 1 GiB relation file written by one
        thread was the last thing a restore waited for).  Only without the whole-file SHA-256,
        which needs the bytes in order.  Every chunk is still checked against its id; on an error
        every segment is waited for before the file is given up (no write after the close)."""
        runs = self._runs(entry, located)
        sizes = [sum(loc.raw_length for _, loc in run) for run in runs]
        total = sum(sizes)
        parts = max(1, min(self.threads, total // SEGMENT_PART))
        segments: list[tuple[int, list[list[tuple[bytes, BlobEntry]]]]] = []
        offset = 0
        target = total / parts
        current: list[list[tuple[bytes, BlobEntry]]] = []
        start = 0
        for run, size in zip(runs, sizes, strict=True):
            current.append(run)
            offset += size
            if offset - start >= target and len(segments) < parts - 1:
                segments.append((start, current))
                current, start = [], offset
        if current:
            segments.append((start, current))

        write = write_sparse if entry.get("sparse") else write_all

        def write_segment(start: int, seg_runs: list[list[tuple[bytes, BlobEntry]]]) -> int:
            pos = flushed = start
            for run in seg_runs:
                nbytes = write(fd, self.repo.read_blob_run(run), pos)
                pos += nbytes
                self.progress.add(0, nbytes)
                if self.durable and _start_writeback and pos - flushed >= WRITEBACK_STEP:
                    _start_writeback(fd, flushed, pos - flushed)
                    flushed = pos
            return pos - start

        futures = [pool.submit(write_segment, start, seg_runs) for start, seg_runs in segments]
        wait(futures)
        return sum(f.result() for f in futures)  # the first error, once nothing writes any more

    def _write_file(
        self,
        dest: str,
        entry: dict[str, Any],
        located: dict[bytes, BlobEntry],
        pool: ThreadPoolExecutor | None = None,
    ) -> int:
        """Write and verify one file without a name (or under a fresh temporary one), then give it
        its name (:meth:`Names.publish`); its directory was checked by :class:`_Dirs`.  A failed
        file leaves nothing behind, and nothing that was in the target is opened or removed."""
        temp = self.names.create_temp(dest.rpartition("/")[0])
        try:
            try:
                written = self._fill(temp.fd, entry, located, pool)
            except BaseException:
                self.names.discard(temp)
                raise
            self.names.publish(temp, dest)
        finally:
            os.close(temp.fd)
        self.progress.add(1, 0)
        return written

    def _fill(
        self, fd: int, entry: dict[str, Any], located: dict[bytes, BlobEntry], pool: ThreadPoolExecutor | None
    ) -> int:
        """Write a file's chunks into the new file ``fd`` and verify it (size and, with
        ``verify_files``, SHA-256), then set its metadata (and fsync it when ``durable``);
        returns its size.  A sparse entry's all-zero chunks are left as holes."""
        sha = hashlib.sha256() if self.verify_files else None
        sparse = bool(entry.get("sparse"))
        written = flushed = 0
        try:
            if sha is None and pool is not None and int(entry.get("size", 0)) >= SEGMENT_MIN:
                written = self._write_segments(fd, entry, located, pool)
            else:
                for pieces in self._chunks(entry, located, pool):
                    if sha is not None:
                        for data in pieces:
                            sha.update(data)
                    nbytes = write_sparse(fd, pieces, written) if sparse else write_all(fd, pieces)
                    written += nbytes
                    self.progress.add(0, nbytes)
                    if self.durable and _start_writeback and written - flushed >= WRITEBACK_STEP:
                        _start_writeback(fd, flushed, written - flushed)
                        flushed = written
        except IntegrityError as exc:
            raise IntegrityError(f"{entry['path']}: {exc.message}") from None
        if sha is not None and sha.hexdigest() != entry.get("sha256"):
            raise IntegrityError(
                f"{entry['path']}: SHA-256 mismatch after restore (expected {entry.get('sha256')})"
            )
        if written != int(entry.get("size", written)):
            raise IntegrityError(
                f"{entry['path']}: {written} bytes restored, the snapshot says {entry.get('size')}"
            )
        if sparse:
            os.ftruncate(fd, written)  # the size, with any hole at the end
        self._set_meta(fd, entry)  # before the fsync, so owner, mode and mtime are durable too
        if self.durable:
            os.fsync(fd)
        return written

    def _tasks(self, file_dests: list[tuple[str, dict[str, Any]]]) -> list[list[tuple[str, dict[str, Any]]]]:
        """The files as worker tasks, in the order they are started.

        Files of several chunks first, one task each, the biggest first: the last file to start
        must not be a long one (a 1 GiB relation file started last made the whole restore wait
        for it alone).  Then small files (one chunk) a group of tree neighbours at a time (one
        task per group, not per file), the groups dealt out from ``threads`` far-apart parts of
        the tree in turn, so that the workers create their files in different directories: a
        file's creation holds its directory's lock, and two threads creating files in one
        directory spun on it for a fifth of a 10,000-file restore's CPU (``perf``:
        ``rwsem_spin_on_owner``)."""
        multi = sorted(
            (item for item in file_dests if len(item[1].get("chunks", ())) > 1),
            key=lambda item: -int(item[1].get("size", 0)),
        )
        tasks: list[list[tuple[str, dict[str, Any]]]] = [[item] for item in multi]
        groups: list[list[tuple[str, dict[str, Any]]]] = []
        group: list[tuple[str, dict[str, Any]]] = []
        group_bytes = 0
        for item in file_dests:
            if len(item[1].get("chunks", ())) > 1:
                continue
            group.append(item)
            group_bytes += int(item[1].get("size", 0))
            if len(group) >= self.SMALL_GROUP_FILES or group_bytes >= self.SMALL_GROUP_BYTES:
                groups.append(group)
                group, group_bytes = [], 0
        if group:
            groups.append(group)
        parts = max(1, min(self.threads, len(groups)))
        bounds = [len(groups) * k // parts for k in range(parts + 1)]
        streams = [groups[bounds[k] : bounds[k + 1]] for k in range(parts)]
        for turn in range(max((len(st) for st in streams), default=0)):
            tasks.extend(st[turn] for st in streams if turn < len(st))
        return tasks

    def _small_runs(
        self, items: Sequence[tuple[str, dict[str, Any]]], located: dict[bytes, BlobEntry]
    ) -> list[list[tuple[int, bytes, BlobEntry]]]:
        """The chunks of one-chunk files (index into ``items``, id, location), grouped into runs
        that one request reads: same pack, in pack order, the covering range at most
        :data:`RUN_BYTES` and mostly theirs (a backup packs neighbouring files together)."""
        chunks: list[tuple[int, bytes, BlobEntry]] = []
        for i, (_, entry) in enumerate(items):
            for hex_id in entry.get("chunks", ()):
                blob_id = bytes.fromhex(hex_id)
                loc = located.get(blob_id)
                if loc is None:
                    raise IntegrityError(f"{entry['path']}: blob {hex_id[:16]} is not in the index")
                chunks.append((i, blob_id, loc))
        chunks.sort(key=lambda c: (c[2].pack, c[2].offset))
        runs: list[list[tuple[int, bytes, BlobEntry]]] = []
        run: list[tuple[int, bytes, BlobEntry]] = []
        lo = used = 0
        for chunk in chunks:
            loc = chunk[2]
            if run:
                span = max(loc.offset + loc.length, run[-1][2].offset + run[-1][2].length) - lo
                if loc.pack == run[0][2].pack and span <= RUN_BYTES and 4 * (used + loc.length) >= 3 * span:
                    run.append(chunk)
                    used += loc.length
                    continue
                runs.append(run)
            run, lo, used = [chunk], loc.offset, loc.length
        if run:
            runs.append(run)
        return runs

    def _write_small(
        self, items: Sequence[tuple[str, dict[str, Any]]], located: dict[bytes, BlobEntry]
    ) -> list[tuple[int, str | None]]:
        """Restore a group of small files (at most one chunk each) in a few reads: the chunks of
        neighbouring files, stored close together, are read with one request per run, and every
        file is checked in memory before it is created: its size, and its SHA-256 (which proves
        its one chunk; :meth:`Repository.check_blob` names the chunk when it fails) or, without
        the whole-file SHA-256, its chunk against the chunk's id.  A verified file is then written straight to its name
        (``O_EXCL``: no temporary name, no rename); a name that already exists (a restore into a
        non-empty target) takes :meth:`_write_file`'s way (a new file, renamed onto the name), so
        an existing file, or a hard link to one outside the target, is replaced and never written
        into.  A sparse file's all-zero chunk is a hole.
        A run that fails its checks is retried a file at a time, so each error names its file."""
        results: list[tuple[int, str | None]] = [(0, None)] * len(items)
        contents: dict[int, bytes] = {}
        retry: list[int] = []
        try:
            runs = self._small_runs(items, located)
        except IntegrityError:
            runs, retry = [], list(range(len(items)))
        # with the whole-file SHA-256 checked below, a one-chunk file's chunk is proved by it: the
        # chunk's own id check (a second hash of the same bytes) is made only when that fails
        check_ids = not self.verify_files
        blob_of: dict[int, tuple[bytes, BlobEntry]] = {}
        for run in runs:
            try:
                datas = self.repo.read_blob_run([(blob_id, loc) for _, blob_id, loc in run], check_ids)
            except IntegrityError:
                retry.extend(i for i, _, _ in run)
                continue
            for (i, blob_id, loc), data in zip(run, datas, strict=True):
                contents[i] = data
                blob_of[i] = (blob_id, loc)
        for i, (dest, entry) in enumerate(items):
            if i in retry:
                results[i] = self._one(dest, entry, located, None)
                continue
            data = contents.get(i, b"")
            try:
                if len(data) != int(entry.get("size", len(data))):
                    raise IntegrityError(
                        f"{entry['path']}: {len(data)} bytes restored, the snapshot says {entry.get('size')}"
                    )
                if self.verify_files and hashlib.sha256(data).hexdigest() != entry.get("sha256"):
                    if i in blob_of:
                        try:
                            self.repo.check_blob(blob_of[i][0], blob_of[i][1], data)
                        except IntegrityError as exc:
                            raise IntegrityError(f"{entry['path']}: {exc.message}") from None
                    raise IntegrityError(
                        f"{entry['path']}: SHA-256 mismatch after restore (expected {entry.get('sha256')})"
                    )
                try:
                    fd = os.open(
                        dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
                    )
                except FileExistsError:
                    results[i] = self._one(dest, entry, located, None)
                    continue
                try:
                    try:
                        if entry.get("sparse") and is_zero(data):
                            os.ftruncate(fd, len(data))  # all hole
                        elif data:
                            write_all(fd, (data,))
                        self._set_meta(fd, entry)
                        if self.durable:
                            os.fsync(fd)
                    finally:
                        os.close(fd)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(dest)
                    raise
            except IntegrityError as exc:
                results[i] = (0, exc.message)
                continue
            except OSError as exc:
                results[i] = (0, _target_error(entry, exc))
                continue
            self.progress.add(1, len(data))
            results[i] = (len(data), None)
        return results

    def _one(
        self,
        dest: str,
        entry: dict[str, Any],
        located: dict[bytes, BlobEntry],
        chunk_pool: ThreadPoolExecutor | None,
    ) -> tuple[int, str | None]:
        """:meth:`_write_file` with its errors as a message: (bytes written, error or None)."""
        try:
            return self._write_file(dest, entry, located, chunk_pool), None
        except IntegrityError as exc:
            return 0, exc.message
        except (OSError, UsageError) as exc:
            return 0, _target_error(entry, exc)

    def _set_meta(self, path: str | int, entry: dict[str, Any], *, symlink: bool = False) -> None:
        """Owner, mode and mtime of ``path``, or of an open regular file (a descriptor: no path
        walk per call); a symlink's own owner and mtime."""
        if self.as_root:
            with contextlib.suppress(OSError):
                os.chown(
                    path, int(entry.get("uid", 0)), int(entry.get("gid", 0)), follow_symlinks=not symlink
                )
        if not symlink:
            os.chmod(path, int(entry.get("mode", 0o644)))
        mtime = int(entry.get("mtime_ns", 0))
        if mtime > 0:
            with contextlib.suppress(OSError, NotImplementedError):
                os.utime(path, ns=(mtime, mtime), follow_symlinks=not symlink)

    def run(self, snap: Snapshot, target: Path, includes: Sequence[str] = ()) -> RestoreResult:
        """Restore ``snap`` (the entries matching ``includes``) into ``target``, under a shared
        repository lock (a prune cannot remove packs under it)."""
        with locked(self.repo.backend, "restore", exclusive=False):
            return self._run(snap, target, includes)

    def _run(self, snap: Snapshot, target: Path, includes: Sequence[str]) -> RestoreResult:
        started = time.monotonic()
        target = Path(os.path.abspath(target))
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file in the way, a read-only filesystem, no permission
            raise UsageError(
                f"cannot restore into {target}: {exc.strerror or exc}",
                hint="name a directory that exists or can be created, on a writable filesystem",
            ) from None
        dirs_guard = _Dirs(os.path.realpath(target))
        result = RestoreResult(snapshot_id=snap.id, target=str(target))
        dirs: list[tuple[str, dict[str, Any]]] = []
        files: list[tuple[str, dict[str, Any]]] = []
        links: list[tuple[str, dict[str, Any]]] = []
        for entry in self.repo.iter_tree(snap):
            name = entry["path"]
            if not _matches(name, includes):
                continue
            rel = str(safe_relpath(name))  # every name is checked before anything is written
            kind = entry.get("type")
            if kind == "dir":
                dirs.append((rel, entry))
            elif kind == "file":
                files.append((rel, entry))
            elif kind == "symlink":
                links.append((rel, entry))
        if includes and not (dirs or files or links):  # a typo, or another snapshot than meant
            raise NotFound(
                f"nothing in snapshot {snap.short_id} ({', '.join(snap.paths)}) matches --include "
                + " ".join(repr(p) for p in includes),
                hint="patterns match whole paths as the snapshot stores them, e.g. 'mnt/data/train/*'",
            )
        # temporary names are never one of the names this restore creates
        self.names = Names({dirs_guard.path(rel) for group in (dirs, files, links) for rel, _ in group})
        self.progress.files_total = len(files)
        self.progress.bytes_total = sum(int(e.get("size", 0)) for _, e in files)
        for rel, _ in dirs:
            try:
                dirs_guard.ensure(rel, 0o700)
            except OSError as exc:  # read-only filesystem, no permission: nothing can be restored there
                raise UsageError(
                    f"cannot restore into {target}: {dirs_guard.path(rel)}: {exc.strerror or exc}",
                    hint="name a directory that exists or can be created, on a writable filesystem",
                ) from None
        file_dests: list[tuple[str, dict[str, Any]]] = []
        for rel, entry in files:
            parent, _, base = rel.rpartition("/")
            try:
                file_dests.append((os.path.join(dirs_guard.ensure(parent), base), entry))
            except (OSError, UsageError) as exc:
                result.errors.append(_target_error(entry, exc))
        first, later = _hard_links(file_dests)
        failed = self._restore_contents([item for item in file_dests if id(item) not in later], result)
        self._restore_hard_links(file_dests, first, later, failed, result)
        for rel, entry in links:
            try:
                dirs_guard.check_fresh(rel.rpartition("/")[0])
                parent, _, base = rel.rpartition("/")
                self._symlink(entry["target"], os.path.join(dirs_guard.ensure(parent), base))
                self._set_meta(dirs_guard.path(rel), entry, symlink=True)
                result.symlinks += 1
            except (OSError, UsageError) as exc:
                result.errors.append(_target_error(entry, exc))
        for rel, entry in sorted(dirs, key=lambda d: d[0].count("/"), reverse=True):
            self._set_meta(dirs_guard.path(rel), entry)
            result.dirs += 1
        if self.durable:
            synced = {os.path.dirname(dest) for dest, _ in file_dests}
            synced |= {os.path.dirname(dirs_guard.path(rel)) for rel, _ in links}
            synced |= {dirs_guard.path(rel) for rel, _ in dirs}
            synced |= {str(target), os.path.dirname(str(target))}
            for directory in sorted(synced, key=len, reverse=True):
                fsync_dir(directory)
        result.duration_s = round(time.monotonic() - started, 3)
        return result

    def _restore_contents(
        self, file_dests: list[tuple[str, dict[str, Any]]], result: RestoreResult
    ) -> set[str]:
        """Restore these files on the worker threads (:meth:`_tasks`); counts them in ``result``
        and returns the destinations that failed."""
        failed: set[str] = set()

        def several(
            items: list[tuple[str, dict[str, Any]]],
            located: dict[bytes, BlobEntry],
            chunk_pool: ThreadPoolExecutor,
        ) -> list[tuple[int, str | None]]:
            if len(items) == 1 and len(items[0][1].get("chunks", ())) > 1:
                return [self._one(items[0][0], items[0][1], located, chunk_pool)]
            return self._write_small(items, located)

        cache = self.repo.cache
        with (
            ThreadPoolExecutor(self.threads, thread_name_prefix="coldkeep-restore") as pool,
            ThreadPoolExecutor(self.threads, thread_name_prefix="coldkeep-restore-chunk") as chunk_pool,
        ):
            pending: dict[Future[list[tuple[int, str | None]]], list[tuple[str, dict[str, Any]]]] = {}

            def drain(keep: int) -> None:
                while len(pending) > keep:  # whichever finished first: a big file does not hold up the rest
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        task = pending.pop(future)
                        for (dest, _), (nbytes, error) in zip(task, future.result(), strict=True):
                            if error:
                                result.errors.append(error)
                                failed.add(dest)
                            else:
                                result.files += 1
                                result.bytes += nbytes

            tasks = self._tasks(file_dests)
            for i in range(0, len(tasks), self.LOOKUP_TASKS):
                batch = tasks[i : i + self.LOOKUP_TASKS]
                located = cache.get_many(
                    bytes.fromhex(c) for task in batch for _, e in task for c in e.get("chunks", ())
                )
                for task in batch:
                    pending[pool.submit(several, task, located, chunk_pool)] = task
                drain(2 * self.LOOKUP_TASKS)  # bounded: a few batches in flight
            drain(0)
        return failed

    def _restore_hard_links(
        self,
        file_dests: list[tuple[str, dict[str, Any]]],
        first: dict[str, tuple[str, dict[str, Any]]],
        later: set[int],
        failed: set[str],
        result: RestoreResult,
    ) -> None:
        """The second and later names of hard-linked files (:func:`_hard_links`), once the first
        name of each was restored and verified: linked to it (:meth:`_hard_link`).  When the
        first name failed, the next name is restored from its own chunks and the rest link to
        that; when linking fails (another filesystem mounted inside the target, too many links,
        a filesystem without hard links) the name is restored as a copy, and a warning says so."""
        source = {key: item for key, item in first.items() if item[0] not in failed}
        for item in file_dests:
            if id(item) not in later:
                continue
            dest, entry = item
            key = str(entry["hardlink"])
            size = int(entry.get("size", 0))
            if key in source:
                src_dest, src_entry = source[key]
                try:
                    self._hard_link(src_dest, dest)
                except _LinkFailed as exc:
                    result.warnings.append(
                        f"{entry['path']}: restored as a copy, not as a hard link to {src_entry['path']} ({exc})"
                    )
                except IntegrityError as exc:
                    result.errors.append(f"{entry['path']}: {exc.message}")
                    continue
                except OSError as exc:
                    result.errors.append(_target_error(entry, exc))
                    continue
                else:
                    result.files += 1
                    result.bytes += size
                    self.progress.add(1, size)
                    continue
            located = self.repo.cache.get_many(bytes.fromhex(c) for c in entry.get("chunks", ()))
            nbytes, error = self._one(dest, entry, located, None)
            if error:
                result.errors.append(error)
                continue
            result.files += 1
            result.bytes += nbytes
            source.setdefault(key, item)

    def _hard_link(self, source: str, dest: str) -> None:
        """Make ``dest`` another name of the file this restore created at ``source`` (both in the
        target): ``link`` (never through a symlink), or, when a name is in the way, a link at a
        fresh temporary name renamed onto it.  Raises :class:`_LinkFailed` when the filesystem
        refuses the link itself."""
        try:
            os.link(source, dest, follow_symlinks=False)
        except FileExistsError:
            try:
                tmp = self.names.make(
                    dest.rpartition("/")[0], lambda p: os.link(source, p, follow_symlinks=False)
                )
            except OSError as exc:
                raise _LinkFailed(exc.strerror or str(exc)) from None
            self.names.replace(tmp, dest)
        except OSError as exc:
            raise _LinkFailed(exc.strerror or str(exc)) from None
        st, there = os.lstat(source), os.lstat(dest)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (there.st_dev, there.st_ino):
            raise IntegrityError(f"{source} changed while it was being restored; {dest} is not linked to it")

    def _symlink(self, link_target: str, dest: str) -> None:
        """A symlink at ``dest``; one in the way (file or symlink) is replaced by a rename from a
        fresh temporary name, never deleted first (a directory stays: an error)."""
        try:
            os.symlink(link_target, dest)
        except FileExistsError:
            tmp = self.names.make(dest.rpartition("/")[0], lambda p: os.symlink(link_target, p))
            self.names.replace(tmp, dest)


class _LinkFailed(Exception):
    """The filesystem refused a hard link (the name is restored as a copy instead)."""


def _same_file(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two tree entries of one inode that recorded the same content and metadata (a file changed
    between the backup's reads of its names is not: each name restores its own bytes)."""
    keys = ("size", "sha256", "chunks", "mode", "uid", "gid", "mtime_ns")
    return all(a.get(k) == b.get(k) for k in keys)


def _hard_links(
    file_dests: list[tuple[str, dict[str, Any]]],
) -> tuple[dict[str, tuple[str, dict[str, Any]]], set[int]]:
    """The hard links among the files to restore: ``(first, later)``, where ``first`` maps each
    link key (``hardlink`` of the tree entry, see backup) with more than one name to its first
    name's item, and ``later`` holds the ``id()`` of every other item with that key and the same
    recorded content; those are made links to the first name rather than restored from chunks."""
    first: dict[str, tuple[str, dict[str, Any]]] = {}
    later: set[int] = set()
    for item in file_dests:
        key = item[1].get("hardlink")
        if not isinstance(key, str) or not key:
            continue
        leader = first.setdefault(key, item)
        if leader is not item and _same_file(leader[1], item[1]):
            later.add(id(item))
    return first, later
