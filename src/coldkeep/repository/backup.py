"""Backing up files and directories into a snapshot.

Pipeline: walk the sources (lstat only) → for each regular file, reuse the parent snapshot's entry
when size, mtime and inode are unchanged (an unchanged tree costs metadata only) → otherwise chunk
it (``chunker.chunk_file``: mmap, zero-copy views), computing the whole-file SHA-256 on the way,
and hand chunks to a pool of threads that hash, deduplicate, compress and seal them (hashlib,
blake3, zstandard and AES-GCM release the GIL) → packs are uploaded in the background → index →
tree blobs → snapshot, in that order.
"""

from __future__ import annotations

import collections
import hashlib
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coldkeep import clock
from coldkeep.errors import NotFound, UsageError
from coldkeep.repository.chunker import chunk_file
from coldkeep.repository.repository import BlobWriter, Progress, Repository, Snapshot

SMALL_FILE = 4 * 1024 * 1024


@dataclass
class BackupResult:
    snapshot: Snapshot
    files: int
    dirs: int
    logical_bytes: int
    new_stored_bytes: int
    reused_files: int
    duration_s: float
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "snapshot_id": self.snapshot.id,
            "files": self.files,
            "dirs": self.dirs,
            "logical_bytes": self.logical_bytes,
            "new_stored_bytes": self.new_stored_bytes,
            "reused_files": self.reused_files,
            "duration_s": self.duration_s,
            "warnings": self.warnings,
        }


def _name(path: Path, base: Path | None) -> str:
    if base is not None:
        rel = path.relative_to(base).as_posix()
        return rel if rel != "." else ""
    return path.as_posix().lstrip("/")


def walk(
    sources: Iterable[Path], base: Path | None, warnings: list[str]
) -> Iterator[tuple[Path, str, os.stat_result]]:
    """(filesystem path, name in the snapshot, lstat) for every source and everything below it."""
    for source in sources:
        try:
            st = source.lstat()
        except OSError as exc:
            raise NotFound(f"cannot back up {source}: {exc.strerror}") from None
        name = _name(source, base)
        if name:
            yield source, name, st
        if stat.S_ISDIR(st.st_mode):
            stack = [source]
            while stack:
                directory = stack.pop()
                try:
                    with os.scandir(directory) as it:
                        children = sorted(it, key=lambda e: e.name)
                except OSError as exc:
                    warnings.append(f"{directory}: cannot list ({exc.strerror})")
                    continue
                subdirs = []
                for child in children:
                    path = Path(child.path)
                    try:
                        cst = child.stat(follow_symlinks=False)
                    except OSError as exc:
                        warnings.append(f"{path}: cannot stat ({exc.strerror})")
                        continue
                    yield path, _name(path, base), cst
                    if stat.S_ISDIR(cst.st_mode):
                        subdirs.append(path)
                stack.extend(reversed(subdirs))


def _meta(name: str, st: os.stat_result) -> dict[str, Any]:
    return {
        "path": name,
        "mode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "mtime_ns": st.st_mtime_ns,
    }


