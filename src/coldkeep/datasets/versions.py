"""Dataset versions as the repository holds them: snapshots of kind ``dataset``.

A version is one snapshot document (``kind = "dataset"``, tag ``version=<name>``) whose ``meta``
holds the manifest (:func:`coldkeep.datasets.manifest.build_manifest`); the document is the last
thing a snapshot writes, so a version is recorded whole or not at all.  Versions are Tier-1 data
(:mod:`coldkeep.ownership`): no retention removes one.

Versions are immutable: the snapshot refuses a second content under a name already taken. Should
two snapshots of one name ever exist (two hosts racing), the first recorded is the version and the
others are listed as ``shadowed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from coldkeep.datasets.manifest import ordered
from coldkeep.errors import IntegrityError, NotFound
from coldkeep.errors import VersionConflict as VersionConflict  # where the services raise it from
from coldkeep.repository.repository import Repository
from coldkeep.repository.snapshot import Snapshot
from coldkeep.repository.tree import TreeEntry

KIND = "dataset"
VERSION_TAG = "version"


@dataclass
class DatasetVersion:
    """One recorded version: its snapshot and the manifest stored with it."""

    snapshot: Snapshot

    @property
    def name(self) -> str:
        return self.snapshot.tags.get(VERSION_TAG, "")

    @property
    def manifest(self) -> dict[str, Any]:
        manifest = self.snapshot.meta.get("manifest")
        if not isinstance(manifest, dict) or not isinstance(manifest.get("content_sha256"), str):
            raise IntegrityError(
                f"dataset version {self.name} (snapshot {self.snapshot.short_id}) has no readable manifest"
            )
        return ordered(manifest)

    @property
    def content_sha256(self) -> str:
        return str(self.manifest["content_sha256"])

    @property
    def date(self) -> str:
        """``YYYYMMDD`` of the snapshot date (the export's file name uses it)."""
        return str(self.manifest.get("snapshot_date", self.snapshot.time))[:10].replace("-", "")

    @property
    def root(self) -> str:
        return self.snapshot.paths[0] if self.snapshot.paths else ""

    def entries(self, repo: Repository) -> list[TreeEntry]:
        """The tree of this version (every blob verified against its id)."""
        return list(repo.iter_tree(self.snapshot))

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.name,
            "snapshot_id": self.snapshot.id,
            "time": self.snapshot.time,
            "label": self.snapshot.label,
            "root": self.root,
            "manifest": self.manifest,
        }


def versions(repo: Repository, *, shadowed: list[DatasetVersion] | None = None) -> list[DatasetVersion]:
    """Every recorded version, oldest first, one per name (the first recorded; later snapshots of
    a taken name go to ``shadowed``)."""
    seen: dict[str, DatasetVersion] = {}
    for snap in repo.list_snapshots(kind=KIND):
        version = DatasetVersion(snap)
        if not version.name:
            continue
        if version.name in seen:
            if shadowed is not None:
                shadowed.append(version)
            continue
        seen[version.name] = version
    return sorted(seen.values(), key=lambda v: v.snapshot.time)


def find_version(
    repo: Repository, name: str | None, *, known: Sequence[DatasetVersion] | None = None
) -> DatasetVersion:
    """The version ``name`` (``None`` or ``latest``: the newest), or :class:`NotFound`."""
    found = list(known) if known is not None else versions(repo)
    if not found:
        raise NotFound(
            "no dataset version recorded yet", hint="record one with `coldkeep datasets snapshot --version V`"
        )
    if name in (None, "latest"):
        return found[-1]
    for version in found:
        if version.name == name:
            return version
    names = ", ".join(v.name for v in found[-10:])
    raise NotFound(
        f"no dataset version {name!r} (recorded: {names})", hint="`coldkeep datasets list` shows them all"
    )
