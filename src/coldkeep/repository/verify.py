"""``verify_snapshot``: prove a snapshot's stored bytes, and optionally that a live tree is the same.

What a service asks before it removes a hot copy (a checkpoint archived, a dataset version):

* every file of the snapshot is read back from the repository, every chunk checked against its id
  (:mod:`~coldkeep.repository.reads`), and the SHA-256 of the bytes read compared with the one
  the tree records, as is their count with the recorded size;
* with ``against=DIR``, the live tree there is compared with the snapshot: every file's size and
  SHA-256 (read from disk), every symlink's target, every directory's presence, and every file or
  symlink on disk that the snapshot lacks.

Every problem is named (all of them, not the first): ``damaged`` (the stored copy fails),
``missing`` (in the snapshot, not on disk), ``different`` (on disk, not the same), ``extra`` (on
disk, not in the snapshot).  Special files on disk (fifos, sockets, devices) are ignored: a backup
never stores them.

``against`` is the directory the snapshot's names are relative to: the ``base`` of the backup (a
service snapshots a checkpoint or a dataset with ``base`` = its directory).  Extra files are
looked for in all of it, except for a snapshot whose top-level entries are its sources themselves
(made without a base, or with a base above its sources): then only inside those sources.

Each stored byte is hashed once: the chunks of a file are opened (envelope, decompression,
length) without checking each against its id, and the file's SHA-256 proves them all; only a
file whose SHA-256 fails is read again with every chunk checked, to name the damaged blob.

``hashed`` (:class:`HotDigests`) is what the backup that made the snapshot read moments ago: for
a live file whose ``lstat`` (size, mtime, ctime, inode) is still the one the backup walked, the
SHA-256 of the bytes that backup read *is* the live file's, and the file is not read again.  A file
changed since (any write moves its ctime, which no one can set back) or changed within
:data:`RACY_NS` before the backup started (a timestamp tick may hide a later write) is read and
hashed as without ``hashed``.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from coldkeep.errors import ColdkeepError, IntegrityError
from coldkeep.repository.locks import locked
from coldkeep.repository.reads import Run, plan_runs, read_blob_run
from coldkeep.repository.tree import TreeEntry

if TYPE_CHECKING:
    from coldkeep.repository.repository import Repository
    from coldkeep.repository.snapshot import Snapshot

#: live files are hashed this many bytes at a time
READ_PIECE = 1024 * 1024
#: a file whose ctime is less than this before the backup started is read again by the
#: verification even when its ``lstat`` is unchanged (file timestamps advance in ticks: a write in
#: the tick of the backup's ``lstat`` could leave them unchanged)
RACY_NS = 2_000_000_000

DAMAGED = "damaged"
MISSING = "missing"
DIFFERENT = "different"
EXTRA = "extra"


@dataclass
class VerifyProblem:
    """One thing wrong with one path (its name in the snapshot)."""

    path: str
    kind: str
    detail: str

    def line(self) -> str:
        return f"{self.kind}: {self.path}: {self.detail}"

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "kind": self.kind, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class HotFile:
    """One live file as a backup walked it (``lstat``) and the SHA-256 of the bytes it read."""

    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    sha256: str

    def same(self, st: os.stat_result) -> bool:
        """Whether ``st`` is still the file the backup walked."""
        return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) == (
            self.size,
            self.mtime_ns,
            self.ctime_ns,
            self.ino,
        )


@dataclass
class HotDigests:
    """What a backup read from a live tree, by name in its snapshot (see the module docstring).

    Made with :meth:`started` before the backup, filled by :meth:`add` (the backup's
    ``on_entry``) as its entries are settled."""

    started_ns: int
    files: dict[str, HotFile] = field(default_factory=dict)

    @classmethod
    def started(cls) -> HotDigests:
        return cls(started_ns=time.time_ns())

    def add(self, entry: TreeEntry) -> None:
        """Record a backed-up file's entry (others, and files stored although they changed, are
        ignored)."""
        if entry.get("type") != "file" or entry.get("changed") or "sha256" not in entry:
            return
        try:
            self.files[entry["path"]] = HotFile(
                int(entry["size"]), int(entry["mtime_ns"]), int(entry["ctime_ns"]), int(entry["ino"]),
                str(entry["sha256"]),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError):
            return

    def for_file(self, name: str, st: os.stat_result) -> HotFile | None:
        """The record of ``name`` when it still describes the live file ``st`` and is not racy."""
        known = self.files.get(name)
        if known is None or not known.same(st) or known.ctime_ns > self.started_ns - RACY_NS:
            return None
        return known


@dataclass
class SnapshotVerification:
    """What :func:`verify_snapshot` found: ``ok`` when there is no problem at all."""

    snapshot_id: str
    against: str | None = None
    #: files whose stored bytes were read, and how many bytes that was
    files: int = 0
    bytes: int = 0
    #: live files compared (with ``against``), and how many of them were read and hashed (the
    #: others: known from the backup that just read them, see :class:`HotDigests`)
    live_files: int = 0
    live_read: int = 0
    problems: list[VerifyProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def paths(self, kind: str | None = None) -> list[str]:
        """The names with a problem (of ``kind``), sorted, each once."""
        return sorted({p.path for p in self.problems if kind is None or p.kind == kind})

    def to_json(self) -> dict[str, Any]:
        return {
            "snapshot_id": self.snapshot_id,
            "against": self.against,
            "ok": self.ok,
            "files": self.files,
            "bytes": self.bytes,
            "live_files": self.live_files,
            "live_read": self.live_read,
            "problems": [p.to_json() for p in self.problems],
        }


def verify_snapshot(
    repo: Repository,
    snap: Snapshot,
    against: str | os.PathLike[str] | None = None,
    *,
    threads: int | None = None,
    hashed: HotDigests | None = None,
) -> SnapshotVerification:
    """Verify ``snap`` (see the module docstring) under a shared repository lock, reading files
    on ``threads`` worker threads (default: one per core, at least two).  ``hashed``: what the
    backup that made ``snap`` from ``against`` read (live files it still describes are not read
    again).  Returns the result; raises only for what stops it altogether (a lost lock, a lock
    held by a prune)."""
    root = os.path.abspath(against) if against is not None else None
    result = SnapshotVerification(snapshot_id=snap.id, against=root)
    with locked(repo.backend, "verify", exclusive=False):
        try:
            entries = list(repo.iter_tree(snap))
        except ColdkeepError as exc:
            result.problems.append(VerifyProblem("<tree>", DAMAGED, f"tree unreadable: {exc.message}"))
            return result
        files = [e for e in entries if e.get("type") == "file"]
        workers = threads or max(2, os.cpu_count() or 2)
        with ThreadPoolExecutor(workers, thread_name_prefix="coldkeep-verify") as pool:
            for nbytes, problems, read in pool.map(lambda e: _check_file(repo, e, root, hashed), files):
                result.files += 1
                result.bytes += nbytes
                result.live_read += read
                result.problems.extend(problems)
        if root is not None:
            result.live_files = len(files)
            for entry in entries:
                if entry.get("type") != "file":
                    problem = _compare_other(entry, root)
                    if problem is not None:
                        result.problems.append(problem)
            result.problems.extend(_extra(snap, entries, root))
    return result


def _check_file(
    repo: Repository, entry: TreeEntry, root: str | None, hashed: HotDigests | None
) -> tuple[int, list[VerifyProblem], int]:
    """The stored bytes of one file (and, with ``root``, its live copy): (bytes read, problems,
    1 if the live file was read)."""
    problems: list[VerifyProblem] = []
    nbytes, problem = _check_stored(repo, entry)
    if problem is not None:
        problems.append(problem)
    read = 0
    if root is not None:
        problem, read = _compare_file(entry, root, hashed)
        if problem is not None:
            problems.append(problem)
    return nbytes, problems, read


def _read_runs(repo: Repository, runs: list[Run], check_ids: bool) -> tuple[int, str]:
    """(bytes, SHA-256) of the content of ``runs``; :class:`IntegrityError` for a blob that does
    not open (or, with ``check_ids``, does not match its id)."""
    sha = hashlib.sha256()
    done = 0
    for run in runs:
        for data in read_blob_run(repo, run, check_ids):
            sha.update(data)
            done += len(data)
    return done, sha.hexdigest()


def _check_stored(repo: Repository, entry: TreeEntry) -> tuple[int, VerifyProblem | None]:
    name = entry["path"]
    done = 0
    try:
        chunks = entry.get("chunks", [])
        located = repo.cache.get_many(bytes.fromhex(c) for c in chunks)
        runs = plan_runs(chunks, located)
        done, digest = _read_runs(repo, runs, check_ids=False)
        if digest != entry.get("sha256"):  # read again, every chunk against its id: name the blob
            done, digest = _read_runs(repo, runs, check_ids=True)
    except IntegrityError as exc:
        return done, VerifyProblem(name, DAMAGED, exc.message)
    except ValueError as exc:  # a chunk id that is not hex: the tree entry itself is bad
        return done, VerifyProblem(name, DAMAGED, f"malformed tree entry ({exc})")
    if done != entry.get("size"):
        return done, VerifyProblem(
            name, DAMAGED, f"{done} bytes stored, the snapshot says {entry.get('size')}"
        )
    if digest != entry.get("sha256"):
        return done, VerifyProblem(
            name,
            DAMAGED,
            f"SHA-256 of the stored bytes is {digest}, the snapshot says {entry.get('sha256')}",
        )
    return done, None


def _live(root: str, entry: TreeEntry) -> tuple[str, os.stat_result | None]:
    path = os.path.join(root, entry["path"])
    try:
        return path, os.lstat(path)
    except FileNotFoundError:
        return path, None


def _what(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISREG(mode):
        return "a file"
    return "a special file"


def _compare_file(entry: TreeEntry, root: str, hashed: HotDigests | None) -> tuple[VerifyProblem | None, int]:
    """The live copy of a file against its entry: (the problem, 1 if the file was read)."""
    name = entry["path"]
    try:
        path, st = _live(root, entry)
        if st is None:
            return VerifyProblem(name, MISSING, "in the snapshot, not on disk"), 0
        if not stat.S_ISREG(st.st_mode):
            return VerifyProblem(name, DIFFERENT, f"{_what(st.st_mode)} on disk, a file in the snapshot"), 0
        if st.st_size != entry.get("size"):
            return VerifyProblem(
                name, DIFFERENT, f"{st.st_size} bytes on disk, {entry.get('size')} in the snapshot"
            ), 0
        known = hashed.for_file(name, st) if hashed is not None else None
        if known is not None:
            digest, read = known.sha256, 0
        else:
            sha = hashlib.sha256()
            with open(path, "rb") as f:
                while piece := f.read(READ_PIECE):
                    sha.update(piece)
            digest, read = sha.hexdigest(), 1
    except OSError as exc:
        return VerifyProblem(name, DIFFERENT, f"cannot read it on disk ({exc.strerror or exc})"), 1
    if digest != entry.get("sha256"):
        return VerifyProblem(
            name, DIFFERENT, f"SHA-256 on disk is {digest}, the snapshot says {entry.get('sha256')}"
        ), read
    return None, read


def _compare_other(entry: TreeEntry, root: str) -> VerifyProblem | None:
    """A directory or symlink of the snapshot against the live tree."""
    name, kind = entry["path"], entry.get("type")
    try:
        path, st = _live(root, entry)
        if st is None:
            return VerifyProblem(name, MISSING, "in the snapshot, not on disk")
        if kind == "dir" and not stat.S_ISDIR(st.st_mode):
            return VerifyProblem(name, DIFFERENT, f"{_what(st.st_mode)} on disk, a directory in the snapshot")
        if kind == "symlink":
            if not stat.S_ISLNK(st.st_mode):
                return VerifyProblem(
                    name, DIFFERENT, f"{_what(st.st_mode)} on disk, a symlink in the snapshot"
                )
            target = os.readlink(path)
            if target != entry.get("target"):
                return VerifyProblem(
                    name,
                    DIFFERENT,
                    f"points to {target!r} on disk, to {entry.get('target')!r} in the snapshot",
                )
    except OSError as exc:
        return VerifyProblem(name, DIFFERENT, f"cannot read it on disk ({exc.strerror or exc})")
    return None


def _scan_roots(snap: Snapshot, entries: list[TreeEntry]) -> list[str]:
    """Where extra files are looked for, as names relative to ``against`` (``""``: all of it):
    see the module docstring."""
    names = {e["path"] for e in entries}
    tops = [e for e in entries if e["path"].rpartition("/")[0] not in names]
    sources = ["/" + p.strip("/") for p in snap.paths]
    sourced = bool(tops) and all(
        any(src == "/" + e["path"] or src.endswith("/" + e["path"]) for src in sources) for e in tops
    )
    if not sourced:
        return [""]
    return [e["path"] for e in tops if e.get("type") == "dir"]


def _extra(snap: Snapshot, entries: list[TreeEntry], root: str) -> list[VerifyProblem]:
    """Files and symlinks on disk under the scanned roots that the snapshot does not have."""
    names = {e["path"] for e in entries}
    problems: list[VerifyProblem] = []
    for top in _scan_roots(snap, entries):
        start = os.path.join(root, top) if top else root
        stack = [(start, top)]
        while stack:
            directory, rel = stack.pop()
            try:
                with os.scandir(directory) as it:
                    children = sorted(it, key=lambda d: d.name)
            except OSError as exc:
                problems.append(
                    VerifyProblem(rel or ".", DIFFERENT, f"cannot list it on disk ({exc.strerror or exc})")
                )
                continue
            for child in children:
                name = f"{rel}/{child.name}" if rel else child.name
                if child.is_dir(follow_symlinks=False):
                    stack.append((child.path, name))
                elif name not in names and (child.is_file(follow_symlinks=False) or child.is_symlink()):
                    what = "symlink" if child.is_symlink() else "file"
                    problems.append(
                        VerifyProblem(name, EXTRA, f"a {what} on disk that the snapshot does not have")
                    )
    problems.sort(key=lambda p: p.path)
    return problems
