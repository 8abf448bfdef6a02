"""``datasets snapshot`` and ``datasets status``: record a version, compare a live tree with one.

**Snapshot** (:func:`snapshot_dataset`): a strict, deduplicated backup of the dataset root (a
file that changes while it is read fails the snapshot, :class:`~coldkeep.errors.SourceChanged`),
its parent the newest version, so unchanged files cost a ``stat`` each.  The manifest is built
from the entries the backup read (every file's SHA-256 as stored) and written into the snapshot
document, the last object a snapshot writes: killed at any point, no version is half-recorded and
a rerun reuses what was stored.  Before anything is read, the live tree is compared with the
version of that name by stat data (:func:`scan`); an unchanged tree returns the existing version
at once.  After the read, the content hash decides: the same content under the same name is a
no-op returning the existing version, another content is refused
(:class:`~coldkeep.datasets.versions.VersionConflict`, both hashes named).  ``if_changed``: a tree
whose content is already recorded under any name returns that version instead of a new one.

**Status** (:func:`scan`): the live tree against a version like ``git status``: a file whose size
and modification time equal the recorded ones is unchanged without being read; one whose size
differs is changed without being read; only a file with the same size and another time is hashed.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coldkeep import clock
from coldkeep.datasets.manifest import Diff, build_manifest, check_version, content_hash, diff
from coldkeep.datasets.versions import KIND, VERSION_TAG, DatasetVersion, VersionConflict, versions
from coldkeep.errors import UsageError
from coldkeep.repository.backup import Backup, BackupResult, walk
from coldkeep.repository.locks import locked
from coldkeep.repository.progress import Progress
from coldkeep.repository.repository import Repository
from coldkeep.repository.tree import TreeEntry

#: live files are hashed this many bytes at a time
READ_PIECE = 1024 * 1024
#: the stand-in SHA-256 of a live file whose size differs (never equal to a real one)
SIZE_DIFFERS = "size differs"


def dataset_root(root: str | os.PathLike[str]) -> str:
    """``root`` as an absolute path, or :class:`UsageError` when it is not a directory."""
    path = os.path.abspath(root)
    if not os.path.isdir(path):
        raise UsageError(
            f"dataset root {path} is not a directory",
            hint="pass --root DIR or set [datasets].root",
        )
    return path


def _hash(path: str) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(READ_PIECE):
            sha.update(piece)
    return sha.hexdigest()


@dataclass
class Scan:
    """A live tree compared with a version (:func:`scan`)."""

    version: str
    root: str
    diff: Diff
    #: the live tree's content hash, when every file's SHA-256 is known (else ``None``)
    content_sha256: str | None
    #: files judged by their stat data alone / files that had to be read
    by_stat: int = 0
    hashed: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return self.diff.clean and self.content_sha256 is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "root": self.root,
            "clean": self.clean,
            "content_sha256": self.content_sha256,
            "judged_by_stat": self.by_stat,
            "hashed": self.hashed,
            **self.diff.to_json(),
            "warnings": self.warnings,
        }


def _comparable(entries: Sequence[TreeEntry]) -> dict[str, TreeEntry]:
    """Files and symlinks by path, a symlink compared by its target."""
    out: dict[str, TreeEntry] = {}
    for e in entries:
        if e.get("type") == "file":
            out[e["path"]] = e
        elif e.get("type") == "symlink":
            out[e["path"]] = {
                "path": e["path"],
                "type": "symlink",
                "size": 0,
                "sha256": f"-> {e.get('target')}",
            }
    return out


def scan(version: DatasetVersion, entries: Sequence[TreeEntry], root: str, *, threads: int = 0) -> Scan:
    """The live tree at ``root`` against ``version`` (its tree ``entries``): see the module
    docstring.  Added files are not read (their size is enough)."""
    recorded = _comparable(entries)
    warnings: list[str] = []
    live: list[TreeEntry] = []
    to_hash: list[tuple[TreeEntry, str]] = []
    by_stat = 0
    known = True
    for path, name, st in walk([root], root, warnings):
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            live.append({"path": name, "type": "dir"})
        elif stat.S_ISLNK(mode):
            try:
                live.append({"path": name, "type": "symlink", "target": os.readlink(path)})
            except OSError as exc:  # gone since the walk saw it
                warnings.append(f"{path}: cannot read the link ({exc.strerror or exc})")
                known = False
        elif stat.S_ISREG(mode):
            entry: TreeEntry = {"path": name, "type": "file", "size": st.st_size}
            old = recorded.get(name)
            if old is None:
                entry["sha256"] = ""
                known = False
            elif old.get("size") != st.st_size:
                entry["sha256"] = SIZE_DIFFERS
                known = False
            elif old.get("mtime_ns") == st.st_mtime_ns and not old.get("changed"):
                entry["sha256"] = old.get("sha256", "")
                by_stat += 1
            else:
                to_hash.append((entry, path))
            live.append(entry)
    with ThreadPoolExecutor(threads or max(2, os.cpu_count() or 2)) as pool:
        for (entry, _path), digest in zip(
            to_hash, pool.map(lambda item: _try_hash(item[1], warnings), to_hash), strict=True
        ):
            entry["sha256"] = digest or "unreadable"
            known = known and bool(digest)
    result = Scan(
        version=version.name,
        root=root,
        diff=diff(recorded, _comparable(live)),
        content_sha256=content_hash(live) if known else None,
        by_stat=by_stat,
        hashed=len(to_hash),
        warnings=warnings,
    )
    return result


def _try_hash(path: str, warnings: list[str]) -> str:
    try:
        return _hash(path)
    except OSError as exc:
        warnings.append(f"{path}: cannot read ({exc.strerror or exc})")
        return ""


@dataclass
class SnapshotOutcome:
    """What ``datasets snapshot`` did: ``created`` a version, or found the content recorded."""

    version: DatasetVersion
    created: bool
    reason: str
    backup: BackupResult | None = None

    def to_json(self) -> dict[str, Any]:
        out = {"created": self.created, "reason": self.reason, **self.version.to_json()}
        if self.backup is not None:
            out["backup"] = self.backup.to_json()
        return out


class _Recorded(Exception):
    """Raised from the backup's last step: this content is recorded already as ``version``."""

    def __init__(self, version: DatasetVersion, reason: str) -> None:
        super().__init__(reason)
        self.version, self.reason = version, reason


