"""``[schedule]``: when each job runs, whether it is due, and its systemd / cron units.

The times are five-field cron entries in local time (the spec's crontab: ``0 2 * * *`` daily
PostgreSQL backup, ``0 3 * * 0`` weekly checkpoint archival, ``0 4 1 * *`` monthly conversation
archive, …).  A job is in the schedule when its entry is set and its service is in use.

Due.  A job is due when the latest scheduled time at or before now (its *slot*) has no run
record started at or after it.  So after any downtime ``run-due`` runs each job once, for its
latest slot, never once per missed slot; a run that failed used its slot (the next try is the next
slot; the failure is in the records and the alerts).  Time is :func:`coldkeep.clock.now`, so the
test hook ``COLDKEEP_NOW`` moves it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from coldkeep import clock
from coldkeep.config import Config
from coldkeep.errors import UsageError
from coldkeep.ops.runs import RunRecord, job_type

_NAMES = ("minute", "hour", "day of month", "month", "day of week")
_LIMITS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
#: how far :func:`next_run` / :func:`last_slot` look (a 29 February entry fires every 4 years)
_HORIZON_DAYS = 8 * 366
_DOW = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat")


@dataclass(frozen=True)
class Cron:
    """A parsed five-field cron entry (numbers, ``*``, ranges, lists, steps)."""

    expr: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool
    any_weekday: bool

    def day_matches(self, d: date) -> bool:
        if d.month not in self.months:
            return False
        dom, dow = d.day in self.days, (d.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:  # cron: both restricted → either matches
            return dom and dow
        return dom or dow


def _field(text: str, lo: int, hi: int, name: str) -> set[int]:
    values: set[int] = set()
    for part in text.split(","):
        base, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if base == "*":
            first, last = lo, hi
        elif "-" in base:
            a, b = base.split("-", 1)
            first, last = int(a), int(b)
        else:
            first = int(base)
            last = hi if step_text else first
        if not (lo <= first <= hi and lo <= last <= hi and first <= last and step > 0):
            raise UsageError(f"cron {name} field {text!r} is out of range {lo}-{hi}")
        values.update(range(first, last + 1, step))
    return values


def parse_cron(expr: str) -> Cron:
    fields = expr.split()
    if len(fields) != 5:
        raise UsageError(f"cron entry {expr!r} needs 5 fields", hint="write e.g. 0 2 * * *")
    try:
        sets = [_field(f, lo, hi, n) for f, (lo, hi), n in zip(fields, _LIMITS, _NAMES, strict=True)]
    except ValueError:
        raise UsageError(f"cron entry {expr!r} is not numbers, *, ranges, lists and steps") from None
    weekdays = frozenset(d % 7 for d in sets[4])
    return Cron(expr, frozenset(sets[0]), frozenset(sets[1]), frozenset(sets[2]), frozenset(sets[3]), weekdays,
                fields[2] == "*", fields[4] == "*")  # fmt: skip


def _local(ts: datetime) -> datetime:
    return ts.astimezone().replace(second=0, microsecond=0)


def next_run(cron: Cron, after: datetime) -> datetime | None:
    """The first scheduled minute strictly after ``after`` (local time, aware)."""
    start = _local(after) + timedelta(minutes=1)
    day = start.date()
    for _ in range(_HORIZON_DAYS):
        if cron.day_matches(day):
            for hour in sorted(cron.hours):
                for minute in sorted(cron.minutes):
                    t = _at(day, hour, minute)
                    if t >= start:
                        return t
        day += timedelta(days=1)
    return None


def last_slot(cron: Cron, now: datetime) -> datetime | None:
    """The latest scheduled minute at or before ``now``."""
    end = _local(now)
    day = end.date()
    for _ in range(_HORIZON_DAYS):
        if cron.day_matches(day):
            for hour in sorted(cron.hours, reverse=True):
                for minute in sorted(cron.minutes, reverse=True):
                    t = _at(day, hour, minute)
                    if t <= end:
                        return t
        day -= timedelta(days=1)
    return None


def _at(day: date, hour: int, minute: int) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute).astimezone()


# ------------------------------------------------------------------------------------------------
# the jobs


@dataclass(frozen=True)
class Job:
    """One scheduled job: its ``[schedule]`` key, the run-record job name and the command."""

    key: str
    job: str
    argv: tuple[str, ...]
    cron: Cron
    target: str = ""

    @property
    def type(self) -> str:
        return job_type(self.job, self.target)

    @property
    def unit(self) -> str:
        return "coldkeep-" + self.type.replace("_", "-")


def jobs(config: Config) -> list[Job]:
    """The jobs of ``config``'s schedule whose entry is set and whose service is in use (drills
    join when the drill command exists; ``tiers backup`` when a tier has paths; ``storage`` —
    the samples its growth comes from — when the config has a ``[storage]`` section)."""
    s = config.schedule
    table: list[tuple[str, str, tuple[str, ...], bool]] = [
        ("pg_backup", "pg backup", ("pg", "backup"), config.postgres.in_use),
        ("pg_expire", "pg expire", ("pg", "expire"), config.postgres.in_use),
        ("pg_restore_test", "pg restore-test", ("pg", "restore-test"), config.postgres.in_use),
        ("checkpoints_archive", "checkpoints archive", ("checkpoints", "archive"), config.checkpoints.in_use),
        ("conversations_archive", "conversations archive", ("conversations", "archive"), config.conversations.in_use),
        ("datasets_snapshot", "datasets snapshot", ("datasets", "snapshot"), config.datasets.in_use),
        ("repo_check", "repo check", ("repo", "check"), True),
        ("tiers_backup", "tiers backup", ("tiers", "backup"),
         any(getattr(config.tiers, f"tier{n}").paths for n in (1, 2, 3))),
        ("storage", "storage", ("storage",), "storage" in config.model_fields_set),
    ]  # fmt: skip
    out = [Job(key, job, argv, parse_cron(getattr(s, key))) for key, job, argv, used in table
           if used and getattr(s, key)]  # fmt: skip
    if s.repo_copy:
        for name in sorted(config.repository.copies):
            out.append(
                Job("repo_copy", "repo copy", ("repo", "copy", "--to", name), parse_cron(s.repo_copy), name)
            )
    return out


@dataclass
class JobState:
    job: Job
    slot: datetime | None  # the latest scheduled time at or before now
    next: datetime | None
    last: RunRecord | None  # the latest run record of the job

    @property
    def due(self) -> bool:
        return self.slot is not None and (self.last is None or self.last.start < self.slot)

    def late(self, now: datetime, grace: timedelta = timedelta(hours=1)) -> bool:
        """Due for longer than ``grace``: the slot passed and nothing ran."""
        return self.due and self.slot is not None and now - self.slot > grace

    def to_json(self, now: datetime) -> dict[str, object]:
        iso = clock.isoformat
        return {
            "key": self.job.key, "job": self.job.job, "target": self.job.target, "type": self.job.type,
            "cron": self.job.cron.expr, "command": list(self.job.argv),
            "last_run": iso(self.last.start) if self.last else None,
            "last_result": self.last.result if self.last else None,
            "slot": iso(self.slot) if self.slot else None, "next_run": iso(self.next) if self.next else None,
            "due": self.due, "late": self.late(now),
        }  # fmt: skip


def states(config: Config, records: Iterable[RunRecord], now: datetime | None = None) -> list[JobState]:
    """Each scheduled job's slot, next run and last record at ``now`` (default: the clock)."""
    now = now or clock.now()
    latest: dict[str, RunRecord] = {}
    for record in records:
        if record.type not in latest or record.start > latest[record.type].start:
            latest[record.type] = record
    return [
        JobState(j, last_slot(j.cron, now), next_run(j.cron, now), latest.get(j.type)) for j in jobs(config)
    ]


