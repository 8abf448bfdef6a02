"""``coldkeep checkpoints …`` — model checkpoints: list, back up, archive, recover, verify,
promote, roll back, history, export.

Exit codes: 0 ok; 1 failed (a checkpoint changed while it was stored, a load check failed); 2 usage
or config; 3 integrity (a stored copy does not verify: nothing was removed or restored from it);
4 another checkpoints run holds the root; 5 not found.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from coldkeep.checkpoints.naming import TYPES
from coldkeep.cli.context import AppContext, pass_app
from coldkeep.cli.output import plain
from coldkeep.units import human_bytes

F = TypeVar("F", bound=Callable[..., Any])


def _json_flag(fn: F) -> F:
    """``--json`` after the subcommand too (same as the global flag)."""

    def callback(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value:
            app = ctx.find_object(AppContext)
            if app is not None:
                app.out.json = True

    return click.option(
        "--json", "json_", is_flag=True, expose_value=False, is_eager=True, callback=callback,
        help="machine-readable output on stdout",
    )(fn)  # fmt: skip


def _service(app: AppContext) -> Any:
    from coldkeep.checkpoints import Service

    return Service(app.config(), log=app.out.info)


def _outcome(app: AppContext, result: Any, title: str) -> int:
    """Print a backup/archive outcome: one line per checkpoint with its reason."""
    data = result.to_json()

    def human(c: Console) -> None:
        table = Table("checkpoint", "action", "reason", title=title)
        for item in data["checkpoints"]:
            table.add_row(plain(item["name"]), item["action"], plain(item["reason"]))
        c.print(table if data["checkpoints"] else "no checkpoints")

    app.out.emit(data, human)
    for problem in data["problems"]:
        app.out.warn(problem)
    return int(data["exit_code"])


@click.group()
def checkpoints() -> None:
    """Model checkpoints under [checkpoints].root (cet-d-{phase}/{type}-{YYYYmmdd_HHMMSS}).

    \b
    Exit codes: 0 ok, 1 failed, 2 usage/config, 3 a stored copy does not verify (nothing removed),
    4 another checkpoints run holds the root, 5 not found.
    """


@checkpoints.command("list")
@click.option("--phase", default=None, help="only this phase (e.g. phase3)")
@click.option("--type", "type_", type=click.Choice(TYPES), default=None, help="only this type")
@_json_flag
@pass_app
def list_(app: AppContext, phase: str | None, type_: str | None) -> None:
    """Every checkpoint, hot or archived: where it is, complete?, verified?, when it is due and why."""
    with _service(app) as svc:
        data = svc.list(phase=phase, type_=type_)

    def human(c: Console) -> None:
        table = Table("checkpoint", "size", "where", "complete", "verified", "due", "reason")
        for row in data["checkpoints"]:
            complete = "-" if row["complete"] is None else "yes" if row["complete"] else "no"
            table.add_row(
                plain(row["name"]), human_bytes(row["size"]), row["where"], complete,
                "yes" if row["verified"] else "no", row["due"] or "-", plain(row["reason"]),
            )  # fmt: skip
        c.print(table if data["checkpoints"] else "no checkpoints")
        for item in data["unrecognised"]:
            c.print(
                f"[yellow]unrecognised[/yellow] {plain(item['path'])}: {plain(item['reason'])} (left alone)"
            )
        for path in data["leftovers"]:
            c.print(
                f"[yellow]interrupted[/yellow] {plain(path)} (the next `checkpoints archive` finishes it)"
            )

    app.out.emit(data, human)


@checkpoints.command()
@_json_flag
@pass_app
def backup(app: AppContext) -> int:
    """Store every complete hot checkpoint not yet in the repository (one strict snapshot each)."""
    from coldkeep.checkpoints.store import backup as run

    with _service(app) as svc:
        return _outcome(app, run(svc), "checkpoints backup")


@checkpoints.command()
@click.option("--dry-run", is_flag=True, help="print every decision; store and remove nothing")
@_json_flag
@pass_app
def archive(app: AppContext, dry_run: bool) -> int:
    """Archive due hot checkpoints: store, verify the stored copy against the hot files, remove."""
    from coldkeep.checkpoints.store import archive as run

    with _service(app) as svc:
        return _outcome(
            app, run(svc, dry_run=dry_run), "checkpoints archive" + (" (dry run)" if dry_run else "")
        )
