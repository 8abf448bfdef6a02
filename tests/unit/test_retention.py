"""Retention engine: hand-written cases per rule, golden decisions, and hypothesis properties.

Regenerate the golden files after an intended change of behaviour with::

    UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_retention.py -q -p no:cacheprovider

then read the diff: the hand-checked expectations in ``HAND_CHECKED`` below are asserted against
the golden files independently of the engine, so a regeneration cannot silently change them.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coldkeep.errors import EXIT_USAGE, ColdkeepError, UsageError
from coldkeep.retention import (
    REMOVE_REASON,
    Decision,
    Item,
    Policy,
    apply_policy,
    format_duration,
    summarize,
)

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
PLUS2 = timezone(timedelta(hours=2))


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def it(id_: str, when: str, **tags: str) -> Item:
    return Item(id_, ts(when), tags)


def kept(decisions: list[Decision]) -> list[str]:
    return [d.item.id for d in decisions if d.keep]


def reasons(decisions: list[Decision]) -> dict[str, list[str]]:
    return {d.item.id: list(d.reasons) for d in decisions if d.keep}


# --- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", [Policy(), Policy(group_by=("host",)), Policy.parse()])
def test_empty_policy_is_refused(policy: Policy) -> None:
    assert policy.is_empty()
    items = [it("a", "2026-11-26T00:00:00Z")]
    with pytest.raises(UsageError) as exc:
        apply_policy(items, policy, NOW)
    assert exc.value.message == "refusing to apply an empty retention policy"
    assert "--keep" in exc.value.hint
    assert exc.value.exit_code == EXIT_USAGE
    with pytest.raises(UsageError):  # refused even when there is nothing to decide about
        apply_policy([], policy, NOW)


@pytest.mark.parametrize(
    "policy",
    [
        Policy(keep_last=1),
        Policy(keep_yearly=1),
        Policy(keep_within=timedelta(seconds=1)),
        Policy(keep_tags=(("a", "b"),)),
    ],
)
def test_any_single_rule_makes_a_policy_non_empty(policy: Policy) -> None:
    assert not policy.is_empty()


@pytest.mark.parametrize(
    "field", ["keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly"]
)
def test_negative_counts_are_refused(field: str) -> None:
    minus: dict[str, Any] = {field: -1}
    with pytest.raises(UsageError, match=f"{field} must be 0 or more, got -1"):
        Policy(**minus)
    with pytest.raises(UsageError, match=field):
        Policy.parse(**minus)
    with pytest.raises(UsageError, match=field):
        Policy.parse(**{field: "-2"})


@pytest.mark.parametrize("bad", [True, 1.5, "3", None])
def test_non_integer_counts_are_refused_by_the_constructor(bad: Any) -> None:
    with pytest.raises(UsageError, match="keep_daily must be a whole number"):
        Policy(keep_daily=bad)


def test_zero_or_wrong_keep_within_is_refused() -> None:
    with pytest.raises(UsageError, match="longer than zero"):
        Policy(keep_within=timedelta(0))
    with pytest.raises(UsageError, match="longer than zero"):
        Policy.parse(keep_within="0d")
    with pytest.raises(UsageError, match="must be a duration"):
        Policy(keep_within="30d")  # type: ignore[arg-type]


def test_naive_times_are_refused() -> None:
    with pytest.raises(UsageError, match="without a UTC offset"):
        Item("a", datetime(2026, 1, 1))
    with pytest.raises(UsageError, match="'now' must carry a UTC offset"):
        apply_policy([it("a", "2026-01-01T00:00:00Z")], Policy(keep_last=1), datetime(2026, 1, 1))


def test_duplicate_ids_are_refused() -> None:
    items = [it("a", "2026-01-01T00:00:00Z"), it("a", "2026-01-02T00:00:00Z")]
    with pytest.raises(ColdkeepError, match="lists item 'a' twice"):
        apply_policy(items, Policy(keep_last=5), NOW)


def test_empty_id_is_refused() -> None:
    with pytest.raises(UsageError, match="non-empty string"):
        Item("", NOW)


# --- each rule ----------------------------------------------------------------------------------


def test_no_items_gives_no_decisions() -> None:
    assert apply_policy([], Policy(keep_last=3), NOW) == []


def test_keep_last() -> None:
    items = [it(f"i{n}", f"2026-11-{n:02d}T00:00:00Z") for n in range(1, 6)]
    decisions = apply_policy(items, Policy(keep_last=2), NOW)
    assert reasons(decisions) == {"i5": ["last 1"], "i4": ["last 2"]}
    removed = [d for d in decisions if not d.keep]
    assert [d.item.id for d in removed] == ["i1", "i2", "i3"]
    assert all(d.reasons == (REMOVE_REASON,) for d in removed)


def test_keep_last_larger_than_the_list_keeps_everything() -> None:
    items = [it("x", "2026-01-01T00:00:00Z"), it("y", "2026-01-02T00:00:00Z")]
    assert kept(apply_policy(items, Policy(keep_last=10), NOW)) == ["x", "y"]


def test_keep_daily_takes_the_newest_of_each_day_and_skips_empty_days() -> None:
    items = [
        it("d1-early", "2026-11-20T01:00:00Z"),
        it("d1-late", "2026-11-20T23:00:00Z"),
        # no item on 11-21 and 11-22: those days do not use up a count
        it("d2", "2026-11-23T05:00:00Z"),
        it("d3-a", "2026-11-24T05:00:00Z"),
        it("d3-b", "2026-11-24T06:00:00Z"),
    ]
    decisions = apply_policy(items, Policy(keep_daily=3), NOW)
    assert reasons(decisions) == {
        "d3-b": ["daily 1 (2026-11-24)"],
        "d2": ["daily 2 (2026-11-23)"],
        "d1-late": ["daily 3 (2026-11-20)"],
    }
    assert reasons(apply_policy(items, Policy(keep_daily=2), NOW)) == {
        "d3-b": ["daily 1 (2026-11-24)"],
        "d2": ["daily 2 (2026-11-23)"],
    }


def test_keep_hourly() -> None:
    items = [
        it("a", "2026-11-26T08:05:00Z"),
        it("b", "2026-11-26T08:55:00Z"),
        it("c", "2026-11-26T09:00:00Z"),
        it("d", "2026-11-26T11:59:59Z"),
    ]
    assert reasons(apply_policy(items, Policy(keep_hourly=2), NOW)) == {
        "d": ["hourly 1 (2026-11-26T11)"],
        "c": ["hourly 2 (2026-11-26T09)"],
    }
    assert kept(apply_policy(items, Policy(keep_hourly=3), NOW)) == ["b", "c", "d"]


def test_keep_weekly_uses_iso_weeks_across_the_new_year() -> None:
    items = [
        it("sun-w52", "2025-12-28T12:00:00Z"),  # Sunday, ISO 2025-W52
        it("mon-w01", "2025-12-29T12:00:00Z"),  # Monday, ISO 2026-W01 although still 2025
        it("thu-w01", "2026-01-01T12:00:00Z"),  # ISO 2026-W01
        it("w02", "2026-01-05T12:00:00Z"),
    ]
    assert reasons(apply_policy(items, Policy(keep_weekly=3), NOW)) == {
        "w02": ["weekly 1 (2026-W02)"],
        "thu-w01": ["weekly 2 (2026-W01)"],
        "sun-w52": ["weekly 3 (2025-W52)"],
    }


def test_keep_monthly_and_yearly() -> None:
    items = [
        it("2024-06", "2024-06-10T00:00:00Z"),
        it("2025-01", "2025-01-31T23:59:59Z"),
        it("2025-02", "2025-02-01T00:00:00Z"),
        it("2025-12", "2025-12-31T23:00:00Z"),
        it("2026-03a", "2026-03-01T00:00:00Z"),
        it("2026-03b", "2026-03-20T00:00:00Z"),
    ]
    assert reasons(apply_policy(items, Policy(keep_monthly=3), NOW)) == {
        "2026-03b": ["monthly 1 (2026-03)"],
        "2025-12": ["monthly 2 (2025-12)"],
        "2025-02": ["monthly 3 (2025-02)"],
    }
    assert reasons(apply_policy(items, Policy(keep_yearly=5), NOW)) == {
        "2026-03b": ["yearly 1 (2026)"],
        "2025-12": ["yearly 2 (2025)"],
        "2024-06": ["yearly 3 (2024)"],
    }


def test_keep_within_is_inclusive_and_keeps_future_items() -> None:
    cutoff = NOW - timedelta(days=30)
    items = [
        Item("too-old", cutoff - timedelta(seconds=1)),
        Item("at-cutoff", cutoff),
        Item("recent", NOW - timedelta(hours=1)),
        Item("now", NOW),
        Item("future", NOW + timedelta(days=3)),  # clock skew on the host that made it
    ]
    decisions = apply_policy(items, Policy.parse(keep_within="30d"), NOW)
    assert reasons(decisions) == {k: ["within 30d"] for k in ("at-cutoff", "recent", "now", "future")}
    assert not decisions[0].keep and decisions[0].item.id == "too-old"


def test_keep_within_label_uses_the_largest_exact_unit() -> None:
    assert format_duration(timedelta(weeks=2)) == "14d"
    assert format_duration(timedelta(hours=36)) == "36h"
    assert format_duration(timedelta(minutes=90)) == "90m"
    assert format_duration(timedelta(seconds=61)) == "61s"
    assert format_duration(timedelta(seconds=1.5)) == "1.5s"
    items = [Item("a", NOW)]
    assert apply_policy(items, Policy.parse(keep_within="12h"), NOW)[0].reasons == ("within 12h",)


def test_keep_tags() -> None:
    items = [
        it("prod", "2026-01-01T00:00:00Z", phase="prod"),
        it("dev", "2026-01-02T00:00:00Z", phase="dev"),
        it("untagged", "2026-01-03T00:00:00Z"),
        it("both", "2026-01-04T00:00:00Z", phase="prod", type="best"),
        it("other-key", "2026-01-05T00:00:00Z", stage="prod"),
    ]
    policy = Policy.parse(keep_tag=["type=best", "phase=prod"])
    assert reasons(apply_policy(items, policy, NOW)) == {
        "prod": ["tag phase=prod"],
        "both": ["tag type=best", "tag phase=prod"],  # in policy order
    }


def test_every_rule_that_keeps_an_item_is_listed_in_a_stable_order() -> None:
    items = [it("old", "2025-01-01T00:00:00Z"), it("new", "2026-11-26T11:00:00Z", phase="prod")]
    policy = Policy(
        keep_tags=(("phase", "prod"),),
        keep_within=timedelta(days=30),
        keep_yearly=1,
        keep_monthly=1,
        keep_weekly=1,
        keep_daily=1,
        keep_hourly=1,
        keep_last=1,
    )
    assert reasons(apply_policy(items, policy, NOW)) == {
        "new": [
            "last 1",
            "hourly 1 (2026-11-26T11)",
            "daily 1 (2026-11-26)",
            "weekly 1 (2026-W48)",
            "monthly 1 (2026-11)",
            "yearly 1 (2026)",
            "within 30d",
            "tag phase=prod",
        ]
    }


# --- groups, ties, time zones, ordering ---------------------------------------------------------


def test_group_by_applies_the_policy_to_each_group() -> None:
    items = [
        it("a1", "2026-11-01T00:00:00Z", env="a"),
        it("a2", "2026-11-02T00:00:00Z", env="a"),
        it("b1", "2026-11-03T00:00:00Z", env="b"),
        it("b2", "2026-11-04T00:00:00Z", env="b"),
        it("none", "2026-10-01T00:00:00Z"),
    ]
    decisions = apply_policy(items, Policy.parse(keep_last=1, group_by=["env"]), NOW)
    assert reasons(decisions) == {"a2": ["last 1"], "b2": ["last 1"], "none": ["last 1"]}
    groups = {d.item.id: d.group for d in decisions}
    assert groups == {
        "a1": (("env", "a"),),
        "a2": (("env", "a"),),
        "b1": (("env", "b"),),
        "b2": (("env", "b"),),
        "none": (("env", ""),),  # a missing tag is its own group, not dropped
    }
    assert summarize(decisions) == {"total": 5, "kept": 3, "removed": 2, "groups": 3}


def test_group_by_several_keys() -> None:
    items = [
        it("x", "2026-11-01T00:00:00Z", env="a", phase="prod"),
        it("y", "2026-11-02T00:00:00Z", env="a", phase="dev"),
        it("z", "2026-11-03T00:00:00Z", env="a", phase="dev"),
    ]
    decisions = apply_policy(items, Policy.parse(keep_last=1, group_by=["env,phase"]), NOW)
    assert kept(decisions) == ["x", "z"]
    assert decisions[0].group == (("env", "a"), ("phase", "prod"))
    assert decisions[0].to_dict()["group"] == {"env": "a", "phase": "prod"}


def snap(id_: str, when: str, on: str, *paths: str, **tags: str) -> Item:
    """A snapshot-like item: taken on host ``on`` of ``paths``, with ``tags``."""
    return Item(id_, ts(when), tags, host=on, paths=paths)


def test_group_by_host_and_paths_as_restic_does() -> None:
    items = [
        snap("g1", "2026-11-01T00:00:00Z", "gpu1", "/data/a", "/data/b"),
        snap("g2", "2026-11-02T00:00:00Z", "gpu1", "/data/b", "/data/a"),  # the same set of paths
        snap("g3", "2026-11-03T00:00:00Z", "gpu1", "/data/a"),
        snap("d1", "2026-11-04T00:00:00Z", "db1", "/data/a"),
        snap("d2", "2026-11-05T00:00:00Z", "db1", "/data/a", host="gpu1"),  # a tag named host: not the host
    ]
    decisions = apply_policy(items, Policy.parse(keep_last=1, group_by=["host,paths"]), NOW)
    assert kept(decisions) == ["g2", "g3", "d2"]
    groups = {d.item.id: d.to_dict()["group"] for d in decisions}
    assert groups["g1"] == groups["g2"] == {"host": "gpu1", "paths": '["/data/a", "/data/b"]'}
    assert groups["d2"] == {"host": "db1", "paths": '["/data/a"]'}
    # without grouping the newest of all is the only one kept
    assert kept(apply_policy(items, Policy.parse(keep_last=1, group_by=[""]), NOW)) == ["d2"]


def test_group_by_the_whole_tag_set() -> None:
    items = [
        it("a", "2026-11-01T00:00:00Z", kind="logs"),
        it("b", "2026-11-02T00:00:00Z", kind="logs", phase="dev"),  # another set: its own group
        it("c", "2026-11-03T00:00:00Z", kind="logs"),
        it("d", "2026-11-04T00:00:00Z"),
    ]
    decisions = apply_policy(items, Policy.parse(keep_last=1, group_by=["tags"]), NOW)
    assert kept(decisions) == ["b", "c", "d"]
    assert decisions[1].to_dict()["group"] == {"tags": '{"kind": "logs", "phase": "dev"}'}
    assert decisions[3].group == (("tags", "{}"),)


def test_without_group_by_every_decision_has_the_empty_group() -> None:
    items = [snap("x", "2026-11-01T00:00:00Z", "a", "/p", env="a")]
    assert apply_policy(items, Policy(keep_last=1), NOW)[0].group == ()


def test_ties_are_broken_by_id_the_larger_id_counts_as_newer() -> None:
    same = "2026-11-20T10:00:00Z"
    items = [it("b", same), it("a", same), it("c", same)]
    for order in (items, items[::-1], [items[1], items[2], items[0]]):
        decisions = apply_policy(order, Policy(keep_last=1, keep_daily=1), NOW)
        assert [d.item.id for d in decisions] == ["a", "b", "c"]  # oldest first, ties by id
        assert reasons(decisions) == {"c": ["last 1", "daily 1 (2026-11-20)"]}


def test_the_same_instant_written_with_different_offsets_is_a_tie() -> None:
    items = [it("utc", "2026-11-20T22:30:00Z"), it("cest", "2026-11-21T00:30:00+02:00")]
    decisions = apply_policy(items, Policy(keep_last=1), NOW)
    assert [d.item.id for d in decisions] == ["cest", "utc"]
    assert kept(decisions) == ["utc"]


def test_buckets_are_utc_whatever_the_offset_of_the_item() -> None:
    # 01:30 on the 21st at +02:00 is 23:30 on the 20th in UTC: same day as `utc-20`, and newer
    items = [
        it("utc-20", "2026-11-20T10:00:00Z"),
        it("local-21", "2026-11-21T01:30:00+02:00"),
        it("utc-19", "2026-11-19T10:00:00Z"),
    ]
    assert reasons(apply_policy(items, Policy(keep_daily=5), NOW)) == {
        "local-21": ["daily 1 (2026-11-20)"],
        "utc-19": ["daily 2 (2026-11-19)"],
    }
    # the same for months and years at a new year's eve in +02:00
    items = [it("ny-local", "2026-01-01T00:30:00+02:00"), it("dec", "2025-12-15T00:00:00Z")]
    assert reasons(apply_policy(items, Policy(keep_monthly=1, keep_yearly=1), NOW)) == {
        "ny-local": ["monthly 1 (2025-12)", "yearly 1 (2025)"]
    }
    # and the decision keeps the item exactly as given (offset included)
    decision = apply_policy(items, Policy(keep_last=1), NOW)[1]
    assert decision.item.time.utcoffset() == timedelta(hours=2)
    assert decision.to_dict()["time"] == "2025-12-31T22:30:00Z"


def test_now_with_an_offset_is_the_same_instant() -> None:
    items = [Item("edge", NOW - timedelta(days=1))]
    now_local = NOW.astimezone(PLUS2)
    assert apply_policy(items, Policy(keep_within=timedelta(days=1)), now_local)[0].keep


def test_decisions_are_oldest_first_whatever_the_input_order() -> None:
    items = [it(f"i{n}", f"2026-0{n}-01T00:00:00Z") for n in range(1, 8)]
    shuffled = items[:]
    random.Random(7).shuffle(shuffled)
    decisions = apply_policy(shuffled, Policy(keep_monthly=3), NOW)
    assert [d.item.id for d in decisions] == [f"i{n}" for n in range(1, 8)]


def test_items_are_immutable_and_decoupled_from_the_callers_dict() -> None:
    tags = {"phase": "prod"}
    item = Item("a", NOW, tags)
    tags["phase"] = "dev"
    assert item.tags["phase"] == "prod"
    with pytest.raises(TypeError):
        item.tags["phase"] = "dev"  # type: ignore[index]
    assert item == Item("a", NOW, {"phase": "prod"})
    assert len({item, Item("a", NOW, {"phase": "prod"})}) == 1  # hashable despite the mapping


def test_summarize() -> None:
    items = [it(f"i{n}", f"2026-11-{n:02d}T00:00:00Z") for n in range(1, 11)]
    decisions = apply_policy(items, Policy(keep_last=4), NOW)
    assert summarize(decisions) == {"total": 10, "kept": 4, "removed": 6, "groups": 1}
    assert summarize([]) == {"total": 0, "kept": 0, "removed": 0, "groups": 0}


# --- Policy.parse -------------------------------------------------------------------------------


def test_parse_strings() -> None:
    policy = Policy.parse(
        keep_last="3",
        keep_hourly=None,
        keep_daily=7,
        keep_weekly=" 4 ",
        keep_monthly=12,
        keep_yearly="0",
        keep_within="30d",
        keep_tag=["phase=prod", " type = best ", "phase=prod", "note=a=b", "empty="],
        group_by=["host", "phase,host"],
    )
    assert policy == Policy(
        keep_last=3,
        keep_daily=7,
        keep_weekly=4,
        keep_monthly=12,
        keep_within=timedelta(days=30),
        keep_tags=(("phase", "prod"), ("type", "best"), ("note", "a=b"), ("empty", "")),
        group_by=("host", "phase"),
    )
    assert policy.describe() == (
        "keep last 3, daily 7, weekly 4, monthly 12, within 30d, tag phase=prod, tag type=best, "
        "tag note=a=b, tag empty=; per host,phase"
    )
    assert policy.to_dict()["keep_within"] == "30d"
    assert Policy().describe() == "keep nothing (empty policy)"


@pytest.mark.parametrize(
    "within, expected", [("12h", timedelta(hours=12)), ("2w", timedelta(days=14)), ("", None)]
)
def test_parse_durations(within: str, expected: timedelta | None) -> None:
    assert Policy.parse(keep_last=1, keep_within=within).keep_within == expected


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"keep_within": "30 days"}, "not a duration"),
        ({"keep_within": "-3d"}, "not a duration"),
        ({"keep_tag": ["phase"]}, "not a KEY=VALUE tag"),
        ({"keep_tag": ["=prod"]}, "not a KEY=VALUE tag"),
        ({"keep_tag": "phase=prod"}, "lists of strings"),
        ({"group_by": ["host,"]}, "not a tag key"),
        ({"group_by": ["host,,paths"]}, "not a tag key"),
        ({"group_by": ["host=a"]}, "not a tag key"),
        ({"keep_daily": "seven"}, "keep_daily must be a whole number"),
        ({"keep_daily": "--5"}, "keep_daily must be a whole number"),
        ({"keep_daily": "1.5"}, "keep_daily must be a whole number"),
        ({"keep_daily": 2.0}, "keep_daily must be a whole number"),
    ],
)
def test_parse_refuses_bad_input(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message) as exc:
        Policy.parse(keep_last=1, **kwargs)
    assert exc.value.hint  # every refusal says what to do
    assert "\n" not in exc.value.message


# --- golden files -------------------------------------------------------------------------------
#
# Sixty snapshots over two years: sparse a long time ago, daily and sub-daily lately, with new-year
# and ISO-week edges, items written in +02:00 whose UTC date differs from their local date (s06,
# s14, s20, s48), an exact tie (s13/s14 are the same instant), an item in the future of NOW (s60),
# three groups by `host` (db1, gpu1, untagged) and a few `phase=prod` / `type=best` tags.

GOLDEN_DIR = Path(__file__).parent / "golden"

_TIMES = [
    "2024-12-01T02:00:00Z",  # s01
    "2024-12-29T23:30:00Z",  # s02  Sun, ISO 2024-W52
    "2024-12-30T01:00:00Z",  # s03  Mon, ISO 2025-W01, year 2024
    "2025-01-02T03:00:00Z",  # s04
    "2025-02-14T02:00:00Z",  # s05
    "2025-03-30T02:15:00+02:00",  # s06  = 00:15Z
    "2025-04-30T23:59:59Z",  # s07
    "2025-05-01T00:00:00Z",  # s08
    "2025-06-15T02:00:00Z",  # s09
    "2025-07-04T02:00:00Z",  # s10
    "2025-07-04T14:00:00Z",  # s11
    "2025-08-20T02:00:00Z",  # s12
    "2025-09-30T22:30:00Z",  # s13
    "2025-10-01T00:30:00+02:00",  # s14  = 2025-09-30T22:30Z, tie with s13
    "2025-10-15T02:00:00Z",  # s15
    "2025-11-11T02:00:00Z",  # s16
    "2025-12-01T02:00:00Z",  # s17
    "2025-12-28T02:00:00Z",  # s18  Sun, ISO 2025-W52
    "2025-12-29T02:00:00Z",  # s19  Mon, ISO 2026-W01
    "2026-01-01T00:30:00+02:00",  # s20  = 2025-12-31T22:30Z: month 2025-12, year 2025
    "2026-01-01T02:00:00Z",  # s21
    "2026-01-15T02:00:00Z",  # s22
    "2026-02-01T02:00:00Z",  # s23
    "2026-02-28T02:00:00Z",  # s24
    "2026-03-15T02:00:00Z",  # s25
    "2026-04-01T02:00:00Z",  # s26
    "2026-04-20T02:00:00Z",  # s27
    "2026-05-05T02:00:00Z",  # s28
    "2026-06-01T02:00:00Z",  # s29
    "2026-06-30T02:00:00Z",  # s30
    "2026-07-15T02:00:00Z",  # s31
    "2026-08-01T02:00:00Z",  # s32
    "2026-08-20T02:00:00Z",  # s33
    "2026-09-05T02:00:00Z",  # s34
    "2026-09-25T02:00:00Z",  # s35
    "2026-10-03T02:00:00Z",  # s36
    "2026-10-12T02:00:00Z",  # s37
    "2026-10-20T02:00:00Z",  # s38
    "2026-10-27T02:00:00Z",  # s39
    "2026-11-02T02:00:00Z",  # s40  ISO 2026-W45
    "2026-11-09T02:00:00Z",  # s41  W46
    "2026-11-10T02:00:00Z",  # s42  W46
    "2026-11-15T02:00:00Z",  # s43  W46 (Sunday)
    "2026-11-18T02:00:00Z",  # s44  W47
    "2026-11-19T02:00:00Z",  # s45
    "2026-11-19T14:00:00Z",  # s46
    "2026-11-20T02:00:00Z",  # s47
    "2026-11-21T01:30:00+02:00",  # s48  = 2026-11-20T23:30Z (no item on 11-21 in UTC)
    "2026-11-22T02:00:00Z",  # s49  W47 (Sunday)
    "2026-11-23T02:00:00Z",  # s50  W48
    "2026-11-23T09:00:00Z",  # s51
    "2026-11-23T18:00:00Z",  # s52
    "2026-11-24T02:00:00Z",  # s53
    "2026-11-25T02:00:00Z",  # s54
    "2026-11-25T02:40:00Z",  # s55  same hour as s54
    "2026-11-25T14:00:00Z",  # s56
    "2026-11-26T02:00:00Z",  # s57
    "2026-11-26T09:15:00Z",  # s58
    "2026-11-26T11:00:00Z",  # s59
    "2026-11-26T18:00:00Z",  # s60  six hours after NOW
]
_PROD = {5, 14, 30, 44}
_BEST = {33}
_UNTAGGED_HOST = {1, 26}


def _golden_items() -> list[Item]:
    items = []
    for n, text in enumerate(_TIMES, start=1):
        tags: dict[str, str] = {}
        if n not in _UNTAGGED_HOST:
            tags["host"] = "gpu1" if n % 3 == 0 else "db1"
        if n in _PROD:
            tags["phase"] = "prod"
        if n in _BEST:
            tags["type"] = "best"
        # the snapshot's own host (the `host` tag mirrors it for the older tag-key goldens) and
        # paths: every fourth item of /data/b, every fifth of both (in either order), else /data/a
        paths = ("/data/b",) if n % 4 == 0 else ("/data/b", "/data/a") if n % 5 == 0 else ("/data/a",)
        items.append(Item(f"s{n:02d}", ts(text), tags, host=tags.get("host", ""), paths=paths))
    return items


GOLDEN_ITEMS = _golden_items()

GOLDEN_POLICIES: dict[str, Policy] = {
    "last3": Policy(keep_last=3),
    "hourly5": Policy(keep_hourly=5),
    "daily7": Policy(keep_daily=7),
    "weekly4": Policy(keep_weekly=4),
    "monthly12": Policy(keep_monthly=12),
    "yearly5": Policy(keep_yearly=5),
    "within30d": Policy.parse(keep_within="30d"),
    "tags": Policy.parse(keep_tag=["phase=prod", "type=best"]),
    "typical": Policy(keep_last=2, keep_daily=7, keep_weekly=4, keep_monthly=6, keep_yearly=3),
    "per_host": Policy.parse(keep_last=1, keep_daily=2, keep_monthly=2, group_by=["host"]),
    "per_host_paths": Policy.parse(keep_last=1, keep_daily=2, group_by=["host,paths"]),
    "mixed": Policy.parse(keep_weekly=2, keep_monthly=3, keep_within="7d", keep_tag=["phase=prod"]),
}

# Verified by hand, not by running the engine: from the table of UTC times and ISO weeks in the
# comments of _TIMES, walking the list newest first and writing down the first item of each new
# bucket until the count ran out (and, for per_host, doing that separately for db1 = n % 3 != 0,
# gpu1 = n % 3 == 0, and the untagged s01/s26; for per_host_paths also by paths: /data/b when
# n % 4 == 0, else both when n % 5 == 0, else /data/a).  These are asserted against the golden files, so
# regenerating the goldens cannot silently change them.
HAND_CHECKED: dict[str, dict[str, list[str]]] = {
    "last3": {"s58": ["last 3"], "s59": ["last 2"], "s60": ["last 1"]},
    "daily7": {
        "s60": ["daily 1 (2026-11-26)"],
        "s56": ["daily 2 (2026-11-25)"],
        "s53": ["daily 3 (2026-11-24)"],
        "s52": ["daily 4 (2026-11-23)"],
        "s49": ["daily 5 (2026-11-22)"],
        "s48": ["daily 6 (2026-11-20)"],  # 01:30+02:00 on the 21st is the 20th in UTC
        "s46": ["daily 7 (2026-11-19)"],
    },
    "weekly4": {
        "s60": ["weekly 1 (2026-W48)"],
        "s49": ["weekly 2 (2026-W47)"],
        "s43": ["weekly 3 (2026-W46)"],
        "s40": ["weekly 4 (2026-W45)"],
    },
    "monthly12": {
        "s60": ["monthly 1 (2026-11)"],
        "s39": ["monthly 2 (2026-10)"],
        "s35": ["monthly 3 (2026-09)"],
        "s33": ["monthly 4 (2026-08)"],
        "s31": ["monthly 5 (2026-07)"],
        "s30": ["monthly 6 (2026-06)"],
        "s28": ["monthly 7 (2026-05)"],
        "s27": ["monthly 8 (2026-04)"],
        "s25": ["monthly 9 (2026-03)"],
        "s24": ["monthly 10 (2026-02)"],
        "s22": ["monthly 11 (2026-01)"],
        "s20": ["monthly 12 (2025-12)"],  # 2026-01-01T00:30+02:00 is still December in UTC
    },
    "yearly5": {
        "s60": ["yearly 1 (2026)"],
        "s20": ["yearly 2 (2025)"],
        "s03": ["yearly 3 (2024)"],  # only three years exist: five asked, three kept
    },
    "per_host": {
        "s01": ["daily 2 (2024-12-01)", "monthly 2 (2024-12)"],
        "s26": ["last 1", "daily 1 (2026-04-01)", "monthly 1 (2026-04)"],
        "s38": ["monthly 2 (2026-10)"],
        "s39": ["monthly 2 (2026-10)"],
        "s54": ["daily 2 (2026-11-25)"],
        "s56": ["daily 2 (2026-11-25)"],
        "s59": ["last 1", "daily 1 (2026-11-26)", "monthly 1 (2026-11)"],
        "s60": ["last 1", "daily 1 (2026-11-26)", "monthly 1 (2026-11)"],
    },
    # seven groups of (host, paths): ("", a) s01 s26; (db1, a) ... s53 s58 s59; (db1, a+b) ... s50 s55;
    # (db1, b) ... s52 s56; (gpu1, a) ... s54 s57; (gpu1, a+b) s15 s30 s45; (gpu1, b) ... s48 s60
    "per_host_paths": {
        "s01": ["daily 2 (2024-12-01)"],
        "s26": ["last 1", "daily 1 (2026-04-01)"],
        "s53": ["daily 2 (2026-11-24)"],
        "s59": ["last 1", "daily 1 (2026-11-26)"],
        "s50": ["daily 2 (2026-11-23)"],
        "s55": ["last 1", "daily 1 (2026-11-25)"],
        "s52": ["daily 2 (2026-11-23)"],
        "s56": ["last 1", "daily 1 (2026-11-25)"],
        "s54": ["daily 2 (2026-11-25)"],
        "s57": ["last 1", "daily 1 (2026-11-26)"],
        "s30": ["daily 2 (2026-06-30)"],
        "s45": ["last 1", "daily 1 (2026-11-19)"],
        "s48": ["daily 2 (2026-11-20)"],  # 01:30+02:00 on the 21st is the 20th in UTC
        "s60": ["last 1", "daily 1 (2026-11-26)"],
    },
}


def _render_golden(name: str) -> str:
    policy = GOLDEN_POLICIES[name]
    decisions = apply_policy(GOLDEN_ITEMS, policy, NOW)
    head = {
        "policy": policy.to_dict(),
        "now": "2026-11-26T12:00:00Z",
        "summary": summarize(decisions),
        "kept": kept(decisions),
    }
    # one decision per line so a diff of a golden file reads like a retention report
    lines = ",\n".join("    " + json.dumps(d.to_dict()) for d in decisions)
    body = json.dumps(head, indent=2)[:-2]
    return f'{body},\n  "decisions": [\n{lines}\n  ]\n}}\n'


def _golden_path(name: str) -> Path:
    return GOLDEN_DIR / f"retention_{name}.json"


@pytest.mark.parametrize("name", sorted(GOLDEN_POLICIES))
def test_golden(name: str) -> None:
    rendered = _render_golden(name)
    path = _golden_path(name)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN_DIR.mkdir(exist_ok=True)
        path.write_text(rendered, encoding="utf-8")
    assert path.exists(), f"missing {path}; create it with UPDATE_GOLDEN=1"
    expected = json.loads(path.read_text(encoding="utf-8"))
    actual = json.loads(rendered)
    assert actual["policy"] == expected["policy"]
    assert actual["kept"] == expected["kept"]
    for got, want in zip(actual["decisions"], expected["decisions"], strict=True):
        assert got == want, f"{name}: decision for {want['id']} changed"
    assert actual == expected


def test_golden_files_match_the_policies() -> None:
    on_disk = {p.name for p in GOLDEN_DIR.glob("retention_*.json")}
    assert on_disk == {_golden_path(name).name for name in GOLDEN_POLICIES}


@pytest.mark.parametrize("name", sorted(HAND_CHECKED))
def test_golden_agrees_with_hand_checked_expectations(name: str) -> None:
    golden = json.loads(_golden_path(name).read_text(encoding="utf-8"))
    assert {d["id"]: d["reasons"] for d in golden["decisions"] if d["keep"]} == HAND_CHECKED[name]
    assert all(d["reasons"] == [REMOVE_REASON] for d in golden["decisions"] if not d["keep"])


def test_golden_items_are_in_time_order() -> None:
    times = [i.time for i in GOLDEN_ITEMS]
    assert times == sorted(times) and len(GOLDEN_ITEMS) == 60


# --- properties ---------------------------------------------------------------------------------

_BASE = datetime(2024, 1, 1, tzinfo=UTC)
_OFFSETS = [UTC, PLUS2, timezone(timedelta(hours=-5)), timezone(timedelta(hours=5, minutes=30))]


@st.composite
def item_lists(draw: st.DrawFn, max_size: int = 30) -> list[Item]:
    entries = draw(
        st.lists(
            st.tuples(
                st.integers(0, 999),  # id
                # half-hour steps over three years, or a cluster of a few hours (ties, same buckets)
                st.one_of(st.integers(0, 3 * 365 * 48), st.integers(0, 12)),
                st.sampled_from(_OFFSETS),
                st.sampled_from([None, "a", "b"]),  # host
                st.sampled_from([None, "prod", "dev"]),  # phase
                st.sampled_from([(), ("/a",), ("/a", "/b"), ("/b", "/a")]),  # paths
            ),
            max_size=max_size,
            unique_by=lambda e: e[0],
        )
    )
    items = []
    for id_, steps, tz, host, phase, paths in entries:
        # the host is the item's own and also a tag (so keep_tags can name it)
        tags = {k: v for k, v in (("host", host), ("phase", phase)) if v is not None}
        when = (_BASE + timedelta(minutes=30 * steps)).astimezone(tz)
        items.append(Item(f"i{id_:03d}", when, tags, host=host or "", paths=paths))
    return items


_counts = st.integers(0, 6)
policies = st.builds(
    Policy,
    keep_last=_counts,
    keep_hourly=_counts,
    keep_daily=_counts,
    keep_weekly=_counts,
    keep_monthly=_counts,
    keep_yearly=_counts,
    keep_within=st.one_of(st.none(), st.integers(1, 2 * 365 * 24).map(lambda h: timedelta(hours=h))),
    keep_tags=st.sampled_from([(), (("phase", "prod"),), (("phase", "dev"), ("host", "b"))]),
    group_by=st.sampled_from([(), ("host",), ("host", "phase"), ("host", "paths"), ("paths",), ("tags",)]),
).filter(lambda p: not p.is_empty())
nows = st.integers(0, 3 * 365 * 24).map(lambda h: _BASE + timedelta(hours=h))

FAST = settings(max_examples=150, deadline=None)


def _expected_group_value(item: Item, key: str) -> str:
    if key == "host":
        return item.host
    if key == "paths":
        return json.dumps(sorted(item.paths))
    if key == "tags":
        return json.dumps({k: item.tags[k] for k in sorted(item.tags)})
    return item.tags.get(key, "")


def _by_group(decisions: list[Decision]) -> dict[tuple[tuple[str, str], ...], list[Decision]]:
    out: dict[tuple[tuple[str, str], ...], list[Decision]] = {}
    for d in decisions:
        out.setdefault(d.group, []).append(d)
    return out


@FAST
@given(items=item_lists(), policy=policies, now=nows)
def test_prop_one_decision_per_item_with_reasons(items: list[Item], policy: Policy, now: datetime) -> None:
    decisions = apply_policy(items, policy, now)
    assert sorted(d.item.id for d in decisions) == sorted(i.id for i in items)
    assert [(d.item.time, d.item.id) for d in decisions] == sorted((i.time, i.id) for i in items)
    for d in decisions:
        if d.keep:
            assert d.reasons and REMOVE_REASON not in d.reasons
        else:
            assert d.reasons == (REMOVE_REASON,)
        assert d.group == tuple((k, _expected_group_value(d.item, k)) for k in policy.group_by)
    summary = summarize(decisions)
    assert summary["kept"] + summary["removed"] == summary["total"] == len(items)


@FAST
@given(items=item_lists(), policy=policies, now=nows, seed=st.integers(0, 2**32 - 1))
def test_prop_result_does_not_depend_on_input_order(
    items: list[Item], policy: Policy, now: datetime, seed: int
) -> None:
    shuffled = items[:]
    random.Random(seed).shuffle(shuffled)
    assert apply_policy(shuffled, policy, now) == apply_policy(items, policy, now)


@FAST
@given(items=item_lists(), policy=policies, now=nows)
def test_prop_newest_of_each_group_is_kept(items: list[Item], policy: Policy, now: datetime) -> None:
    counts = (
        policy.keep_last,
        policy.keep_hourly,
        policy.keep_daily,
        policy.keep_weekly,
        policy.keep_monthly,
    )
    if max(*counts, policy.keep_yearly) == 0:  # only within/tags: make sure a counting rule is on
        policy = Policy(keep_daily=1, keep_tags=policy.keep_tags, group_by=policy.group_by)
    for group in _by_group(apply_policy(items, policy, now)).values():
        assert group[-1].keep, group[-1]


@FAST
@given(items=item_lists(), policy=policies, now=nows)
def test_prop_keep_last_keeps_at_least_n(items: list[Item], policy: Policy, now: datetime) -> None:
    decisions = apply_policy(items, policy, now)
    n = policy.keep_last
    assert sum(d.keep for d in decisions) >= min(n, len(items))
    for group in _by_group(decisions).values():
        assert all(d.keep for d in group[-n:] if n)
        assert sum(d.keep for d in group) >= min(n, len(group))


def _union(a: Policy, b: Policy) -> Policy:
    within = [w for w in (a.keep_within, b.keep_within) if w is not None]
    return Policy(
        keep_last=max(a.keep_last, b.keep_last),
        keep_hourly=max(a.keep_hourly, b.keep_hourly),
        keep_daily=max(a.keep_daily, b.keep_daily),
        keep_weekly=max(a.keep_weekly, b.keep_weekly),
        keep_monthly=max(a.keep_monthly, b.keep_monthly),
        keep_yearly=max(a.keep_yearly, b.keep_yearly),
        keep_within=max(within) if within else None,
        keep_tags=a.keep_tags + b.keep_tags,
        group_by=a.group_by,
    )


@FAST
@given(items=item_lists(), policy=policies, extra=policies, now=nows)
def test_prop_adding_rules_never_removes_a_kept_item(
    items: list[Item], policy: Policy, extra: Policy, now: datetime
) -> None:
    before = {d.item.id for d in apply_policy(items, policy, now) if d.keep}
    after = {d.item.id for d in apply_policy(items, _union(policy, extra), now) if d.keep}
    assert before <= after


_BUCKETS: dict[str, Callable[[datetime], object]] = {
    "keep_hourly": lambda t: t.strftime("%Y-%m-%dT%H"),
    "keep_daily": lambda t: t.date(),
    "keep_weekly": lambda t: t.isocalendar()[:2],
    "keep_monthly": lambda t: (t.year, t.month),
    "keep_yearly": lambda t: t.year,
}


@FAST
@given(
    items=item_lists(),
    rule=st.sampled_from(sorted(_BUCKETS)),
    n=st.integers(1, 8),
    group_by=st.sampled_from([(), ("host",)]),
)
def test_prop_a_bucket_rule_keeps_the_newest_of_the_n_most_recent_buckets(
    items: list[Item], rule: str, n: int, group_by: tuple[str, ...]
) -> None:
    counts: dict[str, Any] = {rule: n}
    decisions = apply_policy(items, Policy(**counts, group_by=group_by), NOW)
    bucket_of = _BUCKETS[rule]
    for group in _by_group(decisions).values():
        newest: dict[object, Decision] = {}
        for d in group:  # oldest first, so the last one written per bucket is its newest
            newest[bucket_of(d.item.time.astimezone(UTC))] = d
        expected = sorted(newest.values(), key=lambda d: (d.item.time, d.item.id))[-n:]
        assert [d.item.id for d in group if d.keep] == [d.item.id for d in expected]


@FAST
@given(items=item_lists(), hours=st.integers(1, 3 * 365 * 24), now=nows)
def test_prop_keep_within_alone_is_exactly_the_time_window(
    items: list[Item], hours: int, now: datetime
) -> None:
    window = timedelta(hours=hours)
    decisions = apply_policy(items, Policy(keep_within=window), now)
    assert {d.item.id for d in decisions if d.keep} == {i.id for i in items if i.time >= now - window}
