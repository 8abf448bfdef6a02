"""Durable file operations, in one place: every module that makes a file or a rename survive a
power cut uses these.

- :func:`fsync_dir` makes a directory's entries durable (a file created, renamed or removed in it).
- :func:`fsync_file` makes a file's contents durable, by path.
- :func:`write_atomic` writes a file through an unpredictable temporary name in the same
  directory (``O_EXCL``), then renames it into place: a reader sees the old file or the whole new
  one, never a part; with ``sync`` the temporary file is fsynced before the rename and the directory
  after it.
- :class:`AtomicOutput` does the same for a file written as a stream (an export archive):
  ``with AtomicOutput(dest) as f: …``.

Imports only ``os``: the per-segment WAL path (``wal-push``/``wal-fetch``, one
process per 16 MiB) imports this module.
"""

from __future__ import annotations

import os


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory: its entries (files created, renamed or removed in it) become durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike[str]) -> None:
    """fsync a file (not through a symlink): its contents become durable."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(dest: str | os.PathLike[str]) -> str:
    """An unpredictable temporary name beside ``dest``: ``.<name, at most 64 chars>.tmp-<16 hex>``
    (short whatever ``dest``'s length; the caller creates it with ``O_EXCL``)."""
    directory, base = os.path.split(os.fspath(dest))
    return os.path.join(directory, f".{base[:64]}.tmp-{os.urandom(8).hex()}")


def write_atomic(
    dest: str | os.PathLike[str],
    data: bytes | memoryview,
    *,
    sync: bool = True,
    mode: int = 0o600,
    owner: tuple[int, int] | None = None,
) -> None:
    """Replace ``dest`` with ``data`` atomically (temporary file + rename; never a partial file).

    ``sync``: fsync the temporary file before the rename and the directory after it, so the new
    file survives a power cut once this returns.  ``owner``: ``(uid, gid)`` to give the file (as
    root).  On any error the temporary file is removed and ``dest`` is left as it was."""
    tmp = temp_name(dest)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            if owner is not None:
                os.fchown(fd, *owner)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dest)
    except BaseException:
        try:  # noqa: SIM105 (no contextlib on the per-segment path)
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if sync:
        fsync_dir(os.path.dirname(os.fspath(dest)) or ".")


class AtomicOutput:
    """``with AtomicOutput(dest) as f:`` — ``f`` is a new file under an unpredictable temporary name
    beside ``dest`` (``O_EXCL``); when the block ends normally it is flushed, fsynced and renamed
    to ``dest`` and the directory fsynced, so ``dest`` is the whole file or what was there before;
    when the block raises, the temporary file is removed."""

    def __init__(self, dest: str | os.PathLike[str], *, mode: int = 0o644, buffering: int = -1) -> None:
        self.dest = os.fspath(dest)
        self.mode = mode
        self.buffering = buffering
        self.tmp = ""

    def __enter__(self):  # type: ignore[no-untyped-def]
        self.tmp = temp_name(self.dest)
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, self.mode)
        self.file = open(fd, "wb", buffering=self.buffering)
        return self.file

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                self.file.flush()
                os.fsync(self.file.fileno())
        finally:
            self.file.close()
        if exc_type is not None:
            try:  # noqa: SIM105 (no contextlib on the per-segment path)
                os.unlink(self.tmp)
            except OSError:
                pass
            return
        try:
            os.replace(self.tmp, self.dest)
        except BaseException:
            os.unlink(self.tmp)
            raise
        fsync_dir(os.path.dirname(self.dest) or ".")
