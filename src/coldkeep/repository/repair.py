"""``repo repair --from NAME``: what is damaged or missing in the repository, taken from a copy.

Nothing is taken from the copy that does not verify (as ``repo copy`` verifies), and nothing is
deleted before what replaces it is written.  Repairs, in this order:

0. **the config**, when its footer does not verify: replaced by the copy's when that one verifies
   and is this repository's (:func:`repair_config`; the same id where the damaged one still shows
   it, else the same bytes but for a few — bit rot, not another repository).  Encrypted, opening
   then checks it against the config the key slots bind, as always;
1. **key slots** that do not parse: replaced by the copy's slot of the same id when that one
   parses (:func:`repair_key_slots`, before the repository is opened: a damaged only slot keeps it
   shut);
2. **index documents, snapshot documents, named objects and service records** that do not verify:
   replaced by the copy's object of the same name when that one verifies (a service record from the
   copy may be older than the lost one: it is reported);
3. **blobs**: every blob in a pack that is missing, truncated or damaged (each indexed blob is read
   and checked against its id), and every blob a snapshot uses that no index lists.  When the copy
   holds the very same pack and it verifies whole, the pack is replaced by it.  Otherwise each
   blob is looked up *by id* — in the repository's other packs, then in the copy's indexes (it may
   sit in a different pack there, after the copy was pruned or repacked) — read and verified; the
   intact blobs of a damaged pack come from that pack.  They are written into new packs with an
   index of their own; then the index documents that list the damaged pack are rewritten without
   it, and the damaged pack is deleted.  A blob found intact nowhere is *lost*: it is reported and
   its damaged pack stays listed for it (``repo check`` names the files it affects).

Missing snapshots, named objects and key slots are not brought back: a forgotten snapshot, an
expired WAL segment or a removed passphrase cannot be told from a lost one, and must stay gone.

Locks: exclusive on the repository (index documents are rewritten), shared on the copy.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from coldkeep.errors import ColdkeepError, IntegrityError, ObjectNotFound, RepositoryError
from coldkeep.repository import keyslots
from coldkeep.repository.blobwriter import pack_target
from coldkeep.repository.copy import slot_problem, verify_document, verify_pack
from coldkeep.repository.crypto import KeyRing
from coldkeep.repository.format import (
    CONFIG_KEY,
    DIGEST_SIZE,
    INDEX_PREFIX,
    KEYS_PREFIX,
    NAMED_PREFIX,
    SNAPSHOT_PREFIX,
    STATE_PREFIX,
)
from coldkeep.repository.index import decode_index, encode_index
from coldkeep.repository.locks import locked
from coldkeep.repository.packer import BlobEntry, PackBuilder, damaged_blobs, pack_key, parse_pack
from coldkeep.repository.repository import Repository
from coldkeep.repository.tree import parse_tree_blob
from coldkeep.storage.base import Backend


@dataclass
class RepairResult:
    replaced: list[str] = field(default_factory=list)  # objects replaced whole by the copy's
    blobs_rescued: int = 0  # blobs written into new packs
    packs_written: list[str] = field(default_factory=list)
    packs_removed: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)  # what neither the repository nor the copy has intact
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _same_repository(backend: Backend, source: Backend) -> None:
    mine, theirs = Repository.read_config(backend), Repository.read_config(source)
    if mine.id != theirs.id:
        raise RepositoryError(
            f"{source.describe()} is not a copy of this repository ({theirs.id[:8]}, not {mine.id[:8]})",
            hint="name the copy made from this repository ([repository.copies.NAME])",
        )


def _fetch(source: Backend, key: str) -> bytes | None:
    try:
        return source.get(key)
    except ObjectNotFound:
        return None


# ------------------------------------------------------------------------------------------------
# key slots and whole objects


#: a damaged config whose id cannot be read is taken for this repository's only when it differs
#: from the copy's in at most this many bytes (bit rot, a torn sector's worth of flips: not another
#: repository's config, whose id, key material and times all differ)
CONFIG_MAX_FLIPS = 8


def _config_is_ours(damaged: bytes, theirs: bytes, their_id: str) -> bool:
    """Whether the copy's config ``theirs`` (verified, of repository ``their_id``) can replace the
    damaged config ``damaged``: same id where the damaged document still shows one, else nearly
    the same bytes."""
    try:
        doc = json.loads(damaged[:-DIGEST_SIZE])
        if isinstance(doc, dict) and isinstance(doc.get("id"), str):
            return bool(doc["id"] == their_id)
    except ValueError:
        pass
    if len(damaged) != len(theirs):
        return False
    return sum(a != b for a, b in zip(damaged, theirs, strict=True)) <= CONFIG_MAX_FLIPS


def repair_config(backend: Backend, source: Backend) -> RepairResult:
    """The config of ``backend``, when its footer does not verify, replaced by ``source``'s (see
    the module docstring, step 0; before anything else: without it nothing can be opened)."""
    result = RepairResult()
    try:
        Repository.read_config(backend)
        return result
    except IntegrityError as exc:
        why = exc.message
    theirs = Repository.read_config(source)  # verified, or the error names the copy's config
    with locked(backend, "repair config", exclusive=True):
        damaged = backend.get(CONFIG_KEY)
        data = source.get(CONFIG_KEY)
        if not _config_is_ours(damaged, data, theirs.id):
            raise RepositoryError(
                f"{source.describe()} is not a copy of this repository: its config ({theirs.id[:8]}) "
                f"is not the damaged one ({why})",
                hint="name the copy made from this repository ([repository.copies.NAME])",
            )
        backend.put(CONFIG_KEY, data)
        result.replaced.append(CONFIG_KEY)
    return result


def repair_key_slots(backend: Backend, source: Backend) -> RepairResult:
    """Key slots of ``backend`` that do not parse, replaced by ``source``'s that do (no passphrase
    needed: this runs before the repository is opened)."""
    result = RepairResult()
    _same_repository(backend, source)
    with locked(backend, "repair key slots", exclusive=True):
        _slots, bad = keyslots._read_slots(backend)
        for slot_id, why in sorted(bad.items()):
            if isinstance(why, keyslots._NewerSlot):
                continue
            key = KEYS_PREFIX + slot_id
            data = _fetch(source, key)
            if data is None or slot_problem(slot_id, data) is not None:
                result.lost.append(f"{key}: unusable ({why.args[0]}) and not intact in the copy")
                continue
            backend.put(key, data)
            result.replaced.append(key)
    return result


def _replace_objects(repo: Repository, source: Backend, prefix: str, result: RepairResult) -> None:
    """Objects under ``prefix`` that do not verify, replaced by the copy's that do."""

    def verify(key: str) -> tuple[str, str | None]:
        try:
            verify_document(repo, key, repo.backend.get(key))
        except ObjectNotFound:  # deleted since the listing (a streamed WAL state that completed,
            return key, None  # a record replaced): not damage, and never to be brought back
        except ColdkeepError as exc:
            return key, exc.message
        return key, None

    keys = [info.key for info in repo.backend.list(prefix)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        damaged = [(key, why) for key, why in pool.map(verify, keys) if why is not None]
    for key, why in damaged:
        data = _fetch(source, key)
        try:
            if data is None:
                raise IntegrityError("not in the copy")
            verify_document(repo, key, data)
        except ColdkeepError as exc:
            result.lost.append(f"{key}: {why}; the copy's: {exc.message}")
            continue
        repo.backend.put(key, data)
        result.replaced.append(key)
        if prefix == STATE_PREFIX:
            result.warnings.append(f"{key} replaced by the copy's version (as of the last `repo copy`)")


# ------------------------------------------------------------------------------------------------
# blobs


@dataclass
class _Damage:
    """A pack that needs repair: which of its blobs are damaged (all of them when unreadable)."""

    pack_id: str
    size: int
    blobs: list[BlobEntry]
    damaged: set[bytes]
    readable: bool


def _scan_packs(repo: Repository, result: RepairResult) -> list[_Damage]:
    """Every indexed pack read whole and every blob the index documents place in it verified (as
    ``repo check --read-data`` does); the packs that need repair."""
    listed: dict[str, tuple[int, dict[bytes, BlobEntry]]] = {}
    for _key, pack_id, size, blobs in _index_documents(repo.backend, repo.keys, result):
        listed.setdefault(pack_id, (size, {}))[1].update((b.id, b) for b in blobs)

    def scan(pack_id: str) -> _Damage | None:
        size, by_id = listed[pack_id]
        blobs = sorted(by_id.values(), key=lambda b: b.offset)
        try:
            data = repo.backend.get(pack_key(pack_id))
        except ObjectNotFound:
            return _Damage(pack_id, size, blobs, {b.id for b in blobs}, readable=False)
        damaged = {entry.id for entry, _ in damaged_blobs(repo.keys, data, blobs)}
        try:
            parse_pack(repo.keys, data, pack_id)
            whole = not size or len(data) == size
        except IntegrityError:
            whole = False
        return None if whole and not damaged else _Damage(pack_id, size, blobs, damaged, True)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return [d for d in pool.map(scan, sorted(listed)) if d is not None]


def _index_documents(
    backend: Backend, keys: KeyRing, result: RepairResult
) -> Iterator[tuple[str, str, int, list[BlobEntry]]]:
    """``(index key, pack id, size, blobs)`` of every index document that decodes."""
    for info in backend.list(INDEX_PREFIX):
        try:
            data = backend.get(info.key)
            for pack_id, size, blobs in decode_index(keys, data, info.key.removeprefix(INDEX_PREFIX)):
                yield info.key, pack_id, size, blobs
        except ColdkeepError as exc:
            result.warnings.append(f"{backend.describe()}: {info.key} skipped ({exc.message})")


def _read_verified(backend: Backend, repo: Repository, entry: BlobEntry) -> bytes | None:
    """The stored bytes of one blob, if present and intact (as readers check them)."""
    try:
        stored = backend.get_range(pack_key(entry.pack), entry.offset, entry.length)
    except ObjectNotFound:
        return None
    if damaged_blobs(repo.keys, stored, [dataclasses.replace(entry, offset=0)]):
        return None
    return stored


def _used_but_unindexed(repo: Repository) -> dict[bytes, str]:
    """Blobs snapshots use that no index lists (blob id -> kind); trees that cannot be read are
    reported by the check that follows and skipped here."""
    cache = repo.refresh_cache(full=True)
    need: dict[bytes, str] = {}
    snaps = []
    for snapshot_id in repo.snapshot_ids():
        try:
            snaps.append(repo.load_snapshot_id(snapshot_id))
        except ColdkeepError:
            continue
    for snap in snaps:
        trees = [bytes.fromhex(t) for t in snap.tree]
        need.update((t, "tree") for t in trees if not cache.has(t))
        for tree_id in trees:
            if tree_id in need:
                continue
            try:
                entries = parse_tree_blob(repo.read_blob(tree_id))
            except (ColdkeepError, ValueError):
                continue
            chunks = [bytes.fromhex(c) for e in entries for c in e.get("chunks", ())]
            present = cache.present(chunks)
            need.update((c, "data") for c in chunks if c not in present)
    return need


def _repair_blobs(repo: Repository, source: Backend, result: RepairResult) -> None:
    """Damaged and missing packs (whole, or blob by blob), then blobs that no index lists."""
    rescue: list[_Damage] = []
    for d in _scan_packs(repo, result):
        if not _replace_pack(repo, source, d, result):
            rescue.append(d)
    if rescue:
        bad_packs = {d.pack_id for d in rescue}
        ids = {b.id for d in rescue for b in d.blobs}
        finder = _Finder(repo, source, ids, bad_packs, result)
        lost: dict[str, set[bytes]] = {}
        writer = _PackWriter(repo, result)
        for d in rescue:
            intact = _pack_blobs(repo, d)
            for blob in d.blobs:
                stored = intact.get(blob.id) or finder.stored(blob.id)
                if stored is None:
                    lost.setdefault(d.pack_id, set()).add(blob.id)
                    result.lost.append(f"blob {blob.id.hex()[:16]} in pack {d.pack_id[:16]}: "
                                       "intact neither here nor in the copy")  # fmt: skip
                else:
                    writer.add(blob.id, blob.kind, stored, blob.raw_length)
        writer.finish()
        _drop_packs(repo, bad_packs - writer.rebuilt, lost, result)
    unindexed = _used_but_unindexed(repo)
    if unindexed:
        finder = _Finder(repo, source, set(unindexed), set(), result)
        writer = _PackWriter(repo, result)
        for blob_id, kind in unindexed.items():
            found = finder.entry_and_stored(blob_id)
            if found is None:
                result.lost.append(
                    f"{kind} blob {blob_id.hex()[:16]}: in no index here, not intact in the copy"
                )
            else:
                writer.add(blob_id, kind, found[1], found[0].raw_length)
        writer.finish()
        repo.refresh_cache(full=True)


def _replace_pack(repo: Repository, source: Backend, d: _Damage, result: RepairResult) -> bool:
    """Replace a damaged pack by the very same pack of the copy, if that one verifies whole."""
    key = pack_key(d.pack_id)
    data = _fetch(source, key)
    if data is None:
        return False
    try:
        verify_pack(repo, d.pack_id, data, d.size, d.blobs)
    except IntegrityError:
        return False
    repo.backend.put(key, data)
    result.replaced.append(key)
    return True


class _PackWriter:
    """Rescued blobs (sealed bytes as stored) into new packs, then one index of them.

    A pack is content-addressed, so a new pack can have the id of a pack already stored: the
    damaged pack itself when its blobs were rebuilt in their original order (unencrypted
    repositories seal pack headers deterministically), or an unindexed leftover.  The stored one
    is then replaced when its bytes differ (they are damaged: these verified ones have that id),
    and :attr:`rebuilt` names the packs restored in place."""

    def __init__(self, repo: Repository, result: RepairResult) -> None:
        self.repo = repo
        self.result = result
        self.target = pack_target()
        self.builder = PackBuilder()
        self.written: dict[str, list[BlobEntry]] = {}
        self.sizes: dict[str, int] = {}
        self.rebuilt: set[str] = set()

    def add(self, blob_id: bytes, kind: str, stored: bytes, raw_length: int) -> None:
        self.builder.add(blob_id, kind, stored, raw_length)
        if self.builder.size >= self.target:
            self._flush()

    def _flush(self) -> None:
        builder, self.builder = self.builder, PackBuilder()
        if not len(builder):
            return
        pack_id, view, entries = builder.finish(self.repo.keys)
        data = bytes(view)
        view.release()
        mm = builder.detach()
        if mm is not None:
            mm.close()
        key = pack_key(pack_id)
        if not self.repo.backend.put_if_absent(key, data) and self.repo.backend.get(key) != data:
            self.repo.backend.put(key, data)
            self.rebuilt.add(pack_id)
            self.result.replaced.append(key)
        self.written[pack_id] = entries
        self.sizes[pack_id] = len(data)
        self.result.packs_written.append(pack_id)
        self.result.blobs_rescued += len(entries)

    def finish(self) -> None:
        """Write the last pack and the index of every pack written."""
        self._flush()
        if self.written:
            index_id, data = encode_index(self.repo.keys, self.written, self.sizes)
            self.repo.backend.put_if_absent(INDEX_PREFIX + index_id, data)


class _Finder:
    """Where else ``ids`` are: the repository's other packs (not ``bad_packs``), then the copy's
    packs, by id from their index documents."""

    def __init__(
        self, repo: Repository, source: Backend, ids: set[bytes], bad_packs: set[str], result: RepairResult
    ) -> None:
        self.repo = repo
        self.places = [
            (repo.backend, _locations(_index_documents(repo.backend, repo.keys, result), ids, bad_packs)),
            (source, _locations(_index_documents(source, repo.keys, result), ids, set())),
        ]

    def entry_and_stored(self, blob_id: bytes) -> tuple[BlobEntry, bytes] | None:
        """The first intact copy of ``blob_id``: where it was found, and its stored bytes."""
        for backend, found in self.places:
            for entry in found.get(blob_id, ()):
                stored = _read_verified(backend, self.repo, entry)
                if stored is not None:
                    return entry, stored
        return None

    def stored(self, blob_id: bytes) -> bytes | None:
        found = self.entry_and_stored(blob_id)
        return None if found is None else found[1]


def _pack_blobs(repo: Repository, d: _Damage) -> dict[bytes, bytes]:
    """The intact blobs of a damaged pack (stored bytes by blob id)."""
    if not d.readable:
        return {}
    try:
        data = repo.backend.get(pack_key(d.pack_id))
    except ObjectNotFound:
        return {}
    bad = {entry.id for entry, _ in damaged_blobs(repo.keys, data, d.blobs)}
    return {b.id: data[b.offset : b.offset + b.length] for b in d.blobs if b.id not in bad}


def _locations(
    docs: Iterable[tuple[str, str, int, list[BlobEntry]]], ids: set[bytes], skip_packs: set[str]
) -> dict[bytes, list[BlobEntry]]:
    found: dict[bytes, list[BlobEntry]] = {}
    for _key, pack_id, _size, blobs in docs:
        if pack_id in skip_packs:
            continue
        for blob in blobs:
            if blob.id in ids:
                found.setdefault(blob.id, []).append(blob)
    return found


def _drop_packs(repo: Repository, packs: set[str], lost: dict[str, set[bytes]], result: RepairResult) -> None:
    """Rewrite the index documents that list ``packs``: without them, or listing only their lost
    blobs; then delete the packs that nothing lists any more (their blobs are in new packs)."""
    if not packs:
        return
    docs: dict[str, dict[str, tuple[int, list[BlobEntry]]]] = {}
    for key, pack_id, size, blobs in _index_documents(repo.backend, repo.keys, result):
        docs.setdefault(key, {})[pack_id] = (size, blobs)
    for key, listed in sorted(docs.items()):
        if not packs & set(listed):
            continue
        keep = {p: (s, b) for p, (s, b) in listed.items() if p not in packs}
        for pack_id in packs & set(listed):
            if pack_id in lost:
                size, blobs = listed[pack_id]
                keep[pack_id] = (size, [b for b in blobs if b.id in lost[pack_id]])
        if keep:
            new_id, data = encode_index(repo.keys, {p: b for p, (_, b) in keep.items()},
                                        {p: s for p, (s, _) in keep.items()})  # fmt: skip
            repo.backend.put_if_absent(INDEX_PREFIX + new_id, data)
            if INDEX_PREFIX + new_id == key:
                continue
        repo.backend.delete(key)
    for pack_id in sorted(packs - set(lost)):
        repo.backend.delete(pack_key(pack_id))
        result.packs_removed.append(pack_key(pack_id))
    repo.refresh_cache(full=True)


def repair_from(repo: Repository, source: Backend) -> RepairResult:
    """Repair ``repo`` from its copy at ``source`` (see the module docstring; key slots are
    :func:`repair_key_slots`'s).  The caller runs ``repo check`` afterwards to see what remains."""
    _same_repository(repo.backend, source)
    result = RepairResult()
    with locked(repo.backend, "repair", exclusive=True), locked(source, "repair (source)", exclusive=False):
        for prefix in (INDEX_PREFIX, SNAPSHOT_PREFIX, NAMED_PREFIX, STATE_PREFIX):
            _replace_objects(repo, source, prefix, result)
        unreadable = [line for line in result.lost if line.startswith(INDEX_PREFIX)]
        if unreadable:
            result.warnings.append(
                f"blobs not repaired: {unreadable[0].split(':')[0]} cannot be read; run "
                "`coldkeep repo rebuild-index` (it indexes the packs from their own headers), then repair again"
            )
        else:
            _repair_blobs(repo, source, result)
    return result
