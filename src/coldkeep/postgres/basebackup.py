"""``pg backup``: a base backup streamed from ``pg_basebackup`` straight into the repository.

``pg_basebackup -D - -Ft -X none --manifest-checksums=CRC32C`` writes one tar stream (the
server injects ``backup_manifest`` at its end).  coldkeep reads it member by member with its own
tar parser (:mod:`coldkeep.postgres.tarstream`; never a full-size staging copy on disk), reading
member data straight from the pipe into a ring of chunk buffers, cuts relation files into
``page_chunk`` (128 KiB, 16-page, by default) chunks so unchanged pages deduplicate against earlier backups,
hashes/compresses/stores chunks on a thread pool while each file's SHA-256 (the tree's) and
CRC32C (the manifest's) run on a thread of its own, and checks every file's CRC32C and size
against the manifest.  The server computes CRC32C (hardware-assisted, ~10 GB/s) rather than a
second SHA-256 of every byte: that SHA-256 cost the walsender ~1.4 s of CPU per 2 GB, taken from
the same cores that hash and compress the stream here.  WAL is not in the backup: it comes
from the archive, and the backup counts as complete only once every segment from its start to its
stop LSN is there — within ``[postgres].backup_wal_timeout`` (:mod:`coldkeep.postgres.backupwait`:
the server itself waits for the archiver before it ends the stream, and a failing
``archive_command`` would make that wait endless).
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import crc32c

from coldkeep import clock
from coldkeep.config import Config
from coldkeep.errors import ColdkeepError, IntegrityError, PostgresError, UsageError
from coldkeep.postgres import backupwait, children, pgconn
from coldkeep.postgres.cluster import find_bin_dir, server_version
from coldkeep.postgres.tarstream import TarFormatError, TarReader, TarTruncated, set_pipe_size
from coldkeep.repository.blobwriter import BlobWriter
from coldkeep.repository.chunker import StreamChunker, chunk_buffer, strategy_for
from coldkeep.repository.progress import Progress
from coldkeep.repository.repository import Repository
from coldkeep.repository.snapshot import Snapshot
from coldkeep.repository.tree import EntryType, TreeEntry

PG_TAGS = {"service": "postgres", "kind": "pg-base"}
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

    def __init__(self, writer: BlobWriter, threads: int, limit: int = 0) -> None:
        self.writer = writer
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="coldkeep-pgchunk")
        self.window: collections.deque[Future[bytes]] = collections.deque()
        self.limit = limit or threads * 3

    def submit(self, data: bytes | memoryview) -> Future[bytes]:
        fut = self.pool.submit(self.writer.store, data)
        self.window.append(fut)
        while len(self.window) > self.limit:
            self.window.popleft().result()
        return fut

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def manifest_crc(value: int) -> str:
    """A CRC32C as ``backup_manifest`` writes it: the 4 bytes in memory order (little-endian on
    every platform PostgreSQL builds ``pg_crc32c`` for here), in hex."""
    return value.to_bytes(4, "little").hex()


class FileHash:
    """A file's SHA-256 (the tree's ``sha256``) and CRC32C (checked against ``backup_manifest``)."""

    __slots__ = ("crc", "sha")

    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.crc = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self.sha.update(data)  # both release the GIL for big buffers
        self.crc = crc32c.crc32c(data, self.crc)

    def result(self) -> tuple[str, str]:
        return self.sha.hexdigest(), manifest_crc(self.crc)


def file_hash(data: bytes | bytearray | memoryview) -> tuple[str, str]:
    fh = FileHash()
    fh.update(data)
    return fh.result()


class _Hasher:
    """Whole-file hashes on a thread of their own, in submission order (hashlib and crc32c
    release the GIL for big buffers), so the manifest check overlaps reading and chunk storing
    instead of running on the thread that drains the pipe."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="coldkeep-filehash")

    def update(self, fh: FileHash, data: memoryview) -> Future[None]:
        return self.pool.submit(fh.update, data)

    def digest(self, fh: FileHash) -> Future[tuple[str, str]]:
        return self.pool.submit(fh.result)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class _Buffers:
    """A ring of reusable chunk buffers: a buffer is handed out again only once the futures that
    read it (hash, store) are done, which also bounds the data in flight."""

    def __init__(self, count: int, size: int) -> None:
        self.size = size
        self.count = count
        self.free: collections.deque[tuple[bytearray, list[Future[Any]]]] = collections.deque()
        self.made = 0

    def get(self) -> bytearray:
        if self.made < self.count:
            self.made += 1
            return bytearray(self.size)
        buf, users = self.free.popleft()
        for fut in users:
            fut.result()
        return buf

    def put(self, buf: bytearray, users: list[Future[Any]]) -> None:
        self.free.append((buf, users))


