"""What a backup leaves out: ``--exclude PATTERN``, ``--exclude-file FILE``, ``--exclude-caches``.

As restic and borg users expect:

* A pattern without ``/`` (``*.tmp``, ``__pycache__``) matches an entry's base name anywhere.
* A pattern with ``/`` matches the entry's absolute source path (``/mnt/data/scratch``, a leading
  ``/`` optional) or its path relative to the backed-up directory (``train/tmp/*``).  Patterns are
  shell globs (``*``, ``?``, ``[…]``); ``*`` also crosses ``/``.
* An excluded directory is left out with everything below it (it is not even listed).
* ``--exclude-caches``: a directory holding a ``CACHEDIR.TAG`` file that starts with the standard
  signature (https://bford.info/cachedir/) is left out, as restic's ``--exclude-caches`` does.
* An exclude file holds one pattern per line; blank lines and lines starting with ``#`` are
  skipped (restic's format).

The rules are recorded in the snapshot (``meta.excludes``: patterns, exclude_caches, and how many
entries were left out), so a restore can tell an excluded file from a lost one.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coldkeep.errors import UsageError

CACHEDIR_SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"


def read_exclude_file(path: str | os.PathLike[str]) -> list[str]:
    """The patterns of an exclude file; :class:`UsageError` (exit 2) when it cannot be read."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UsageError(
            f"--exclude-file {path}: cannot read it ({reason})",
            hint="name a UTF-8 text file with one pattern per line",
        ) from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def is_cache_dir(path: str) -> bool:
    """Whether directory ``path`` holds a ``CACHEDIR.TAG`` with the standard signature."""
    try:
        with open(os.path.join(path, "CACHEDIR.TAG"), "rb") as f:
            return f.read(len(CACHEDIR_SIGNATURE)) == CACHEDIR_SIGNATURE
    except OSError:
        return False


@dataclass
class Excludes:
    patterns: list[str] = field(default_factory=list)
    exclude_caches: bool = False
    excluded: int = 0  # entries left out (a directory counts once)

    def __post_init__(self) -> None:
        for pattern in self.patterns:
            if not pattern.strip("/"):
                raise UsageError(
                    f"--exclude {pattern!r} would leave out everything", hint="name what to leave out"
                )
        self._names = [p for p in self.patterns if "/" not in p]
        self._paths = [p.strip("/") for p in self.patterns if "/" in p]

    def __bool__(self) -> bool:
        return bool(self.patterns) or self.exclude_caches

    def leaves_out(self, path: str, relative: str, is_dir: bool) -> bool:
        """Whether the entry at absolute source ``path`` (``relative`` to its backed-up
        directory) is left out; counts it."""
        base = path.rsplit("/", 1)[-1]
        hit = any(fnmatch.fnmatchcase(base, p) for p in self._names)
        if not hit and self._paths:
            absolute = path.lstrip("/")
            hit = any(
                fnmatch.fnmatchcase(absolute, p) or fnmatch.fnmatchcase(relative, p) for p in self._paths
            )
        if not hit and is_dir and self.exclude_caches:
            hit = is_cache_dir(path)
        if hit:
            self.excluded += 1
        return hit

    def to_json(self) -> dict[str, Any]:
        return {
            "patterns": list(self.patterns),
            "exclude_caches": self.exclude_caches,
            "excluded": self.excluded,
        }
