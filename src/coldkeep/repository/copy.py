"""``repo copy --to NAME``: the whole repository, verified, at another location.

A copy is a complete repository: config, key slots, packs, indexes, snapshots, named objects (WAL)
and service records (``state/``: the WAL lineages, the backup-status catalog, …), under the same
keys, with the same repository id and keys (encrypted data moves without re-encryption).  Only
locks stay behind.  Whatever can be recovered from the source can be recovered from the copy alone.

Consistency.  The copy holds a shared lock on the source for its whole run (prune, forget and
``pg expire`` take an exclusive one, so nothing is deleted under it) and copies one view, listed
once, in dependency order:

1. list the snapshots, then the indexes, the named objects and the service records (a backup
   writes its packs, then its index, then its snapshot: every listed snapshot's index is listed;
   a base backup's WAL is archived before its snapshot is written);
2. copy the packs that the listed indexes name, then the named objects and the service records;
3. then the indexes; 4. the snapshots last.

A killed copy therefore leaves the destination consistent (nothing arrives before what it needs),
and what the source gained after the listings waits for the next copy.  An object listed at the
source and gone when read is an error (:class:`SourceChanged`), never skipped.

Verification.  Nothing is written to the destination that does not verify: a pack's footer, name,
header and size, and *every blob* the index places in it (opened — authenticated when encrypted —
decompressed, its content hashed against its id), so a pack with a valid footer around a damaged
blob is refused (exit 3, naming blob and pack); named objects against their checksum; indexes,
snapshots and service records must decode; key slots must parse.  Objects already at the
destination are neither read nor replaced (``repo check --read-data`` on the copy reads them),
except service records, which are mutable: a record that differs is replaced by the source's.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from coldkeep.errors import ColdkeepError, IntegrityError, ObjectNotFound, RepositoryError, UsageError
from coldkeep.repository import keyslots
from coldkeep.repository.format import (
    CONFIG_KEY,
    INDEX_PREFIX,
    KEYS_PREFIX,
    NAMED_PREFIX,
    PACK_PREFIX,
    SNAPSHOT_PREFIX,
    STATE_PREFIX,
    decode_document,
    object_id,
    strip_footer,
)
from coldkeep.repository.index import decode_index
from coldkeep.repository.locks import locked
from coldkeep.repository.packer import BlobEntry, damaged_blobs, pack_key, parse_pack
from coldkeep.repository.repository import Repository
from coldkeep.repository.snapshot import SNAPSHOT_AAD
from coldkeep.storage.base import Backend
from coldkeep.storage.local import LocalBackend
from coldkeep.storage.wrappers import unwrap

#: objects fetched, verified and written at once
WORKERS = 4

#: named objects that may vanish under a copy without a lock: ``pg receive-wal`` (which takes no
#: repository lock) replaces the stored state of the segment it is receiving every 0.2 s and
#: deletes every state once the segment is archived (``coldkeep.postgres.walstream``).  A state
#: listed by the copy and gone when read was superseded; the newer one waits for the next copy.
TRANSIENT_NAMED_PREFIX = NAMED_PREFIX + "wal-stream/"


class SourceChanged(RepositoryError):
    template = "{detail} was listed at the source but is gone; nothing that needs it was copied"
    hint = (
        "something removed it without the repository lock, or the source is damaged: "
        "run `coldkeep repo check` on the source, then copy again"
    )


@dataclass
class CopyResult:
    copied: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    skipped: int = 0
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"copied": self.copied, "bytes": self.bytes, "already_there": self.skipped,
                "warnings": self.warnings}  # fmt: skip

    def count(self, key: str, nbytes: int) -> None:
        prefix = key.split("/", 1)[0]
        self.copied[prefix] = self.copied.get(prefix, 0) + 1
        self.bytes += nbytes


@dataclass
class SourceView:
    """What one copy carries: the source's keys as listed once, before anything is copied."""

    snapshots: list[str]
    indexes: list[str]
    named: list[str]
    state: list[str]
    #: pack id -> (size, blobs) for the packs named by the indexes the destination lacks
    packs: dict[str, tuple[int, list[BlobEntry]]] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------
# verification (shared with repair)


def get_listed(backend: Backend, key: str) -> bytes:
    """``key`` of a listing taken earlier; :class:`SourceChanged` if it is gone now."""
    try:
        return backend.get(key)
    except ObjectNotFound:
        raise SourceChanged(key) from None


def verify_pack(repo: Repository, pack_id: str, data: bytes, size: int, blobs: list[BlobEntry]) -> None:
    """Footer, name, header and size of a whole pack, and every blob of ``blobs`` in it (as
    readers read them); :class:`IntegrityError` naming the first damaged blob and the pack."""
    if size and len(data) != size:
        raise IntegrityError(f"pack {pack_id}: {len(data)} bytes, the index says {size} (truncated?)")
    parse_pack(repo.keys, data, pack_id)
    damaged = damaged_blobs(repo.keys, data, blobs)
    if damaged:
        more = f" (+{len(damaged) - 1} more damaged blob(s))" if len(damaged) > 1 else ""
        raise IntegrityError(damaged[0][1].message + more)


