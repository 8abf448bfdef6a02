"""Splitting files and streams into chunks so identical content deduplicates.

Three strategies, all of which cover their input exactly, in order, with every chunk at most
``params.max_size`` bytes:

``"cdc"``
    Content-defined chunking (FastCDC 2020, the Cython extension of ``pyfastcdc``): cut points
    depend on the bytes around them, so an insertion moves only the boundaries next to it.  Every
    chunk but the last is at least ``min_size``.
``"safetensors"``
    One chunk for the header (8-byte length + JSON), then, in file order, each tensor's byte range:
    a tensor up to ``max_size`` is one chunk, a bigger one is cut with CDC *inside its own range*,
    so a changed tensor never moves the boundaries of its neighbours.  Gaps between tensors and
    bytes after the last one are ranges of their own (same rule).  A header that is not a
    well-formed safetensors header, or offsets that overlap or run past the file, make the whole
    file fall back to plain CDC; that is reported (``fallback_reason``), never raised.
``"pages"``
    Fixed ``page_chunk``-sized chunks (a multiple of PostgreSQL's 8 KiB page), so an unchanged run
    of pages in a relation file deduplicates however the rest of the file changed.

``"auto"`` picks by path (:func:`strategy_for`) and, for anything that is not a PostgreSQL
relation file, by content: a buffer that parses as a safetensors file is chunked as one (files in
a Hugging Face cache are stored as ``blobs/<sha256>`` without the extension).

Chunk boundaries are part of the repository format in practice (changing them re-uploads
everything once), so every input of the cut-point function is explicit: :class:`ChunkerParams`
(stored in the repository config) and the normalisation level :data:`NORMALIZED_CHUNKING`.
``tests/unit/test_chunker.py`` pins the boundaries of a fixed input with the default parameters.

Size: a little over 600 lines, kept as one module on purpose: chunk boundaries are repository
format (changing one re-uploads everything once), and the three strategies, the file reader
(:class:`FileChunks`) and the stream chunker (:class:`StreamChunker`) share their cut-point rules
(:func:`_final`, :func:`_first_cut`, the one FastCDC setup); one module is what the boundary tests
pin, and a second home for half of those rules is how two of them would drift apart.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import os
import re
import struct
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final, Literal, get_args

from pyfastcdc import FastCDC

from coldkeep.errors import ConfigError
from coldkeep.repository.fileread import WindowBuffers, Windows, open_regular

log = logging.getLogger(__name__)

Strategy = Literal["cdc", "safetensors", "pages", "auto"]
#: a strategy after "auto" was resolved
Resolved = Literal["cdc", "safetensors", "pages"]

#: PostgreSQL's block size (BLCKSZ); ``page_chunk`` is a multiple of it.
PG_PAGE_SIZE: Final = 8192
#: FastCDC's normalised-chunking level (NC in the paper), pinned rather than left to the library's
#: default so that an upgrade of pyfastcdc cannot silently move every boundary.
NORMALIZED_CHUNKING: Final = 1
#: Headers larger than this are not trusted (the limit of the reference safetensors implementation).
SAFETENSORS_MAX_HEADER: Final = 100_000_000

#: True when pyfastcdc's Cython extension is in use (~4 GB/s); the pure-Python fallback computes
#: the same boundaries about a thousand times slower.
CDC_ACCELERATED: Final[bool] = FastCDC.__module__.startswith("pyfastcdc.cy")
if not CDC_ACCELERATED:  # pragma: no cover - the PyPI wheels ship the extension
    log.warning("pyfastcdc's compiled extension is missing: content-defined chunking will be very slow")

# pyfastcdc's accepted ranges (pyfastcdc/cy/fastcdc.pyx)
_MIN_RANGE: Final = (64, 1024 * 1024)
_AVG_RANGE: Final = (256, 4 * 1024 * 1024)
_MAX_RANGE: Final = (1024, 16 * 1024 * 1024)
_SEED_LIMIT: Final = 1 << 63  # pyfastcdc computes ``seed << 1`` in a uint64


@dataclass(frozen=True)
class ChunkerParams:
    """Chunk-size parameters; part of a repository's config, fixed when it is created.

    ``avg_size`` is FastCDC's target (it sets the cut mask); as the FastCDC paper notes, the mean
    chunk of random data comes out near ``min_size + avg_size`` (1.2 MiB measured on float16
    weights with the defaults, see ``bench/bench_chunker.py``).
    ``seed`` (0 = the reference gear table) XORs pyfastcdc's gear table: a random per-repository
    seed keeps chunk boundaries, and therefore chunk sizes, from revealing known content.

    Invalid values raise :class:`~coldkeep.errors.ConfigError`.
    """

    min_size: int = 256 * 1024
    avg_size: int = 1024 * 1024
    max_size: int = 4 * 1024 * 1024
    page_chunk: int = 128 * 1024  # 16 pages: see docs/benchmarks.md, "Page-chunk size"
    seed: int = 0

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError(
                "invalid chunker parameters: " + "; ".join(problems),
                hint=(
                    f"min_size {_MIN_RANGE[0]}..{_MIN_RANGE[1]} (even) <= avg_size {_AVG_RANGE[0]}..{_AVG_RANGE[1]}"
                    f" <= max_size {_MAX_RANGE[0]}..{_MAX_RANGE[1]}; page_chunk a multiple of {PG_PAGE_SIZE}"
                    " <= max_size; 0 <= seed < 2**63"
                ),
            )

    def problems(self) -> list[str]:
        """What is wrong with these values (empty when they are usable)."""
        out: list[str] = []
        for name, value in asdict(self).items():
            if type(value) is not int:
                out.append(f"{name} must be an integer, not {type(value).__name__}")
        if out:
            return out
        for name, (lo, hi) in (("min_size", _MIN_RANGE), ("avg_size", _AVG_RANGE), ("max_size", _MAX_RANGE)):
            value = getattr(self, name)
            if not lo <= value <= hi:
                out.append(f"{name}={value} is outside {lo}..{hi}")
        if self.min_size % 2:
            # FastCDC tests cut points on even offsets from min_size rounded down: an odd minimum
            # could produce a chunk one byte shorter than it
            out.append(f"min_size={self.min_size} must be even")
        if not self.min_size <= self.avg_size <= self.max_size:
            out.append(
                f"need min_size <= avg_size <= max_size (got {self.min_size}, {self.avg_size}, {self.max_size})"
            )
        if self.page_chunk <= 0 or self.page_chunk % PG_PAGE_SIZE:
            out.append(f"page_chunk={self.page_chunk} is not a positive multiple of {PG_PAGE_SIZE}")
        elif self.page_chunk > self.max_size:
            out.append(f"page_chunk={self.page_chunk} exceeds max_size={self.max_size}")
        if not 0 <= self.seed < _SEED_LIMIT:
            out.append(f"seed={self.seed} is outside 0..2**63-1")
        return out

    def to_dict(self) -> dict[str, int]:
        """The values to store in a repository config (every field, so nothing depends on defaults)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ChunkerParams:
        """Read :meth:`to_dict` output; a missing ``seed`` (older configs) means 0."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(doc) - known)
        if unknown:
            raise ConfigError(f"unknown chunker parameter(s): {', '.join(map(str, unknown))}")
        missing = sorted(known - {"seed"} - set(doc))
        if missing:
            raise ConfigError(f"chunker parameter(s) missing: {', '.join(missing)}")
        return cls(**dict(doc))


DEFAULT_PARAMS: Final = ChunkerParams()


# --- strategy selection ----------------------------------------------------------------------------

# <relfilenode>[_fsm|_vm|_init][.<segment>]
_RELATION_FILE = re.compile(r"[0-9]+(?:_(?:fsm|vm|init))?(?:\.[0-9]+)?")
_DIGITS = re.compile(r"[0-9]+")
# a tablespace's version directory, e.g. PG_15_202209061 (also matches once the pg_tblspc symlink
# has been resolved to the tablespace's own location)
_TABLESPACE_VERSION_DIR = re.compile(r"PG_[0-9]+_[0-9]+")


def strategy_for(path: str | os.PathLike[str]) -> Resolved:
    """The strategy ``"auto"`` picks from a path alone.

    * ``*.safetensors`` (any case) -> ``"safetensors"``
    * PostgreSQL relation files -> ``"pages"``: a name ``<digits>[_fsm|_vm|_init][.<digits>]`` in
      ``global/``, in ``base/<dboid>/``, or in ``<PG_version_catversion>/<dboid>/`` (a tablespace,
      reached through ``pg_tblspc/<oid>/`` or directly)
    * anything else -> ``"cdc"``

    Works for absolute paths, relative ones and tar member names (``./base/1/1259``).
    """
    text = os.fspath(path)
    parts = [p for p in text.replace(os.sep, "/").split("/") if p not in ("", ".")]
    if not parts:
        return "cdc"
    name = parts[-1]
    if name.lower().endswith(".safetensors"):
        return "safetensors"
    if _RELATION_FILE.fullmatch(name):
        parents = parts[:-1]
        if parents and parents[-1] == "global":
            return "pages"
        if (
            len(parents) >= 2
            and _DIGITS.fullmatch(parents[-1])
            and (parents[-2] == "base" or _TABLESPACE_VERSION_DIR.fullmatch(parents[-2]))
        ):
            return "pages"
    return "cdc"


# --- the chunkers ------------------------------------------------------------------------------------


def _fastcdc(params: ChunkerParams) -> FastCDC:
    # a new instance per use: pyfastcdc documents FastCDC objects as not safe to share between threads
    return FastCDC(
        params.avg_size,
        min_size=params.min_size,
        max_size=params.max_size,
        normalized_chunking=NORMALIZED_CHUNKING,
        seed=params.seed,
    )


def _byte_view(buf: bytes | bytearray | memoryview | mmap.mmap) -> memoryview:
    mv = memoryview(buf)
    if mv.ndim != 1 or mv.format != "B":
        mv = mv.cast("B")
    return mv


def _cdc(cdc: FastCDC, mv: memoryview, base: int) -> Iterator[tuple[int, int]]:
    for chunk in cdc.cut_buf(mv):
        yield base + chunk.offset, chunk.length


def _pages(size: int, page_chunk: int) -> Iterator[tuple[int, int]]:
    for offset in range(0, size, page_chunk):
        yield offset, min(page_chunk, size - offset)


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def safetensors_ranges(
    buf: bytes | bytearray | memoryview | mmap.mmap, size: int | None = None
) -> list[tuple[int, int]] | str:
    """The byte ranges ``[(start, end), ...]`` of a safetensors file, or why it is not one.

    Ranges, in order, cover the buffer exactly: the header (8 + N bytes), then each tensor with
    ``begin < end`` sorted by offset, with gaps and trailing bytes as ranges of their own.  Only the
    layout is checked (a JSON object whose entries, apart from ``__metadata__``, carry integer
    ``data_offsets`` inside the data section that do not overlap); dtypes and shapes are not, so a
    dtype this code has never heard of still chunks per tensor.  Never raises on bad input.
    ``size``, when given, is the size of the file and ``buf`` its first bytes (at least the header).
    """
    mv = _byte_view(buf)
    size = len(mv) if size is None else size
    if min(size, len(mv)) < 8:
        return f"{size} bytes is too short for a safetensors header"
    (header_len,) = struct.unpack_from("<Q", mv, 0)
    if header_len > SAFETENSORS_MAX_HEADER:
        return f"header length {header_len} exceeds the {SAFETENSORS_MAX_HEADER}-byte limit"
    data_start = 8 + header_len
    if data_start > size:
        return f"header length {header_len} runs past the end of the file ({size} bytes)"
    if data_start > len(mv):
        return f"header ({header_len} bytes) could not be read whole (the file shrank)"
    if header_len == 0 or mv[8] not in b"{ \t\r\n":
        return "header is not a JSON object"
    try:
        header = json.loads(str(mv[8:data_start], "utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return f"header is not valid UTF-8 JSON ({_short(str(exc))})"
    if not isinstance(header, dict):
        return "header is not a JSON object"
    data_len = size - data_start
    tensors: list[tuple[int, int, str]] = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(x) is int for x in offsets)):
            return f"tensor {_short(repr(name))} has no valid data_offsets"
        begin, end = offsets
        if not 0 <= begin <= end <= data_len:
            return (
                f"tensor {_short(repr(name))} data_offsets [{begin}, {end}] lie outside the "
                f"{data_len}-byte data section"
            )
        if begin < end:  # a zero-length tensor owns no bytes
            tensors.append((begin, end, name))
    tensors.sort()
    ranges = [(0, data_start)]
    pos = 0
    previous = ""
    for begin, end, name in tensors:
        if begin < pos:
            return f"tensors {_short(repr(previous))} and {_short(repr(name))} overlap"
        if begin > pos:
            ranges.append((data_start + pos, data_start + begin))
        ranges.append((data_start + begin, data_start + end))
        pos, previous = end, name
    if pos < data_len:
        ranges.append((data_start + pos, size))
    return ranges


def _ranges_chunks(
    mv: memoryview, ranges: list[tuple[int, int]], params: ChunkerParams
) -> Iterator[tuple[int, int]]:
    cdc: FastCDC | None = None
    for start, end in ranges:
        if end - start <= params.max_size:
            yield start, end - start
        else:
            cdc = cdc or _fastcdc(params)
            yield from _cdc(cdc, mv[start:end], start)


class ChunkRanges(Iterator[tuple[int, int]]):
    """What :func:`chunk_buffer` returns: an iterator of ``(offset, length)`` that also says how
    the buffer was chunked.

    ``strategy`` is the strategy actually used; ``fallback_reason`` is set when safetensors
    chunking was asked for (explicitly, or by ``"auto"`` from a ``.safetensors`` path) but the
    header was not usable, and the buffer was chunked with plain CDC instead.
    """

    def __init__(
        self,
        buf: bytes | bytearray | memoryview | mmap.mmap,
        strategy: Strategy,
        params: ChunkerParams,
    ) -> None:
        if strategy not in get_args(Strategy):
            raise ValueError(f"unknown chunking strategy {strategy!r}")
        mv = _byte_view(buf)
        self.requested: Strategy = strategy
        self.fallback_reason: str | None = None
        self.strategy: Resolved
        self._it: Iterator[tuple[int, int]]
        if strategy == "pages":
            self.strategy = "pages"
            self._it = _pages(len(mv), params.page_chunk)
            return
        if strategy in ("safetensors", "auto"):
            layout = safetensors_ranges(mv)
            if isinstance(layout, list):
                self.strategy = "safetensors"
                self._it = _ranges_chunks(mv, layout, params)
                return
            if strategy == "safetensors":
                self.fallback_reason = layout
        self.strategy = "cdc"
        if len(mv) <= params.min_size:  # FastCDC never cuts before min_size: one chunk (or none)
            self._it = iter([(0, len(mv))] if len(mv) else [])
            return
        self._it = _cdc(_fastcdc(params), mv, 0)

    @property
    def fallback(self) -> bool:
        return self.fallback_reason is not None

    def __next__(self) -> tuple[int, int]:
        return next(self._it)

    def close(self) -> None:
        """Drop the buffer reference early (the iterator is exhausted from then on)."""
        self._it = iter(())


def chunk_buffer(
    buf: bytes | bytearray | memoryview | mmap.mmap,
    strategy: Strategy,
    params: ChunkerParams = DEFAULT_PARAMS,
) -> ChunkRanges:
    """``(offset, length)`` pairs that cover ``buf`` exactly, in order.

    ``"auto"`` has no path to go by here: it uses safetensors chunking when ``buf`` parses as a
    safetensors file and CDC otherwise (never ``"pages"``).  The iterator keeps a view of ``buf``
    (an mmap cannot be closed while it is alive).  Cut-point search releases the GIL.
    """
    return ChunkRanges(buf, strategy, params)


def _final(offset: int, length: int, available: int, params: ChunkerParams) -> bool:
    """Whether FastCDC's cut of a chunk at ``offset`` of a buffer of ``available`` bytes is the
    cut it finds in any longer buffer (the whole file).

    FastCDC (2020) looks at most ``max_size`` bytes past a chunk's start, so a cut with that many
    bytes at hand is final.  So is a cut its hash found before the end of the buffer: up to there
    it scans the same positions with the same masks as in a longer buffer (its normalisation
    point is ``min(avg_size, bytes at hand)``, and below it the small mask applies either way) and
    stops at the first match.  Only a cut at the end of the buffer is forced by the buffer.
    tests/unit/test_chunker.py checks windows of many sizes against :func:`chunk_buffer`.
    """
    return available - offset >= params.max_size or offset + length < available


class FileChunks(Iterator[memoryview]):
    """What :func:`chunk_file` returns: an iterator of views of a file's chunks, in order.

    Use it as a context manager or call :meth:`close`.  The file is read (``preadv``) in windows
    of :data:`~coldkeep.repository.fileread.READ_WINDOW` bytes, never mapped: a view holds the bytes that were read and stays
    valid as long as it is referenced, whatever happens to the file afterwards (a mapped file
    truncated under a reader kills it with SIGBUS, and a mapped page rewritten in place would
    change under the hash already computed from it).

    Attributes: ``path``, ``stat`` (``fstat`` at open), ``size`` (its size: nothing past it is
    read), ``strategy`` (used), ``fallback_reason`` (see :class:`ChunkRanges`) and
    ``bytes_yielded``.  When the file shrinks while it is read, the chunks end where the file
    ended (``bytes_yielded < size``); when it grows, what was appended is not read.  Either way
    the views hold exactly ``bytes_yielded`` bytes of the file, which is for the caller to report.

    Memory: a few windows (those that views still refer to, up to two spares) and, for a
    safetensors file, its header.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        strategy: Strategy,
        params: ChunkerParams,
        buffers: WindowBuffers | None = None,
    ) -> None:
        if strategy not in get_args(Strategy):
            raise ValueError(f"unknown chunking strategy {strategy!r}")
        self.path = os.fspath(path)
        self.requested: Strategy = strategy
        resolved: Resolved = strategy_for(self.path) if strategy == "auto" else strategy
        self.fallback_reason: str | None = None
        self.bytes_yielded = 0
        self._fd, self.stat = open_regular(self.path)
        self.size = self.stat.st_size
        with contextlib.suppress(OSError):
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        self._windows: Windows | None = Windows(self._fd, self.path, self.size, buffers or WindowBuffers())
        try:
            self.strategy: Resolved = resolved
            regions = self._regions(strategy, resolved, params) if self.size else []
            self._it: Iterator[memoryview] = self._chunks(self._windows, regions, params)
        except BaseException:
            self.close()
            raise

    def _regions(
        self, strategy: Strategy, resolved: Resolved, params: ChunkerParams
    ) -> list[tuple[int, int, int]]:
        """``(start, end, step)`` ranges that cover the file in order: ``step`` > 0 cuts fixed
        chunks of that size, 0 cuts with CDC (the same boundaries as :func:`chunk_buffer` on the
        whole file)."""
        if resolved == "pages":
            return [(0, self.size, params.page_chunk)]
        # "auto" that did not pick safetensors by name still sniffs the content
        if resolved == "safetensors" or strategy == "auto":
            layout = self._safetensors_layout()
            if isinstance(layout, list):
                self.strategy = "safetensors"
                return [(s, e, e - s if e - s <= params.max_size else 0) for s, e in layout]
            if resolved == "safetensors":
                self.fallback_reason = layout
        self.strategy = "cdc"
        return [(0, self.size, 0)]

    def _safetensors_layout(self) -> list[tuple[int, int]] | str:
        assert self._windows is not None
        head = self._windows.span(0, min(self.size, 8))
        if len(head) >= 9 and head[8] in b"{ \t\r\n":  # plausibly a header: read all of it
            (header_len,) = struct.unpack_from("<Q", head, 0)
            if 8 + header_len <= min(self.size, 8 + SAFETENSORS_MAX_HEADER):
                head = self._windows.span(0, 8 + header_len)
        return safetensors_ranges(head, self.size)

    def _chunks(
        self, windows: Windows, regions: list[tuple[int, int, int]], params: ChunkerParams
    ) -> Iterator[memoryview]:
        cdc: FastCDC | None = None
        for start, end, step in regions:
            # one generator per region: a region's last views die with it, so that a window
            # they are the last to refer to can be reused (see WindowBuffers)
            if step:
                yield from self._fixed(windows, start, end, step)
            else:
                cdc = cdc or _fastcdc(params)
                yield from self._cdc(windows, start, end, cdc, params)
            if windows.ended and windows.end < end:
                return  # the file ended inside this region

    def _fixed(self, windows: Windows, start: int, end: int, step: int) -> Iterator[memoryview]:
        for pos in range(start, end, step):
            stop = min(end, pos + step)
            view = windows.span(pos, stop)[: stop - pos]
            if view:
                self.bytes_yielded += len(view)
                yield view
            if len(view) < stop - pos:
                return  # the file ended

    def _cdc(
        self, windows: Windows, start: int, end: int, cdc: FastCDC, params: ChunkerParams
    ) -> Iterator[memoryview]:
        pos = start
        while pos < end:
            span = windows.span(pos, min(end, pos + params.max_size))[: end - pos]
            if not span:
                return  # the file ended
            whole = pos + len(span) == end or (windows.exhausted and pos + len(span) == windows.end)
            nxt = pos + len(span)
            for chunk in cdc.cut_buf(span):
                if not (whole or _final(chunk.offset, chunk.length, len(span), params)):
                    nxt = pos + chunk.offset  # cut again, from the next window
                    break
                self.bytes_yielded += chunk.length
                yield span[chunk.offset : chunk.offset + chunk.length]
            if whole and windows.ended:
                return
            pos = nxt

    def __next__(self) -> memoryview:
        return next(self._it)

    def close(self) -> None:
        """Close the file (idempotent).  Views already handed out stay valid."""
        self._it = iter(())
        if self._windows is not None:
            self._windows.close()
            self._windows = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FileChunks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def chunk_file(
    path: str | os.PathLike[str],
    strategy: Strategy = "auto",
    params: ChunkerParams = DEFAULT_PARAMS,
    buffers: WindowBuffers | None = None,
) -> FileChunks:
    """Views of ``path``'s chunks, in order (an empty file has none): the same boundaries as
    :func:`chunk_buffer` on the file's bytes.

    ``"auto"`` resolves with :func:`strategy_for`, and a file it would give plain CDC is still
    chunked per tensor when its content is a safetensors file.  The file is read, not mapped
    (see :class:`FileChunks`): a file truncated or rewritten while it is read yields the bytes
    that were read, never a crash.  ``OSError`` from opening the file (a missing file, or one
    that is no longer a regular file: :func:`open_regular`) propagates, at this call rather than
    at the first ``next()``.  ``buffers``: a pool shared by the files of one backup (each
    call has its own otherwise).
    """
    return FileChunks(path, strategy, params, buffers)


