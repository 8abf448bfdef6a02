"""Who may remove a snapshot: generic retention (``coldkeep forget``) or the service that made it.

Pure (no I/O).  Invariant 10: each service owns its retention, and generic commands never remove
what a service owns; Tier-1 data (checkpoints, datasets, conversations, reproducibility
packages) is never removed by a generic command at all.  :func:`owner_of` decides from a
snapshot's ``kind`` and tags:

* ``kind`` other than ``files`` (``pg-base`` for PostgreSQL base backups; the coming checkpoint,
  dataset and reproducibility snapshots; any kind this version does not know) -> that service;
* ``kind`` ``tier`` (``coldkeep tiers backup``) -> the tiers service, whose retention is the
  tier's ``retention_days``; tagged ``tier=1``: Tier-1 data, kept forever;
* a ``files`` snapshot tagged ``service=NAME`` with a service coldkeep knows (``postgres``,
  ``checkpoints``, ``datasets``, ``repro``, ``conversations``) -> that service (another value is a
  user's own tag);
* a ``files`` snapshot tagged ``kind=dataset`` (or checkpoint, repro, conversations, …: the
  Tier-1 kinds, as the README's ``coldkeep backup DATASET --tag kind=dataset`` does) -> Tier-1 data,
  kept forever;
* anything else is generic: ``forget`` may remove it.

(WAL segments and conversation batches are named objects, not snapshots: ``forget`` never sees
them; ``pg expire`` and the conversation commands own them.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["GENERIC_KIND", "TIER_KIND", "Owner", "owner_of"]

#: the ``kind`` of a snapshot written by ``coldkeep backup``
GENERIC_KIND = "files"


@dataclass(frozen=True)
class Owner:
    """The service that owns a snapshot, and how (if ever) it is removed."""

    service: str  # e.g. "postgres", "datasets"
    what: str  # e.g. "PostgreSQL base backup"
    retention: str = ""  # the command that removes it, e.g. "coldkeep pg expire"; "" for Tier-1
    tier1: bool = False  # Tier-1 data: never removed by anything

    def describe(self) -> str:
        """One phrase for a listing, e.g. ``PostgreSQL base backup: removed only by `coldkeep pg expire```."""
        if self.tier1:
            return f"{self.what}: Tier-1 data, kept permanently"
        if self.retention:
            return f"{self.what}: removed only by `{self.retention}`"
        return f"{self.what}: removed only by the {self.service} service's own retention"

    def hint(self) -> str:
        """What to do instead of a generic removal."""
        if self.tier1:
            return "Tier-1 data (checkpoints, datasets, conversations, reproducibility packages) is never removed by a generic command"
        if self.retention:
            return f"its retention is `{self.retention}` (see `{self.retention} --help`)"
        return f"only the {self.service} service's own retention removes it"


_POSTGRES = Owner("postgres", "PostgreSQL base backup", "coldkeep pg expire")
_TIER1 = {
    "checkpoint": Owner("checkpoints", "checkpoint snapshot", tier1=True),
    "dataset": Owner("datasets", "dataset snapshot", tier1=True),
    "repro": Owner("repro", "reproducibility package", tier1=True),
    "conversations": Owner("conversations", "conversation archive snapshot", tier1=True),
}
#: the owner of each service ``kind`` (and of the ``kind`` tag values that mean the same)
KINDS: Mapping[str, Owner] = {
    "pg-base": _POSTGRES,
    **_TIER1,
    "checkpoints": _TIER1["checkpoint"],
    "datasets": _TIER1["dataset"],
    "reproducibility": _TIER1["repro"],
    "conversation": _TIER1["conversations"],
}
#: the owner of each ``service=NAME`` tag value coldkeep knows
SERVICES: Mapping[str, Owner] = {"postgres": _POSTGRES, **{o.service: o for o in _TIER1.values()}}


#: the snapshot kind of ``coldkeep tiers backup`` (tagged ``tier=N``)
TIER_KIND = "tier"
_TIER_SNAPSHOT = Owner("tiers", "tier snapshot", "coldkeep tiers backup")
_TIER1_SNAPSHOT = Owner("tiers", "Tier-1 snapshot", tier1=True)


def owner_of(kind: str, tags: Mapping[str, str]) -> Owner | None:
    """The owner of a snapshot of ``kind`` with ``tags``, or ``None`` when it is generic (only
    then may ``forget`` remove it).  A kind this version does not know is owned too: a generic
    command never guesses that something it does not know is safe to delete."""
    if kind == TIER_KIND:
        return _TIER1_SNAPSHOT if tags.get("tier", "").strip() == "1" else _TIER_SNAPSHOT
    if kind != GENERIC_KIND:
        return KINDS.get(kind) or Owner(kind, f"{kind!r} snapshot (unknown kind)")
    # tag values as people type them: `kind=Dataset`, ` datasets ` are Tier-1 all the same
    kind_tag = tags.get("kind", "").strip().lower()
    return KINDS.get(kind_tag) or SERVICES.get(tags.get("service", "").strip().lower())
