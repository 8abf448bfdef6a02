"""The C heap of a process that moves gigabytes through short-lived buffers (a restore).

A restore decompresses every chunk into a fresh buffer of up to a few MiB, on several threads.
glibc's malloc, left to its defaults, hands such buffers back to the kernel as they are freed
(``mmap`` for big blocks, trimming the top of each thread's heap), so the next buffer is new
memory again and every one of its pages is a page fault: measured on a 4 GB ``pg restore``,
~420,000 minor faults (1.7 GB of memory touched for the first time) and ~1 s of system time.
:func:`keep_freed_memory` makes freed blocks stay in the process for reuse: blocks up to 32 MiB
come from the heap, and a heap is trimmed only when 1 GiB at its top is free (the same restore:
~31,000 faults, ~1 s less system time, ~15 MB more peak RSS).  A no-op where the C library has no
``mallopt`` (musl, macOS)."""

from __future__ import annotations

import ctypes

#: glibc ``mallopt`` parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: the largest ``M_MMAP_THRESHOLD`` glibc accepts on 64-bit (``DEFAULT_MMAP_THRESHOLD_MAX``)
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 1024 * 1024 * 1024

_done = False


def keep_freed_memory() -> bool:
    """Configure malloc as the module docstring says (once per process); ``True`` when it took."""
    global _done
    if _done:
        return True
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    return _done
