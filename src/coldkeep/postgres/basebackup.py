"""``pg backup``: a base backup streamed from ``pg_basebackup`` straight into the repository.

``pg_basebackup -D - -Ft -X none --manifest-checksums=SHA256`` writes one tar stream (the
server injects ``backup_manifest`` at its end).  coldkeep reads it member by member — never a
full-size staging copy on disk — cuts relation files into 1 MiB (128-page) chunks so unchanged
pages deduplicate against earlier backups, hashes/compresses/stores chunks on a thread pool, and
checks every file's SHA-256 and size against the manifest.  WAL is not in the backup: it comes
from the archive, and the backup counts as complete only once every segment from its start to its
stop LSN is there.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import subprocess
import tarfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from coldkeep import clock
from coldkeep.config import Config
from coldkeep.errors import IntegrityError, PostgresError, UsageError
from coldkeep.postgres import pgconn
from coldkeep.postgres.cluster import as_user, find_bin_dir, server_version
from coldkeep.repository.chunker import StreamChunker, chunk_buffer, strategy_for
from coldkeep.repository.repository import BlobWriter, Progress, Repository, Snapshot

PG_TAGS = {"service": "postgres", "kind": "pg-base"}
READ_PIECE = 1024 * 1024
WHOLE_FILE_LIMIT = 64 * 1024 * 1024


@dataclass
class BackupInfo:
    snapshot: Snapshot
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return backup_json(self.snapshot) | {"warnings": self.warnings}


def backup_json(snap: Snapshot) -> dict[str, Any]:
    meta = snap.meta
    return {
        "id": snap.id,
        "short_id": snap.short_id,
        "label": snap.label,
        "time": snap.time,
        "pg_version": meta.get("pg_version"),
        "system_identifier": meta.get("system_identifier"),
        "timeline": meta.get("timeline"),
        "start_lsn": meta.get("start_lsn"),
        "stop_lsn": meta.get("stop_lsn"),
        "start_time": meta.get("start_time"),
        "stop_time": meta.get("stop_time"),
        "start_wal": meta.get("start_wal"),
        "stop_wal": meta.get("stop_wal"),
        "logical_bytes": snap.logical_bytes,
        "new_stored_bytes": snap.summary.get("new_stored_bytes"),
        "duration_s": snap.summary.get("duration_s"),
        "row_counts_start": meta.get("row_counts_start", {}),
        "row_counts_stop": meta.get("row_counts_stop", {}),
        "wal_lineage": meta.get("wal_lineage"),
        "files": snap.summary.get("files"),
    }


def _norm(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/")


class _Pipeline:
    """Ordered chunk storing with a bounded window of in-flight chunks."""

    def __init__(self, writer: BlobWriter, threads: int) -> None:
        self.writer = writer
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="coldkeep-pgchunk")
        self.window: collections.deque[Future[bytes]] = collections.deque()
        self.limit = threads * 3

    def submit(self, data: bytes) -> Future[bytes]:
        fut = self.pool.submit(self.writer.store, data)
        self.window.append(fut)
        while len(self.window) > self.limit:
            self.window.popleft().result()
        return fut

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _store_member(
    stream: IO[bytes], name: str, size: int, pipe: _Pipeline, params: Any, progress: Progress
) -> tuple[str, list[Future[bytes]]]:
    sha = hashlib.sha256()
    futures: list[Future[bytes]] = []
    strategy = strategy_for(name)
    if strategy == "pages":
        remaining = size
        while remaining > 0:
            piece = stream.read(min(params.page_chunk, remaining))
            if not piece:
                raise IntegrityError(f"{name}: tar stream ended early")
            remaining -= len(piece)
            sha.update(piece)
            futures.append(pipe.submit(piece))
            progress.add(0, len(piece))
    elif size <= WHOLE_FILE_LIMIT:
        data = stream.read(size)
        if len(data) != size:
            raise IntegrityError(f"{name}: tar stream ended early")
        sha.update(data)
        for offset, length in chunk_buffer(data, "cdc", params):
            futures.append(pipe.submit(data[offset : offset + length]))
        progress.add(0, size)
    else:
        chunker = StreamChunker("cdc", params)
        remaining = size
        while remaining > 0:
            piece = stream.read(min(READ_PIECE, remaining))
            if not piece:
                raise IntegrityError(f"{name}: tar stream ended early")
            remaining -= len(piece)
            sha.update(piece)
            for chunk in chunker.feed(piece):
                futures.append(pipe.submit(chunk))
            progress.add(0, len(piece))
        for chunk in chunker.finish():
            futures.append(pipe.submit(chunk))
    return sha.hexdigest(), futures


def check_manifest(manifest: dict[str, Any], files: dict[str, tuple[int, str]]) -> list[str]:
    """Compare computed (size, sha256) per path with ``backup_manifest``; return problems."""
    problems = []
    listed = set()
    for entry in manifest.get("Files", []):
        path = entry["Path"]
        listed.add(path)
        got = files.get(path)
        if got is None:
            problems.append(f"{path}: in backup_manifest but not in the backup")
            continue
        size, sha = got
        if int(entry["Size"]) != size:
            problems.append(f"{path}: size {size} != manifest {entry['Size']}")
        if entry.get("Checksum-Algorithm") == "SHA256" and entry.get("Checksum") != sha:
            problems.append(f"{path}: SHA-256 differs from backup_manifest")
    for path in files:
        if path not in listed and path != "backup_manifest":
            problems.append(f"{path}: in the backup but not in backup_manifest")
    return problems


def parse_backup_label(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


class BaseBackup:
    def __init__(self, config: Config, repo: Repository, *, progress: Progress | None = None,
                 threads: int | None = None, wal_wait_s: float = 120.0) -> None:  # fmt: skip
        self.config = config
        self.pg = config.postgres
        self.repo = repo
        self.progress = progress or Progress()
        self.threads = threads or max(2, os.cpu_count() or 2)
        self.wal_wait_s = wal_wait_s

    def _pg_basebackup_argv(self, bin_dir: Path, label: str) -> list[str]:
        conn = pgconn.conninfo(self.pg.dsn)
        argv = [str(bin_dir / "pg_basebackup"), "-D", "-", "-Ft", "-X", "none", "--manifest-checksums=SHA256",
                "-c", "fast", "--no-sync", "-l", label or "coldkeep"]  # fmt: skip
        if conn.get("host"):
            argv += ["-h", conn["host"]]
        if conn.get("port"):
            argv += ["-p", conn["port"]]
        if conn.get("user"):
            argv += ["-U", conn["user"]]
        return argv

    def run(self, *, label: str = "", on_stream_done: Callable[[], None] | None = None) -> BackupInfo:
        from coldkeep.postgres import walchain as archive

        started = time.monotonic()
        bin_dir = find_bin_dir(self.pg.bin_dir)
        major, version_text = server_version(bin_dir)
        with pgconn.connect(self.pg) as conn:
            sysid = str(conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0])  # type: ignore[index]
            server_version_num = int(conn.execute("SHOW server_version_num").fetchone()[0])  # type: ignore[index]
            spaces = [r[0] for r in conn.execute(
                "SELECT spcname FROM pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global')")]  # fmt: skip
            if spaces:
                raise UsageError(
                    f"the cluster has extra tablespaces ({', '.join(spaces)}), which pg backup does not handle yet",
                    hint="move their tables to pg_default, or back them up with pg_basebackup meanwhile",
                )
            archive_mode = conn.execute("SHOW archive_mode").fetchone()[0]  # type: ignore[index]
            if archive_mode not in ("on", "always"):
                raise PostgresError(
                    "archive_mode is off: a base backup without archived WAL cannot be restored",
                    hint="run `coldkeep pg setup --apply` and restart PostgreSQL",
                )
            counts_start = pgconn.count_rows(conn, self.pg.count_tables)
        lineage = archive.current_lineage(self.repo)
        if lineage is None or str(lineage["system_identifier"]) != sysid:
            raise PostgresError(
                f"the repository's WAL archive belongs to another cluster (system identifier {sysid} not recorded)",
                hint="run `coldkeep pg setup --apply` (or `--new-lineage` after pg_upgrade)",
            )
        start_time = clock.now()
        proc = subprocess.Popen(
            as_user(self.pg.os_user, self._pg_basebackup_argv(bin_dir, label)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=pgconn.client_env(self.pg),
            cwd="/",
        )
        assert proc.stdout is not None
        writer = self.repo.writer()
        pipe = _Pipeline(writer, self.threads)
        pending: list[tuple[dict[str, Any], list[Future[bytes]]]] = []
        computed: dict[str, tuple[int, str]] = {}
        manifest_raw = b""
        label_text = ""
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                for member in tar:
                    name = _norm(member.name)
                    entry: dict[str, Any] = {"path": name, "mode": member.mode, "uid": member.uid,
                                             "gid": member.gid, "mtime_ns": int(member.mtime) * 10**9}  # fmt: skip
                    if member.isdir():
                        entry["type"] = "dir"
                        pending.append((entry, []))
                    elif member.issym():
                        entry.update(type="symlink", target=member.linkname)
                        pending.append((entry, []))
                    elif member.isfile():
                        stream = tar.extractfile(member)
                        assert stream is not None
                        if name in ("backup_manifest", "backup_label"):
                            raw = stream.read()
                            if name == "backup_manifest":
                                manifest_raw = raw
                            else:
                                label_text = raw.decode()
                            sha = hashlib.sha256(raw).hexdigest()
                            futures = [pipe.submit(raw)] if raw else []
                        else:
                            sha, futures = _store_member(stream, name, member.size, pipe, self.repo.config.chunker,
                                                         self.progress)  # fmt: skip
                        computed[name] = (member.size, sha)
                        entry.update(type="file", size=member.size, sha256=sha)
                        pending.append((entry, futures))
                        self.progress.add(1, 0)
            stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            if proc.wait() != 0:
                raise PostgresError(f"pg_basebackup failed: {' / '.join(stderr.strip().splitlines()[-3:])}")
            if on_stream_done is not None:
                on_stream_done()
            entries = []
            for entry, futures in pending:
                if entry.get("type") == "file":
                    entry["chunks"] = [f.result().hex() for f in futures]
                entries.append(entry)
            entries += self._config_files(writer)
            if not manifest_raw:
                raise IntegrityError("the backup stream had no backup_manifest")
            manifest = json.loads(manifest_raw)
            problems = check_manifest(manifest, computed)
            if problems:
                raise IntegrityError(f"backup does not match its backup_manifest: {problems[0]}"
                                     + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""))  # fmt: skip
            tree = self.repo.write_tree(writer, entries)
            writer.finish()
        except BaseException:
            proc.kill()
            proc.wait()
            writer.abort()
            raise
        finally:
            pipe.close()
        stop_time = clock.now()
        ranges = manifest.get("WAL-Ranges") or []
        if not ranges:
            raise IntegrityError("backup_manifest has no WAL-Ranges")
        timeline = int(ranges[-1]["Timeline"])
        start_lsn, stop_lsn = str(ranges[0]["Start-LSN"]), str(ranges[-1]["End-LSN"])
        with pgconn.connect(self.pg) as conn:
            counts_stop = pgconn.count_rows(conn, self.pg.count_tables)
            seg_size = int(conn.execute(
                "SELECT setting::bigint * CASE unit WHEN 'B' THEN 1 WHEN 'MB' THEN 1048576 ELSE 1 END"
                " FROM pg_settings WHERE name = 'wal_segment_size'").fetchone()[0])  # type: ignore[index]  # fmt: skip
        needed = archive.segments_for_backup(timeline, start_lsn, stop_lsn, seg_size)
        self._wait_for_wal(lineage, needed)
        logical = sum(size for size, _ in computed.values())
        label_fields = parse_backup_label(label_text)
        snap = Snapshot(
            id="",
            time=clock.isoformat(stop_time),
            host=os.uname().nodename,
            paths=[self.pg.data_dir],
            tags=dict(PG_TAGS, system_identifier=sysid),
            label=label,
            meta={
                "pg_version": version_text,
                "pg_major": major,
                "server_version_num": server_version_num,
                "system_identifier": sysid,
                "timeline": timeline,
                "start_lsn": start_lsn,
                "stop_lsn": stop_lsn,
                "start_wal": needed[0],
                "stop_wal": needed[-1],
                "wal_segment_size": seg_size,
                "wal_lineage": lineage["prefix"],
                "start_time": clock.isoformat(start_time),
                "stop_time": clock.isoformat(stop_time),
                "checkpoint_location": label_fields.get("CHECKPOINT LOCATION", ""),
                "row_counts_start": counts_start,
                "row_counts_stop": counts_stop,
                "manifest_checked": True,
            },
            tree=tree,
            summary={
                "files": sum(1 for e in entries if e.get("type") == "file"),
                "logical_bytes": logical,
                "new_stored_bytes": writer.stats.new_stored_bytes,
                "duration_s": round(time.monotonic() - started, 3),
            },
            kind="pg-base",
        )
        self.repo.save_snapshot(snap)
        return BackupInfo(snap)

    def _config_files(self, writer: BlobWriter) -> list[dict[str, Any]]:
        """Configuration files that live outside the data directory (Debian: /etc/postgresql/…)."""
        cfg_dir = self.pg.config_dir
        if not cfg_dir:
            return []
        base = Path(cfg_dir)
        entries: list[dict[str, Any]] = [{"path": "_config", "type": "dir", "mode": 0o755, "uid": 0, "gid": 0,
                                          "mtime_ns": 0}]  # fmt: skip
        for path in sorted(base.rglob("*")):
            st = path.lstat()
            rel = "_config/" + path.relative_to(base).as_posix()
            entry: dict[str, Any] = {"path": rel, "mode": st.st_mode & 0o7777, "uid": st.st_uid, "gid": st.st_gid,
                                     "mtime_ns": st.st_mtime_ns}  # fmt: skip
            if path.is_symlink():
                entry.update(type="symlink", target=os.readlink(path))
            elif path.is_dir():
                entry["type"] = "dir"
            elif path.is_file():
                data = path.read_bytes()
                entry.update(type="file", size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                             chunks=[writer.store(data).hex()] if data else [])  # fmt: skip
            else:
                continue
            entries.append(entry)
        return entries

    def _wait_for_wal(self, lineage: dict[str, Any], needed: list[str]) -> None:
        from coldkeep.postgres import walchain as archive

        deadline = time.monotonic() + self.wal_wait_s
        switched = False
        while True:
            have = archive.archived_set(self.repo, lineage)
            missing = [n for n in needed if n not in have]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise PostgresError(
                    f"the backup's WAL is not archived: {missing[0]}"
                    + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else "")
                    + f" after {self.wal_wait_s:.0f} s; the backup is not complete",
                    hint="check the archiver with `coldkeep pg check` and pg_stat_archiver",
                )
            if not switched and time.monotonic() > deadline - self.wal_wait_s + 2:
                with pgconn.connect(self.pg) as conn:
                    conn.execute("SELECT pg_switch_wal()")
                switched = True
            time.sleep(0.25)
