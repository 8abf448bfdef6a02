"""``datasets export``: the spec's ``iccm_dataset_{version}_{date}.tar.gz``, from the repository.

Layout (the spec's): one top directory ``{prefix}_{version}_{date}/`` holding ``manifest.json``,
``SHA256SUMS`` (the per-file list, so ``sha256sum -c SHA256SUMS`` works in the unpacked
directory) and the tree; beside the archive a ``.sha256`` file that ``sha256sum -c`` accepts.

* **Streamed**: every file goes from the repository into the archive through
  :meth:`~coldkeep.repository.repository.Repository.open_entry` under one shared lock, each chunk
  verified as it comes and the whole file's size and SHA-256 checked before its last bytes are
  handed out, so a damaged blob stops the export (:class:`~coldkeep.errors.IntegrityError`, exit
  3) and the partial archive is removed; nothing is restored to disk.
* **Deterministic**: the same version gives the same bytes: entries in tree order, every mtime the
  version's snapshot date, owners 0/0 without names, modes 0755/0644, GNU tar headers; gzip with
  mtime 0 and no name; zstd through libzstd's multi-threaded mode, whose output does not depend on
  the number of threads.
* **Every core**: gzip is written as pigz does, blocks of :data:`GZIP_BLOCK` deflated on a thread
  pool (each primed with the 32 KiB before it, so the ratio stays close to one stream), ended by a
  sync flush, and joined into one gzip member; the deflate is zlib-ng's (``zlib-ng`` on PyPI: the
  ratio of zlib's level 6 at twice its speed, the GIL released like zlib's); zstd uses libzstd's
  own threads.
* **Atomic**: the archive is written under a temporary name, fsynced and renamed; the ``.sha256``
  after it.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import struct
import tarfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO

from zlib_ng import zlib_ng

from coldkeep.datasets.check import manifest_problems
from coldkeep.datasets.manifest import checksum_list, ordered
from coldkeep.datasets.versions import DatasetVersion
from coldkeep.durable import AtomicOutput, write_atomic
from coldkeep.errors import IntegrityError, UsageError
from coldkeep.repository.locks import locked
from coldkeep.repository.repository import Repository
from coldkeep.repository.tree import TreeEntry

FORMATS = ("tar.gz", "tar.zst")
#: bytes deflated per task (pigz uses 128 KiB; bigger blocks cost less per block on few cores)
GZIP_BLOCK = 1024 * 1024
#: the deflate window: each block is primed with this much of the data before it
WINDOW = 32 * 1024
#: bytes tarfile copies at a time
COPY_BUFFER = 1024 * 1024
DEFAULT_LEVEL = {"tar.gz": 6, "tar.zst": 3}
#: names the export puts at the top of the archive beside the tree
RESERVED = ("manifest.json", "SHA256SUMS")


class HashingFile:
    """The output file: every byte written is hashed (the ``.sha256``) and counted."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.sha = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes | memoryview) -> int:
        self.sha.update(data)
        self.f.write(data)
        self.bytes += len(data)
        return len(data)


def _deflate(block: bytes, prime: bytes, level: int) -> bytes:
    """``block`` as raw deflate ending in a sync flush (byte-aligned, not final)."""
    c = zlib_ng.compressobj(
        level, zlib_ng.DEFLATED, -15, 9, zlib_ng.Z_DEFAULT_STRATEGY, *([prime] if prime else [])
    )
    return c.compress(block) + c.flush(zlib_ng.Z_SYNC_FLUSH)


class ParallelGzip:
    """A write-only stream that gzips on ``threads`` threads into ``out`` (see the module
    docstring); :meth:`close` writes the last block and the trailer."""

    HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"  # no name, mtime 0, OS unix

    def __init__(self, out: HashingFile, level: int, threads: int) -> None:
        self.out = out
        self.level = level
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="coldkeep-gzip")
        self.window: collections.deque[Future[bytes]] = collections.deque()
        self.limit = threads * 2
        self.buffer = bytearray()
        self.tail = b""
        self.crc = 0
        self.size = 0
        out.write(self.HEADER)

    def write(self, data: bytes | memoryview) -> int:
        self.buffer += data
        while len(self.buffer) >= GZIP_BLOCK:
            self._submit(bytes(self.buffer[:GZIP_BLOCK]))
            del self.buffer[:GZIP_BLOCK]
        return len(data)

    def _submit(self, block: bytes) -> None:
        self.crc = zlib_ng.crc32(block, self.crc)
        self.size += len(block)
        self.window.append(self.pool.submit(_deflate, block, self.tail, self.level))
        self.tail = block[-WINDOW:]
        while len(self.window) >= self.limit:
            self.out.write(self.window.popleft().result())

    def close(self) -> None:
        try:
            if self.buffer:
                self._submit(bytes(self.buffer))
                self.buffer.clear()
            while self.window:
                self.out.write(self.window.popleft().result())
            self.out.write(b"\x03\x00")  # a final empty block
            self.out.write(struct.pack("<II", self.crc & 0xFFFFFFFF, self.size & 0xFFFFFFFF))
        finally:
            self.abort()

    def abort(self) -> None:
        for future in self.window:
            future.cancel()
        self.pool.shutdown(wait=True, cancel_futures=True)


