"""Backing up files and directories into a snapshot.

Pipeline: walk the sources (lstat only) → for each regular file, reuse the parent snapshot's entry
when size, mtime and inode are unchanged (an unchanged tree costs metadata only) → otherwise chunk
it (``chunker.chunk_file``: read in windows, views of them), computing the whole-file SHA-256 on
the way, and hand chunks to a pool of threads that hash, deduplicate, compress and seal them
(hashlib, blake3, zstandard and AES-GCM release the GIL) → packs are uploaded in the background →
index → tree blobs → snapshot, in that order.

A file's entry records exactly the bytes that were read (``size`` is their count, ``sha256``
their hash, ``chunks`` cover them), so a snapshot always restores.  A file that changed between
the walk and the end of its read (grew, shrank, was rewritten, replaced or removed) is kept as
read, marked ``"changed": true`` (never reused by the next backup) and reported in
``changed_files``; one that vanished or could not be read is left out and reported in
``skipped_files``.  ``strict=True`` refuses such a snapshot instead (:class:`SourceChanged`).
"""

from __future__ import annotations

import collections
import hashlib
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coldkeep import clock
from coldkeep.errors import NotFound, UsageError
from coldkeep.repository.blobwriter import BlobWriter
from coldkeep.repository.changes import Report, refusal, what_changed
from coldkeep.repository.chunker import chunk_buffer, chunk_file, strategy_for
from coldkeep.repository.excludes import Excludes
from coldkeep.repository.fileread import WindowBuffers, open_regular, read_hook
from coldkeep.repository.progress import Progress
from coldkeep.repository.repository import Repository
from coldkeep.repository.snapshot import Snapshot
from coldkeep.repository.sources import followed_sources, outermost
from coldkeep.repository.tree import EntryType, TreeEntry

SMALL_FILE = 4 * 1024 * 1024
#: files up to this size are backed up in groups of neighbours, one task and one index query per
#: group: at most GROUP_FILES files and about GROUP_BYTES bytes
GROUP_FILE = 1024 * 1024
GROUP_FILES = 32
GROUP_BYTES = 4 * 1024 * 1024
#: reuse candidates are checked against the index once this many of their chunk ids are pending
REUSE_BATCH = 4096


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
    #: files stored as they were read although they changed meanwhile (file-system paths)
    changed_files: list[str] = field(default_factory=list)
    #: files (and directories) left out because they vanished or could not be read
    skipped_files: list[str] = field(default_factory=list)
    #: what the backup did that the caller may not expect (a followed top-level symlink)
    notes: list[str] = field(default_factory=list)

    @property
    def partial(self) -> bool:
        """Some files changed while they were read or could not be read (exit code 6)."""
        return bool(self.changed_files or self.skipped_files)

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
            "changed_files": self.changed_files,
            "skipped_files": self.skipped_files,
            "notes": self.notes,
        }


def _name(path: str, base: str | None) -> str:
    """The name of an absolute, normalised ``path`` in the snapshot (``base`` is one of its parents
    or itself)."""
    if base is not None:
        return path[len(base) :].lstrip("/")
    return path.lstrip("/")


def _entry_name(entry: os.DirEntry[str]) -> str:
    return entry.name