#: (SHA-256 hex, manifest CRC32C hex), maybe still being computed; ``None`` for non-files
_Hashes = Future[tuple[str, str]] | tuple[str, str] | None


@dataclass
class _Stream:
    """What one pass over the tar stream produced."""

    pending: list[tuple[TreeEntry, list[Future[bytes]], _Hashes]] = field(default_factory=list)
    manifest_raw: bytes = b""
    label_text: str = ""
    crcs: dict[str, str] = field(default_factory=dict)  # path -> CRC32C as the manifest writes it


#: bytes read from the pipe at a time (rounded down to whole page chunks, at least one)
READ_SIZE = 1024 * 1024
#: below this a file's SHA-256 is computed inline (a thread hand-off would cost more)
INLINE_HASH = 256 * 1024


def _store_member(reader: TarReader, name: str, size: int, pipe: _Pipeline, hasher: _Hasher, ring: _Buffers,
                  params: Any, progress: Progress) -> tuple[_Hashes, list[Future[bytes]]]:  # fmt: skip
    sha = FileHash()
    futures: list[Future[bytes]] = []
    strategy = strategy_for(name)
    if strategy == "pages" and size > INLINE_HASH:
        page_chunk = params.page_chunk
        remaining = size
        while remaining > 0:  # one read and one hash per buffer (several page chunks when they are small)
            n = min(ring.size, remaining)
            buf = ring.get()
            view = memoryview(buf)[:n]
            reader.readinto(view)
            remaining -= n
            users: list[Future[Any]] = [hasher.update(sha, view)]
            for offset in range(0, n, page_chunk):
                stored = pipe.submit(view[offset : offset + page_chunk])
                users.append(stored)
                futures.append(stored)
            ring.put(buf, users)
            progress.add(0, n)
        return hasher.digest(sha), futures
    if size <= WHOLE_FILE_LIMIT:
        data = bytearray(size)
        view = memoryview(data)
        reader.readinto(view)
        cuts = (
            _pages_of(size, params.page_chunk) if strategy == "pages" else chunk_buffer(view, "cdc", params)
        )
        for offset, length in cuts:
            futures.append(pipe.submit(view[offset : offset + length]))
        progress.add(0, size)
        if size <= INLINE_HASH:
            sha.update(view)
            return sha.result(), futures
        hasher.update(sha, view)
        return hasher.digest(sha), futures
    chunker = StreamChunker("cdc", params)
    remaining = size
    while remaining > 0:
        n = min(ring.size, remaining)
        buf = ring.get()
        view = memoryview(buf)[:n]
        reader.readinto(view)
        remaining -= n
        hashed = hasher.update(sha, view)
        for chunk in chunker.feed(view):
            futures.append(pipe.submit(chunk))
        ring.put(buf, [hashed])
        progress.add(0, n)
    for chunk in chunker.finish():
        futures.append(pipe.submit(chunk))
    return hasher.digest(sha), futures


def _pages_of(size: int, page_chunk: int) -> list[tuple[int, int]]:
    return [(offset, min(page_chunk, size - offset)) for offset in range(0, size, page_chunk)]


def _entry(name: str, kind: EntryType, mode: int, uid: int, gid: int, mtime_ns: int) -> TreeEntry:
    """A tree entry's first keys, in the order every base backup so far wrote them."""
    return {"path": name, "mode": mode, "uid": uid, "gid": gid, "mtime_ns": mtime_ns, "type": kind}


