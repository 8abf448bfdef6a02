"""``coldkeep repo …``: init, check, prune, copy, repair, stats, unlock, key, rebuild-cache."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table

from coldkeep.cli.context import AppContext, pass_app
from coldkeep.cli.output import plain, safe_line
from coldkeep.cli.params import FiniteRange
from coldkeep.cli.recorded import recorded
from coldkeep.cli.repo_support import lock_wait_option, open_repo
from coldkeep.errors import EXIT_INTEGRITY, IntegrityError, UsageError
from coldkeep.units import human_bytes

if TYPE_CHECKING:
    from coldkeep.storage.base import Backend


@click.group()
def repo() -> None:
    """Manage the repository."""


@repo.command("init")
@pass_app
def init(app: AppContext) -> None:
    """Create the repository named by [repository].url (encrypted when a password is configured)."""
    from coldkeep.repository.setup import init_repository

    info = init_repository(app.config())
    app.out.emit(info, lambda c: c.print(f"created repository {info['id'][:8]} at {info['url']}"
                                         f"{' (encrypted)' if info['encrypted'] else ''}"))  # fmt: skip


@repo.command("check")
@click.option("--read-data", is_flag=True, help="read and verify every byte")
@click.option("--read-data-subset", type=FiniteRange(0, 100, min_open=True), default=None, metavar="PCT")
@pass_app
@recorded("repo check")
def check(app: AppContext, read_data: bool, read_data_subset: float | None) -> int:
    """Check the repository's structure (and data); exit 3 on any problem."""
    from coldkeep.repository.check import check as run_check

    with open_repo(app) as r:
        result = run_check(r, read_data=read_data, subset_pct=read_data_subset)
    for warning in result.warnings:
        app.out.warn(warning)

    def human(console: Console) -> None:
        from rich.markup import escape

        for p in result.problems:
            console.print(f"[red]{escape(safe_line(p.line()))}[/red]")  # a path is not markup
        console.print(
            f"{'no problems' if result.ok else f'{len(result.problems)} problem(s)'}: {result.snapshots} snapshots, "
            f"{result.packs} packs, {result.blobs} blobs, {result.named} named objects"
            + (f", {human_bytes(result.bytes_read)} read" if result.bytes_read else "")
        )

    app.out.emit(result.to_json(), human)
    if not result.ok:
        more = f" (+{len(result.problems) - 1} more)" if len(result.problems) > 1 else ""
        hint = "the problems listed name what is affected; `coldkeep repo repair --from COPY` repairs them from a copy"
        app.out.failure(IntegrityError(result.problems[0].line() + more, hint=hint))
        return EXIT_INTEGRITY
    return 0


@repo.command("prune")
@click.option("--max-unused", type=FiniteRange(0, 100), default=5.0, show_default=True, metavar="PCT",
              help="repack packs with more unused space than this")  # fmt: skip
@click.option("--dry-run", is_flag=True)
@lock_wait_option
@pass_app
def prune(app: AppContext, max_unused: float, dry_run: bool, lock_wait: float) -> None:
    """Remove data no snapshot uses (exclusive lock; safe to kill)."""
    from coldkeep.repository.prune import prune as run_prune

    with open_repo(app) as r:
        result = run_prune(r, max_unused_pct=max_unused, dry_run=dry_run, lock_wait=lock_wait)
    data = result.to_json()
    app.out.emit(data, lambda c: c.print(
        f"{'would delete' if dry_run else 'deleted'} {result.packs_deleted} pack(s) (repacked {result.packs_repacked}); "
        f"stored {human_bytes(result.stored_before)} -> {human_bytes(result.stored_after)}"))  # fmt: skip


def _copy_backend(app: AppContext, name: str) -> Backend:
    """The backend of the configured copy ``name`` (``repo copy`` leaves its run record there)."""
    from coldkeep.repository.setup import backend_for, copy_section

    cfg = app.config()
    return backend_for(copy_section(cfg, name), owner=cfg.repository.owner)


