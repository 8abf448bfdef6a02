"""Byte planes of 16-bit data: the transform behind the envelope flag 2 (format version 2).

Half-precision weights (float16, bfloat16) compress poorly as they are: zstd finds no matches in
them and only entropy-codes the bytes, whose two halves differ (the high byte of each value holds
the sign and exponent, a few common values; the low byte is mantissa, nearly random).  Stored as
two planes, the high bytes together then the low bytes, the high plane compresses well and fast
and the low plane is stored as it is: ~8 % smaller than zstd on the interleaved bytes of the
benchmark's checkpoints, and about three times less CPU to compress (half the bytes, nothing to
search) and less to decompress.  :func:`choose` decides per chunk from a small sample, so text and
other data keep plain zstd.

Planes are by offset (``data[1::2]`` and ``data[0::2]``), so the transform is the same on any
machine, and a chunk of any length or start (CDC cuts tensors at any byte) can be split.  numpy (a dependency already, for tensors) is imported only when a chunk is sampled as
16-bit data or a planes blob is read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: chunks smaller than this are never split (the sample would cost more than it can save: the
#: 128 KiB page chunks of PostgreSQL files are not sampled)
MIN_SIZE = 256 * 1024
#: bytes sampled from the start of a chunk to decide
SAMPLE = 16 * 1024
#: a chunk whose first bytes are all ASCII is text: plain zstd, nothing sampled
ASCII_PROBE = 4096
#: plain zstd that keeps more than this fraction of the sample: the chunk may be 16-bit data
POOR = 0.75
#: planes are used when their estimate is below this fraction of plain zstd's
GAIN = 0.95
#: a plane whose sample keeps more than this fraction is stored raw without trying zstd on it
RAW_PLANE = 0.97


def _np() -> Any:
    import numpy

    return numpy


def split(data: Any) -> tuple[Any, Any]:
    """(bytes at odd offsets, bytes at even offsets) of ``data``, as numpy arrays (for an odd
    length the second has one byte more)."""
    np = _np()
    n = len(data)
    words = np.frombuffer(data, dtype="<u2", count=n // 2)
    odd = (words >> 8).astype(np.uint8)
    if n % 2 == 0:
        return odd, words.astype(np.uint8)
    even = np.empty(n - n // 2, dtype=np.uint8)
    even[:-1] = words  # the low byte of each
    even[-1] = memoryview(data)[n - 1]
    return odd, even


def join(odd: Any, even: Any) -> bytes:
    """The bytes :func:`split` took apart: ``even[0] odd[0] even[1] odd[1] …`` (``even`` may have
    one byte more)."""
    np = _np()
    half = len(odd)
    out = np.empty(half + len(even), dtype=np.uint8)
    words = out[: 2 * half].view("<u2")
    np.left_shift(np.frombuffer(odd, dtype=np.uint8), 8, out=words, dtype="<u2")
    low = np.frombuffer(even, dtype=np.uint8)
    words |= low[:half]
    if len(low) > half:
        out[-1] = low[-1]
    return bytes(out.tobytes())


def choose(data: Any, sample_size: Callable[[Any], int]) -> tuple[bool, bool] | None:
    """Whether to store ``data`` (a chunk) as planes, from its first :data:`SAMPLE` bytes:
    ``None`` for plain zstd, else whether to try zstd on (the odd plane, the even plane).
    ``sample_size`` is the compressed size of a buffer (a cheap compressor)."""
    if len(data) < MIN_SIZE:
        return None
    sample = memoryview(data)[:SAMPLE]
    if bytes(sample[:ASCII_PROBE]).isascii():
        return None  # text (16-bit values have high bytes >= 0x80: a negative sign, say)
    plain = sample_size(sample)
    if plain < POOR * len(sample):
        return None  # compresses well as it is (text, say): matches matter, keep them
    odd, even = split(sample)
    odd_size, even_size = sample_size(odd), sample_size(even)
    half = len(sample) // 2
    estimate = min(odd_size, half) + min(even_size, half)
    if estimate >= GAIN * plain:
        return None
    return odd_size < RAW_PLANE * half, even_size < RAW_PLANE * half
