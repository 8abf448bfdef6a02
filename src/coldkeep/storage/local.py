"""Local filesystem backend: one file per key under a root directory.

Contract (in addition to :mod:`coldkeep.storage.base`)
------------------------------------------------------
* Writes are durable and atomic: the bytes go to a temp file ``.tmp-*`` in the destination
  directory, are fsynced, then moved into place (``os.replace`` for :meth:`LocalBackend.put`,
  ``os.link`` for :meth:`LocalBackend.put_if_absent` so an existing key is never overwritten),
  and the directory is fsynced (objects of 1 MiB and more, packs, are written with ``O_DIRECT``
  where the buffer and the file system allow it: no page-cache copy).  When ``put_if_absent``
  finds the key taken it fsyncs that file and its directory before answering "already there"
  (its writer may have crashed before its own directory fsync).  A reader never sees a
  partial object; a crash leaves at most a
  ``.tmp-*`` file, which :meth:`LocalBackend.list` ignores and
  :meth:`LocalBackend.remove_stale_temp` removes.
* Files are created mode 0600 and directories 0700; with ``owner`` set and running as root,
  everything created is chowned to that user (PostgreSQL's ``archive_command`` runs as
  ``postgres`` and must be able to read and write the repository).
* ``ENOENT`` is :class:`~coldkeep.errors.ObjectNotFound`, ``ENOSPC``/``EDQUOT``
  :class:`~coldkeep.errors.StorageFull`, any other ``OSError`` :class:`~coldkeep.errors.StorageError`.
* Key parts starting with ``.tmp-`` are reserved for temp files and rejected.
* ``put_if_version`` (compare-and-swap) holds an exclusive ``flock`` on the object's directory
  while it compares and replaces, so it is atomic between processes and threads of this host
  that use it (``capabilities.atomic_update``); the version is the SHA-256 of the content.
  ``delete`` takes the same ``flock``, so it cannot fall between a comparison and its rename.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pwd
import secrets
import stat as stat_mod
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, NoReturn

from coldkeep.durable import fsync_dir
from coldkeep.errors import ConfigError, InvalidKey, ObjectNotFound, StorageError, StorageFull
from coldkeep.storage.base import Backend, Capabilities, Data, ObjectInfo, validate_key, validate_prefix

TEMP_PREFIX = ".tmp-"
FILE_MODE = 0o600
DIR_MODE = 0o700


#: objects at least this big (packs) are written with ``O_DIRECT`` when their buffer allows it
DIRECT_MIN = 1024 * 1024
_DIRECT_ALIGN = 4096


def _write_direct(fd: int, view: memoryview) -> memoryview:
    """Write the 4 KiB-aligned head of ``view`` with ``O_DIRECT`` and return what is left.

    A backup writes gigabytes that nobody reads soon: through the page cache every byte is copied
    once more and new cache pages are taken (or others evicted: the database's hot pages); DMA
    from the pack buffer (an anonymous ``mmap``, so page-aligned) costs neither.  Where
    ``O_DIRECT`` is refused (the buffer is not aligned, say ``bytes``; a filesystem without it)
    nothing was written and the caller writes everything the normal way.  ``fsync`` is still
    needed (and done by the caller) for the file's metadata and the device cache."""
    head = len(view) - len(view) % _DIRECT_ALIGN
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT)
    except OSError:
        return view
    try:
        done = 0
        while done < head:
            try:
                written = os.write(fd, view[done:head])
            except OSError as exc:
                if exc.errno == errno.EINVAL and done % _DIRECT_ALIGN == 0:
                    break  # not aligned for this file system: the rest the normal way
                raise
            done += written
            if written % _DIRECT_ALIGN:
                break  # a short, unaligned write: continue buffered from here
        return view[done:]
    finally:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)


