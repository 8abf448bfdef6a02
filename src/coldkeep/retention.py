"""Retention: which items to keep and why.  One engine for every service.

``apply_policy(items, policy, now) -> decisions`` is a pure function (no I/O, no clock reads:
``now`` is a parameter), in the spirit of restic's ``ApplyPolicy`` and borg's ``prune``.  Generic
snapshots (``coldkeep forget``) and the coming checkpoint archival hand it :class:`Item` values
(an id, a time, tags, and for snapshots the host and paths) and act on the :class:`Decision` list
it returns.  (``pg expire`` has its own rule, :mod:`coldkeep.postgres.expire`: a time window that
must keep its oldest moment recoverable is not a count of buckets.)

Semantics (restic-compatible, applied to each group on its own):

* Items are ordered newest first by ``(time, id)``: of two items with the same instant the one
  with the larger id counts as the newer.  Times are compared as instants, whatever their offset.
* ``keep_last=N`` keeps the N newest items (reason ``"last 1"`` for the newest, ...).
* ``keep_hourly/daily/weekly/monthly/yearly=N`` keeps the newest item of each of the N most recent
  buckets that contain an item.  Buckets are computed in **UTC**: hour ``2026-11-24T08``, date
  ``2026-11-24``, ISO week ``2026-W48``, month ``2026-11``, year ``2026``.  Reason e.g.
  ``"daily 3 (2026-11-24)"`` = the item kept for the third most recent day.
* ``keep_within=D`` keeps every item with ``time >= now - D`` (so items dated in the future are
  kept too).  Reason ``"within 30d"``.
* ``keep_tags`` keeps every item carrying one of the ``KEY=VALUE`` tags.  Reason ``"tag k=v"``.
* ``group_by`` splits the items into groups, and every rule applies to each group on its own.
  Its words are ``host`` (the item's host), ``paths`` (its set of paths, in any order), ``tags``
  (its whole set of tags) or any other word: the value of that tag key (a missing tag groups as
  ``""``).  ``coldkeep forget`` groups by ``host,paths`` unless told otherwise, as restic does.
  A decision's ``group`` lists ``(word, value)``; ``paths`` and ``tags`` values are JSON text
  (``["/data/a", "/data/b"]``, ``{"kind": "logs"}``), exact and readable.

An item is kept when any rule keeps it; its reasons list every rule that kept it, in the order
last, hourly, daily, weekly, monthly, yearly, within, tags (tags in policy order).  A removed item
has the single reason ``"no rule keeps it"``.  Every rule is independent of the others, so adding
a rule or raising a count never removes an item that was kept before.

Two deliberate differences from restic 0.16+: ``keep_within`` is measured from ``now`` (like
borg), not from the newest snapshot, and a bucket rule with counts left over does not additionally
keep the oldest item of the group.

An empty policy (no rule at all) is refused with :class:`~coldkeep.errors.UsageError`: retention
must never delete everything because a flag was forgotten.

:func:`apply_policy` returns one decision per item, **oldest first** (by ``(time, id)``), whatever
the input order.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

from coldkeep.clock import isoformat, parse_duration
from coldkeep.errors import ColdkeepError, UsageError

__all__ = [
    "REMOVE_REASON",
    "Decision",
    "Item",
    "Policy",
    "apply_policy",
    "format_duration",
    "summarize",
]

#: the one reason a removed item carries
REMOVE_REASON = "no rule keeps it"

_INTEGER = re.compile(r"-?[0-9]+")

_EMPTY_POLICY_HINT = (
    "give at least one --keep-* option (e.g. --keep-last 1 --keep-daily 7); "
    "to delete specific items, name them explicitly"
)


#: ``group_by`` words that name an item attribute rather than a tag key
GROUP_HOST, GROUP_PATHS, GROUP_TAGS = "host", "paths", "tags"


@dataclass(frozen=True)
class Item:
    """Anything retention decides about: an id, a tz-aware time, string tags and, for snapshots,
    the host and the paths it was taken of (used only for grouping)."""

    id: str
    time: datetime
    tags: Mapping[str, str] = field(default_factory=dict, hash=False)
    host: str = ""
    paths: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise UsageError(f"retention item id must be a non-empty string, got {self.id!r}")
        if not isinstance(self.time, datetime) or self.time.utcoffset() is None:
            raise UsageError(
                f"retention item {self.id!r} has a time without a UTC offset: {self.time!r}",
                hint="every recorded time must carry an offset, e.g. 2026-11-26T08:00:00+00:00",
            )
        if not isinstance(self.host, str) or isinstance(self.paths, str):
            raise UsageError(f"retention item {self.id!r}: host must be a string and paths a list of strings")
        # a private read-only copy: a caller mutating its dict later cannot change a decision
        object.__setattr__(self, "tags", MappingProxyType(dict(self.tags)))
        object.__setattr__(self, "paths", tuple(str(p) for p in self.paths))


def _check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{name} must be a whole number, got {value!r}", hint="e.g. --keep-daily 7")
    if value < 0:
        raise UsageError(
            f"{name} must be 0 or more, got {value}",
            hint="0 disables the rule; there is no 'keep all' value, use --keep-within instead",
        )
    return value


def _parse_tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not key:
        raise UsageError(f"not a KEY=VALUE tag: {text!r}", hint="write e.g. --keep-tag phase=prod")
    return key, value


@dataclass(frozen=True)
class Policy:
    """Which items to keep.  All counts default to 0 (rule off); see the module docstring."""

    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    keep_within: timedelta | None = None
    keep_tags: tuple[tuple[str, str], ...] = ()
    group_by: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in _COUNT_FIELDS:
            _check_count(name, getattr(self, name))
        if self.keep_within is not None:
            if not isinstance(self.keep_within, timedelta):
                raise UsageError(f"keep_within must be a duration, got {self.keep_within!r}")
            if self.keep_within <= timedelta(0):
                raise UsageError(
                    f"keep_within must be longer than zero, got {format_duration(self.keep_within)}",
                    hint="write e.g. --keep-within 30d",
                )
        tags: list[tuple[str, str]] = []
        for pair in self.keep_tags:
            if (
                not isinstance(pair, tuple)
                or len(pair) != 2
                or not all(isinstance(p, str) for p in pair)
                or not pair[0]
            ):
                raise UsageError(f"keep_tags entries must be (KEY, VALUE) string pairs, got {pair!r}")
            if pair not in tags:
                tags.append(pair)
        keys: list[str] = []
        for key in self.group_by:
            if not isinstance(key, str) or not key or "=" in key or "," in key:
                raise UsageError(
                    f"not a tag key or group word to group by: {key!r}",
                    hint="write e.g. --group-by host,paths (words: host, paths, tags, or a tag key)",
                )
            if key not in keys:
                keys.append(key)
        # normalised: tuples (callers may pass lists), duplicates dropped, order kept
        object.__setattr__(self, "keep_tags", tuple(tags))
        object.__setattr__(self, "group_by", tuple(keys))

    def is_empty(self) -> bool:
        """True when no rule would keep anything (``group_by`` alone is not a rule)."""
        return (
            all(getattr(self, name) == 0 for name in _COUNT_FIELDS)
            and self.keep_within is None
            and not self.keep_tags
        )

    @classmethod
    def parse(
        cls,
        *,
        keep_last: int | str | None = 0,
        keep_hourly: int | str | None = 0,
        keep_daily: int | str | None = 0,
        keep_weekly: int | str | None = 0,
        keep_monthly: int | str | None = 0,
        keep_yearly: int | str | None = 0,
        keep_within: str | None = None,
        keep_tag: Sequence[str] = (),
        group_by: Sequence[str] = (),
    ) -> Policy:
        """Build a policy from CLI / config values.

        Counts may be ints or decimal strings (``None`` = 0); ``keep_within`` is a duration such as
        ``30d`` (:func:`coldkeep.clock.parse_duration`); ``keep_tag`` holds ``KEY=VALUE`` strings;
        ``group_by`` holds group words (``host``, ``paths``, ``tags`` or tag keys), each entry may be
        comma-separated (``host,paths``); a blank entry adds nothing, so ``[""]`` is one group.  Bad
        input raises :class:`~coldkeep.errors.UsageError`.
        """
        if isinstance(keep_tag, str) or isinstance(group_by, str):
            raise UsageError("keep_tag and group_by must be lists of strings, not one string")
        counts: dict[str, int] = {}
        raw_counts = {
            "keep_last": keep_last,
            "keep_hourly": keep_hourly,
            "keep_daily": keep_daily,
            "keep_weekly": keep_weekly,
            "keep_monthly": keep_monthly,
            "keep_yearly": keep_yearly,
        }
        for name, raw in raw_counts.items():
            if raw is None:
                counts[name] = 0
            elif isinstance(raw, str):
                text = raw.strip()
                if not _INTEGER.fullmatch(text):
                    raise UsageError(
                        f"{name} must be a whole number, got {raw!r}", hint="e.g. --keep-daily 7"
                    )
                counts[name] = _check_count(name, int(text))
            else:
                counts[name] = _check_count(name, raw)
        within = parse_duration(keep_within) if keep_within is not None and keep_within.strip() else None
        tags = tuple(_parse_tag(t) for t in keep_tag)
        keys = tuple(k.strip() for entry in group_by if entry.strip() for k in entry.split(","))
        return cls(**counts, keep_within=within, keep_tags=tags, group_by=keys)

    def describe(self) -> str:
        """One human line, e.g. ``keep last 3, daily 7, within 30d, tag phase=prod; per host``."""
        parts = [f"{name[5:]} {getattr(self, name)}" for name in _COUNT_FIELDS if getattr(self, name)]
        if self.keep_within is not None:
            parts.append(f"within {format_duration(self.keep_within)}")
        parts.extend(f"tag {k}={v}" for k, v in self.keep_tags)
        text = "keep " + ", ".join(parts) if parts else "keep nothing (empty policy)"
        if self.group_by:
            text += "; per " + ",".join(self.group_by)
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for ``--json`` output and golden files)."""
        out: dict[str, Any] = {name: getattr(self, name) for name in _COUNT_FIELDS}
        out["keep_within"] = None if self.keep_within is None else format_duration(self.keep_within)
        out["keep_tags"] = [f"{k}={v}" for k, v in self.keep_tags]
        out["group_by"] = list(self.group_by)
        return out


