"""Packs are written with O_DIRECT (no page-cache copy) when the buffer allows it, and any other
buffer still goes the normal way; the bytes on disk are the same either way."""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.helpers import need

from coldkeep.storage import local
from coldkeep.storage.local import LocalBackend

MiB = 1024 * 1024


def resident_pages(path: Path) -> int:
    """Pages of ``path`` in the page cache (``mincore`` on a fresh mapping of it)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    size = path.stat().st_size
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    vec = (ctypes.c_ubyte * pages)()
    fd = os.open(path, os.O_RDONLY)
    try:
        ptr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert ptr is not None and ptr != ctypes.c_void_p(-1).value
        try:
            assert libc.mincore(ptr, size, vec) == 0
        finally:
            libc.munmap(ptr, size)
    finally:
        os.close(fd)
    return sum(v & 1 for v in vec)


def direct_io_works(directory: Path) -> bool:
    probe = directory / "probe"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)
    except OSError:
        return False
    os.close(fd)
    probe.unlink()
    return True


@pytest.fixture
def direct_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on a file system that accepts O_DIRECT: ``tmp_path``, else one beside the tests
    (``/tmp`` may be a tmpfs, which refuses it); skipped, or failed under CI, if neither does."""
    if direct_io_works(tmp_path):
        yield tmp_path
        return
    here = Path(tempfile.mkdtemp(prefix=".direct-io-", dir=Path(__file__).parent))
    try:
        need(direct_io_works(here), f"neither {tmp_path} nor {here.parent} accepts O_DIRECT")
        yield here
    finally:
        shutil.rmtree(here, ignore_errors=True)


def test_an_aligned_pack_buffer_bypasses_the_page_cache(direct_dir: Path) -> None:
    backend = LocalBackend(direct_dir / "repo")
    size = 8 * MiB + 1234  # an unaligned tail is written the normal way
    buf = mmap.mmap(-1, size)
    buf.write(os.urandom(size))
    assert backend.put_if_absent("data/ab/pack", memoryview(buf)[:size])
    path = direct_dir / "repo" / "data/ab/pack"
    # before anything reads it back: at most the tail's page is cached
    assert resident_pages(path) <= 1
    assert backend.get("data/ab/pack") == buf[:size]


def test_bytes_and_small_objects_take_the_normal_path(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "repo")
    data = os.urandom(3 * MiB + 5)[1:]  # bytes: alignment is whatever malloc gave
    backend.put("k/big", data)
    backend.put("k/small", b"x" * 100)
    assert backend.get("k/big") == data and backend.get("k/small") == b"x" * 100


def test_an_unaligned_view_falls_back_without_losing_bytes(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "repo")
    buf = mmap.mmap(-1, 4 * MiB)
    buf.write(os.urandom(4 * MiB))
    view = memoryview(buf)[1 : 4 * MiB - 7]  # starts 1 byte past a page
    backend.put("k/odd", view)
    assert backend.get("k/odd") == bytes(view)
    assert len(view) >= local.DIRECT_MIN
