"""Restoring a snapshot into a directory.

Every chunk is verified against its id (BLAKE3, keyed when encrypted), every file's size against
the snapshot's and, unless ``verify_files=False``, its whole-file SHA-256 too, before it takes its
final name: a small file (one chunk) is verified in memory before it is created (``O_EXCL``), a
bigger one is written to an unnamed file in its directory (or a fresh random temporary name where
that is not possible, see :mod:`~coldkeep.repository.restore_io`) and named only when it
verified, so a corrupt chunk never leaves a corrupt file behind, and nothing already in the
target is opened, written into or deleted: a name in the way is replaced by a rename.  Paths that
would land outside the target (absolute, ``..``, NUL, through a symlink) are refused: every name
is checked before anything is written, and every directory on the way once (``TargetDirs``).
Chunk locations are looked up a batch of files at a time; small files go to the workers in
groups of tree neighbours (one task per group, not per file); the chunks of a big file are read,
decompressed and verified on worker threads ahead of the one being written.  A sparse file's
all-zero chunks are left as holes.  The second and later names of a hard-linked file are linked
to its first name once that is restored; then symlinks are created, and modes and mtimes of
directories set last (deepest first).  The plan (names, directories, hard links, task order) is
:mod:`~coldkeep.repository.restore_plan`; this module writes it out.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ctypes.util
import hashlib
import os
import stat
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from coldkeep.durable import fsync_dir
from coldkeep.errors import IntegrityError, NotFound, UsageError
from coldkeep.heap import keep_freed_memory
from coldkeep.repository.locks import locked
from coldkeep.repository.packer import BlobEntry
from coldkeep.repository.progress import Progress
from coldkeep.repository.reads import RUN_BYTES, Run, plan_runs
from coldkeep.repository.repository import Repository
from coldkeep.repository.restore_io import Names, is_zero, write_all, write_sparse
from coldkeep.repository.restore_plan import (
    Item,
    RestoreResult,
    TargetDirs,
    TargetError,
    _target_error,
    hard_links,
    plan,
    plan_tasks,
    safe_relpath,
    small_runs,
)
from coldkeep.repository.restore_select import Selection
from coldkeep.repository.snapshot import Snapshot
from coldkeep.repository.tree import TreeEntry

__all__ = [
    "RUN_BYTES",
    "SEGMENT_MIN",
    "SEGMENT_PART",
    "RestoreResult",
    "Restorer",
    "TargetError",
    "safe_relpath",
]


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
    up to :data:`RUN_BYTES` and written with one ``writev``."""

    #: tasks (a big file, or a group of small ones) whose chunks are looked up in one index query
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

    def _runs(self, entry: TreeEntry, located: dict[bytes, BlobEntry]) -> list[Run]:
        """A file's chunks in order, grouped into runs that one request reads
        (:func:`~coldkeep.repository.reads.plan_runs`)."""
        return plan_runs(entry.get("chunks", ()), located)

    def _chunks(
        self, entry: TreeEntry, located: dict[bytes, BlobEntry], pool: ThreadPoolExecutor | None
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
        self, fd: int, entry: TreeEntry, located: dict[bytes, BlobEntry], pool: ThreadPoolExecutor
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
        entry: TreeEntry,
        located: dict[bytes, BlobEntry],
        pool: ThreadPoolExecutor | None = None,
    ) -> int:
        """Write and verify one file without a name (or under a fresh temporary one), then give it
        its name (:meth:`Names.publish`); its directory was checked by :class:`TargetDirs`.  A failed
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
        self, fd: int, entry: TreeEntry, located: dict[bytes, BlobEntry], pool: ThreadPoolExecutor | None
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

    def _tasks(self, file_dests: list[Item]) -> list[list[Item]]:
        """The files as worker tasks, in the order they are started (:func:`plan_tasks`)."""
        return plan_tasks(file_dests, self.threads, self.SMALL_GROUP_FILES, self.SMALL_GROUP_BYTES)

    def _write_small(
        self, items: Sequence[Item], located: dict[bytes, BlobEntry]
    ) -> list[tuple[int, str | None]]:
        """Restore a group of small files (at most one chunk each) in a few reads: the chunks of
        neighbouring files, stored close together, are read with one request per run, and every
        file is checked in memory before it is created: its size, and its one chunk against the
        chunk's id (BLAKE3 of the very bytes the backup read from the file: the file's proof, so
        its SHA-256 is not computed again; an empty file is checked against its SHA-256).  A
        verified file is then written straight to its name
        (``O_EXCL``: no temporary name, no rename); a name that already exists (a restore into a
        non-empty target) takes :meth:`_write_file`'s way (a new file, renamed onto the name), so
        an existing file, or a hard link to one outside the target, is replaced and never written
        into.  A sparse file's all-zero chunk is a hole.
        A run that fails its checks is retried a file at a time, so each error names its file."""
        results: list[tuple[int, str | None]] = [(0, None)] * len(items)
        contents: dict[int, bytes] = {}
        retry: list[int] = []
        try:
            runs = small_runs(items, located)
        except IntegrityError:
            runs, retry = [], list(range(len(items)))
        # a one-chunk file is its chunk: the chunk's id (BLAKE3 of exactly the bytes the backup
        # read from the file, keyed when encrypted) proves it, at a third of SHA-256's cost, so
        # such a file is not hashed a second time for its whole-file SHA-256
        blob_of: dict[int, tuple[bytes, BlobEntry]] = {}
        for run in runs:
            try:
                datas = self.repo.read_blob_run([(blob_id, loc) for _, blob_id, loc in run], True)
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
                if (
                    self.verify_files
                    and i not in blob_of  # proved by its chunk's id (above)
                    and hashlib.sha256(data).hexdigest() != entry.get("sha256")
                ):
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
        entry: TreeEntry,
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

    def _set_meta(self, path: str | int, entry: TreeEntry, *, symlink: bool = False) -> None:
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

    def run(
        self, snap: Snapshot, target: Path, includes: Sequence[str] = (), selection: Selection | None = None
    ) -> RestoreResult:
        """Restore ``snap`` (the entries matching ``includes``, or ``selection``, which replaces
        them: :mod:`~coldkeep.repository.restore_select`) into ``target``, under a shared
        repository lock (a prune cannot remove packs under it)."""
        keep_freed_memory()  # chunk buffers are reused, not faulted in afresh (coldkeep.heap)
        with locked(self.repo.backend, "restore", exclusive=False):
            return self._run(snap, target, includes, selection)

    def _run(
        self, snap: Snapshot, target: Path, includes: Sequence[str], selection: Selection | None
    ) -> RestoreResult:
        started = time.monotonic()
        target = Path(os.path.abspath(target))
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file in the way, a read-only filesystem, no permission
            raise UsageError(
                f"cannot restore into {target}: {exc.strerror or exc}",
                hint="name a directory that exists or can be created, on a writable filesystem",
            ) from None
        dirs_guard = TargetDirs(os.path.realpath(target))
        result = RestoreResult(snapshot_id=snap.id, target=str(target))
        todo = plan(self.repo.iter_tree(snap), includes, selection)  # names checked before writing
        dirs, files, links = todo.dirs, todo.files, todo.links
        patterns = selection.describe() if selection else " ".join(f"--include {p!r}" for p in includes)
        if patterns and not (dirs or files or links):  # a typo, or another snapshot than meant
            raise NotFound(
                f"nothing in snapshot {snap.short_id} ({', '.join(snap.paths)}) matches {patterns}",
                hint="patterns match paths relative to the backed-up directory ('train/*') "
                "or whole stored paths ('mnt/data/train/*')",
            )
        todo.refuse_if_nothing_lands(snap.short_id, selection)
        # temporary names are never one of the names this restore creates
        self.names = Names({dirs_guard.path(rel) for rel in todo.names()})
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
        file_dests: list[Item] = []
        for rel, entry in files:
            parent, _, base = rel.rpartition("/")
            try:
                file_dests.append((os.path.join(dirs_guard.ensure(parent), base), entry))
            except (OSError, UsageError) as exc:
                result.errors.append(_target_error(entry, exc))
        first, later = hard_links(file_dests)
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

    def _restore_contents(self, file_dests: list[Item], result: RestoreResult) -> set[str]:
        """Restore these files on the worker threads (:meth:`_tasks`); counts them in ``result``
        and returns the destinations that failed."""
        failed: set[str] = set()

        def several(
            items: list[Item],
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
            pending: dict[Future[list[tuple[int, str | None]]], list[Item]] = {}

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
        file_dests: list[Item],
        first: dict[str, Item],
        later: set[int],
        failed: set[str],
        result: RestoreResult,
    ) -> None:
        """The second and later names of hard-linked files (:func:`~coldkeep.repository.restore_plan.hard_links`), once the first
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