@repo.command("copy")
@click.option("--to", "to", required=True, metavar="NAME", help="a [repository.copies.NAME] from the config")
@pass_app
@recorded(
    "repo copy", target=lambda kw: str(kw["to"]), mirror=lambda app, kw: _copy_backend(app, str(kw["to"]))
)
def copy(app: AppContext, to: str) -> None:
    """Copy everything new (snapshots, packs, WAL, service records) to a configured copy, verified."""
    from coldkeep.repository.copy import copy_to
    from coldkeep.repository.setup import backend_for, copy_section

    cfg = app.config()
    section = copy_section(cfg, to)
    dst = backend_for(section, owner=cfg.repository.owner, create=True)
    with open_repo(app) as r:
        result = copy_to(r, dst)
    for warning in result.warnings:
        app.out.warn(warning)
    app.out.emit(result.to_json() | {"to": to, "url": section.url}, lambda c: c.print(
        f"copied {sum(result.copied.values())} object(s), {human_bytes(result.bytes)} to {to} ({section.url}); "
        f"{result.skipped} already there"))  # fmt: skip


@repo.command("repair")
@click.option("--from", "source", required=True, metavar="NAME", help="a healthy copy from the config")
@pass_app
def repair(app: AppContext, source: str) -> int:
    """Replace damaged or missing data (blobs, packs, indexes, snapshots, key slots, WAL, service
    records) with verified data from a copy; exit 3 if problems remain."""
    from coldkeep.repository.check import check as run_check
    from coldkeep.repository.repair import repair_config, repair_from, repair_key_slots
    from coldkeep.repository.setup import backend_for, copy_section

    cfg = app.config()
    src = backend_for(copy_section(cfg, source))
    mine = backend_for(cfg.repository, owner=cfg.repository.owner)
    config = repair_config(mine, src)
    slots = repair_key_slots(mine, src)
    with open_repo(app) as r:
        result = repair_from(r, src)
        after = run_check(r, read_data=True)
    result.replaced[:0] = config.replaced + slots.replaced
    result.lost[:0] = slots.lost
    for warning in result.warnings:
        app.out.warn(warning)
    data = result.to_json() | {"remaining_problems": [p.to_json() for p in after.problems]}
    app.out.emit(data, lambda c: c.print(
        f"replaced {len(result.replaced)} object(s) from {source}, rescued {result.blobs_rescued} blob(s) "
        f"into {len(result.packs_written)} new pack(s); {len(after.problems)} problem(s) remain"))  # fmt: skip
    if not after.ok:
        more = f" (+{len(after.problems) - 1} more)" if len(after.problems) > 1 else ""
        app.out.failure(IntegrityError(after.problems[0].line() + more,
                                       hint=f"what is damaged here is not intact in {source} either"))  # fmt: skip
        return EXIT_INTEGRITY
    return 0


@repo.command("stats")
@pass_app
def stats(app: AppContext) -> None:
    """Logical and stored bytes, dedup and compression ratios, per tag."""
    from coldkeep.repository.locks import locked
    from coldkeep.repository.stats import stats as run_stats

    with open_repo(app) as r, locked(r.backend, "stats", exclusive=False):
        data = run_stats(r)

    def human(console: Console) -> None:
        console.print(
            f"{data['snapshots']} snapshots, logical {human_bytes(data['logical_bytes'])}, "
            f"stored {human_bytes(data['stored_bytes'])} (packs {human_bytes(data['pack_bytes'])}, "
            f"named {human_bytes(data['named_bytes'])}); dedup {data['dedup_ratio']:.2f}x, "
            f"compression {data['compression_ratio']:.2f}x"
        )
        table = Table("tag", "snapshots", "logical")
        for tag, row in sorted(data["per_tag"].items()):
            table.add_row(plain(tag), str(row["snapshots"]), human_bytes(row["logical_bytes"]))
        if data["per_tag"]:
            console.print(table)

    app.out.emit(data, human)


