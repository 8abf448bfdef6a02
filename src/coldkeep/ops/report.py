"""``coldkeep report --html FILE``: one self-contained HTML page (also ``coldkeep exporter``'s ``/``).

Built from a :class:`coldkeep.ops.status.Status` (the run records, the repository's figures,
``pg_stat_archiver``, the storage allocations), the stored checkpoints and the drill history.
Inline CSS and inline SVG only: no script, nothing fetched (a ``Content-Security-Policy`` of
``default-src 'none'`` says so to the browser, which would report any fetch as an error).

Charts: backup sizes and durations per job type over time; WAL archive lag (the lag now and
each drill's RPO: the data an archive-only recovery lost) against 2 × ``archive_timeout``; RTO
per drill against the objective; each allocation used / allocated and the repository's stored
bytes over time.  Then the checkpoint inventory (the stored side: no scan of the hot disk) and the
spec's weekly and monthly checklists (:mod:`coldkeep.ops.checklist`): every box ticked with a
link to the run record that proves it, or crossed with the reason.  The newest run records close
the page, each with an anchor ``#run-<record name>``.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from coldkeep import __version__, clock
from coldkeep.config import Config
from coldkeep.errors import ColdkeepError
from coldkeep.ops.checklist import Item, checklists
from coldkeep.ops.samples import Points
from coldkeep.ops.status import Status, drill_records
from coldkeep.units import human_bytes

if TYPE_CHECKING:
    from coldkeep.repository.repository import Repository

#: the page's Content-Security-Policy (the exporter sends it as a header too)
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
#: run records listed at the end of the page (evidence records are always listed)
RUNS_SHOWN = 200
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")
_W, _H, _L, _R, _T, _B = 680, 220, 78, 16, 14, 34

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em auto;max-width:980px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;margin-top:1.6em}
table{border-collapse:collapse;font-size:12px;width:100%}th,td{border-bottom:1px solid #eee;
padding:2px 6px;text-align:left;vertical-align:top}th{background:#f4f4f4}
figure.chart{margin:1em 0}figcaption{font-weight:600}svg{background:#fcfcfc;border:1px solid #ddd}
svg text{font-size:11px;fill:#444}.legend span{margin-right:1em}.sw{display:inline-block;width:10px;
height:10px;margin-right:4px}ul.checklist{list-style:none;padding-left:0}ul.checklist li{margin:.35em 0}
.box{display:inline-block;width:1.4em;font-weight:700}.ticked .box{color:#1a7f37}.crossed .box{color:#c62828}
.reason{color:#555}.alert-critical{color:#c62828}.alert-warning{color:#b26a00}tr:target{background:#fff3c4}
.ok{color:#1a7f37}.failed{color:#c62828}.partial{color:#b26a00}
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _ts(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M")


def _seconds(v: float) -> str:
    return f"{v / 3600:.1f} h" if v >= 7200 else f"{v / 60:.1f} min" if v >= 120 else f"{v:.1f} s"


def _bytes(v: float) -> str:
    return human_bytes(v)


# ------------------------------------------------------------------------------------------------
# charts


def line_chart(
    cid: str,
    title: str,
    series: dict[str, Points],
    fmt: Callable[[float], str],
    *,
    limit: tuple[str, float] | None = None,
    note: str = "",
) -> str:
    """An inline SVG line chart of ``series`` (label → (unix time, value)) with an optional
    horizontal limit line; a chart without points says so inside it."""
    points = [p for pts in series.values() for p in pts]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}" '
             f'role="img" aria-label="{esc(title)}">']  # fmt: skip
    if not points:
        parts.append(
            f'<text x="{_W / 2}" y="{_H / 2}" text-anchor="middle">no data recorded yet</text></svg>'
        )
        return _figure(cid, title, "".join(parts), series, 0, note)
    t0, t1 = min(t for t, _ in points), max(t for t, _ in points)
    if t1 - t0 < 3600:
        t0, t1 = t0 - 1800, t1 + 1800
    highest = max(v for _, v in points)
    if limit and highest > 0 and limit[1] > 20 * highest:  # the limit would flatten the data
        note = (note + "; " if note else "") + f"{limit[0]} {fmt(limit[1])}: off the scale"
        limit = None
    top = max(highest, limit[1] if limit else 0.0) * 1.1 or 1.0
    pw, ph = _W - _L - _R, _H - _T - _B

    def x(t: float) -> float:
        return round(_L + pw * (t - t0) / (t1 - t0), 1)

    def y(v: float) -> float:
        return round(_T + ph * (1 - v / top), 1)

    parts.append(f'<line x1="{_L}" y1="{_T + ph}" x2="{_W - _R}" y2="{_T + ph}" stroke="#888"/>'
                 f'<line x1="{_L}" y1="{_T}" x2="{_L}" y2="{_T + ph}" stroke="#888"/>')  # fmt: skip
    for frac in (0.0, 0.5, 1.0):
        v = top / 1.1 * frac
        parts.append(f'<text x="{_L - 4}" y="{y(v) + 4}" text-anchor="end">{esc(fmt(v))}</text>'
                     f'<line x1="{_L}" y1="{y(v)}" x2="{_W - _R}" y2="{y(v)}" stroke="#eee"/>')  # fmt: skip
    parts.append(f'<text x="{_L}" y="{_H - 10}">{esc(_ts(t0))}</text>'
                 f'<text x="{_W - _R}" y="{_H - 10}" text-anchor="end">{esc(_ts(t1))}</text>')  # fmt: skip
    if limit:
        parts.append(f'<line class="limit" x1="{_L}" y1="{y(limit[1])}" x2="{_W - _R}" y2="{y(limit[1])}" '
                     f'stroke="#c62828" stroke-dasharray="6 4"/><text x="{_W - _R - 4}" y="{y(limit[1]) - 4}" '
                     f'text-anchor="end" fill="#c62828">{esc(limit[0])} {esc(fmt(limit[1]))}</text>')  # fmt: skip
    for i, (label, pts) in enumerate(sorted(series.items())):
        colour = _COLOURS[i % len(_COLOURS)]
        coords = " ".join(f"{x(t)},{y(v)}" for t, v in sorted(pts))
        parts.append(f'<polyline class="series" data-label="{esc(label)}" fill="none" stroke="{colour}" '
                     f'stroke-width="1.5" points="{coords}"/>')  # fmt: skip
        parts += [f'<circle cx="{x(t)}" cy="{y(v)}" r="2.5" fill="{colour}"><title>{esc(label)} '
                  f'{esc(_ts(t))}: {esc(fmt(v))}</title></circle>' for t, v in sorted(pts)]  # fmt: skip
    parts.append("</svg>")
    return _figure(cid, title, "".join(parts), series, len(points), note)


def _figure(cid: str, title: str, svg: str, series: dict[str, Points], n: int, note: str) -> str:
    legend = "".join(
        f'<span><i class="sw" style="background:{_COLOURS[i % len(_COLOURS)]}"></i>{esc(label)}</span>'
        for i, label in enumerate(sorted(series))
    )
    extra = f'<div class="reason">{esc(note)}</div>' if note else ""
    return (f'<figure class="chart" id="chart-{cid}" data-points="{n}"><figcaption>{esc(title)}</figcaption>'
            f'{svg}<div class="legend">{legend}</div>{extra}</figure>')  # fmt: skip


def bar_chart(cid: str, title: str, rows: list[tuple[str, float | None, float]], note: str = "") -> str:
    """Horizontal bars: (label, used or None, allocated)."""
    height = 26 * max(1, len(rows)) + 10
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{height}" role="img" '
             f'aria-label="{esc(title)}">']  # fmt: skip
    if not rows:
        parts.append(
            f'<text x="{_W / 2}" y="22" text-anchor="middle">no allocations configured ([storage])</text>'
        )
    left, width = 170, _W - 170 - 190
    for i, (label, used, allocated) in enumerate(rows):
        top = 8 + 26 * i
        pct = None if used is None or not allocated else min(1.0, used / allocated)
        colour = "#c62828" if pct is not None and pct > 0.8 else "#1f77b4"
        parts.append(f'<text x="4" y="{top + 13}">{esc(label)}</text>'
                     f'<rect x="{left}" y="{top}" width="{width}" height="16" fill="#eee"/>')  # fmt: skip
        if pct is not None:
            parts.append(f'<rect class="used" x="{left}" y="{top}" width="{round(width * pct, 1)}" height="16" '
                         f'fill="{colour}"/>')  # fmt: skip
        text = (f"{_bytes(used)} / {_bytes(allocated)} ({100 * (pct or 0):.1f} %)" if used is not None
                else f"unknown / {_bytes(allocated)}")  # fmt: skip
        parts.append(f'<text x="{left + width + 6}" y="{top + 13}">{esc(text)}</text>')
    parts.append("</svg>")
    return _figure(cid, title, "".join(parts), {}, len(rows), note)


# ------------------------------------------------------------------------------------------------
# the page


def _backup_series(status: Status) -> tuple[dict[str, Points], dict[str, Points]]:
    from coldkeep.ops.metrics import BACKUP_JOBS

    sizes: dict[str, Points] = {}
    durations: dict[str, Points] = {}
    for r in status.records:
        if r.job not in BACKUP_JOBS:
            continue
        t = r.end.timestamp()
        durations.setdefault(r.type, []).append((t, r.duration_s))
        if r.succeeded and r.logical_bytes is not None:
            sizes.setdefault(r.type, []).append((t, float(r.logical_bytes)))
    return sizes, durations


def _charts(config: Config, status: Status, drill_docs: list[dict[str, Any]]) -> str:
    sizes, durations = _backup_series(status)
    out = [
        line_chart("backup-sizes", "Backup size (logical bytes) per job type", sizes, _bytes),
        line_chart("backup-durations", "Backup duration per job type", durations, _seconds),
    ]
    wal = status.wal
    lag: dict[str, Points] = {}
    now = status.now.timestamp()
    rpo = [(r.end.timestamp(), float(r.figures["rpo_s"])) for r in drill_records(status.records)
           if isinstance(r.figures.get("rpo_s"), int | float)]  # fmt: skip
    if rpo:
        lag["drill RPO"] = rpo
    if wal and wal.get("server_answered"):
        lag["lag now (pg_stat_archiver)"] = [(now, float(wal["lag_s"]))]
    limit = ("2 × archive_timeout", 2 * float(wal["archive_timeout_s"])) if wal else None
    note = "" if wal else "[postgres] is not configured"
    if wal and not wal.get("server_answered"):
        note = "the server did not answer: no current lag"
    out.append(line_chart("wal-lag", "WAL archive lag", lag, _seconds, limit=limit, note=note))
    rto: dict[str, Points] = {}
    for r in drill_records(status.records):
        value = r.figures.get("rto_s", r.figures.get("total_s"))
        if isinstance(value, int | float):
            rto.setdefault(f"measured ({r.target or 'drill'})", []).append((r.end.timestamp(), float(value)))
    for doc in drill_docs:
        projected = (doc.get("projection") or {}).get("projected_rto_s")
        if isinstance(projected, int | float) and doc.get("started_at"):
            started = clock.parse_timestamp(doc["started_at"]).timestamp()
            rto.setdefault("projected at production size", []).append((started, float(projected)))
    objective = ("objective", config.drill.rto_objective_s)
    out.append(line_chart("rto", "Recovery time (RTO) per drill", rto, _seconds, limit=objective))
    rows = [(f"{s['location']}/{s['allocation']}", s["used_bytes"], float(s["allocated_bytes"]))
            for s in status.storage]  # fmt: skip
    out.append(bar_chart("storage", "Storage per allocation (used / allocated)", rows))
    held = next((s for s in status.storage if s["growth_per_day"] is not None), None)
    trend = {"repository stored bytes": status.stored_history} if status.stored_history else {}
    limit_alloc = (
        (f"{held['location']}/{held['allocation']} allocated", float(held["allocated_bytes"]))
        if held
        else None
    )
    growth = (f"growth {_bytes(held['growth_per_day'])}/day"
              + (f", full in {held['days_until_full']} days" if held["days_until_full"] is not None else "")
              if held else "")  # fmt: skip
    out.append(line_chart("storage-trend", "Repository stored bytes over time (the trend)", trend, _bytes,
                          limit=limit_alloc, note=growth))  # fmt: skip
    return "\n".join(out)


def _tiers(config: Config, status: Status) -> str:
    """Each ``[tiers]`` tier: retention, paths, and its newest ``tiers backup`` run (by target)."""
    rows = []
    for name in ("tier1", "tier2", "tier3"):
        tier = getattr(config.tiers, name)
        runs = [
            r for r in status.records if r.job == "tiers backup" and name in (r.target, r.figures.get("tier"))
        ]
        good = next((r for r in reversed(runs) if r.succeeded), None)
        last = (f'<a href="#run-{esc(good.name)}">{esc(clock.isoformat(good.end))}</a>, '
                f"{esc(_bytes(good.logical_bytes or 0))}" if good else "no tiers backup recorded")  # fmt: skip
        keep = "forever" if tier.retention_days == "forever" else f"{tier.retention_days} days"
        paths = ", ".join(tier.paths) or "no paths configured"
        rows.append(f"<tr><td>{name}</td><td>{esc(keep)}</td><td>{esc(paths)}</td><td>{last}</td></tr>")
    head = "<tr><th>tier</th><th>retention</th><th>paths</th><th>last successful backup</th></tr>"
    return f'<table id="tiers">{head}{"".join(rows)}</table>'


def _jobs(status: Status) -> str:
    rows = []
    for j in status.jobs:
        state = "late" if j["late"] else "stale" if j["stale"] else "ok"
        good = f'<a href="#run-{esc(j["record"])}">{esc(j["last_success"])}</a>' if j["record"] else "never"
        rows.append(
            f"<tr><td>{esc(j['type'])}</td><td>{esc(j['cron'])}</td>"
            f'<td class="{"ok" if state == "ok" else "failed"}">{state}</td><td>{good}</td>'
            f"<td>{esc(j['last_result'] or '-')}</td><td>{esc(j['next_run'] or '-')}</td></tr>"
        )
    head = "<tr><th>job</th><th>cron</th><th>state</th><th>last success</th><th>last run</th><th>next run</th></tr>"
    return f'<table id="jobs">{head}{"".join(rows)}</table>'


def _inventory(config: Config, repo: Repository | None) -> str:
    if not config.checkpoints.in_use:
        return '<p id="checkpoint-inventory" class="reason">[checkpoints] is not configured.</p>'
    if repo is None:
        return '<p id="checkpoint-inventory" class="reason">the repository could not be read.</p>'
    from coldkeep.checkpoints.inventory import HotScan, list_rows, stored_checkpoints, verified_record

    try:
        rows = list_rows(HotScan(), stored_checkpoints(repo), verified_record(repo), {})
    except ColdkeepError as exc:
        return f'<p id="checkpoint-inventory" class="reason">not read: {esc(exc.message)}</p>'
    head = "<tr><th>checkpoint</th><th>phase</th><th>type</th><th>time</th><th>size</th><th>snapshot</th><th>verified</th></tr>"
    body = "".join(
        f"<tr><td>{esc(r['name'])}</td><td>{esc(r['phase'])}</td><td>{esc(r['type'])}</td><td>{esc(r['time'])}</td>"
        f"<td>{esc(_bytes(r['size'] or 0))}</td><td>{esc((r['snapshot'] or '')[:8])}</td>"
        f"<td>{esc(r['verified_at'] or 'no')}</td></tr>"
        for r in rows
    )
    if not rows:
        body = '<tr><td colspan="7">no checkpoint stored yet</td></tr>'
    return f'<table id="checkpoint-inventory"><caption>{len(rows)} stored checkpoints</caption>{head}{body}</table>'


def _item(item: Item) -> str:
    box = "✔" if item.ok else "✘"
    links = " ".join(f'<a href="#run-{esc(name)}">{esc(name)}</a>' for name in item.evidence)
    why = f'<span class="reason"> — {esc(item.detail)}</span>' if item.detail else ""
    proof = f' <span class="evidence">evidence: {links}</span>' if links else ""
    state = "ticked" if item.ok else "crossed"
    return (f'<li class="item {state}" id="{esc(item.id)}" data-state="{state}"><span class="box">{box}</span>'
            f"{esc(item.text)}{why}{proof}</li>")  # fmt: skip


def _runs(status: Status, evidence: set[str]) -> str:
    shown = status.records[-RUNS_SHOWN:]
    names = {r.name for r in shown}
    shown = [r for r in status.records if r.name in evidence and r.name not in names] + shown
    head = "<tr><th>end</th><th>job</th><th>result</th><th>duration</th><th>logical</th><th>new</th><th>error</th></tr>"
    body = "".join(
        f'<tr id="run-{esc(r.name)}"><td>{esc(clock.isoformat(r.end))}</td><td>{esc(r.type)}</td>'
        f'<td class="{esc(r.result)}">{esc(r.result)}{" (pending)" if r.pending else ""}</td>'
        f"<td>{esc(_seconds(r.duration_s))}</td>"
        f"<td>{esc(_bytes(r.logical_bytes) if r.logical_bytes is not None else '-')}</td>"
        f"<td>{esc(_bytes(r.new_bytes) if r.new_bytes is not None else '-')}</td>"
        f"<td>{esc((r.error_class + ': ' + r.error) if r.error else r.error_class)}</td></tr>"
        for r in reversed(shown)
    )
    return f'<table id="runs"><caption>{len(shown)} of {len(status.records)} run records, newest first</caption>{head}{body}</table>'


def _alerts(status: Status) -> str:
    if not status.alerts:
        return '<p id="alerts">No alert would fire now.</p>'
    items = "".join(
        f'<li class="alert-{esc(a["severity"])}"><b>{esc(a["alert"])}</b> ({esc(a["severity"])}): {esc(a["summary"])}</li>'
        for a in status.alerts
    )
    return f'<ul id="alerts">{items}</ul>'


def render_report(config: Config, status: Status, repo: Repository | None) -> str:
    """The report page of ``status`` (``repo``: the checkpoint inventory and the drill history;
    ``None`` when the repository could not be opened)."""
    drill_docs: list[dict[str, Any]] = []
    if repo is not None:
        from coldkeep.ops.drill import history

        try:
            drill_docs = history(repo)
        except ColdkeepError:
            drill_docs = []
    lists = checklists(config, status)
    sections = []
    for key, title in (("weekly", "Weekly backup validation"), ("monthly", "Monthly disaster recovery test")):
        items = "".join(_item(i) for i in lists[key])
        sections.append(f'<h3>{esc(title)}</h3><ul class="checklist" id="{key}">{items}</ul>')
    r = status.repository
    summary = (f"{r['snapshots']} snapshots, {_bytes(r['logical_bytes'] or 0)} logical, "
               f"{_bytes(r['stored_bytes'] or 0)} stored, dedup ratio {r['dedup_ratio'] or '-'}"
               if r["readable"] else "the repository could not be read")  # fmt: skip
    body = f"""<h2 id="alerts-now">Alerts that would fire now</h2>
{_alerts(status)}
<h2 id="schedule">Scheduled jobs</h2>
{_jobs(status)}
<h2 id="checklists">Checklists</h2>
<p class="reason">Each box is ticked from recorded evidence (the run record linked) or crossed with the reason.</p>
{"".join(sections)}
<h2 id="charts">Charts</h2>
{_charts(config, status, drill_docs)}
<h2 id="data-tiers">Data tiers</h2>
{_tiers(config, status)}
<h2 id="checkpoints">Checkpoint inventory (stored)</h2>
{_inventory(config, repo)}
"""
    linked = set(re.findall(r'href="#run-([^"]+)"', body))  # every linked record is listed
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>coldkeep report {esc(clock.isoformat(status.now))}</title><style>{_CSS}</style></head>
<body>
<h1>coldkeep report</h1>
<p>Generated {esc(clock.isoformat(status.now))} by coldkeep {esc(__version__)} for {esc(config.repository.url)}:
{esc(summary)}.</p>
{body}<h2 id="run-records">Run records</h2>
{_runs(status, {html.unescape(n) for n in linked})}
</body></html>
"""