def walk(
    sources: Iterable[str | os.PathLike[str]],
    base: str | os.PathLike[str] | None,
    warnings: list[str],
    *,
    read_from: Mapping[str, str] | None = None,
    skipped: list[str] | None = None,
    excludes: Excludes | None = None,
) -> Iterator[tuple[str, str, os.stat_result]]:
    """(filesystem path, name in the snapshot, lstat) for every source and everything below it.

    Sources are absolute, normalised paths.  Depth first, children sorted by name; one
    ``os.scandir`` per directory and one ``lstat`` per entry, and no ``Path`` objects (the walk
    of an unchanged tree is most of what a re-backup costs).  ``read_from[source]``, when
    present, is the directory read in the source's place (a top-level symlink followed), named
    as the source.  A directory that cannot be listed or an entry that cannot be stat'ed is a
    warning, and its path goes to ``skipped``.  Entries ``excludes`` leaves out are not yielded
    (nor, for a directory, anything below it).
    """
    base_str = os.fspath(base) if base is not None else None
    for source in sources:
        given = os.fspath(source)
        src = (read_from or {}).get(given, given)
        try:
            st = os.lstat(src)
        except OSError as exc:
            what = "it does not exist" if isinstance(exc, FileNotFoundError) else exc.strerror
            raise NotFound(
                f"cannot back up {given}: {what}",
                hint="check the path (absolute, or relative to the current directory)",
            ) from None
        name = _name(given, base_str)
        if name:
            yield src, name, st
        if not stat.S_ISDIR(st.st_mode):
            continue
        stack: list[tuple[str, str]] = [(src, name)]
        while stack:
            directory, dname = stack.pop()
            prefix = dname + "/" if dname else ""
            try:
                with os.scandir(directory) as it:
                    children = sorted(it, key=_entry_name)
            except OSError as exc:
                warnings.append(
                    f"{directory}: cannot list ({exc.strerror}); its contents are not in the snapshot"
                )
                if skipped is not None:
                    skipped.append(directory)
                continue
            subdirs: list[tuple[str, str]] = []
            for child in children:
                try:
                    cst = child.stat(follow_symlinks=False)
                except OSError as exc:
                    warnings.append(f"{child.path}: cannot stat ({exc.strerror}); not in the snapshot")
                    if skipped is not None:
                        skipped.append(child.path)
                    continue
                cname = prefix + child.name
                if excludes:
                    shown = given + child.path[len(src) :]  # as the user named it
                    relative = shown[len(given.rstrip("/")) + 1 :]  # of '/': the path without its '/'
                    if excludes.leaves_out(shown, relative, stat.S_ISDIR(cst.st_mode)):
                        continue
                yield child.path, cname, cst
                if stat.S_ISDIR(cst.st_mode):
                    subdirs.append((child.path, cname))
            stack.extend(reversed(subdirs))


def _meta(name: str, st: os.stat_result, kind: EntryType) -> TreeEntry:
    """A directory's or symlink's entry, its keys in the order of every tree so far."""
    return {
        "path": name,
        "mode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "mtime_ns": st.st_mtime_ns,
        "type": kind,
    }


