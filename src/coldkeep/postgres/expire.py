"""``pg expire``: the spec's 30-day window, done so that its oldest day stays recoverable.

Keep every backup that stopped within the window, plus the newest one that stopped at or before
``now - retention_days`` (so any time in the window can be reached), and never fewer than one
verified backup.  Keep every WAL segment from the oldest kept backup's start segment onward, on
every timeline; history files always.  Backups are deleted first (oldest first), then the WAL that
only they needed (oldest first, so an interrupted run never leaves a gap) and the partial
segments ``pg receive-wal`` streamed before the oldest kept backup, then prune reclaims the chunks.  Decisions are pure (:func:`plan`) and printed with their reasons.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from coldkeep.postgres import catalog, wal, walchain, walstream
from coldkeep.repository.repository import Repository
from coldkeep.repository.snapshot import Snapshot


@dataclass(frozen=True)
class BackupDecision:
    id: str
    stop_time: str
    keep: bool
    reasons: tuple[str, ...]


@dataclass
class ExpirePlan:
    backups: list[BackupDecision] = field(default_factory=list)
    wal_delete: list[str] = field(default_factory=list)  # named-object names
    wal_keep_from: dict[str, str] = field(default_factory=dict)  # lineage -> first kept segment

    def to_json(self) -> dict[str, Any]:
        return {
            "backups": [d.__dict__ for d in self.backups],
            "wal_deleted": len(self.wal_delete),
            "wal_keep_from": self.wal_keep_from,
            "wal_delete_sample": self.wal_delete[:5],
        }


def plan_backups(
    backups: list[Snapshot], verified: set[str], retention_days: int, now: datetime
) -> list[BackupDecision]:
    ordered = sorted(backups, key=catalog.stop_time)
    cutoff = now - timedelta(days=retention_days)
    reasons: dict[str, list[str]] = {b.id: [] for b in ordered}
    for b in ordered:
        if catalog.stop_time(b) > cutoff:
            reasons[b.id].append(f"within {retention_days} days")
    before = [b for b in ordered if catalog.stop_time(b) <= cutoff]
    if before:
        reasons[before[-1].id].append(
            f"newest at or before the {retention_days}-day cutoff (covers its oldest day)"
        )
    kept = [b for b in ordered if reasons[b.id]]
    if not any(b.id in verified for b in kept):
        verified_backups = [b for b in ordered if b.id in verified]
        if verified_backups:
            reasons[verified_backups[-1].id].append("newest verified backup (never fewer than one)")
        elif ordered:
            reasons[ordered[-1].id].append("newest backup (none is verified yet)")
    return [
        BackupDecision(
            b.id, str(b.meta.get("stop_time")), bool(reasons[b.id]), tuple(reasons[b.id]) or ("expired",)
        )
        for b in ordered
    ]


def plan(repo: Repository, retention_days: int, now: datetime) -> ExpirePlan:
    backups = catalog.list_backups(repo, strict=True)  # a damaged backup may need WAL: do not guess
    status = catalog.statuses(repo)
    verified = {bid for bid, st in status.items() if st.get("verify_ok") or st.get("restore_test_ok")}
    result = ExpirePlan(backups=plan_backups(backups, verified, retention_days, now))
    kept_ids = {d.id for d in result.backups if d.keep}
    kept = [b for b in backups if b.id in kept_ids]
    current = walchain.current_lineage(repo)
    streamed: list[str] = []
    for lineage in walchain.lineages(repo):
        prefix = str(lineage["prefix"])
        lineage_kept = [b for b in kept if b.meta.get("wal_lineage") == prefix]
        if not lineage_kept:
            if current is not None and prefix == current["prefix"]:
                continue  # a backup may be starting in the live lineage: leave its WAL alone
            if any(b.meta.get("wal_lineage") == prefix for b in backups):
                # every backup of this old lineage expires: its WAL goes too, history files stay
                result.wal_delete += [
                    n for n in walchain.archived_names(repo, prefix) if not n.endswith(".history")
                ]
                streamed += [s.key for s in walstream.stream_states(repo, prefix)]
            continue
        first = min(walchain.position(str(b.meta["start_wal"])) for b in lineage_kept)
        result.wal_keep_from[prefix] = min((str(b.meta["start_wal"]) for b in lineage_kept),
                                           key=walchain.position)  # fmt: skip
        for name in walchain.archived_names(repo, prefix):
            parsed = wal.parse_name(name.rsplit("/", 1)[-1])
            if parsed.kind == "history":
                continue
            if (parsed.log, parsed.seg) < first:
                result.wal_delete.append(name)
        # partial segments streamed by `pg receive-wal` that no kept backup reaches any more
        streamed += [
            s.key for s in walstream.stream_states(repo, prefix) if walchain.position(s.segment) < first
        ]
    result.wal_delete.sort(key=lambda n: (walchain.position(n), n))
    result.wal_delete += streamed  # not part of the chain: after it
    return result


def execute(repo: Repository, expire_plan: ExpirePlan) -> None:
    for decision in expire_plan.backups:  # oldest first
        if not decision.keep:
            repo.delete_snapshot(decision.id)
    for name in expire_plan.wal_delete:  # oldest first: never a gap
        repo.delete_named(name)
