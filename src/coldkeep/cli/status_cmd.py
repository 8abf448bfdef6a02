"""``coldkeep status`` and ``coldkeep report --html FILE`` (:mod:`coldkeep.ops.status`,
:mod:`coldkeep.ops.report`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from coldkeep.cli.context import AppContext, pass_app
from coldkeep.cli.output import plain
from coldkeep.errors import ColdkeepError, UsageError
from coldkeep.units import human_bytes

if TYPE_CHECKING:
    from rich.console import Console

    from coldkeep.ops.status import Status
    from coldkeep.repository.repository import Repository

BAR = 24


def _gather(app: AppContext) -> tuple[Status, Repository | None]:
    """The status; the repository stays open for the caller (``None``: it could not be opened,
    which the status shows: the records kept locally, ``ColdkeepRepositoryUnreadable``)."""
    from coldkeep.ops.status import gather
    from coldkeep.repository.setup import open_repository_section

    cfg = app.config()
    repo = None
    try:
        repo = open_repository_section(app.repository_section())
    except ColdkeepError as exc:
        app.out.warn(f"repository not opened: {exc.message}")
    return gather(cfg, repo), repo


def duration(seconds: float | None) -> str:
    """``90`` → ``1m30s``; ``200000`` → ``2d7h``."""
    if seconds is None:
        return "-"
    s = int(abs(seconds))
    for unit, size, sub, subsize in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if s >= size:
            rest = (s % size) // subsize
            return f"{s // size}{unit}{f'{rest}{sub}' if rest else ''}"
    return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"


def bar(pct: float | None) -> str:
    if pct is None:
        return "·" * BAR
    full = min(BAR, round(BAR * pct / 100))
    return "█" * full + "░" * (BAR - full)


def _human(status: Status, console: Console) -> None:
    data = status.to_json()
    console.print(f"[bold]coldkeep status[/bold] at {data['now']}")
    console.print("[bold]jobs[/bold] (last success, age / schedule interval)")
    for j in data["jobs"]:
        word, colour = (
            ("LATE", "red") if j["late"] else ("STALE", "yellow") if j["stale"] else ("ok", "green")
        )
        mark = f"[{colour}]{word}[/{colour}]" + " " * (5 - len(word))
        console.print(f"  {j['type']:<24} {mark} {j['last_success'] or 'never':<27} "
                      f"{duration(j['age_s'])} / {duration(j['interval_s'])}  last run: {j['last_result'] or '-'}")  # fmt: skip
    if not data["jobs"]:
        console.print("  nothing scheduled ([schedule])")
    _human_wal(data["wal"], console)
    r = data["repository"]
    if r["readable"]:
        console.print(f"[bold]repository[/bold] {r['snapshots']} snapshots, {human_bytes(r['logical_bytes'] or 0)} "
                      f"logical, {human_bytes(r['stored_bytes'] or 0)} stored, dedup ratio "
                      f"{r['dedup_ratio'] or '-'}; {r['run_records']} run records ({r['pending_records']} pending)")  # fmt: skip
    else:
        console.print(
            f"[bold]repository[/bold] [red]unreadable[/red]; {r['pending_records']} run records kept locally"
        )
    if data["storage"]:
        console.print("[bold]storage[/bold] (used / allocated)")
    for s in data["storage"]:
        used = human_bytes(s["used_bytes"]) if s["used_bytes"] is not None else "unknown"
        trend = ""
        if s["growth_per_day"] is not None:
            trend = f", +{human_bytes(s['growth_per_day'])}/day"
            trend += f", full in {s['days_until_full']} days" if s["days_until_full"] is not None else ""
        pct = f"{s['used_pct']:5.1f} %" if s["used_pct"] is not None else "    ? "
        console.print(f"  {s['location'] + '/' + s['allocation']:<28} {bar(s['used_pct'])} {pct} "
                      f"{used} / {human_bytes(s['allocated_bytes'])}{trend}")  # fmt: skip
    _human_tests(data, console)
    alerts = data["alerts"]
    console.print(f"[bold]alerts[/bold] that would fire now: {len(alerts) or 'none'}")
    for a in alerts:
        colour = "red" if a["severity"] == "critical" else "yellow"
        console.print(f"  [{colour}]{a['alert']}[/{colour}] ({a['severity']}): {plain(a['summary'])}")


def _human_wal(wal: dict[str, Any] | None, console: Console) -> None:
    if wal is None:
        return
    if not wal["server_answered"]:
        console.print("[bold]WAL archiving[/bold] [red]server not answering[/red] (pg_stat_archiver unread)")
        return
    state = (
        "[red]FAILING[/red]"
        if wal["failing"]
        else "[red]LAGGING[/red]"
        if wal["lagging"]
        else "[green]ok[/green]"
    )
    console.print(f"[bold]WAL archiving[/bold] {state}: last archived {wal['last_archived'] or 'never'} "
                  f"(lag {duration(wal['lag_s'])}, limit {duration(2 * wal['archive_timeout_s'])}), "
                  f"{wal['archived']} archived, {wal['failed']} failed; receiver: {wal['receiver']}")  # fmt: skip


def _human_tests(data: dict[str, Any], console: Console) -> None:
    t = data["restore_test"]
    if t is None:
        console.print("[bold]restore test[/bold] never run")
    else:
        mark = "[red]STALE[/red]" if t["stale"] else "[green]ok[/green]"
        console.print(f"[bold]restore test[/bold] last {t['last']}: {t['result']}; last passed "
                      f"{t['last_passed'] or 'never'} {mark}")  # fmt: skip
    d = data["drill"]
    if d is None:
        console.print("[bold]drill[/bold] never run")
        return
    rto = f"RTO {duration(d['rto_s'])} (objective {duration(d['rto_objective_s'])}: {'ok' if d['rto_ok'] else 'OVER'})"
    rpo = f"RPO {duration(d['rpo_s'])}" if d["rpo_s"] is not None else "RPO not measured"
    if d["rpo_objective_s"] is not None and d["rpo_s"] is not None:
        rpo += f" (archive_timeout {duration(d['rpo_objective_s'])}: {'ok' if d['rpo_ok'] else 'OVER'})"
    console.print(f"[bold]drill[/bold] {d['scenario']} {d['last']}: {d['verdict']}; {rto}; {rpo}")


@click.command()
@pass_app
def status(app: AppContext) -> None:
    """One screen: each scheduled job's last success against its schedule, WAL archiving, the
    repository's size and dedup ratio, storage allocations, the last restore test and drill, and
    the alerts that would fire now (the alert rules' conditions on the current metrics)."""
    state, repo = _gather(app)
    if repo is not None:
        repo.close()
    app.out.emit(state.to_json(), lambda c: _human(state, c))


@click.command()
@click.option("--html", "html_path", required=True, metavar="FILE",
              help="write the report here: one self-contained HTML page")  # fmt: skip
@pass_app
def report(app: AppContext, html_path: str) -> None:
    """Write an HTML report: backup sizes and durations over time, WAL archive lag, RTO history,
    storage per allocation, the checkpoint inventory, and the spec's weekly and monthly
    checklists, each box ticked from the run record that proves it or crossed with the reason."""
    from coldkeep.durable import write_atomic
    from coldkeep.ops.report import render_report

    if not html_path:
        raise UsageError("--html needs a file name", hint="coldkeep report --html report.html")
    state, repo = _gather(app)
    try:
        page = render_report(app.config(), state, repo)
    finally:
        if repo is not None:
            repo.close()
    write_atomic(Path(html_path), page.encode(), mode=0o644)
    data = {"html": html_path, "bytes": len(page.encode()), "alerts": len(state.alerts)}
    app.out.emit(data, lambda c: c.print(f"report written to {html_path}"))
