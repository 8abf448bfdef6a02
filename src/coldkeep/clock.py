"""Time, in one place, so tests and retention can pin "now".

Everything coldkeep records is UTC with an explicit offset.  The test hook ``COLDKEEP_NOW`` (ISO 8601
with an offset) freezes :func:`now` for tests that need a fixed date; like every test hook it acts
only with ``COLDKEEP_TESTING=1`` (:mod:`coldkeep.testhooks`).
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

from coldkeep import testhooks
from coldkeep.errors import UsageError


def now() -> datetime:
    """The current time in UTC (or the test hook ``COLDKEEP_NOW``'s, in tests)."""
    frozen = testhooks.value("COLDKEEP_NOW")
    if frozen:
        return parse_timestamp(frozen)
    return datetime.now(UTC)


def monotonic() -> float:
    return time.monotonic()


def isoformat(ts: datetime) -> str:
    """ISO 8601, UTC, second precision unless sub-second parts exist: ``2026-11-26T08:00:00Z``."""
    ts = ts.astimezone(UTC)
    text = ts.isoformat(timespec="microseconds" if ts.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def parse_timestamp(text: str, *, require_offset: bool = True) -> datetime:
    """Parse ISO 8601.  A timestamp without a UTC offset is refused unless ``require_offset`` is off
    (then it is taken as UTC)."""
    raw = text.strip()
    candidate = raw[:-1] + "+00:00" if raw.endswith(("Z", "z")) else raw
    try:
        ts = datetime.fromisoformat(candidate)
    except ValueError:
        raise UsageError(
            f"not an ISO 8601 timestamp: {text!r}", hint="write e.g. 2026-11-26T08:00:00+00:00"
        ) from None
    if ts.tzinfo is None:
        if require_offset:
            raise UsageError(
                f"timestamp {text!r} has no UTC offset",
                hint="add one, e.g. 2026-11-26T08:00:00+00:00 or ...Z",
            )
        ts = ts.replace(tzinfo=UTC)
    return ts


_DURATION = re.compile(r"^\s*(\d+)\s*([smhdwy])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def parse_duration(text: str) -> timedelta:
    """``90d``, ``12h``, ``2w``, ``1y`` (365 d), ``30m``, ``45s``."""
    m = _DURATION.match(text)
    if not m:
        raise UsageError(f"not a duration: {text!r}", hint="write e.g. 90d, 12h, 2w, 1y")
    return timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])
