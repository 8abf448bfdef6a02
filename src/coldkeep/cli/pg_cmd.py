"""``coldkeep pg …``: base backups, verification, restore/PITR, restore tests, expiry.

The WAL commands (setup, check, wal-push, wal-fetch) live in :mod:`coldkeep.cli.pg_wal_cmd`,
``receive-wal`` in :mod:`coldkeep.cli.pg_receive_cmd`; they are mounted here.
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from coldkeep import clock
from coldkeep.cli.context import AppContext, pass_app
from coldkeep.cli.output import plain, safe_line
from coldkeep.cli.params import FiniteRange
from coldkeep.cli.recorded import recorded
from coldkeep.cli.repo_support import lock_wait_option, open_repo, progress
from coldkeep.errors import EXIT_INTEGRITY, NotFound
from coldkeep.units import human_bytes


@click.group()
def pg() -> None:
    """PostgreSQL: WAL archive, base backups, point-in-time recovery, restore tests, expiry."""


def _mount_wal_commands() -> None:
    from coldkeep.cli.pg_wal_cmd import WAL_COMMANDS

    for command in WAL_COMMANDS:
        pg.add_command(command)
    from coldkeep.cli.pg_receive_cmd import receive_wal

    pg.add_command(receive_wal)


_mount_wal_commands()


@pg.command("backup")
@click.option("--label", default="", help="free text stored with the backup")
@click.option(
    "--wal-timeout",
    type=FiniteRange(min=1),
    default=None,
    help="seconds the backup's WAL may take to be archived (default: [postgres].backup_wal_timeout)",
)
@pass_app
@recorded("pg backup")
def backup(app: AppContext, label: str, wal_timeout: float | None) -> None:
    """Take a deduplicated base backup; complete once its WAL is archived."""
    from coldkeep.postgres.basebackup import BaseBackup
    from coldkeep.repository.locks import locked

    cfg = app.config()
    with (
        open_repo(app) as repo,
        locked(repo.backend, "pg backup", exclusive=False),
        progress(app, "pg backup") as prog,
    ):
        info = BaseBackup(cfg, repo, progress=prog, wal_wait_s=wal_timeout).run(label=label)
    data = info.to_json()
    app.out.emit(data, lambda c: c.print(
        f"backup {info.snapshot.short_id}: {data['files']} files, {human_bytes(data['logical_bytes'])} logical, "
        f"{human_bytes(data['new_stored_bytes'] or 0)} new stored, WAL {data['start_wal']}..{data['stop_wal']} "
        f"archived, {data['duration_s']} s"))  # fmt: skip


@pg.command("backups")
@click.option("--wide", is_flag=True, help="every column in full (LSN range, seconds), however wide")
@pass_app
def backups(app: AppContext, wide: bool) -> None:
    """List base backups with their verified / restore-tested status, logical size and the new
    bytes each stored.  Fits 80 columns (long cells cut with …) unless --wide."""
    from coldkeep.cli.tables import short_time, show
    from coldkeep.postgres.catalog import listing

    with open_repo(app) as repo:
        rows = listing(repo)

    def human(console: Console) -> None:
        columns = ["id", "stop time", "tl", "size", "new", "verified", "tested", "label"]
        if wide:
            columns.insert(3, "start..stop LSN")
        cells = []
        for r in rows:
            stop = str(r["stop_time"])
            row = [r["short_id"], stop if wide else short_time(stop), str(r["timeline"]),
                   human_bytes(r["logical_bytes"]), human_bytes(r["new_stored_bytes"] or 0),
                   "yes" if r["verified"] else "-", "passed" if r["restore_tested"] else "-",
                   plain(r["label"])]  # fmt: skip
            if wide:
                row.insert(3, f"{r['start_lsn']}..{r['stop_lsn']}")
            cells.append(row)
        show(console, columns, cells, wide=wide, flexible={"label"})

    app.out.emit(rows, human)


@pg.command("verify")
@click.argument("backup", required=False)
@click.option("--all", "all_backups", is_flag=True, help="every backup")
@pass_app
def verify(app: AppContext, backup: str | None, all_backups: bool) -> int:
    """Check files against backup_manifest and the WAL chain to the newest segment (exit 3 on failure)."""
    from coldkeep.postgres.catalog import find_backup, list_backups
    from coldkeep.postgres.verify import verify_backup
    from coldkeep.repository.locks import locked

    with open_repo(app) as repo, locked(repo.backend, "pg verify", exclusive=False):
        snaps = list_backups(repo) if all_backups else [find_backup(repo, backup or "latest")]
        if not snaps:
            raise NotFound("there are no base backups to verify", hint="take one with `coldkeep pg backup`")
        results = [verify_backup(repo, s) for s in snaps]

    def human(console: Console) -> None:
        for r in results:
            state = "[green]ok[/green]" if r.ok else "[red]FAILED[/red]"
            console.print(f"{r.backup_id[:8]} {state}: {r.files_checked} files, {human_bytes(r.bytes_checked)}; "
                          f"WAL {r.wal.get('first')}..{r.wal.get('last')} ({r.wal.get('segments')} segments)")  # fmt: skip
            for p in r.problems:
                console.print(f"  [red]{plain(p)}[/red]")

    app.out.emit([r.to_json() for r in results], human)
    failed = [r for r in results if not r.ok]
    if failed:
        app.out.err.print(
            f"error: backup {failed[0].backup_id[:8]}: {safe_line(failed[0].problems[0])}", markup=False
        )
        return EXIT_INTEGRITY
    return 0


@pg.command("restore")
@click.option("--target-dir", required=True, type=click.Path(path_type=Path), help="data directory to create")
@click.option("--backup", "backup_ref", default=None, help="backup id (default: chosen from the target)")
@click.option("--time", "time_", default=None, metavar="TS", help="recover to this time (with a UTC offset)")
@click.option("--xid", default=None, help="recover to this transaction id")
@click.option("--lsn", default=None, help="recover to this WAL location")
@click.option("--name", default=None, help="recover to this restore point (pg_create_restore_point)")
@click.option("--immediate", is_flag=True, help="stop as soon as the backup is consistent")
@click.option("--timeline", default="latest", show_default=True, help="timeline id or 'latest'")
@click.option("--exclusive", is_flag=True, help="stop just before the target instead of just after")
@click.option("--start", is_flag=True, help="start it on a private socket/port and wait for promotion")
@click.option("--port", type=int, default=None, help="port for --start (default: a free one)")
@click.option("--archive-mode", type=click.Choice(["on", "off"]), default="off", show_default=True,
              help="'on' only for a real failover: the copy then archives into this repository")  # fmt: skip
@pass_app
def restore(
    app: AppContext,
    target_dir: Path,
    backup_ref: str | None,
    time_: str | None,
    xid: str | None,
    lsn: str | None,
    name: str | None,
    immediate: bool,
    timeline: str,
    exclusive: bool,
    start: bool,
    port: int | None,
    archive_mode: str,
) -> None:
    """Restore a base backup and set up recovery to a target (point-in-time recovery)."""
    from coldkeep.postgres.restore import PgRestore, make_target
    from coldkeep.repository.locks import locked

    target = make_target(time_=time_, xid=xid, lsn=lsn, name=name, immediate=immediate)
    cfg = app.config()
    # shared lock while the files are restored and, with --start, while the WAL is replayed
    with open_repo(app) as repo, locked(repo.backend, "pg restore", exclusive=False):
        restorer = PgRestore(cfg, repo)
        report, backup = restorer.prepare(target_dir, target=target, backup_ref=backup_ref, timeline=timeline,
                                          exclusive=exclusive, archive_mode=archive_mode)  # fmt: skip
        if start:
            restorer.start(report, port=port)
    data = report.to_json()

    from coldkeep.postgres.restore import describe_reached

    def human(console: Console) -> None:
        console.print(f"restored backup {backup.short_id} into {plain(report.data_dir)}: {report.files} files, "
                      f"{human_bytes(report.bytes)} in {report.files_s} s; target: {report.target}")  # fmt: skip
        if report.moved_aside:
            console.print(f"the previous directory was moved aside to {plain(report.moved_aside)}")
        if report.started:
            console.print(f"running on {plain(report.socket_dir)} port {report.port}; recovery took {report.replay_s} s "
                          f"({report.wal_segments_replayed} WAL segments); reached {describe_reached(report.reached)}")  # fmt: skip
        else:
            console.print(
                "start it as the PostgreSQL OS user: pg_ctl -D DIR start (recovery runs, then promotes)"
            )

    app.out.emit(data, human)


@pg.command("restore-test")
@click.option("--backup", "backup_ref", default="latest", show_default=True)
@pass_app
@recorded("pg restore-test")
def restore_test(app: AppContext, backup_ref: str) -> int:
    """Restore into a scratch instance, pg_amcheck it, check row counts; exit 3 on failure."""
    from coldkeep.postgres.restore_test import run_restore_test

    with open_repo(app) as repo:
        result = run_restore_test(app.config(), repo, backup_ref)

    def human(console: Console) -> None:
        for c in result.checks:
            console.print(
                f"{'[green]pass[/green]' if c['ok'] else '[red]FAIL[/red]'} {c['name']}: {c['detail']}"
            )
        console.print(
            f"restore test of {result.backup_id[:8]} {'passed' if result.ok else 'FAILED'} in {result.duration_s} s"
        )

    app.out.emit(result.to_json(), human)
    if not result.ok:
        bad = next((c for c in result.checks if not c["ok"]), {"name": "restore", "detail": "no checks ran"})
        app.out.err.print(
            f"error: restore test failed: {bad['name']}: {safe_line(str(bad['detail']))}", markup=False
        )
        return EXIT_INTEGRITY
    return 0


@pg.command("expire")
@click.option("--dry-run", is_flag=True, help="show the decisions, delete nothing")
@click.option("--prune/--no-prune", default=True, show_default=True, help="reclaim space afterwards")
@lock_wait_option
@pass_app
@recorded("pg expire")
def expire(app: AppContext, dry_run: bool, prune: bool, lock_wait: float) -> None:
    """Apply [postgres].retention_days to backups and WAL (oldest day stays recoverable)."""
    from coldkeep.postgres.expire import execute, plan
    from coldkeep.repository.locks import locked
    from coldkeep.repository.prune import prune as run_prune

    cfg = app.config()
    with open_repo(app) as repo:
        with locked(repo.backend, "pg expire", exclusive=True, wait_s=lock_wait):
            decided = plan(repo, cfg.postgres.retention_days, clock.now())
            if not dry_run:
                execute(repo, decided)
        pruned = run_prune(repo, lock_wait=lock_wait).to_json() if prune and not dry_run else None
    data = decided.to_json() | {"dry_run": dry_run, "prune": pruned}

    def human(console: Console) -> None:
        for d in decided.backups:
            console.print(
                f"{d.id[:8]} {d.stop_time} {'keep' if d.keep else '[red]expire[/red]'}: {', '.join(d.reasons)}"
            )
        console.print(f"WAL: {len(decided.wal_delete)} segment(s) {'would be ' if dry_run else ''}deleted; "
                      "kept from " + (", ".join(f"{seg} (lineage {lineage})" for lineage, seg in decided.wal_keep_from.items()) or "-"))  # fmt: skip

    app.out.emit(data, human)
