"""``repo prune``: reclaim the space of data no snapshot uses, under an exclusive lock.

Order (safe to kill at any instant):

1. find the blobs every snapshot uses (tree blobs and data chunks);
2. repack the used blobs of packs that are mostly unused (> ``max_unused`` %) into new packs;
3. write one new index of every surviving pack (old and new);
4. delete the index documents it replaces;
5. delete packs that are unused, repacked, or known to no index (left by an interrupted run).

Until step 4 every used blob is reachable through the old indexes; after it, through the new one.
Named objects (WAL) are never touched: services delete them explicitly (``pg expire``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from coldkeep.errors import IntegrityError, ObjectNotFound
from coldkeep.repository.blobwriter import BlobWriter
from coldkeep.repository.format import INDEX_PREFIX, PACK_PREFIX
from coldkeep.repository.index import encode_index
from coldkeep.repository.locks import locked
from coldkeep.repository.packer import BlobEntry, damaged_blobs, pack_key
from coldkeep.repository.repository import Repository


@dataclass
class PruneResult:
    packs_before: int = 0
    packs_deleted: int = 0
    packs_repacked: int = 0
    packs_written: int = 0
    stored_before: int = 0
    stored_after: int = 0
    blobs_removed: int = 0
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__, reclaimed_bytes=self.stored_before - self.stored_after)


def used_blobs(repo: Repository) -> set[bytes]:
    used: set[bytes] = set()
    for snap in repo.list_snapshots(strict=True):  # a damaged snapshot's blobs are not garbage
        used.update(bytes.fromhex(t) for t in snap.tree)
        for entry in repo.iter_tree(snap):
            used.update(bytes.fromhex(c) for c in entry.get("chunks", ()))
    return used


def _repack(repo: Repository, writer: BlobWriter, blobs: list[BlobEntry]) -> None:
    """Move ``blobs`` into the writer's new packs, sealed bytes as they are, each verified first
    as readers verify it: a damaged blob must not get a valid footer around it while its original
    is deleted.  :class:`IntegrityError` (exit 3) names the damaged blobs and packs; nothing has been
    deleted then, and the packs written so far are orphans the next prune removes."""
    damaged: list[IntegrityError] = []
    for blob in blobs:
        try:
            stored = repo.backend.get_range(pack_key(blob.pack), blob.offset, blob.length)
        except ObjectNotFound:
            damaged.append(
                IntegrityError(f"blob {blob.id.hex()[:16]} in pack {blob.pack[:16]}: pack missing")
            )
            continue
        bad = damaged_blobs(repo.keys, stored, [dataclasses.replace(blob, offset=0)])
        if bad:
            damaged.append(bad[0][1])
        elif not damaged:
            writer.add(blob.id, blob.kind, stored, blob.raw_length)
    if damaged:
        more = f" (+{len(damaged) - 1} more)" if len(damaged) > 1 else ""
        raise IntegrityError(
            f"refusing to prune: {damaged[0].message}{more}; nothing was deleted",
            hint="repair it from a copy (`coldkeep repo repair --from COPY`), then prune again",
        )


def prune(
    repo: Repository, *, max_unused_pct: float = 5.0, dry_run: bool = False, lock_wait: float = 0.0
) -> PruneResult:
    """Under the exclusive lock (waiting up to ``lock_wait`` seconds for shared holders)."""
    with locked(repo.backend, "prune", exclusive=True, wait_s=lock_wait) as lock:
        cache = repo.refresh_cache(full=True)
        used = used_blobs(repo)
        result = PruneResult(dry_run=dry_run)
        stored = {info.key.split("/")[-1]: info.size for info in repo.backend.list(PACK_PREFIX)}
        result.packs_before = len(stored)
        result.stored_before = sum(stored.values())
        indexed = cache.packs()
        missing = used - {e.id for e in cache.all_blobs() if e.pack in stored}
        if missing:
            raise IntegrityError(
                f"{len(missing)} blob(s) used by snapshots are not in any pack; refusing to prune",
                hint="run `coldkeep repo check` and `repo repair --from COPY` first",
            )
        keep: dict[str, list[BlobEntry]] = {}
        repack: list[BlobEntry] = []
        delete: set[str] = set(stored) - set(indexed)  # orphans
        seen: set[bytes] = set()
        for pack_id in sorted(indexed):
            if pack_id not in stored:
                continue
            blobs = cache.blobs_in_pack(pack_id)
            live = [b for b in blobs if b.id in used and b.id not in seen]
            seen.update(b.id for b in live)
            total = sum(b.length for b in blobs) or 1
            unused_pct = 100.0 * (total - sum(b.length for b in live)) / total
            result.blobs_removed += len(blobs) - len(live)
            if not live:
                delete.add(pack_id)
            elif unused_pct > max_unused_pct:
                repack.extend(live)
                delete.add(pack_id)
                result.packs_repacked += 1
            else:
                keep[pack_id] = blobs
        result.packs_deleted = len(delete)
        if dry_run:
            result.stored_after = (
                result.stored_before - sum(stored[p] for p in delete) + sum(b.length for b in repack)
            )
            return result
        # 2. repack (every blob verified before it moves)
        writer = repo.writer(use_cache=False)
        try:
            _repack(repo, writer, repack)
            writer.finish()  # writes its own small index too, superseded below
        except BaseException:
            writer.abort()
            raise
        new_packs = dict(writer._written)
        result.packs_written = len(new_packs)
        # Never delete a pack the new index lists.  After a killed prune the repacked pack can
        # already exist and, the blob rows of the cache pointing at its old twin, look unused;
        # repacking the same blobs again then yields the same bytes and id (put_if_absent keeps
        # the existing pack), so without this the rerun deleted the pack its own index needs.
        delete -= set(new_packs)
        result.packs_deleted = len(delete)
        # 3. one full index of every surviving pack
        all_packs = {**keep, **new_packs}
        sizes = {p: stored.get(p, 0) for p in keep} | dict(writer._sizes)
        old_indexes = [info.key for info in repo.backend.list(INDEX_PREFIX)]
        new_index_id = None
        if all_packs:
            new_index_id, data = encode_index(repo.keys, all_packs, sizes)
            repo.backend.put_if_absent(INDEX_PREFIX + new_index_id, data)
        # 4. drop the replaced index documents, 5. then the packs
        lock.check(confirm=True)  # a lost lock may have let a backup start: its packs are in no index yet
        for key in old_indexes:
            if key != INDEX_PREFIX + (new_index_id or ""):
                repo.backend.delete(key)
        for pack_id in sorted(delete):
            lock.check()
            repo.backend.delete(pack_key(pack_id))
        repo.refresh_cache(full=True)
        result.stored_after = sum(info.size for info in repo.backend.list(PACK_PREFIX))
        return result
