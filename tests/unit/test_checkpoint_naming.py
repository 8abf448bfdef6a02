"""The checkpoint naming convention: golden parses of good, odd and hostile names.

Regenerate the golden file after an intended change with::

    UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_checkpoint_naming.py -q -p no:cacheprovider

and read the diff; ``HAND_CHECKED`` is asserted independently of the golden file.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from coldkeep.checkpoints.naming import (
    CheckpointName,
    Latest,
    SnapshotRef,
    Unrecognised,
    parse,
    parse_name,
    parse_ref,
    stamp_of,
)

GOLDEN = Path(__file__).parent / "golden" / "checkpoint_names.json"

NAMES = [
    "cet-d-phase1/checkpoint-20251001_153000",
    "cet-d-phase3/best-20251015_092000",
    "cet-d-phase4/production-20251020_140000",
    "cet-d-phase4/rollback-20251021_000000",
    "cet-d-phase3/best-20240229_235959",  # leap day
    "cet-d-phase3/best-20250229_000000",  # not a leap year
    "cet-d-phase3/best-20251332_000000",  # month 13
    "cet-d-phase3/best-20251015_246000",  # hour 24
    "cet-d-phase3/best-20251015_0920",  # short
    "cet-d-phase3/best-20251015_092000-extra",
    "cet-d-phase3/best_20251015_092000",
    "cet-d-phase3/Best-20251015_092000",  # case matters
    "cet-d-phase3/final-20251015_092000",  # unknown type
    "cet-d-phase3/checkpoint-２０２５1015_092000",  # full-width digits
    "cet-d-phase3/.hidden",
    "cet-d-phase3/checkpoint-20251001_153000.tar.gz",  # the spec's own archive name
    "cet-d-/checkpoint-20251001_153000",
    "cet-d-phase 3/checkpoint-20251001_153000",
    "cet-d-phase-3.b_x/checkpoint-20251001_153000",
    "models/checkpoint-20251001_153000",
    "/mnt/nvme/models/cet-d-phase2/checkpoint-20251101_010203",
    "checkpoint-20251001_153000",
]
REFS = [
    "cet-d-phase3-best",
    "cet-d-phase4-production",
    "cet-d-phase-3.b_x-rollback",
    "cet-d-phase3-final",
    "cet-d-phase3",
    "cet-d--best",
    "0123abcd",
    "0123abc",
    "0123ABCD",
    "cet-d-phase3/best-20251015_092000",
    "latest",
]


def render(value: object) -> dict[str, object]:
    if isinstance(value, CheckpointName):
        return {"phase": value.phase, "type": value.type, "stamp": value.stamp, "name": value.name,
                "time": value.time.isoformat()}  # fmt: skip
    if isinstance(value, Latest):
        return {"latest": {"phase": value.phase, "type": value.type}}
    if isinstance(value, SnapshotRef):
        return {"snapshot": value.id}
    assert isinstance(value, Unrecognised)
    return {"unrecognised": value.reason}


def rendered() -> dict[str, object]:
    return {
        "names": {n: render(parse_name(n)) for n in NAMES},
        "refs": {r: render(parse_ref(r)) for r in REFS},
    }


def test_golden() -> None:
    actual = rendered()
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(actual, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    assert json.loads(GOLDEN.read_text(encoding="utf-8")) == actual


HAND_CHECKED = {
    "cet-d-phase3/best-20251015_092000": ("phase3", "best", "20251015_092000"),
    "cet-d-phase3/best-20240229_235959": ("phase3", "best", "20240229_235959"),
    "/mnt/nvme/models/cet-d-phase2/checkpoint-20251101_010203": ("phase2", "checkpoint", "20251101_010203"),
    "cet-d-phase-3.b_x/checkpoint-20251001_153000": ("phase-3.b_x", "checkpoint", "20251001_153000"),
}


def test_hand_checked_against_the_golden_file() -> None:
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))["names"]
    for name, (phase, type_, stamp) in HAND_CHECKED.items():
        assert (
            golden[name]["phase"] == phase
            and golden[name]["type"] == type_
            and golden[name]["stamp"] == stamp
        )
    parsed = [n for n, v in golden.items() if "unrecognised" not in v]
    assert len(parsed) == 7, parsed  # every other name is left alone
    refs = json.loads(GOLDEN.read_text(encoding="utf-8"))["refs"]
    assert refs["cet-d-phase3-best"] == {"latest": {"phase": "phase3", "type": "best"}}
    assert refs["cet-d-phase-3.b_x-rollback"] == {"latest": {"phase": "phase-3.b_x", "type": "rollback"}}
    assert refs["0123abcd"] == {"snapshot": "0123abcd"}
    assert "unrecognised" in refs["0123abc"] and "unrecognised" in refs["latest"]


def test_time_is_utc_and_round_trips() -> None:
    name = parse("cet-d-phase3", "best-20251015_092000")
    assert isinstance(name, CheckpointName)
    assert name.time == datetime(2025, 10, 15, 9, 20, tzinfo=UTC)
    assert stamp_of(name.time) == name.stamp
    assert name.with_type("production", "20251101_000000").name == "cet-d-phase3/production-20251101_000000"


@pytest.mark.parametrize(
    "text", ["", "/", "cet-d-phase3/", "a/b/c", "\x00/\x00", "cet-d-phase3/best-" + "9" * 200]
)
def test_never_raises(text: str) -> None:
    assert isinstance(parse_name(text), Unrecognised)
    assert isinstance(parse_ref(text), Unrecognised | CheckpointName)
