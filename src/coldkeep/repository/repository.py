"""The repository: one object over a backend, its keys and its config, through which everything
else reads and writes.

:class:`Repository` is a thin facade: it owns the lifecycle (``init``, ``open``, the local caches,
the lock check) and delegates each part to the module that owns it:

==============  ===================================================================================
repoconfig      the config document (:class:`RepoConfig`), reading it, refusing a downgrade
blobwriter      the pack upload pipeline (:class:`BlobWriter`): packs, then the index
reads           ranged reads of packs, every blob verified against its id; chunk runs
snapshot        the snapshot model (:class:`Snapshot`) and its documents: save, load, find, list
catalog         the local cache of snapshot documents that listings and queries go through
tree            tree entries (:class:`TreeEntry`) and tree blobs
named           named write-once objects (WAL segments, service archives)
state           small mutable records, changed by compare-and-swap
verify          ``verify_snapshot``: every stored byte of a snapshot, optionally against a live tree
entries         ``open_entry``: one file's bytes streamed and verified, without a restore
==============  ===================================================================================

The names that lived in this module before the split (``Snapshot``, ``BlobWriter``,
``Progress``, ``RepoConfig``, ``tree_line``, …) are still importable from it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coldkeep import clock
from coldkeep.errors import RepositoryExists, UsageError
from coldkeep.repository import keyslots, locks, named, reads, snapshot, state, tree
from coldkeep.repository.blobwriter import PACK_TARGET, PACK_TARGET_ENV, BlobWriter, WriteStats, pack_target
from coldkeep.repository.chunker import ChunkerParams
from coldkeep.repository.crypto import KeyRing, PlainKeys
from coldkeep.repository.format import CONFIG_KEY, DIGEST_SIZE, FORMAT_VERSION
from coldkeep.repository.index import IndexCache
from coldkeep.repository.named import NAMED_HEADER_MAX, NAMED_MAX, NAMED_READ_PIECE
from coldkeep.repository.packer import BlobEntry
from coldkeep.repository.progress import Progress
from coldkeep.repository.reads import READ_GAP, READ_SPAN
from coldkeep.repository.repoconfig import RepoConfig, read_config, refuse_downgrade
from coldkeep.repository.snapshot import SNAPSHOT_AAD, Snapshot
from coldkeep.repository.tree import (
    TREE_BLOB_MAX,
    TREE_MAX_BLOBS,
    TREE_MIN_BITS,
    TreeEntry,
    parse_tree_blob,
    tree_cut_bits,
    tree_line,
)
from coldkeep.storage.base import Backend

if TYPE_CHECKING:
    from coldkeep.repository.catalog import SnapshotCatalog
    from coldkeep.repository.entries import EntryReader
    from coldkeep.repository.verify import HotDigests, SnapshotVerification

__all__ = [
    "NAMED_HEADER_MAX",
    "NAMED_MAX",
    "NAMED_READ_PIECE",
    "PACK_TARGET",
    "PACK_TARGET_ENV",
    "READ_GAP",
    "READ_SPAN",
    "SNAPSHOT_AAD",
    "TREE_BLOB_MAX",
    "TREE_MAX_BLOBS",
    "TREE_MIN_BITS",
    "BlobWriter",
    "Progress",
    "RepoConfig",
    "Repository",
    "Snapshot",
    "TreeEntry",
    "WriteStats",
    "pack_target",
    "tree_cut_bits",
    "tree_line",
]

log = logging.getLogger(__name__)

#: the name tree blobs were parsed with before ``tree.py`` (kept for existing callers)
_tree_lines = parse_tree_blob


class Repository:
    """A repository opened over ``backend`` with its ``keys`` and ``config`` (see the module
    docstring for who owns what)."""

    #: tries of :meth:`update_state` before :class:`~coldkeep.errors.StateConflict`
    STATE_ATTEMPTS = state.STATE_ATTEMPTS

    def __init__(self, backend: Backend, keys: KeyRing, config: RepoConfig) -> None:
        self.backend = backend
        self.keys = keys
        self.config = config
        #: snapshot id -> why its document cannot be read, for every one a listing skipped
        self.damaged_snapshots: dict[str, str] = {}
        self._cache: IndexCache | None = None
        self._cache_lock = threading.Lock()
        self._catalog: SnapshotCatalog | None = None
        self._catalog_failed = False

    # -- lifecycle -------------------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        backend: Backend,
        *,
        passphrase: str | None = None,
        chunker: ChunkerParams | None = None,
        compression_level: int = 3,
        kdf_params: keyslots.KdfParams | None = None,
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
            keys = keyslots.init_keys(
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
        return read_config(backend)

    @classmethod
    def open(cls, backend: Backend, passphrase: Callable[[], str | None] | str | None = None) -> Repository:
        """Open the repository: read its config and, when encrypted, open the keys with
        ``passphrase`` and check that the config is the one the key slot authenticates.

        A config that says "unencrypted" is refused (:class:`IntegrityError`) when the repository
        has key slots or a passphrase is given: either is how a downgrade (the config rewritten to
        store later backups in plaintext) would look."""
        config = read_config(backend)
        secret = passphrase() if callable(passphrase) else passphrase
        keys: KeyRing
        if config.encrypted:
            if not secret:
                raise UsageError(
                    f"the repository at {backend.describe()} is encrypted and no passphrase was given",
                    hint="set COLDKEEP_PASSWORD or [repository].password_file",
                )
            keys = keyslots.open_keys(backend, secret, config_digest=config.digest)
        else:
            refuse_downgrade(backend, bool(secret))
            keys = PlainKeys()
        return cls(backend, keys, config)

    @property
    def cache(self) -> IndexCache:
        """The local index cache (where each blob is), opened and synced on first use."""
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

    @property
    def catalog(self) -> SnapshotCatalog | None:
        """The local snapshot catalog (:mod:`~coldkeep.repository.catalog`), opened on first use;
        ``None`` when it cannot be opened (listings then read every document)."""
        with self._cache_lock:
            if self._catalog is None and not self._catalog_failed:
                import sqlite3

                from coldkeep.repository.catalog import SnapshotCatalog

                try:
                    self._catalog = SnapshotCatalog(self.config.id)
                except (OSError, sqlite3.Error) as exc:
                    self._catalog_failed = True
                    log.debug("no snapshot catalog (%s): listings read every snapshot document", exc)
            return self._catalog

    def rebuild_catalog(self) -> int:
        """Empty the snapshot catalog and fill it again from the repository alone; returns how
        many snapshots it holds."""
        catalog = self.catalog
        if catalog is not None:
            catalog.clear()
        return len(self.list_snapshots())

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
            self._cache = None
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None
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

    # -- blobs (blobwriter.py, reads.py) ---------------------------------------------------------

    def writer(self, **kwargs: Any) -> BlobWriter:
        return BlobWriter(self, **kwargs)

    def read_blob(self, blob_id: bytes, entry: BlobEntry | None = None) -> bytes:
        """Read, decrypt, decompress and verify one blob (its id must match its content)."""
        return reads.read_blob(self, blob_id, entry)

    def read_blobs(self, blob_ids: Sequence[bytes]) -> Iterator[bytes]:
        """The verified contents of ``blob_ids``, in order (:func:`~coldkeep.repository.reads.read_blobs`)."""
        return reads.read_blobs(self, blob_ids)

    def check_blob(self, blob_id: bytes, entry: BlobEntry, data: bytes) -> None:
        """:func:`~coldkeep.repository.reads.check_blob`."""
        reads.check_blob(self, blob_id, entry, data)

    def read_blob_run(self, run: Sequence[tuple[bytes, BlobEntry]], check_ids: bool = True) -> list[bytes]:
        """:func:`~coldkeep.repository.reads.read_blob_run`: blobs of one pack, one request."""
        return reads.read_blob_run(self, run, check_ids)

    # -- snapshots (snapshot.py, catalog.py) -----------------------------------------------------

    def save_snapshot(self, snap: Snapshot) -> str:
        return snapshot.save_snapshot(self, snap)

    def snapshot_ids(self) -> list[str]:
        return snapshot.snapshot_ids(self)

    def load_snapshot_id(self, snapshot_id: str) -> Snapshot:
        return snapshot.load_snapshot_id(self, snapshot_id)

    def find_snapshot(self, ref: str) -> Snapshot:
        """By full id, unique id prefix, or ``latest``."""
        return snapshot.find_snapshot(self, ref)

    def list_snapshots(
        self, tags: Mapping[str, str] | None = None, *, kind: str | None = None, strict: bool = False
    ) -> list[Snapshot]:
        """Every readable snapshot of ``kind`` with every tag of ``tags``, oldest first, through
        the snapshot catalog (:func:`~coldkeep.repository.snapshot.list_snapshots`: damaged
        documents, ``strict``)."""
        return snapshot.list_snapshots(self, tags, kind=kind, strict=strict)

    def delete_snapshot(self, snapshot_id: str) -> None:
        snapshot.delete_snapshot(self, snapshot_id)

    # -- trees (tree.py) -------------------------------------------------------------------------

    def write_tree(
        self,
        writer: BlobWriter,
        entries: Sequence[TreeEntry],
        lines: Sequence[bytes | None] | None = None,
    ) -> list[str]:
        """:func:`~coldkeep.repository.tree.write_tree`."""
        return tree.write_tree(self, writer, entries, lines)

    def iter_tree(self, snap: Snapshot) -> Iterator[TreeEntry]:
        return tree.iter_tree(self, snap)

    def iter_tree_lines(self, snap: Snapshot) -> Iterator[tuple[TreeEntry, bytes | None]]:
        return tree.iter_tree_lines(self, snap)

    # -- what services read (verify.py, entries.py) ----------------------------------------------

    def verify_snapshot(
        self,
        snap: Snapshot,
        against: str | Path | None = None,
        *,
        threads: int | None = None,
        hashed: HotDigests | None = None,
    ) -> SnapshotVerification:
        """Every stored byte of ``snap``, and with ``against`` the live tree there (``hashed``:
        what the backup that made it read there; :func:`~coldkeep.repository.verify.verify_snapshot`)."""
        from coldkeep.repository.verify import verify_snapshot

        return verify_snapshot(self, snap, against, threads=threads, hashed=hashed)

    def open_entry(self, snap: Snapshot, path: str | TreeEntry) -> EntryReader:
        """One file of ``snap`` as a verified byte stream
        (:func:`~coldkeep.repository.entries.open_entry`)."""
        from coldkeep.repository.entries import open_entry

        return open_entry(self, snap, path)

    def open_entries(
        self, snap: Snapshot, entries: Iterable[TreeEntry] | None = None
    ) -> Iterator[tuple[TreeEntry, EntryReader]]:
        """Every file of ``snap`` with its reader, under one shared lock
        (:func:`~coldkeep.repository.entries.open_entries`): for exports of many files."""
        from coldkeep.repository.entries import open_entries

        return open_entries(self, snap, entries)

    # -- named write-once objects (named.py) -----------------------------------------------------

    def put_named(
        self,
        name: str,
        data: bytes,
        meta: dict[str, Any] | None = None,
        *,
        level: int | None = None,
        blake3_hex: str | None = None,
    ) -> bool:
        """:func:`~coldkeep.repository.named.put_named`: stored once, never overwritten."""
        return named.put_named(self, name, data, meta, level=level, blake3_hex=blake3_hex)

    def get_named(self, name: str) -> tuple[dict[str, Any], bytes]:
        return named.get_named(self, name)

    def decode_named(self, name: str, obj: bytes) -> tuple[dict[str, Any], bytes]:
        """:func:`~coldkeep.repository.named.decode_named`: verified, bounded decompression."""
        return named.decode_named(self, name, obj)

    def list_named(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        return named.list_named(self, prefix)

    def delete_named(self, name: str) -> None:
        named.delete_named(self, name)

    # -- small mutable records (state.py) --------------------------------------------------------

    def put_state(self, name: str, doc: dict[str, Any]) -> None:
        """Overwrite ``state/<name>`` (no compare-and-swap: use :meth:`update_state`)."""
        state.put_state(self, name, doc)

    def get_state(self, name: str) -> dict[str, Any] | None:
        return state.get_state(self, name)

    def update_state(
        self, name: str, change: Callable[[dict[str, Any] | None], dict[str, Any] | None]
    ) -> dict[str, Any] | None:
        """Read-modify-write ``state/<name>`` by compare-and-swap
        (:func:`~coldkeep.repository.state.update_state`)."""
        return state.update_state(self, name, change, self.STATE_ATTEMPTS)