def snapshot_dataset(
    repo: Repository,
    root: str | os.PathLike[str],
    version: str,
    *,
    splits: Sequence[str] = ("train", "holdout"),
    label: str = "",
    if_changed: bool = False,
    threads: int | None = None,
    progress: Progress | None = None,
) -> SnapshotOutcome:
    """Record the tree at ``root`` as dataset ``version`` (see the module docstring)."""
    check_version(version)
    path = dataset_root(root)
    with locked(repo.backend, "dataset snapshot", exclusive=False):
        known = versions(repo)
        same = next((v for v in known if v.name == version), None)
        reference = same or (known[-1] if if_changed and known else None)
        if reference is not None:
            quick = scan(reference, reference.entries(repo), path, threads=threads or 0)
            if quick.clean and quick.content_sha256 == reference.content_sha256:
                why = (
                    "unchanged since this version"
                    if reference is same
                    else f"unchanged since {reference.name}"
                )
                return SnapshotOutcome(reference, created=False, reason=why)
        by_content: dict[str, DatasetVersion] = {}
        for v in known:  # newest last: the newest of each content wins
            by_content[v.content_sha256] = v
        complete = _completer(version, path, splits, same, by_content if if_changed else {})
        parent = next(
            (v for v in reversed(known) if v.snapshot.paths == [path]), known[-1] if known else None
        )
        try:
            result = Backup(repo, threads=threads, progress=progress).run(
                [Path(path)],
                base=Path(path),
                tags={VERSION_TAG: version},
                label=label,
                kind=KIND,
                parent=parent.snapshot.id if parent else None,
                strict=True,
                complete=complete,
            )
        except _Recorded as recorded:
            return SnapshotOutcome(recorded.version, created=False, reason=recorded.reason)
    return SnapshotOutcome(DatasetVersion(result.snapshot), created=True, reason="new version", backup=result)


def _completer(
    version: str,
    root: str,
    splits: Sequence[str],
    same: DatasetVersion | None,
    by_content: Mapping[str, DatasetVersion],
) -> Callable[[list[TreeEntry]], Mapping[str, Any]]:
    """The backup's last step: the manifest, or :class:`_Recorded` / :class:`VersionConflict`."""

    def complete(entries: list[TreeEntry]) -> Mapping[str, Any]:
        date = clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")
        manifest = build_manifest(version, date, entries, splits)
        found = manifest["content_sha256"]
        if found in by_content:
            match = by_content[found]
            raise _Recorded(match, f"content already recorded as {match.name}")
        if same is not None:
            if same.content_sha256 == found:
                raise _Recorded(same, "same content as this version")
            raise VersionConflict(version=version, existing=same.content_sha256, found=found, root=root)
        return {"manifest": manifest}

    return complete