def verify_document(repo: Repository, key: str, data: bytes) -> None:
    """An index, snapshot or service record decodes (and a content-addressed one matches its name)."""
    if key.startswith((INDEX_PREFIX, SNAPSHOT_PREFIX)) and object_id(data) != key.rsplit("/", 1)[-1]:
        strip_footer(data, key)  # names a damaged object as damaged first
        raise IntegrityError(f"{key}: content does not match its name")
    if key.startswith(INDEX_PREFIX):
        for _ in decode_index(repo.keys, data, key.removeprefix(INDEX_PREFIX)):
            pass
    elif key.startswith(SNAPSHOT_PREFIX):
        decode_document(repo.keys, data, SNAPSHOT_AAD, key)
    elif key.startswith(STATE_PREFIX):
        decode_document(repo.keys, data, key.encode(), key)
    elif key.startswith(NAMED_PREFIX):
        repo.decode_named(key.removeprefix(NAMED_PREFIX), data)
    else:
        raise ValueError(f"not a document: {key}")


def slot_problem(slot_id: str, data: bytes) -> str | None:
    """Why key slot ``slot_id`` is unusable, or ``None`` when it parses."""
    try:
        keyslots._parse_slot(slot_id, data)
    except keyslots._BadSlot as exc:
        return str(exc.args[0])
    return None


# ------------------------------------------------------------------------------------------------
# copy


def _init_destination(src: Repository, dst: Backend, result: CopyResult) -> None:
    """Config and key slots: the destination's config must be this repository's; key slots the
    destination lacks are added (those that parse)."""
    if dst.exists(CONFIG_KEY):
        dst_config = Repository.read_config(dst)
        if dst_config.id != src.config.id:
            raise RepositoryError(
                f"{dst.describe()} holds another repository ({dst_config.id[:8]}, not {src.config.id[:8]})",
                hint="copy into an empty location or the copy made from this repository",
            )
    have = {info.key for info in dst.list(KEYS_PREFIX)}
    for info in src.backend.list(KEYS_PREFIX):  # first, so that a config never lacks its keys
        if info.key in have:
            continue
        data = get_listed(src.backend, info.key)
        why = slot_problem(info.key.removeprefix(KEYS_PREFIX), data)
        if why is not None:
            result.warnings.append(f"{info.key} not copied: unusable at the source ({why})")
            continue
        dst.put_if_absent(info.key, data)
        result.count(info.key, len(data))
    if not dst.exists(CONFIG_KEY):
        data = src.backend.get(CONFIG_KEY)
        strip_footer(data, "repository config")
        dst.put_if_absent(CONFIG_KEY, data)


def list_view(src: Repository, dst: Backend) -> SourceView:
    """Step 1: list the source once, snapshots first; read the indexes the destination lacks."""
    keys = src.backend.list
    view = SourceView(
        snapshots=[i.key for i in keys(SNAPSHOT_PREFIX)],
        indexes=[i.key for i in keys(INDEX_PREFIX)],
        named=[i.key for i in keys(NAMED_PREFIX)],
        state=[i.key for i in keys(STATE_PREFIX)],
    )
    have = {info.key for info in dst.list(INDEX_PREFIX)}
    for key in view.indexes:
        if key in have:  # its packs were copied before it
            continue
        for pack_id, size, blobs in decode_index(
            src.keys, get_listed(src.backend, key), key.removeprefix(INDEX_PREFIX)
        ):
            known = view.packs.get(pack_id)
            view.packs[pack_id] = (size, blobs if known is None else known[1] + blobs)
    return view


def same_store(a: Backend, b: Backend) -> bool:
    """Whether two backends are one store (the same directory, however named; the same bucket,
    prefix and endpoint)."""
    a, b = unwrap(a), unwrap(b)
    if isinstance(a, LocalBackend) and isinstance(b, LocalBackend):
        try:
            return os.path.samefile(a.root, b.root)
        except OSError:
            return os.path.realpath(a.root) == os.path.realpath(b.root)
    return a.describe() == b.describe()


