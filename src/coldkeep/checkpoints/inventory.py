"""What checkpoints exist: on the hot disk (scanned), in the repository (the snapshot catalog),
and the rows of ``checkpoints list``.

The hot side is ``<root>/<phase dir>/<checkpoint dir>``: phase directories are the entries of
``root`` matching ``phase_glob``; every entry that does not parse (:mod:`.naming`) is reported as
unrecognised and never touched; coldkeep's own work directories (``.coldkeep-…``) are reported
as leftovers of an interrupted run.  The stored side is every snapshot of kind ``checkpoint``,
grouped by its ``name`` tag; the newest snapshot of a name is its stored copy.  Which stored
copies were verified (and against what) is the repository record ``state/checkpoints-verified``.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from coldkeep import clock
from coldkeep.checkpoints.completeness import Assessment, apply_commit_rule, assess
from coldkeep.checkpoints.naming import CheckpointName, Unrecognised, is_own_temp, parse, parse_phase
from coldkeep.checkpoints.policy import Decision, HotCheckpoint, decide, policy_from_days

if TYPE_CHECKING:
    from coldkeep.config import CheckpointsConfig
    from coldkeep.repository.repository import Repository
    from coldkeep.repository.snapshot import Snapshot

#: the snapshot kind of a stored checkpoint (Tier 1: see coldkeep/ownership.py)
KIND = "checkpoint"
#: the repository record of verified stored copies
VERIFIED_STATE = "checkpoints-verified"


@dataclass
class HotEntry:
    name: CheckpointName
    path: str
    assessment: Assessment


@dataclass
class HotScan:
    checkpoints: list[HotEntry] = field(default_factory=list)
    unrecognised: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    leftovers: list[str] = field(default_factory=list)  # coldkeep's own work directories

    def by_name(self) -> dict[str, HotEntry]:
        return {e.name.name: e for e in self.checkpoints}


def scan_hot(root: str, phase_glob: str, *, now: float, settle_seconds: float) -> HotScan:
    """Every checkpoint directory under ``root`` with its completeness (see the module docstring)."""
    scan = HotScan()
    try:
        phases = sorted(os.scandir(root), key=lambda e: e.name)
    except FileNotFoundError:
        return scan
    for phase_entry in phases:
        if is_own_temp(phase_entry.name):
            scan.leftovers.append(phase_entry.path)
            continue
        if not fnmatch.fnmatchcase(phase_entry.name, phase_glob):
            scan.unrecognised.append((phase_entry.path, f"not a phase directory (phase_glob {phase_glob!r})"))
            continue
        if phase_entry.is_symlink() or not phase_entry.is_dir(follow_symlinks=False):
            scan.unrecognised.append((phase_entry.path, "not a directory (a symlink or a file)"))
            continue
        phase = parse_phase(phase_entry.name)
        if isinstance(phase, Unrecognised):
            scan.unrecognised.append((phase_entry.path, phase.reason))
            continue
        in_phase: list[HotEntry] = []
        for entry in sorted(os.scandir(phase_entry.path), key=lambda e: e.name):
            if is_own_temp(entry.name):
                scan.leftovers.append(entry.path)
                continue
            parsed = parse(phase_entry.name, entry.name)
            if isinstance(parsed, Unrecognised):
                scan.unrecognised.append((entry.path, parsed.reason))
                continue
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
                scan.unrecognised.append((entry.path, f"{what}: checkpoints are directories"))
                continue
            in_phase.append(
                HotEntry(parsed, entry.path, assess(entry.path, now=now, settle_seconds=settle_seconds))
            )
        apply_commit_rule([e.assessment for e in in_phase])
        scan.checkpoints.extend(in_phase)
    return scan


def stored_checkpoints(repo: Repository) -> dict[str, list[Snapshot]]:
    """Every stored checkpoint's snapshots (oldest first), by name."""
    out: dict[str, list[Snapshot]] = {}
    for snap in repo.list_snapshots(kind=KIND):
        name = snap.tags.get("name", "")
        if name:
            out.setdefault(name, []).append(snap)
    return out


def verified_record(repo: Repository) -> dict[str, Any]:
    doc = repo.get_state(VERIFIED_STATE) or {}
    checkpoints = doc.get("checkpoints", {})
    return checkpoints if isinstance(checkpoints, dict) else {}


def record_verified(repo: Repository, name: str, snapshot_id: str, against: str, **extra: Any) -> None:
    """Remember that ``snapshot_id``, the stored copy of ``name``, verified (``against``: what it
    was compared with: ``hot``, ``stored`` or ``recovered``; ``extra``: e.g. the load check)."""

    def change(doc: dict[str, Any] | None) -> dict[str, Any]:
        doc = doc or {"checkpoints": {}}
        doc.setdefault("checkpoints", {})[name] = {
            "snapshot": snapshot_id,
            "time": clock.isoformat(clock.now()),
            "against": against,
            **extra,
        }
        return doc

    repo.update_state(VERIFIED_STATE, change)


