"""[schedule] (coldkeep.ops.schedule): cron times, systemd timers and a crontab fragment, and
`run-due` under a controllable clock (COLDKEEP_NOW): each due job runs once, one at a time, after
any downtime, and records its run."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tests.helpers import Site

from coldkeep.config import parse_text
from coldkeep.ops.rundue import lock_path
from coldkeep.ops.schedule import jobs, last_slot, next_run, on_calendar, parse_cron

BASE = datetime(2026, 12, 6, 6, 30, tzinfo=UTC)  # a Sunday

#: cron entry -> its next three runs after BASE (UTC)
EXPECTED = {
    "0 2 * * *": ["2026-12-07 02:00", "2026-12-08 02:00", "2026-12-09 02:00"],
    "0 3 * * 0": ["2026-12-13 03:00", "2026-12-20 03:00", "2026-12-27 03:00"],
    "0 4 1 * *": ["2027-01-01 04:00", "2027-02-01 04:00", "2027-03-01 04:00"],
    "*/20 9-10 * * 1-5": ["2026-12-07 09:00", "2026-12-07 09:20", "2026-12-07 09:40"],
    "30 6 1,15 * 0": ["2026-12-13 06:30", "2026-12-15 06:30", "2026-12-20 06:30"],  # day 15 OR Sunday
    "0 8 29 2 *": ["2028-02-29 08:00", "2032-02-29 08:00", "2036-02-29 08:00"],
}


@pytest.fixture(autouse=True)
def _utc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()


def _fmt(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


@pytest.mark.parametrize("expr", sorted(EXPECTED))
def test_next_runs_and_slots_and_their_systemd_calendar(expr: str) -> None:
    cron = parse_cron(expr)
    got, t = [], BASE
    for _ in range(3):
        nxt = next_run(cron, t)
        assert nxt is not None
        got.append(_fmt(nxt))
        assert last_slot(cron, nxt) == nxt  # a run time is its own slot
        t = nxt
    assert got == EXPECTED[expr]
    tool = shutil.which("systemd-analyze")
    if tool is None:  # the calendar form is still checked by its shape
        assert all(re.fullmatch(r"([A-Z][a-z]{2}(,[A-Z][a-z]{2})* )?\*-[\d*,]+-[\d*,]+ [\d*,]+:[\d*,]+:00", c)
                   for c in on_calendar(cron))  # fmt: skip
        return
    elapses: set[str] = set()
    for calendar in on_calendar(cron):
        done = subprocess.run([tool, "calendar", "--base-time=2026-12-06 06:30:00 UTC", "--iterations=3", calendar],
                              capture_output=True, text=True, check=True, env={**os.environ, "TZ": "UTC"})  # fmt: skip
        elapses.update(m[:16] for m in re.findall(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", done.stdout))
    assert sorted(elapses)[:3] == EXPECTED[expr]


CONFIG_EXTRA = """
[schedule]
repo_check = "0 6 * * 0"
repo_copy = "0 7 * * *"
"""


def _site(tmp_path: Path) -> Site:
    site = Site(tmp_path / "site", copies={"offsite": {"url": f"file://{tmp_path / 'offsite'}"}})
    with site.config.open("a") as f:
        f.write(CONFIG_EXTRA)
    site.ok("repo", "init")
    return site


def _at(now: str) -> dict[str, str]:
    return {"COLDKEEP_NOW": now}


def test_run_due_runs_each_due_job_once_after_downtime_and_records_it(tmp_path: Path) -> None:
    site = _site(tmp_path)
    sunday = "2026-12-06T06:30:00Z"
    shown = {r["type"]: r for r in site.json("schedule", "show", env=_at(sunday))}
    assert shown["repo_check"]["due"] and shown["repo_check"]["slot"] == "2026-12-06T06:00:00Z"
    assert shown["repo_copy_offsite"]["late"]  # yesterday 07:00 never ran
    assert shown["repo_check"]["next_run"] == "2026-12-13T06:00:00Z"

    first = site.json("run-due", env=_at(sunday))
    assert [(r["type"], r["exit_code"]) for r in first["ran"]] == [
        ("repo_check", 0),
        ("repo_copy_offsite", 0),
    ]
    assert site.json("run-due", env=_at(sunday))["ran"] == []  # nothing due twice

    # five days down: the daily copy runs once (not five times), the weekly check not at all
    friday = "2026-12-11T08:00:00Z"
    later = site.json("run-due", env=_at(friday))
    assert [r["type"] for r in later["ran"]] == ["repo_copy_offsite"]
    runs = site.json("runs")
    assert [(r["job"], r["start"]) for r in runs] == [
        ("repo check", sunday),
        ("repo copy", sunday),
        ("repo copy", friday),
    ]
    shown = {r["type"]: r for r in site.json("schedule", "show", env=_at(friday))}
    assert not shown["repo_copy_offsite"]["due"] and shown["repo_copy_offsite"]["last_result"] == "ok"
    assert (
        site.json("run-due", "--dry-run", env=_at("2026-12-12T07:00:00Z"))["due"][0]["type"]
        == "repo_copy_offsite"
    )


def test_a_second_run_due_exits_4_while_one_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = _site(tmp_path)
    monkeypatch.setenv("COLDKEEP_CACHE_DIR", str(site.cache_dir))
    path = lock_path(str(site.config.resolve()))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a running run-due holds it
        os.pwrite(fd, b"4242\n", 0)
        busy = site.run("run-due", env=_at("2026-12-06T06:30:00Z"))
    finally:
        os.close(fd)
    assert busy.returncode == 4, busy.stderr
    assert "`coldkeep run-due` (pid 4242" in busy.stderr
    assert site.json("runs") == []  # nothing ran


def test_install_writes_timers_that_systemd_accepts_and_a_crontab(tmp_path: Path) -> None:
    site = _site(tmp_path)
    units = tmp_path / "units"
    written = site.json("schedule", "install", "--systemd", "--dir", str(units), "--user", "root")["written"]
    names = sorted(Path(p).name for p in written)
    assert names == ["coldkeep-repo-check.service", "coldkeep-repo-check.timer",
                     "coldkeep-repo-copy-offsite.service", "coldkeep-repo-copy-offsite.timer"]  # fmt: skip
    timer = (units / "coldkeep-repo-check.timer").read_text()
    assert "OnCalendar=Sun *-*-* 06:00:00\n" in timer and "Persistent=true\n" in timer
    service = (units / "coldkeep-repo-copy-offsite.service").read_text()
    exec_line = next(line for line in service.splitlines() if line.startswith("ExecStart="))
    assert exec_line.endswith(f"--config {site.config.resolve()} repo copy --to offsite")
    tool = shutil.which("systemd-analyze")
    if tool is not None:
        done = subprocess.run([tool, "verify", *map(str, sorted(units.iterdir()))], capture_output=True,
                              text=True, check=False)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr

    crontab = tmp_path / "coldkeep.cron"
    site.ok("schedule", "install", "--cron", "--out", str(crontab), "--user", "postgres")
    lines = [line for line in crontab.read_text().splitlines() if line and not line.startswith("#")]
    entries = [line.split(None, 6) for line in lines if not re.match(r"^[A-Z]+=", line)]
    assert [(e[:5], e[5]) for e in entries] == [
        (["0", "6", "*", "*", "0"], "postgres"),
        (["0", "7", "*", "*", "*"], "postgres"),
    ]
    assert entries[1][6].endswith("repo copy --to offsite")


def test_jobs_follow_the_services_in_use() -> None:
    base = '[repository]\nurl = "file:///srv/ck"\n'
    assert [j.type for j in jobs(parse_text(base))] == ["repo_check"]
    full = base + '[postgres]\n[conversations]\n[repository.copies.offsite]\nurl = "file:///srv/off"\n'
    assert [j.type for j in jobs(parse_text(full))] == [
        "pg_backup", "pg_expire", "pg_restore_test", "conversations_archive", "repo_check", "repo_copy_offsite",
    ]  # fmt: skip