# ------------------------------------------------------------------------------------------------
# systemd and cron


def _calendar_field(values: frozenset[int], lo: int, hi: int, width: int = 2) -> str:
    if values == frozenset(range(lo, hi + 1)):
        return "*"
    return ",".join(f"{v:0{width}d}" for v in sorted(values))


def on_calendar(cron: Cron) -> list[str]:
    """systemd ``OnCalendar=`` values equal to ``cron`` (two when both day fields are restricted:
    cron runs when either matches, a calendar event needs both)."""
    minutes = _calendar_field(cron.minutes, 0, 59)
    hours = _calendar_field(cron.hours, 0, 23)
    months = _calendar_field(cron.months, 1, 12)

    def event(days: str, weekdays: str) -> str:
        prefix = f"{weekdays} " if weekdays != "*" else ""
        return f"{prefix}*-{months}-{days} {hours}:{minutes}:00"

    days = "*" if cron.any_day else _calendar_field(cron.days, 1, 31)
    weekdays = "*" if cron.any_weekday else ",".join(_DOW[d] for d in sorted(cron.weekdays))
    if cron.any_day or cron.any_weekday:
        return [event(days, weekdays)]
    return [event(days, "*"), event("*", weekdays)]


def systemd_units(job: Job, executable: str, config_path: str, user: str) -> dict[str, str]:
    """``{file name: text}``: a oneshot ``.service`` running the job and its ``.timer``."""
    command = " ".join(_quote(a) for a in [executable, "--config", config_path, *job.argv])
    service = "\n".join([
        "[Unit]",
        f"Description=coldkeep {job.job}{' to ' + job.target if job.target else ''}",
        "After=network-online.target postgresql.service",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=oneshot",
        f"User={user}",
        f"ExecStart={command}",
        "Environment=LANG=C.UTF-8",
        "Nice=10",
        "IOSchedulingClass=idle",
        "",
    ])  # fmt: skip
    timer = "\n".join([
        "[Unit]",
        f"Description=coldkeep {job.job} ({job.cron.expr})",
        "",
        "[Timer]",
        *(f"OnCalendar={c}" for c in on_calendar(job.cron)),
        "Persistent=true",
        "RandomizedDelaySec=0",
        "",
        "[Install]",
        "WantedBy=timers.target",
        "",
    ])  # fmt: skip
    return {f"{job.unit}.service": service, f"{job.unit}.timer": timer}


def _quote(arg: str) -> str:
    """An argument for ``ExecStart=`` / a crontab line (quoted when it holds a space or quote)."""
    if arg and not any(c.isspace() or c in "\"'\\%$;" for c in arg):
        return arg
    if any(c in "\n%" for c in arg):
        raise UsageError(f"{arg!r} cannot be written into a unit or crontab line", hint="use a simpler path")
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def cron_fragment(config: Config, executable: str, config_path: str, user: str) -> str:
    """An ``/etc/cron.d`` fragment: one line per scheduled job."""
    lines = [
        "# coldkeep jobs: `coldkeep schedule install --cron` (from [schedule]; regenerate after changing it)",
        "SHELL=/bin/sh",
        "PATH=/usr/local/bin:/usr/bin:/bin",
    ]
    for job in jobs(config):
        argv = [executable, "--config", config_path, *job.argv]
        lines.append(f"{job.cron.expr} {user} {' '.join(_quote(a) for a in argv)}")
    return "\n".join(lines) + "\n"
