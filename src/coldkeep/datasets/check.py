"""``datasets verify``, ``datasets restore`` and ``datasets diff``.

* :func:`verify_version` reads every stored byte of a version back (each chunk checked against
  its id, each file's SHA-256 against the manifest's list) and checks that the tree is the one the
  manifest describes (its content hash, file count and size); with ``against=DIR`` the live or
  restored tree there is compared too.  Every failing file is named, not the first.
* :func:`restore_version` checks the tree against the manifest first, then restores it into an
  empty (or new) directory, every byte verified on the way; the files written are counted against
  the manifest.
* :func:`diff_versions` compares two versions file by file and app by app.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coldkeep.datasets.manifest import Diff, content_hash, diff
from coldkeep.datasets.versions import DatasetVersion
from coldkeep.errors import IntegrityError, RestoreTargetError, UsageError
from coldkeep.repository.locks import locked
from coldkeep.repository.progress import Progress
from coldkeep.repository.repository import Repository
from coldkeep.repository.restore import Restorer
from coldkeep.repository.tree import TreeEntry
from coldkeep.repository.verify import DAMAGED, VerifyProblem


def manifest_problems(version: DatasetVersion, entries: list[TreeEntry]) -> list[VerifyProblem]:
    """What is wrong between a version's tree and its manifest (nothing, normally)."""
    manifest = version.manifest
    problems: list[VerifyProblem] = []
    files = [e for e in entries if e.get("type") == "file"]
    found = content_hash(entries)
    if found != manifest["content_sha256"]:
        problems.append(
            VerifyProblem(
                "<manifest>",
                DAMAGED,
                f"the tree's content hash is {found}, the manifest says {manifest['content_sha256']}",
            )
        )
    if len(files) != manifest.get("files"):
        problems.append(
            VerifyProblem(
                "<manifest>",
                DAMAGED,
                f"{len(files)} files in the tree, the manifest says {manifest.get('files')}",
            )
        )
    size = sum(int(e.get("size", 0)) for e in files)
    if size != manifest.get("total_size_bytes"):
        problems.append(
            VerifyProblem(
                "<manifest>",
                DAMAGED,
                f"{size} bytes in the tree, the manifest says {manifest.get('total_size_bytes')}",
            )
        )
    return problems


@dataclass
class VersionCheck:
    """What :func:`verify_version` found."""

    version: str
    snapshot_id: str
    against: str | None
    files: int = 0
    bytes: int = 0
    problems: list[VerifyProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def failing(self) -> list[str]:
        """Every path with a problem, sorted, each once."""
        return sorted({p.path for p in self.problems})

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "snapshot_id": self.snapshot_id,
            "against": self.against,
            "ok": self.ok,
            "files": self.files,
            "bytes": self.bytes,
            "failing": self.failing(),
            "problems": [p.to_json() for p in self.problems],
        }


def verify_version(
    repo: Repository, version: DatasetVersion, against: str | Path | None = None
) -> VersionCheck:
    """Verify ``version`` (see the module docstring); never raises for what it finds."""
    if against is not None and not os.path.isdir(against):
        raise UsageError(
            f"--against {against}: not a directory", hint="name the live or restored dataset tree"
        )
    with locked(repo.backend, "dataset verify", exclusive=False):
        result = repo.verify_snapshot(version.snapshot, against)
        check = VersionCheck(version.name, version.snapshot.id, result.against, result.files, result.bytes)
        check.problems.extend(result.problems)
        if not any(p.path == "<tree>" for p in result.problems):
            check.problems.extend(manifest_problems(version, version.entries(repo)))
    return check


@dataclass
class VersionRestore:
    version: str
    target: str
    files: int
    bytes: int
    duration_s: float

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "target": self.target, "files": self.files,
                "bytes": self.bytes, "duration_s": self.duration_s}  # fmt: skip


def require_empty(target: str) -> None:
    if os.path.lexists(target) and (not os.path.isdir(target) or os.listdir(target)):
        raise UsageError(
            f"{target} exists and is not an empty directory: a dataset restores into a new or empty one",
            hint="name a new directory (a restore never writes over an existing tree)",
        )


def restore_version(
    repo: Repository,
    version: DatasetVersion,
    target: str | os.PathLike[str],
    *,
    progress: Progress | None = None,
) -> VersionRestore:
    """Restore ``version`` byte-exact into ``target`` (new or empty), its manifest checked first
    and the result counted against it; :class:`IntegrityError` names what failed."""
    path = os.path.abspath(target)
    require_empty(path)
    with locked(repo.backend, "dataset restore", exclusive=False):
        entries = version.entries(repo)
        problems = manifest_problems(version, entries)
        if problems:
            raise IntegrityError(f"dataset version {version.name}: {problems[0].detail}; nothing restored")
        result = Restorer(repo, progress=progress).run(version.snapshot, Path(path))
    failed = result.damage + [e for e in result.errors if e not in result.damage]
    if failed:
        more = f" (+{len(failed) - 1} more: {'; '.join(failed[1:])})" if len(failed) > 1 else ""
        message = f"dataset version {version.name} not restored whole into {path}: {failed[0]}{more}"
        if result.damage:
            raise IntegrityError(message)
        raise RestoreTargetError(message, target=path)
    if result.files != version.manifest.get("files") or result.bytes != version.manifest.get(
        "total_size_bytes"
    ):
        raise IntegrityError(
            f"dataset version {version.name}: restored {result.files} files / {result.bytes} bytes, "
            f"the manifest says {version.manifest.get('files')} / {version.manifest.get('total_size_bytes')}"
        )
    return VersionRestore(version.name, path, result.files, result.bytes, result.duration_s)


def files_by_path(entries: list[TreeEntry]) -> dict[str, TreeEntry]:
    return {e["path"]: e for e in entries if e.get("type") == "file"}


def diff_versions(repo: Repository, old: DatasetVersion, new: DatasetVersion) -> Diff:
    """``old`` → ``new``: files and apps added, removed, changed, and sizes."""
    return diff(files_by_path(old.entries(repo)), files_by_path(new.entries(repo)))
