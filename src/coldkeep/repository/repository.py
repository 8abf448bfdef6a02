"""The repository: config, keys, blobs in packs, snapshots and named objects over one backend."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import logging
import mmap
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import zstandard

from coldkeep import clock, testhooks
from coldkeep.errors import (
    ColdkeepError,
    IntegrityError,
    NotFound,
    ObjectExists,
    ObjectNotFound,
    RepositoryExists,
    RepositoryNotInitialised,
    StateConflict,
    UnsupportedFormat,
    UsageError,
)
from coldkeep.repository import crypto, locks
from coldkeep.repository.chunker import ChunkerParams
from coldkeep.repository.crypto import KeyRing, PlainKeys
from coldkeep.repository.format import (
    CONFIG_KEY,
    DIGEST_SIZE,
    FLAG_RAW,
    FLAG_ZSTD,
    FORMAT_VERSION,
    INDEX_PREFIX,
    NAMED_PREFIX,
    SNAPSHOT_PREFIX,
    Buffer,
    add_footer,
    decode_document,
    digest,
    encode_document,
    object_id,
    open_blob,
    seal_blob,
    seal_parts,
    strip_footer,
)
from coldkeep.repository.index import IndexCache, encode_index
from coldkeep.repository.packer import BlobEntry, PackBuilder, pack_key
from coldkeep.storage.base import Backend, validate_key

log = logging.getLogger(__name__)

SNAPSHOT_AAD = b"coldkeep-snapshot-v1"
_TREE_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
#: for the entries :data:`_TREE_ENCODER`'s UTF-8 cannot carry: see :func:`tree_line`
_TREE_ENCODER_ASCII = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True)
PACK_TARGET = 16 * 1024 * 1024
#: a tree blob ends after an entry whose (keyed) path hash has its low bits all zero, or once it
#: reaches this size: see :meth:`Repository.write_tree`
TREE_BLOB_MAX = 1024 * 1024
#: tree blobs hold 2 ** TREE_MIN_BITS entries on average, or more for big trees ...
TREE_MIN_BITS = 4
#: ... so that a snapshot has about this many tree blobs at most (its document lists them all)
TREE_MAX_BLOBS = 1024
#: neighbouring blobs of one pack closer than this are read in one request (:meth:`Repository.read_blobs`)
READ_GAP = 64 * 1024
#: the most bytes one such request reads
READ_SPAN = 8 * 1024 * 1024
#: the most data a named object holds (a WAL segment is at most 1 GiB): bounds decompression
NAMED_MAX = 2 * 1024 * 1024 * 1024
#: the most bytes a named object's header may have
NAMED_HEADER_MAX = 1024 * 1024
#: named objects are decompressed this many bytes at a time
NAMED_READ_PIECE = 16 * 1024 * 1024
#: test hook overriding :data:`PACK_TARGET` (bytes), so that little data still makes many packs
PACK_TARGET_ENV = "COLDKEEP_PACK_TARGET"


def pack_target() -> int:
    """The pack size to aim for: 16 MiB, or in tests the hook ``$COLDKEEP_PACK_TARGET`` when it is a
    positive integer (:mod:`coldkeep.testhooks`)."""
    value = (testhooks.value(PACK_TARGET_ENV) or "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else PACK_TARGET


@dataclass(frozen=True)
class RepoConfig:
    """The repository config.  ``digest`` is the stored document's footer (BLAKE3 of the JSON as
    stored): what the key slots of an encrypted repository authenticate (see ``crypto.py``)."""

    id: str
    version: int
    encrypted: bool
    chunker: ChunkerParams
    compression_level: int
    created: str
    digest: bytes = field(default=b"", compare=False, repr=False)

    def to_doc(self) -> dict[str, Any]:
        return {
            "format": "coldkeep-repository",
            "version": self.version,
            "id": self.id,
            "encrypted": self.encrypted,
            "chunker": self.chunker.to_dict(),
            "compression_level": self.compression_level,
            "created": self.created,
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any], where: str, digest: bytes = b"") -> RepoConfig:
        if not isinstance(doc, dict) or doc.get("format") != "coldkeep-repository":
            raise IntegrityError(f"{where}: config is not a coldkeep repository config")
        version = int(doc.get("version", 0))
        if version > FORMAT_VERSION:
            raise UnsupportedFormat(found=version, supported=FORMAT_VERSION)
        try:
            return cls(
                id=str(doc["id"]),
                version=version,
                encrypted=bool(doc["encrypted"]),
                chunker=ChunkerParams.from_dict(doc["chunker"]),
                compression_level=int(doc.get("compression_level", 3)),
                created=str(doc.get("created", "")),
                digest=digest,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"repository config of {where}: malformed ({exc!r})") from None

    def encode(self) -> bytes:
        """The stored config object (JSON + footer); its footer is :attr:`digest` once read."""
        return add_footer(json.dumps(self.to_doc(), indent=2, sort_keys=True).encode())


@dataclass
class Snapshot:
    id: str
    time: str
    host: str
    paths: list[str]
    tags: dict[str, str]
    label: str
    meta: dict[str, Any]
    tree: list[str]
    summary: dict[str, Any]
    parent: str | None = None
    kind: str = "files"

    @property
    def short_id(self) -> str:
        return self.id[:8]

    @property
    def logical_bytes(self) -> int:
        return int(self.summary.get("logical_bytes", 0))

    def to_doc(self) -> dict[str, Any]:
        return {
            "version": 1,
            "time": self.time,
            "host": self.host,
            "paths": self.paths,
            "tags": self.tags,
            "label": self.label,
            "meta": self.meta,
            "tree": self.tree,
            "summary": self.summary,
            "parent": self.parent,
            "kind": self.kind,
        }

    def to_json(self) -> dict[str, Any]:
        doc = self.to_doc()
        doc.pop("tree")
        return {"id": self.id, "short_id": self.short_id, "logical_bytes": self.logical_bytes, **doc}

    @classmethod
    def from_doc(cls, snapshot_id: str, doc: dict[str, Any]) -> Snapshot:
        return cls(
            id=snapshot_id,
            time=str(doc["time"]),
            host=str(doc.get("host", "")),
            paths=list(doc.get("paths", [])),
            tags=dict(doc.get("tags", {})),
            label=str(doc.get("label", "")),
            meta=dict(doc.get("meta", {})),
            tree=list(doc["tree"]),
            summary=dict(doc.get("summary", {})),
            parent=doc.get("parent"),
            kind=str(doc.get("kind", "files")),
        )


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
                parts, _, _ = seal_parts(self.repo.keys, data, level, blob_id)
                self.add(blob_id, kind, parts, len(data))
        return ids

    def store(self, data: bytes | memoryview, kind: str = "data") -> bytes:
        """Hash, dedupe, compress, seal and add one chunk; returns its id.

        ``data`` is copied into the pack before this returns (once: see :func:`seal_parts`), so
        a view of a mapped file may be released afterwards."""
        blob_id = self.repo.keys.chunk_id(data)  # type: ignore[arg-type]
        if not self.known(blob_id):
            parts, _, _ = seal_parts(self.repo.keys, data, self.level, blob_id)
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


class Repository:
    def __init__(self, backend: Backend, keys: KeyRing, config: RepoConfig) -> None:
        self.backend = backend
        self.keys = keys
        self.config = config
        #: snapshot id -> why its document cannot be read, for every one a listing skipped
        self.damaged_snapshots: dict[str, str] = {}
        self._cache: IndexCache | None = None
        self._cache_lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        backend: Backend,
        *,
        passphrase: str | None = None,
        chunker: ChunkerParams | None = None,
        compression_level: int = 3,
        kdf_params: crypto.KdfParams | None = None,
    ) -> Repository:
        if backend.exists(CONFIG_KEY):
            raise RepositoryExists(backend.describe())
        config = RepoConfig(
            id=uuid.uuid4().hex,
            version=FORMAT_VERSION,
            encrypted=bool(passphrase),
            chunker=chunker or ChunkerParams(),
            compression_level=compression_level,
            created=clock.isoformat(clock.now()),
        )
        stored = config.encode()
        config = dataclasses.replace(config, digest=stored[-DIGEST_SIZE:])
        keys: KeyRing
        if passphrase:  # the slot is bound to the config (it authenticates it): config first
            keys = crypto.init_keys(
                backend,
                passphrase,
                config_digest=config.digest,
                comment="created by repo init",
                kdf_params=kdf_params,
            )
        else:
            keys = PlainKeys()
        if not backend.put_if_absent(CONFIG_KEY, stored):
            raise RepositoryExists(backend.describe())
        return cls(backend, keys, config)

    @classmethod
    def read_config(cls, backend: Backend) -> RepoConfig:
        """The config, its footer checked (no key needed; :meth:`open` authenticates it)."""
        try:
            data = backend.get(CONFIG_KEY)
        except ObjectNotFound:
            raise RepositoryNotInitialised(backend.describe()) from None
        raw = strip_footer(data, "repository config")
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise IntegrityError(f"repository config: not JSON ({exc})") from None
        return RepoConfig.from_doc(doc, backend.describe(), data[-DIGEST_SIZE:])

    @classmethod
    def open(cls, backend: Backend, passphrase: Callable[[], str | None] | str | None = None) -> Repository:
        """Open the repository: read its config and, when encrypted, open the keys with
        ``passphrase`` and check that the config is the one the key slot authenticates.

        A config that says "unencrypted" is refused (:class:`IntegrityError`) when the repository
        has key slots or a passphrase is given: either is how a downgrade (the config rewritten to
        store later backups in plaintext) would look."""
        config = cls.read_config(backend)
        secret = passphrase() if callable(passphrase) else passphrase
        keys: KeyRing
        if config.encrypted:
            if not secret:
                raise UsageError(
                    f"the repository at {backend.describe()} is encrypted and no passphrase was given",
                    hint="set COLDKEEP_PASSWORD or [repository].password_file",
                )
            keys = crypto.open_keys(backend, secret, config_digest=config.digest)
        else:
            _refuse_downgrade(backend, bool(secret))
            keys = PlainKeys()
        return cls(backend, keys, config)

    @property
    def cache(self) -> IndexCache:
        # worker threads reach for the cache at once on a first backup: open it exactly once
        with self._cache_lock:
            if self._cache is None:
                cache = IndexCache(self.config.id)
                cache.sync(self.backend, self.keys)
                self._cache = cache
            return self._cache

    def refresh_cache(self, *, full: bool = False) -> IndexCache:
        self.cache.sync(self.backend, self.keys, full=full)
        return self.cache

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
            self._cache = None
        self.backend.close()

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_lock(self, *, confirm: bool = False) -> None:
        """:class:`~coldkeep.errors.LockLost` if a repository lock this process holds here was
        lost (:mod:`coldkeep.repository.locks`); called at the safe points of every operation.
        ``confirm``: also check that the lock documents still exist (see ``locks.check_held``)."""
        locks.check_held(self.backend, confirm=confirm)

    # -- blobs -----------------------------------------------------------------------------------

    def writer(self, **kwargs: Any) -> BlobWriter:
        return BlobWriter(self, **kwargs)

    def read_blob(self, blob_id: bytes, entry: BlobEntry | None = None) -> bytes:
        """Read, decrypt, decompress and verify one blob (its id must match its content)."""
        entry = entry or self.cache.get(blob_id)
        if entry is None:
            raise IntegrityError(f"blob {blob_id.hex()[:16]} is not in the index")
        return self._open_stored(blob_id, entry, self._get_range(blob_id, entry, entry.length))

    def read_blobs(self, blob_ids: Sequence[bytes]) -> Iterator[bytes]:
        """The verified contents of ``blob_ids``, in order (each checked as by :meth:`read_blob`).

        The locations come from one index query per batch, and blobs that lie next to each other
        in one pack (the tree blobs of a snapshot, say) are fetched in one request.
        """
        located = self.cache.get_many(blob_ids)
        i, n = 0, len(blob_ids)
        while i < n:
            first = located.get(blob_ids[i])
            if first is None:
                raise IntegrityError(f"blob {blob_ids[i].hex()[:16]} is not in the index")
            j, end = i + 1, first.offset + first.length
            while j < n:
                nxt = located.get(blob_ids[j])
                if (
                    nxt is None
                    or nxt.pack != first.pack
                    or not end <= nxt.offset <= end + READ_GAP
                    or nxt.offset + nxt.length - first.offset > READ_SPAN
                ):
                    break
                end = nxt.offset + nxt.length
                j += 1
            if j == i + 1:
                yield self._open_stored(blob_ids[i], first, self._get_range(blob_ids[i], first, first.length))
            else:
                span = self._get_range(blob_ids[i], first, end - first.offset)
                for blob_id in blob_ids[i:j]:
                    entry = located[blob_id]
                    start = entry.offset - first.offset
                    yield self._open_stored(blob_id, entry, span[start : start + entry.length])
            i = j

    def _get_range(self, blob_id: bytes, entry: BlobEntry, length: int) -> bytes:
        """``length`` bytes of ``entry``'s pack from where the blob starts."""
        self.check_lock()
        try:
            stored = self.backend.get_range(pack_key(entry.pack), entry.offset, length)
        except ObjectNotFound:
            self.check_lock(confirm=True)  # removed by a prune that took our lost lock for stale: not damage
            raise IntegrityError(
                f"blob {blob_id.hex()[:16]} in pack {entry.pack[:16]}: pack missing"
            ) from None
        return stored

    def _open_stored(
        self, blob_id: bytes, entry: BlobEntry, stored: bytes | memoryview, check_id: bool = True
    ) -> bytes:
        what = f"blob {blob_id.hex()[:16]} in pack {entry.pack[:16]}"
        if len(stored) != entry.length:
            raise IntegrityError(f"{what}: pack truncated")
        data = open_blob(self.keys, stored, blob_id, entry.raw_length, what)
        if len(data) != entry.raw_length or (check_id and self.keys.chunk_id(data) != blob_id):
            raise IntegrityError(f"{what}: content does not match its id (corrupt)")
        return data

    def check_blob(self, blob_id: bytes, entry: BlobEntry, data: bytes) -> None:
        """The id check that :meth:`read_blob_run` skipped with ``check_ids=False``: raises the
        error :meth:`read_blob` would have raised when ``data`` is not ``blob_id``'s content."""
        if self.keys.chunk_id(data) != blob_id:
            raise IntegrityError(
                f"blob {blob_id.hex()[:16]} in pack {entry.pack[:16]}: content does not match its id (corrupt)"
            )

    def read_blob_run(self, run: Sequence[tuple[bytes, BlobEntry]], check_ids: bool = True) -> list[bytes]:
        """:meth:`read_blob` for blobs of one pack stored close together (in any order: see
        ``Restorer._runs``), with one read of the range that covers them all; in the order given.

        ``check_ids=False`` leaves out the check of each blob's content against its id (length,
        envelope and, when encrypted, authentication are still checked): for a caller that
        proves the content another way (a one-chunk file's whole-file SHA-256) and calls
        :meth:`check_blob` to name the blob when that proof fails."""
        if len(run) == 1 and check_ids:
            return [self.read_blob(*run[0])]
        if any(entry.pack != run[0][1].pack for _, entry in run):
            raise ValueError("a run of blobs must come from one pack")
        low_id, low = min(run, key=lambda item: item[1].offset)
        end = max(entry.offset + entry.length for _, entry in run)
        span = memoryview(self._get_range(low_id, low, end - low.offset))
        return [
            self._open_stored(
                blob_id,
                entry,
                span[entry.offset - low.offset : entry.offset - low.offset + entry.length],
                check_ids,
            )
            for blob_id, entry in run
        ]

    # -- snapshots -------------------------------------------------------------------------------

    def save_snapshot(self, snap: Snapshot) -> str:
        data = encode_document(self.keys, snap.to_doc(), SNAPSHOT_AAD)
        snap.id = object_id(data)
        self.check_lock(confirm=True)  # a run whose lock was lost never writes its snapshot
        self.backend.put_if_absent(SNAPSHOT_PREFIX + snap.id, data)
        return snap.id

    def snapshot_ids(self) -> list[str]:
        return [info.key.removeprefix(SNAPSHOT_PREFIX) for info in self.backend.list(SNAPSHOT_PREFIX)]

    def load_snapshot_id(self, snapshot_id: str) -> Snapshot:
        try:
            data = self.backend.get(SNAPSHOT_PREFIX + snapshot_id)
        except ObjectNotFound:
            raise NotFound(f"no snapshot {snapshot_id}") from None
        what = f"snapshot {snapshot_id[:8]}"
        if object_id(data) != snapshot_id:
            raise IntegrityError(f"{what}: content does not match its name")
        doc = decode_document(self.keys, data, SNAPSHOT_AAD, what)
        try:
            snap = Snapshot.from_doc(snapshot_id, doc)
            clock.parse_timestamp(snap.time)  # listings sort by it
        except (KeyError, TypeError, ValueError, ColdkeepError) as exc:
            raise IntegrityError(f"{what}: malformed ({exc})") from None
        return snap

    def find_snapshot(self, ref: str) -> Snapshot:
        """By full id, unique id prefix, or ``latest``."""
        if ref == "latest":
            snaps = self.list_snapshots()
            if not snaps:
                raise NotFound("the repository has no snapshots")
            return snaps[-1]
        ids = [i for i in self.snapshot_ids() if i.startswith(ref)] if len(ref) >= 4 else []
        if not ids:
            raise NotFound(f"no snapshot {ref!r}", hint="list them with `coldkeep snapshots`")
        if len(ids) > 1:
            raise UsageError(
                f"snapshot id prefix {ref!r} is ambiguous ({len(ids)} match)", hint="give more characters"
            )
        return self.load_snapshot_id(ids[0])

    def list_snapshots(self, tags: dict[str, str] | None = None, *, strict: bool = False) -> list[Snapshot]:
        """Every readable snapshot (optionally those with every given tag), oldest first.

        A snapshot whose document cannot be read (damaged, malformed) is left out, so that one
        damaged document does not hide all the others: it is named in a warning (logged once per
        repository object: the CLI prints ``warning: snapshot ID is damaged (…); skipped — run
        `coldkeep repo check```) and recorded in :attr:`damaged_snapshots`; ``repo check`` reports
        it as a problem.  ``strict=True`` raises its :class:`IntegrityError` instead: for callers
        that delete data on the strength of the list (prune, ``pg expire``), which must not act on
        an incomplete one.  A snapshot deleted between listing and reading is left out silently.
        """
        ids = self.snapshot_ids()
        with ThreadPoolExecutor(max_workers=8) as pool:
            loaded = list(pool.map(self._try_load_snapshot, ids))
        snaps = []
        for snapshot_id, snap, error in loaded:
            if error is not None:
                if strict:
                    raise error
                self._skip_damaged(snapshot_id, error)
            elif snap is not None:
                snaps.append(snap)
        if tags:
            snaps = [s for s in snaps if all(s.tags.get(k) == v for k, v in tags.items())]
        return sorted(snaps, key=lambda s: (clock.parse_timestamp(s.time), s.id))

    def _try_load_snapshot(self, snapshot_id: str) -> tuple[str, Snapshot | None, IntegrityError | None]:
        try:
            return snapshot_id, self.load_snapshot_id(snapshot_id), None
        except NotFound:  # deleted since it was listed (forget, pg expire)
            return snapshot_id, None, None
        except IntegrityError as exc:
            return snapshot_id, None, exc

    def _skip_damaged(self, snapshot_id: str, error: IntegrityError) -> None:
        if snapshot_id in self.damaged_snapshots:
            return
        detail = error.message.removeprefix(f"snapshot {snapshot_id[:8]}: ")
        self.damaged_snapshots[snapshot_id] = detail
        log.warning("snapshot %s is damaged (%s); skipped — run `coldkeep repo check`", snapshot_id, detail)

    def delete_snapshot(self, snapshot_id: str) -> None:
        self.check_lock()
        self.backend.delete(SNAPSHOT_PREFIX + snapshot_id)

    # -- trees -----------------------------------------------------------------------------------

    def write_tree(
        self,
        writer: BlobWriter,
        entries: Sequence[dict[str, Any]],
        lines: Sequence[bytes | None] | None = None,
    ) -> list[str]:
        """Serialise tree entries as JSON lines into tree blobs; returns their ids, in order.

        Readers concatenate the blobs, so where a blob ends is free.  It ends after an entry
        whose path hashes (keyed, as chunk ids) to a value with its low :func:`tree_cut_bits`
        bits zero, or once it reaches :data:`TREE_BLOB_MAX`: a boundary depends on the path
        there and not on what came before, so the entries of unchanged files between two
        boundaries make the same blob as in the previous snapshot, and a backup that changed a
        few files writes only the few tree blobs that hold them.  ``lines[i]``, when given and
        not ``None``, is the JSON line of ``entries[i]`` already encoded (a previous tree's).
        """
        mask = (1 << tree_cut_bits(len(entries))) - 1
        path_hash = self.keys.chunk_id
        blobs: list[bytes] = []
        buf: list[bytes] = []
        size = 0
        for i, entry in enumerate(entries):
            line = lines[i] if lines is not None else None
            if line is None:
                line = tree_line(entry)
            buf.append(line)
            size += len(line)
            if size >= TREE_BLOB_MAX or not (
                int.from_bytes(path_hash(str(entry["path"]).encode("utf-8", "surrogateescape"))[:4], "little")
                & mask
            ):
                blobs.append(b"".join(buf))
                buf, size = [], 0
        if buf or not blobs:
            blobs.append(b"".join(buf))
        return [blob_id.hex() for blob_id in writer.store_many(blobs, "tree", self.config.compression_level)]

    def iter_tree(self, snap: Snapshot) -> Iterator[dict[str, Any]]:
        for data in self.read_blobs([bytes.fromhex(h) for h in snap.tree]):
            yield from _tree_lines(data)

    def iter_tree_lines(self, snap: Snapshot) -> Iterator[tuple[dict[str, Any], bytes | None]]:
        """:meth:`iter_tree` with each entry's JSON line as stored (``None`` where a blob had
        to be parsed line by line)."""
        for data in self.read_blobs([bytes.fromhex(h) for h in snap.tree]):
            entries, raw = _tree_lines_raw(data)
            if raw is None:
                for entry in entries:
                    yield entry, None
            else:
                yield from zip(entries, raw, strict=True)

    # -- named write-once objects ----------------------------------------------------------------

    def _named_key(self, name: str) -> str:
        return NAMED_PREFIX + validate_key(name)

    def put_named(
        self,
        name: str,
        data: bytes,
        meta: dict[str, Any] | None = None,
        *,
        level: int | None = None,
        blake3_hex: str | None = None,
    ) -> bool:
        """Store a named object once.  ``True`` if stored now, ``False`` if an identical one was
        already there; :class:`ObjectExists` if a *different* one is (never overwritten).
        ``level``: zstd level for this object (default: the repository's).  ``blake3_hex``: the
        caller's BLAKE3 of ``data`` (:func:`~coldkeep.repository.format.digest`), not computed
        again."""
        key = self._named_key(name)
        if len(data) > NAMED_MAX:
            raise UsageError(
                f"named object {name}: {len(data)} bytes, more than the {NAMED_MAX} a named object holds"
            )
        sha = blake3_hex or digest(data).hex()
        header = json.dumps({"name": name, "size": len(data), "blake3": sha, "meta": meta or {},
                             "time": clock.isoformat(clock.now())}).encode()  # fmt: skip
        stored, _ = seal_blob(self.keys, len(header).to_bytes(4, "little") + header + data,
                              self.config.compression_level if level is None else level, key.encode())  # fmt: skip
        obj = add_footer(stored)
        if self.backend.put_if_absent(key, obj):
            return True
        existing_meta, _ = self.get_named(name)
        if existing_meta["blake3"] == sha and existing_meta["size"] == len(data):
            return False
        raise ObjectExists(f"{name} (archived size {existing_meta['size']}, new size {len(data)})")

    def get_named(self, name: str) -> tuple[dict[str, Any], bytes]:
        key = self._named_key(name)
        try:
            obj = self.backend.get(key)
        except ObjectNotFound:
            raise NotFound(f"no named object {name}") from None
        return self.decode_named(name, obj)

    def decode_named(self, name: str, obj: bytes) -> tuple[dict[str, Any], bytes]:
        """``(header, data)`` of the stored named object ``obj``, verified against its footer and
        the size and BLAKE3 its header records.

        Decompression is bounded: the header is read first (at most :data:`NAMED_HEADER_MAX`
        bytes) and then exactly the size it records (at most :data:`NAMED_MAX`), so a small
        object that would decompress to gigabytes is refused (:class:`IntegrityError` naming it)
        having produced no more than that."""
        key = self._named_key(name)
        what = f"named object {name}"
        plain = self.keys.open(strip_footer(obj, what), key.encode(), what)
        if not plain:
            raise IntegrityError(f"{what}: empty envelope")
        meta, data = _read_named(plain[0], memoryview(plain)[1:], what)
        if digest(data).hex() != meta.get("blake3"):
            raise IntegrityError(f"{what}: content does not match its checksum")
        return meta, data

    def list_named(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        for info in self.backend.list(NAMED_PREFIX + prefix):
            yield info.key.removeprefix(NAMED_PREFIX), info.size

    def delete_named(self, name: str) -> None:
        self.check_lock()
        self.backend.delete(self._named_key(name))

    # -- small mutable records -------------------------------------------------------------------
    #
    # ``state/<name>``: the only documents that change in place (besides locks).  Every change
    # goes through :meth:`update_state`, a compare-and-swap, so two writers never lose one
    # another's update; :meth:`put_state` overwrites blindly and is for a record's first write
    # in tests and tools only.

    #: tries of :meth:`update_state` before :class:`StateConflict`
    STATE_ATTEMPTS = 50

    def put_state(self, name: str, doc: dict[str, Any]) -> None:
        """Overwrite ``state/<name>`` (no compare-and-swap: use :meth:`update_state`)."""
        key = "state/" + validate_key(name)
        self.backend.put(key, encode_document(self.keys, doc, key.encode()))

    def get_state(self, name: str) -> dict[str, Any] | None:
        key = "state/" + validate_key(name)
        try:
            data = self.backend.get(key)
        except ObjectNotFound:
            return None
        doc: dict[str, Any] = decode_document(self.keys, data, key.encode(), key)
        return doc

    def update_state(
        self, name: str, change: Callable[[dict[str, Any] | None], dict[str, Any] | None]
    ) -> dict[str, Any] | None:
        """Read-modify-write ``state/<name>`` without losing a concurrent writer's update.

        ``change`` gets the current document (``None``: there is none; its own copy, to modify
        or replace) and returns the new one, or ``None`` to leave the record as it is.  The new
        document is written only if the record is still the version that was read (the
        backend's :meth:`~coldkeep.storage.base.Backend.put_if_version`: atomic on the local
        backend and on S3 servers with ``If-Match``); otherwise it is read again and ``change``
        runs again on the newer document, so ``change`` must be a function of the document it is
        given (it may run several times, and once more on its own result after a retried write).
        Exceptions from ``change`` propagate and nothing is written.  Returns the document now
        stored (or the unchanged one); :class:`StateConflict` after :data:`STATE_ATTEMPTS` lost
        races.
        """
        key = "state/" + validate_key(name)
        for attempt in range(self.STATE_ATTEMPTS):
            try:
                data, version = self.backend.get_version(key)
            except ObjectNotFound:
                current, version = None, None
            else:
                current = decode_document(self.keys, data, key.encode(), key)
            new = change(copy.deepcopy(current))
            if new is None:
                return current
            if self.backend.put_if_version(key, encode_document(self.keys, new, key.encode()), version):
                return new
            time.sleep(random.uniform(0, min(0.2, 0.005 * 2**attempt)))  # someone else won: again
        raise StateConflict(key)


def _read_named(flag: int, payload: memoryview, what: str) -> tuple[dict[str, Any], bytes]:
    """Header and data of a named object's envelope payload (``flag``: raw or zstd), reading no
    more than the header's recorded size (see :meth:`Repository.decode_named`)."""
    stream: BinaryIO
    if flag == FLAG_RAW:
        stream = io.BytesIO(payload)
    elif flag == FLAG_ZSTD:
        stream = zstandard.ZstdDecompressor().stream_reader(payload)
    else:
        raise IntegrityError(f"{what}: unknown compression flag {flag}")
    try:
        hlen = int.from_bytes(_read_exact(stream, 4, what), "little")
        if hlen > NAMED_HEADER_MAX:
            raise IntegrityError(f"{what}: bad header (it says {hlen} bytes)")
        try:
            meta = json.loads(_read_exact(stream, hlen, what))
        except (ValueError, UnicodeDecodeError) as exc:
            raise IntegrityError(f"{what}: bad header ({exc})") from None
        size = meta.get("size") if isinstance(meta, dict) else None
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= NAMED_MAX:
            raise IntegrityError(f"{what}: bad header (size {size!r}; at most {NAMED_MAX})")
        data = _read_exact(stream, size, what)
        if stream.read(1):
            raise IntegrityError(f"{what}: holds more than the {size} bytes its header records (refused)")
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"{what}: cannot decompress ({exc})") from None
    return meta, data


