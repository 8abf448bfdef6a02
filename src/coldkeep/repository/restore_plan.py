"""Restore's plan: which entries go where, checked before anything is written, and in what order
the workers take them.

* Names: every entry's name is checked (:func:`safe_relpath`: no absolute path, ``..`` or NUL)
  before the first byte is written, and every directory on the way is checked once to be a real
  directory, not a symlink (:class:`TargetDirs`).
* Hard links: the second and later names of a file recorded with the same content are linked to
  the first rather than restored again (:func:`hard_links`).
* Order (:func:`plan_tasks`): files of several chunks first, biggest first, one task each; then
  small files in groups of tree neighbours, dealt out from far-apart parts of the tree.
* Reads: a file's chunks grouped into runs one request reads
  (:func:`~coldkeep.repository.reads.plan_runs`), and the one-chunk files of a group likewise
  (:func:`small_runs`).

Writing the plan out is :mod:`coldkeep.repository.restore`.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from coldkeep.errors import IntegrityError, UsageError
from coldkeep.repository.packer import BlobEntry
from coldkeep.repository.reads import RUN_BYTES
from coldkeep.repository.restore_select import Landing, Selection
from coldkeep.repository.tree import TreeEntry

#: a file to restore: (absolute destination, its tree entry)
Item = tuple[str, TreeEntry]


def safe_relpath(name: str) -> PurePosixPath:
    """``name`` as a path relative to the target; refuses absolute paths, ``..`` and NUL bytes."""
    rel = PurePosixPath(name)
    if rel.is_absolute() or any(part in ("..", "") for part in rel.parts) or not rel.parts or "\0" in name:
        raise UsageError(f"refusing to restore {name!r}: it would land outside the target directory")
    return rel


def matches(name: str, includes: Sequence[str]) -> bool:
    if not includes:
        return True
    for pattern in includes:
        pat = pattern.lstrip("/")
        if fnmatch.fnmatchcase(name, pat) or name.startswith(pat.rstrip("/") + "/"):
            return True
    return False


class TargetDirs:
    """Directories of the target, each checked once to be a real directory (not a symlink).

    Names are validated by :func:`safe_relpath` (no absolute path, no ``..``); what is left to
    refuse is a path whose directory is a symlink (say, one already in a non-empty target), so
    every directory on the way is ``lstat``-ed, or created, once, and remembered.  That replaces a
    ``realpath`` per file.  Symlinks of the snapshot are created after every file, and re-checked
    without the memory (:meth:`check_fresh`).
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self._ok: set[str] = {""}

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else self.root

    def ensure(self, rel: str, mode: int = 0o777) -> str:
        """The absolute path of directory ``rel`` (``""`` is the target), created if missing."""
        if rel in self._ok:
            return self.path(rel)
        parts = rel.split("/")
        known = len(parts) - 1  # the deepest directory on the way already checked
        while known > 0 and "/".join(parts[:known]) not in self._ok:
            known -= 1
        for depth in range(known + 1, len(parts) + 1):
            sub = "/".join(parts[:depth])
            path = self.path(sub)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(path, mode if depth == len(parts) else 0o777)
                st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode):
                raise UsageError(
                    f"refusing to restore into {path}: it is not a directory (a symlink would lead outside the target)"
                )
            self._ok.add(sub)
        return self.path(rel)

    def check_fresh(self, rel: str) -> None:
        """Every existing directory on the way to ``rel`` is a real directory, checked now."""
        parts = rel.split("/") if rel else []
        for i in range(1, len(parts) + 1):
            path = self.path("/".join(parts[:i]))
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                return
            if not stat.S_ISDIR(st.st_mode):
                raise UsageError(f"refusing to restore {self.path(rel)}: {path} is not a directory")


