"""The conversation archive's ledger and what is done with what it records.

Every batch file of the archive is one row of ``<table>_archive_ledger`` (see
:mod:`coldkeep.conversations.db`); the streaming pipeline that writes batches and commits their
rows is :mod:`coldkeep.conversations.archive`.  This module owns the rest of a run:

* **Recover** (:func:`recover`): under the archive lock, remove what earlier runs left behind
  (temporary files, final-named files the ledger does not list) and name ledger batches whose
  file is missing.
* **Store** (:func:`store_pending`): each ledger batch not yet in the repository becomes a
  write-once named object ``conversations/<schema.table>/<YYYY-MM>/<file>`` (:func:`repo_name`),
  and the ledger records its name.
* **Verify** (:func:`repo_copy_ok`, :func:`reverify`): a batch's repository copy read back
  against the ledger's SHA-256; a local batch file re-read (SHA-256, size, row count, exact ids).
* **Purge** (:func:`purge`): rows of stored, verified batches deleted in one transaction per
  batch, only where their current JSON line still hashes to the archived one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from coldkeep.conversations import db
from coldkeep.conversations.db import ROW_JSON, Target
from coldkeep.conversations.files import ArchiveDir, BatchReader, id_of, kill_point
from coldkeep.errors import ColdkeepError

if TYPE_CHECKING:
    from coldkeep.conversations.archive import Archiver, ArchiveResult


# ------------------------------------------------------------------------------------------------
# recovery


def ledger_files(conn: psycopg.Connection[Any], target: Target) -> dict[str, dict[str, Any]]:
    rows = conn.execute(
        sql.SQL(
            "SELECT file, batch_id::text, month, format, sha256, bytes, row_count, ids_sha256, repo_object, "
            "purged_at IS NOT NULL, kind FROM {} ORDER BY month, created_at, file"
        ).format(target.ledger)
    ).fetchall()
    keys = (
        "file",
        "batch_id",
        "month",
        "format",
        "sha256",
        "bytes",
        "row_count",
        "ids_sha256",
        "repo_object",
        "purged",
        "kind",
    )
    return {str(r[0]): dict(zip(keys, r, strict=True)) for r in rows}


def recover(conn: psycopg.Connection[Any], target: Target, adir: ArchiveDir, result: ArchiveResult) -> None:
    """Under the exclusive lock: remove what earlier runs left behind before committing."""
    known = ledger_files(conn, target)
    scan = adir.scan()
    orphans = sorted(scan.tmp + [f for f in scan.final if f not in known])
    if orphans:
        adir.remove(orphans)
        result.orphans_removed.extend(orphans)
    for name in scan.unknown:
        result.warnings.append(f"{adir.root / name}: not an archive file; left alone")
    present = set(scan.final)
    for name, batch in known.items():
        if name not in present:
            where = (
                f" (a copy is in the repository as {batch['repo_object']})" if batch["repo_object"] else ""
            )
            result.problems.append(f"batch file {name} is missing from {adir.root}{where}")


# ------------------------------------------------------------------------------------------------
# storing in the repository


def repo_name(target: Target, file: str) -> str:
    """The repository's name for a batch file: ``conversations/<schema.table>/<YYYY-MM>/<file>``."""
    return f"conversations/{target.qualified}/{file}"


def store_pending(archiver: Archiver, conn: psycopg.Connection[Any], target: Target) -> dict[str, Any]:
    """Store every ledger batch not yet in the repository as a write-once named object (an identical
    re-store is a no-op, so a run killed between storing and recording just stores it again)."""
    pending = conn.execute(
        sql.SQL(
            "SELECT batch_id::text, file, sha256, month, row_count FROM {} WHERE repo_object IS NULL "
            "ORDER BY created_at, file"
        ).format(target.ledger)
    ).fetchall()
    out: dict[str, Any] = {"stored_files": 0, "stored_bytes": 0, "pending_before": len(pending), "failed": []}
    if not pending:
        return out
    repo = archiver._open_repo()
    if repo is None:
        out["error"] = f"repository not reachable: {archiver._repo_error}"
        return out
    from coldkeep.repository.locks import locked

    root = archiver.adir.root
    kill_point("before_store")
    try:
        with locked(repo.backend, "conversations archive", exclusive=False):
            for batch_id, file, sha, month, rows in pending:
                path = root / file
                if not path.is_file():
                    continue  # reported by recover()
                data = path.read_bytes()
                if hashlib.sha256(data).hexdigest() != sha:
                    out["failed"].append(f"{file}: differs from its ledger SHA-256; not stored")
                    continue
                name = repo_name(target, file)
                meta = {
                    "table": target.qualified,
                    "batch_id": batch_id,
                    "month": month,
                    "rows": rows,
                    "sha256": sha,
                }
                repo.put_named(name, data, meta)
                kill_point("stored")
                conn.execute(
                    sql.SQL("UPDATE {} SET repo_object = %s, stored_at = now() WHERE batch_id = %s").format(
                        target.ledger
                    ),
                    (name, batch_id),
                )
                kill_point("store_recorded")
                out["stored_files"] += 1
                out["stored_bytes"] += len(data)
                del data
    except ColdkeepError as exc:
        out["error"] = f"storing in the repository failed: {exc.message}"
    if out["failed"]:
        out["error"] = f"{len(out['failed'])} file(s) not stored: {out['failed'][:3]}"
    return out


def repo_copy_ok(repo: Any, batch: dict[str, Any]) -> str:
    """Read the batch's repository object back (the repository verifies it) and compare it with the
    ledger's SHA-256; ``""`` when it matches, else why not."""
    try:
        _meta, data = repo.get_named(batch["repo_object"])
    except ColdkeepError as exc:
        return f"repository copy unreadable: {exc.message}"
    if hashlib.sha256(data).hexdigest() != batch["sha256"]:
        return "repository copy differs from the ledger's SHA-256"
    return ""


