"""`coldkeep status`, `coldkeep report --html` and the exporter's `/` after real jobs, and the page
opened in a real headless Chromium (Debian's `chromium`): no console errors (the page's CSP turns
any fetch into one), every checklist item and every chart in the DOM the browser built, a
screenshot taken."""

from __future__ import annotations

import re
import shutil
import subprocess
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

from tests.helpers import Site, make_tree, need
from tests.promsite import exporter_process, get

CHARTS = ("backup-sizes", "backup-durations", "wal-lag", "rto", "storage", "storage-trend")
ITEMS = (
    "weekly-postgres-backup", "weekly-wal-archiving", "weekly-checkpoints-archived",
    "weekly-conversations-backed-up", "weekly-restore-test", "weekly-checksums",
    "monthly-database-restore", "monthly-checkpoints-recoverable", "monthly-dataset-restored",
    "monthly-rto", "monthly-integrity",
)  # fmt: skip


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("chromium")
    need(exe, "chromium (Debian package chromium) is not installed")
    assert exe is not None
    profile = tmp_path / "chromium-profile"
    return subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
         f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args],
        capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip


def console_messages(stderr: str) -> list[str]:
    """What the page logged to its console (Chromium logs each as ``…:CONSOLE:…] "text"``)."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


class Dom(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: dict[str, dict[str, str | None]] = {}
        self.svgs = 0
        self.stack: list[str] = []
        self.svg_in: dict[str, int] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids[str(a["id"])] = a
        if tag == "figure":
            self.stack.append(str(a.get("id")))
        if tag == "svg" and self.stack:
            self.svg_in[self.stack[-1]] = self.svg_in.get(self.stack[-1], 0) + 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure" and self.stack:
            self.stack.pop()


def open_in_browser(tmp_path: Path, url: str) -> Dom:
    done = chromium(tmp_path, "--dump-dom", url)
    assert done.returncode == 0, done.stderr[-2000:]
    assert console_messages(done.stderr) == []
    dom = Dom()
    dom.feed(done.stdout)
    for item in ITEMS:
        assert dom.ids[item]["data-state"] in ("ticked", "crossed"), item
    for chart in CHARTS:
        assert dom.svg_in.get(f"chart-{chart}") == 1, chart
    return dom


def report_site(tmp_path: Path) -> Site:
    site = Site(tmp_path / "site")
    with site.config.open("a") as f:
        f.write(f'[checkpoints]\n[storage.cold]\npath = "/mnt/hdd"\ncapacity = "8TB"\n'
                f'[storage.cold.allocations.postgres_backups]\npath = "{site.repo_dir}"\nsize = "2TB"\n')  # fmt: skip
    site.ok("repo", "init")
    data = make_tree(tmp_path / "data", seed=3, small_files=4, big_sizes=(3000,))
    site.ok("backup", str(data))
    site.ok("backup", str(data))
    assert site.run("backup", str(tmp_path / "missing")).returncode != 0
    site.ok("repo", "check", "--read-data")
    return site


def test_status_report_and_exporter_page_open_in_chromium(tmp_path: Path) -> None:
    site = report_site(tmp_path)
    status = site.json("status")
    assert status["repository"]["readable"] and status["repository"]["run_records"] == 4
    assert status["repository"]["dedup_ratio"] > 1  # the same tree twice
    alerts = {a["alert"] for a in status["alerts"]}
    assert "ColdkeepJobFailed" in alerts and "ColdkeepDrillStale" not in alerts  # no drill: no metric
    human = site.ok("status").stdout
    for part in ("jobs", "repository", "storage", "restore test", "drill", "alerts that would fire now"):
        assert part in human, human
    assert re.search(r"cold/postgres_backups\s+[█░]+", human)

    page = tmp_path / "report.html"
    written = site.json("report", "--html", str(page))
    assert written["html"] == str(page)
    dom = open_in_browser(tmp_path, page.as_uri())
    assert dom.ids["weekly-checksums"]["data-state"] == "ticked"  # repo check --read-data above
    assert dom.ids["weekly-postgres-backup"]["data-state"] == "crossed"  # [postgres] not configured
    assert int(dom.ids["chart-backup-sizes"]["data-points"] or 0) == 2

    shot = tmp_path / "report.png"
    done = chromium(tmp_path, "--window-size=1100,2400", f"--screenshot={shot}", page.as_uri())
    assert done.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with exporter_process(site, "--refresh", "3600") as metrics_url:
        root = metrics_url.removesuffix("metrics")
        with urllib.request.urlopen(root, timeout=10) as answer:
            assert answer.headers["Content-Type"].startswith("text/html")
            assert "default-src 'none'" in answer.headers["Content-Security-Policy"]
            served = answer.read().decode()
        assert 'id="weekly-checksums"' in served
        assert "coldkeep_repository_up 1.0" in get(metrics_url)  # the metrics stay at /metrics
        open_in_browser(tmp_path, root)
