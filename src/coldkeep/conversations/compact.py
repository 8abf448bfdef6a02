"""``conversations compact --month YYYY-MM``: merge a finished month's batch files into one.

zstd frames (and gzip members) concatenate into a valid file, so merging is a byte copy that checks
each source against its ledger SHA-256.  Order: merged file durable → stored in the repository →
ONE transaction (insert the compacted ledger row with the union of the ids, repoint
``archive_file``, delete the old ledger rows) → old files deleted (or, if killed first, removed as
orphans by the next run).
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

from psycopg import sql

from coldkeep import clock
from coldkeep.config import Config
from coldkeep.conversations import db
from coldkeep.conversations.archive import Archiver, ArchiveResult, add_months, parse_month
from coldkeep.conversations.db import ArchiveIntegrityError, Target, connect, open_target
from coldkeep.conversations.files import ArchiveDir, compacted_relpath, copy_with_digest, kill_point
from coldkeep.conversations.ledger import ledger_files, recover, repo_name
from coldkeep.errors import ColdkeepError, UsageError


def compact_month(config: Config, month: str, *, lock_wait: float = 30.0) -> dict[str, Any]:
    """Merge a finished month's batch files into ``conversations_YYYY-MM.jsonl.zst`` (zstd frames and
    gzip members concatenate into valid files), atomically: new file durable, then ONE transaction
    replaces the ledger rows and repoints ``archive_file``; the old files go afterwards."""
    db.require_section(config)
    start = parse_month(month)
    cfg = config.conversations
    adir = ArchiveDir(Path(cfg.archive_dir))
    archiver = Archiver(config, lock_wait=lock_wait)
    out: dict[str, Any] = {"month": month, "compacted": False, "merged_files": [], "file": None, "rows": 0}
    with connect(config.postgres, "conversations compact") as conn:
        target = open_target(conn, cfg)
        result = ArchiveResult(table=target.qualified, archive_dir=str(adir.root), cutoff="")
        with db.archive_lock(conn, target, wait_s=lock_wait):
            adir.ensure({**db.system_identity(conn), "table": target.qualified})
            recover(conn, target, adir, result)
            # finished: the month is over and none of its rows is left to archive (a row inserted
            # later with an old timestamp goes into a new batch file, and a later compaction)
            end = add_months(start, 1)
            if end > clock.now():
                raise UsageError(f"month {month} is not over yet", hint="compact months that have ended")
            row = conn.execute(
                sql.SQL(
                    'SELECT count(*) FROM {t} WHERE archived IS NOT TRUE AND "timestamp" >= %s AND "timestamp" < %s'
                ).format(t=target.table),
                (start, end),
            ).fetchone()
            hot = int(row[0]) if row else 0
            if hot:
                raise UsageError(
                    f"month {month} still has {hot} row(s) to archive",
                    hint="run `coldkeep conversations archive` first",
                )
            batches = [b for b in ledger_files(conn, target).values() if b["month"] == month]
            if len(batches) < 2:
                out["message"] = f"{len(batches)} file(s) for {month}: nothing to merge"
                out["file"] = batches[0]["file"] if batches else None
                out["rows"] = batches[0]["row_count"] if batches else 0
                return out
            formats = {b["format"] for b in batches}
            if len(formats) > 1:
                raise UsageError(
                    f"month {month} has batch files in several formats ({', '.join(sorted(formats))})"
                )
            fmt = formats.pop()
            missing = [b["file"] for b in batches if not (adir.root / b["file"]).is_file()]
            if missing:
                raise ArchiveIntegrityError(
                    f"cannot compact {month}: batch file(s) missing: {', '.join(missing)}"
                )
            taken = {b["file"] for b in batches}
            rel = compacted_relpath(month, fmt)
            if rel in taken or (adir.root / rel).exists():
                rel = compacted_relpath(month, fmt, uuid.uuid4())
            by_path = {adir.root / b["file"]: b for b in batches}

            def check(src: Path, sha: str, size: int) -> None:
                b = by_path[src]
                if sha != b["sha256"] or size != b["bytes"]:
                    raise ArchiveIntegrityError(f"batch file {b['file']} does not match its ledger checksum")

            sha, size = copy_with_digest(list(by_path), adir.root / rel, check)
            kill_point("compact_written")
            new_id = uuid.uuid4()
            # the merged file goes into the repository before the ledger names it, so a batch that
            # is purged is always one whose file is in the repository
            try:
                name = _store_compacted(archiver, target, adir.root / rel, rel, month, new_id, sha)
            except BaseException:
                adir.remove([rel])
                raise
            old_ids = [b["batch_id"] for b in batches]
            with conn.transaction():
                db.by_id_lookups(conn)
                conn.execute(
                    sql.SQL(
                        "INSERT INTO {l} (batch_id, month, file, format, kind, sha256, bytes, row_count, ids, ids_sha256, "
                        "min_id, max_id, replaces, purged_at, purged_rows, kept_rows, created_by, repo_object, stored_at) "
                        "SELECT %(new)s, %(month)s, %(file)s, %(fmt)s, 'compacted', %(sha)s, %(bytes)s, s.n, s.ids, "
                        "encode(sha256(convert_to(array_to_string(s.ids, ','), 'UTF8')), 'hex'), s.ids[1], "
                        "s.ids[cardinality(s.ids)], %(old)s::uuid[], p.purged_at, p.purged_rows, p.kept_rows, %(by)s, "
                        "%(name)s, now() "
                        "FROM (SELECT array_agg(x ORDER BY x) AS ids, count(*)::int AS n FROM {l} l, unnest(l.ids) x "
                        "      WHERE l.batch_id = ANY(%(old)s::uuid[])) s, "
                        "     (SELECT CASE WHEN bool_and(purged_at IS NOT NULL) THEN max(purged_at) END AS purged_at, "
                        "             sum(purged_rows) AS purged_rows, sum(kept_rows) AS kept_rows "
                        "      FROM {l} WHERE batch_id = ANY(%(old)s::uuid[])) p"
                    ).format(l=target.ledger),
                    {
                        "new": new_id,
                        "month": month,
                        "file": rel,
                        "fmt": fmt,
                        "sha": sha,
                        "bytes": size,
                        "old": old_ids,
                        "by": db.run_label(),
                        "name": name,
                    },
                )
                row = conn.execute(
                    sql.SQL(
                        "SELECT row_count, (SELECT sum(row_count) FROM {l} WHERE batch_id = ANY(%s::uuid[])) FROM {l} WHERE batch_id = %s"
                    ).format(l=target.ledger),
                    (old_ids, new_id),
                ).fetchone()
                if row is None or int(row[0]) != int(row[1]):
                    raise ArchiveIntegrityError(f"compacting {month}: row counts do not add up")
                conn.execute(
                    sql.SQL(
                        "UPDATE {t} c SET archive_file = %s "
                        "WHERE c.id = ANY(ARRAY(SELECT unnest(ids) FROM {l} WHERE batch_id = %s)) "
                        "AND c.archive_file = ANY(%s::text[])"
                    ).format(t=target.table, l=target.ledger),
                    (rel, new_id, sorted(taken)),
                )
                conn.execute(
                    sql.SQL("DELETE FROM {} WHERE batch_id = ANY(%s::uuid[])").format(target.ledger),
                    (old_ids,),
                )
                kill_point("compact_before_commit")
            kill_point("compact_committed")
            adir.remove(sorted(taken))
            out.update(
                compacted=True,
                merged_files=sorted(taken),
                file=rel,
                rows=int(row[0]),
                bytes=size,
                sha256=sha,
                repository_object=name,
            )
    return out


def _store_compacted(
    archiver: Archiver, target: Target, path: Path, rel: str, month: str, batch_id: uuid.UUID, sha: str
) -> str:
    repo = archiver._open_repo()
    if repo is None:
        raise ColdkeepError(
            f"compaction needs the repository (the merged file is stored before it replaces the batches): "
            f"{archiver._repo_error}",
            hint="make the repository reachable and run `conversations compact` again",
        )
    from coldkeep.errors import ObjectExists
    from coldkeep.repository.locks import locked

    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha:
        raise ArchiveIntegrityError(f"{rel} changed while being compacted")
    meta = {
        "table": target.qualified,
        "batch_id": str(batch_id),
        "month": month,
        "sha256": sha,
        "kind": "compacted",
    }
    name = repo_name(target, rel)
    try:
        with locked(repo.backend, "conversations compact", exclusive=False):
            try:
                repo.put_named(name, data, meta)
            except ObjectExists:
                # a compaction killed before its commit stored other content under this name
                name = repo_name(target, rel) + f".{batch_id.hex[:12]}"
                repo.put_named(name, data, meta)
            kill_point("stored")
    finally:
        repo.close()
        archiver._repo = None
    return name
