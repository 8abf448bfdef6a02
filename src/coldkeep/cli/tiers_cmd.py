"""``coldkeep tiers backup | clean`` — the data tiers of ``[tiers]`` (:mod:`coldkeep.ops.tiers`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from coldkeep.cli.context import AppContext, pass_app
from coldkeep.cli.output import plain
from coldkeep.cli.recorded import recorded
from coldkeep.cli.repo_support import lock_wait_option, open_repo, progress
from coldkeep.errors import EXIT_PARTIAL
from coldkeep.units import human_bytes

if TYPE_CHECKING:
    from rich.console import Console


def _target(kwargs: dict[str, Any]) -> str:
    return f"tier{kwargs['tier']}" if kwargs.get("tier") else ""


@click.group()
def tiers() -> None:
    """Tier 1/2/3 data ([tiers]): a snapshot per tier with the tier's retention, and deleting
    live Tier-3 files past retention once a tier snapshot holds them."""


@tiers.command("backup")
@click.option("--tier", type=click.IntRange(1, 3), default=None, help="only this tier (default: every tier)")
@lock_wait_option
@pass_app
@recorded("tiers backup", target=_target)
def backup(app: AppContext, tier: int | None, lock_wait: float) -> int:
    """Snapshot each tier's paths (kind `tier`, tagged tier=N: generic `forget` leaves them
    alone), then remove that tier's snapshots older than its retention_days (never the newest;
    Tier 1 never expires; `repo prune` reclaims the space).  Exit 6: a snapshot was written but
    some files changed while read or could not be read."""
    from coldkeep.ops.tiers import TIERS, backup_tier, tier_paths

    cfg = app.config()
    chosen = [tier] if tier else list(TIERS)
    for n in chosen:
        tier_paths(cfg, n)  # every missing path named before anything is written
    done = []
    with open_repo(app) as repo, progress(app, "tiers backup") as prog:
        for n in chosen:
            done.append(backup_tier(repo, cfg, n, progress=prog, lock_wait_s=lock_wait))
    tiers_json = [d.to_json() for d in done]
    for d in tiers_json:
        for warning in d["warnings"]:
            app.out.warn(f"tier {d['tier']}: {warning}")
    data = {
        "tiers": tiers_json,
        "logical_bytes": sum(d["logical_bytes"] for d in tiers_json),
        "new_stored_bytes": sum(d["new_stored_bytes"] for d in tiers_json),
        "snapshots": sum(1 for d in tiers_json if d["snapshot"]),
        "expired": sum(len(d["expired"]) for d in tiers_json),
    }

    def human(console: Console) -> None:
        for d in tiers_json:
            if not d["snapshot"]:
                console.print(f"tier {d['tier']}: no paths configured")
                continue
            console.print(
                f"tier {d['tier']}: snapshot {d['snapshot'][:8]} {d['files']} files, "
                f"{human_bytes(d['logical_bytes'])} logical, {human_bytes(d['new_stored_bytes'])} new; "
                f"retention {d['retention_days']}: {len(d['expired'])} expired, {d['kept']} kept"
            )

    app.out.emit(data, human)
    return EXIT_PARTIAL if any(d["partial"] for d in tiers_json) else 0


@tiers.command("clean")
@click.option("--tier", type=click.IntRange(2, 3), default=3, show_default=True, help="the tier to clean")
@click.option("--older-than", "older_than", type=click.IntRange(min=0), default=None, metavar="DAYS",
              help="files not modified for DAYS days (default: the tier's retention_days)")  # fmt: skip
@click.option("--delete", is_flag=True, help="delete them (default: only list them)")
@pass_app
def clean(app: AppContext, tier: int, older_than: int | None, delete: bool) -> None:
    """List the tier's live files past retention (modification time); with --delete, delete the
    ones a tier snapshot already holds (same size and time, its data in the repository, the
    same SHA-256).  A file no tier snapshot holds is never deleted: the listing says why."""
    from coldkeep.ops.tiers import clean_tier

    cfg = app.config()
    with open_repo(app) as repo:
        result = clean_tier(repo, cfg, tier, older_than_days=older_than, delete=delete)
    for warning in result.warnings:
        app.out.warn(warning)
    for item in result.items if delete else []:  # a dry run's table says it already
        if item.action == "kept":
            app.out.warn(f"{item.path}: kept: {item.reason}")
    data = result.to_json()

    def human(console: Console) -> None:
        from coldkeep.cli.tables import short_time, show

        if not result.items:
            console.print(f"no tier {tier} files older than {result.older_than_days} days")
            return
        cells = [[plain(i.path), human_bytes(i.size), short_time(data_file["mtime"]), i.action, plain(i.reason)]
                 for i, data_file in zip(result.items, data["files"], strict=True)]  # fmt: skip
        show(
            console,
            ["path", "size", "modified", "action", "why"],
            cells,
            wide=False,
            flexible={"path", "why"},
        )
        verb = "deleted" if delete else "would delete"
        n = data["deleted"] if delete else data["would_delete"]
        console.print(f"{verb} {n} file(s); kept {data['kept']} (see why)")

    app.out.emit(data, human)
