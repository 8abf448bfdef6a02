"""How restore puts bytes and names on disk: vectored writes, holes, and temporary files.

A file of several chunks is written and verified before it has a name.  Where the filesystem
supports it (Linux ``O_TMPFILE``: ext4, XFS, Btrfs, tmpfs, …) it is an unnamed file in its target
directory, given its name with ``linkat`` only once it verified: nothing is left behind when the
restore is killed, and no name exists for anything else to collide with.  Elsewhere it is a named
temporary file ``.coldkeep-restore-<32 hex digits>.tmp``: 128 random bits, created with
``O_EXCL | O_NOFOLLOW`` (never an existing file, never through a symlink), never one of the names
the restore itself creates, and 54 bytes long whatever the final name's length (a 255-byte name
still restores).  Only the restore that created a temporary file renames or removes it; a killed
restore can leave one behind, which no later restore renames onto anything.

A final name that exists already (a restore into a non-empty target) is replaced by a rename from
such a fresh temporary name, never opened, written into or deleted first.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import os
import sys
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from coldkeep.errors import IntegrityError

#: the most buffers one ``writev``/``pwritev`` takes (``EINVAL`` beyond: a safetensors shard of
#: thousands of tiny tensors is thousands of chunks in one run)
try:
    IOV_MAX = max(16, os.sysconf("SC_IOV_MAX"))
except (AttributeError, ValueError, OSError):  # pragma: no cover - not Linux
    IOV_MAX = 16  # POSIX's minimum (_XOPEN_IOV_MAX)

#: named temporary files (where ``O_TMPFILE`` is not supported): prefix + 32 hex digits + suffix
TEMP_PREFIX = ".coldkeep-restore-"
TEMP_SUFFIX = ".tmp"

_O_TMPFILE = getattr(os, "O_TMPFILE", 0)
#: what ``open(dir, O_TMPFILE)`` fails with where the filesystem or kernel lacks it
_NO_TMPFILE = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOTSUP}
_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000

#: gives an open file a name (``link(fd, path)``); raises ``OSError`` (``FileExistsError`` when
#: ``path`` exists)
Linker = Callable[[int, str], None]


def _load_linkat() -> Linker | None:
    """``linkat(fd, "", AT_FDCWD, path, AT_EMPTY_PATH)`` from libc, or None (not Linux).  The
    kernel allows it to a process with ``CAP_DAC_READ_SEARCH`` (root) and, in recent kernels, to
    the one that opened the file; elsewhere it fails (``ENOENT``/``EPERM``) and the next way is
    tried."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        func = libc.linkat
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    func.restype = ctypes.c_int

    def link_empty_path(fd: int, path: str) -> None:
        if func(fd, b"", _AT_FDCWD, os.fsencode(path), _AT_EMPTY_PATH) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)

    return link_empty_path


def _link_proc_fd(fd: int, path: str) -> None:
    """``linkat`` through the file's ``/proc/self/fd`` link (any user; fails with ``EXDEV`` where
    ``/proc`` belongs to another mount namespace, and without ``/proc``)."""
    os.link(f"/proc/self/fd/{fd}", path, follow_symlinks=True)


#: the ways to name an unnamed file, tried in this order on each filesystem
_LINKERS: list[Linker] = [
    linker for linker in (_load_linkat(), _link_proc_fd) if linker is not None and _O_TMPFILE
]


@dataclass
class TempFile:
    """A new file being restored: open for writing at ``fd``; ``path`` is its temporary name,
    None while it has none (``O_TMPFILE``, named by ``link`` once verified)."""

    fd: int
    path: str | None
    link: Linker | None = None


def write_all(fd: int, pieces: Sequence[bytes], offset: int | None = None) -> int:
    """Write ``pieces`` back to back (``writev``, or ``pwritev`` at ``offset``), at most
    :data:`IOV_MAX` buffers per call, continuing after short writes; returns their size."""
    views = [memoryview(p) for p in pieces if len(p)]
    total = sum(len(v) for v in views)
    first = 0  # views before this one are written
    while first < len(views):
        batch = views[first : first + IOV_MAX]
        if offset is not None:
            done = os.pwritev(fd, batch, offset)
            offset += done
        else:
            done = os.writev(fd, batch) if len(batch) > 1 else os.write(fd, batch[0])
        while done:  # drop what was written from the front of the views
            if done >= len(views[first]):
                done -= len(views[first])
                first += 1
            else:
                views[first] = views[first][done:]
                done = 0
    return total


def is_zero(data: bytes) -> bool:
    """Every byte of ``data`` is zero (one ``memcmp``: ~15 GB/s)."""
    return not data or (data[0] == 0 and data == bytes(len(data)))