def read_backup_stream(raw: Any, writer: BlobWriter, params: Any, *, threads: int = 2,
                       progress: Progress | None = None) -> _Stream:  # fmt: skip
    """Store every member of a ``pg_basebackup -Ft`` tar stream read from ``raw`` (an unbuffered
    binary reader: ``readinto``) through ``writer``; returns the tree entries (chunk ids and
    SHA-256 still as futures), ``backup_manifest`` and ``backup_label``.

    Raises :class:`~coldkeep.postgres.tarstream.TarTruncated` / ``TarFormatError`` on a damaged
    stream (the caller then aborts the writer and records nothing)."""
    progress = progress or Progress()
    reader = TarReader(raw)
    per_read = max(1, READ_SIZE // params.page_chunk)  # page chunks per read buffer
    pipe = _Pipeline(writer, threads, limit=threads * 3 * per_read)
    hasher = _Hasher()
    ring = _Buffers(threads * 3 + 2, per_read * params.page_chunk)
    out = _Stream()
    try:
        for member in reader:
            name = _norm(member.name)
            meta = (member.mode, member.uid, member.gid, int(member.mtime) * 10**9)
            if member.isdir():
                out.pending.append((_entry(name, "dir", *meta), [], None))
            elif member.issym():
                entry = _entry(name, "symlink", *meta)
                entry["target"] = member.linkname
                out.pending.append((entry, [], None))
            elif member.isfile():
                if name in ("backup_manifest", "backup_label"):
                    raw_data = reader.read()
                    if name == "backup_manifest":
                        out.manifest_raw = raw_data
                    else:
                        out.label_text = raw_data.decode()
                    sha: _Hashes = file_hash(raw_data)
                    futures = [pipe.submit(raw_data)] if raw_data else []
                else:
                    sha, futures = _store_member(
                        reader, name, member.size, pipe, hasher, ring, params, progress
                    )
                entry = _entry(name, "file", *meta)
                entry["size"] = member.size
                out.pending.append((entry, futures, sha))
                progress.add(1, 0)
            else:
                raise TarFormatError(f"{name}: unexpected tar member type {member.typeflag!r} in the backup")
        # wait for everything while the pools are alive (errors surface here)
        for entry, futures, hashes in out.pending:
            if entry.get("type") == "file":
                entry["chunks"] = [f.result().hex() for f in futures]
                done = hashes.result() if isinstance(hashes, Future) else hashes
                assert done is not None
                entry["sha256"], out.crcs[entry["path"]] = done
    finally:
        hasher.close()
        pipe.close()
    return out


def check_manifest(manifest: dict[str, Any], files: dict[str, tuple[int, str, str]]) -> list[str]:
    """Compare computed (size, sha256, crc32c) per path with ``backup_manifest``; return problems.
    A checksum algorithm other than CRC32C or SHA256 is reported (coldkeep asks for CRC32C)."""
    problems = []
    listed = set()
    for entry in manifest.get("Files", []):
        path = entry["Path"]
        listed.add(path)
        got = files.get(path)
        if got is None:
            problems.append(f"{path}: in backup_manifest but not in the backup")
            continue
        size, sha, crc = got
        if int(entry["Size"]) != size:
            problems.append(f"{path}: size {size} != manifest {entry['Size']}")
        problem = checksum_problem(path, entry, sha, crc)
        if problem:
            problems.append(problem)
    for path in files:
        if path not in listed and path != "backup_manifest":
            problems.append(f"{path}: in the backup but not in backup_manifest")
    return problems


def checksum_problem(path: str, item: dict[str, Any], sha: str, crc: str) -> str | None:
    """The mismatch of one ``backup_manifest`` file entry with the computed hashes, if any."""
    algorithm = item.get("Checksum-Algorithm")
    if algorithm == "CRC32C":
        return None if item.get("Checksum") == crc else f"{path}: CRC32C differs from backup_manifest"
    if algorithm == "SHA256":
        return None if item.get("Checksum") == sha else f"{path}: SHA-256 differs from backup_manifest"
    if algorithm in (None, "NONE"):
        return None
    return f"{path}: backup_manifest checksum algorithm {algorithm} is not checked by coldkeep"


def parse_backup_label(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


class BaseBackup:
    def __init__(self, config: Config, repo: Repository, *, progress: Progress | None = None,
                 threads: int | None = None, wal_wait_s: float | None = None) -> None:  # fmt: skip
        self.config = config
        self.pg = config.postgres
        self.repo = repo
        self.progress = progress or Progress()
        self.threads = threads or max(2, os.cpu_count() or 2)
        # the most the backup waits for its WAL to be archived (the server's wait and ours)
        self.wal_wait_s = float(wal_wait_s if wal_wait_s is not None else self.pg.backup_wal_timeout)

    def _pg_basebackup_argv(self, bin_dir: Path, label: str) -> list[str]:
        conn = pgconn.conninfo(self.pg.dsn)
        argv = [str(bin_dir / "pg_basebackup"), "-D", "-", "-Ft", "-X", "none", "--manifest-checksums=CRC32C",
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
        writer = self.repo.writer(level=self.pg.compression_level)
        watch = backupwait.ArchiveWatch(self.pg, backupwait.application_name(), self.wal_wait_s)
        proc: subprocess.Popen[bytes] | None = None
        try:
            try:
                with watch:
                    proc = self._start(bin_dir, label, watch.app_name)
                    watch.on_expire = proc.kill
                    stream = self._read(proc, writer)
            except ColdkeepError:
                if watch.expired is not None:
                    raise watch.expired from None
                raise
            if watch.expired is not None:
                raise watch.expired
            stream_end = time.monotonic()
            if on_stream_done is not None:
                on_stream_done()
            entries = [entry for entry, _, _ in stream.pending]
            computed = {
                e["path"]: (int(e["size"]), str(e["sha256"]), stream.crcs[e["path"]])
                for e in entries
                if e.get("type") == "file"
            }
            label_text = stream.label_text
            entries += self._config_files(writer)
            if not stream.manifest_raw:
                raise IntegrityError("the backup stream had no backup_manifest")
            manifest = json.loads(stream.manifest_raw)
            problems = check_manifest(manifest, computed)
            if problems:
                raise IntegrityError(f"backup does not match its backup_manifest: {problems[0]}"
                                     + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""))  # fmt: skip
            tree = self.repo.write_tree(writer, entries)
            writer.finish()
        except BaseException:
            if proc is not None:
                proc.kill()
                proc.wait()
            writer.abort()
            raise
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
        self._wait_for_wal(lineage, needed, watch, stream_end)
        logical = sum(size for size, _, _ in computed.values())
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

    def _start(self, bin_dir: Path, label: str, app_name: str) -> subprocess.Popen[bytes]:
        """``pg_basebackup`` (as the PostgreSQL OS user when root) with libpq's variables only,
        known to the server as ``app_name``."""
        proc = children.popen(self._pg_basebackup_argv(bin_dir, label), os_user=self.pg.os_user, connect=True,
                              passfile=self.pg.passfile, extra_env={"PGAPPNAME": app_name},
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              bufsize=0)  # fmt: skip
        assert proc.stdout is not None
        set_pipe_size(proc.stdout.fileno())
        return proc

    def _read(self, proc: subprocess.Popen[bytes], writer: BlobWriter) -> _Stream:
        """Store the whole tar stream; ``pg_basebackup``'s own words when it fails."""
        try:
            stream = read_backup_stream(proc.stdout, writer, self.repo.config.chunker, threads=self.threads,
                                        progress=self.progress)  # fmt: skip
        except TarTruncated as exc:
            # a cut stream is usually pg_basebackup failing: report its own words
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
            stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            if proc.wait() != 0 and stderr.strip():
                raise PostgresError(f"pg_basebackup failed: {' / '.join(stderr.strip().splitlines()[-3:])}"
                                    f" ({exc.message})") from None  # fmt: skip
            raise
        stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if proc.wait() != 0:
            raise PostgresError(f"pg_basebackup failed: {' / '.join(stderr.strip().splitlines()[-3:])}")
        return stream

    def _config_files(self, writer: BlobWriter) -> list[TreeEntry]:
        """Configuration files that live outside the data directory (Debian: /etc/postgresql/…)."""
        cfg_dir = self.pg.config_dir
        if not cfg_dir:
            return []
        base = Path(cfg_dir)
        entries: list[TreeEntry] = [{"path": "_config", "type": "dir", "mode": 0o755, "uid": 0, "gid": 0,
                                     "mtime_ns": 0}]  # fmt: skip
        for path in sorted(base.rglob("*")):
            st = path.lstat()
            rel = "_config/" + path.relative_to(base).as_posix()
            entry: TreeEntry
            meta = (st.st_mode & 0o7777, st.st_uid, st.st_gid, st.st_mtime_ns)
            if path.is_symlink():
                entry = _entry(rel, "symlink", *meta)
                entry["target"] = os.readlink(path)
            elif path.is_dir():
                entry = _entry(rel, "dir", *meta)
            elif path.is_file():
                data = path.read_bytes()
                entry = _entry(rel, "file", *meta)
                entry.update({"size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                              "chunks": [writer.store(data).hex()] if data else []})  # fmt: skip
            else:
                continue
            entries.append(entry)
        return entries

    def _wait_for_wal(self, lineage: dict[str, Any], needed: list[str], watch: backupwait.ArchiveWatch,
                      stream_end: float) -> None:  # fmt: skip
        """Until every segment the backup needs is in the repository, within the budget the server's
        own archive wait started (see :mod:`coldkeep.postgres.backupwait`)."""
        from coldkeep.postgres import walchain as archive

        deadline = watch.deadline(stream_end)
        switched = False
        while True:
            have = archive.archived_set(self.repo, lineage)
            missing = [n for n in needed if n not in have]
            if not missing:
                return
            if time.monotonic() > deadline:
                more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
                raise watch.error(f"{missing[0]}{more} not in the repository; "
                                  + backupwait.describe_archiver_now(self.pg))  # fmt: skip
            if not switched and time.monotonic() > stream_end + 2:
                with pgconn.connect(self.pg) as conn:
                    conn.execute("SELECT pg_switch_wal()")
                switched = True
            time.sleep(0.25)
