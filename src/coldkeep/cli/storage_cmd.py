"""``coldkeep storage`` — each ``[storage]`` allocation's use and growth (:mod:`coldkeep.ops.storage`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from coldkeep.cli.context import AppContext, pass_app
from coldkeep.cli.params import FiniteRange
from coldkeep.cli.recorded import recorded
from coldkeep.cli.repo_support import open_repo
from coldkeep.units import human_bytes

if TYPE_CHECKING:
    from rich.console import Console


@click.command()
@click.option("--max-age", "max_age_h", type=FiniteRange(min=0), default=6.0, show_default=True,
              metavar="HOURS", help="walk an allocation again when its cached scan is older than this")  # fmt: skip
@pass_app
@recorded("storage")
def storage(app: AppContext, max_age_h: float) -> None:
    """Each allocation of [storage] (hot/cold): used, allocated, %, growth per day and days until
    full.  Used: the file system's figure for a mount point, the repository's stored bytes for
    the repository's directory, else a scan cached for --max-age hours.  Growth: from the run
    records of this command (every run is recorded)."""
    from coldkeep.cli.tables import show
    from coldkeep.ops.runs import list_records
    from coldkeep.ops.storage import holds_repository, repository_figures, usage

    cfg = app.config()
    with open_repo(app) as repo:
        records = list_records(repo, pending_url=cfg.repository.url)
        stored = repository_figures(repo)["stored_bytes"] if holds_repository(cfg) else None
    rows = usage(cfg, records, repo_stored=stored, max_age_s=max_age_h * 3600)
    if app.run is not None:
        app.run.set(allocations={r.key: r.used for r in rows if r.used is not None})
    data = [r.to_json() for r in rows]

    def human(console: Console) -> None:
        def size(v: float | None) -> str:
            return "-" if v is None else human_bytes(int(v))

        cells = []
        for r in rows:
            pct, days = r.percent, r.days_until_full
            cells.append([
                r.key, size(r.used), size(r.allocated), "-" if pct is None else f"{pct:.1f}%",
                "-" if r.growth_per_day is None else f"{human_bytes(int(r.growth_per_day))}/d",
                "-" if days is None else f"{days:.0f}", r.source, r.path,
            ])  # fmt: skip
        columns = ["allocation", "used", "allocated", "%", "growth", "days left", "source", "path"]
        show(console, columns, cells, wide=False, flexible={"path"})

    app.out.emit(data, human)