def copy_to(
    src: Repository, dst: Backend, *, on_progress: Callable[[str, int], None] | None = None
) -> CopyResult:
    """Copy what ``dst`` lacks of ``src`` (see the module docstring); ``on_progress(key, bytes)``
    after each object written.

    A pack or index that does not verify stops the copy before anything that may need it is
    written.  A named object, service record or snapshot that does not verify (nothing else
    depends on it) is left behind while the rest is copied; then :class:`IntegrityError` names it.
    """
    if same_store(src.backend, dst):
        raise UsageError(
            f"{dst.describe()} is the repository itself, not a copy of it",
            hint="point [repository.copies.NAME].url at another directory or bucket",
        )
    result = CopyResult()
    with locked(src.backend, "copy", exclusive=False):
        _init_destination(src, dst, result)
        with locked(dst, "copy", exclusive=False):
            copier = _Copier(src, dst, list_view(src, dst))
            have_packs = _keys(dst, PACK_PREFIX)
            steps: list[tuple[Callable[[str], int], list[str]]] = [
                (copier.pack, _missing(have_packs, [pack_key(p) for p in sorted(copier.view.packs)], result)),
                (copier.leaf, _missing(_keys(dst, NAMED_PREFIX), copier.view.named, result)),
                (copier.record, copier.view.state),
                (copier.index, _missing(_keys(dst, INDEX_PREFIX), copier.view.indexes, result)),
                (copier.leaf, _missing(_keys(dst, SNAPSHOT_PREFIX), copier.view.snapshots, result)),
            ]
            for step, todo in steps:
                for key, nbytes in _run(step, todo):
                    if not nbytes:
                        result.skipped += 1
                        continue
                    result.count(key, nbytes)
                    if on_progress is not None:
                        on_progress(key, nbytes)
    if copier.refused:
        more = f" (+{len(copier.refused) - 1} more)" if len(copier.refused) > 1 else ""
        raise IntegrityError(
            f"refusing to copy {copier.refused[0]}{more}; everything else was copied",
            hint="repair the source from a copy (`coldkeep repo repair --from NAME`) or remove what is lost",
        )
    return result


class _Copier:
    """One step per kind of object: read at the source, verify, write; returns the bytes written
    (0: nothing to write)."""

    def __init__(self, src: Repository, dst: Backend, view: SourceView) -> None:
        self.src = src
        self.dst = dst
        self.view = view
        self.refused: list[str] = []  # leaves that did not verify (why, one line each)

    def _write(self, key: str, data: bytes) -> int:
        self.dst.put_if_absent(key, data)
        if self.dst.stat(key).size != len(data):
            raise IntegrityError(f"{key}: size differs at the destination after copy")
        return len(data)

    def pack(self, key: str) -> int:
        pack_id = key.rsplit("/", 1)[-1]
        size, blobs = self.view.packs[pack_id]
        try:
            data = self.src.backend.get(key)
        except ObjectNotFound:
            raise IntegrityError(f"{key}: named by the index but missing at the source") from None
        try:
            verify_pack(self.src, pack_id, data, size, blobs)
        except IntegrityError as exc:
            raise IntegrityError(
                f"refusing to copy {key}: {exc.message}",
                hint="repair the source first (`coldkeep repo repair --from COPY`); nothing was replaced",
            ) from None
        return self._write(key, data)

    def index(self, key: str) -> int:
        data = get_listed(self.src.backend, key)
        try:
            verify_document(self.src, key, data)
        except ColdkeepError as exc:
            raise IntegrityError(f"refusing to copy {key}: {exc.message}") from None
        return self._write(key, data)

    def _leaf_ok(self, key: str, data: bytes) -> bool:
        try:
            verify_document(self.src, key, data)
        except ColdkeepError as exc:
            self.refused.append(f"{key}: {exc.message}")
            return False
        return True

    def leaf(self, key: str) -> int:
        """A named object or snapshot: written once.  A streamed WAL state superseded since the
        listing is skipped (:data:`TRANSIENT_NAMED_PREFIX`); anything else gone is an error."""
        try:
            data = get_listed(self.src.backend, key)
        except SourceChanged:
            if key.startswith(TRANSIENT_NAMED_PREFIX):
                return 0
            raise
        return self._write(key, data) if self._leaf_ok(key, data) else 0

    def record(self, key: str) -> int:
        """A service record: mutable, replaced when it differs."""
        data = get_listed(self.src.backend, key)
        try:
            if self.dst.get(key) == data:
                return 0
        except ObjectNotFound:
            pass
        if not self._leaf_ok(key, data):
            return 0
        self.dst.put(key, data)
        return len(data)


def _keys(backend: Backend, prefix: str) -> set[str]:
    return {info.key for info in backend.list(prefix)}


def _missing(have: set[str], keys: list[str], result: CopyResult) -> list[str]:
    result.skipped += sum(1 for key in keys if key in have)
    return [key for key in keys if key not in have]


def _run(step: Callable[[str], int], keys: list[str]) -> Iterator[tuple[str, int]]:
    """``(key, step(key))`` for every key, :data:`WORKERS` at a time.  The first error cancels the
    steps not yet started and propagates once those under way have finished, so nothing of a
    later step is written."""
    pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="coldkeep-copy")
    try:
        yield from zip(keys, pool.map(step, keys), strict=True)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
