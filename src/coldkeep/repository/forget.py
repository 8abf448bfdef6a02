"""``coldkeep forget``: remove generic file snapshots, by retention policy or by id.

Only generic snapshots are ever removed (:func:`coldkeep.ownership.owner_of` is ``None``: the
ones ``coldkeep backup`` wrote without a service's or a Tier-1 kind's tag).  A policy is applied
to the generic snapshots alone, grouped as the policy says (``forget`` groups by host and paths
unless told otherwise), and the snapshots services own are listed as left alone with the command
that owns their retention.  Naming a service's snapshot by id is refused before anything is
removed.  Removing a snapshot deletes only its document; ``repo prune`` reclaims the data.
The caller holds the exclusive repository lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from coldkeep import clock, retention
from coldkeep.errors import UsageError
from coldkeep.ownership import Owner, owner_of
from coldkeep.repository.repository import Repository
from coldkeep.repository.snapshot import Snapshot

__all__ = ["ForgetResult", "LeftAlone", "forget_by_policy", "forget_ids", "split_owned"]

#: the reason of a snapshot removed because it was named
NAMED_REASON = "named on the command line"


@dataclass(frozen=True)
class LeftAlone:
    """A snapshot ``forget`` did not consider because a service owns it."""

    snapshot: Snapshot
    owner: Owner

    def to_json(self) -> dict[str, Any]:
        s = self.snapshot
        return {"id": s.id, "short_id": s.short_id, "time": s.time, "kind": s.kind,
                "owner": self.owner.service, "reason": self.owner.describe()}  # fmt: skip


@dataclass
class ForgetResult:
    """What ``forget`` decided: one decision per generic snapshot considered, the snapshots it
    removed (or would remove, with ``dry_run``), and the service snapshots it left alone."""

    dry_run: bool
    decisions: list[retention.Decision] = field(default_factory=list)
    removed: list[Snapshot] = field(default_factory=list)
    left_alone: list[LeftAlone] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "decisions": [d.to_dict() for d in self.decisions],
            "removed": [s.id for s in self.removed],
            "left_alone": [a.to_json() for a in self.left_alone],
        }


def split_owned(snapshots: Iterable[Snapshot]) -> tuple[list[Snapshot], list[LeftAlone]]:
    """The generic snapshots, and the ones a service owns (with their owner), in input order."""
    generic: list[Snapshot] = []
    owned: list[LeftAlone] = []
    for snap in snapshots:
        owner = owner_of(snap.kind, snap.tags)
        if owner is None:
            generic.append(snap)
        else:
            owned.append(LeftAlone(snap, owner))
    return generic, owned


def _item(snap: Snapshot) -> retention.Item:
    return retention.Item(snap.id, clock.parse_timestamp(snap.time), snap.tags, host=snap.host,
                          paths=tuple(snap.paths))  # fmt: skip


def _remove(repo: Repository, snapshots: Sequence[Snapshot], dry_run: bool) -> None:
    if not dry_run:
        for snap in snapshots:
            repo.delete_snapshot(snap.id)


def forget_by_policy(
    repo: Repository,
    policy: retention.Policy,
    *,
    now: datetime,
    tags: Mapping[str, str] | None = None,
    dry_run: bool = False,
) -> ForgetResult:
    """Apply ``policy`` to the generic snapshots (those with every tag in ``tags``, if given) and
    remove the ones no rule keeps.  Service snapshots are never considered: they are returned in
    ``left_alone``.  An empty policy is a :class:`~coldkeep.errors.UsageError`, even when there is
    nothing to decide."""
    generic, left = split_owned(repo.list_snapshots(dict(tags) if tags else None))
    decisions = retention.apply_policy([_item(s) for s in generic], policy, now)
    by_id = {s.id: s for s in generic}
    doomed = [by_id[d.item.id] for d in decisions if not d.keep]
    _remove(repo, doomed, dry_run)
    return ForgetResult(dry_run, decisions, doomed, left)


def forget_ids(repo: Repository, refs: Sequence[str], *, dry_run: bool = False) -> ForgetResult:
    """Remove the generic snapshots named by ``refs`` (full ids or unique prefixes of 4+ hex digits).

    Every name is resolved and checked before anything is removed: a name that matches nothing
    is :class:`~coldkeep.errors.NotFound` (exit 5), and naming a snapshot a service owns is a
    :class:`~coldkeep.errors.UsageError` (exit 2) whose hint names the command that owns it.
    """
    named: dict[str, Snapshot] = {}
    for ref in refs:
        if ref == "latest":
            raise UsageError(
                "forget needs snapshot ids, not 'latest'", hint="list them with `coldkeep snapshots`"
            )
        snap = repo.find_snapshot(ref)
        named.setdefault(snap.id, snap)
    generic, owned = split_owned(named.values())
    if owned:
        first = owned[0]
        more = f" (and {len(owned) - 1} more service snapshot(s))" if len(owned) > 1 else ""
        raise UsageError(
            f"snapshot {first.snapshot.short_id} is a {first.owner.what}: `forget` removes generic file "
            f"snapshots only, nothing was removed{more}",
            hint=first.owner.hint(),
        )
    decisions = [retention.Decision(_item(s), keep=False, reasons=(NAMED_REASON,), group=()) for s in generic]
    _remove(repo, generic, dry_run)
    return ForgetResult(dry_run, decisions, generic, [])
