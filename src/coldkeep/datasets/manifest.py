"""A dataset version's manifest, checksum list, identity and differences (pure: no I/O).

A version is described by the tree entries of its snapshot (``path``, ``type``, and for files
``size`` and ``sha256``, see :mod:`coldkeep.repository.tree`):

* the **checksum list** (:func:`checksum_list`) is every regular file as ``sha256sum`` writes it
  (``<hex>  <path>``, paths relative to the dataset root, sorted by their bytes; a name holding a
  backslash, a newline or a carriage return is escaped and its line starts with ``\\`` as GNU
  ``sha256sum`` does), so ``sha256sum -c`` in the dataset root accepts it;
* the **content hash** (:func:`content_hash`), the dataset's identity, is the SHA-256 of that
  list (``sha256sum SHA256SUMS`` gives it) — followed, only when the tree has any, by one line
  per symlink (``symlink <target>  <path>``) and per empty directory (``dir  <path>``), so two
  trees with the same files but another link are two contents.  Modes, owners and times are not
  content;
* an **app** is a directory holding a ``metadata.json`` (the spec's layout: ``train/<app>/``,
  ``holdout/<app>/``); the manifest counts them per split (:func:`build_manifest`);
* :func:`diff` compares two versions (or a version and a live tree's entries) file by file and
  app by app.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from coldkeep.errors import UsageError
from coldkeep.repository.tree import TreeEntry

__all__ = [
    "APP_MARKER",
    "MANIFEST_FORMAT",
    "Diff",
    "apps_of",
    "build_manifest",
    "check_version",
    "checksum_line",
    "checksum_list",
    "content_hash",
    "diff",
    "ordered",
]

#: the file that makes a directory an app (the spec counts ``metadata.json`` files)
APP_MARKER = "metadata.json"
#: the ``format`` field of every manifest this version writes
MANIFEST_FORMAT = "coldkeep-dataset-1"

_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")


def check_version(text: str) -> str:
    """``text`` if it is a version name (1-64 of letters, digits, ``. _ + -``, starting with a
    letter or digit: it becomes part of a file name, ``iccm_dataset_{version}_{date}.tar.gz``),
    else :class:`~coldkeep.errors.UsageError`."""
    if not _VERSION.fullmatch(text):
        raise UsageError(
            f"{text!r} is not a dataset version name",
            hint="1-64 letters, digits, '.', '_', '+' or '-', starting with a letter or digit (e.g. v3.0)",
        )
    return text


def _escape(name: bytes) -> tuple[bytes, bool]:
    """A file name as GNU ``sha256sum`` writes it, and whether it needed escaping."""
    if not any(c in name for c in b"\\\n\r"):
        return name, False
    return name.replace(b"\\", b"\\\\").replace(b"\n", b"\\n").replace(b"\r", b"\\r"), True


def checksum_line(sha256: str, path: str) -> bytes:
    """One ``sha256sum`` line (with its newline) for the file ``path`` (a snapshot name: a
    file name's bytes that are not UTF-8 come back through ``os.fsencode``)."""
    name, escaped = _escape(os.fsencode(path))
    return (b"\\" if escaped else b"") + sha256.encode("ascii") + b"  " + name + b"\n"


def _files(entries: Iterable[TreeEntry]) -> list[TreeEntry]:
    return sorted((e for e in entries if e.get("type") == "file"), key=lambda e: os.fsencode(e["path"]))


def checksum_list(entries: Iterable[TreeEntry]) -> bytes:
    """Every regular file of ``entries`` in ``sha256sum`` format, sorted by path bytes."""
    return b"".join(checksum_line(str(e["sha256"]), e["path"]) for e in _files(entries))


def content_hash(entries: Sequence[TreeEntry]) -> str:
    """The dataset's identity: SHA-256 of :func:`checksum_list`, then symlinks and empty
    directories when there are any (see the module docstring)."""
    sha = hashlib.sha256(checksum_list(entries))
    parents = {e["path"].rpartition("/")[0] for e in entries}
    extras: list[tuple[bytes, bytes]] = []
    for e in entries:
        if e.get("type") == "symlink":
            extras.append((os.fsencode(e["path"]), b"symlink " + os.fsencode(str(e.get("target", "")))))
        elif e.get("type") == "dir" and e["path"] not in parents:
            extras.append((os.fsencode(e["path"]), b"dir"))
    for name, what in sorted(extras):
        sha.update(what + b"  " + _escape(name)[0] + b"\n")
    return sha.hexdigest()


def apps_of(paths: Iterable[str]) -> set[str]:
    """The apps among ``paths`` (file names): the directories holding a :data:`APP_MARKER`."""
    return {p.rpartition("/")[0] for p in paths if p.rpartition("/")[2] == APP_MARKER and "/" in p}


def build_manifest(
    version: str, snapshot_date: str, entries: Sequence[TreeEntry], splits: Sequence[str]
) -> dict[str, Any]:
    """The spec's ``manifest.json`` fields (``version``, ``snapshot_date``, ``total_apps``,
    ``<split>_apps`` for each split, ``total_size_bytes``: the bytes of the files, not ``du``'s
    directory blocks) plus ``files``, ``content_sha256`` and ``format``."""
    files = _files(entries)
    apps = apps_of(e["path"] for e in files)
    manifest: dict[str, Any] = {"version": version, "snapshot_date": snapshot_date, "total_apps": len(apps)}
    for split in splits:
        manifest[f"{split}_apps"] = sum(1 for a in apps if a.startswith(split + "/"))
    manifest["total_size_bytes"] = sum(int(e.get("size", 0)) for e in files)
    manifest["files"] = len(files)
    manifest["content_sha256"] = content_hash(entries)
    manifest["format"] = MANIFEST_FORMAT
    return manifest


#: the manifest's keys in the order the spec writes them, then coldkeep's
_ORDER = ("version", "snapshot_date", "total_apps")
_LAST = ("total_size_bytes", "files", "content_sha256", "format")


def ordered(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """``manifest`` with its keys in the spec's order (a snapshot document stores them sorted):
    version, snapshot_date, total_apps, the ``<split>_apps`` counts, total_size_bytes, then
    coldkeep's own; any other key after those."""
    first = [k for k in _ORDER if k in manifest]
    splits = sorted((k for k in manifest if k.endswith("_apps") and k != "total_apps"), key=_split_rank)
    last = [k for k in _LAST if k in manifest]
    rest = [k for k in manifest if k not in {*first, *splits, *last}]
    return {k: manifest[k] for k in (*first, *splits, *last, *rest)}


def _split_rank(key: str) -> tuple[int, str]:
    return ({"train_apps": 0, "holdout_apps": 1}.get(key, 2), key)


def _app_of(path: str, apps: set[str]) -> str | None:
    """The app ``path`` belongs to (the deepest app directory above it), if any."""
    parent = path.rpartition("/")[0]
    while parent:
        if parent in apps:
            return parent
        parent = parent.rpartition("/")[0]
    return None


@dataclass
class Diff:
    """What changed from ``old`` to ``new``: files and apps added, removed, changed, and sizes."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    apps_added: list[str] = field(default_factory=list)
    apps_removed: list[str] = field(default_factory=list)
    apps_changed: list[str] = field(default_factory=list)
    old_bytes: int = 0
    new_bytes: int = 0
    #: the size of each added, removed or changed file: (old, new), ``None`` where it is absent
    sizes: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def to_json(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "files": {"added": self.added, "removed": self.removed, "changed": self.changed},
            "apps": {"added": self.apps_added, "removed": self.apps_removed, "changed": self.apps_changed},
            "bytes": {"old": self.old_bytes, "new": self.new_bytes, "delta": self.new_bytes - self.old_bytes},
            "sizes": {p: {"old": o, "new": n} for p, (o, n) in self.sizes.items()},
        }


def diff(old: Mapping[str, TreeEntry], new: Mapping[str, TreeEntry]) -> Diff:
    """``old`` → ``new`` (each ``path -> file entry``; a file is changed when its SHA-256 or
    size differs).  An app is added or removed with its marker; it is changed when any file
    below it was added, removed or changed."""
    out = Diff()
    out.old_bytes = sum(int(e.get("size", 0)) for e in old.values())
    out.new_bytes = sum(int(e.get("size", 0)) for e in new.values())
    for path in sorted(new.keys() - old.keys()):
        out.added.append(path)
        out.sizes[path] = (None, int(new[path].get("size", 0)))
    for path in sorted(old.keys() - new.keys()):
        out.removed.append(path)
        out.sizes[path] = (int(old[path].get("size", 0)), None)
    for path in sorted(old.keys() & new.keys()):
        a, b = old[path], new[path]
        if a.get("sha256") != b.get("sha256") or a.get("size") != b.get("size"):
            out.changed.append(path)
            out.sizes[path] = (int(a.get("size", 0)), int(b.get("size", 0)))
    old_apps, new_apps = apps_of(old), apps_of(new)
    out.apps_added = sorted(new_apps - old_apps)
    out.apps_removed = sorted(old_apps - new_apps)
    touched = {_app_of(p, old_apps | new_apps) for p in (*out.added, *out.removed, *out.changed)}
    out.apps_changed = sorted(a for a in touched if a is not None and a in old_apps and a in new_apps)
    return out