class LocalBackend(Backend):
    """Objects as files below ``root`` (created on demand)."""

    capabilities = Capabilities(atomic_create=True, local=True, atomic_update=True)

    def __init__(self, root: Path | str, owner: str | None = None) -> None:
        self.root = Path(os.path.abspath(root))
        self._ids: tuple[int, int] | None = None
        if owner and os.geteuid() == 0:
            try:
                entry = pwd.getpwnam(owner)
            except KeyError:
                raise ConfigError(
                    f"repository owner {owner!r} is not a user on this host",
                    hint="set [repository].owner to an existing OS user (usually postgres)",
                ) from None
            self._ids = (entry.pw_uid, entry.pw_gid)

    # -- helpers ---------------------------------------------------------------------------------

    def describe(self) -> str:
        return f"file://{self.root}"

    def _path(self, key: str) -> Path:
        validate_key(key)
        if any(part.startswith(TEMP_PREFIX) for part in key.split("/")):
            raise InvalidKey(f"{key!r} (parts starting with {TEMP_PREFIX!r} are reserved)")
        return self.root.joinpath(*key.split("/"))

    def _raise(self, exc: OSError, what: str, key: str | None = None) -> NoReturn:
        code = exc.errno
        if key is not None and code in (errno.ENOENT, errno.EISDIR, errno.ENOTDIR):
            raise ObjectNotFound(f"{key} in {self.describe()}") from exc
        if code in (errno.ENOSPC, errno.EDQUOT):
            raise StorageFull(self.describe()) from exc
        raise StorageError(f"{what}: {exc.strerror or exc}") from exc

    def _chown(self, path: Path | str, fd: int | None = None) -> None:
        if self._ids is None:
            return
        if fd is not None:
            os.fchown(fd, *self._ids)
        else:
            os.chown(path, *self._ids, follow_symlinks=False)

    _fsync_dir = staticmethod(fsync_dir)

    def _ensure_dir(self, path: Path) -> None:
        """Create ``path`` (and missing parents) 0700, owned by the owner, parents fsynced."""
        if path.is_dir():
            return
        if path != self.root and self.root in path.parents:
            self._ensure_dir(path.parent)
        else:  # the root itself: ancestors above it are created with default modes
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(path, DIR_MODE)
        except FileExistsError:
            if path.is_dir():  # another thread or process was first
                return
            raise
        os.chmod(path, DIR_MODE)  # the umask may have taken bits away
        self._chown(path)
        self._fsync_dir(path.parent)

    def _write_temp(self, final: Path, data: Data) -> Path:
        """Write ``data`` to a fsynced temp file next to ``final`` and return its path."""
        self._ensure_dir(final.parent)
        tmp = final.parent / f"{TEMP_PREFIX}{final.name[:64]}-{secrets.token_hex(8)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        try:
            try:
                os.fchmod(fd, FILE_MODE)
                self._chown(tmp, fd)
                view = memoryview(data).cast("B")
                if len(view) >= DIRECT_MIN:
                    view = _write_direct(fd, view)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return tmp

    # -- the interface ---------------------------------------------------------------------------

    def put(self, key: str, data: Data) -> None:
        """Store ``data`` at ``key`` atomically and durably, replacing any previous object."""
        path = self._path(key)
        try:
            tmp = self._write_temp(path, data)
            try:
                os.replace(tmp, path)
            except BaseException:
                _unlink_quietly(tmp)
                raise
            self._fsync_dir(path.parent)
        except OSError as exc:
            self._raise(exc, f"cannot write {path}")

    def put_if_absent(self, key: str, data: Data) -> bool:
        """Store unless ``key`` exists (hard link: atomic, never overwrites).

        Either way the object is durable when this returns: "already there" fsyncs the existing
        file and its directory too, since the writer that created it may have crashed after the
        link and before its own directory fsync (a second ``wal-push`` of the same segment must
        not acknowledge a directory entry a power cut can still take away)."""
        path = self._path(key)
        try:
            tmp = self._write_temp(path, data)
            try:
                os.link(tmp, path)
            except FileExistsError:
                self._sync_existing(path)
                return False
            finally:
                _unlink_quietly(tmp)
            self._fsync_dir(path.parent)
        except OSError as exc:
            self._raise(exc, f"cannot write {path}")
        return True

    @contextlib.contextmanager
    def _dir_lock(self, directory: Path) -> Iterator[None]:
        """An exclusive ``flock`` of ``directory`` for the block (FileNotFoundError when it
        does not exist)."""
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise
        except OSError as exc:
            self._raise(exc, f"cannot open {directory}")
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:
                self._raise(exc, f"cannot lock {directory}")
            yield
        finally:
            os.close(fd)  # releases the flock

    def put_if_version(self, key: str, data: Data, version: str | None) -> bool:
        """Compare-and-swap under an exclusive ``flock`` of the object's directory."""
        path = self._path(key)
        try:
            self._ensure_dir(path.parent)
        except OSError as exc:
            self._raise(exc, f"cannot create {path.parent}")
        with self._dir_lock(path.parent):
            return super().put_if_version(key, data, version)

    def _sync_existing(self, path: Path) -> None:
        """fsync an object another writer created, then its directory."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self._fsync_dir(path.parent)

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as exc:
            self._raise(exc, f"cannot read {path}", key)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset`` (fewer only at the end of the object)."""
        if offset < 0 or length < 0:
            raise ValueError(f"negative offset or length ({offset}, {length})")
        path = self._path(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                pieces: list[bytes] = []
                remaining = length
                while remaining > 0:
                    piece = os.pread(fd, remaining, offset)
                    if not piece:
                        break
                    pieces.append(piece)
                    offset += len(piece)
                    remaining -= len(piece)
                return b"".join(pieces)
            finally:
                os.close(fd)
        except OSError as exc:
            self._raise(exc, f"cannot read {path}", key)

    def open(self, key: str) -> BinaryIO:
        path = self._path(key)
        try:
            if path.is_dir():
                raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
            return open(path, "rb")
        except OSError as exc:
            self._raise(exc, f"cannot open {path}", key)

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            st = os.stat(path)
        except OSError as exc:
            self._raise(exc, f"cannot stat {path}", key)
        if not stat_mod.S_ISREG(st.st_mode):
            raise ObjectNotFound(f"{key} in {self.describe()}")
        return ObjectInfo(key, st.st_size, st.st_mtime)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``; temp files are skipped."""
        validate_prefix(prefix)
        # start in the deepest directory the prefix names completely
        start_rel = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root.joinpath(*start_rel.split("/")) if start_rel else self.root
        try:
            yield from self._walk(start, start_rel, prefix)
        except OSError as exc:
            self._raise(exc, f"cannot list {start}")

    def _walk(self, directory: Path, rel: str, prefix: str) -> Iterator[ObjectInfo]:
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            if entry.name.startswith(TEMP_PREFIX):
                continue
            key = f"{rel}/{entry.name}" if rel else entry.name
            if entry.is_dir(follow_symlinks=False):
                if (key + "/").startswith(prefix) or prefix.startswith(key + "/"):
                    yield from self._walk(Path(entry.path), key, prefix)
            elif entry.is_file(follow_symlinks=False) and key.startswith(prefix):
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:  # deleted while we listed
                    continue
                yield ObjectInfo(key, st.st_size, st.st_mtime)

    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error.

        Under the directory's ``flock``, as ``put_if_version``: a delete between its comparison
        and its rename would be undone by the rename (a removed lock document brought back by
        the holder's refresh, as S3 never does)."""
        path = self._path(key)
        try:
            with self._dir_lock(path.parent):
                os.unlink(path)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return
        except OSError as exc:
            self._raise(exc, f"cannot delete {path}")
        try:
            self._fsync_dir(path.parent)
        except OSError as exc:
            self._raise(exc, f"cannot sync {path.parent}")

    # -- maintenance -----------------------------------------------------------------------------

    def ensure_root(self) -> None:
        """Create the root directory now (``repo init``) instead of at the first write."""
        try:
            self._ensure_dir(self.root)
        except OSError as exc:
            self._raise(exc, f"cannot create {self.root}")

    def remove_stale_temp(self, older_than_s: float) -> int:
        """Delete ``.tmp-*`` files left by crashed writers, older than ``older_than_s`` seconds.

        Returns how many were removed.  A writer that is still running has a fresh temp file, so
        a threshold of minutes is safe.
        """
        cutoff = time.time() - older_than_s
        removed = 0
        try:
            for dirpath, _dirnames, filenames in os.walk(self.root):
                for name in filenames:
                    if not name.startswith(TEMP_PREFIX):
                        continue
                    path = os.path.join(dirpath, name)
                    try:
                        if os.lstat(path).st_mtime <= cutoff:
                            os.unlink(path)
                            removed += 1
                    except FileNotFoundError:
                        continue
        except OSError as exc:
            self._raise(exc, f"cannot clean temp files in {self.root}")
        return removed


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
