"""A real Prometheus (Debian's `prometheus`) on 127.0.0.1 scrapes `coldkeep exporter` with the
rules of `coldkeep alerts rules`: a failing `repo check` makes ColdkeepRepoCheckFailed fire in
Prometheus's own API, and a passing one resolves it."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.helpers import Site, flip_byte, make_tree, need
from tests.promsite import exporter_process, free_port, get, wait_http

ALERT = "ColdkeepRepoCheckFailed"


@contextmanager
def prometheus(tmp_path: Path, target: str, rules: Path) -> Iterator[str]:
    binary = shutil.which("prometheus")
    need(binary, "prometheus (Debian package) is not installed")
    assert binary is not None
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": "coldkeep", "static_configs": [{"targets": [target]}]}],
    }))  # fmt: skip
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/-/ready", proc, tries=600)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def alert_states(prom: str) -> dict[str, str]:
    data: dict[str, Any] = json.loads(get(prom + "/api/v1/alerts"))
    return {a["labels"]["alertname"]: a["state"] for a in data["data"]["alerts"]}


def wait_for(prom: str, condition: str, check: Any, tries: int = 600) -> None:
    """Poll Prometheus's API until ``check(states)`` holds (a wait, not a timing assertion)."""
    states: dict[str, str] = {}
    for _ in range(tries):
        states = alert_states(prom)
        if check(states):
            return
        time.sleep(0.2)
    raise AssertionError(f"Prometheus never showed {condition}: {states}")


def test_prometheus_sees_a_failing_repo_check_fire_and_resolve(tmp_path: Path) -> None:
    site = Site(tmp_path / "site")
    site.ok("repo", "init")
    site.ok("backup", str(make_tree(tmp_path / "data", seed=11, small_files=3, big_sizes=(5000,))))
    site.ok("repo", "check")
    rules = tmp_path / "rules.yml"
    site.ok("alerts", "rules", "--out", str(rules))

    with (
        exporter_process(site, "--refresh", "0.5") as url,
        prometheus(tmp_path, url.split("/")[2], rules) as prom,
    ):
        wait_for(prom, "the target scraped", lambda s: json.loads(
            get(prom + '/api/v1/query?query=coldkeep_job_last_run_success%7Btype%3D%22repo_check%22%7D')
        )["data"]["result"])  # fmt: skip
        assert ALERT not in alert_states(prom)

        pack = next(p for p in sorted((site.repo_dir / "data").rglob("*")) if p.is_file())
        at = flip_byte(pack)
        assert site.run("repo", "check", "--read-data").returncode == 3
        wait_for(prom, f"{ALERT} firing", lambda s: s.get(ALERT) == "firing")

        flip_byte(pack, at)  # repaired
        site.ok("repo", "check", "--read-data")
        wait_for(prom, f"{ALERT} resolved", lambda s: ALERT not in s)
