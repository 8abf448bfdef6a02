"""``coldkeep status``: the state of everything on one screen, from the same figures as the metrics.

:func:`gather` reads what the metrics read (:func:`coldkeep.ops.metrics.read_inputs`: the run
records, the repository's size, ``pg_stat_archiver``, the storage allocations — one listing, no
scan of the repository's contents) and :func:`build` turns it into

* every scheduled job's last success and its age against the job's schedule (``stale``: no success
  within the schedule's interval; ``late``: its slot passed an hour ago and nothing ran);
* WAL archiving (last archived segment, lag, failures) and the WAL receiver, when the server answers;
* the repository's size and deduplication ratio (logical / stored bytes);
* each storage allocation used / allocated, with the growth per day where it is known (the
  allocation that holds the repository: its stored bytes back in time from the runs' new bytes);
* the last restore test, the last drill's RTO and RPO against the objectives;
* the alerts that would fire now: each rule's Python check (:mod:`coldkeep.ops.alerts`) on the
  metric families the exporter would serve, with the run records as the history of the rules
  that look back (backup sizes over 7 days, storage growth over a day).  ``for:`` durations are
  not waited for: a condition that holds now is shown.

The report (:mod:`coldkeep.ops.report`) is built from the same :class:`Status`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from coldkeep import clock
from coldkeep.config import Config
from coldkeep.ops import metrics
from coldkeep.ops.alerts import all_rules, cron_interval
from coldkeep.ops.runs import RunRecord
from coldkeep.ops.samples import Points, Samples
from coldkeep.ops.schedule import states
from coldkeep.ops.storage import MIN_TREND_S

if TYPE_CHECKING:
    from coldkeep.repository.repository import Repository

DAY = 86400.0
#: a restore test older than this is stale (the ColdkeepRestoreTestStale rule's age)
RESTORE_TEST_MAX_AGE_S = 8 * DAY
#: days until full beyond this are not shown (the growth is too small to say)
FAR_DAYS = 3650


@dataclass
class Status:
    """What ``status`` shows (:meth:`to_json` is its ``--json``)."""

    now: datetime
    records: list[RunRecord] = field(default_factory=list)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    wal: dict[str, Any] | None = None
    repository: dict[str, Any] = field(default_factory=dict)
    storage: list[dict[str, Any]] = field(default_factory=list)
    restore_test: dict[str, Any] | None = None
    drill: dict[str, Any] | None = None
    alerts: list[dict[str, Any]] = field(default_factory=list)
    #: the stored bytes of the allocation holding the repository back in time (the trend)
    stored_history: Points = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "now": clock.isoformat(self.now),
            "jobs": self.jobs,
            "wal": self.wal,
            "repository": self.repository,
            "storage": self.storage,
            "restore_test": self.restore_test,
            "drill": self.drill,
            "alerts": self.alerts,
        }


def gather(config: Config, repo: Repository | None, *, now: datetime | None = None) -> Status:
    """The status of ``config``'s jobs and data (``repo``: ``None`` when it cannot be opened)."""
    return build(config, metrics.read_inputs(config, repo), now=now)


def build(config: Config, inputs: metrics.Inputs, *, now: datetime | None = None) -> Status:
    """The :class:`Status` of ``inputs`` at ``now`` (pure but for the clock)."""
    now = now or clock.now()
    records = sorted(inputs.records, key=lambda r: (r.end, r.name))
    status = Status(now, records)
    status.jobs = _jobs(config, records, now)
    status.wal = _wal(config, inputs, now.timestamp())
    status.repository = _repository(inputs)
    status.stored_history = stored_history(records, inputs.repository.get("stored_bytes"), now.timestamp())
    status.storage = _storage(config, inputs, status.stored_history, now.timestamp())
    status.restore_test = _restore_test(records, now)
    status.drill = _drill(config, records, now)
    status.alerts = firing(config, inputs, status.stored_history, now.timestamp())
    return status


