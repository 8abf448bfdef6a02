"""``coldkeep status`` and ``coldkeep report`` content (coldkeep.ops.status, .checklist, .report)
from synthetic run records written into a real local repository: jobs against their schedule,
the drill's RTO/RPO against the objectives, the alerts that would fire, storage trend, and every
checklist box ticked with a link to the record that proves it or crossed with the reason."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from coldkeep.config import Config, parse_text
from coldkeep.ops import metrics
from coldkeep.ops.checklist import checklists
from coldkeep.ops.report import render_report
from coldkeep.ops.runs import RunRecord, write_record
from coldkeep.ops.status import Status, build, gather
from coldkeep.repository.crypto import KdfParams
from coldkeep.repository.repository import Repository
from coldkeep.storage.local import LocalBackend

FAST_KDF = KdfParams(memory_kib=8 * 1024, iterations=1, lanes=1)
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
GB = 10**9


def config_for(repo_dir: Path, extra: str = "") -> Config:
    return parse_text(f"""
[repository]
url = "file://{repo_dir}"
[postgres]
dsn = "host=/nonexistent-coldkeep-socket port=1 dbname=x"
archive_timeout = 300
[conversations]
[checkpoints]
[storage.cold]
path = "/mnt/hdd"
capacity = "8TB"
[storage.cold.allocations.postgres_backups]
path = "{repo_dir}"
size = "2TB"
[storage.cold.allocations.dataset_snapshots]
path = "/nonexistent-coldkeep-alloc"
size = "2TB"
{extra}""")


@pytest.fixture()
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Repository:
    monkeypatch.setenv("COLDKEEP_CACHE_DIR", str(tmp_path / "cache"))
    r = Repository.init(LocalBackend(tmp_path / "repo"), passphrase=None, kdf_params=FAST_KDF)
    yield r
    r.close()


def rec(job: str, ago: timedelta, result: str = "ok", *, target: str = "", seconds: float = 60.0,
        logical: int | None = None, new: int | None = None, error: str = "", **figures: Any) -> RunRecord:  # fmt: skip
    end = NOW - ago
    return RunRecord(job=job, start=end - timedelta(seconds=seconds), end=end, result=result,  # type: ignore[arg-type]
                     target=target, logical_bytes=logical, new_bytes=new, figures=figures, error=error,
                     error_class="Failed" if result == "failed" else "", exit_code=0 if result == "ok" else 3)  # fmt: skip


def healthy_records() -> list[RunRecord]:
    d = timedelta(days=1)
    out = [
        rec("pg backup", i * d + timedelta(hours=10), logical=(10 + i) * GB, new=GB // 10)
        for i in range(6, -1, -1)
    ]
    out += [
        rec("pg restore-test", 3 * d),
        rec("checkpoints archive", 2 * d, logical=50 * GB, new=5 * GB),
        rec("conversations archive", 4 * d, logical=GB, new=GB // 2),
        rec("repo check", 1 * d, packs_read=12, bytes_read=3 * GB),
        rec("pg expire", timedelta(hours=9, minutes=30)),
        rec("repo copy", timedelta(hours=5), target="offsite"),
        rec("drill", 10 * d, target="database", ok=True, verdict="passed", rto_s=1500.0, rpo_s=2.5),
        rec("drill", 9 * d, target="checkpoint", ok=True, verdict="passed", rto_s=600.0),
        rec("drill", 9 * d, target="dataset", ok=True, verdict="passed", rto_s=300.0),
        rec("drill", 8 * d, target="full", ok=True, verdict="passed", rto_s=2400.0, rpo_s=3.0),
    ]
    return out


def store(repo: Repository, records: list[RunRecord]) -> None:
    for r in records:
        write_record(repo, r)


def healthy_status(repo: Repository, tmp_path: Path) -> tuple[Config, Status]:
    cfg = config_for(tmp_path / "repo")
    store(repo, healthy_records())
    inputs = metrics.read_inputs(cfg, repo)
    assert inputs.archiver is None  # no server: a reading is given below
    inputs.archiver = {
        "archived": 120.0,
        "failed": 0.0,
        "last_archived": NOW.timestamp() - 60,
        "receiver_up": 1.0,
    }
    return cfg, build(cfg, inputs, now=NOW)


def by_id(status_items: dict[str, list[Any]]) -> dict[str, Any]:
    return {i.id: i for items in status_items.values() for i in items}


def test_status_of_a_healthy_site(repo: Repository, tmp_path: Path) -> None:
    _cfg, status = healthy_status(repo, tmp_path)
    jobs = {j["type"]: j for j in status.jobs}
    assert jobs["pg_backup"]["age_s"] == 10 * 3600 and not jobs["pg_backup"]["stale"]
    assert jobs["checkpoints_archive"]["interval_s"] == 7 * 86400 and not jobs["checkpoints_archive"]["stale"]
    assert jobs["conversations_archive"]["last_success"] is not None
    assert status.wal is not None and status.wal["lag_s"] == 60 and not status.wal["lagging"]
    assert status.wal["receiver"] == "streaming"
    r = status.repository
    assert r["readable"] and r["run_records"] == len(healthy_records())
    assert status.restore_test is not None and not status.restore_test["stale"]
    d = status.drill
    assert d is not None and d["scenario"] == "full" and d["rto_s"] == 2400.0 and d["rto_ok"]
    assert d["rpo_s"] == 3.0 and d["rpo_objective_s"] == 300 and d["rpo_ok"]
    assert [a["alert"] for a in status.alerts] == []
    # the allocation holding the repository: used = the repository's stored bytes, with a trend
    alloc = {s["allocation"]: s for s in status.storage}
    assert alloc["postgres_backups"]["used_bytes"] == r["stored_bytes"]
    assert alloc["dataset_snapshots"]["used_bytes"] is None
    assert alloc["postgres_backups"]["growth_per_day"] is not None


def test_alerts_fire_for_what_is_unhealthy(repo: Repository, tmp_path: Path) -> None:
    cfg = config_for(tmp_path / "repo", '[drill]\nrto_objective = "1h"\n')
    d = timedelta(days=1)
    store(repo, [
        rec("pg backup", 3 * d, logical=10 * GB),
        rec("pg backup", 2 * d, "failed", error="server unreachable"),
        rec("pg restore-test", 12 * d),
        rec("repo check", d, "failed", error="pack damaged"),
        rec("drill", 2 * d, target="database", ok=True, verdict="over-objective", rto_s=5000.0),
        rec("drill", d, "failed", target="database", ok=False, verdict="failed", rto_s=100.0),
    ])  # fmt: skip
    inputs = metrics.read_inputs(cfg, repo)
    status = build(cfg, inputs, now=NOW)
    fired = {(a["alert"], a["labels"].get("type", "")) for a in status.alerts}
    assert {
        ("BackupFailed", "pg_backup"),  # 3 days old, daily schedule
        ("BackupMissing", "conversations_archive"),
        ("ColdkeepJobFailed", "pg_backup"),
        ("ColdkeepRepoCheckFailed", "repo_check"),
        ("ColdkeepRestoreTestStale", "pg_restore_test"),
        ("ColdkeepDrillFailed", ""),
        ("ColdkeepPostgresDown", ""),  # the configured server does not answer
    } <= fired
    assert status.wal == {"server_answered": False, "archive_timeout_s": 300.0}
    assert status.drill is not None and status.drill["verdict"] == "failed"
    jobs = {j["type"]: j for j in status.jobs}
    assert jobs["pg_backup"]["stale"] and jobs["pg_backup"]["last_result"] == "failed"
    # the summary names the type
    assert any(
        a["summary"] == "Backup pg_backup has not succeeded within its schedule" for a in status.alerts
    )


def test_drill_metrics_count_every_scenario(repo: Repository, tmp_path: Path) -> None:
    store(repo, [rec("drill", timedelta(hours=1), target="database", ok=True, rto_s=1234.0, rpo_s=1.5)])
    samples = {s.name: s.value for f in metrics.families(metrics.read_inputs(config_for(tmp_path / "repo"), repo))
               for s in f.samples}  # fmt: skip
    assert samples["coldkeep_drill_rto_seconds"] == 1234.0 and samples["coldkeep_drill_passed"] == 1.0


def test_checklists_tick_every_box_from_evidence(repo: Repository, tmp_path: Path) -> None:
    cfg, status = healthy_status(repo, tmp_path)
    items = by_id(checklists(cfg, status))
    assert len(items) == 11
    crossed = {k: i.detail for k, i in items.items() if not i.ok}
    assert crossed == {}
    names = {r.name: r for r in status.records}
    for item in items.values():
        if item.id != "weekly-wal-archiving":  # the live pg_stat_archiver reading, no record
            assert item.evidence and all(e in names for e in item.evidence), item
    assert names[items["weekly-restore-test"].evidence[0]].job == "pg restore-test"
    assert names[items["monthly-rto"].evidence[0]].target == "full"


def test_checklists_cross_with_the_reason(repo: Repository, tmp_path: Path) -> None:
    cfg = parse_text(f'[repository]\nurl = "file://{tmp_path / "repo"}"\n[checkpoints]\n')
    d = timedelta(days=1)
    store(repo, [
        rec("repo check", d),  # structure only
        rec("checkpoints archive", 20 * d, logical=GB),
        rec("checkpoints archive", 2 * d, "failed", error="disk full"),
        rec("drill", 3 * d, target="database", ok=True, verdict="passed", rto_s=900.0),
    ])  # fmt: skip
    status = gather(cfg, repo, now=NOW)
    items = by_id(checklists(cfg, status))
    assert not any(i.ok for k, i in items.items() if k != "monthly-database-restore")
    assert items["monthly-database-restore"].ok
    assert "[postgres] is not configured" in items["weekly-postgres-backup"].detail
    assert "disk full" in items["weekly-checkpoints-archived"].detail
    assert items["weekly-checkpoints-archived"].evidence  # the failed run, linked
    assert "structure only" in items["weekly-checksums"].detail
    assert "no full drill" in items["monthly-rto"].detail and "900.0 s" in items["monthly-rto"].detail
    assert items["monthly-checkpoints-recoverable"].detail == "no drill --scenario checkpoint recorded"


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: dict[str, dict[str, str | None]] = {}
        self.hrefs: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        a = dict(attrs)
        if a.get("id"):
            self.ids[str(a["id"])] = a
        if tag == "a" and a.get("href"):
            self.hrefs.append(str(a["href"]))


def test_report_is_self_contained_and_links_its_evidence(repo: Repository, tmp_path: Path) -> None:
    cfg, status = healthy_status(repo, tmp_path)
    page = render_report(cfg, status, repo)
    parser = _Page()
    parser.feed(page)
    assert "script" not in parser.tags and not re.search(r"""(src|href)=["'](https?:)?//""", page)
    for chart in ("backup-sizes", "backup-durations", "wal-lag", "rto", "storage", "storage-trend"):
        assert f"chart-{chart}" in parser.ids
    assert int(parser.ids["chart-backup-sizes"]["data-points"] or 0) == 9  # 7 pg backups, 2 archives
    assert int(parser.ids["chart-rto"]["data-points"] or 0) == 4
    items = by_id(checklists(cfg, status))
    for item_id in items:
        assert parser.ids[item_id]["data-state"] == "ticked"
    for href in parser.hrefs:  # every evidence link lands on a run record's row
        assert href.startswith("#run-") and href[1:] in parser.ids
    assert len(parser.hrefs) >= 10
    assert "checkpoint-inventory" in parser.ids


