"""``coldkeep runs`` — the recorded runs of every job (:mod:`coldkeep.ops.runs`)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import click

from coldkeep import clock
from coldkeep.cli.context import AppContext, pass_app
from coldkeep.cli.output import plain
from coldkeep.cli.repo_support import open_repo
from coldkeep.errors import UsageError
from coldkeep.units import human_bytes

if TYPE_CHECKING:
    from rich.console import Console


def parse_since(text: str) -> datetime:
    """An ISO 8601 time (``2026-12-01``, ``2026-12-01T08:00:00Z``; no offset: UTC) or a duration
    back from now (``7d``, ``12h``)."""
    try:
        return clock.now() - clock.parse_duration(text)
    except UsageError:
        pass
    try:
        return clock.parse_timestamp(text, require_offset=False)
    except UsageError:
        raise UsageError(
            f"--since {text!r} is neither a time nor a duration", hint="write e.g. 7d, 12h or 2026-12-01"
        ) from None


@click.command()
@click.option("--job", default=None, metavar="JOB", help="only this job ('pg backup' or pg_backup)")
@click.option("--since", default=None, metavar="WHEN", help="only runs started since: 7d, 12h, 2026-12-01")
@click.option("--limit", type=click.IntRange(min=0), default=0, help="only the last N runs (0: all)")
@click.option("--wide", is_flag=True, help="every column in full, however wide")
@pass_app
def runs(app: AppContext, job: str | None, since: str | None, limit: int, wide: bool) -> None:
    """List the recorded runs of every job, oldest first (kept in the repository, so a copy has
    them too; records not yet written to it are marked pending)."""
    from coldkeep.cli.tables import short_time, show
    from coldkeep.ops.runs import filter_records, list_records

    start = parse_since(since) if since else None
    section = app.repository_section()
    with open_repo(app) as repo:
        records = filter_records(list_records(repo, pending_url=section.url), job=job, since=start)
    if limit:
        records = records[-limit:]
    data = [r.to_json() for r in records]

    def human(console: Console) -> None:
        if not records:
            console.print("no runs recorded" + (" matching" if job or since else ""))
            return
        columns = ["start", "job", "result", "seconds", "logical", "new", "error"]
        cells = []
        for r in records:
            result = r.result + (" (pending)" if r.pending else "")
            error = r.error_class + (f": {r.error}" if r.error else "")
            cells.append([
                clock.isoformat(r.start) if wide else short_time(clock.isoformat(r.start)),
                r.job + (f" {r.target}" if r.target else ""), result, f"{r.duration_s:.1f}",
                human_bytes(r.logical_bytes) if r.logical_bytes is not None else "-",
                human_bytes(r.new_bytes) if r.new_bytes is not None else "-", plain(error) or "-",
            ])  # fmt: skip
        show(console, columns, cells, wide=wide, flexible={"error"})

    app.out.emit(data, human)