def _age(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else round((now - then).total_seconds(), 1)


def _last_success(records: list[RunRecord], kind: str) -> RunRecord | None:
    return next((r for r in reversed(records) if r.type == kind and r.succeeded), None)


def _jobs(config: Config, records: list[RunRecord], now: datetime) -> list[dict[str, Any]]:
    rows = []
    for state in states(config, records, now):
        good = _last_success(records, state.job.type)
        interval = cron_interval(state.job.cron.expr)
        age = _age(now, good.end if good else None)
        rows.append({
            "type": state.job.type, "cron": state.job.cron.expr, "interval_s": interval,
            "last_run": clock.isoformat(state.last.end) if state.last else None,
            "last_result": state.last.result if state.last else None,
            "last_success": clock.isoformat(good.end) if good else None, "age_s": age,
            "stale": age is None or age > interval, "late": state.late(now),
            "next_run": clock.isoformat(state.next) if state.next else None,
            "record": good.name if good else None,
        })  # fmt: skip
    return rows


def _wal(config: Config, inputs: metrics.Inputs, now: float) -> dict[str, Any] | None:
    if not config.postgres.in_use:
        return None
    a = inputs.archiver
    out: dict[str, Any] = {"server_answered": a is not None, "archive_timeout_s": inputs.archive_timeout_s}
    if a is None:
        return out
    last = a.get("last_archived")
    out.update(
        archived=int(a.get("archived", 0)), failed=int(a.get("failed", 0)),
        last_archived=clock.isoformat(datetime.fromtimestamp(last).astimezone()) if last else None,
        lag_s=round(now - a.get("last_archived", a.get("stats_reset", now)), 1),
        last_failed=clock.isoformat(datetime.fromtimestamp(a["last_failed"]).astimezone()) if "last_failed" in a else None,
        failing=a.get("last_failed", 0.0) > a.get("last_archived", a.get("stats_reset", 0.0)),
        receiver="no slot" if "receiver_up" not in a else "streaming" if a["receiver_up"] else "not streaming",
    )  # fmt: skip
    out["lagging"] = out["lag_s"] > 2 * inputs.archive_timeout_s
    return out


def _repository(inputs: metrics.Inputs) -> dict[str, Any]:
    fig = inputs.repository
    logical, stored = fig.get("logical_bytes"), fig.get("stored_bytes")
    return {
        "readable": inputs.repository_up,
        "snapshots": int(fig["snapshots"]) if "snapshots" in fig else None,
        "logical_bytes": int(logical) if logical is not None else None,
        "stored_bytes": int(stored) if stored is not None else None,
        "dedup_ratio": round(logical / stored, 2) if logical and stored else None,
        "run_records": len(inputs.records),
        "pending_records": sum(1 for r in inputs.records if r.pending),
    }


def stored_history(records: list[RunRecord], stored_now: float | None, now: float) -> Points:
    """The repository's stored bytes at the end of each run, back from ``stored_now`` by the
    bytes each later run newly stored (prunes aside: a lower bound of the growth)."""
    if stored_now is None:
        return []
    points = [(now, float(stored_now))]
    level = float(stored_now)
    for record in reversed(records):
        if record.end.timestamp() > now:
            continue
        points.append((record.end.timestamp(), level))
        level = max(0.0, level - (float(record.new_bytes or 0) if record.succeeded else 0.0))
    return sorted(points)


def _holds_repository(config: Config, path: str) -> bool:
    url = config.repository.url
    return url.startswith("file://") and os.path.realpath(url.removeprefix("file://")) == os.path.realpath(
        path
    )


def _storage(config: Config, inputs: metrics.Inputs, history: Points, now: float) -> list[dict[str, Any]]:
    """Each allocation as :mod:`coldkeep.ops.storage` measured it for the metrics (one place), its
    growth per day and days until full included."""
    rows = []
    for usage in inputs.storage:
        used, allocated = usage.used, usage.allocated
        row: dict[str, Any] = {
            "location": usage.location, "allocation": usage.name, "path": usage.path,
            "allocated_bytes": int(allocated), "used_bytes": int(used) if used is not None else None,
            "used_pct": round(usage.percent, 1) if usage.percent is not None else None,
            "source": usage.source, "growth_per_day": None, "days_until_full": None,
        }  # fmt: skip
        growth = usage.growth_per_day  # ops.storage's: the same figure as `coldkeep storage` and the metrics
        if growth is not None and used is not None:
            row["growth_per_day"] = round(growth)
            days = max(0.0, allocated - used) / growth if growth > 0 else None
            if days is not None and days <= FAR_DAYS:  # beyond: not a forecast worth a number
                row["days_until_full"] = round(days, 1)
        rows.append(row)
    return rows


def _restore_test(records: list[RunRecord], now: datetime) -> dict[str, Any] | None:
    tests = [r for r in records if r.type == "pg_restore_test"]
    if not tests:
        return None
    last, good = tests[-1], _last_success(records, "pg_restore_test")
    age = _age(now, good.end if good else None)
    return {
        "last": clock.isoformat(last.end), "result": last.result, "record": last.name,
        "duration_s": round(last.duration_s, 1), "error": last.error,
        "last_passed": clock.isoformat(good.end) if good else None, "age_s": age,
        "stale": age is None or age > RESTORE_TEST_MAX_AGE_S,
    }  # fmt: skip


def drill_records(records: list[RunRecord]) -> list[RunRecord]:
    """The drills of every scenario, oldest first."""
    return [r for r in records if r.job == "drill"]


def _drill(config: Config, records: list[RunRecord], now: datetime) -> dict[str, Any] | None:
    drills = drill_records(records)
    if not drills:
        return None
    last = drills[-1]
    f = last.figures
    rto = f.get("rto_s", f.get("total_s"))
    rpo = f.get("rpo_s")
    rto_obj = config.drill.rto_objective_s
    rpo_obj = float(config.postgres.archive_timeout) if config.postgres.in_use else None
    return {
        "last": clock.isoformat(last.end), "scenario": last.target or f.get("scenario", ""),
        "result": last.result, "verdict": f.get("verdict", last.result), "record": last.name,
        "age_s": _age(now, last.end), "rto_s": rto, "rto_objective_s": rto_obj,
        "rto_ok": isinstance(rto, int | float) and rto <= rto_obj,
        "projected_rto_s": f.get("projected_rto_s"), "rpo_s": rpo, "rpo_objective_s": rpo_obj,
        "rpo_ok": None if rpo is None or rpo_obj is None else rpo <= rpo_obj, "error": last.error,
    }  # fmt: skip


def samples(config: Config, inputs: metrics.Inputs, history: Points, now: float) -> Samples:
    """The metric families of ``inputs`` as :class:`Samples`, with the run records as history."""
    m = Samples.from_families(metrics.families(inputs, now=now), now)
    sizes: dict[str, Points] = {}
    for record in inputs.records:
        if record.job in metrics.BACKUP_JOBS and record.succeeded and record.logical_bytes is not None:
            sizes.setdefault(record.type, []).append((record.end.timestamp(), float(record.logical_bytes)))
    for kind, points in sizes.items():
        m.add_history("backup_size_bytes", {"type": kind}, points)
    # the repository's stored bytes as the used bytes' history, once it spans a day (a trend of a
    # few minutes of jobs is no growth rate: the rule's `for: 1h` keeps Prometheus quiet then too)
    spans_a_day = len(history) > 1 and history[-1][0] - history[0][0] >= MIN_TREND_S
    for lab, _v in m.select("coldkeep_storage_used_bytes"):
        if spans_a_day and _holds_repository(config, lab.get("path", "")):
            m.add_history("coldkeep_storage_used_bytes", lab, history)
    return m


def firing(config: Config, inputs: metrics.Inputs, history: Points, now: float) -> list[dict[str, Any]]:
    """The alerts whose condition holds now (see the module docstring)."""
    m = samples(config, inputs, history, now)
    out = []
    for rule in all_rules(config):
        for labels in rule.check(m) if rule.check else []:
            summary = rule.summary
            for key, value in labels.items():
                summary = summary.replace(f"{{{{ $labels.{key} }}}}", value)
            out.append({"alert": rule.alert, "severity": rule.severity, "labels": labels, "summary": summary})
    return out