# ------------------------------------------------------------------------------------------------
# purge


@dataclass
class FileCheck:
    ok: bool
    reason: str = ""
    ids: list[int] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)


def reverify(path: Path, batch: dict[str, Any], *, want_hashes: bool = False) -> FileCheck:
    """Re-read a batch file: SHA-256 and size as recorded, the recorded row count, and exactly the
    recorded ids.  With ``want_hashes`` also the md5 of every line (what purge compares rows with)."""
    if not path.is_file():
        return FileCheck(False, "file missing")
    reader = BatchReader(path, batch["format"])
    ids: list[int] = []
    hashes: list[str] = []
    month = batch["month"].encode()
    try:
        for line in reader.lines():
            if not line.startswith(b'{"id":') or not line.endswith(b"}"):
                return FileCheck(False, f"line {reader.rows} is not an archive record")
            ids.append(id_of(line))
            k = line.find(b',"timestamp":"')
            if line[k + 14 : k + 21] != month:
                return FileCheck(False, f"line {reader.rows} is not from {batch['month']}")
            if want_hashes:
                hashes.append(hashlib.md5(line, usedforsecurity=False).hexdigest())
    except (OSError, ValueError, EOFError) as exc:
        return FileCheck(False, f"unreadable ({type(exc).__name__}: {exc})")
    except Exception as exc:  # zstandard.ZstdError and friends
        return FileCheck(False, f"unreadable ({type(exc).__name__}: {exc})")
    if reader.sha256 != batch["sha256"]:
        return FileCheck(
            False, f"SHA-256 {reader.sha256[:16]}… differs from the ledger's {batch['sha256'][:16]}…"
        )
    if reader.bytes != batch["bytes"]:
        return FileCheck(False, f"{reader.bytes} bytes, the ledger says {batch['bytes']}")
    if len(ids) != batch["row_count"]:
        return FileCheck(False, f"{len(ids)} rows, the ledger says {batch['row_count']}")
    digest = hashlib.sha256(",".join(map(str, sorted(ids))).encode()).hexdigest()
    if digest != batch["ids_sha256"]:
        return FileCheck(False, "its ids differ from the ledger's")
    return FileCheck(True, ids=ids, hashes=hashes)


def purge(
    archiver: Archiver, conn: psycopg.Connection[Any], target: Target, result: ArchiveResult
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "refused": None,
        "batches": 0,
        "rows_deleted": 0,
        "rows_kept": 0,
        "kept_ids": [],
        "failed": [],
        "not_stored": 0,
    }
    if archiver._open_repo() is None:
        out["refused"] = (
            f"purge refused: the repository is not reachable ({archiver._repo_error}); archived rows stay in "
            "the table until their batch files are stored in the repository"
        )
        return out
    if result.repo.get("error"):
        out["refused"] = f"purge refused: {result.repo['error']}"
        return out
    repo = archiver._repo
    batches = ledger_files(conn, target)
    for name, batch in batches.items():
        if batch["purged"]:
            continue
        if not batch["repo_object"]:
            out["not_stored"] += 1
            continue
        why = repo_copy_ok(repo, batch)
        if why:
            out["failed"].append(f"{name}: {why}")
            continue
        check = reverify(archiver.adir.root / name, batch, want_hashes=True)
        if not check.ok:
            out["failed"].append(f"{name}: {check.reason}")
            continue
        ids = "{" + ",".join(map(str, check.ids)) + "}"
        hashes = "{" + ",".join(f'"{i}":"{h}"' for i, h in zip(check.ids, check.hashes, strict=True)) + "}"
        with conn.transaction():
            db.by_id_lookups(conn)
            cur = conn.execute(
                sql.SQL(
                    "DELETE FROM {t} c WHERE c.id = ANY(%(ids)s::bigint[]) AND c.archived "
                    "AND c.archive_file = %(file)s "
                    "AND md5(convert_to({row}::text, 'UTF8')) = (%(hashes)s::jsonb ->> c.id::text)"
                ).format(t=target.table, row=sql.SQL(ROW_JSON)),
                {"ids": ids, "hashes": db.jsonb_text(hashes), "file": name},
            )
            deleted = cur.rowcount
            kill_point("purge_deleted")
            # (no ORDER BY: with one, the planner may walk the whole primary key testing = ANY)
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM {t} WHERE id = ANY(%s::bigint[])").format(t=target.table),
                (ids,),
            ).fetchone()
            kept_count = int(row[0]) if row else 0
            kept: list[tuple[Any, ...]] = []
            if kept_count:
                kept = conn.execute(
                    sql.SQL("SELECT id FROM {t} WHERE id = ANY(%s::bigint[]) LIMIT 20").format(
                        t=target.table
                    ),
                    (ids,),
                ).fetchall()
            conn.execute(
                sql.SQL(
                    "UPDATE {} SET purged_at = now(), purged_rows = purged_rows + %s, kept_rows = %s "
                    "WHERE batch_id = %s"
                ).format(target.ledger),
                (deleted, kept_count, batch["batch_id"]),
            )
        kill_point("purged")
        out["batches"] += 1
        out["rows_deleted"] += deleted
        out["rows_kept"] += kept_count
        out["kept_ids"].extend(int(r[0]) for r in kept[: max(0, 20 - len(out["kept_ids"]))])
    if out["failed"]:
        result.problems.extend(f"purge skipped {f}" for f in out["failed"])
    if out["rows_kept"]:
        result.warnings.append(
            f"{out['rows_kept']} archived row(s) changed after archiving and were kept in the table "
            f"(e.g. ids {out['kept_ids'][:5]})"
        )
    return out
