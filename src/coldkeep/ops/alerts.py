"""``coldkeep alerts rules``: a Prometheus rules file for the metrics of :mod:`coldkeep.ops.metrics`.

The spec's two rules, fixed:

* ``BackupFailed`` — per type, each with its own allowed age (the interval of its ``[schedule]``
  entry: a weekly job is not "failed" after 24 hours), plus ``BackupMissing``: ``absent()`` for
  every type this configuration expects, so a backup that never succeeded alerts too (the spec's
  rule is silent forever when the metric never appears);
* ``BackupSizeAnomalous`` — the spec's expression (per type through label matching).

Then coldkeep's own: a job whose last run failed, ``repo check`` failing, WAL archiving failing or
lagging past 2 × ``archive_timeout``, PostgreSQL or the WAL receiver down, the restore test older
than 8 days or failed, the drill older than 35 days or over the RTO objective, an allocation over
80 % or full within 14 days at the current growth, the offsite copy older than 2 days, the
repository unreadable, run records stuck locally.

Every rule has a ``promtool test rules`` unit test (tests/unit/test_alert_rules.py): it fires
when unhealthy and stays silent when healthy.  Annotations use only ``$labels`` (no ``$value``),
so they stay stable while an alert fires.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from coldkeep.config import Config
from coldkeep.ops.runs import job_type
from coldkeep.ops.samples import (
    Labels,
    Samples,
    absent,
    avg_over_time,
    compare,
    is_,
    older_than,
    predict_linear,
    ratio_over,
)

#: a rule's Python evaluation: the label sets it fires for on these samples (``for`` aside)
Check = Callable[[Samples], list[Labels]]

DAY = 86400
#: the spec's recovery time objective (1 hour)
RTO_OBJECTIVE_S = 3600
#: the longest interval a five-field cron entry can have between runs, by its shape
_MONTH = 31 * DAY


def cron_interval(expr: str) -> int:
    """The longest gap between two runs of a cron entry, in seconds (coarse: a day-of-month
    entry is monthly, a day-of-week entry weekly, an hour list daily, else hourly)."""
    minute, hour, dom, month, dow = expr.split()
    if month != "*":
        return 366 * DAY
    if dom != "*":
        return _MONTH
    if dow != "*":
        return 7 * DAY
    if hour != "*" and "/" not in hour:
        return DAY
    return 3600 if minute.isdigit() else 60


@dataclass
class Rule:
    alert: str
    expr: str
    for_: str
    severity: str
    summary: str
    labels: dict[str, str] = field(default_factory=dict)
    #: the same condition as ``expr``, in Python (``coldkeep status`` evaluates it)
    check: Check | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "alert": self.alert,
            "expr": self.expr,
            "for": self.for_,
            "labels": {"severity": self.severity, **self.labels},
            "annotations": {"summary": self.summary},
        }


def expected_backups(config: Config) -> dict[str, int]:
    """``type -> allowed age (s)`` of the backups this configuration schedules."""
    sched = config.schedule
    wanted: dict[str, int] = {}
    if config.postgres.in_use and sched.pg_backup:
        wanted[job_type("pg backup")] = cron_interval(sched.pg_backup)
    if config.conversations.in_use and sched.conversations_archive:
        wanted[job_type("conversations archive")] = cron_interval(sched.conversations_archive)
    if config.checkpoints.in_use and sched.checkpoints_archive:
        wanted[job_type("checkpoints archive")] = cron_interval(sched.checkpoints_archive)
    if sched.repo_copy:
        for name in sorted(config.repository.copies):
            wanted[job_type("repo copy", name)] = cron_interval(sched.repo_copy)
    return wanted


def _or(parts: list[str]) -> str:
    return "\n  or\n".join(parts) if len(parts) > 1 else parts[0]


def _types(types: list[str]) -> str:
    return "|".join(sorted(types))


def backup_rules(config: Config) -> list[Rule]:
    """The spec's two rules, fixed (see the module docstring)."""
    expected = expected_backups(config)
    by_age: dict[int, list[str]] = {}
    for kind, age in expected.items():
        by_age.setdefault(age, []).append(kind)
    parts = [f'time() - backup_last_success_timestamp{{type=~"{_types(kinds)}"}} > {age}'
             for age, kinds in sorted(by_age.items())]  # fmt: skip
    other = f'{{type!~"{_types(list(expected))}"}}' if expected else ""
    parts.append(f"time() - backup_last_success_timestamp{other} > {DAY}")

    def failed(m: Samples) -> list[Labels]:
        name = "backup_last_success_timestamp"
        out = [
            lab
            for age, kinds in sorted(by_age.items())
            for lab in older_than(m, name, age, is_("type", *kinds))
        ]
        return out + older_than(m, name, DAY, lambda lab: lab.get("type", "") not in expected)

    rules = [
        Rule(
            "BackupFailed",
            _or(parts),
            "1h",
            "critical",
            "Backup {{ $labels.type }} has not succeeded within its schedule",
            check=failed,
        ),
    ]
    if expected:
        absent_ = [f'absent(backup_last_success_timestamp{{type="{kind}"}})' for kind in sorted(expected)]
        rules.append(Rule("BackupMissing", _or(absent_), "1h", "critical",
                          "Backup {{ $labels.type }} has never succeeded (no metric)",
                          check=lambda m: [lab for kind in sorted(expected)
                                           for lab in absent(m, "backup_last_success_timestamp", {"type": kind})]))  # fmt: skip
    rules.append(Rule(
        "BackupSizeAnomalous",
        "abs(backup_size_bytes - avg_over_time(backup_size_bytes[7d])) > 0.5 * avg_over_time(backup_size_bytes[7d])",
        "10m", "warning", "Backup {{ $labels.type }} size is anomalous (>50% deviation from 7-day average)",
        check=_size_anomalous,
    ))  # fmt: skip
    return rules