class Backup:
    def __init__(
        self,
        repo: Repository,
        *,
        threads: int | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.repo = repo
        self.threads = threads or max(2, os.cpu_count() or 2)
        self.progress = progress or Progress()

    def _chunk_large(self, writer: BlobWriter, pool: ThreadPoolExecutor, path: Path) -> tuple[str, list[str]]:
        sha = hashlib.sha256()
        window: collections.deque[Future[bytes]] = collections.deque()
        ids: list[str] = []
        limit = self.threads * 2
        chunks = chunk_file(path, "auto", self.repo.config.chunker)
        try:
            for view in chunks:
                sha.update(view)
                window.append(pool.submit(writer.store, view))
                while len(window) >= limit:
                    ids.append(window.popleft().result().hex())
            while window:
                ids.append(window.popleft().result().hex())
        finally:
            for fut in window:
                fut.cancel()
            chunks.close()
        return sha.hexdigest(), ids

    def _file(
        self, writer: BlobWriter, pool: ThreadPoolExecutor, path: Path, size: int
    ) -> tuple[str, list[str]]:
        if size > SMALL_FILE:
            return self._chunk_large(writer, pool, path)
        sha = hashlib.sha256()
        ids: list[str] = []
        chunks = chunk_file(path, "auto", self.repo.config.chunker)
        try:
            for view in chunks:
                sha.update(view)
                ids.append(writer.store(view).hex())
        finally:
            chunks.close()
        return sha.hexdigest(), ids

    def run(
        self,
        sources: list[Path],
        *,
        base: Path | None = None,
        tags: dict[str, str] | None = None,
        label: str = "",
        meta: dict[str, Any] | None = None,
        parent: str | None = "auto",
        kind: str = "files",
        on_entry: Callable[[dict[str, Any]], None] | None = None,
    ) -> BackupResult:
        started = time.monotonic()
        if not sources:
            raise UsageError("nothing to back up", hint="name at least one PATH")
        sources = [Path(os.path.abspath(s)) for s in sources]
        if base is not None:
            base = Path(os.path.abspath(base))
            for s in sources:
                if s != base and base not in s.parents:
                    raise UsageError(f"{s} is not under {base}")
        paths = [str(s) for s in sources]
        parent_snap = (
            self._find_parent(paths, tags or {})
            if parent == "auto"
            else (self.repo.find_snapshot(parent) if parent else None)
        )
        previous: dict[str, dict[str, Any]] = {}
        if parent_snap is not None:
            for entry in self.repo.iter_tree(parent_snap):
                if entry.get("type") == "file":
                    previous[entry["path"]] = entry
        warnings: list[str] = []
        writer = self.repo.writer()
        entries: list[dict[str, Any] | Future[dict[str, Any] | None]] = []
        files = dirs = reused = 0
        logical = 0
        file_pool = ThreadPoolExecutor(self.threads, thread_name_prefix="coldkeep-file")
        chunk_pool = ThreadPoolExecutor(self.threads, thread_name_prefix="coldkeep-chunk")
        try:
            for path, name, st in walk(sources, base, warnings):
                entry = _meta(name, st)
                if stat.S_ISDIR(st.st_mode):
                    entry["type"] = "dir"
                    dirs += 1
                    entries.append(entry)
                elif stat.S_ISLNK(st.st_mode):
                    entry["type"] = "symlink"
                    entry["target"] = os.readlink(path)
                    entries.append(entry)
                elif stat.S_ISREG(st.st_mode):
                    entry.update(type="file", size=st.st_size, ino=st.st_ino, ctime_ns=st.st_ctime_ns)
                    files += 1
                    logical += st.st_size
                    old = previous.get(name)
                    if (
                        old is not None
                        and old.get("size") == st.st_size
                        and old.get("mtime_ns") == st.st_mtime_ns
                        and old.get("ino") == st.st_ino
                        and self._chunks_known(old["chunks"])
                    ):
                        entry.update(sha256=old["sha256"], chunks=old["chunks"])
                        reused += 1
                        self.progress.add(1, st.st_size)
                        entries.append(entry)
                    else:
                        entries.append(
                            file_pool.submit(self._file_entry, writer, chunk_pool, path, entry, warnings)
                        )
                else:
                    warnings.append(f"{path}: skipped (not a regular file, directory or symlink)")
            final: list[dict[str, Any]] = []
            for item in entries:
                resolved = item.result() if isinstance(item, Future) else item
                if resolved is not None:
                    final.append(resolved)
                    if on_entry is not None:
                        on_entry(resolved)
            tree_ids = self.repo.write_tree(writer, final)
            writer.finish()
        except BaseException:
            writer.abort()
            raise
        finally:
            file_pool.shutdown(wait=True, cancel_futures=True)
            chunk_pool.shutdown(wait=True, cancel_futures=True)
        files = sum(1 for e in final if e["type"] == "file")
        duration = round(time.monotonic() - started, 3)
        snap = Snapshot(
            id="",
            time=clock.isoformat(clock.now()),
            host=os.uname().nodename,
            paths=paths,
            tags=dict(tags or {}),
            label=label,
            meta=dict(meta or {}),
            tree=tree_ids,
            summary={
                "files": files,
                "dirs": dirs,
                "logical_bytes": logical,
                "new_stored_bytes": writer.stats.new_stored_bytes,
                "new_raw_bytes": writer.stats.new_raw_bytes,
                "reused_files": reused,
                "duration_s": duration,
                "warnings": len(warnings),
            },
            parent=parent_snap.id if parent_snap else None,
            kind=kind,
        )
        self.repo.save_snapshot(snap)
        return BackupResult(
            snapshot=snap,
            files=files,
            dirs=dirs,
            logical_bytes=logical,
            new_stored_bytes=writer.stats.new_stored_bytes,
            reused_files=reused,
            duration_s=round(time.monotonic() - started, 3),
            warnings=warnings,
        )

    def _file_entry(
        self,
        writer: BlobWriter,
        pool: ThreadPoolExecutor,
        path: Path,
        entry: dict[str, Any],
        warnings: list[str],
    ) -> dict[str, Any] | None:
        try:
            sha, ids = self._file(writer, pool, path, int(entry["size"]))
        except OSError as exc:
            warnings.append(f"{path}: cannot read ({exc.strerror}); not in the snapshot")
            return None
        try:
            st = path.lstat()
            if st.st_mtime_ns != entry["mtime_ns"] or st.st_size != entry["size"]:
                warnings.append(f"{path}: changed while being backed up")
                entry["mtime_ns"] = -1  # force a re-read next time
        except OSError:
            pass
        entry.update(sha256=sha, chunks=ids)
        self.progress.add(1, int(entry["size"]))
        return entry

    def _chunks_known(self, chunk_ids: list[str]) -> bool:
        cache = self.repo.cache
        return all(cache.has(bytes.fromhex(c)) for c in chunk_ids)

    def _find_parent(self, paths: list[str], tags: dict[str, str]) -> Snapshot | None:
        host = os.uname().nodename
        candidates = [
            s for s in self.repo.list_snapshots() if s.paths == paths and s.host == host and s.tags == tags
        ]
        return candidates[-1] if candidates else None