def _first_cut(cdc: FastCDC, window: memoryview) -> int:
    # in a function so that pyfastcdc's chunker and chunk (and their views) die on return
    for chunk in cdc.cut_buf(window):
        return chunk.length
    return 0  # pragma: no cover - window is never empty


class StreamChunker:
    """Chunks data that arrives in pieces, with bounded memory.

    For ``"cdc"`` the boundaries are exactly those :func:`chunk_buffer` finds in the whole input,
    whatever the piece sizes: a cut is computed only with ``max_size`` bytes (the furthest FastCDC
    looks) buffered after it, or at :meth:`finish`.  Memory: one fixed buffer of
    ``4 * max_size`` (``4 * page_chunk`` for pages) bytes, plus the chunks returned; a cut-off
    chunk is returned as soon as the buffer fills, so :meth:`feed` may return chunks that ended
    in earlier pieces.

    Feed one stream per file: chunking a whole tar stream (``pg_basebackup -Ft``) puts the 512-byte
    member headers inside chunks and shifts every page boundary, so split the tar first and give
    each member its own chunker (``"pages"`` for relation files, see :func:`strategy_for`).
    """

    def __init__(self, strategy: Literal["cdc", "pages"], params: ChunkerParams = DEFAULT_PARAMS) -> None:
        if strategy not in ("cdc", "pages"):
            raise ValueError(f"StreamChunker supports 'cdc' and 'pages', not {strategy!r}")
        self.strategy = strategy
        self.params = params
        self._cdc = _fastcdc(params) if strategy == "cdc" else None
        self._window = params.max_size if strategy == "cdc" else params.page_chunk
        # A fixed buffer, filled and then drained to under one window, whose rest moves to the
        # front: no reallocation, and that move is at most a third of the bytes emitted.
        self._buf = bytearray(4 * self._window)
        self._view = memoryview(self._buf)
        self._len = 0
        self._finished = False
        #: bytes returned in chunks so far
        self.offset = 0

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add ``data``; return the chunks that are complete now (possibly none)."""
        if self._finished:
            raise ValueError("StreamChunker.feed() after finish()")
        src = _byte_view(data)
        out: list[bytes] = []
        capacity = len(self._buf)
        taken = 0
        while taken < len(src):
            n = min(capacity - self._len, len(src) - taken)
            self._view[self._len : self._len + n] = src[taken : taken + n]
            self._len += n
            taken += n
            if self._len == capacity:
                out += self._drain(final=False)
        return out

    def finish(self) -> list[bytes]:
        """Return the remaining chunks (none for an empty stream); the chunker is done after this."""
        if self._finished:
            return []
        self._finished = True
        out = self._drain(final=True)
        self._view.release()
        self._buf = bytearray()
        return out

    def _drain(self, final: bool) -> list[bytes]:
        out: list[bytes] = []
        pos = 0
        size = self._len
        window = self._window
        mv = self._view
        while size - pos >= window or (final and pos < size):
            if self._cdc is None:
                length = min(window, size - pos)
            else:
                length = _first_cut(self._cdc, mv[pos : min(size, pos + window)])
            out.append(bytes(mv[pos : pos + length]))
            pos += length
        rest = size - pos
        if rest:
            mv[:rest] = mv[pos:size]  # non-overlapping: rest < window <= pos
        self._len = rest
        self.offset += pos
        return out

    @property
    def buffered(self) -> int:
        """Bytes fed but not yet returned in a chunk."""
        return self._len