class _Zstd:
    """libzstd's multi-threaded stream (one compressor, used by this thread only)."""

    def __init__(self, out: HashingFile, level: int, threads: int) -> None:
        import zstandard

        cctx = zstandard.ZstdCompressor(level=level, threads=max(1, threads), write_checksum=True)
        self.stream = cctx.stream_writer(out, closefd=False)  # type: ignore[arg-type]

    def write(self, data: bytes | memoryview) -> int:
        self.stream.write(data)
        return len(data)

    def close(self) -> None:
        self.stream.close()  # type: ignore[no-untyped-call]

    def abort(self) -> None:
        pass


@dataclass
class ExportResult:
    version: str
    path: str
    checksum_path: str
    sha256: str
    bytes: int
    files: int
    format: str

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "path": self.path, "sha256_file": self.checksum_path,
                "sha256": self.sha256, "bytes": self.bytes, "files": self.files, "format": self.format}  # fmt: skip


def export_name(prefix: str, version: DatasetVersion, fmt: str) -> str:
    """``{prefix}_{version}_{YYYYMMDD}`` (without the extension): the archive's top directory."""
    return f"{prefix}_{version.name}_{version.date}"


def _info(name: str, mtime: int, kind: bytes, mode: int, size: int = 0, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.mtime = kind, mode, size, mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.linkname = target
    return info


def _mode(entry: TreeEntry) -> int:
    return 0o755 if int(entry.get("mode", 0o644)) & 0o111 else 0o644


def export_version(
    repo: Repository,
    version: DatasetVersion,
    to_dir: str | os.PathLike[str],
    *,
    fmt: str = "tar.gz",
    prefix: str = "iccm_dataset",
    level: int | None = None,
    threads: int | None = None,
    on_file: Callable[[int], None] | None = None,
) -> ExportResult:
    """Write ``version`` as ``{to_dir}/{prefix}_{version}_{date}.{fmt}`` and its ``.sha256``
    (see the module docstring).  ``on_file(bytes)`` is called after each file."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}", hint=f"one of {', '.join(FORMATS)}")
    directory = os.path.abspath(to_dir)
    if not os.path.isdir(directory):
        raise UsageError(
            f"export directory {directory} does not exist", hint="create it, or name another with --to"
        )
    top = export_name(prefix, version, fmt)
    path = os.path.join(directory, f"{top}.{fmt}")
    workers = threads or max(2, os.cpu_count() or 2)
    with locked(repo.backend, "dataset export", exclusive=False):
        entries = version.entries(repo)
        problems = manifest_problems(version, entries)
        if problems:
            raise IntegrityError(f"dataset version {version.name}: {problems[0].detail}; nothing exported")
        clash = [e["path"] for e in entries if e["path"] in RESERVED]
        if clash:
            raise UsageError(
                f"dataset version {version.name} has a top-level {clash[0]}, where the export puts its own",
                hint="rename that file in the dataset and snapshot a new version",
            )
        mtime = int(
            datetime.fromisoformat(version.manifest["snapshot_date"].replace("Z", "+00:00")).timestamp()
        )
        with AtomicOutput(path, buffering=COPY_BUFFER) as f:
            out = HashingFile(f)
            level_ = DEFAULT_LEVEL[fmt] if level is None else level
            stream = ParallelGzip(out, level_, workers) if fmt == "tar.gz" else _Zstd(out, level_, workers)
            try:
                files = _write_tar(repo, version, entries, stream, top, mtime, on_file)
                stream.close()
            except BaseException:
                stream.abort()
                raise
    digest = out.sha.hexdigest()
    write_atomic(path + ".sha256", f"{digest}  {os.path.basename(path)}\n".encode(), mode=0o644)
    return ExportResult(version.name, path, path + ".sha256", digest, out.bytes, files, fmt)


def _write_tar(
    repo: Repository,
    version: DatasetVersion,
    entries: list[TreeEntry],
    stream: ParallelGzip | _Zstd,
    top: str,
    mtime: int,
    on_file: Callable[[int], None] | None,
) -> int:
    """The archive's members into ``stream``: the top directory, the manifest, the checksum list,
    then the tree in its order; returns how many files of the tree were written."""
    import io

    files = 0
    with tarfile.open(fileobj=stream, mode="w|", format=tarfile.GNU_FORMAT, encoding="utf-8",  # type: ignore[call-overload]
                      errors="surrogateescape", copybufsize=COPY_BUFFER) as tar:  # fmt: skip
        tar.addfile(_info(top, mtime, tarfile.DIRTYPE, 0o755))
        manifest = (json.dumps(ordered(version.manifest), indent=2) + "\n").encode()
        sums = checksum_list(entries)
        for name, data in (("manifest.json", manifest), ("SHA256SUMS", sums)):
            tar.addfile(_info(f"{top}/{name}", mtime, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))
        for entry in entries:
            name = f"{top}/{entry['path']}"
            kind = entry.get("type")
            if kind == "dir":
                tar.addfile(_info(name, mtime, tarfile.DIRTYPE, 0o755))
            elif kind == "symlink":
                tar.addfile(_info(name, mtime, tarfile.SYMTYPE, 0o777, target=str(entry.get("target", ""))))
            elif kind == "file":
                with repo.open_entry(version.snapshot, entry) as reader:
                    tar.addfile(
                        _info(name, mtime, tarfile.REGTYPE, _mode(entry), int(entry.get("size", 0))), reader
                    )
                files += 1
                if on_file is not None:
                    on_file(int(entry.get("size", 0)))
    return files