def _size_anomalous(m: Samples) -> list[Labels]:
    out = []
    for lab, value in m.select("backup_size_bytes"):
        avg = avg_over_time(m.window("backup_size_bytes", lab, 7 * DAY))
        if avg is not None and abs(value - avg) > 0.5 * avg:
            out.append(lab)
    return out


def _full_soon(m: Samples) -> list[Labels]:
    allocated = {tuple(sorted(lab.items())): v for lab, v in m.select("coldkeep_storage_allocated_bytes")}
    out = []
    for lab, _v in m.select("coldkeep_storage_used_bytes"):
        ahead = predict_linear(m.window("coldkeep_storage_used_bytes", lab, DAY), m.now, 14 * DAY)
        size = allocated.get(tuple(sorted(lab.items())))
        if ahead is not None and size is not None and ahead > size:
            out.append(lab)
    # `or`: the run records' trend adds the series whose label set the left side does not have
    seen = {tuple(sorted(lab.items())) for lab in out}
    for lab in compare(m, "coldkeep_storage_days_until_full", lambda v: v < 14):
        if tuple(sorted(lab.items())) not in seen:
            out.append(lab)
    return out


def _is_copy(lab: Labels) -> bool:
    return lab.get("type", "").startswith("repo_copy_") and len(lab["type"]) > len("repo_copy_")


def _is_drill(lab: Labels) -> bool:
    kind = lab.get("type", "")
    return kind == "drill" or kind.startswith("drill_")


