"""``coldkeep conversations …`` — archive old conversation rows to monthly compressed JSON lines.

Exit codes: 0 ok; 1 failed (``archive --purge`` also when purge was refused because the repository
is unreachable); 2 usage/config or a table of the wrong shape (the error names the column);
3 integrity (``verify`` found a mismatch, a batch file is missing or corrupt); 4 another archive run
holds the lock; 5 not found (table, row, month).
"""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from coldkeep import clock
from coldkeep.cli.context import AppContext, pass_app
from coldkeep.cli.output import plain
from coldkeep.cli.params import FiniteRange
from coldkeep.cli.recorded import recorded
from coldkeep.errors import EXIT_INTEGRITY
from coldkeep.units import human_bytes

_lock_wait = click.option(
    "--lock-wait",
    type=FiniteRange(min=0),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="wait this long for another archive run's lock (exit 4 after)",
)


@click.group()
def conversations() -> None:
    """Archive old conversation rows exactly once to monthly compressed JSON-lines files.

    \b
    Exit codes: 0 ok, 1 failed (also: --purge refused, repository unreachable), 2 usage/config
    or table shape, 3 integrity mismatch, 4 another archive run holds the lock, 5 not found.
    """


@conversations.command("init-schema")
@pass_app
def init_schema(app: AppContext) -> None:
    """Create the spec's table, or add only what is missing (archive columns, scan index, ledger)."""
    from coldkeep.conversations import init_schema as run

    result = run(app.config())

    def human(c: Console) -> None:
        for change in result["changes"] or ["nothing to do: table, index and ledger exist"]:
            c.print(change)
        c.print(f"table {result['table']}, ledger {result['ledger']}")

    app.out.emit(result, human)


def _count_rows(app: AppContext) -> None:
    """Put the table's rows by state into the run record (the metric
    ``coldkeep_conversation_rows``): one count after the monthly archive, never in a scrape."""
    from coldkeep.conversations.access import stats

    try:
        totals = stats(app.config())["totals"]
    except Exception as exc:  # the archive's outcome stands; the metric waits for the next run
        app.out.warn(f"conversation rows not counted: {exc}")
        return
    assert app.run is not None
    app.run.set(
        conversation_rows={"live": totals["hot"], "archived": totals["archived"], "purged": totals["purged"]}
    )


@conversations.command()
@click.option(
    "--older-than",
    default=None,
    metavar="DURATION",
    help="archive rows older than this (e.g. 90d; default [conversations].archive_after_days)",
)
@click.option(
    "--batch-rows",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="rows per batch file (default [conversations].batch_rows)",
)
@click.option("--dry-run", is_flag=True, help="count what would be archived; write nothing")
@click.option(
    "--purge",
    is_flag=True,
    help="then delete archived rows whose batch file is in the repository and re-verifies",
)
@_lock_wait
@pass_app
@recorded("conversations archive")
def archive(
    app: AppContext,
    older_than: str | None,
    batch_rows: int | None,
    dry_run: bool,
    purge: bool,
    lock_wait: float,
) -> int:
    """Move rows older than the cutoff into batch files (and the repository), exactly once."""
    from coldkeep.conversations import Archiver

    result = Archiver(
        app.config(),
        older_than=clock.parse_duration(older_than) if older_than else None,
        batch_rows=batch_rows,
        dry_run=dry_run,
        purge=purge,
        lock_wait=lock_wait,
        log=app.out.info,
    ).run()
    for warning in result.warnings:
        app.out.warn(warning)
    if app.run is not None and not dry_run:
        _count_rows(app)
    data = result.to_json()

    def human(c: Console) -> None:
        if result.months:
            table = Table("month", "rows", "files", "bytes")
            for month, m in sorted(result.months.items()):
                table.add_row(
                    month,
                    str(m.get("rows", 0)),
                    str(m.get("files", "")),
                    human_bytes(m.get("bytes", m.get("content_bytes", 0))),
                )
            c.print(table)
        verb = "would archive" if dry_run else "archived"
        c.print(
            f"{verb} {result.rows_archived} rows older than {result.cutoff} into {len(result.batches)} file(s) "
            f"({human_bytes(result.bytes_written)}) in {result.duration_s:.1f} s"
        )
        if result.orphans_removed:
            c.print(
                f"{'would remove' if dry_run else 'removed'} {len(result.orphans_removed)} leftover file(s)"
            )
        repo = result.repo
        if repo.get("stored_files"):
            c.print(
                f"stored {repo['stored_files']} file(s) ({human_bytes(repo['stored_bytes'])}) in the repository"
            )
        if repo.get("error"):
            c.print(f"[yellow]repository:[/yellow] {plain(repo['error'])}")
        if result.purge is not None:
            p = result.purge
            if p.get("refused"):
                c.print(f"[red]{plain(p['refused'])}[/red]")
            else:
                c.print(
                    f"purged {p['rows_deleted']} rows from {p['batches']} batch(es); kept {p['rows_kept']} changed row(s)"
                )
        for problem in result.problems:
            c.print(f"[red]problem:[/red] {plain(problem)}")

    app.out.emit(data, human)
    return result.exit_code