@dataclass
class Plan:
    """The entries to restore, by type, each with its checked name relative to the target."""

    dirs: list[tuple[str, TreeEntry]] = field(default_factory=list)
    files: list[tuple[str, TreeEntry]] = field(default_factory=list)
    links: list[tuple[str, TreeEntry]] = field(default_factory=list)
    #: files and symlinks selected but not landing anywhere (``strip_components`` took their name)
    dropped: int = 0

    def refuse_if_nothing_lands(self, snapshot: str, selection: Selection | None) -> None:
        """:class:`UsageError` when files were selected but every one's name was stripped away
        (``--strip-components`` too deep): a restore of nothing is not a success."""
        if self.dropped and not (self.files or self.links):
            strip = selection.strip_components if selection else 0
            raise UsageError(
                f"nothing in snapshot {snapshot} would be restored: --strip-components {strip} "
                f"takes the whole name of all {self.dropped} files",
                hint="give fewer --strip-components (`coldkeep restore --help`)",
            )

    def names(self) -> Iterable[str]:
        for group in (self.dirs, self.files, self.links):
            for rel, _ in group:
                yield rel


def plan(
    entries: Iterable[TreeEntry], includes: Sequence[str] = (), selection: Selection | None = None
) -> Plan:
    """The entries matching ``includes`` (all without) or the :class:`Selection`, under the names
    they land on, sorted by type; every name is checked (:func:`safe_relpath`,
    :class:`~coldkeep.errors.UsageError`) before anything is written."""
    out = Plan()
    landing = Landing()
    # directories left out by the patterns, until something below them is selected: then they are
    # restored too (their mode and times), as the directories that hold what was asked for
    passed: dict[str, TreeEntry] = {}

    def add(name: str, landed: str, entry: TreeEntry) -> None:
        kind = entry.get("type")
        rel = str(safe_relpath(landed))
        if not landing.add(rel, name, kind == "dir"):
            return  # the same stored name listed again (nested backed-up paths): restored once
        if kind == "dir":
            out.dirs.append((rel, entry))
        elif kind == "file":
            out.files.append((rel, entry))
        elif kind == "symlink":
            out.links.append((rel, entry))

    def add_parents(name: str) -> None:
        parents = []
        parent = name.rpartition("/")[0]
        while parent in passed:
            parents.append(parent)
            parent = parent.rpartition("/")[0]
        for parent in reversed(parents):
            entry = passed.pop(parent)
            landed = parent if selection is None else selection.land(parent, True)
            if landed is not None:
                add(parent, landed, entry)

    selecting = bool(includes) or selection is not None
    for entry in entries:
        name = entry["path"]
        kind = entry.get("type")
        if selection is None:
            if not matches(name, includes):
                if kind == "dir" and selecting:
                    passed[name] = entry
                continue
            landed: str | None = name
        else:
            if not selection.selected(name):
                if kind == "dir":
                    passed[name] = entry
                continue
            landed = selection.land(name, kind == "dir")
        if landed is None:
            if kind != "dir":
                out.dropped += 1
            continue
        if passed:
            add_parents(name)
        add(name, landed, entry)
    return out