def coldkeep_rules(config: Config) -> list[Rule]:
    rto = float(config.drill.rto_objective_s or RTO_OBJECTIVE_S)  # [drill] rto_objective
    rules = [
        Rule("ColdkeepJobFailed", "coldkeep_job_last_run_success == 0", "5m", "warning",
             "coldkeep job {{ $labels.type }}: its last run failed (`coldkeep runs --job {{ $labels.type }}`)",
             check=lambda m: compare(m, "coldkeep_job_last_run_success", lambda v: v == 0)),
        Rule("ColdkeepRepoCheckFailed", 'coldkeep_job_last_run_success{type="repo_check"} == 0', "0m", "critical",
             "coldkeep repo check found problems (`coldkeep runs --job repo_check`)",
             check=lambda m: compare(m, "coldkeep_job_last_run_success", lambda v: v == 0, is_("type", "repo_check"))),
        Rule("ColdkeepRepositoryUnreadable", "coldkeep_repository_up == 0", "15m", "critical",
             "coldkeep cannot read its repository",
             check=lambda m: compare(m, "coldkeep_repository_up", lambda v: v == 0)),
        Rule("ColdkeepRunRecordsPending", "coldkeep_run_records_pending > 0", "1h", "warning",
             "coldkeep run records could not be written to the repository for an hour",
             check=lambda m: compare(m, "coldkeep_run_records_pending", lambda v: v > 0)),
        Rule("ColdkeepOffsiteCopyStale",
             f'time() - coldkeep_job_last_success_timestamp_seconds{{type=~"repo_copy_.+"}} > {2 * DAY}',
             "1h", "critical", "Offsite copy {{ $labels.type }} is older than 2 days",
             check=lambda m: older_than(m, "coldkeep_job_last_success_timestamp_seconds", 2 * DAY, _is_copy)),
        Rule("ColdkeepStorageAlmostFull", "coldkeep_storage_used_bytes / coldkeep_storage_allocated_bytes > 0.8",
             "30m", "warning", "Allocation {{ $labels.location }}/{{ $labels.allocation }} is over 80 % full",
             check=lambda m: ratio_over(m, "coldkeep_storage_used_bytes", "coldkeep_storage_allocated_bytes", 0.8)),
        # Prometheus's own trend of the last day, or the run records' (coldkeep storage, 30 days)
        Rule("ColdkeepStorageFullSoon",
             f"predict_linear(coldkeep_storage_used_bytes[1d], {14 * DAY}) > coldkeep_storage_allocated_bytes"
             " or coldkeep_storage_days_until_full < 14",
             "1h", "warning", "Allocation {{ $labels.location }}/{{ $labels.allocation }} is full within 14 days at its growth",
             check=_full_soon),
        Rule("ColdkeepDrillStale",
             f'time() - coldkeep_job_last_success_timestamp_seconds{{type=~"drill|drill_.+"}} > {35 * DAY}',
             "1h", "warning", "No successful recovery drill for 35 days",
             check=lambda m: older_than(m, "coldkeep_job_last_success_timestamp_seconds", 35 * DAY, _is_drill)),
        Rule("ColdkeepDrillRtoOverObjective", f"coldkeep_drill_rto_seconds > {rto:g}", "0m", "warning",
             f"The last drill took longer to recover than the objective ({config.drill.rto_objective})",
             check=lambda m: compare(m, "coldkeep_drill_rto_seconds", lambda v: v > rto)),
        Rule("ColdkeepDrillFailed", "coldkeep_drill_passed == 0", "0m", "critical", "The last recovery drill failed",
             check=lambda m: compare(m, "coldkeep_drill_passed", lambda v: v == 0)),
    ]  # fmt: skip
    copies = [job_type("repo copy", name) for name in sorted(config.repository.copies)]
    if copies:
        rules.append(Rule("ColdkeepOffsiteCopyMissing",
                          _or([f'absent(coldkeep_job_last_success_timestamp_seconds{{type="{c}"}})' for c in copies]),
                          "1h", "critical", "Offsite copy {{ $labels.type }} has never succeeded",
                          check=lambda m: [lab for c in copies for lab in
                                           absent(m, "coldkeep_job_last_success_timestamp_seconds", {"type": c})]))  # fmt: skip
    if config.postgres.in_use:
        rules += postgres_rules()
    return rules


def _archiving_failing(m: Samples) -> list[Labels]:
    failed = m.value("coldkeep_wal_last_failed_timestamp_seconds")
    archived = m.value("coldkeep_wal_last_archived_timestamp_seconds")
    return [{}] if failed is not None and archived is not None and failed > archived else []


