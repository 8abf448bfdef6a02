"""Reading the archive back: ``get``, ``restore`` (rehydrate), ``verify`` and ``stats``.

A batch file is read from ``archive_dir``; when it is missing there but the ledger says it is in the
repository, it is restored from the repository into a temporary directory first, so rows survive
the loss of the archive disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from coldkeep.config import Config
from coldkeep.conversations import db
from coldkeep.conversations.archive import ArchiveResult, add_months, parse_month
from coldkeep.conversations.db import CSV_RAW, ROW_JSON, ArchiveIntegrityError, Target, connect, open_target
from coldkeep.conversations.files import ArchiveDir, BatchReader, id_of, kill_point
from coldkeep.conversations.ledger import ledger_files, repo_copy_ok, reverify
from coldkeep.errors import ColdkeepError, NotFound, UsageError


class _Files:
    """Batch files by ledger row: local, else fetched from the repository (once, into a temp dir)."""

    def __init__(self, config: Config, adir: ArchiveDir) -> None:
        self.config = config
        self.adir = adir
        self._repo: Any = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.fetched: list[str] = []
        self.damaged: list[str] = []  # local files whose SHA-256 is not the ledger's

    def path(self, batch: dict[str, Any]) -> Path:
        """The batch file to read: the local one when its SHA-256 is the ledger's, else the
        repository's copy (a missing or damaged local file: the damaged one is named in
        :attr:`damaged` and left as it is, for `conversations verify` to report)."""
        local = self.adir.root / str(batch["file"])
        state = "missing from"
        if local.is_file():
            try:
                digest = _sha256(local)
            except OSError as exc:  # unreadable (permissions, an I/O error): as damaged
                digest = f"unreadable: {exc.strerror or exc}"
            if digest == batch.get("sha256"):
                return local
            state = "damaged (its SHA-256 is not the ledger's) in" if len(digest) == 64 else f"{digest} in"
            self.damaged.append(str(batch["file"]))
        if not batch.get("repo_object"):
            raise ArchiveIntegrityError(
                f"batch file {batch['file']} is {state} {self.adir.root} and was never stored in the repository"
            )
        if self._repo is None:
            from coldkeep.repository.setup import open_repository

            self._repo = open_repository(self.config)
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="coldkeep-conv-")
        why = repo_copy_ok(self._repo, batch)
        if why:
            raise ArchiveIntegrityError(
                f"batch file {batch['file']} is {state} {self.adir.root} and its {why}"
            )
        _meta, data = self._repo.get_named(batch["repo_object"])
        fetched = Path(self._tmp.name) / Path(str(batch["file"])).name
        fetched.write_bytes(data)
        self.fetched.append(str(batch["file"]))
        return fetched

    def close(self) -> None:
        if self._repo is not None:
            with contextlib.suppress(Exception):
                self._repo.close()
        if self._tmp is not None:
            self._tmp.cleanup()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _row_out(line: str | bytes, source: str, *, archived: bool, archive_file: str | None) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(line)
    doc["source"] = source
    doc["archived"] = archived
    doc["archive_file"] = archive_file
    return doc


def _table_rows(
    conn: psycopg.Connection[Any], target: Target, where: sql.Composable, params: tuple[Any, ...]
) -> list[dict[str, Any]]:
    rows = conn.execute(
        sql.SQL("SELECT {row}::text, c.archived IS TRUE, c.archive_file FROM {t} c WHERE {where}").format(
            row=sql.SQL(ROW_JSON), t=target.table, where=where
        ),
        params,
    ).fetchall()
    return [_row_out(r[0], "table", archived=bool(r[1]), archive_file=r[2]) for r in rows]


def get_rows(config: Config, *, row_id: int | None = None, session: str | None = None) -> dict[str, Any]:
    """Rows by id or session, from the table or the archive, each saying where it came from."""
    if (row_id is None) == (session is None):
        raise UsageError("give exactly one of --id and --session")
    db.require_section(config)
    if session is not None:
        try:
            session = str(uuid.UUID(session))
        except ValueError:
            raise UsageError(f"not a session id (UUID): {session!r}") from None
    cfg = config.conversations
    files = _Files(config, ArchiveDir(Path(cfg.archive_dir)))
    out: list[dict[str, Any]] = []
    try:
        with connect(config.postgres, "conversations get") as conn:
            target = open_target(conn, cfg)
            if row_id is not None:
                out = _table_rows(conn, target, sql.SQL("c.id = %s"), (row_id,))
                if not out:
                    found = conn.execute(
                        sql.SQL(
                            "SELECT file, batch_id::text, month, format, sha256, bytes, row_count, ids_sha256, "
                            "repo_object FROM {} WHERE %s = ANY(ids)"
                        ).format(target.ledger),
                        (row_id,),
                    ).fetchone()
                    if found is not None:
                        batch = dict(
                            zip(
                                (
                                    "file",
                                    "batch_id",
                                    "month",
                                    "format",
                                    "sha256",
                                    "bytes",
                                    "row_count",
                                    "ids_sha256",
                                    "repo_object",
                                ),
                                found,
                                strict=True,
                            )
                        )
                        prefix = b'{"id":%d,' % row_id
                        for line in BatchReader(files.path(batch), batch["format"]).lines():
                            if line.startswith(prefix):
                                out.append(
                                    _row_out(line, "archive", archived=True, archive_file=batch["file"])
                                )
                                break
            else:
                assert session is not None
                out = _table_rows(conn, target, sql.SQL("c.session_id::text = %s"), (session,))
                in_table = {r["id"] for r in out}
                needle = b'"session_id":"' + session.encode() + b'"'
                for batch in ledger_files(conn, target).values():
                    for line in _matching_lines(files.path(batch), batch["format"], needle):
                        if id_of(line) not in in_table:
                            out.append(_row_out(line, "archive", archived=True, archive_file=batch["file"]))
    finally:
        files.close()
    if not out:
        what = f"id {row_id}" if row_id is not None else f"session {session}"
        raise NotFound(
            f"no conversation row with {what} in the table or the archive",
            hint="check the id; `coldkeep conversations stats` shows what is archived",
        )
    out.sort(key=lambda r: (r.get("timestamp") or "", r["id"]))
    return {
        "rows": out,
        "from_table": sum(1 for r in out if r["source"] == "table"),
        "from_archive": sum(1 for r in out if r["source"] == "archive"),
        "fetched_from_repository": files.fetched,
        "damaged_locally": files.damaged,
    }


def _matching_lines(path: Path, fmt: str, needle: bytes) -> Iterator[bytes]:
    """Lines containing ``needle``, testing whole decompressed pieces first (cheap when absent)."""
    rest = b""
    for piece in BatchReader(path, fmt).chunks():
        data = rest + piece if rest else piece
        cut = data.rfind(b"\n") + 1
        body, rest = data[:cut], data[cut:]
        if needle in body:
            for line in body.split(b"\n"):
                if needle in line:
                    yield line
    if rest and needle in rest:
        yield rest


# ------------------------------------------------------------------------------------------------
# restore


def restore_rows(
    config: Config, *, month: str | None = None, session: str | None = None, lock_wait: float = 30.0
) -> dict[str, Any]:
    """Put archived rows that are no longer in the table back, marked archived with their file.
    Idempotent: rows whose id is in the table are left as they are."""
    if (month is None) == (session is None):
        raise UsageError("give exactly one of --month and --session")
    db.require_section(config)
    needle = b""
    if month is not None:
        parse_month(month)
    else:
        assert session is not None
        try:
            session = str(uuid.UUID(session))
        except ValueError:
            raise UsageError(f"not a session id (UUID): {session!r}") from None
        needle = b'"session_id":"' + session.encode() + b'"'
    cfg = config.conversations
    adir = ArchiveDir(Path(cfg.archive_dir))
    files = _Files(config, adir)
    out: dict[str, Any] = {
        "month": month,
        "session": session,
        "batches": 0,
        "rows_in_archive": 0,
        "rows_restored": 0,
        "rows_already_present": 0,
        "files": [],
    }
    try:
        with connect(config.postgres, "conversations restore") as conn:
            target = open_target(conn, cfg)
            with db.archive_lock(conn, target, wait_s=lock_wait):
                batches = [
                    b for b in ledger_files(conn, target).values() if month is None or b["month"] == month
                ]
                if not batches:
                    raise NotFound(
                        f"nothing archived for {'month ' + month if month else 'session ' + str(session)}"
                    )
                conn.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS coldkeep_restore (line jsonb) ON COMMIT DELETE ROWS"
                )
                for batch in batches:
                    path = files.path(batch)
                    reader = BatchReader(path, batch["format"])
                    matched = 0
                    with conn.transaction():
                        with (
                            conn.cursor() as cur,
                            cur.copy(
                                sql.SQL("COPY coldkeep_restore (line) FROM STDIN {}").format(sql.SQL(CSV_RAW))
                            ) as copy,
                        ):
                            buf: list[bytes] = []
                            size = 0
                            for line in reader.lines():
                                if needle and needle not in line:
                                    continue
                                buf.append(line + b"\n")
                                size += len(line) + 1
                                matched += 1
                                if size >= 1 << 20:
                                    copy.write(b"".join(buf))
                                    buf, size = [], 0
                            if buf:
                                copy.write(b"".join(buf))
                        if reader.sha256 != batch["sha256"] or reader.rows != batch["row_count"]:
                            raise ArchiveIntegrityError(
                                f"batch file {batch['file']} does not match its ledger record (SHA-256 or row count); "
                                "nothing restored from it"
                            )
                        if not matched:
                            continue
                        db.by_id_lookups(conn)
                        cur2 = conn.execute(
                            sql.SQL(
                                'INSERT INTO {t} (id, session_id, "timestamp", speaker, content, metadata, archived, '
                                "archive_file) OVERRIDING SYSTEM VALUE "
                                'SELECT r.id, r.session_id, r."timestamp", r.speaker, r.content, r.metadata, true, %s '
                                "FROM coldkeep_restore s, jsonb_populate_record(NULL::{t}, s.line) r "
                                "WHERE NOT EXISTS (SELECT 1 FROM {t} c WHERE c.id = r.id)"
                            ).format(t=target.table),
                            (batch["file"],),
                        )
                        restored = cur2.rowcount
                        if restored:
                            conn.execute(
                                sql.SQL("UPDATE {} SET purged_at = NULL WHERE batch_id = %s").format(
                                    target.ledger
                                ),
                                (batch["batch_id"],),
                            )
                        kill_point("restore_before_commit")
                    out["batches"] += 1
                    out["rows_in_archive"] += matched
                    out["rows_restored"] += restored
                    out["rows_already_present"] += matched - restored
                    out["files"].append(batch["file"])
    finally:
        files.close()
    out["fetched_from_repository"] = files.fetched
    out["damaged_locally"] = files.damaged
    return out


# ------------------------------------------------------------------------------------------------
# verify


def verify(config: Config, *, check_repo: bool = False, lock_wait: float = 30.0) -> dict[str, Any]:
    """Every ledger batch against its file; every archived row in exactly one batch (its file);
    no unarchived row in a batch; purged batches stored in the repository."""
    db.require_section(config)
    cfg = config.conversations
    adir = ArchiveDir(Path(cfg.archive_dir))
    problems: list[str] = []
    warnings: list[str] = []
    out: dict[str, Any] = {}
    with connect(config.postgres, "conversations verify") as conn:
        target = open_target(conn, cfg)
        with db.archive_lock(conn, target, wait_s=lock_wait, shared=True):
            batches = ledger_files(conn, target)
            scan = adir.scan()
            orphans = sorted(scan.tmp + [f for f in scan.final if f not in batches])
            if orphans:
                warnings.append(
                    f"{len(orphans)} file(s) not in the ledger (left by an interrupted run; the next "
                    f"archive run removes them): {orphans[:5]}"
                )
            rows_in_files = 0
            for name, batch in batches.items():
                check = reverify(adir.root / name, batch)
                if not check.ok:
                    where = (
                        f" (a copy is in the repository as {batch['repo_object']})"
                        if batch["repo_object"]
                        else ""
                    )
                    problems.append(f"batch file {name}: {check.reason}{where}")
                else:
                    rows_in_files += len(check.ids)
                if batch["purged"] and not batch["repo_object"]:
                    problems.append(f"batch {name} is purged but not recorded as stored in the repository")
            bad_digest = conn.execute(
                sql.SQL(
                    "SELECT file FROM {} WHERE ids_sha256 <> encode(sha256(convert_to(array_to_string(ids, ','), 'UTF8')), 'hex') "
                    "OR cardinality(ids) <> row_count"
                ).format(target.ledger)
            ).fetchall()
            problems.extend(
                f"ledger row for {r[0]}: ids do not match their digest or row count" for r in bad_digest
            )
            dup = conn.execute(
                sql.SQL(
                    "SELECT x, count(*) FROM {} l, unnest(l.ids) x GROUP BY x HAVING count(*) > 1 ORDER BY x LIMIT 20"
                ).format(target.ledger)
            ).fetchall()
            if dup:
                problems.append(f"ids in more than one batch: {[int(r[0]) for r in dup]}")
            with conn.transaction():
                conn.execute("SET LOCAL work_mem = '64MB'")
                counts = conn.execute(
                    sql.SQL(
                        _LEDGER_IDS + "SELECT count(*) FILTER (WHERE c.archived), "
                        "count(*) FILTER (WHERE c.archived AND l.id IS NULL), "
                        "count(*) FILTER (WHERE c.archived AND l.id IS NOT NULL AND c.archive_file IS DISTINCT FROM l.file), "
                        "count(*) FILTER (WHERE c.id IS NOT NULL AND c.archived IS NOT TRUE AND l.id IS NOT NULL), "
                        "count(l.id), count(*) FILTER (WHERE c.id IS NULL) "
                        "FROM (SELECT id, archived, archive_file FROM {t}) c FULL JOIN l ON l.id = c.id"
                    ).format(l=target.ledger, t=target.table)
                ).fetchone()
            assert counts is not None
            archived_in_table, not_in_batch, wrong_file, unmarked, ledger_rows, purged_rows = (
                int(v) for v in counts
            )
            if not_in_batch:
                sample = _sample(
                    conn, target, "c.archived AND NOT EXISTS (SELECT 1 FROM l WHERE l.id = c.id)"
                )
                problems.append(
                    f"{not_in_batch} archived row(s) are in no ledger batch (e.g. ids {sample}); rows archived "
                    "by another tool? set archived = false to let coldkeep archive them"
                )
            if wrong_file:
                problems.append(
                    f"{wrong_file} archived row(s) name a different archive_file than their batch"
                )
            if unmarked:
                sample = _sample(
                    conn,
                    target,
                    "c.archived IS NOT TRUE AND EXISTS (SELECT 1 FROM l WHERE l.id = c.id)",
                )
                problems.append(
                    f"{unmarked} row(s) are in a batch but not marked archived (e.g. ids {sample}); the next "
                    "archive run would archive them twice"
                )
            if check_repo:
                _check_repo(config, batches, problems)
            out = {
                "table": target.qualified,
                "archive_dir": str(adir.root),
                "batches": len(batches),
                "rows_in_ledger": ledger_rows,
                "rows_in_files": rows_in_files,
                "archived_rows_in_table": archived_in_table,
                "purged_rows": purged_rows,
                "not_in_repository": sum(1 for b in batches.values() if not b["repo_object"]),
                "orphan_files": orphans,
                "problems": problems,
                "warnings": warnings,
                "ok": not problems,
            }
    return out


_LEDGER_IDS = "WITH l AS MATERIALIZED (SELECT x AS id, file FROM {l}, unnest(ids) x) "


def _sample(conn: psycopg.Connection[Any], target: Target, where: str) -> list[int]:
    rows = conn.execute(
        sql.SQL(_LEDGER_IDS + "SELECT c.id FROM {t} c WHERE " + where + " ORDER BY c.id LIMIT 5").format(
            t=target.table, l=target.ledger
        )
    ).fetchall()
    return [int(r[0]) for r in rows]


def _check_repo(config: Config, batches: dict[str, dict[str, Any]], problems: list[str]) -> None:
    from coldkeep.repository.setup import open_repository

    try:
        repo = open_repository(config)
    except ColdkeepError as exc:
        problems.append(f"repository not reachable: {exc.message}")
        return
    try:
        for name, batch in batches.items():
            if batch["repo_object"]:
                why = repo_copy_ok(repo, batch)
                if why:
                    problems.append(f"batch file {name}: {why}")
    finally:
        repo.close()


# ------------------------------------------------------------------------------------------------
# stats


def stats(config: Config) -> dict[str, Any]:
    """Rows hot / archived (still in the table) / purged per UTC month, and archive bytes."""
    db.require_section(config)
    cfg = config.conversations
    with connect(config.postgres, "conversations stats") as conn:
        target = open_target(conn, cfg, need_ledger=False)
        table = conn.execute(
            sql.SQL(
                "SELECT coalesce(to_char(\"timestamp\", 'YYYY-MM'), 'none'), count(*) FILTER (WHERE archived IS NOT TRUE), "
                "count(*) FILTER (WHERE archived) FROM {t} GROUP BY 1"
            ).format(t=target.table)
        ).fetchall()
        ledger: list[tuple[Any, ...]] = []
        if target.ledger_exists:
            ledger = conn.execute(
                sql.SQL(
                    "SELECT month, sum(row_count)::bigint, count(*), sum(bytes)::bigint, "
                    "count(*) FILTER (WHERE repo_object IS NULL) FROM {} GROUP BY 1"
                ).format(target.ledger)
            ).fetchall()
    months: dict[str, dict[str, int]] = {}
    for month, hot, archived in table:
        months[str(month)] = {
            "hot": int(hot),
            "archived": int(archived),
            "purged": 0,
            "files": 0,
            "bytes": 0,
            "not_in_repository": 0,
        }
    for month, rows, nfiles, nbytes, unstored in ledger:
        m = months.setdefault(
            str(month), {"hot": 0, "archived": 0, "purged": 0, "files": 0, "bytes": 0, "not_in_repository": 0}
        )
        m["purged"] = max(0, int(rows) - m["archived"])
        m["files"] = int(nfiles)
        m["bytes"] = int(nbytes)
        m["not_in_repository"] = int(unstored)
    ordered = dict(sorted(months.items()))
    totals = {k: sum(m[k] for m in ordered.values()) for k in ("hot", "archived", "purged", "files", "bytes")}
    return {"table": target.qualified, "archive_dir": cfg.archive_dir, "months": ordered, "totals": totals}


__all__ = ["ArchiveResult", "add_months", "get_rows", "restore_rows", "stats", "verify"]
