"""Hot retention of checkpoints: a pure function, ``(checkpoints, policy, now) -> decisions``.

The spec keeps each type on the hot disk for a number of days counted from the time in its name
(``checkpoint`` 7, ``best`` 90, ``production`` forever, ``rollback`` 30 — a rollback is named for
the moment it was demoted, so its 30 days count from its demotion), then archives it.  Whatever
the days say, these stay hot, in this order of precedence (the first that applies is the reason):

1. an incomplete checkpoint (``incomplete: <why>``) — it may be being written;
2. ``production`` (``pinned: production``);
3. the newest checkpoint of its phase (``newest of its phase``), and the newest *complete* one
   (``newest complete checkpoint of its phase``), so a save in progress never leaves a phase with
   nothing usable on the hot disk;
4. a type kept forever (``kept hot forever``);
5. not yet due (``due YYYY-MM-DD HH:MM:SSZ (best: 90 days)``).

Everything else is archived: ``older than N days (type): due …``.  Every checkpoint gets one
decision with its reason and, when it has one, its due time.  No I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from coldkeep.checkpoints.naming import CheckpointName
from coldkeep.clock import isoformat

__all__ = ["Decision", "HotCheckpoint", "decide"]

#: days a type stays hot; ``None``: forever
Policy = Mapping[str, int | None]


@dataclass(frozen=True)
class HotCheckpoint:
    """What retention needs to know of a checkpoint on the hot disk."""

    name: CheckpointName
    complete: bool = True
    incomplete_reason: str = ""


@dataclass(frozen=True)
class Decision:
    name: CheckpointName
    archive: bool
    reason: str
    #: when its hot copy becomes due for archival (``None``: never, or not while it is pinned)
    due: datetime | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name.name,
            "action": "archive" if self.archive else "keep",
            "reason": self.reason,
            "due": isoformat(self.due) if self.due else None,
        }


def _due(name: CheckpointName, policy: Policy) -> datetime | None:
    days = policy.get(name.type)
    return None if days is None else name.time + timedelta(days=days)


def decide(items: Iterable[HotCheckpoint], policy: Policy, now: datetime) -> list[Decision]:
    """One decision per checkpoint, sorted by name (see the module docstring).  ``policy`` maps
    each type to its days (``None``: forever); a type it does not name is kept forever."""
    items = sorted(items, key=lambda i: i.name)
    newest: dict[str, CheckpointName] = {}
    newest_complete: dict[str, CheckpointName] = {}
    for item in items:
        key = (item.name.time, item.name.type, item.name.stamp)
        current = newest.get(item.name.phase)
        if current is None or key > (current.time, current.type, current.stamp):
            newest[item.name.phase] = item.name
        current = newest_complete.get(item.name.phase)
        if item.complete and (current is None or key > (current.time, current.type, current.stamp)):
            newest_complete[item.name.phase] = item.name
    decisions = []
    for item in items:
        name = item.name
        due = _due(name, policy)
        if not item.complete:
            decisions.append(Decision(name, False, f"incomplete: {item.incomplete_reason}", due))
        elif name.type == "production":
            decisions.append(Decision(name, False, "pinned: production"))
        elif newest.get(name.phase) == name:
            decisions.append(Decision(name, False, "newest of its phase", due))
        elif newest_complete.get(name.phase) == name:
            decisions.append(Decision(name, False, "newest complete checkpoint of its phase", due))
        elif due is None:
            decisions.append(Decision(name, False, f"kept hot forever ({name.type})"))
        elif now < due:
            decisions.append(
                Decision(name, False, f"due {isoformat(due)} ({name.type}: {policy[name.type]} days)", due)
            )
        else:
            decisions.append(
                Decision(
                    name,
                    True,
                    f"older than {policy[name.type]} days ({name.type}): due {isoformat(due)}",
                    due,
                )
            )
    return decisions


def policy_from_days(days: Mapping[str, int | str]) -> dict[str, int | None]:
    """``{"best": 90, "production": "forever"}`` -> ``{"best": 90, "production": None}``."""
    return {k: (None if v == "forever" else int(v)) for k, v in days.items()}
