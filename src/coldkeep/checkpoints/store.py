"""``checkpoints backup`` and ``checkpoints archive``.

*Backup* stores every complete hot checkpoint the repository does not hold yet, one snapshot
each (kind ``checkpoint``, tags ``name phase type time``, made relative to the checkpoint's own
directory), in strict mode: a file that changes while it is read fails that checkpoint (reported,
exit 1 at the end), not the run.  Nothing new: one listing of the snapshot catalog and a scan of
the hot disk (headers only).

*Archive* applies the hot retention (:mod:`.policy`) and, for each checkpoint that is due:

1. makes sure it is stored (a backup as above when it is not);
2. verifies the stored copy against the hot files: every file's stored bytes are streamed from
   the repository and each file's size and SHA-256 compared with the live file's
   (``Repository.verify_snapshot(snap, against=DIR)``; for a copy stored in step 1 the live
   file's SHA-256 is the one the backup computed from the bytes it read, when the file's
   ``lstat`` has not changed since: ``HotDigests``).  A damaged stored copy
   stops this checkpoint with exit 3, the files named, and the hot copy stays.  A hot copy that
   differs from an older stored copy (it was changed after it was stored) is stored again once;
   still different, it stays;
3. renames the hot directory aside (``.coldkeep-archiving-<dir>`` in its phase directory),
   checks that no file in it changed since step 2 (size, mtime, inode; else it is renamed back),
   then deletes it.

A run killed anywhere leaves either the hot directory (steps 1–2: a rerun starts again) or the
renamed-aside one, which exists only once its stored copy verified: a rerun verifies the stored
copy once more (alone: the aside copy may be half deleted) and finishes the deletion, or renames
it back when the stored copy no longer verifies.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coldkeep.checkpoints.inventory import KIND, HotEntry, decisions_for, record_verified, stored_checkpoints
from coldkeep.checkpoints.naming import OWN_PREFIX, CheckpointName
from coldkeep.checkpoints.service import Service, kill_point, remove_tree
from coldkeep.clock import isoformat
from coldkeep.durable import fsync_dir
from coldkeep.errors import EXIT_FAILED, EXIT_INTEGRITY, EXIT_OK, CheckpointDamaged, ColdkeepError
from coldkeep.repository.locks import locked

if TYPE_CHECKING:
    from coldkeep.repository.repository import Repository
    from coldkeep.repository.snapshot import Snapshot
    from coldkeep.repository.verify import HotDigests, SnapshotVerification

ASIDE = OWN_PREFIX + "archiving-"


@dataclass
class Outcome:
    """One line per checkpoint of a ``backup`` or ``archive`` run."""

    items: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    exit_code: int = EXIT_OK
    #: hot checkpoints seen, and how many of them the repository held before this run
    hot: int = 0
    already_stored: int = 0

    def add(self, name: str, action: str, reason: str, **extra: Any) -> None:
        self.items.append({"name": name, "action": action, "reason": reason, **extra})

    def fail(self, name: str, action: str, exc: ColdkeepError) -> None:
        self.add(name, action, exc.message)
        self.problems.append(f"{name}: {exc.message}")
        self.exit_code = EXIT_INTEGRITY if EXIT_INTEGRITY in (exc.exit_code, self.exit_code) else EXIT_FAILED

    def to_json(self) -> dict[str, Any]:
        return {"checkpoints": self.items, "problems": self.problems, "exit_code": self.exit_code,
                "hot": self.hot, "already_stored": self.already_stored}  # fmt: skip


def tags_for(name: CheckpointName) -> dict[str, str]:
    return {"name": name.name, "phase": name.phase, "type": name.type, "time": name.stamp}


def store(repo: Repository, name: CheckpointName, path: str, hashed: HotDigests | None = None) -> Snapshot:
    """One strict snapshot of the checkpoint directory ``path`` (its paths relative to it);
    ``hashed`` records what was read, for the verification that follows."""
    from coldkeep.repository.backup import Backup

    st = os.stat(path)
    meta = {"dir": {"mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid}}
    result = Backup(repo).run(
        [Path(path)], base=Path(path), tags=tags_for(name), label=name.name, meta=meta, parent=None,
        kind=KIND, strict=True, on_entry=hashed.add if hashed is not None else None,
    )  # fmt: skip
    return result.snapshot


def apply_dir_meta(path: str, snap: Snapshot) -> None:
    """Give a checkpoint directory restored from ``snap`` its recorded mode (and owner, as root)."""
    found = snap.meta.get("dir")
    meta: dict[str, Any] = found if isinstance(found, dict) else {}
    if os.geteuid() == 0 and "uid" in meta and "gid" in meta:
        os.chown(path, int(meta["uid"]), int(meta["gid"]))
    if "mode" in meta:
        os.chmod(path, int(meta["mode"]) & 0o7777)


def backup(svc: Service) -> Outcome:
    """``checkpoints backup`` (see the module docstring)."""
    out = Outcome()
    scan = svc.scan()
    repo = svc.repo
    with locked(repo.backend, "checkpoints backup", exclusive=False):
        stored = stored_checkpoints(repo)
        out.hot = len(scan.checkpoints)
        for entry in scan.checkpoints:
            key = entry.name.name
            if key in stored:
                out.already_stored += 1
                continue
            if not entry.assessment.complete:
                out.add(key, "skipped", f"incomplete: {entry.assessment.reason()}")
                continue
            try:
                snap = store(repo, entry.name, entry.path)
            except ColdkeepError as exc:
                out.fail(key, "failed", exc)
                continue
            svc.log(f"stored {key} as snapshot {snap.short_id}")
            out.add(key, "stored", "complete and not in the repository yet", snapshot=snap.id,
                    bytes=snap.logical_bytes, new_stored_bytes=snap.summary.get("new_stored_bytes", 0))  # fmt: skip
    return out


def _file_stats(root: str) -> dict[str, tuple[int, int, int, int]]:
    """``relative path -> (size, mtime_ns, ctime_ns, inode)`` of every regular file below ``root``."""
    stats: dict[str, tuple[int, int, int, int]] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode):
                stats[os.path.relpath(full, root)] = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    return stats


def _damage(name: str, verification: SnapshotVerification) -> CheckpointDamaged:
    damaged = [p for p in verification.problems if p.kind == "damaged"]
    shown = "; ".join(p.line() for p in damaged[:5]) + (
        f" (+{len(damaged) - 5} more)" if len(damaged) > 5 else ""
    )
    return CheckpointDamaged(
        f"the stored copy of {name} (snapshot {verification.snapshot_id[:8]}) does not verify: {shown}"
    )


def _verified_copy(svc: Service, entry: HotEntry, snaps: list[Snapshot]) -> Snapshot:
    """The stored copy of ``entry``, proven equal to the hot files (steps 1–2).  A copy stored by
    this call is compared with the SHA-256 of the hot bytes it read (files that did not change
    since are not read again: :class:`~coldkeep.repository.verify.HotDigests`); an older one
    with the hot files read now."""
    from coldkeep.repository.verify import HotDigests

    repo = svc.repo
    key = entry.name.name
    fresh = not snaps
    hashed = HotDigests.started() if fresh else None
    snap = snaps[-1] if snaps else store(repo, entry.name, entry.path, hashed)
    for _attempt in range(2):
        verification = repo.verify_snapshot(snap, against=entry.path, hashed=hashed)
        if verification.ok:
            record_verified(repo, key, snap.id, "hot")
            return snap
        if any(p.kind == "damaged" for p in verification.problems):
            raise _damage(key, verification)
        if fresh:
            break
        svc.log(
            f"{key}: the hot copy differs from its stored copy (changed after it was stored): storing it again"
        )
        hashed = HotDigests.started()
        snap, fresh = store(repo, entry.name, entry.path, hashed), True
    shown = "; ".join(p.line() for p in verification.problems[:5])
    raise ColdkeepError(f"{key}: the hot copy changed while it was archived ({shown}); kept",
                        hint="archive again once nothing writes to it")  # fmt: skip


def archive_one(svc: Service, entry: HotEntry, snaps: list[Snapshot]) -> Snapshot:
    """Steps 1–3 for one due checkpoint; returns its verified stored copy."""
    before = _file_stats(entry.path)
    snap = _verified_copy(svc, entry, snaps)
    kill_point("verified")
    phase_dir = os.path.dirname(entry.path)
    aside = os.path.join(phase_dir, ASIDE + entry.name.dirname)
    os.rename(entry.path, aside)
    fsync_dir(phase_dir)
    kill_point("renamed")
    if _file_stats(aside) != before:
        os.rename(aside, entry.path)
        fsync_dir(phase_dir)
        raise ColdkeepError(f"{entry.name.name}: a file changed while it was archived; kept",
                            hint="archive again once nothing writes to it")  # fmt: skip
    remove_tree(aside, stage="deleting")
    return snap


def finish_interrupted(svc: Service, leftovers: list[str], out: Outcome) -> None:
    """Finish (or undo) what a killed archive run left renamed aside."""
    stored = stored_checkpoints(svc.repo)
    for aside in leftovers:
        base = os.path.basename(aside)
        if not base.startswith(ASIDE):
            continue
        dirname = base.removeprefix(ASIDE)
        key = f"{os.path.basename(os.path.dirname(aside))}/{dirname}"
        original = os.path.join(os.path.dirname(aside), dirname)
        snaps = stored.get(key, [])
        verification = svc.repo.verify_snapshot(snaps[-1]) if snaps else None
        if verification is not None and verification.ok:
            remove_tree(aside)
            out.add(key, "archived", "finished an interrupted archive (stored copy verified again)")
        elif not os.path.exists(original):
            os.rename(aside, original)
            fsync_dir(os.path.dirname(aside))
            why = "no stored copy" if verification is None else "its stored copy does not verify"
            out.add(key, "kept", f"an interrupted archive was undone ({why})")
            if verification is not None:
                out.fail(key, "kept", _damage(key, verification))
        else:
            out.problems.append(
                f"{aside}: left by an interrupted archive, and {original} exists again: left alone"
            )
            out.exit_code = max(out.exit_code, EXIT_FAILED)


def archive(svc: Service, *, dry_run: bool = False) -> Outcome:
    """``checkpoints archive [--dry-run]`` (see the module docstring)."""
    out = Outcome()
    with svc.exclusive("archive"), locked(svc.repo.backend, "checkpoints archive", exclusive=False):
        scan = svc.scan()
        if scan.leftovers and not dry_run:
            finish_interrupted(svc, scan.leftovers, out)
            scan = svc.scan()
        decisions = decisions_for(scan, svc.cfg, svc.now())
        stored = stored_checkpoints(svc.repo)
        out.hot = len(scan.checkpoints)
        out.already_stored = sum(1 for e in scan.checkpoints if e.name.name in stored)
        for entry in scan.checkpoints:
            key = entry.name.name
            decision = decisions[key]
            due = isoformat(decision.due) if decision.due else None
            if not decision.archive:
                out.add(key, "keep", decision.reason, due=due)
                continue
            if dry_run:
                out.add(key, "would archive", decision.reason, due=due)
                continue
            try:
                snap = archive_one(svc, entry, stored.get(key, []))
            except ColdkeepError as exc:
                out.fail(key, "kept", exc)
                continue
            except OSError as exc:  # the hot disk refused a rename or a delete: the next run finishes
                out.fail(key, "failed", ColdkeepError(f"{key}: {exc.strerror or exc}: {exc.filename or ''}"))
                continue
            svc.log(f"archived {key} (snapshot {snap.short_id}, verified against the hot copy)")
            out.add(key, "archived", decision.reason, due=due, snapshot=snap.id)
    return out
