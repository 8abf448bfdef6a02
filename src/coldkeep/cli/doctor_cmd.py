"""``coldkeep doctor``: a pass/warn/fail table of the environment (exit 1 if anything fails)."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from coldkeep.cli.context import AppContext, pass_app
from coldkeep.errors import EXIT_FAILED
from coldkeep.ops.doctor import Doctor

_STYLE = {"pass": "green", "warn": "yellow", "fail": "red", "skip": "dim"}


@click.command()
@pass_app
def doctor(app: AppContext) -> int:
    """Check PostgreSQL, the repository, storage space, OS users and the clock."""
    checks = list(Doctor(app.config()).run())
    failed = sum(c.status == "fail" for c in checks)

    def human(console: Console) -> None:
        table = Table("check", "status", "detail", show_lines=False)
        for c in checks:
            table.add_row(c.name, f"[{_STYLE[c.status]}]{c.status}[/]", c.detail)
        console.print(table)
        console.print(f"{failed} failed, {sum(c.status == 'warn' for c in checks)} warnings")

    app.out.emit({"ok": failed == 0, "checks": [c.to_json() for c in checks]}, human)
    return EXIT_FAILED if failed else 0
