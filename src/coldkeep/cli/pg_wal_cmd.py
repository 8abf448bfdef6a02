"""``coldkeep pg setup | check | wal-push | wal-fetch``: the WAL archive commands.

Mounted into the ``pg`` group by :mod:`coldkeep.cli.pg_cmd` (``WAL_COMMANDS``).  ``wal-push`` and
``wal-fetch`` normally never get here: the executable (:mod:`coldkeep.cli.entry`) runs them on the
lean path (:mod:`coldkeep.lean`, :mod:`coldkeep.cli.walfast`); these click commands serve
``--help``, the command lines the lean parser leaves alone and ``COLDKEEP_WAL_FASTPATH=0``, and
call the same functions, so the behaviour (and exit codes) are the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from coldkeep.cli.context import AppContext, pass_app
from coldkeep.cli.params import FiniteRange
from coldkeep.cli.walfast import fetch_main, push_async_main, push_main
from coldkeep.lean import MAX_PREFETCH, MAX_WORKERS, GlobalOptions

if TYPE_CHECKING:
    from rich.console import Console


def _flags(app: AppContext) -> GlobalOptions:
    return GlobalOptions(
        config=app.config_path, json=app.out.json, quiet=app.out.quiet, verbose=app.out.verbose
    )


@click.command("setup")
@click.option("--apply", is_flag=True, help="apply the settings with ALTER SYSTEM and record the cluster")
@click.option("--synchronous", is_flag=True, help="also a replication slot for a synchronous WAL receiver")
@click.option("--new-lineage", is_flag=True, help="after pg_upgrade: archive the new system identifier apart")
@click.option("--coldkeep-path", metavar="PATH", help="absolute coldkeep executable for archive_command")
@pass_app
def setup(
    app: AppContext, apply: bool, synchronous: bool, new_lineage: bool, coldkeep_path: str | None
) -> int:
    """Show (or --apply) the settings WAL archiving needs; says whether a restart is needed."""
    from coldkeep.postgres.archiving import setup as run_setup
    from coldkeep.repository.setup import open_repository

    config = app.config()
    with open_repository(config) as repo:
        result = run_setup(config, repo, apply=apply, synchronous=synchronous, new_lineage=new_lineage,
                           executable=coldkeep_path)  # fmt: skip
    for warning in result.warnings:
        app.out.warn(warning)

    def human(console: Console) -> None:
        for s in result.settings:
            if not s.changes:
                console.print(f"  ok       {s.name} = {s.current or chr(39) * 2}", markup=False)
                continue
            how = "restart" if s.context == "postmaster" else "reload"
            if not s.apply:
                how = "not applied: " + s.note
            console.print(f"  change   {s.name}: {s.current or chr(39) * 2} -> {s.desired or chr(39) * 2} ({how})",
                          markup=False)  # fmt: skip
        lineage = f" ({result.lineage['prefix']})" if result.lineage else ""
        console.print(f"system identifier {result.system_identifier}, WAL lineage: {result.lineage_action}{lineage}",
                      markup=False)  # fmt: skip
        if result.slot:
            console.print(f"replication slot {result.slot['name']}: {'exists' if result.slot['exists'] else 'missing'}",
                          markup=False)  # fmt: skip
        restart = [s.name for s in result.settings if s.changes and s.apply and s.context == "postmaster"]
        held = [s.name for s in result.settings if s.changes and not s.apply]
        if not result.applied:
            console.print("nothing changed (shown only); apply with --apply"
                          + (f"; that needs a restart for {', '.join(restart)}" if restart else ""), markup=False)  # fmt: skip
            return
        done = f"applied except {', '.join(held)} (see the warning)" if held else "applied"
        restart_note = f"RESTART PostgreSQL for {', '.join(restart)}" if restart else "no restart needed"
        console.print(f"{done}; {restart_note}", markup=False)

    app.out.emit(result.to_json(), human)
    return 0


@click.command("check")
@click.option("--timeout", type=FiniteRange(min=0.1), default=60.0, show_default=True,
              help="seconds to wait for the switched segment")  # fmt: skip
@pass_app
def check(app: AppContext, timeout: float) -> int:
    """Switch to a new WAL segment and confirm it reaches the repository."""
    from coldkeep.postgres.archiving import check as run_check
    from coldkeep.repository.setup import open_repository

    config = app.config()
    with open_repository(config) as repo:
        result = run_check(config, repo, timeout=timeout)
    app.out.emit(result.to_json(), lambda c: c.print(
        f"ok: {result.segment} archived and verified {result.elapsed_s:.2f} s after the switch "
        f"(archiver: {result.archiver['archived_count']} archived, {result.archiver['failed_count']} failed)",
        markup=False))  # fmt: skip
    return 0


@click.command("wal-push")
@click.option("--async", "async_", is_flag=True,
              help="a background pusher pushes the next .ready segments in parallel; exit 0 once this one is durable")  # fmt: skip
@click.option("--workers", type=click.IntRange(0, MAX_WORKERS), default=0, metavar="N",
              help="threads of the background pusher (default: CPUs, at most 4)")  # fmt: skip
@click.argument("path")
@pass_app
def wal_push(app: AppContext, async_: bool, workers: int, path: str) -> int:
    """Archive one WAL file (archive_command: `coldkeep --config FILE pg wal-push %p`).

    Exits 0 once the file is durable in the repository (or an identical copy already was),
    3 if a different file with that name is archived or the file is not the segment its name
    says, 1 on other failures."""
    if async_ or workers:
        return push_async_main(_flags(app), path, workers)
    return push_main(_flags(app), path)


@click.command("wal-fetch")
@click.option(
    "--lineage", metavar="PREFIX", help="WAL lineage of the backup being restored (default: current)"
)
@click.option("--prefetch", type=click.IntRange(0, MAX_PREFETCH), default=0, show_default=True, metavar="K",
              help="fetch the next K segments ahead in the background (spool next to DEST)")  # fmt: skip
@click.argument("name")
@click.argument("dest")
@pass_app
def wal_fetch(app: AppContext, lineage: str | None, prefetch: int, name: str, dest: str) -> int:
    """Restore one archived WAL file (restore_command: `... pg wal-fetch %f %p`).

    Exits 1 only when NAME is not archived, 126 on any other failure (so that PostgreSQL stops
    recovery instead of ending it early)."""
    return fetch_main(_flags(app), name, dest, lineage, prefetch)


WAL_COMMANDS: list[click.Command] = [setup, check, wal_push, wal_fetch]

#: a standalone group with just these commands (``pg_cmd.pg`` is the real one)
pg = click.Group("pg", help="PostgreSQL WAL archive commands.")
for _command in WAL_COMMANDS:
    pg.add_command(_command)
