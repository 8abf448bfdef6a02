"""The spec's weekly and monthly checklists, each box decided from recorded evidence.

Weekly backup validation (evidence within the last 8 days, a week and a day of slack, as the
restore-test alert; a job scheduled less often than weekly, such as the monthly conversation
archive, within its own interval and a day):

* PostgreSQL backup completed successfully — a ``pg backup`` run that succeeded;
* WAL archiving operational — ``pg_stat_archiver`` now: archiving, not failing, lag within
  2 × ``archive_timeout`` (the live reading: WAL archiving has no run record);
* Model checkpoints archived — a ``checkpoints archive`` (or ``checkpoints backup``) run;
* Conversation data backed up — a ``conversations archive`` run;
* Restore test passed — a ``pg restore-test`` run that passed;
* All checksums valid — a ``repo check`` that read the data (``--read-data``) and found nothing.

Monthly disaster recovery test (evidence within 35 days, as the drill alert):

* Full database restore successful — a drill of scenario ``database`` or ``full`` whose checks passed;
* Model checkpoints recoverable from archives — a drill of scenario ``checkpoint`` or ``full``;
* Dataset snapshot restored — a drill of scenario ``dataset`` or ``full``;
* System operational within 1 hour RTO — a ``full`` drill that passed within ``[drill] rto_objective``
  (measured and projected): a database drill alone is not the whole system;
* All data integrity checks passed — the newest drill's checks all passed and a ``repo check
  --read-data`` passed.

A box is ticked only with its evidence (the run records' names, linked from the report) and
crossed otherwise, with the reason (nothing recorded, the last run failed and why, not configured).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from coldkeep import clock
from coldkeep.config import Config
from coldkeep.ops.alerts import cron_interval
from coldkeep.ops.runs import RunRecord
from coldkeep.ops.status import Status, drill_records

WEEK = timedelta(days=8)
MONTH = timedelta(days=35)


@dataclass
class Item:
    id: str
    text: str
    ok: bool
    detail: str = ""
    evidence: list[str] = field(default_factory=list)  # run record names


def _newest(
    records: list[RunRecord], since: datetime, match: Callable[[RunRecord], bool]
) -> RunRecord | None:
    return next((r for r in reversed(records) if r.end >= since and match(r)), None)


def _from_runs(
    iid: str, text: str, status: Status, window: timedelta, match: Callable[[RunRecord], bool], what: str
) -> Item:
    """Ticked by the newest successful run ``match`` accepts within ``window``; else crossed with
    what the newest such run (of any result) says."""
    since = status.now - window
    good = _newest(status.records, since, lambda r: match(r) and r.result == "ok")
    if good is not None:
        return Item(iid, text, True, f"{what} {clock.isoformat(good.end)}", [good.name])
    last = _newest(status.records, datetime.min.replace(tzinfo=status.now.tzinfo), match)
    days = window.days
    if last is None:
        return Item(iid, text, False, f"no {what} recorded")
    why = (
        f"no successful {what} in the last {days} days; the last, {clock.isoformat(last.end)}, {last.result}"
    )
    if last.error or last.error_class:
        why += f": {last.error_class} {last.error}".rstrip()
    return Item(iid, text, False, why, [last.name])


def _job(*types: str) -> Callable[[RunRecord], bool]:
    return lambda r: r.type in types


def _drill(*scenarios: str) -> Callable[[RunRecord], bool]:
    return lambda r: r.job == "drill" and r.target in scenarios


def _not_configured(iid: str, text: str, section: str) -> Item:
    return Item(iid, text, False, f"[{section}] is not configured: nothing to check")


def _window(entry: str) -> timedelta:
    """8 days, or a less frequent schedule's interval and a day."""
    if not entry:
        return WEEK
    return max(WEEK, timedelta(seconds=cron_interval(entry)) + timedelta(days=1))


def _wal(config: Config, status: Status) -> Item:
    iid, text = "weekly-wal-archiving", "WAL archiving operational"
    wal = status.wal
    if wal is None:
        return _not_configured(iid, text, "postgres")
    if not wal["server_answered"]:
        return Item(iid, text, False, "the server did not answer (pg_stat_archiver unread)")
    if wal["failing"]:
        return Item(iid, text, False, f"archiving is failing: last failure {wal['last_failed']}")
    if wal["lagging"]:
        return Item(
            iid, text, False, f"no segment archived for {wal['lag_s']:.0f} s (over 2 × archive_timeout)"
        )
    return Item(iid, text, True, f"pg_stat_archiver: last archived {wal['last_archived']}, "
                f"{wal['archived']} archived, {wal['failed']} failed")  # fmt: skip


def _checksums(iid: str, status: Status, window: timedelta) -> Item:
    text = "All checksums valid"

    def read_data(r: RunRecord) -> bool:
        return r.type == "repo_check" and bool(r.figures.get("packs_read") or r.figures.get("bytes_read"))

    item = _from_runs(iid, text, status, window, read_data, "repo check --read-data")
    if not item.ok and not item.evidence:
        plain = _newest(
            status.records, status.now - window, lambda r: r.type == "repo_check" and r.result == "ok"
        )
        if plain is not None:
            item.detail += f" (the repo check of {clock.isoformat(plain.end)} checked the structure only)"
    return item


