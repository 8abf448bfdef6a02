"""Restoring a snapshot into a directory.

Every chunk is verified against its id and every file against its whole-file SHA-256 before it
takes its final name: a file is written to a temporary name in its directory and renamed only
when it verified, so a corrupt chunk never leaves a corrupt file behind.  Paths that would land
outside the target (absolute, ``..``, through a symlink) are refused.  Symlinks are created last,
and modes and mtimes set after contents (directories deepest first).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fnmatch
import hashlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from coldkeep.errors import IntegrityError, UsageError
from coldkeep.repository.repository import Progress, Repository, Snapshot


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
        }


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory (its entries: renames and new files in it)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def safe_relpath(name: str) -> PurePosixPath:
    rel = PurePosixPath(name)
    if rel.is_absolute() or any(part in ("..", "") for part in rel.parts) or not rel.parts:
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


class Restorer:
    """Restore a snapshot (or part of it) into a directory.

    ``durable=True``: each file is fsynced by the worker thread that wrote it before it is
    renamed into place (writeback is started every :data:`WRITEBACK_STEP` bytes with
    ``sync_file_range``, so the disk works while the next chunks are fetched and the final
    ``fsync`` has little left to do), and every directory is fsynced at the end: a restore that
    returned survives a power cut, and whoever starts on the result (PostgreSQL's start-up
    ``SyncDataDirectory``) finds nothing dirty.
    """

    def __init__(
        self,
        repo: Repository,
        *,
        threads: int | None = None,
        progress: Progress | None = None,
        durable: bool = False,
    ) -> None:
        self.repo = repo
        self.threads = threads or max(2, os.cpu_count() or 2)
        self.progress = progress or Progress()
        self.as_root = os.geteuid() == 0
        self.durable = durable

    def _inside(self, target_real: str, path: Path) -> None:
        parent_real = os.path.realpath(path.parent)
        if parent_real != target_real and not parent_real.startswith(target_real + os.sep):
            raise UsageError(f"refusing to restore {path}: its directory resolves outside the target")

    def _write_file(self, target_real: str, dest: Path, entry: dict[str, Any]) -> int:
        self._inside(target_real, dest)
        tmp = dest.with_name(f".coldkeep-tmp-{dest.name}")
        sha = hashlib.sha256()
        written = 0
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb", buffering=0) as fh:
                flushed = 0
                for chunk_hex in entry.get("chunks", []):
                    try:
                        data = self.repo.read_blob(bytes.fromhex(chunk_hex))
                    except IntegrityError as exc:
                        raise IntegrityError(f"{entry['path']}: {exc.message}") from None
                    sha.update(data)
                    view = memoryview(data)
                    while view:
                        view = view[fh.write(view) or 0 :]
                    written += len(data)
                    self.progress.add(0, len(data))
                    if self.durable and _start_writeback and written - flushed >= WRITEBACK_STEP:
                        _start_writeback(fd, flushed, written - flushed)
                        flushed = written
                if sha.hexdigest() != entry.get("sha256"):
                    raise IntegrityError(
                        f"{entry['path']}: SHA-256 mismatch after restore (expected {entry.get('sha256')})"
                    )
                self._set_meta(tmp, entry)  # before the fsync, so owner, mode and mtime are durable too
                if self.durable:
                    os.fsync(fd)
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self.progress.add(1, 0)
        return written

    def _set_meta(self, path: Path, entry: dict[str, Any], *, symlink: bool = False) -> None:
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
        started = time.monotonic()
        target = Path(os.path.abspath(target))
        target.mkdir(parents=True, exist_ok=True)
        target_real = os.path.realpath(target)
        result = RestoreResult(snapshot_id=snap.id, target=str(target))
        dirs: list[tuple[Path, dict[str, Any]]] = []
        files: list[tuple[Path, dict[str, Any]]] = []
        links: list[tuple[Path, dict[str, Any]]] = []
        for entry in self.repo.iter_tree(snap):
            name = entry["path"]
            if not _matches(name, includes):
                continue
            dest = target / safe_relpath(name)
            kind = entry.get("type")
            if kind == "dir":
                dirs.append((dest, entry))
            elif kind == "file":
                files.append((dest, entry))
            elif kind == "symlink":
                links.append((dest, entry))
        self.progress.files_total = len(files)
        self.progress.bytes_total = sum(int(e.get("size", 0)) for _, e in files)
        for dest, _ in dirs:
            self._inside(target_real, dest)
            dest.mkdir(parents=True, exist_ok=True, mode=0o700)
        for dest, _ in files:
            dest.parent.mkdir(parents=True, exist_ok=True)

        def one(item: tuple[Path, dict[str, Any]]) -> tuple[int, str | None]:
            dest, entry = item
            try:
                return self._write_file(target_real, dest, entry), None
            except (IntegrityError, UsageError) as exc:
                return 0, exc.message
            except OSError as exc:
                return 0, f"{entry['path']}: {exc.strerror or exc}"

        with ThreadPoolExecutor(self.threads, thread_name_prefix="coldkeep-restore") as pool:
            for nbytes, error in pool.map(one, files):
                if error:
                    result.errors.append(error)
                else:
                    result.files += 1
                    result.bytes += nbytes
        for dest, entry in links:
            try:
                self._inside(target_real, dest)
                dest.parent.mkdir(parents=True, exist_ok=True)
                if dest.is_symlink() or dest.exists():
                    dest.unlink()
                os.symlink(entry["target"], dest)
                self._set_meta(dest, entry, symlink=True)
                result.symlinks += 1
            except (OSError, UsageError) as exc:
                result.errors.append(f"{entry['path']}: {getattr(exc, 'message', None) or exc}")
        for dest, entry in sorted(dirs, key=lambda d: len(d[0].parts), reverse=True):
            self._set_meta(dest, entry)
            result.dirs += 1
        if self.durable:
            synced = {os.path.dirname(dest) for dest, _ in files + links} | {str(d) for d, _ in dirs}
            synced |= {str(target), os.path.dirname(str(target))}
            for directory in sorted(synced, key=len, reverse=True):
                fsync_dir(directory)
        result.duration_s = round(time.monotonic() - started, 3)
        return result
