"""Reading files for a backup: never mapped, so that a file that changes while it is read can
neither crash the reader (a mapped file truncated under it is SIGBUS) nor change bytes already
hashed (a mapped page rewritten in place).

:class:`Windows` reads a file front to back into buffers of :data:`READ_WINDOW` bytes from a
:class:`WindowBuffers` pool; :func:`open_regular` opens what the walk listed, refusing anything
that is no longer a regular file.  :data:`READ_HOOK` lets a test change a file at a chosen point.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Callable
from typing import Final

#: files are read in windows of this many bytes (:func:`chunk_file`); a chunk that runs past the
#: end of one is copied to the start of the next (under ``max_size`` bytes per window)
READ_WINDOW: Final = 8 * 1024 * 1024
#: Test-only: ``READ_HOOK(path, offset)`` is called before a file is opened for a backup (offset
#: -1) and before each read at ``offset``, so that a test can change the file at a chosen point.
#: It is ``None`` in coldkeep itself (nothing sets it) and then costs one comparison per read.
READ_HOOK: Callable[[str, int], None] | None = None


def read_hook(path: str, offset: int) -> None:
    """Call :data:`READ_HOOK` (tests only; ``None`` in coldkeep itself, where this does nothing)."""
    if READ_HOOK is not None:
        READ_HOOK(path, offset)


def open_regular(path: str) -> tuple[int, os.stat_result]:
    """Open ``path`` for reading as it is now: a descriptor and its ``fstat``.

    Symlinks are not followed and a FIFO does not block the open (``O_NOFOLLOW | O_NONBLOCK``):
    something put in a file's place after it was listed is refused with ``OSError`` (``ELOOP``,
    or ``EINVAL`` for anything that is not a regular file), as is a missing file
    (``FileNotFoundError``).  The caller closes the descriptor.
    """
    read_hook(path, -1)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "no longer a regular file", path)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _unreferenced(buf: bytearray) -> bool:
    """True when no view of ``buf`` exists any more: a bytearray with exported buffers refuses to
    be resized (``BufferError``); a pop and an append of one byte are O(1) and keep its storage."""
    try:
        buf.append(buf.pop())
    except BufferError:
        return False
    return True


class WindowBuffers:
    """Read buffers of :data:`READ_WINDOW` bytes shared by the files one backup reads (one pool
    per backup: fresh buffers cost a page fault per page).  Thread-safe.

    A buffer handed back is given out again only once no view of it is left
    (:func:`_unreferenced`): views that outlive their window keep their bytes.  At most ``keep``
    spare buffers are kept; the pool holds nothing once it is dropped.
    """

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self._lock = threading.Lock()
        self._spare: list[bytearray] = []

    def take(self, size: int) -> bytearray:
        """A buffer of at least ``size`` bytes (its contents are garbage)."""
        if size <= READ_WINDOW:
            with self._lock:
                for i, buf in enumerate(self._spare):
                    if len(buf) == READ_WINDOW and _unreferenced(buf):
                        return self._spare.pop(i)
        return bytearray(size)

    def give(self, buf: bytearray) -> None:
        """Hand ``buf`` back (views of it may still exist)."""
        if len(buf) == READ_WINDOW:
            with self._lock:
                if len(self._spare) < self.keep:
                    self._spare.append(buf)


class Windows:
    """A file read front to back into buffers of about ``window`` bytes, never past ``limit``.

    Views of a buffer stay valid, and hold exactly the bytes that were read, whatever happens to
    the file afterwards: a buffer is filled once, and reused for a later window only when no view
    of it is left (:class:`WindowBuffers`).  A read that returns nothing before ``limit`` means
    the file shrank since it was opened: ``ended`` is set and nothing more is read.
    """

    def __init__(self, fd: int, path: str, limit: int, buffers: WindowBuffers) -> None:
        self.fd, self.path, self.limit, self.buffers = fd, path, limit, buffers
        #: file offsets of the buffered bytes: ``[base, end)``
        self.base = self.end = 0
        self.ended = False
        self._buf: bytearray | None = None
        self._view = memoryview(b"")

    @property
    def exhausted(self) -> bool:
        """Nothing more can be read: ``limit`` reached, or the file ended before it."""
        return self.ended or self.end >= self.limit

    def span(self, start: int, need: int) -> memoryview:
        """The buffered bytes from ``start`` (not before the current buffer) on: at least up to
        offset ``need`` unless the file ends first, reading a new window if need be."""
        if need > self.end and not self.exhausted:
            self._refill(start, need)
        return self._view[start - self.base : self.end - self.base]

    def _refill(self, start: int, need: int) -> None:
        size = min(max(READ_WINDOW, need - start), self.limit - start)
        buf = self.buffers.take(size)
        view = memoryview(buf)
        carry = max(0, self.end - start)  # the bytes from ``start`` on that are buffered already
        if carry:
            view[:carry] = self._view[start - self.base : self.end - self.base]
        filled = carry
        while filled < size:
            read_hook(self.path, start + filled)
            n = os.preadv(self.fd, [view[filled:size]], start + filled)
            if n == 0:
                self.ended = True
                break
            filled += n
        old, self._buf = self._buf, buf
        self._view, self.base, self.end = view[:filled], start, start + filled
        if old is not None:
            self.buffers.give(old)

    def close(self) -> None:
        self._view = memoryview(b"")
        if self._buf is not None:
            self.buffers.give(self._buf)
            self._buf = None
