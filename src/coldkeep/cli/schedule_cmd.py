"""``coldkeep schedule show | install`` and ``coldkeep run-due`` (:mod:`coldkeep.ops.schedule`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from coldkeep import clock
from coldkeep.cli.context import AppContext, pass_app
from coldkeep.cli.repo_support import open_repo
from coldkeep.errors import UsageError

if TYPE_CHECKING:
    from rich.console import Console

    from coldkeep.ops.schedule import JobState


def _states(app: AppContext) -> list[JobState]:
    from coldkeep.ops.runs import list_records
    from coldkeep.ops.schedule import states

    cfg = app.config()
    with open_repo(app) as repo:
        records = list_records(repo, pending_url=cfg.repository.url)
    return states(cfg, records)


def _config_path(app: AppContext) -> str:
    from coldkeep.config import find_config

    return str(find_config(app.config_path).resolve())


@click.group()
def schedule() -> None:
    """When each job runs ([schedule]), and timers or a crontab to run them."""


@schedule.command("show")
@pass_app
def show(app: AppContext) -> None:
    """Each scheduled job: its cron entry, last run, next run, and whether it is due or late."""
    now = clock.now()
    rows = [s.to_json(now) for s in _states(app)]

    def human(console: Console) -> None:
        from coldkeep.cli.tables import short_time
        from coldkeep.cli.tables import show as table

        cells = [
            [str(r["type"]), "LATE" if r["late"] else "due" if r["due"] else "-",
             short_time(str(r["last_run"] or "-")), str(r["last_result"] or "-"),
             short_time(str(r["next_run"] or "-")), str(r["cron"])]
            for r in rows
        ]  # fmt: skip
        columns = ["job", "state", "last run", "result", "next run", "cron"]
        table(console, columns, cells, wide=False, flexible={"cron"})

    app.out.emit(rows, human)


@schedule.command("install")
@click.option("--systemd", "kind", flag_value="systemd", help="a .service and .timer per job")
@click.option("--cron", "kind", flag_value="cron", help="an /etc/cron.d fragment")
@click.option(
    "--dir", "directory", default=None, metavar="DIR", help="--systemd: where (default /etc/systemd/system)"
)
@click.option(
    "--out", "out", default=None, metavar="FILE", help="--cron: the file (default /etc/cron.d/coldkeep)"
)
@click.option(
    "--user", default=None, metavar="USER", help="run the jobs as USER (default: [repository] owner)"
)
@click.option(
    "--coldkeep-path", default=None, metavar="PATH", help="the coldkeep executable (default: this one)"
)
@pass_app
def install(
    app: AppContext, kind: str | None, directory: str | None, out: str | None, user: str | None,
    coldkeep_path: str | None,
) -> None:  # fmt: skip
    """Write systemd timers (Persistent=true: a missed run happens at boot) or a crontab fragment
    for the scheduled jobs; nothing is enabled or reloaded."""
    from coldkeep.durable import write_atomic
    from coldkeep.ops.schedule import cron_fragment, jobs, systemd_units
    from coldkeep.postgres.archiving import coldkeep_executable

    if kind is None:
        raise UsageError("say --systemd or --cron", hint="coldkeep schedule install --systemd --dir DIR")
    cfg = app.config()
    executable = coldkeep_executable(coldkeep_path)
    config_path = _config_path(app)
    user = user or cfg.repository.owner or "root"
    written: list[str] = []
    if kind == "systemd":
        target = Path(directory or "/etc/systemd/system")
        target.mkdir(parents=True, exist_ok=True)
        for job in jobs(cfg):
            for name, text in systemd_units(job, executable, config_path, user).items():
                write_atomic(target / name, text.encode(), mode=0o644)
                written.append(str(target / name))
        then = "systemctl daemon-reload && systemctl enable --now " + " ".join(
            Path(w).name for w in written if w.endswith(".timer")
        )
    else:
        path = Path(out or "/etc/cron.d/coldkeep")
        write_atomic(path, cron_fragment(cfg, executable, config_path, user).encode(), mode=0o644)
        written.append(str(path))
        then = "cron reads /etc/cron.d by itself"
    app.out.emit(
        {"written": written, "next": then},
        lambda c: c.print("\n".join(["wrote:", *written, f"then: {then}"])),
    )


@click.command("run-due")
@click.option("--dry-run", is_flag=True, help="say what is due; run nothing")
@click.option(
    "--coldkeep-path", default=None, metavar="PATH", help="the coldkeep executable (default: this one)"
)
@pass_app
def run_due(app: AppContext, dry_run: bool, coldkeep_path: str | None) -> int:
    """Run every scheduled job that is due now, one at a time (each records its run); after
    downtime each job runs once.  Exit 1 if a job failed, 4 if another run-due is running."""
    from coldkeep.ops import rundue
    from coldkeep.postgres.archiving import coldkeep_executable

    config_path = _config_path(app)
    with rundue.run_due_lock(config_path):
        now = clock.now()
        due = [s for s in _states(app) if s.due]
        if dry_run:
            data = {"due": [s.to_json(now) for s in due], "ran": []}
            app.out.emit(
                data, lambda c: c.print("\n".join(f"due: {s.job.type}" for s in due) or "nothing due")
            )
            return 0
        executable = coldkeep_executable(coldkeep_path)
        ran = rundue.run_due(due, executable, config_path,
                             on_start=lambda s, _t: app.out.info(f"run-due: {' '.join(s.job.argv)}"))  # fmt: skip
    data = {"due": [s.to_json(now) for s in due], "ran": [r.to_json() for r in ran]}
    failed = [r for r in ran if r.exit_code != 0]
    app.out.emit(data, lambda c: c.print(
        "\n".join(f"{r.type}: exit {r.exit_code}" for r in ran) or "nothing due"))  # fmt: skip
    return 1 if failed else 0
