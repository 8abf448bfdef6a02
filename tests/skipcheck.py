"""``python -m tests.skipcheck REPORT [ALLOWLIST]``: fail when a test skipped that may not.

REPORT is the file ``tests/skipreport.py`` wrote (``COLDKEEP_SKIP_REPORT``); ALLOWLIST defaults
to ``tests/skip-allowlist.txt``.  Exit 0 when every skipped or xfailed test is allowed, 1 (listing
each one that is not) otherwise, 2 when the report is missing or the allow-list is malformed.

Allow-list format: one entry per line, ``NODEID  # reason``; the reason is required.  NODEID is a
pytest node id (``tests/unit/test_x.py::test_y[param]``); an entry ending in ``*`` allows every
node id that starts with what comes before it.  Blank lines and lines starting with ``#`` are
comments.  An entry that allowed nothing this run is reported as a note (stale), not an error.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ALLOWLIST = Path(__file__).with_name("skip-allowlist.txt")


class AllowlistError(ValueError):
    """A malformed allow-list line."""


@dataclass(frozen=True)
class Allowed:
    pattern: str
    reason: str

    def matches(self, nodeid: str) -> bool:
        if self.pattern.endswith("*"):
            return nodeid.startswith(self.pattern[:-1])
        return nodeid == self.pattern


def parse_allowlist(text: str, where: str = "allow-list") -> list[Allowed]:
    """The entries of an allow-list; :class:`AllowlistError` names a line without a reason."""
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pattern, sep, reason = line.partition("#")
        pattern, reason = pattern.strip(), reason.strip()
        if not sep or not reason or not pattern or " " in pattern:
            raise AllowlistError(f"{where}:{number}: write `NODEID  # reason` (got {raw!r})")
        entries.append(Allowed(pattern, reason))
    return entries


def parse_report(text: str) -> list[dict[str, str]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def unallowed(skips: Sequence[dict[str, str]], allowed: Sequence[Allowed]) -> list[dict[str, str]]:
    """The skips no entry of ``allowed`` matches, in report order."""
    return [s for s in skips if not any(a.matches(s["nodeid"]) for a in allowed)]


def stale(skips: Sequence[dict[str, str]], allowed: Sequence[Allowed]) -> list[Allowed]:
    """The entries that matched no skip."""
    return [a for a in allowed if not any(a.matches(s["nodeid"]) for s in skips)]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not 1 <= len(args) <= 2:
        print("usage: python -m tests.skipcheck REPORT [ALLOWLIST]", file=sys.stderr)
        return 2
    report = Path(args[0])
    allow_path = Path(args[1]) if len(args) == 2 else DEFAULT_ALLOWLIST
    if not report.is_file():
        print(
            f"skip check: no report at {report} (was COLDKEEP_SKIP_REPORT set for pytest?)", file=sys.stderr
        )
        return 2
    try:
        allowed = parse_allowlist(allow_path.read_text(encoding="utf-8"), str(allow_path))
    except (OSError, AllowlistError) as exc:
        print(f"skip check: {exc}", file=sys.stderr)
        return 2
    skips = parse_report(report.read_text(encoding="utf-8"))
    for entry in stale(skips, allowed):
        print(f"skip check: note: allow-list entry {entry.pattern} matched nothing this run", file=sys.stderr)
    bad = unallowed(skips, allowed)
    for s in bad:
        print(f"skip check: {s['outcome']} without an allow-list entry: {s['nodeid']}: {s['reason']}",
              file=sys.stderr)  # fmt: skip
    if bad:
        print(f"skip check: {len(bad)} test(s) did not run; fix them or add them to {allow_path} with a reason",
              file=sys.stderr)  # fmt: skip
        return 1
    print(f"skip check: {len(skips)} skipped/xfailed, all on the allow-list", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
