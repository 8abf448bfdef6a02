"""`coldkeep alerts rules`: the rules file passes `promtool check rules`, and `promtool test rules`
proves every alert fires when its metrics are unhealthy and stays silent when they are healthy
(Debian's real promtool, package `prometheus`)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from tests.helpers import need

from coldkeep.config import parse_text
from coldkeep.ops.alerts import cron_interval, rules_document, rules_yaml

CONFIG = """
[repository]
url = "file:///srv/coldkeep"
[repository.copies.offsite]
url = "file:///srv/offsite"
[postgres]
archive_timeout = 300
[conversations]
"""

POOL = '{location="cold",allocation="postgres_backups",path="/mnt/hdd/coldkeep"}'

#: alert -> (input series when unhealthy, eval time, expected label sets, series when healthy);
#: series are (name{labels}, promtool values), one sample a minute from time 0 unless noted
CASES: dict[str, dict[str, Any]] = {
    "BackupFailed": {
        # pg_backup (daily) last succeeded at time 0: failed after 24 h (+ for 1h); the monthly
        # conversation archive, as old, is within its schedule: per type
        "interval": "5m", "evaluation": "30m",
        "bad": [('backup_last_success_timestamp{type="pg_backup"}', "0x320"),
                ('backup_last_success_timestamp{type="conversations_archive"}', "0x320")],
        "at": "26h", "labels": [{"type": "pg_backup"}],
        "good": [('backup_last_success_timestamp{type="pg_backup"}', "0+300x320"),
                 ('backup_last_success_timestamp{type="conversations_archive"}', "0x320")],
    },
    "BackupMissing": {
        "bad": [('backup_last_success_timestamp{type="conversations_archive"}', "0x150")],
        "at": "2h", "labels": [{"type": "pg_backup"}, {"type": "repo_copy_offsite"}],
        "good": [('backup_last_success_timestamp{type="conversations_archive"}', "0x150"),
                 ('backup_last_success_timestamp{type="pg_backup"}', "0x150"),
                 ('backup_last_success_timestamp{type="repo_copy_offsite"}', "0x150")],
    },
    "BackupSizeAnomalous": {
        "interval": "5m", "evaluation": "5m",
        "bad": [('backup_size_bytes{type="pg_backup"}', "100x120 300x20")],
        "at": "10h30m", "labels": [{"type": "pg_backup"}],
        "good": [('backup_size_bytes{type="pg_backup"}', "100x140")],
    },
    "ColdkeepJobFailed": {
        "bad": [('coldkeep_job_last_run_success{type="pg_expire"}', "0x20")],
        "at": "10m", "labels": [{"type": "pg_expire"}],
        "good": [('coldkeep_job_last_run_success{type="pg_expire"}', "1x20")],
    },
    "ColdkeepRepoCheckFailed": {
        "bad": [('coldkeep_job_last_run_success{type="repo_check"}', "0x5")],
        "at": "1m", "labels": [{"type": "repo_check"}],
        "good": [('coldkeep_job_last_run_success{type="repo_check"}', "1x5"),
                 ('coldkeep_job_last_run_success{type="backup"}', "0x5")],
    },
    "ColdkeepRepositoryUnreadable": {
        "bad": [("coldkeep_repository_up", "0x30")], "at": "20m", "labels": [{}],
        "good": [("coldkeep_repository_up", "1x30")],
    },
    "ColdkeepRunRecordsPending": {
        "bad": [("coldkeep_run_records_pending", "2x90")], "at": "70m", "labels": [{}],
        "good": [("coldkeep_run_records_pending", "0x90")],
    },
    "ColdkeepOffsiteCopyStale": {
        "interval": "5m", "evaluation": "30m",
        "bad": [('coldkeep_job_last_success_timestamp_seconds{type="repo_copy_offsite"}', "0x600")],
        "at": "50h", "labels": [{"type": "repo_copy_offsite"}],
        "good": [('coldkeep_job_last_success_timestamp_seconds{type="repo_copy_offsite"}', "0+300x600")],
    },
    "ColdkeepOffsiteCopyMissing": {
        "bad": [("coldkeep_repository_up", "1x90")], "at": "70m", "labels": [{"type": "repo_copy_offsite"}],
        "good": [('coldkeep_job_last_success_timestamp_seconds{type="repo_copy_offsite"}', "0+60x90")],
    },
    "ColdkeepStorageAlmostFull": {
        "bad": [("coldkeep_storage_used_bytes" + POOL, "900x40"), ("coldkeep_storage_allocated_bytes" + POOL, "1000x40")],
        "at": "40m", "labels": [{"location": "cold", "allocation": "postgres_backups", "path": "/mnt/hdd/coldkeep"}],
        "good": [("coldkeep_storage_used_bytes" + POOL, "500x40"), ("coldkeep_storage_allocated_bytes" + POOL, "1000x40")],
    },
    "ColdkeepStorageFullSoon": {
        # five bytes every 5 minutes: 20,160 more in 14 days, and 10,000 allocated
        "interval": "5m", "evaluation": "30m",
        "bad": [("coldkeep_storage_used_bytes" + POOL, "0+5x320"), ("coldkeep_storage_allocated_bytes" + POOL, "10000x320")],
        "at": "26h", "labels": [{"location": "cold", "allocation": "postgres_backups", "path": "/mnt/hdd/coldkeep"}],
        "good": [("coldkeep_storage_used_bytes" + POOL, "1500x320"), ("coldkeep_storage_allocated_bytes" + POOL, "10000x320")],
    },
    "ColdkeepStorageFullSoon#records": {
        # the run records' trend alone (no day of samples in Prometheus yet): 10 days left
        "bad": [("coldkeep_storage_days_until_full" + POOL, "10x80"), ("coldkeep_storage_used_bytes" + POOL, "100x80"),
                ("coldkeep_storage_allocated_bytes" + POOL, "10000x80")],
        "at": "70m", "labels": [{"location": "cold", "allocation": "postgres_backups", "path": "/mnt/hdd/coldkeep"}],
        "good": [("coldkeep_storage_days_until_full" + POOL, "30x80"), ("coldkeep_storage_used_bytes" + POOL, "100x80"),
                 ("coldkeep_storage_allocated_bytes" + POOL, "10000x80")],
    },
    "ColdkeepDrillStale": {
        "interval": "5m", "evaluation": "1h",  # samples closer than the 5 min look-back
        "bad": [('coldkeep_job_last_success_timestamp_seconds{type="drill"}', "0x10700")],
        "at": "37d", "labels": [{"type": "drill"}],
        "good": [('coldkeep_job_last_success_timestamp_seconds{type="drill"}', "0+300x10700")],
    },
    "ColdkeepDrillRtoOverObjective": {
        "bad": [("coldkeep_drill_rto_seconds", "5000x5")], "at": "1m", "labels": [{}],
        "good": [("coldkeep_drill_rto_seconds", "1200x5")],
    },
    "ColdkeepDrillFailed": {
        "bad": [("coldkeep_drill_passed", "0x5")], "at": "1m", "labels": [{}],
        "good": [("coldkeep_drill_passed", "1x5")],
    },
    "ColdkeepPostgresDown": {
        "bad": [("coldkeep_postgres_up", "0x20")], "at": "15m", "labels": [{}],
        "good": [("coldkeep_postgres_up", "1x20")],
    },
    "ColdkeepWalArchivingFailing": {
        "bad": [("coldkeep_wal_last_failed_timestamp_seconds", "100x20"),
                ("coldkeep_wal_last_archived_timestamp_seconds", "50x20")],
        "at": "10m", "labels": [{}],
        "good": [("coldkeep_wal_last_failed_timestamp_seconds", "100x20"),
                 ("coldkeep_wal_last_archived_timestamp_seconds", "200x20")],
    },
    "ColdkeepWalArchivingLagging": {
        "bad": [("coldkeep_wal_last_archived_timestamp_seconds", "0x30"),
                ("coldkeep_wal_archive_timeout_seconds", "300x30")],
        "at": "20m", "labels": [{}],
        "good": [("coldkeep_wal_last_archived_timestamp_seconds", "0+60x30"),
                 ("coldkeep_wal_archive_timeout_seconds", "300x30")],
    },
    "ColdkeepWalReceiverDown": {
        "bad": [("coldkeep_wal_receiver_up", "0x20")], "at": "10m", "labels": [{}],
        "good": [("coldkeep_wal_receiver_up", "1x20")],
    },
    "ColdkeepRestoreTestStale": {
        "interval": "5m", "evaluation": "1h",
        "bad": [('coldkeep_job_last_success_timestamp_seconds{type="pg_restore_test"}', "0x2900")],
        "at": "10d", "labels": [{"type": "pg_restore_test"}],
        "good": [('coldkeep_job_last_success_timestamp_seconds{type="pg_restore_test"}', "0+300x2900")],
    },
    "ColdkeepRestoreTestFailed": {
        "bad": [("coldkeep_restore_test_passed", "0x5")], "at": "1m", "labels": [{}],
        "good": [("coldkeep_restore_test_passed", "1x5")],
    },
}  # fmt: skip


def _promtool() -> str:
    path = shutil.which("promtool")
    need(path, "promtool (Debian package prometheus) is not installed")
    assert path is not None
    return path


def _rules() -> dict[str, dict[str, Any]]:
    doc = rules_document(parse_text(CONFIG))
    return {rule["alert"]: rule for group in doc["groups"] for rule in group["rules"]}


def _expected(rule: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    summary = re.sub(
        r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], rule["annotations"]["summary"]
    )
    return {"exp_labels": {**rule["labels"], **labels}, "exp_annotations": {"summary": summary}}


def _test_file(alert: str, case: dict[str, Any], rules: dict[str, dict[str, Any]]) -> dict[str, Any]:
    def group(series: list[tuple[str, str]], alerts: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "interval": case.get("interval", "1m"),
            "input_series": [{"series": s, "values": v} for s, v in series],
            "alert_rule_test": [{"eval_time": case["at"], "alertname": alert, "exp_alerts": alerts}],
        }

    fired = [_expected(rules[alert], labels) for labels in case["labels"]]
    return {
        "rule_files": ["rules.yml"],
        "evaluation_interval": case.get("evaluation", "1m"),
        "tests": [group(case["bad"], fired), group(case["good"], [])],
    }


def _alert(case: str) -> str:
    """The alert a case tests (``NAME#variant``: another way the same alert fires)."""
    return case.split("#", 1)[0]


def test_every_alert_has_a_case() -> None:
    assert set(_rules()) == {_alert(c) for c in CASES}


def test_rules_pass_promtool_check(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(rules_yaml(parse_text(CONFIG)))
    done = subprocess.run(
        [_promtool(), "check", "rules", str(rules)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in done.stdout


@pytest.mark.parametrize("alert", sorted(CASES))
def test_alert_fires_when_unhealthy_and_is_silent_when_healthy(alert: str, tmp_path: Path) -> None:
    (tmp_path / "rules.yml").write_text(rules_yaml(parse_text(CONFIG)))
    test = _test_file(_alert(alert), CASES[alert], _rules())
    (tmp_path / "test.yml").write_text(json.dumps(test, indent=1))
    done = subprocess.run([_promtool(), "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True,
                          text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_minimal_config_has_the_spec_rules_without_postgres_ones() -> None:
    doc = rules_document(parse_text('[repository]\nurl = "file:///srv/coldkeep"\n'))
    names = [rule["alert"] for group in doc["groups"] for rule in group["rules"]]
    assert names[:2] == ["BackupFailed", "BackupSizeAnomalous"]  # nothing scheduled is expected yet
    assert "ColdkeepWalArchivingFailing" not in names and "ColdkeepOffsiteCopyMissing" not in names


def test_cron_intervals() -> None:
    assert cron_interval("0 2 * * *") == 86400
    assert cron_interval("0 3 * * 0") == 7 * 86400
    assert cron_interval("0 4 1 * *") == 31 * 86400
    assert cron_interval("*/5 * * * *") == 60