def plan_tasks(file_dests: list[Item], threads: int, group_files: int, group_bytes: int) -> list[list[Item]]:
    """The files as worker tasks, in the order they are started.

    Files of several chunks first, one task each, the biggest first: the last file to start
    must not be a long one (a 1 GiB relation file started last made the whole restore wait
    for it alone).  Then small files (one chunk) a group of tree neighbours at a time (one
    task per group, not per file; at most ``group_files`` files and about ``group_bytes``
    bytes), the groups dealt out from ``threads`` far-apart parts of the tree in turn, so that
    the workers create their files in different directories: a file's creation holds its
    directory's lock, and two threads creating files in one directory spun on it for a fifth of
    a 10,000-file restore's CPU (``perf``: ``rwsem_spin_on_owner``)."""
    multi = sorted(
        (item for item in file_dests if len(item[1].get("chunks", ())) > 1),
        key=lambda item: -int(item[1].get("size", 0)),
    )
    tasks: list[list[Item]] = [[item] for item in multi]
    groups: list[list[Item]] = []
    group: list[Item] = []
    size = 0
    for item in file_dests:
        if len(item[1].get("chunks", ())) > 1:
            continue
        group.append(item)
        size += int(item[1].get("size", 0))
        if len(group) >= group_files or size >= group_bytes:
            groups.append(group)
            group, size = [], 0
    if group:
        groups.append(group)
    parts = max(1, min(threads, len(groups)))
    bounds = [len(groups) * k // parts for k in range(parts + 1)]
    streams = [groups[bounds[k] : bounds[k + 1]] for k in range(parts)]
    for turn in range(max((len(st) for st in streams), default=0)):
        tasks.extend(st[turn] for st in streams if turn < len(st))
    return tasks


def small_runs(
    items: Sequence[Item], located: dict[bytes, BlobEntry]
) -> list[list[tuple[int, bytes, BlobEntry]]]:
    """The chunks of one-chunk files (index into ``items``, id, location), grouped into runs
    that one request reads: same pack, in pack order, the covering range at most
    :data:`~coldkeep.repository.reads.RUN_BYTES` and mostly theirs (a backup packs neighbouring
    files together)."""
    chunks: list[tuple[int, bytes, BlobEntry]] = []
    for i, (_, entry) in enumerate(items):
        for hex_id in entry.get("chunks", ()):
            blob_id = bytes.fromhex(hex_id)
            loc = located.get(blob_id)
            if loc is None:
                raise IntegrityError(f"{entry['path']}: blob {hex_id[:16]} is not in the index")
            chunks.append((i, blob_id, loc))
    chunks.sort(key=lambda c: (c[2].pack, c[2].offset))
    runs: list[list[tuple[int, bytes, BlobEntry]]] = []
    run: list[tuple[int, bytes, BlobEntry]] = []
    lo = used = 0
    for chunk in chunks:
        loc = chunk[2]
        if run:
            span = max(loc.offset + loc.length, run[-1][2].offset + run[-1][2].length) - lo
            if loc.pack == run[0][2].pack and span <= RUN_BYTES and 4 * (used + loc.length) >= 3 * span:
                run.append(chunk)
                used += loc.length
                continue
            runs.append(run)
        run, lo, used = [chunk], loc.offset, loc.length
    if run:
        runs.append(run)
    return runs


def same_file(a: TreeEntry, b: TreeEntry) -> bool:
    """Two tree entries of one inode that recorded the same content and metadata (a file changed
    between the backup's reads of its names is not: each name restores its own bytes)."""
    keys = ("size", "sha256", "chunks", "mode", "uid", "gid", "mtime_ns")
    return all(a.get(k) == b.get(k) for k in keys)


def hard_links(file_dests: list[Item]) -> tuple[dict[str, Item], set[int]]:
    """The hard links among the files to restore: ``(first, later)``, where ``first`` maps each
    link key (``hardlink`` of the tree entry, see backup) with more than one name to its first
    name's item, and ``later`` holds the ``id()`` of every other item with that key and the same
    recorded content; those are made links to the first name rather than restored from chunks."""
    first: dict[str, Item] = {}
    later: set[int] = set()
    for item in file_dests:
        key = item[1].get("hardlink")
        if not isinstance(key, str) or not key:
            continue
        leader = first.setdefault(key, item)
        if leader is not item and same_file(leader[1], item[1]):
            later.add(id(item))
    return first, later


# ------------------------------------------------------------------------------------------------
# what a restore reports


class TargetError(str):
    """An error message about the restore *target*, not the repository's data: the system refused
    a write (no space, read-only, permission, file-size limit, a name too long, a file where a
    directory goes) or the restore refused a path there.  The data verified (or was never read);
    the restore can be run again once the target is fixed."""

    __slots__ = ()


def _target_error(entry: TreeEntry, exc: OSError | UsageError) -> TargetError:
    if isinstance(exc, UsageError):
        return TargetError(exc.message)
    return TargetError(f"{entry['path']}: {exc.strerror or exc}")


@dataclass
class RestoreResult:
    snapshot_id: str
    target: str
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    duration_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    #: what was restored, but not as the snapshot has it (a hard link restored as a copy)
    warnings: list[str] = field(default_factory=list)

    @property
    def damage(self) -> list[str]:
        """The errors that are about the data (it did not verify), not about the target."""
        return [e for e in self.errors if not isinstance(e, TargetError)]

    def to_json(self) -> dict[str, Any]:
        return {
            "snapshot_id": self.snapshot_id,
            "target": self.target,
            "files": self.files,
            "dirs": self.dirs,
            "symlinks": self.symlinks,
            "bytes": self.bytes,
            "duration_s": self.duration_s,
            "errors": self.errors,
            "target_errors": [e for e in self.errors if isinstance(e, TargetError)],
            "warnings": self.warnings,
        }