class _Member:
    """One file's place in a group task: ``result()`` is its entry (``None``: not backed up)."""

    __slots__ = ("future", "index")

    def __init__(self, future: Future[list[TreeEntry | None]], index: int) -> None:
        self.future = future
        self.index = index

    def result(self) -> TreeEntry | None:
        return self.future.result()[self.index]


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
        #: read buffers shared by the big files this backup reads
        self.buffers = WindowBuffers(keep=self.threads)

    def _chunk_large(
        self, writer: BlobWriter, pool: ThreadPoolExecutor, path: str
    ) -> tuple[str, list[str], os.stat_result, int]:
        """Chunk and store a big file as it is read: (SHA-256 of the bytes read, chunk ids, its
        ``fstat`` at open, how many bytes were read)."""
        sha = hashlib.sha256()
        window: collections.deque[Future[bytes]] = collections.deque()  # chunk ids, oldest first
        ids: list[str] = []
        limit = self.threads * 2
        chunks = chunk_file(path, "auto", self.repo.config.chunker, self.buffers)
        try:
            for view in chunks:
                sha.update(view)
                window.append(pool.submit(writer.store, view))
                while len(window) >= limit:
                    ids.append(window.popleft().result().hex())
            while window:
                ids.append(window.popleft().result().hex())
        finally:
            for future in window:
                future.cancel()
            chunks.close()
        return sha.hexdigest(), ids, chunks.stat, chunks.bytes_yielded

    def _file(
        self, writer: BlobWriter, pool: ThreadPoolExecutor, path: str, size: int
    ) -> tuple[str, list[str], os.stat_result, int]:
        """Store one file: (SHA-256 of the bytes read, chunk ids, ``fstat`` at open, bytes read)."""
        if size > SMALL_FILE:
            return self._chunk_large(writer, pool, path)
        sha, views, opened, nread = self._read_small(path)
        return sha, [blob_id.hex() for blob_id in writer.store_many(views)], opened, nread

    def _read_small(self, path: str) -> tuple[str, list[memoryview], os.stat_result, int]:
        """A small file's SHA-256, its chunks (views of one buffer), its ``fstat`` at open and how
        many bytes were read.  It is read with one ``read()``, not mapped: no mmap/munmap and no
        page faults per file.  Same boundaries as ``chunk_file(path, "auto")``: the strategy its
        path gives, and a file that is not a relation file still sniffed for a safetensors header.
        At most :data:`SMALL_FILE` bytes are read (a file that grew past it since the walk is
        stored as its first bytes, and reported as changed)."""
        fd, opened = open_regular(path)
        with open(fd, "rb") as f:
            read_hook(path, 0)
            data = f.read(min(opened.st_size, SMALL_FILE))
        resolved = strategy_for(path)
        view = memoryview(data)
        ranges = chunk_buffer(view, "auto" if resolved == "cdc" else resolved, self.repo.config.chunker)
        chunks = [view[offset : offset + length] for offset, length in ranges]
        return hashlib.sha256(data).hexdigest(), chunks, opened, len(data)

    def _group_entries(
        self, writer: BlobWriter, items: list[tuple[str, TreeEntry]], report: Report
    ) -> list[TreeEntry | None]:
        """Back up a group of small files (neighbours in the walk) at once: each read with one
        ``read()`` and hashed, their chunks stored with one index query for the group
        (:meth:`BlobWriter.store_many`) instead of one per chunk (:meth:`_read_small`)."""
        blobs: list[memoryview] = []
        spans: list[tuple[int, int, str, os.stat_result, int] | None] = []
        for path, _entry in items:
            try:
                sha, views, opened, nread = self._read_small(path)
            except OSError as exc:
                report.unreadable(path, exc)
                spans.append(None)
                continue
            spans.append((len(blobs), len(blobs) + len(views), sha, opened, nread))
            blobs.extend(views)
        ids = [blob_id.hex() for blob_id in writer.store_many(blobs)] if blobs else []
        results: list[TreeEntry | None] = []
        for (path, entry), span in zip(items, spans, strict=True):
            if span is None:
                results.append(None)
                continue
            first, end, sha, opened, nread = span
            results.append(self._settle(path, entry, sha, ids[first:end], opened, nread, report))
        return results

    def _settle(
        self,
        path: str,
        entry: TreeEntry,
        sha: str,
        ids: list[str],
        opened: os.stat_result,
        nread: int,
        report: Report,
    ) -> TreeEntry:
        """Complete a file's entry with what was read (its size is the number of bytes read),
        and report the file when it changed between the walk and now (see :func:`_what_changed`):
        such an entry is marked ``"changed": true`` so that the next backup reads it again."""
        what = what_changed(path, entry, opened, nread)
        if opened.st_ino != entry["ino"]:  # another file took the name: what was read is that one
            entry.update({"mode": stat.S_IMODE(opened.st_mode), "uid": opened.st_uid, "gid": opened.st_gid,
                          "mtime_ns": opened.st_mtime_ns, "ino": opened.st_ino, "ctime_ns": opened.st_ctime_ns})  # fmt: skip
        entry["size"] = nread  # the keys in this order: size is there already, then these two
        entry["sha256"] = sha
        entry["chunks"] = ids
        if what is not None:
            entry["changed"] = True
            report.change(path, what, nread)
        self.progress.add(1, nread)
        return entry

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
        on_entry: Callable[[TreeEntry], None] | None = None,
        strict: bool = False,
        excludes: Excludes | None = None,
        complete: Callable[[list[TreeEntry]], Mapping[str, Any]] | None = None,
    ) -> BackupResult:
        """Back up ``sources`` into a new snapshot (see the module docstring).

        A source that is a symlink to a directory is backed up as that directory, under the
        source's own name (``result.notes`` says so); symlinks below the sources stay symlinks.
        Files that changed while they were read are stored as read and listed in
        ``result.changed_files``, files that could not be read in ``result.skipped_files``
        (``result.partial``: exit code 6 for the CLI).  With ``strict=True`` such a backup writes
        no snapshot and raises :class:`~coldkeep.errors.SourceChanged` naming the files (what was
        stored is indexed, so a retry reuses it; `repo prune` removes it otherwise).

        ``complete`` (a service's last word) is called with the final entries, every file's
        ``sha256`` known, just before the snapshot document is written: what it returns is added
        to the snapshot's ``meta``; an exception it raises writes no snapshot (as above, what was
        stored stays indexed for a retry).
        """
        started = time.monotonic()
        if not sources:
            raise UsageError("nothing to back up", hint="name at least one PATH")
        sources = [Path(os.path.abspath(s)) for s in sources]
        if base is not None:
            base = Path(os.path.abspath(base))
            for s in sources:
                if s != base and base not in s.parents:
                    raise UsageError(f"{s} is not under {base}")
        sources, nested = outermost(sources)
        paths = [str(s) for s in sources]
        read_from, notes = followed_sources(paths)
        notes = nested + notes
        base_str = str(base) if base is not None else None
        parent_snap = (
            self._find_parent(paths, tags or {})
            if parent == "auto"
            else (self.repo.find_snapshot(parent) if parent else None)
        )
        previous: dict[str, TreeEntry] = {}
        # every entry of the parent with its JSON line: an entry that comes out equal (same keys
        # in the same order, same values) is written with that line instead of encoding it again
        previous_lines: dict[str, tuple[TreeEntry, bytes | None]] = {}
        if parent_snap is not None:
            for entry, line in self.repo.iter_tree_lines(parent_snap):
                previous_lines[entry["path"]] = (entry, line)
                if entry.get("type") == "file":
                    previous[entry["path"]] = entry
        report = Report()
        warnings = report.warnings
        writer = self.repo.writer()
        entries: list[TreeEntry | Future[TreeEntry | None] | _Member] = []
        files = dirs = reused = 0
        file_pool = ThreadPoolExecutor(self.threads, thread_name_prefix="coldkeep-file")
        chunk_pool = ThreadPoolExecutor(self.threads, thread_name_prefix="coldkeep-chunk")
        # files the parent snapshot has with the same size, mtime and inode: reused once their
        # chunks are confirmed in the index, a batch of ids per query
        pending: list[tuple[int, str, TreeEntry, TreeEntry]] = []
        pending_chunks = 0
        # small files waiting to go to a worker as one group: (index in entries, path, entry)
        group: list[tuple[int, str, TreeEntry]] = []
        group_bytes = 0

        def flush_group() -> None:
            nonlocal group_bytes
            if not group:
                return
            future = file_pool.submit(self._group_entries, writer, [(p, e) for _, p, e in group], report)
            for k, (index, _, _) in enumerate(group):
                entries[index] = _Member(future, k)
            group.clear()
            group_bytes = 0

        def settle_pending() -> None:
            nonlocal reused, pending_chunks
            if not pending:
                return
            wanted = {c for _, _, _, old in pending for c in old["chunks"]}
            present = {i.hex() for i in self.repo.cache.present(bytes.fromhex(c) for c in wanted)}
            done_files = done_bytes = 0
            for index, path, entry, old in pending:
                chunk_ids = old["chunks"]
                if present.issuperset(chunk_ids):
                    entry["sha256"] = old["sha256"]
                    entry["chunks"] = chunk_ids
                    done_files += 1
                    done_bytes += entry["size"]
                else:  # the parent references data the index lacks: read the file again
                    entries[index] = file_pool.submit(
                        self._file_entry, writer, chunk_pool, path, entry, report
                    )
            reused += done_files
            self.progress.add(done_files, done_bytes)
            pending.clear()
            pending_chunks = 0

        try:
            for path, name, st in walk(
                paths, base_str, warnings, read_from=read_from, skipped=report.skipped, excludes=excludes
            ):
                mode = st.st_mode
                if stat.S_ISREG(mode):
                    # the keys in the order of _meta + update: an unchanged tree serialises to
                    # the same tree blobs as before
                    size = st.st_size
                    entry = {"path": name, "mode": stat.S_IMODE(mode), "uid": st.st_uid, "gid": st.st_gid,
                             "mtime_ns": st.st_mtime_ns, "type": "file", "size": size, "ino": st.st_ino,
                             "ctime_ns": st.st_ctime_ns}  # fmt: skip
                    if st.st_blocks * 512 < size:  # holes (or compressed/inline data): restore keeps holes
                        entry["sparse"] = True
                    if st.st_nlink > 1:  # names of one inode restore as hard links to the first
                        entry["hardlink"] = f"{st.st_dev}:{st.st_ino}"
                    files += 1
                    old = previous.get(name)
                    if (
                        old is not None
                        and not old.get("changed")
                        and old.get("size") == size
                        and old.get("mtime_ns") == entry["mtime_ns"]
                        and old.get("ino") == entry["ino"]
                    ):
                        pending.append((len(entries), path, entry, old))
                        entries.append(entry)
                        pending_chunks += len(old["chunks"])
                        if pending_chunks >= REUSE_BATCH:
                            settle_pending()
                    elif size <= GROUP_FILE:
                        group.append((len(entries), path, entry))
                        entries.append(entry)  # replaced by its group member when the group goes
                        group_bytes += size
                        if len(group) >= GROUP_FILES or group_bytes >= GROUP_BYTES:
                            flush_group()
                    else:
                        entries.append(
                            file_pool.submit(self._file_entry, writer, chunk_pool, path, entry, report)
                        )
                    continue
                if stat.S_ISDIR(st.st_mode):
                    dirs += 1
                    entries.append(_meta(name, st, "dir"))
                elif stat.S_ISLNK(st.st_mode):
                    entry = _meta(name, st, "symlink")
                    try:
                        entry["target"] = os.readlink(path)
                    except OSError as exc:
                        report.unreadable(path, exc)
                        continue
                    entries.append(entry)
                else:
                    warnings.append(f"{path}: skipped (not a regular file, directory or symlink)")
            settle_pending()
            flush_group()
            final: list[TreeEntry] = []
            lines: list[bytes | None] = []
            for item in entries:
                resolved = item.result() if isinstance(item, (Future, _Member)) else item
                if resolved is not None:
                    final.append(resolved)
                    before = previous_lines.get(resolved["path"])
                    lines.append(
                        before[1]
                        if before is not None and before[0] == resolved and list(before[0]) == list(resolved)
                        else None
                    )
                    if on_entry is not None:
                        on_entry(resolved)
            refused = strict and bool(report.changed or report.skipped)
            # refused: no tree, no snapshot; what was stored is indexed, for a retry to reuse
            tree_ids = [] if refused else self.repo.write_tree(writer, final, lines)
            writer.finish()
        except BaseException:
            writer.abort()
            raise
        finally:
            file_pool.shutdown(wait=True, cancel_futures=True)
            chunk_pool.shutdown(wait=True, cancel_futures=True)
        if refused:
            raise refusal(report)
        files = sum(1 for e in final if e["type"] == "file")
        logical = sum(int(e["size"]) for e in final if e["type"] == "file")  # the bytes stored
        duration = round(time.monotonic() - started, 3)
        meta = {**(meta or {}), **(complete(final) if complete is not None else {})}
        snap = Snapshot(
            id="",
            time=clock.isoformat(clock.now()),
            host=os.uname().nodename,
            paths=paths,
            tags=dict(tags or {}),
            label=label,
            meta=dict(meta, **({"excludes": excludes.to_json()} if excludes else {})),
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
                "changed_files": len(report.changed),
                "skipped_files": len(report.skipped),
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
            changed_files=report.changed,
            skipped_files=report.skipped,
            notes=notes,
        )

    def _file_entry(
        self,
        writer: BlobWriter,
        pool: ThreadPoolExecutor,
        path: str,
        entry: TreeEntry,
        report: Report,
    ) -> TreeEntry | None:
        try:
            sha, ids, opened, nread = self._file(writer, pool, path, int(entry["size"]))
        except OSError as exc:
            report.unreadable(path, exc)
            return None
        return self._settle(path, entry, sha, ids, opened, nread, report)

    def _find_parent(self, paths: list[str], tags: dict[str, str]) -> Snapshot | None:
        host = os.uname().nodename
        candidates = [
            s for s in self.repo.list_snapshots() if s.paths == paths and s.host == host and s.tags == tags
        ]
        return candidates[-1] if candidates else None
