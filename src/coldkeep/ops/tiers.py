"""``coldkeep tiers backup | clean``: the three data tiers of ``[tiers.tier1/2/3]``.

**Backup** (:func:`backup_tier`): one snapshot of a tier's ``paths`` (every path, one snapshot),
of kind ``tier`` tagged ``tier=N`` — a service-owned kind (:mod:`coldkeep.ownership`), so generic
``forget`` never removes it — then the tier's retention on that tier's snapshots only: those
older than ``retention_days`` go, except the newest (the one just written); Tier 1 never
expires, whatever its ``retention_days`` says.  Killed at any point, nothing is half done: a
snapshot is the last object its backup writes (what was stored before is indexed, and the rerun
reuses it), and retention only removes snapshot documents (``repo prune`` reclaims their data),
so a rerun writes the snapshot and applies the retention again.  The test hook
``COLDKEEP_TIERS_KILL_AT`` (``entry`` / ``snapshot_written`` / ``expired``) lands the kill.

**Clean** (:func:`clean_tier`): the live files of a tier (Tier 2 or 3; Tier 1 is never deleted)
whose modification time is older than the cut-off.  Each is deleted only with ``delete`` and only
when a snapshot of that tier holds it: an entry of the same name with the same size and
modification time whose chunks are all in the index; before the deletion the file is read and
its SHA-256 must equal the entry's.  A file no tier snapshot holds (never backed up, or changed
since) is kept, and the result says why, per file.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from coldkeep import clock, testhooks
from coldkeep.config import Config, Tier
from coldkeep.errors import NotFound, UsageError
from coldkeep.ownership import TIER_KIND
from coldkeep.repository.backup import Backup, BackupResult, walk
from coldkeep.repository.locks import locked
from coldkeep.repository.progress import Progress
from coldkeep.repository.repository import Repository
from coldkeep.repository.snapshot import Snapshot

TIERS = (1, 2, 3)
#: the test hook that SIGKILLs ``tiers backup`` at a named stage (``stage:n,…``)
KILL_HOOK = "COLDKEEP_TIERS_KILL_AT"


def tier_section(config: Config, tier: int) -> Tier:
    if tier not in TIERS:
        raise UsageError(f"there is no tier {tier}", hint="tiers are 1, 2 and 3")
    section: Tier = getattr(config.tiers, f"tier{tier}")
    return section


def retention_days(config: Config, tier: int) -> int | None:
    """The tier's retention in days; ``None``: kept forever (always for Tier 1)."""
    days = tier_section(config, tier).retention_days
    return None if tier == 1 or days == "forever" else int(days)


def tier_paths(config: Config, tier: int) -> list[str]:
    """The tier's configured paths, absolute; :class:`NotFound` naming the first missing one."""
    paths = [os.path.abspath(p) for p in tier_section(config, tier).paths]
    for path in paths:
        if not os.path.lexists(path):
            raise NotFound(
                f"tier {tier} path {path} does not exist",
                hint=f"create it or remove it from [tiers.tier{tier}] paths",
            )
    return paths


def snapshots_of(repo: Repository, tier: int) -> list[Snapshot]:
    """The tier's snapshots, oldest first."""
    return repo.list_snapshots({"tier": str(tier)}, kind=TIER_KIND)


# ------------------------------------------------------------------------------------------------
# backup


@dataclass
class TierBackup:
    tier: int
    paths: list[str]
    retention_days: int | None
    result: BackupResult | None = None
    expired: list[Snapshot] = field(default_factory=list)
    kept: int = 0

    def to_json(self) -> dict[str, Any]:
        r = self.result
        return {
            "tier": self.tier, "paths": self.paths,
            "retention_days": "forever" if self.retention_days is None else self.retention_days,
            "snapshot": r.snapshot.id if r else None, "files": r.files if r else 0,
            "logical_bytes": r.logical_bytes if r else 0, "new_stored_bytes": r.new_stored_bytes if r else 0,
            "partial": bool(r and r.partial), "warnings": list(r.warnings) if r else [],
            "expired": [s.id for s in self.expired], "kept": self.kept,
        }  # fmt: skip


def backup_tier(
    repo: Repository,
    config: Config,
    tier: int,
    *,
    progress: Progress | None = None,
    lock_wait_s: float = 0.0,
) -> TierBackup:
    """Snapshot the tier's paths, then apply its retention (see the module docstring).  A tier
    without paths is left alone (no snapshot, no retention)."""
    paths = tier_paths(config, tier)
    done = TierBackup(tier, paths, retention_days(config, tier))
    if not paths:
        return done
    with locked(repo.backend, "tiers backup", exclusive=False):
        done.result = Backup(repo, progress=progress).run(
            [Path(p) for p in paths],
            tags={"tier": str(tier)},
            label=f"tier {tier}",
            kind=TIER_KIND,
            on_entry=lambda _entry: testhooks.kill_point(KILL_HOOK, "entry"),
        )
    testhooks.kill_point(KILL_HOOK, "snapshot_written")
    done.expired, done.kept = expire_tier(repo, tier, done.retention_days, lock_wait_s=lock_wait_s)
    return done


def expired_snapshots(snaps: list[Snapshot], days: int | None, now: datetime) -> list[Snapshot]:
    """Of a tier's ``snaps`` (oldest first), those past ``days``: never the newest, never any
    when ``days`` is ``None``."""
    if days is None or not snaps:
        return []
    cutoff = now - timedelta(days=days)
    return [s for s in snaps[:-1] if clock.parse_timestamp(s.time) < cutoff]


