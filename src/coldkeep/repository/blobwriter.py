"""The pack upload pipeline: new blobs go into packs, full packs are uploaded in the background,
and the index that makes them live is written at the end (:meth:`BlobWriter.finish`).

Write order: packs, then their index, then whatever references them (a snapshot), so a reader
never sees a reference to data that is not there; a writer killed before ``finish`` leaves only
orphan packs (``repo prune`` removes them).
"""

from __future__ import annotations

import contextlib
import mmap
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from coldkeep import testhooks
from coldkeep.repository.format import INDEX_PREFIX, PLANES_VERSION, Buffer, seal_parts
from coldkeep.repository.index import encode_index
from coldkeep.repository.packer import BlobEntry, PackBuilder, pack_key

if TYPE_CHECKING:
    from coldkeep.repository.repository import Repository

PACK_TARGET = 16 * 1024 * 1024
#: test hook overriding :data:`PACK_TARGET` (bytes), so that little data still makes many packs
PACK_TARGET_ENV = "COLDKEEP_PACK_TARGET"


def pack_target() -> int:
    """The pack size to aim for: 16 MiB, or in tests the hook ``$COLDKEEP_PACK_TARGET`` when it is a
    positive integer (:mod:`coldkeep.testhooks`)."""
    value = (testhooks.value(PACK_TARGET_ENV) or "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else PACK_TARGET


@dataclass
class WriteStats:
    new_blobs: int = 0
    new_stored_bytes: int = 0
    new_raw_bytes: int = 0
    packs: int = 0


class BlobWriter:
    """Adds blobs to packs, uploads full packs in the background, writes the index at the end.

    Thread-safe.  Memory is bounded: one open pack plus at most ``max_inflight`` packs sealed or
    uploading (a thread that fills a pack waits for a slot).
    ``finish()`` must be called before any snapshot that references the blobs is written
    (write order: packs, index, snapshot).
    """

    def __init__(
        self, repo: Repository, *, use_cache: bool = True, max_inflight: int = 2, level: int | None = None
    ) -> None:
        self.repo = repo
        self.level = repo.config.compression_level if level is None else level  # zstd level of new chunks
        self.use_cache = use_cache
        #: chunks of 16-bit data may be stored as byte planes (format version 2 on)
        self.planes = repo.config.version >= PLANES_VERSION
        self._lock = threading.Lock()
        self.pack_target = pack_target()
        # room for a full pack plus one biggest chunk, its envelope and the pack header
        self._capacity = self.pack_target + repo.config.chunker.max_size + 256 * 1024
        self._spare: list[mmap.mmap] = []  # buffers of packs already written, for the next ones
        self._max_spare = max_inflight + 1
        self._builder = self._new_builder()
        self._session: set[bytes] = set()
        self._written: dict[str, list[BlobEntry]] = {}
        self._sizes: dict[str, int] = {}
        self._uploads = ThreadPoolExecutor(max_workers=max_inflight, thread_name_prefix="coldkeep-upload")
        self._slots = threading.BoundedSemaphore(max_inflight)
        self._futures: list[Future[None]] = []
        self.stats = WriteStats()

    def _new_builder(self) -> PackBuilder:
        # under self._lock, or before any thread can see the writer
        return PackBuilder(self._capacity, self._spare.pop() if self._spare else None)

    def known(self, blob_id: bytes) -> bool:
        with self._lock:
            if blob_id in self._session:
                return True
        return self.use_cache and self.repo.cache.has(blob_id)

    def add(self, blob_id: bytes, kind: str, stored: Buffer | Sequence[Buffer], raw_length: int) -> bool:
        """Add a sealed blob (bytes, or its envelope as buffers, copied now); ``False`` if this
        writer already has it."""
        to_upload = None
        with self._lock:
            if blob_id in self._session:
                return False
            self._session.add(blob_id)
            self._builder.add(blob_id, kind, stored, raw_length)
            self.stats.new_blobs += 1
            self.stats.new_stored_bytes += self._builder.rows[-1][3]
            self.stats.new_raw_bytes += raw_length
            if self._builder.size >= self.pack_target:
                to_upload, self._builder = self._builder, self._new_builder()
        if to_upload is not None:
            self._upload(to_upload)
        return True

    def store_many(
        self, blobs: Sequence[bytes | memoryview], kind: str = "data", level: int | None = None
    ) -> list[bytes]:
        """:meth:`store` for several blobs, with one index query for all of them (at the writer's
        level unless ``level`` is given); each blob is copied into its pack before this returns."""
        ids = [self.repo.keys.chunk_id(data) for data in blobs]  # type: ignore[arg-type]
        with self._lock:
            unknown = [i for i in dict.fromkeys(ids) if i not in self._session]
        present = self.repo.cache.present(unknown) if self.use_cache and unknown else set()
        level = self.level if level is None else level
        for blob_id, data in zip(ids, blobs, strict=True):
            if blob_id not in present:
                with self._lock:
                    if blob_id in self._session:
                        continue
                parts, _, _ = seal_parts(self.repo.keys, data, level, blob_id, self.planes)
                self.add(blob_id, kind, parts, len(data))
        return ids

    def store(self, data: bytes | memoryview, kind: str = "data") -> bytes:
        """Hash, dedupe, compress, seal and add one chunk; returns its id.

        ``data`` is copied into the pack before this returns (once: see :func:`seal_parts`), so
        a view of a mapped file may be released afterwards."""
        blob_id = self.repo.keys.chunk_id(data)  # type: ignore[arg-type]
        if not self.known(blob_id):
            parts, _, _ = seal_parts(self.repo.keys, data, self.level, blob_id, self.planes)
            self.add(blob_id, kind, parts, len(data))
        return blob_id

    def _upload(self, builder: PackBuilder) -> None:
        self.repo.check_lock()  # a writer whose lock was lost stops here, between packs
        self._slots.acquire()  # bound memory: wait while too many packs are in flight
        try:
            future = self._uploads.submit(self._write_pack, builder)
        except BaseException:
            self._slots.release()
            raise
        with self._lock:
            self._futures.append(future)

    def _write_pack(self, builder: PackBuilder) -> None:
        try:
            pack_id, data, entries = builder.finish(self.repo.keys)
            self.repo.backend.put_if_absent(pack_key(pack_id), data)  # keeps no reference to data
            size = len(data)
            data.release()
            buffer = builder.detach()
            with self._lock:
                self._written[pack_id] = entries
                self._sizes[pack_id] = size
                self.stats.packs += 1
                if buffer is not None and len(self._spare) < self._max_spare:
                    self._spare.append(buffer)
                    buffer = None
            if buffer is not None:
                buffer.close()
        finally:
            self._slots.release()

    def finish(self) -> str | None:
        """Upload the last pack, wait for all uploads, write the index; returns the index id."""
        with self._lock:
            last, self._builder = self._builder, self._new_builder()
        if len(last):
            self._upload(last)
        try:
            for future in list(self._futures):
                future.result()
        finally:
            self._uploads.shutdown(wait=True)
            self._drop_spares()
        if not self._written:
            return None
        self.repo.check_lock(confirm=True)  # an index is what makes packs live: never under a lost lock
        index_id, data = encode_index(self.repo.keys, self._written, self._sizes)
        self.repo.backend.put_if_absent(INDEX_PREFIX + index_id, data)
        self.repo.cache.add_index(
            index_id, ((p, self._sizes[p], entries) for p, entries in self._written.items())
        )
        return index_id

    def abort(self) -> None:
        self._uploads.shutdown(wait=True, cancel_futures=True)
        self._drop_spares()

    def _drop_spares(self) -> None:
        with self._lock:
            spares, self._spare = self._spare, []
        for buffer in spares:
            with contextlib.suppress(BufferError):
                buffer.close()