@conversations.command()
@click.option("--month", required=True, metavar="YYYY-MM", help="a finished month")
@_lock_wait
@pass_app
def compact(app: AppContext, month: str, lock_wait: float) -> None:
    """Merge a finished month's batch files into conversations_YYYY-MM.jsonl.zst (atomically)."""
    from coldkeep.conversations import compact_month

    result = compact_month(app.config(), month, lock_wait=lock_wait)

    def human(c: Console) -> None:
        if result["compacted"]:
            c.print(
                f"merged {len(result['merged_files'])} files ({result['rows']} rows) into {result['file']}"
            )
        else:
            c.print(result.get("message", "nothing to do"))

    app.out.emit(result, human)


@conversations.command()
@click.option("--id", "row_id", type=int, default=None, help="one row by id")
@click.option("--session", default=None, metavar="UUID", help="every row of a session")
@pass_app
def get(app: AppContext, row_id: int | None, session: str | None) -> None:
    """Rows from the table or the archive, each saying where it came from."""
    from coldkeep.conversations import get_rows

    result = get_rows(app.config(), row_id=row_id, session=session)
    for name in result.get("damaged_locally", []):
        app.out.warn(f"{name}: the local archive file is damaged (its SHA-256 is not the ledger's); "
                     "read the repository's copy instead — run `coldkeep conversations verify`")  # fmt: skip

    def human(c: Console) -> None:
        from coldkeep.cli.tables import show

        rows = []
        for r in result["rows"]:
            content = " ".join(str(r.get("content") or "").split())
            source = r["source"] if r["source"] == "table" else f"archive {r['archive_file']}"
            if r["source"] == "table" and r["archived"]:
                source += " (archived)"
            rows.append([str(r["id"]), str(r.get("timestamp"))[:19], plain(r.get("speaker") or ""),
                         plain(source), plain(content)])  # fmt: skip
        # id and time whole; speaker, source and content share the rest of the line
        show(c, ["id", "timestamp", "speaker", "source", "content"], rows, wide=False,
             flexible={"speaker", "source", "content"})  # fmt: skip
        c.print(f"{result['from_table']} row(s) from the table, {result['from_archive']} from the archive")

    app.out.emit(result, human)


@conversations.command()
@click.option("--month", default=None, metavar="YYYY-MM", help="every archived row of a month")
@click.option("--session", default=None, metavar="UUID", help="every archived row of a session")
@_lock_wait
@pass_app
def restore(app: AppContext, month: str | None, session: str | None, lock_wait: float) -> None:
    """Rehydrate purged rows into the table (idempotent; they stay marked archived)."""
    from coldkeep.conversations import restore_rows

    result = restore_rows(app.config(), month=month, session=session, lock_wait=lock_wait)
    for name in result.get("damaged_locally", []):
        app.out.warn(f"{name}: the local archive file is damaged (its SHA-256 is not the ledger's); "
                     "read the repository's copy instead — run `coldkeep conversations verify`")  # fmt: skip
    app.out.emit(
        result,
        lambda c: c.print(
            f"restored {result['rows_restored']} row(s) from {result['batches']} batch file(s); "
            f"{result['rows_already_present']} were already in the table"
        ),
    )


@conversations.command()
@click.option("--repo", "check_repo", is_flag=True, help="also check each batch's copy in the repository")
@_lock_wait
@pass_app
def verify(app: AppContext, check_repo: bool, lock_wait: float) -> int:
    """Check every batch file against the ledger and the table against both (exit 3 on mismatch)."""
    from coldkeep.conversations import verify as run

    result = run(app.config(), check_repo=check_repo, lock_wait=lock_wait)
    for warning in result["warnings"]:
        app.out.warn(warning)

    def human(c: Console) -> None:
        c.print(
            f"{result['batches']} batch file(s), {result['rows_in_ledger']} rows in the ledger "
            f"({result['archived_rows_in_table']} still in the table, {result['purged_rows']} purged)"
        )
        for problem in result["problems"]:
            c.print(f"[red]problem:[/red] {plain(problem)}")
        c.print("[green]ok[/green]" if result["ok"] else f"[red]{len(result['problems'])} problem(s)[/red]")

    app.out.emit(result, human)
    return 0 if result["ok"] else EXIT_INTEGRITY


@conversations.command()
@pass_app
def stats(app: AppContext) -> None:
    """Rows hot / archived / purged per month, and archive bytes."""
    from coldkeep.conversations import stats as run

    result = run(app.config())

    def human(c: Console) -> None:
        table = Table("month", "hot", "archived", "purged", "files", "archive bytes")
        for month, m in result["months"].items():
            table.add_row(
                month,
                str(m["hot"]),
                str(m["archived"]),
                str(m["purged"]),
                str(m["files"]),
                human_bytes(m["bytes"]),
            )
        t = result["totals"]
        table.add_row(
            "total",
            str(t["hot"]),
            str(t["archived"]),
            str(t["purged"]),
            str(t["files"]),
            human_bytes(t["bytes"]),
        )
        c.print(table)

    app.out.emit(result, human)