def decisions_for(scan: HotScan, cfg: CheckpointsConfig, now: datetime) -> dict[str, Decision]:
    """The hot retention decision of every hot checkpoint, by name."""
    policy = policy_from_days(cfg.hot_retention_days.model_dump())
    items = [HotCheckpoint(e.name, e.assessment.complete, e.assessment.reason()) for e in scan.checkpoints]
    return {d.name.name: d for d in decide(items, policy, now)}


def list_rows(
    scan: HotScan,
    stored: Mapping[str, list[Snapshot]],
    verified: Mapping[str, Any],
    decisions: Mapping[str, Decision],
    *,
    phase: str | None = None,
    type_: str | None = None,
) -> list[dict[str, Any]]:
    """The rows of ``checkpoints list``, sorted by name."""
    hot = scan.by_name()
    names: dict[str, CheckpointName] = {n: e.name for n, e in hot.items()}
    for parsed in stored_names(stored):
        names.setdefault(parsed.name, parsed)
    rows = []
    for key in sorted(names):
        name = names[key]
        if (phase and name.phase != phase) or (type_ and name.type != type_):
            continue
        entry, snaps = hot.get(key), stored.get(key, [])
        snap = snaps[-1] if snaps else None
        record = verified.get(key) or {}
        decision = decisions.get(key)
        rows.append({
            "name": key,
            "phase": name.phase,
            "type": name.type,
            "time": clock.isoformat(name.time),
            "size": entry.assessment.bytes if entry else (snap.logical_bytes if snap else 0),
            "where": "both" if entry and snap else "hot" if entry else "repository",
            "complete": entry.assessment.complete if entry else None,
            "incomplete_reason": entry.assessment.reason() if entry else "",
            "snapshot": snap.id if snap else None,
            "verified": bool(snap and record.get("snapshot") == snap.id),
            "verified_at": record.get("time") if snap and record.get("snapshot") == snap.id else None,
            "due": decision.to_json()["due"] if decision else None,
            "reason": decision.reason if decision else "archived (Tier 1: kept permanently)",
            "action": ("archive" if decision.archive else "keep") if decision else "archived",
            "path": entry.path if entry else None,
        })  # fmt: skip
    return rows


def newest(
    names: Iterable[CheckpointName], phase: str, type_: str, at: datetime | None = None
) -> CheckpointName | None:
    """The newest of ``names`` of that phase and type (named at or before ``at``)."""
    fitting = [n for n in names if n.phase == phase and n.type == type_ and (at is None or n.time <= at)]
    return max(fitting, key=lambda n: n.time, default=None)


def stored_names(stored: Mapping[str, list[Snapshot]]) -> list[CheckpointName]:
    out = []
    for key in stored:
        parsed = parse(*key.split("/", 1)) if "/" in key else None
        if isinstance(parsed, CheckpointName):
            out.append(parsed)
    return out


Log = Callable[[str], None]


def hot_names(root: str, phase_glob: str) -> list[CheckpointName]:
    """The names of the checkpoint directories on the hot disk: one listing per phase directory,
    no completeness walk (cheap enough for every metrics refresh)."""
    out: list[CheckpointName] = []
    try:
        phases = list(os.scandir(root))
    except OSError:
        return out
    for phase_entry in phases:
        if not fnmatch.fnmatchcase(phase_entry.name, phase_glob) or not phase_entry.is_dir(
            follow_symlinks=False
        ):
            continue
        try:
            entries = list(os.scandir(phase_entry.path))
        except OSError:
            continue
        for entry in entries:
            parsed = parse(phase_entry.name, entry.name)
            if isinstance(parsed, CheckpointName) and entry.is_dir(follow_symlinks=False):
                out.append(parsed)
    return out


def counts_by_place(
    hot: Iterable[CheckpointName], stored: Mapping[str, list[Snapshot]]
) -> dict[tuple[str, str], int]:
    """How many checkpoints of each type are on the hot disk only, in the repository only, or
    both: ``{(type, place): count}``, every place of every type present."""
    types: dict[str, str] = {n.name: n.type for n in hot}
    hot_set = set(types)
    for parsed in stored_names(stored):
        types.setdefault(parsed.name, parsed.type)
    counts = {(t, place): 0 for t in set(types.values()) for place in ("hot", "repository", "both")}
    for name, type_ in types.items():
        place = "both" if name in hot_set and name in stored else "hot" if name in hot_set else "repository"
        counts[(type_, place)] += 1
    return counts
