"""Shared by the repository commands: open the repository, show progress, parse tags, ``--lock-wait``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click

from coldkeep.cli.context import AppContext
from coldkeep.cli.params import FiniteRange
from coldkeep.errors import UsageError
from coldkeep.repository import progress as repo_mod
from coldkeep.repository.repository import Repository


def open_repo(app: AppContext) -> Repository:
    from coldkeep.repository.setup import open_repository_section

    repo = open_repository_section(app.repository_section())
    if app.run is not None:  # a recorded job: its run record is written with these keys
        app.run.attach(repo)
    return repo


#: ``--lock-wait`` of the commands that take the exclusive lock (prune, forget, pg expire)
lock_wait_option = click.option(
    "--lock-wait", type=FiniteRange(min=0), default=0.0, show_default=True, metavar="SECONDS",
    help="wait this long for running backups, restores and checks to finish (then exit 4)",
)  # fmt: skip


def parse_tags(values: tuple[str, ...] | list[str]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise UsageError(f"tag {value!r} is not KEY=VALUE", hint="write e.g. --tag phase=phase3")
        tags[key] = val
    return tags


@contextlib.contextmanager
def progress(app: AppContext, description: str) -> Iterator[repo_mod.Progress]:
    """A byte progress bar on a terminal; silent with --json, --quiet or no TTY."""
    counters = repo_mod.Progress()
    if not app.out.progress_enabled:
        yield counters
        return
    from rich.progress import (  # only on a terminal: `--json` runs never pay for it
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn(description),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=app.out.err,
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=None)

        def update(p: repo_mod.Progress) -> None:
            bar.update(task, completed=p.bytes_done, total=p.bytes_total or None)

        counters.callback = update
        yield counters