def _archiving_lagging(m: Samples) -> list[Labels]:
    archived = m.value("coldkeep_wal_last_archived_timestamp_seconds")
    timeout = m.value("coldkeep_wal_archive_timeout_seconds")
    return [{}] if archived is not None and timeout is not None and m.now - archived > 2 * timeout else []


def postgres_rules() -> list[Rule]:
    test = 'type="pg_restore_test"'
    last_ok = "coldkeep_job_last_success_timestamp_seconds"
    return [
        Rule("ColdkeepPostgresDown", "coldkeep_postgres_up == 0", "10m", "critical",
             "coldkeep cannot reach PostgreSQL (pg_stat_archiver unread)",
             check=lambda m: compare(m, "coldkeep_postgres_up", lambda v: v == 0)),
        Rule("ColdkeepWalArchivingFailing",
             "coldkeep_wal_last_failed_timestamp_seconds > coldkeep_wal_last_archived_timestamp_seconds",
             "5m", "critical", "WAL archiving is failing (the last attempt failed)", check=_archiving_failing),
        Rule("ColdkeepWalArchivingLagging",
             "time() - coldkeep_wal_last_archived_timestamp_seconds > 2 * coldkeep_wal_archive_timeout_seconds",
             "5m", "critical", "No WAL segment archived for over 2 x archive_timeout", check=_archiving_lagging),
        Rule("ColdkeepWalReceiverDown", "coldkeep_wal_receiver_up == 0", "5m", "critical",
             "The WAL receiver (pg receive-wal) is not streaming",
             check=lambda m: compare(m, "coldkeep_wal_receiver_up", lambda v: v == 0)),
        Rule("ColdkeepRestoreTestStale",
             f"time() - {last_ok}{{{test}}} > {8 * DAY}"
             f"\n  or\nabsent({last_ok}{{{test}}})",
             "1h", "warning", "No passed restore test for 8 days",
             check=lambda m: older_than(m, last_ok, 8 * DAY, is_("type", "pg_restore_test"))
             + absent(m, last_ok, {"type": "pg_restore_test"})),
        Rule("ColdkeepRestoreTestFailed", "coldkeep_restore_test_passed == 0", "0m", "critical",
             "The last restore test failed",
             check=lambda m: compare(m, "coldkeep_restore_test_passed", lambda v: v == 0)),
    ]  # fmt: skip


def all_rules(config: Config) -> list[Rule]:
    """Every rule of the rules file, in its order."""
    return backup_rules(config) + coldkeep_rules(config)


def rules_document(config: Config) -> dict[str, Any]:
    return {
        "groups": [
            {"name": "backup_alerts", "rules": [r.to_json() for r in backup_rules(config)]},
            {"name": "coldkeep", "rules": [r.to_json() for r in coldkeep_rules(config)]},
        ]
    }


def to_yaml(doc: Any, indent: int = 0) -> str:
    """A small YAML writer for the rules document (mappings, lists, strings, numbers): strings
    are JSON-quoted (valid YAML), multi-line ones literal blocks."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            if isinstance(value, dict | list) and value:
                lines.append(f"{pad}{key}:")
                lines.append(to_yaml(value, indent + 2))
            elif isinstance(value, str) and "\n" in value:
                lines.append(f"{pad}{key}: |-")
                lines.extend(f"{pad}  {line}" for line in value.split("\n"))
            else:
                lines.append(f"{pad}{key}: {json.dumps(value)}")
    elif isinstance(doc, list):
        for item in doc:
            body = to_yaml(item, indent + 2)
            lines.append(f"{pad}- {body.lstrip()}")
    else:
        lines.append(f"{pad}{json.dumps(doc)}")
    return "\n".join(lines)


def rules_yaml(config: Config) -> str:
    head = (
        "# coldkeep alert rules: `coldkeep alerts rules` (regenerate after changing [schedule] or copies)\n"
    )
    return head + to_yaml(rules_document(config)) + "\n"