_COUNT_FIELDS = ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly")


@dataclass(frozen=True)
class Decision:
    """What happens to one item, and why."""

    item: Item
    keep: bool
    reasons: tuple[str, ...]
    group: tuple[tuple[str, str], ...]

    @property
    def id(self) -> str:
        return self.item.id

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.item.id,
            "time": isoformat(self.item.time),
            "keep": self.keep,
            "reasons": list(self.reasons),
            "group": dict(self.group),
        }


def format_duration(td: timedelta) -> str:
    """The inverse of :func:`coldkeep.clock.parse_duration` in its largest exact unit (d, h, m, s)."""
    if td.microseconds:
        return f"{td.total_seconds():g}s"
    seconds = int(td.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# --- buckets (all in UTC) -----------------------------------------------------------------------


def _hour(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H")


def _day(t: datetime) -> str:
    return t.strftime("%Y-%m-%d")


def _week(t: datetime) -> str:
    iso = t.isocalendar()
    return f"{iso.year:04d}-W{iso.week:02d}"


def _month(t: datetime) -> str:
    return f"{t.year:04d}-{t.month:02d}"


def _year(t: datetime) -> str:
    return f"{t.year:04d}"


_BUCKET_RULES: tuple[tuple[str, str, Callable[[datetime], str]], ...] = (
    ("keep_hourly", "hourly", _hour),
    ("keep_daily", "daily", _day),
    ("keep_weekly", "weekly", _week),
    ("keep_monthly", "monthly", _month),
    ("keep_yearly", "yearly", _year),
)


# --- the engine ---------------------------------------------------------------------------------


def _sort_key(item: Item) -> tuple[datetime, str]:
    return (item.time, item.id)


def _group_value(item: Item, key: str) -> str:
    if key == GROUP_HOST:
        return item.host
    if key == GROUP_PATHS:
        return json.dumps(sorted(item.paths), ensure_ascii=False)
    if key == GROUP_TAGS:
        return json.dumps(dict(sorted(item.tags.items())), ensure_ascii=False)
    return item.tags.get(key, "")


def _group_of(item: Item, keys: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    return tuple((k, _group_value(item, k)) for k in keys)


def _apply_to_group(newest_first: list[Item], policy: Policy, now: datetime) -> dict[str, list[str]]:
    """Reasons per item id for one group (items already sorted newest first)."""
    reasons: dict[str, list[str]] = {item.id: [] for item in newest_first}

    for nr, item in enumerate(newest_first[: policy.keep_last], start=1):
        reasons[item.id].append(f"last {nr}")

    for attr, name, bucket_of in _BUCKET_RULES:
        count: int = getattr(policy, attr)
        if count == 0:
            continue
        seen = 0
        previous: str | None = None
        for item in newest_first:
            # sorted by time and every bucket function is monotone in time, so a bucket's items are
            # contiguous and the first one met is the newest of that bucket
            bucket = bucket_of(item.time.astimezone(UTC))
            if bucket == previous:
                continue
            previous = bucket
            seen += 1
            if seen > count:
                break
            reasons[item.id].append(f"{name} {seen} ({bucket})")

    if policy.keep_within is not None:
        cutoff = now - policy.keep_within
        label = f"within {format_duration(policy.keep_within)}"
        for item in newest_first:
            if item.time < cutoff:
                break  # sorted: everything after is older still
            reasons[item.id].append(label)

    for key, value in policy.keep_tags:
        for item in newest_first:
            if item.tags.get(key) == value:
                reasons[item.id].append(f"tag {key}={value}")

    return reasons


def apply_policy(items: Sequence[Item], policy: Policy, now: datetime) -> list[Decision]:
    """Decide, for every item, whether ``policy`` keeps it and why.

    Returns exactly one :class:`Decision` per item, sorted oldest first by ``(time, id)``.  Raises
    :class:`~coldkeep.errors.UsageError` for an empty policy or a ``now`` without an offset, and
    :class:`~coldkeep.errors.ColdkeepError` when two items share an id.  Pure: no I/O, no clock.
    """
    if policy.is_empty():
        raise UsageError("refusing to apply an empty retention policy", hint=_EMPTY_POLICY_HINT)
    if not isinstance(now, datetime) or now.utcoffset() is None:
        raise UsageError(f"retention 'now' must carry a UTC offset, got {now!r}")
    seen_ids: set[str] = set()
    for item in items:
        if item.id in seen_ids:
            raise ColdkeepError(
                f"retention input lists item {item.id!r} twice",
                hint="this is a bug or a damaged catalog; run `coldkeep repo check`",
            )
        seen_ids.add(item.id)

    groups: dict[tuple[tuple[str, str], ...], list[Item]] = {}
    for item in sorted(items, key=_sort_key, reverse=True):
        groups.setdefault(_group_of(item, policy.group_by), []).append(item)

    decisions: list[Decision] = []
    for group, newest_first in groups.items():
        reasons = _apply_to_group(newest_first, policy, now)
        for item in newest_first:
            why = reasons[item.id]
            decisions.append(
                Decision(item=item, keep=bool(why), reasons=tuple(why) or (REMOVE_REASON,), group=group)
            )
    decisions.sort(key=lambda d: _sort_key(d.item))
    return decisions


def summarize(decisions: Iterable[Decision]) -> dict[str, int]:
    """Counts for reports and ``--json``: ``total``, ``kept``, ``removed``, ``groups``."""
    total = kept = 0
    groups: set[tuple[tuple[str, str], ...]] = set()
    for d in decisions:
        total += 1
        kept += d.keep
        groups.add(d.group)
    return {"total": total, "kept": kept, "removed": total - kept, "groups": len(groups)}