def weekly(config: Config, status: Status) -> list[Item]:
    s = config.schedule
    items = []
    if config.postgres.in_use:
        items.append(_from_runs("weekly-postgres-backup", "PostgreSQL backup completed successfully", status,
                                _window(s.pg_backup), _job("pg_backup"), "pg backup"))  # fmt: skip
    else:
        items.append(
            _not_configured("weekly-postgres-backup", "PostgreSQL backup completed successfully", "postgres")
        )
    items.append(_wal(config, status))
    text = "Model checkpoints archived"
    items.append(
        _from_runs("weekly-checkpoints-archived", text, status, _window(s.checkpoints_archive),
                   _job("checkpoints_archive", "checkpoints_backup"), "checkpoints archive")
        if config.checkpoints.in_use else _not_configured("weekly-checkpoints-archived", text, "checkpoints")
    )  # fmt: skip
    text = "Conversation data backed up"
    items.append(
        _from_runs("weekly-conversations-backed-up", text, status, _window(s.conversations_archive),
                   _job("conversations_archive"), "conversations archive")
        if config.conversations.in_use else _not_configured("weekly-conversations-backed-up", text, "conversations")
    )  # fmt: skip
    text = "Restore test passed"
    items.append(
        _from_runs("weekly-restore-test", text, status, WEEK, _job("pg_restore_test"), "pg restore-test")
        if config.postgres.in_use else _not_configured("weekly-restore-test", text, "postgres")
    )  # fmt: skip
    items.append(_checksums("weekly-checksums", status, WEEK))
    return items


def _rto(config: Config, status: Status) -> Item:
    iid, text = "monthly-rto", f"System operational within {config.drill.rto_objective} RTO"
    objective = config.drill.rto_objective_s
    since = status.now - MONTH
    full = [r for r in drill_records(status.records) if r.target == "full" and r.end >= since]
    if not full:
        db = _newest(status.records, since, _drill("database"))
        note = ""
        if db is not None:
            note = f"; the database drill of {clock.isoformat(db.end)} took {db.figures.get('rto_s', '?')} s"
        return Item(iid, text, False, f"no full drill in the last {MONTH.days} days{note}",
                    [db.name] if db else [])  # fmt: skip
    last = full[-1]
    rto = last.figures.get("rto_s", last.figures.get("total_s"))
    if last.result == "ok" and isinstance(rto, int | float) and rto <= objective:
        return Item(
            iid, text, True, f"full drill recovered in {rto} s (objective {objective:.0f} s)", [last.name]
        )
    return Item(iid, text, False, f"the last full drill: {last.figures.get('verdict', last.result)}, RTO {rto} s",
                [last.name])  # fmt: skip


def _integrity(status: Status) -> Item:
    iid, text = "monthly-integrity", "All data integrity checks passed"
    since = status.now - MONTH
    drill = _newest(status.records, since, lambda r: r.job == "drill")
    check = _checksums(iid, status, MONTH)
    if drill is None:
        return Item(iid, text, False, f"no drill in the last {MONTH.days} days", check.evidence)
    drill_ok = bool(drill.figures.get("ok", drill.result == "ok"))
    evidence = [drill.name, *check.evidence]
    if not drill_ok:
        return Item(iid, text, False, f"the drill of {clock.isoformat(drill.end)} failed a check: {drill.error}",
                    evidence)  # fmt: skip
    if not check.ok:
        return Item(iid, text, False, f"drill checks passed, but {check.detail}", evidence)
    return Item(iid, text, True, f"drill checks and {check.detail}", evidence)


def monthly(config: Config, status: Status) -> list[Item]:
    def drilled(iid: str, text: str, scenarios: tuple[str, ...], label: str) -> Item:
        def passed_checks(r: RunRecord) -> bool:
            return r.job == "drill" and r.target in scenarios

        item = _from_runs(iid, text, status, MONTH, passed_checks, label)
        if not item.ok:  # an over-objective drill recovered: its checks passed
            rec = _newest(status.records, status.now - MONTH,
                          lambda r: passed_checks(r) and r.figures.get("ok") is True)  # fmt: skip
            if rec is not None:
                return Item(iid, text, True, f"{label} {clock.isoformat(rec.end)} (checks passed; "
                            f"{rec.figures.get('verdict', '')})", [rec.name])  # fmt: skip
        return item

    return [
        drilled("monthly-database-restore", "Full database restore successful", ("database", "full"),
                "drill --scenario database"),
        drilled("monthly-checkpoints-recoverable", "Model checkpoints recoverable from archives",
                ("checkpoint", "full"), "drill --scenario checkpoint"),
        drilled("monthly-dataset-restored", "Dataset snapshot restored", ("dataset", "full"),
                "drill --scenario dataset"),
        _rto(config, status),
        _integrity(status),
    ]  # fmt: skip


def checklists(config: Config, status: Status) -> dict[str, list[Item]]:
    """``{"weekly": [...], "monthly": [...]}`` (see the module docstring)."""
    return {"weekly": weekly(config, status), "monthly": monthly(config, status)}