def _read_exact(stream: BinaryIO, size: int, what: str) -> bytes:
    """``size`` bytes from ``stream``, read in pieces (memory grows only with what it yields)."""
    pieces: list[bytes] = []
    got = 0
    while got < size:
        piece = stream.read(min(size - got, NAMED_READ_PIECE))
        if not piece:
            raise IntegrityError(f"{what}: shorter than its header records ({got} of {size} bytes)")
        pieces.append(piece)
        got += len(piece)
    return b"".join(pieces)


def _refuse_downgrade(backend: Backend, passphrase_given: bool) -> None:
    """Refuse a config that says "unencrypted" where encryption is evident (see :meth:`Repository.open`)."""
    if crypto.has_slots(backend):
        why = "but the repository has key slots (keys/)"
    elif passphrase_given:
        why = "but a passphrase is configured"
    else:
        return
    raise IntegrityError(
        f"repository config of {backend.describe()} says the repository is not encrypted, {why}: "
        "refusing to open it (later backups would be stored in plaintext)",
        hint="if the config was changed, put back the original from a copy of the repository; if the "
        "repository really is unencrypted, unset COLDKEEP_PASSWORD and [repository].password_file",
    )


def tree_line(entry: dict[str, Any]) -> bytes:
    """One tree entry as a JSON line: UTF-8, with non-ASCII characters as they are.

    File names (and symlink targets) are bytes on Linux; Python gives those that are not valid
    UTF-8 as ``str`` with each undecodable byte as a lone surrogate U+DC80..U+DCFF
    (``surrogateescape``), which UTF-8 cannot encode.  Only such an entry is written with every
    non-ASCII character escaped (``\\udcff``, ``\\u00e9``): ``json.loads`` gives the same ``str``
    back and ``os`` functions turn it into the original bytes, while every other entry keeps
    the bytes it always had (unchanged tree blobs still deduplicate).
    """
    try:
        return _TREE_ENCODER.encode(entry).encode() + b"\n"
    except UnicodeEncodeError:
        return _TREE_ENCODER_ASCII.encode(entry).encode() + b"\n"


