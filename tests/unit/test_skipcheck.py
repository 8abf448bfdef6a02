"""The CI skip check: tests/skipreport.py records every skip and xfail (with and without xdist),
tests/skipcheck.py fails on any the allow-list does not name, and tests.helpers.need() fails
instead of skipping under CI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.skipcheck import AllowlistError, main, parse_allowlist, stale, unallowed

ROOT = Path(__file__).resolve().parents[2]

SAMPLE = """
import pytest
from tests.helpers import need

def test_runs():
    assert True

def test_skips():
    pytest.skip("no widget here")

@pytest.mark.skipif(True, reason="marked away")
def test_marked():
    pass

@pytest.mark.xfail(reason="known bug 7")
def test_xfails():
    assert False

def test_needs_a_tool():
    need(False, "needs the frobnicate command")
"""

SKIPPED_MODULE = """
import pytest
pytest.skip("whole module away", allow_module_level=True)

def test_never():
    pass
"""


def run_sample(tmp_path: Path, *, ci: bool, xdist: bool) -> tuple[subprocess.CompletedProcess[str], Path]:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    (tmp_path / "test_away.py").write_text(SKIPPED_MODULE)
    report = tmp_path / "skips.jsonl"
    env = {k: v for k, v in os.environ.items() if k not in ("COLDKEEP_CI", "COLDKEEP_SKIP_REPORT")}
    env.update(PYTHONPATH=str(ROOT), COLDKEEP_SKIP_REPORT=str(report), **({"COLDKEEP_CI": "1"} if ci else {}))
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.skipreport",
            "--rootdir", str(tmp_path), *(["-n", "2"] if xdist else ["-p", "no:xdist"]), str(tmp_path)]  # fmt: skip
    done = subprocess.run(
        args, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120, check=False
    )
    return done, report


def read_report(report: Path) -> dict[str, tuple[str, str]]:
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    return {r["nodeid"]: (r["outcome"], r["reason"]) for r in rows}


@pytest.mark.parametrize("xdist", [False, True], ids=["serial", "xdist"])
def test_every_skip_and_xfail_is_recorded(tmp_path: Path, xdist: bool) -> None:
    done, report = run_sample(tmp_path, ci=False, xdist=xdist)
    assert done.returncode == 0, done.stdout + done.stderr
    assert read_report(report) == {
        "test_away.py": ("skipped", "whole module away"),
        "test_sample.py::test_skips": ("skipped", "no widget here"),
        "test_sample.py::test_marked": ("skipped", "marked away"),
        "test_sample.py::test_xfails": ("xfailed", "known bug 7"),
        "test_sample.py::test_needs_a_tool": ("skipped", "needs the frobnicate command"),
    }


def test_the_check_fails_on_skips_not_on_the_allow_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    done, report = run_sample(tmp_path, ci=False, xdist=False)
    assert done.returncode == 0, done.stdout + done.stderr
    allow = tmp_path / "allow.txt"
    allow.write_text("# header\n\ntest_away.py  # a whole module\ntest_sample.py::test_marked  # marked\n")
    assert main([str(report), str(allow)]) == 1
    err = capsys.readouterr().err
    assert "test_sample.py::test_skips: no widget here" in err
    assert "xfailed without an allow-list entry: test_sample.py::test_xfails" in err
    assert "test_away.py" not in err.replace("test_away.py  #", "")
    allow.write_text(allow.read_text() + "test_sample.py::test_*  # the rest of the sample\n")
    assert main([str(report), str(allow)]) == 0


def test_under_ci_need_fails_instead_of_skipping(tmp_path: Path) -> None:
    done, report = run_sample(tmp_path, ci=True, xdist=False)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 failed" in done.stdout and "needs the frobnicate command" in done.stdout
    assert "test_sample.py::test_needs_a_tool" not in read_report(report)


def test_a_missing_report_or_a_reasonless_entry_is_an_error(tmp_path: Path) -> None:
    assert main([str(tmp_path / "nothing.jsonl")]) == 2
    report = tmp_path / "r.jsonl"
    report.write_text("")
    bad = tmp_path / "allow.txt"
    bad.write_text("tests/unit/test_x.py::test_y\n")
    assert main([str(report), str(bad)]) == 2
    with pytest.raises(AllowlistError, match=r"allow-list:2"):
        parse_allowlist("# ok\ntests/x.py::t   #   \n")


def test_matching_and_stale_entries() -> None:
    allowed = parse_allowlist("a.py::t[s3]  # exact, brackets are literal\nb.py::*  # a prefix\n")
    skips = [
        {"nodeid": n, "outcome": "skipped", "reason": ""} for n in ("a.py::t[s3]", "a.py::t[x]", "b.py::u")
    ]
    assert [s["nodeid"] for s in unallowed(skips, allowed)] == ["a.py::t[x]"]
    assert stale(skips[1:], allowed) == [allowed[0]]


def test_the_repository_allow_list_parses_and_ci_runs_the_check() -> None:
    parse_allowlist((ROOT / "tests" / "skip-allowlist.txt").read_text(encoding="utf-8"))
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "export COLDKEEP_CI=1" in ci and "COLDKEEP_SKIP_REPORT" in ci
    assert ci.index("make test") < ci.index("tests.skipcheck")
