"""Batch files: names, the archive directory, durable writes, reading back.

Layout (``[conversations].archive_dir``)::

    .coldkeep-archive.json                        which database/table this directory belongs to
    2025-01/conversations_2025-01_<batch>.jsonl.zst   one file per batch (32 hex digits: the batch id)
    2025-01/conversations_2025-01.jsonl.zst           a compacted month (``conversations compact``)
    2025-01/*.tmp                                  being written; removed by the next run if left over

Every file is one JSON object per line, ``{"id":…,"session_id":…,"timestamp":…,"speaker":…,
"content":…,"metadata":…}`` (UTC ISO 8601 timestamps, ``metadata`` exactly as PostgreSQL prints
the jsonb), compressed with zstd or gzip as independent frames/members of ~1 MiB of lines each (a compacted
month is its batches' files concatenated); ``zstdcat``/``zcat`` read them as one stream.  ``zstdcat F | jq`` reads it.

A batch file is written to ``<name>.tmp``, fsynced, renamed to its final name and the directory
fsynced *before* the database transaction that records it in the ledger commits.  A final-named file
the ledger does not list is an orphan of a run that died before its commit; the next run (under the
archive lock) deletes it.
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import hashlib
import io
import json
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

import zstandard

from coldkeep import testhooks
from coldkeep.durable import fsync_dir, write_atomic
from coldkeep.errors import ConfigError

FORMATS = ("jsonl.zst", "jsonl.gz")
ZSTD_LEVEL = 3
GZIP_LEVEL = 6
MARKER = ".coldkeep-archive.json"
FILE_RE = re.compile(
    r"^conversations_(?P<month>\d{4}-\d{2})(?:_(?P<batch>c?[0-9a-f]{32}))?\.(?P<fmt>jsonl\.(?:zst|gz))(?P<tmp>\.tmp)?$"
)
MONTH_RE = re.compile(r"^\d{4}-\d{2}$")
FILE_MODE = 0o640
#: compressed frames in flight per open batch file
MAX_INFLIGHT = 2
DIR_MODE = 0o750

# ------------------------------------------------------------------------------------------------
# test hook: SIGKILL ourselves at a named stage (COLDKEEP_CONV_KILL_AT=stage:n[,stage:n...]);
# acts only with COLDKEEP_TESTING=1 (coldkeep.testhooks)

KILL_ENV = "COLDKEEP_CONV_KILL_AT"


def kill_point(stage: str) -> None:
    """SIGKILL this process the n-th time it reaches ``stage`` when ``$COLDKEEP_CONV_KILL_AT``
    names it and testing is switched on (crash tests use it to land a kill exactly between two
    critical steps); a no-op otherwise."""
    testhooks.kill_point(KILL_ENV, stage)


# ------------------------------------------------------------------------------------------------
# memory

M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
_heap_bounded = False


def bound_heap(threshold: int = 1 << 20) -> None:
    """Serve allocations of ``threshold`` bytes and more (chunks of lines, compressed frames, batch
    files being stored) with their own mmap, returned to the system when freed.

    glibc otherwise raises its mmap threshold each time such a block is freed, after which these
    blocks come from heap arenas that fragment and do not shrink: over a 10 M-row run the peak RSS
    crept from ~110 to ~130 MB.  A fixed threshold keeps it flat (~95 MB at 1 M rows).  No-op where
    ``mallopt`` is not available."""
    global _heap_bounded
    if _heap_bounded:
        return
    _heap_bounded = True
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt(ctypes.c_int(M_MMAP_THRESHOLD), ctypes.c_int(threshold))
    except (OSError, AttributeError):
        pass


# ------------------------------------------------------------------------------------------------
# names


def batch_relpath(month: str, batch_id: uuid.UUID, fmt: str) -> str:
    return f"{month}/conversations_{month}_{batch_id.hex}.{fmt}"


def compacted_relpath(month: str, fmt: str, unique: uuid.UUID | None = None) -> str:
    suffix = f"_c{unique.hex}" if unique is not None else ""
    return f"{month}/conversations_{month}{suffix}.{fmt}"


def month_of(line: bytes) -> bytes:
    """``b"2025-01"`` from an archive line (its first ``"timestamp"`` key is ours: the fields
    before it are a number and a uuid)."""
    k = line.find(b',"timestamp":"')
    return line[k + 14 : k + 21] if k > 0 else b""


def id_of(line: bytes) -> int:
    return int(line[6 : line.index(b",", 6)])


# ------------------------------------------------------------------------------------------------
# the directory


@dataclass
class Scan:
    tmp: list[str]
    final: list[str]
    unknown: list[str]


class ArchiveDir:
    def __init__(self, root: Path) -> None:
        self.root = root

    def ensure(self, identity: dict[str, str]) -> None:
        """Create the directory and claim it for this database/table, or refuse one that belongs
        to another (its orphan clean-up would delete that archive's files)."""
        if not self.root.is_dir():
            self.root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                fsync_dir(self.root.parent)
        marker = self.root / MARKER
        doc = {"format": "coldkeep-conversation-archive", "version": 1, **identity}
        if marker.exists():
            try:
                found = json.loads(marker.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ConfigError(
                    f"{marker}: unreadable ({exc})", hint="fix or remove the marker file"
                ) from None
            mismatch = [k for k in identity if found.get(k) != identity[k]]
            if mismatch:
                theirs = ", ".join(f"{k}={found.get(k)}" for k in mismatch)
                raise ConfigError(
                    f"conversations.archive_dir {self.root} belongs to another archive ({theirs})",
                    hint="give each database/table its own archive_dir",
                )
            return
        write_atomic(marker, (json.dumps(doc, indent=2) + "\n").encode("utf-8"), mode=0o644)

    def scan(self) -> Scan:
        scan = Scan([], [], [])
        if not self.root.is_dir():
            return scan
        for month_dir in sorted(self.root.iterdir()):
            if month_dir.name in (MARKER,):
                continue
            if not (month_dir.is_dir() and MONTH_RE.match(month_dir.name)):
                if month_dir.name != MARKER + ".tmp":
                    scan.unknown.append(month_dir.name)
                continue
            for entry in sorted(month_dir.iterdir()):
                rel = f"{month_dir.name}/{entry.name}"
                m = FILE_RE.match(entry.name)
                if not entry.is_file() or m is None or m.group("month") != month_dir.name:
                    scan.unknown.append(rel)
                elif m.group("tmp"):
                    scan.tmp.append(rel)
                else:
                    scan.final.append(rel)
        return scan

    def remove(self, relpaths: list[str]) -> None:
        dirs: set[Path] = set()
        for rel in relpaths:
            path = self.root / rel
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            dirs.add(path.parent)
        for d in dirs:
            with contextlib.suppress(OSError):
                fsync_dir(d)


_local = threading.local()


def compress_frame(fmt: str, chunk: bytes) -> bytes:
    """One independent zstd frame (with checksum) or gzip member.  Frames concatenate into a valid
    file, so chunks compress in parallel and no per-file compressor state is kept."""
    if fmt == "jsonl.zst":
        cctx = getattr(_local, "zstd", None)
        if cctx is None:  # a ZstdCompressor is not thread-safe: one per thread
            cctx = _local.zstd = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
        return bytes(cctx.compress(chunk))
    if fmt == "jsonl.gz":
        return gzip.compress(chunk, compresslevel=GZIP_LEVEL, mtime=0)
    raise ConfigError(f"conversations.format: unknown format {fmt!r}")


# ------------------------------------------------------------------------------------------------
# writing


class BatchWriter:
    """One batch file being written.

    The reading thread appends lines to :attr:`lines` (and ids/xmins as ``b"1,2,"`` text) and calls
    :meth:`flush_chunk` every ~1 MiB; each chunk is compressed as an independent frame in ``pool``
    (at most :data:`MAX_INFLIGHT` per writer, written in order), so memory stays bounded whatever the
    number of open months.  :meth:`finish` (in a committer thread) makes the file durable under its
    final name.
    """

    __slots__ = ("_fh", "_inflight", "_pool", "batch_id", "bytes", "fmt", "ids", "inflight_raw", "lines",
                 "month", "path", "pending", "raw", "rel", "root", "rows", "sha", "tmp", "xmins")  # fmt: skip

    def __init__(self, root: Path, month: str, fmt: str, pool: Executor) -> None:
        self.batch_id = uuid.uuid4()
        self.root = root
        self.month = month
        self.fmt = fmt
        self.rel = batch_relpath(month, self.batch_id, fmt)
        self.path = root / self.rel
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        directory = self.path.parent
        if not directory.is_dir():
            directory.mkdir(mode=DIR_MODE, exist_ok=True)
            fsync_dir(root)
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        self._fh: BinaryIO = os.fdopen(fd, "wb")
        self._pool = pool
        self._inflight: collections.deque[tuple[Future[bytes], int]] = collections.deque()
        self.inflight_raw = 0
        self.sha = hashlib.sha256()
        self.bytes = 0
        self.lines: list[bytes] = []
        self.pending = 0
        self.rows = 0
        self.raw = 0
        self.ids = bytearray()
        self.xmins = bytearray()

    @property
    def size_bound(self) -> int:
        """An upper bound of the file size once what is buffered is written."""
        return self.bytes + self.inflight_raw + self.pending + 64

    def _write_next(self) -> None:
        future, raw = self._inflight.popleft()
        self.inflight_raw -= raw
        out = future.result()
        self._fh.write(out)
        self.sha.update(out)
        self.bytes += len(out)

    def flush_chunk(self) -> None:
        if not self.lines:
            return
        chunk = b"".join(self.lines)
        raw = self.pending
        self.lines = []
        self.raw += raw
        self.pending = 0
        while self._inflight and (len(self._inflight) >= MAX_INFLIGHT or self._inflight[0][0].done()):
            self._write_next()
        self._inflight.append((self._pool.submit(compress_frame, self.fmt, chunk), raw))
        self.inflight_raw += raw

    def finish(self) -> None:
        """Compress the rest, fsync, rename to the final name, fsync the directory."""
        self.flush_chunk()
        while self._inflight:
            self._write_next()
        kill_point("file_written")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        kill_point("file_synced")
        os.rename(self.tmp, self.path)
        fsync_dir(self.path.parent)

    def discard(self) -> None:
        """Forget this batch: close and remove whatever exists of it (tmp or final)."""
        for future, _ in self._inflight:
            future.cancel()
        self._inflight.clear()
        with contextlib.suppress(OSError):
            self._fh.close()
        for path in (self.tmp, self.path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        with contextlib.suppress(OSError):
            fsync_dir(self.path.parent)

    @property
    def ids_literal(self) -> str:
        return "{" + self.ids[:-1].decode() + "}"

    def xmin_map(self) -> str:
        """``{"id":"xmin",…}``: each row's xmin as read, for the marking UPDATE to compare with."""
        pairs = zip(self.ids[:-1].split(b","), self.xmins[:-1].split(b","), strict=True)
        return "{" + ",".join(f'"{i.decode()}":"{x.decode()}"' for i, x in pairs) + "}"


# ------------------------------------------------------------------------------------------------
# reading


class _HashingReader(io.RawIOBase):
    """Reads a file, hashing (SHA-256) and counting the raw bytes on the way."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.sha = hashlib.sha256()
        self.bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        n = self._fh.readinto(buf)  # type: ignore[attr-defined]
        if n:
            view = memoryview(buf)[:n]
            self.sha.update(view)
            self.bytes += n
        return int(n or 0)

    def drain(self) -> None:
        buf = bytearray(1 << 20)
        while self.readinto(buf):
            pass


class BatchReader:
    """Iterate the lines of a batch file (without the newline), checking its SHA-256 on the way:
    after :meth:`lines` is exhausted, :attr:`sha256` and :attr:`bytes` describe the whole file."""

    def __init__(self, path: Path, fmt: str | None = None) -> None:
        self.path = path
        self.fmt = fmt or ("jsonl.gz" if path.name.endswith(".gz") else "jsonl.zst")
        self.sha256 = ""
        self.bytes = 0
        self.rows = 0

    def chunks(self, size: int = 1 << 20) -> Iterator[bytes]:
        """Decompressed data in pieces of about ``size`` bytes."""
        with open(self.path, "rb") as fh:
            raw = _HashingReader(fh)
            stream: Any
            if self.fmt == "jsonl.zst":
                stream = zstandard.ZstdDecompressor().stream_reader(
                    cast(BinaryIO, raw), read_across_frames=True
                )
            else:
                stream = gzip.GzipFile(fileobj=io.BufferedReader(raw, 1 << 20), mode="rb")
            with stream:
                while True:
                    piece = stream.read(size)
                    if not piece:
                        break
                    yield piece
            raw.drain()
            self.sha256 = raw.sha.hexdigest()
            self.bytes = raw.bytes

    def lines(self) -> Iterator[bytes]:
        rest = b""
        for piece in self.chunks():
            data = rest + piece if rest else piece
            parts = data.split(b"\n")
            rest = parts.pop()
            self.rows += len(parts)
            yield from parts
        if rest:
            # a file that does not end with a newline is corrupt; let the caller see the fragment
            self.rows += 1
            yield rest


def file_digest(path: Path) -> tuple[str, int]:
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while piece := fh.read(1 << 20):
            sha.update(piece)
            size += len(piece)
    return sha.hexdigest(), size


def ids_digest(ids: list[int]) -> str:
    """SHA-256 of the sorted ids written as ``1,2,3`` — what the ledger's ``ids_sha256`` holds."""
    return hashlib.sha256(",".join(map(str, sorted(ids))).encode()).hexdigest()


def copy_with_digest(
    sources: list[Path], dest: Path, check: Callable[[Path, str, int], None]
) -> tuple[str, int]:
    """Concatenate ``sources`` into ``dest`` (durably, as ``dest``.tmp then renamed), calling
    ``check(source, sha256, size)`` after each source so a corrupt one aborts the copy."""
    tmp = dest.with_name(dest.name + ".tmp")
    sha = hashlib.sha256()
    size = 0
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as out:
            for src in sources:
                src_sha = hashlib.sha256()
                src_size = 0
                with open(src, "rb") as fh:
                    while piece := fh.read(1 << 20):
                        out.write(piece)
                        sha.update(piece)
                        src_sha.update(piece)
                        src_size += len(piece)
                        size += len(piece)
                check(src, src_sha.hexdigest(), src_size)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    os.rename(tmp, dest)
    fsync_dir(dest.parent)
    return sha.hexdigest(), size