def test_report_escapes_recorded_text(repo: Repository, tmp_path: Path) -> None:
    cfg = config_for(tmp_path / "repo")
    store(repo, [rec("pg backup", timedelta(hours=1), "failed", error="<script>alert(1)</script>")])
    page = render_report(cfg, gather(cfg, repo, now=NOW), repo)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_status_without_a_readable_repository_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLDKEEP_CACHE_DIR", str(tmp_path / "cache"))
    cfg = parse_text(f'[repository]\nurl = "file://{tmp_path / "nothing"}"\n')
    status = gather(cfg, None, now=NOW)
    assert status.repository["readable"] is False
    assert [a["alert"] for a in status.alerts] == ["ColdkeepRepositoryUnreadable"]
    page = render_report(cfg, status, None)
    assert "the repository could not be read" in page
    assert all(not i.ok for i in by_id(checklists(cfg, status)).values())


def test_every_linked_record_is_listed_even_past_the_newest(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from coldkeep.ops import report

    monkeypatch.setattr(report, "RUNS_SHOWN", 3)  # the newest 3 of 17: the evidence is older
    cfg, status = healthy_status(repo, tmp_path)
    parser = _Page()
    parser.feed(render_report(cfg, status, repo))
    rows = [i for i in parser.ids if i.startswith("run-")]
    assert 3 < len(rows) < len(status.records)
    assert parser.hrefs and all(href[1:] in parser.ids for href in parser.hrefs)
    assert "tiers" in parser.ids and "jobs" in parser.ids
