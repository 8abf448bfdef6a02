"""Hot retention of checkpoints: golden decisions with reasons, hand-checked rules, properties.

Regenerate the golden file after an intended change with::

    UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_checkpoint_policy.py -q -p no:cacheprovider
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from coldkeep.checkpoints.naming import TYPES, CheckpointName, parse_name, stamp_of
from coldkeep.checkpoints.policy import HotCheckpoint, decide, policy_from_days

GOLDEN = Path(__file__).parent / "golden" / "checkpoint_retention.json"
NOW = datetime(2025, 11, 1, 12, 0, tzinfo=UTC)
POLICY = policy_from_days({"checkpoint": 7, "best": 90, "production": "forever", "rollback": 30})


def n(text: str) -> CheckpointName:
    parsed = parse_name(text)
    assert isinstance(parsed, CheckpointName)
    return parsed


ITEMS = [
    HotCheckpoint(n("cet-d-phase1/checkpoint-20251001_153000")),  # 31 days: due
    HotCheckpoint(n("cet-d-phase1/checkpoint-20251026_120000")),  # 6 days: not yet
    HotCheckpoint(n("cet-d-phase1/checkpoint-20251025_115959")),  # 7 days and a second: due
    HotCheckpoint(n("cet-d-phase1/best-20250701_000000")),  # 123 days: due
    HotCheckpoint(n("cet-d-phase1/best-20250815_000000")),  # 78 days: not yet
    HotCheckpoint(
        n("cet-d-phase1/checkpoint-20251030_000000"), False, "modified 3 s ago"
    ),  # newest, incomplete
    HotCheckpoint(n("cet-d-phase2/checkpoint-20250101_000000")),  # the only one of its phase
    HotCheckpoint(
        n("cet-d-phase3/checkpoint-20250101_000000"), False, "no commit_success.txt"
    ),  # old, incomplete
    HotCheckpoint(n("cet-d-phase3/best-20250102_000000")),  # newest of phase 3
    HotCheckpoint(n("cet-d-phase4/production-20240101_000000")),  # old production: pinned
    HotCheckpoint(n("cet-d-phase4/rollback-20251001_000000")),  # demoted 31 days ago: due
    HotCheckpoint(n("cet-d-phase4/rollback-20251010_000000")),  # 22 days: not yet
    HotCheckpoint(n("cet-d-phase4/checkpoint-20251031_000000")),  # newest of phase 4
]


def rendered() -> list[dict[str, object]]:
    return [d.to_json() for d in decide(ITEMS, POLICY, NOW)]


def test_golden() -> None:
    actual = rendered()
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(
            "[\n" + ",\n".join("  " + json.dumps(d) for d in actual) + "\n]\n", encoding="utf-8"
        )
    assert json.loads(GOLDEN.read_text(encoding="utf-8")) == actual


def test_hand_checked_against_the_golden_file() -> None:
    golden = {d["name"]: d for d in json.loads(GOLDEN.read_text(encoding="utf-8"))}
    archived = sorted(name for name, d in golden.items() if d["action"] == "archive")
    assert archived == [
        "cet-d-phase1/best-20250701_000000",
        "cet-d-phase1/checkpoint-20251001_153000",
        "cet-d-phase1/checkpoint-20251025_115959",
        "cet-d-phase4/rollback-20251001_000000",
    ]
    assert golden["cet-d-phase4/production-20240101_000000"]["reason"] == "pinned: production"
    assert golden["cet-d-phase1/checkpoint-20251030_000000"]["reason"] == "incomplete: modified 3 s ago"
    assert (
        golden["cet-d-phase1/checkpoint-20251026_120000"]["reason"]
        == "newest complete checkpoint of its phase"
    )
    assert golden["cet-d-phase2/checkpoint-20250101_000000"]["reason"] == "newest of its phase"
    assert golden["cet-d-phase1/best-20250815_000000"]["due"] == "2025-11-13T00:00:00Z"
    assert golden["cet-d-phase4/rollback-20251010_000000"]["due"] == "2025-11-09T00:00:00Z"


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["p1", "p2"]), st.sampled_from(TYPES), st.integers(0, 400), st.booleans()),
        min_size=1,
        max_size=25,
        unique_by=lambda t: (t[0], t[1], t[2]),
    ),
    st.integers(0, 400),
)
def test_properties(raw: list[tuple[str, str, int, bool]], now_day: int) -> None:
    base = datetime(2025, 1, 1, tzinfo=UTC)
    items = [
        HotCheckpoint(
            CheckpointName(p, t, stamp_of(base + timedelta(days=d))), complete, "" if complete else "x"
        )
        for p, t, d, complete in raw
    ]
    now = base + timedelta(days=now_day)
    decisions = decide(items, POLICY, now)
    assert len(decisions) == len(items)
    for d in decisions:
        item = next(i for i in items if i.name == d.name)
        if d.archive:
            assert item.complete and d.name.type != "production"
            assert d.due is not None and d.due <= now and d.reason.startswith("older than")
    for phase in {i.name.phase for i in items}:
        in_phase = [i for i in items if i.name.phase == phase]
        newest = max(in_phase, key=lambda i: i.name.time).name
        assert not next(d for d in decisions if d.name == newest).archive
        done = [i for i in in_phase if i.complete]
        if done:  # a complete checkpoint always stays hot
            newest_done = max(done, key=lambda i: i.name.time).name
            assert not next(d for d in decisions if d.name == newest_done).archive