def write_sparse(fd: int, pieces: Sequence[bytes], offset: int) -> int:
    """Write ``pieces`` back to back at ``offset``, leaving every all-zero piece unwritten (a hole
    in a new file); returns their size.  The caller sets the file's final size (``ftruncate``):
    a hole at the end is not written either."""
    pos = start = offset
    batch: list[bytes] = []
    for piece in pieces:
        if is_zero(piece):
            if batch:
                write_all(fd, batch, start)
                batch = []
        else:
            if not batch:
                start = pos
            batch.append(piece)
        pos += len(piece)
    if batch:
        write_all(fd, batch, start)
    return pos - offset


class Names:
    """Fresh temporary names in the target: random, and never one of ``reserved`` (the paths the
    restore creates), so a snapshot entry named like one cannot meet it."""

    def __init__(self, reserved: Collection[str] = ()) -> None:
        self.reserved = reserved
        #: per filesystem (``st_dev``): how its unnamed files are named, None: they cannot be
        self._linkers: dict[int, Linker | None] = {}

    def fresh(self, directory: str) -> str:
        while True:
            path = f"{directory}/{TEMP_PREFIX}{os.urandom(16).hex()}{TEMP_SUFFIX}"
            if path not in self.reserved:
                return path

    def make(self, directory: str, create: Callable[[str], object]) -> str:
        """A fresh name in ``directory`` that ``create(path)`` made (it must fail with
        ``FileExistsError`` on an existing name, as ``O_EXCL``, ``link`` and ``symlink`` do)."""
        while True:
            path = self.fresh(directory)
            try:
                create(path)
            except FileExistsError:
                continue
            return path

    def create_temp(self, directory: str) -> TempFile:
        """A new, empty file for writing in ``directory``: unnamed (``O_TMPFILE``) where the
        filesystem has it and an unnamed file can be linked there (:meth:`_linker`), else under
        a fresh temporary name."""
        if _LINKERS:
            try:
                fd = os.open(directory, _O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                if exc.errno not in _NO_TMPFILE:
                    raise
            else:
                try:
                    linker = self._linker(directory, os.fstat(fd).st_dev)
                except BaseException:
                    os.close(fd)
                    raise
                if linker is not None:
                    return TempFile(fd, None, linker)
                os.close(fd)  # unnamed files cannot be named on this filesystem
        fds: list[int] = []
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        path = self.make(directory, lambda p: fds.append(os.open(p, flags, 0o600)))
        return TempFile(fds[0], path)

    def _linker(self, directory: str, dev: int) -> Linker | None:
        """How unnamed files on filesystem ``dev`` are given a name, learnt once per filesystem
        with an empty probe: an unnamed file linked to a fresh temporary name and unlinked at
        once (a kill between the two leaves that empty file behind); None: they cannot be."""
        if dev in self._linkers:
            return self._linkers[dev]
        found: Linker | None = None
        probe = os.open(directory, _O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        try:
            for linker in _LINKERS:
                try:
                    path = self.make(directory, functools.partial(linker, probe))
                except OSError:
                    continue
                os.unlink(path)
                found = linker
                break
        finally:
            os.close(probe)
        self._linkers[dev] = found
        return found

    def discard(self, temp: TempFile) -> None:
        """Remove a temporary file that will not be published (its name is ours: it was created
        with ``O_EXCL`` or linked to a fresh name); the caller closes ``temp.fd``."""
        if temp.path is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp.path)

    def replace(self, tmp: str, dest: str) -> None:
        """Rename our temporary ``tmp`` onto ``dest``; on failure ``tmp`` is removed (it is ours).
        When both are names of one file (a hard link onto a name already linked to it), the
        rename does nothing (rename(2)) and ``tmp`` is removed too."""
        try:
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # still there only when it and dest were one file: the rename did nothing

    def publish(self, temp: TempFile, dest: str) -> None:
        """Give the verified file ``temp`` the name ``dest``.

        Unnamed: linked to ``dest`` (``linkat`` never replaces a name), or, when a name is in the
        way, linked to a fresh temporary name and renamed onto it.  Named: renamed onto ``dest``.
        A rename replaces a file or symlink in the way (a directory stays: ``EISDIR``); afterwards
        ``dest`` must be this very file, checked by inode."""
        tmp = temp.path
        if tmp is None:
            assert temp.link is not None
            link = temp.link
            try:
                link(temp.fd, dest)
                return
            except FileExistsError:
                pass
            tmp = self.make(dest.rpartition("/")[0], lambda p: link(temp.fd, p))
        self.replace(tmp, dest)
        mine, there = os.fstat(temp.fd), os.lstat(dest)
        if (mine.st_dev, mine.st_ino) != (there.st_dev, there.st_ino):
            raise IntegrityError(f"{dest}: replaced by something else while it was being restored")
