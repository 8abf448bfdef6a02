"""Which entries of a snapshot a restore writes, and under which name in the target.

A snapshot stores each entry under its absolute source path without the leading ``/``
(``mnt/data/train/a.json`` for a backup of ``/mnt/data``).  Users think in paths relative to the
directory they backed up (``train/*``), as tar, restic and borg users type them, so:

* **Patterns** (``--include`` / ``--exclude``, shell globs, ``*`` also crossing ``/``) match an
  entry when they match its whole stored path *or* its path relative to the backed-up path it
  lies under; a pattern naming a directory also selects everything below it.  ``--exclude`` wins
  over ``--include``.
* **Landing** (where a selected entry goes under the target):
  - default: ``TARGET/<stored path>`` (``TARGET/mnt/data/train/a.json``), as before;
  - ``relative``: ``TARGET/<path relative to the backed-up path>`` (``TARGET/train/a.json``); the
    backed-up directory itself is the target, and with several backed-up paths each lands under
    ``TARGET/<its base name>/``;
  - ``strip_components=N``: the stored path without its first N components (tar's
    ``--strip-components``); entries with N or fewer components are not written.
  Two entries landing on one name is a usage error before anything is written (two directories
  merge).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field

from coldkeep.errors import UsageError


def _match_one(name: str, pattern: str) -> bool:
    pat = pattern.strip("/") if pattern.strip("/") else pattern
    return fnmatch.fnmatchcase(name, pat) or name.startswith(pat.rstrip("/") + "/")


@dataclass(frozen=True)
class Selection:
    includes: Sequence[str] = ()
    excludes: Sequence[str] = ()
    relative: bool = False
    strip_components: int = 0
    roots: Sequence[str] = field(default_factory=tuple)  # the snapshot's backed-up paths

    def __post_init__(self) -> None:
        if self.relative and self.strip_components:
            raise UsageError(
                "--relative and --strip-components both say where the tree lands",
                hint="give one of them",
            )
        if self.strip_components < 0:
            raise UsageError(f"--strip-components {self.strip_components}: must be 0 or more")

    @property
    def _roots(self) -> list[str]:
        return [r.strip("/") for r in self.roots if r.strip("/")]

    def _forms(self, name: str) -> list[str]:
        """``name`` and its path relative to each backed-up path it lies under."""
        forms = [name]
        for root in self._roots:
            if name.startswith(root + "/"):
                forms.append(name[len(root) + 1 :])
        return forms

    def selected(self, name: str) -> bool:
        forms = self._forms(name)
        if self.excludes and any(_match_one(f, p) for f in forms for p in self.excludes):
            return False
        if not self.includes:
            return True
        return any(_match_one(f, p) for f in forms for p in self.includes)

    def land(self, name: str, is_dir: bool = True) -> str | None:
        """The name ``name`` is written under in the target, or ``None`` when it is not written
        (a component stripped away, a directory on the way to a backed-up path, the backed-up
        directory itself under ``relative``).  Under ``relative`` a backed-up path that is not a
        directory (a file, a symlink) lands under its base name, and a name that lies under no
        backed-up path (a backup of ``/``; a snapshot stored relative to its directory, as a
        PostgreSQL base backup is) lands as it is stored."""
        if self.strip_components:
            parts = name.split("/")
            if len(parts) <= self.strip_components:
                return None
            return "/".join(parts[self.strip_components :])
        if not self.relative:
            return name
        roots = self._roots
        for root in sorted(roots, key=len, reverse=True):  # the deepest backed-up path containing it
            if name.startswith(root + "/"):
                rel = name[len(root) + 1 :]
                if len(roots) == 1:
                    return rel
                return root.rsplit("/", 1)[-1] + "/" + rel
            if name == root:
                return None if len(roots) == 1 and is_dir else root.rsplit("/", 1)[-1]
        if any(root.startswith(name + "/") for root in roots):
            return None  # a directory on the way to a backed-up path
        return name

    def describe(self) -> str:
        words = [f"--include {p!r}" for p in self.includes] + [f"--exclude {p!r}" for p in self.excludes]
        return " ".join(words)


class Landing:
    """Collects landing names and refuses a second entry on one of them (two directories on one
    name merge, as tar merges them)."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[str, bool]] = {}

    def add(self, landed: str, stored: str, is_dir: bool) -> bool:
        """Whether ``stored`` is new on ``landed``: ``False`` for a second entry of one stored
        name (a snapshot of nested paths, ``backup /d /d/sub``, lists ``/d/sub`` twice), which is
        restored once; :class:`UsageError` for another entry on a name taken (unless both are
        directories)."""
        if landed not in self._seen:
            self._seen[landed] = (stored, is_dir)
            return True
        other, other_dir = self._seen[landed]
        if other == stored:
            return False
        if not (is_dir and other_dir):
            raise UsageError(
                f"{stored!r} and {other!r} would both be restored as {landed!r}",
                hint="restore them separately, or use --include / --exclude, or fewer --strip-components",
            )
        return True