@repo.command("unlock")
@click.option("--all", "all_locks", is_flag=True, help="remove live locks too (dangerous)")
@pass_app
def unlock(app: AppContext, all_locks: bool) -> None:
    """Remove stale locks (dead process on this host, or not refreshed for 30 minutes)."""
    from coldkeep.repository.locks import list_locks, remove_stale
    from coldkeep.repository.setup import backend_for

    cfg = app.config()
    backend = backend_for(cfg.repository, owner=cfg.repository.owner)
    removed = remove_stale(backend, all_locks=all_locks)
    remaining = list_locks(backend)
    app.out.emit(
        {"removed": [lk.describe() for lk in removed], "remaining": [lk.describe() for lk in remaining]},
        lambda c: c.print(f"removed {len(removed)} stale lock(s); {len(remaining)} live"),
    )


@repo.command("rebuild-cache")
@pass_app
def rebuild_cache(app: AppContext) -> None:
    """Rebuild the local caches (index, snapshot catalog) from the repository alone."""
    from coldkeep.repository.locks import locked

    with open_repo(app) as r, locked(r.backend, "rebuild-cache", exclusive=False):
        cache = r.refresh_cache(full=True)
        blobs, nbytes = cache.stats()
        snapshots = r.rebuild_catalog()
    app.out.emit({"blobs": blobs, "stored_blob_bytes": nbytes, "path": str(cache.path), "snapshots": snapshots},
                 lambda c: c.print(f"cache rebuilt: {blobs} blobs, {snapshots} snapshots ({cache.path})"))  # fmt: skip


@repo.command("rebuild-index")
@pass_app
def rebuild_index(app: AppContext) -> int:
    """Rebuild the index from the packs' own headers (after index documents were lost)."""
    from coldkeep.repository.rebuild import rebuild_index as run_rebuild

    with open_repo(app) as r:
        result = run_rebuild(r)
    app.out.emit(result.to_json(), lambda c: c.print(
        f"indexed {result.blobs} blobs in {result.packs} packs; {len(result.unreadable)} unreadable pack(s)"))  # fmt: skip
    if result.unreadable:
        app.out.err.print(f"error: {safe_line(result.unreadable[0])}", markup=False)
        return EXIT_INTEGRITY
    return 0


@repo.group("key")
def key() -> None:
    """Manage passphrases (key slots) of an encrypted repository."""


@key.command("list")
@pass_app
def key_list(app: AppContext) -> None:
    from coldkeep.repository.keyslots import list_slots
    from coldkeep.repository.setup import backend_for

    cfg = app.config()
    slots = list_slots(backend_for(cfg.repository))
    rows = [
        {"id": s.slot_id, "created": s.created.isoformat(), "host": s.hostname, "comment": s.comment}
        for s in slots
    ]

    def human(console: Console) -> None:
        for r in rows:
            console.print(f"{r['id']}  {r['created']}  {plain(r['host'])}  {plain(r['comment'])}")

    app.out.emit(rows, human)


@key.command("add")
@click.option("--new-password-file", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--comment", default="")
@pass_app
def key_add(app: AppContext, new_password_file: str, comment: str) -> None:
    """Add a passphrase (read from a file) that opens the repository."""
    from coldkeep.repository.crypto import Keys
    from coldkeep.repository.keyslots import add_slot, read_passphrase

    with open_repo(app) as r:
        if not isinstance(r.keys, Keys):
            raise UsageError(
                "the repository is not encrypted", hint="passphrases exist only for encrypted repositories"
            )
        new = read_passphrase(new_password_file, env={})
        if not new:
            raise UsageError(f"{new_password_file} is empty")
        slot = add_slot(r.backend, r.keys, new, comment=comment)
    app.out.emit({"added": slot}, lambda c: c.print(f"added key slot {slot}"))


@key.command("remove")
@click.argument("slot_id")
@pass_app
def key_remove(app: AppContext, slot_id: str) -> None:
    """Remove a passphrase (refuses to remove the last one)."""
    from coldkeep.repository.crypto import Keys
    from coldkeep.repository.keyslots import remove_slot
    from coldkeep.repository.locks import locked

    with open_repo(app) as r, locked(r.backend, "key remove", exclusive=True):
        if not isinstance(r.keys, Keys):
            raise UsageError("the repository is not encrypted")
        remove_slot(r.backend, r.keys, slot_id)
    app.out.emit({"removed": slot_id}, lambda c: c.print(f"removed key slot {slot_id}"))
