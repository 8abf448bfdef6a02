"""``coldkeep backup | snapshots | restore | forget`` — generic files in the repository."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from coldkeep import clock
from coldkeep.cli.context import AppContext, pass_app
from coldkeep.cli.output import plain
from coldkeep.cli.recorded import recorded
from coldkeep.cli.repo_support import lock_wait_option, open_repo, parse_tags, progress
from coldkeep.errors import (
    EXIT_FAILED,
    EXIT_INTEGRITY,
    EXIT_PARTIAL,
    IntegrityError,
    RestoreTargetError,
    SourceChanged,
)
from coldkeep.units import human_bytes

if TYPE_CHECKING:  # rich is imported when a table is rendered, not for `backup --json`
    from rich.console import Console

    from coldkeep.repository.repository import Repository
    from coldkeep.repository.snapshot import Snapshot


class _Path(click.Path):
    """``click.Path`` that refuses an empty string, which ``Path("")`` would read as the current
    directory (`--target "$DIR"` with DIR unset restored over the directory the job ran in)."""

    def convert(
        self, value: str | os.PathLike[str], param: click.Parameter | None, ctx: click.Context | None
    ) -> str | bytes | os.PathLike[str]:
        if isinstance(value, str) and not value:
            self.fail("an empty path (it would mean the current directory; write . for that)", param, ctx)
        return super().convert(value, param, ctx)


@click.command()
@click.argument("paths", nargs=-1, required=True, type=_Path(path_type=Path))
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="tag the snapshot (repeatable)")
@click.option("--label", default="", help="free text stored with the snapshot")
@click.option(
    "--strict",
    is_flag=True,
    help="write no snapshot (exit 1) if a file changes while it is read or cannot be read",
)
@click.option(
    "--exclude",
    "exclude_patterns",
    multiple=True,
    metavar="PATTERN",
    help="leave out matching entries: a base name glob ('*.tmp') or a path glob (repeatable)",
)
@click.option(
    "--exclude-file",
    "exclude_files",
    multiple=True,
    type=_Path(path_type=Path),
    metavar="FILE",
    help="patterns, one per line ('#' comments), as --exclude (repeatable)",
)
@click.option("--exclude-caches", is_flag=True, help="leave out directories holding a CACHEDIR.TAG")
@pass_app
@recorded("backup")
def backup(
    app: AppContext,
    paths: tuple[Path, ...],
    tags: tuple[str, ...],
    label: str,
    strict: bool,
    exclude_patterns: tuple[str, ...],
    exclude_files: tuple[Path, ...],
    exclude_caches: bool,
) -> int:
    """Back up files and directories into a new snapshot.

    A PATH that is a symlink to a directory is backed up as that directory. Exit 6: the snapshot
    was written, but some files changed while they were read (stored as read) or could not be
    read (left out); they are named in warnings and in `changed_files` / `skipped_files`.

    \b
    --exclude: a pattern without '/' matches base names anywhere ('*.tmp', '__pycache__'); one
    with '/' matches the absolute path or the path below the backed-up directory; an excluded
    directory goes with everything below it.  The rules are recorded in the snapshot.
    """
    from coldkeep.repository.backup import Backup
    from coldkeep.repository.excludes import Excludes, read_exclude_file
    from coldkeep.repository.locks import locked

    patterns = list(exclude_patterns)
    for file in exclude_files:
        patterns += read_exclude_file(file)
    excludes = Excludes(patterns, exclude_caches)

    tag_map = parse_tags(tags)
    with (
        open_repo(app) as repo,
        locked(repo.backend, "backup", exclusive=False),
        progress(app, "backup") as prog,
    ):
        try:
            result = Backup(repo, progress=prog).run(
                list(paths), tags=tag_map, label=label, strict=strict, excludes=excludes or None
            )
        except SourceChanged as exc:  # --strict: say what happened to each file, then the error
            for warning in exc.warnings:
                app.out.warn(warning)
            raise
    if excludes.excluded:
        result.notes.append(
            f"{excludes.excluded} entries left out by the exclusion rules (recorded in the snapshot)"
        )
    for note in result.notes:
        app.out.info(f"note: {note}")
    for warning in result.warnings:
        app.out.warn(warning)
    app.out.emit(
        result.to_json(),
        lambda c: c.print(
            f"snapshot {result.snapshot.short_id} saved: {result.files} files, "
            f"{human_bytes(result.logical_bytes)} logical, {human_bytes(result.new_stored_bytes)} new stored, "
            f"{result.duration_s:.2f} s"
        ),
    )
    if result.partial:
        app.out.warn(
            f"snapshot {result.snapshot.short_id} is partial: {len(result.changed_files)} file(s) changed "
            f"while being read (stored as read), {len(result.skipped_files)} could not be read (left out)"
        )
        return EXIT_PARTIAL
    return 0


@click.command()
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="only snapshots with this tag")
@click.option("--wide", is_flag=True, help="every column in full (paths, seconds), however wide")
@pass_app
def snapshots(app: AppContext, tags: tuple[str, ...], wide: bool) -> None:
    """List snapshots, oldest first: logical size and the new bytes each one stored (the rest was
    deduplicated).  Fits 80 columns (long cells cut with …) unless --wide."""
    from coldkeep.cli.tables import short_time, show

    with open_repo(app) as repo:
        snaps = repo.list_snapshots(parse_tags(tags))

    def human(console: Console) -> None:
        columns = ["id", "time", "host", "tags", "label", "files", "size", "new"] + (
            ["paths"] if wide else []
        )
        rows = []
        for s in snaps:
            new = s.summary.get("new_stored_bytes")
            row = [s.short_id, s.time if wide else short_time(s.time), plain(s.host),
                   plain(" ".join(f"{k}={v}" for k, v in s.tags.items())), plain(s.label),
                   str(s.summary.get("files", "")), human_bytes(s.logical_bytes),
                   "-" if new is None else human_bytes(int(new))]  # fmt: skip
            rows.append(row + ([plain(" ".join(s.paths))] if wide else []))
        show(console, columns, rows, wide=wide, flexible={"host", "tags", "label", "paths"})

    app.out.emit([s.to_json() for s in snaps], human)


@click.command()
@click.argument("snapshot")
@click.option("--target", required=True, type=_Path(path_type=Path), help="directory to restore into")
@click.option(
    "--tag",
    "tags",
    multiple=True,
    metavar="KEY=VALUE",
    help="with `latest`: the newest snapshot having this tag (repeatable)",
)
@click.option(
    "--include",
    "includes",
    multiple=True,
    metavar="GLOB",
    help="only matching paths, relative to the backed-up directory ('train/*') or whole (repeatable)",
)
@click.option(
    "--exclude", "excludes", multiple=True, metavar="GLOB", help="leave matching paths out (repeatable)"
)
@click.option(
    "--relative",
    is_flag=True,
    help="land paths relative to the backed-up directory (TARGET/train/...), not TARGET/<full source path>",
)
@click.option(
    "--strip-components",
    type=click.IntRange(min=0),
    default=0,
    metavar="N",
    help="drop the first N components of each stored path, as tar does",
)
@pass_app
def restore(
    app: AppContext,
    snapshot: str,
    target: Path,
    tags: tuple[str, ...],
    includes: tuple[str, ...],
    excludes: tuple[str, ...],
    relative: bool,
    strip_components: int,
) -> int:
    """Restore a snapshot (id, prefix or `latest`) into DIR, verifying every byte.

    `latest` is the newest snapshot of any kind; `latest --tag kind=dataset` the newest with
    that tag.

    \b
    Paths land as TARGET/<full source path> (a backup of /mnt/data: TARGET/mnt/data/...);
    --relative lands them as TARGET/... (or TARGET/<name>/... for each of several backed-up
    paths), --strip-components N drops N leading components.  --include / --exclude patterns
    match paths relative to the backed-up directory or whole stored paths; a directory pattern
    selects everything below it; nothing matched is exit 5."""
    from coldkeep.repository.locks import locked
    from coldkeep.repository.restore import Restorer
    from coldkeep.repository.restore_select import Selection

    with (
        open_repo(app) as repo,
        locked(repo.backend, "restore", exclusive=False),
        progress(app, "restore") as prog,
    ):
        snap = _pick_snapshot(repo, snapshot, parse_tags(tags))
        selection = Selection(includes, excludes, relative, strip_components, roots=tuple(snap.paths))
        result = Restorer(repo, progress=prog).run(snap, target, selection=selection)
    for warning in result.warnings:  # restored, but not as the snapshot has it
        app.out.warn(warning)
    damage = result.damage  # data that did not verify comes first: it decides the exit code
    errors = damage + [e for e in result.errors if e not in damage]
    for error in errors[1:]:  # the first one is the error line below
        app.out.warn(error)
    app.out.emit(
        result.to_json(),
        lambda c: c.print(
            f"restored {result.files} files ({human_bytes(result.bytes)}) into {plain(result.target)} "
            f"in {result.duration_s:.2f} s" + (f"; {len(result.errors)} FAILED" if result.errors else "")
        ),
    )
    if errors:
        more = f" (+{len(errors) - 1} more, in the warnings above)" if len(errors) > 1 else ""
        if damage:
            app.out.failure(IntegrityError(f"not restored: {errors[0]}{more}"))
            return EXIT_INTEGRITY
        app.out.failure(RestoreTargetError(f"not restored: {errors[0]}{more}", target=plain(result.target)))
        return EXIT_FAILED
    return 0


def _pick_snapshot(repo: Repository, ref: str, tags: dict[str, str]) -> Snapshot:
    """``ref`` (id, prefix, ``latest``); with ``tags``, ``latest`` is the newest snapshot having
    every one of them (exit 5 when none has), and any other ``ref`` is a usage error."""
    from coldkeep.errors import NotFound, UsageError

    if not tags:
        return repo.find_snapshot(ref)
    if ref != "latest":
        raise UsageError(f"--tag selects among snapshots for `latest`, not for {ref!r}",
                         hint="give `latest --tag KEY=VALUE`, or the snapshot id alone")  # fmt: skip
    snaps = repo.list_snapshots(tags)
    if not snaps:
        wanted = " ".join(f"{k}={v}" for k, v in tags.items())
        raise NotFound(
            f"no snapshot has the tag(s) {plain(wanted)}", hint="list them with `coldkeep snapshots`"
        )
    return snaps[-1]


@click.command()
@click.argument("snapshot_ids", nargs=-1, metavar="[SNAPSHOT_ID]...")
@click.option("--keep-last", type=click.IntRange(min=0), default=0)
@click.option("--keep-hourly", type=click.IntRange(min=0), default=0)
@click.option("--keep-daily", type=click.IntRange(min=0), default=0)
@click.option("--keep-weekly", type=click.IntRange(min=0), default=0)
@click.option("--keep-monthly", type=click.IntRange(min=0), default=0)
@click.option("--keep-yearly", type=click.IntRange(min=0), default=0)
@click.option("--keep-within", default=None, metavar="DURATION", help="e.g. 30d, 12h, 2w")
@click.option("--keep-tag", "keep_tags", multiple=True, metavar="KEY=VALUE")
@click.option(
    "--group-by",
    default="host,paths",
    show_default=True,
    metavar="WORDS",
    help="apply the policy to each group: host, paths, tags (the whole set) or tag keys, comma-separated; '' for one group",
)
@click.option(
    "--tag", "tags", multiple=True, metavar="KEY=VALUE", help="only consider snapshots with this tag"
)
@click.option("--dry-run", is_flag=True, help="show the decisions, delete nothing")
@lock_wait_option
@pass_app
def forget(
    app: AppContext,
    snapshot_ids: tuple[str, ...],
    keep_last: int,
    keep_hourly: int,
    keep_daily: int,
    keep_weekly: int,
    keep_monthly: int,
    keep_yearly: int,
    keep_within: str | None,
    keep_tags: tuple[str, ...],
    group_by: str,
    tags: tuple[str, ...],
    dry_run: bool,
    lock_wait: float,
) -> None:
    """Remove generic file snapshots: the ones named, or the ones no --keep-* rule keeps.

    Only snapshots written by `coldkeep backup` are considered.  Snapshots a service owns
    (PostgreSQL base backups: `coldkeep pg expire`) and Tier-1 data (snapshots of kind or tag
    kind=dataset, checkpoint, repro, conversations) are never removed by `forget`.  Then
    `coldkeep repo prune` reclaims the space.
    """
    from coldkeep import retention
    from coldkeep.errors import UsageError
    from coldkeep.repository.forget import forget_by_policy, forget_ids
    from coldkeep.repository.locks import locked

    policy = retention.Policy.parse(
        keep_last=keep_last, keep_hourly=keep_hourly, keep_daily=keep_daily, keep_weekly=keep_weekly,
        keep_monthly=keep_monthly, keep_yearly=keep_yearly, keep_within=keep_within,
        keep_tag=list(keep_tags), group_by=[group_by],
    )  # fmt: skip
    if snapshot_ids and (not policy.is_empty() or tags):
        raise UsageError(
            "give snapshot ids or --keep-*/--tag options, not both",
            hint="`coldkeep forget ID…` removes those snapshots; `coldkeep forget --keep-daily 7` applies a policy",
        )
    with open_repo(app) as repo, locked(repo.backend, "forget", exclusive=True, wait_s=lock_wait):
        if snapshot_ids:
            result = forget_ids(repo, snapshot_ids, dry_run=dry_run)
        else:
            result = forget_by_policy(repo, policy, now=clock.now(), tags=parse_tags(tags), dry_run=dry_run)

    def human(console: Console) -> None:
        from rich.table import Table

        table = Table("id", "time", "decision", "reasons")
        for d in result.decisions:
            table.add_row(d.item.id[:8], clock.isoformat(d.item.time), "keep" if d.keep else "[red]remove[/red]",
                          plain(", ".join(d.reasons)))  # fmt: skip
        console.print(table)
        if result.left_alone:
            console.print(f"left alone: {len(result.left_alone)} snapshot(s) that services own")
            for a in result.left_alone:
                console.print(
                    f"  {a.snapshot.short_id}  {plain(a.snapshot.time)}  {plain(a.owner.describe())}"
                )
        console.print(
            f"{len(result.removed)} snapshot(s) {'would be ' if dry_run else ''}removed; "
            "run `coldkeep repo prune` to reclaim space"
        )

    app.out.emit(result.to_json(), human)
