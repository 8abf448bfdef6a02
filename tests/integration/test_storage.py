"""`coldkeep storage` (coldkeep.ops.storage): each allocation's used bytes from the cheapest
source (a mount's statvfs, the repository's own figures, a cached scan of a real directory), the
growth per day from the run records of earlier runs and the days until full; the metrics show the
same figures."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.helpers import Site

DAY0 = {"COLDKEEP_NOW": "2026-12-01T00:00:00Z"}
DAY1 = {"COLDKEEP_NOW": "2026-12-02T00:00:00Z"}


def du(path: Path) -> int:
    """``du``'s figure: the bytes allocated to ``path`` and everything below it."""
    done = subprocess.run(["du", "-s", "-B1", str(path)], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[0])


def _site(tmp_path: Path) -> tuple[Site, Path]:
    site = Site(tmp_path / "site")
    data = tmp_path / "alloc"
    (data / "sub").mkdir(parents=True)
    (data / "a.bin").write_bytes(os.urandom(10_000))
    (data / "sub" / "b.bin").write_bytes(os.urandom(3_000))
    with site.config.open("a") as f:
        f.write(
            f'[storage.hot]\npath = "{tmp_path}"\ncapacity = "10MB"\n'
            f'[storage.hot.allocations.data]\npath = "{data}"\nsize = "1MB"\n'
            f'[storage.hot.allocations.repo]\npath = "{site.repo_dir}"\nsize = "5MB"\n'
            '[storage.cold]\npath = "/"\ncapacity = "100PB"\n'
            '[storage.cold.allocations.root]\npath = "/"\nsize = "100PB"\n'
        )
    site.ok("repo", "init")
    return site, data


def _by_key(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f"{r['location']}/{r['name']}": r for r in rows}


def test_storage_figures_growth_and_days_until_full(tmp_path: Path) -> None:
    site, data = _site(tmp_path)
    stats = site.json("repo", "stats")  # what the repository stores before this run records itself
    first = _by_key(site.json("storage", env=DAY0))
    scanned = first["hot/data"]
    assert scanned["source"] == "scan" and scanned["used_bytes"] == du(data)
    assert scanned["allocated_bytes"] == 1_000_000
    assert scanned["percent"] == pytest.approx(100 * du(data) / 1_000_000, abs=0.01)
    assert scanned["growth_bytes_per_day"] is None and scanned["days_until_full"] is None
    assert first["hot/repo"]["source"] == "repository"
    assert first["hot/repo"]["used_bytes"] == stats["stored_bytes"]
    root = first["cold/root"]
    st = os.statvfs("/")
    # the file system's own figure (others write to it meanwhile: within its size, not equal)
    assert root["source"] == "statvfs" and 0 < root["used_bytes"] <= st.f_blocks * st.f_frsize

    before = du(data)
    (data / "c.bin").write_bytes(os.urandom(100_000))
    cached = _by_key(site.json("storage", env=DAY0))["hot/data"]
    assert cached["source"] == "scan-cached" and cached["used_bytes"] == before  # no walk within --max-age

    after = du(data)
    later = _by_key(site.json("storage", env=DAY1))["hot/data"]
    assert later["source"] == "scan" and later["used_bytes"] == after  # a day later: the cache is too old
    # samples at day 0 (twice) and day 1: the least-squares slope is the day's difference
    growth = after - before
    assert later["growth_bytes_per_day"] == pytest.approx(growth, abs=0.1)
    assert later["days_until_full"] == pytest.approx((1_000_000 - after) / growth, abs=0.1)
    assert [r["job"] for r in site.json("runs")].count("storage") == 3

    metrics = {
        (s.name, s.labels.get("allocation")): s.value
        for family in text_string_to_metric_families(site.ok("metrics", env=DAY1).stdout)
        for s in family.samples
    }
    assert metrics[("coldkeep_storage_used_bytes", "data")] == after
    assert metrics[("coldkeep_storage_growth_bytes_per_day", "data")] == pytest.approx(growth)
    assert metrics[("coldkeep_storage_days_until_full", "data")] == pytest.approx(
        (1_000_000 - after) / growth
    )
    assert metrics[("coldkeep_storage_used_bytes", "repo")] == site.json("repo", "stats")["stored_bytes"]
    assert metrics[("coldkeep_storage_used_bytes", "repo")] > stats["stored_bytes"]  # the three records


def test_no_growth_per_day_from_samples_within_a_day(tmp_path: Path) -> None:
    """Two figures an hour apart are no trend: growing 100 KB in that hour is not "2.4 MB a day,
    full in 10 days" (the demo's repository, minutes old, raised a false "full within 14 days")."""
    site, data = _site(tmp_path)
    site.ok("storage", env=DAY0)
    (data / "c.bin").write_bytes(os.urandom(100_000))
    hour = _by_key(site.json("storage", "--max-age", "0", env={"COLDKEEP_NOW": "2026-12-01T01:00:00Z"}))
    assert hour["hot/data"]["source"] == "scan" and hour["hot/data"]["used_bytes"] == du(data)
    assert hour["hot/data"]["growth_bytes_per_day"] is None and hour["hot/data"]["days_until_full"] is None
