"""A pytest plugin that records every skipped and xfailed test, for `.ci/run`'s skip check.

With ``COLDKEEP_SKIP_REPORT=FILE`` in the environment, the session writes FILE when it ends: one
JSON object per line, ``{"nodeid": …, "outcome": "skipped"|"xfailed", "reason": …}``, for every
test (or whole module, when collection was skipped) that did not run to a verdict.  Under
pytest-xdist the controller writes it: it receives every worker's reports.  FILE is written even
when nothing was skipped (then it is empty), so a missing file means the plugin did not run.

``tests/skipcheck.py`` compares the file with ``tests/skip-allowlist.txt``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

REPORT_ENV = "COLDKEEP_SKIP_REPORT"


def _reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    wasxfail = getattr(report, "wasxfail", None)
    if wasxfail is not None:
        return str(wasxfail) or "xfail"
    longrepr: Any = report.longrepr
    if isinstance(longrepr, (tuple, list)) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


class SkipRecorder:
    """Collects skip/xfail reports and writes them to ``path`` at the end of the session."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, str]] = []
        self._seen: set[str] = set()

    def _add(self, report: pytest.TestReport | pytest.CollectReport, outcome: str) -> None:
        if report.nodeid in self._seen:  # a test skipped in setup has no call report; never twice
            return
        self._seen.add(report.nodeid)
        self.rows.append({"nodeid": report.nodeid, "outcome": outcome, "reason": _reason(report)})

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.skipped:
            self._add(report, "xfailed" if hasattr(report, "wasxfail") else "skipped")

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.skipped:
            self._add(report, "skipped")

    def pytest_sessionfinish(self) -> None:
        lines = "".join(json.dumps(row, sort_keys=True) + "\n" for row in self.rows)
        self.path.write_text(lines, encoding="utf-8")


def pytest_configure(config: pytest.Config) -> None:
    path = os.environ.get(REPORT_ENV, "")
    if path and not hasattr(config, "workerinput"):  # xdist workers: their controller records
        config.pluginmanager.register(SkipRecorder(Path(path)), "coldkeep-skip-recorder")
