"""Base backups as the rest of ``coldkeep pg`` sees them: listing, choosing, status records."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from coldkeep import clock
from coldkeep.errors import NotFound, UsageError
from coldkeep.postgres import wal
from coldkeep.repository.repository import Repository
from coldkeep.repository.snapshot import MIN_PREFIX, Snapshot

STATUS_STATE = "pg-backup-status"


def list_backups(repo: Repository, *, strict: bool = False) -> list[Snapshot]:
    """Base backups, oldest first; ``strict``: see :meth:`Repository.list_snapshots` (damaged
    snapshot documents are skipped with a warning unless ``strict``)."""
    return repo.list_snapshots({"kind": "pg-base"}, kind="pg-base", strict=strict)


def find_backup(repo: Repository, ref: str) -> Snapshot:
    backups = list_backups(repo)
    if ref == "latest":
        if not backups:
            raise NotFound("there are no base backups", hint="take one with `coldkeep pg backup`")
        return backups[-1]
    if len(ref) < MIN_PREFIX:
        raise UsageError(
            f"backup id prefix {ref!r} is too short: give at least {MIN_PREFIX} characters",
            hint="list them with `coldkeep pg backups`, or use `latest`",
        )
    matches = [b for b in backups if b.id.startswith(ref)]
    if not matches:
        raise NotFound(f"no base backup {ref!r}", hint="list them with `coldkeep pg backups`")
    if len(matches) > 1:
        shown = ", ".join(b.id[: len(ref) + 4] for b in matches[:5]) + (" …" if len(matches) > 5 else "")
        raise UsageError(
            f"backup id prefix {ref!r} is ambiguous: {len(matches)} match ({shown})",
            hint="give more characters",
        )
    return matches[0]


def stop_time(snap: Snapshot) -> datetime:
    return clock.parse_timestamp(str(snap.meta["stop_time"]))


def stop_lsn(snap: Snapshot) -> int:
    return wal.parse_lsn(str(snap.meta["stop_lsn"]))


def statuses(repo: Repository) -> dict[str, dict[str, Any]]:
    doc = repo.get_state(STATUS_STATE) or {}
    return dict(doc.get("backups", {}))


def record_status(repo: Repository, backup_id: str, **fields: Any) -> None:
    """Set ``fields`` in the status of ``backup_id`` (a compare-and-swap: a `pg verify` and a
    `pg restore-test` finishing at once both keep their results)."""

    def change(doc: dict[str, Any] | None) -> dict[str, Any]:
        doc = doc or {}
        doc.setdefault("backups", {}).setdefault(backup_id, {}).update(fields)
        return doc

    repo.update_state(STATUS_STATE, change)


def listing(repo: Repository) -> list[dict[str, Any]]:
    from coldkeep.postgres.basebackup import backup_json  # (psycopg: not for `pg restore`'s start)

    status = statuses(repo)
    rows = []
    for snap in list_backups(repo):
        st = status.get(snap.id, {})
        rows.append(
            backup_json(snap)
            | {
                "verified": bool(st.get("verify_ok")),
                "verified_at": st.get("verified_at"),
                "restore_tested": bool(st.get("restore_test_ok")),
                "restore_tested_at": st.get("restore_tested_at"),
                "restore_test_duration_s": st.get("restore_test_duration_s"),
            }
        )
    return rows
