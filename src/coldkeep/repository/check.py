"""``repo check``: structure always; with ``read_data`` every byte of every pack, named object
and service record.  Key slots are always checked: their checksum (format 2), that they are
usable, and that each is bound to this repository's config (see ``keyslots.py``); a format-1 slot
(no checksum) is a warning.

Each problem names the object (pack, blob, index, snapshot, named object) and, for damaged
blobs, the snapshots and files that use them.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from coldkeep.errors import ColdkeepError, IntegrityError, ObjectNotFound
from coldkeep.repository import keyslots
from coldkeep.repository.format import INDEX_PREFIX, PACK_PREFIX, STATE_PREFIX
from coldkeep.repository.index import decode_index
from coldkeep.repository.locks import Lock, locked
from coldkeep.repository.packer import BlobEntry, damaged_blobs, pack_key, parse_pack
from coldkeep.repository.repository import Repository
from coldkeep.repository.snapshot import Snapshot
from coldkeep.repository.tree import TreeEntry


@dataclass
class Problem:
    kind: str
    object: str
    detail: str
    affected: list[str] = field(default_factory=list)  # "snapshot:path"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "object": self.object, "detail": self.detail, "affected": self.affected}

    def line(self) -> str:
        extra = (
            f" (affects {', '.join(self.affected[:5])}{' …' if len(self.affected) > 5 else ''})"
            if self.affected
            else ""
        )
        return f"{self.kind}: {self.object}: {self.detail}{extra}"


@dataclass
class CheckResult:
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    packs: int = 0
    packs_read: int = 0
    blobs: int = 0
    snapshots: int = 0
    named: int = 0
    bytes_read: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "problems": [p.to_json() for p in self.problems],
            "warnings": self.warnings,
            "packs": self.packs,
            "packs_read": self.packs_read,
            "blobs": self.blobs,
            "snapshots": self.snapshots,
            "named_objects": self.named,
            "bytes_read": self.bytes_read,
        }


def _size_problem(entry: TreeEntry, stored: int | None, where: str) -> Problem | None:
    """A file entry whose recorded size is not what its chunks hold (their raw lengths in the
    index, ``stored``; ``None`` when one is missing, reported as such): restore would write
    those bytes and then refuse the file, so the snapshot cannot restore it."""
    if entry.get("type") != "file" or stored is None or stored == entry.get("size"):
        return None
    count = len(entry.get("chunks", ()))
    return Problem(
        "file",
        where,
        f"the snapshot records {entry.get('size')} bytes but its {count} chunk(s) hold {stored}: it cannot be restored",
        [where],
    )


def check(
    repo: Repository,
    *,
    read_data: bool = False,
    subset_pct: float | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> CheckResult:
    """Check the repository under a shared lock (a concurrent prune would look like damage)."""
    with locked(repo.backend, "check", exclusive=False) as lock:
        result = _check(repo, read_data, subset_pct, on_progress, lock)
        lock.check()  # problems seen under a lost lock may be a prune's doing: report neither
        return result


def _name_users(repo: Repository, snaps: list[Snapshot], damaged: dict[bytes, Problem]) -> None:
    """Fill each damaged blob's problem with the ``snapshot:path`` entries using it: a second pass
    over the trees, for the damaged ids alone, so memory does not grow with snapshots × chunks."""
    if not damaged:
        return
    for snap in snaps:
        for tree_hex in snap.tree:
            problem = damaged.get(bytes.fromhex(tree_hex))
            if problem is not None:
                problem.affected.append(f"{snap.short_id}:<tree>")
        try:
            for entry in repo.iter_tree(snap):
                for chunk_hex in entry.get("chunks", ()):
                    problem = damaged.get(bytes.fromhex(chunk_hex))
                    if problem is not None:
                        problem.affected.append(f"{snap.short_id}:{entry['path']}")
        except ColdkeepError:
            continue  # reported as "tree unreadable" already
    for problem in damaged.values():
        problem.affected = sorted(set(problem.affected))


def _check(
    repo: Repository,
    read_data: bool,
    subset_pct: float | None,
    on_progress: Callable[[int, int], None] | None,
    lock: Lock,
) -> CheckResult:
    result = CheckResult()
    backend = repo.backend
    # 1. indexes decode and agree with themselves; build the expected blob map
    expected: dict[str, dict[bytes, BlobEntry]] = {}
    sizes: dict[str, int] = {}
    for info in backend.list(INDEX_PREFIX):
        index_id = info.key.removeprefix(INDEX_PREFIX)
        try:
            for pack_id, size, entries in decode_index(repo.keys, backend.get(info.key), index_id):
                expected.setdefault(pack_id, {}).update({e.id: e for e in entries})
                sizes[pack_id] = size
        except ColdkeepError as exc:
            result.problems.append(Problem("index", info.key, exc.message))
    # 2. packs exist with the recorded size; packs no index knows are orphans (prune removes them)
    stored = {info.key.split("/")[-1]: info.size for info in backend.list(PACK_PREFIX)}
    result.packs = len(stored)
    for pack_id, size in sizes.items():
        if pack_id not in stored:
            result.problems.append(Problem("pack", pack_key(pack_id), "missing (listed in the index)"))
        elif size and stored[pack_id] != size:
            result.problems.append(
                Problem("pack", pack_key(pack_id), f"size {stored[pack_id]} != indexed {size} (truncated?)")
            )
    orphans = set(stored) - set(expected)
    if orphans:
        result.warnings.append(
            f"{len(orphans)} pack(s) not in any index (left by an interrupted run; `repo prune` removes them)"
        )
    all_blobs = {bid: e for entries in expected.values() for bid, e in entries.items()}
    result.blobs = len(all_blobs)
    # 3. snapshots decode, their trees are readable, every chunk they use is indexed (which
    # snapshots and files use a blob is looked up afterwards, for the damaged blobs alone)
    snaps: list[Snapshot] = []
    for snapshot_id in repo.snapshot_ids():
        try:
            snaps.append(repo.load_snapshot_id(snapshot_id))
        except ColdkeepError as exc:
            result.problems.append(Problem("snapshot", f"snapshots/{snapshot_id}", exc.message))
    result.snapshots = len(snaps)
    damaged_snapshot_blobs: set[bytes] = set()
    for snap in snaps:
        for tree_hex in snap.tree:
            tree_id = bytes.fromhex(tree_hex)
            if tree_id not in all_blobs:
                result.problems.append(
                    Problem("tree", tree_hex[:16], "tree blob missing from the index", [snap.short_id])
                )
                damaged_snapshot_blobs.add(tree_id)
        try:
            for entry in repo.iter_tree(snap):
                where = f"{snap.short_id}:{entry['path']}"
                held: int | None = 0  # the bytes its chunks hold (None: a chunk is missing)
                for chunk_hex in entry.get("chunks", ()):
                    cid = bytes.fromhex(chunk_hex)
                    blob = all_blobs.get(cid)
                    if blob is None:
                        held = None
                        result.problems.append(
                            Problem("chunk", chunk_hex[:16], "missing from the index", [where])
                        )
                    elif held is not None:
                        held += blob.raw_length
                problem = _size_problem(entry, held, where)
                if problem is not None:
                    result.problems.append(problem)
        except ColdkeepError as exc:
            result.problems.append(
                Problem("snapshot", f"snapshots/{snap.id}", f"tree unreadable: {exc.message}")
            )
    # 4. read data
    if read_data or subset_pct:
        packs = sorted(set(expected) & set(stored))
        if subset_pct is not None and subset_pct < 100:
            count = max(1, round(len(packs) * subset_pct / 100)) if packs else 0
            packs = random.sample(packs, count)

        damaged: dict[bytes, Problem] = {}

        def read_pack(pack_id: str) -> tuple[int, list[Problem]]:
            problems: list[Problem] = []
            lock.check()
            try:
                data = backend.get(pack_key(pack_id))
            except ObjectNotFound:
                lock.check()  # removed by a prune that took our lost lock for stale: not damage
                return 0, [Problem("pack", pack_key(pack_id), "missing")]
            try:
                parse_pack(repo.keys, data, pack_id)
            except IntegrityError as exc:
                problems.append(Problem("pack", pack_key(pack_id), exc.message))
            for entry, error in damaged_blobs(repo.keys, data, expected[pack_id].values()):
                problem = Problem("blob", f"{pack_key(pack_id)} {entry.id.hex()[:16]}", error.message)
                damaged[entry.id] = problem
                problems.append(problem)
            return len(data), problems

        done = 0
        with ThreadPoolExecutor(max_workers=4) as pool:
            for nbytes, problems in pool.map(read_pack, packs):
                done += 1
                result.packs_read += 1
                result.bytes_read += nbytes
                result.problems.extend(problems)
                if on_progress is not None:
                    on_progress(done, len(packs))
        _name_users(repo, snaps, damaged)
    # 5. named objects
    for name, _size in repo.list_named():
        result.named += 1
        if read_data or subset_pct:
            try:
                obj = backend.get("named/" + name)
                repo.decode_named(name, obj)
                result.bytes_read += len(obj)
            except ColdkeepError as exc:
                result.problems.append(Problem("named", name, exc.message))
    # 6. service records (state/) and key slots (keys/): they are in the repository too
    if read_data or subset_pct:
        for info in backend.list(STATE_PREFIX):
            try:
                repo.get_state(info.key.removeprefix(STATE_PREFIX))
                result.bytes_read += info.size
            except ColdkeepError as exc:
                result.problems.append(Problem("state", info.key, exc.message))
    # the slot that opened the repository checked the config; the others are checked here
    slot_problems, slot_warnings = keyslots.check_slots(backend, repo.config.digest or None, repo.keys)
    result.problems.extend(Problem("key slot", key, detail) for key, detail in slot_problems)
    result.warnings.extend(slot_warnings)
    return result