def expire_tier(
    repo: Repository, tier: int, days: int | None, *, lock_wait_s: float = 0.0
) -> tuple[list[Snapshot], int]:
    """Remove the tier's snapshots past ``days`` (under the exclusive lock); (removed, kept)."""
    if days is None:
        return [], len(snapshots_of(repo, tier))
    with locked(repo.backend, "tiers backup retention", exclusive=True, wait_s=lock_wait_s):
        snaps = snapshots_of(repo, tier)
        gone = expired_snapshots(snaps, days, clock.now())
        for snap in gone:
            repo.delete_snapshot(snap.id)
            testhooks.kill_point(KILL_HOOK, "expired")
    return gone, len(snaps) - len(gone)


# ------------------------------------------------------------------------------------------------
# clean


@dataclass
class CleanItem:
    path: str
    size: int
    mtime: datetime
    snapshot: str | None  # the tier snapshot holding it
    action: str  # deleted / would delete / kept
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "mtime": clock.isoformat(self.mtime),
                "snapshot": self.snapshot, "action": self.action, "reason": self.reason}  # fmt: skip


@dataclass
class CleanResult:
    tier: int
    older_than_days: int
    delete: bool
    items: list[CleanItem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def count(self, action: str) -> int:
        return sum(1 for i in self.items if i.action == action)

    def to_json(self) -> dict[str, Any]:
        return {
            "tier": self.tier, "older_than_days": self.older_than_days, "dry_run": not self.delete,
            "files": [i.to_json() for i in self.items], "deleted": self.count("deleted"),
            "would_delete": self.count("would delete"), "kept": self.count("kept"),
            "bytes_deleted": sum(i.size for i in self.items if i.action == "deleted"),
            "warnings": self.warnings,
        }  # fmt: skip


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _held(
    repo: Repository, snaps: list[Snapshot], names: set[str]
) -> dict[str, list[tuple[Snapshot, dict[str, Any]]]]:
    """The entries of ``names`` in ``snaps``, newest snapshot first."""
    out: dict[str, list[tuple[Snapshot, dict[str, Any]]]] = {}
    for snap in reversed(snaps):
        for entry in repo.iter_tree(snap):
            if entry.get("type") == "file" and entry["path"] in names:
                out.setdefault(entry["path"], []).append((snap, dict(entry)))
    return out


def clean_tier(
    repo: Repository,
    config: Config,
    tier: int,
    *,
    older_than_days: int | None = None,
    delete: bool = False,
    on_item: Callable[[CleanItem], None] | None = None,
) -> CleanResult:
    """List (and with ``delete``, delete) the tier's live files past ``older_than_days``
    (default: the tier's retention); see the module docstring."""
    if tier == 1:
        raise UsageError("Tier-1 data is never deleted", hint="tiers clean works on tier 2 or 3")
    days = older_than_days if older_than_days is not None else retention_days(config, tier)
    if days is None:
        raise UsageError(f"tier {tier} is kept forever", hint="pass --older-than DAYS")
    result = CleanResult(tier, days, delete)
    cutoff = (clock.now() - timedelta(days=days)).timestamp()
    old: list[tuple[str, str, os.stat_result]] = []
    paths = tier_paths(config, tier)
    for path, name, st in walk(paths, None, result.warnings):
        if stat.S_ISREG(st.st_mode) and st.st_mtime < cutoff:
            old.append((path, name, st))
    if not old:
        return result
    with locked(repo.backend, "tiers clean", exclusive=False):
        held = _held(repo, snapshots_of(repo, tier), {name for _, name, _ in old})
        for path, name, st in old:
            item = _decide(repo, path, st, held.get(name, []), delete)
            result.items.append(item)
            if on_item is not None:
                on_item(item)
    return result


def _decide(
    repo: Repository, path: str, st: os.stat_result, held: list[tuple[Snapshot, dict[str, Any]]], delete: bool
) -> CleanItem:
    mtime = datetime.fromtimestamp(st.st_mtime).astimezone()

    def item(snapshot: str | None, action: str, reason: str) -> CleanItem:
        return CleanItem(path, st.st_size, mtime, snapshot, action, reason)

    if not held:
        return item(
            None, "kept", "no tier snapshot holds this file: back it up first (`coldkeep tiers backup`)"
        )
    same = [(s, e) for s, e in held if e.get("size") == st.st_size and e.get("mtime_ns") == st.st_mtime_ns]
    if not same:
        return item(None, "kept", "changed since the newest tier snapshot that holds it: back it up first")
    snap, entry = same[0]
    chunks = [bytes.fromhex(c) for c in entry.get("chunks", [])]
    if len(repo.cache.present(chunks)) != len(set(chunks)):
        return item(
            snap.id,
            "kept",
            f"snapshot {snap.short_id} lacks some of its data in the index (run `repo check`)",
        )
    if not delete:
        return item(snap.id, "would delete", f"held by snapshot {snap.short_id} (dry run: pass --delete)")
    try:
        if _sha256(path) != entry.get("sha256"):
            return item(snap.id, "kept", f"its content differs from snapshot {snap.short_id}")
        now = os.lstat(path)
        if (now.st_ino, now.st_size, now.st_mtime_ns) != (st.st_ino, st.st_size, st.st_mtime_ns):
            return item(snap.id, "kept", "changed while it was checked")
        os.unlink(path)
    except OSError as exc:
        return item(snap.id, "kept", f"not deleted: {exc.strerror or exc}")
    return item(snap.id, "deleted", f"held by snapshot {snap.short_id}")