def tree_cut_bits(entries: int) -> int:
    """How many low bits of a path hash must be zero for a tree blob to end there, for a tree of
    ``entries`` entries: 2 ** TREE_MIN_BITS entries per blob on average, more in trees of more
    than TREE_MAX_BLOBS times that (only a tree that doubles or halves changes its boundaries)."""
    bits = TREE_MIN_BITS
    while entries >> bits > TREE_MAX_BLOBS:
        bits += 1
    return bits


def _tree_lines(data: bytes) -> list[Any]:
    """The entries of one tree blob (JSON lines), parsed in one ``json.loads`` call when possible.

    JSON text never contains a raw newline, so the lines of a well-formed blob joined with commas
    are a JSON array; anything else (blank lines, a damaged line) is parsed line by line, with the
    same result and errors as before.
    """
    return _tree_lines_raw(data)[0]


def _tree_lines_raw(data: bytes) -> tuple[list[Any], list[bytes] | None]:
    """:func:`_tree_lines`, and each entry's line (with its newline) when parsed in one call."""
    body = data.strip(b"\n")
    if not body:
        return [], None
    if b"\n\n" not in body and b"\r" not in body:
        with contextlib.suppress(ValueError):
            entries = json.loads(b"[" + body.replace(b"\n", b",") + b"]")
            if isinstance(entries, list) and all(isinstance(e, dict) for e in entries):
                raw = [line + b"\n" for line in body.split(b"\n")]
                return entries, raw if len(raw) == len(entries) else None
    return [json.loads(line) for line in data.splitlines() if line], None


def host() -> str:
    return socket.gethostname()


def elapsed_since(start: float) -> float:
    return round(time.monotonic() - start, 3)


@dataclass
class Progress:
    """Counters a command can render; updated from worker threads."""

    files_total: int = 0
    bytes_total: int = 0
    files_done: int = 0
    bytes_done: int = 0
    callback: Callable[[Progress], None] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, files: int = 0, nbytes: int = 0) -> None:
        with self._lock:
            self.files_done += files
            self.bytes_done += nbytes
        if self.callback is not None:
            with contextlib.suppress(Exception):
                self.callback(self)


def getpid() -> int:
    return os.getpid()
