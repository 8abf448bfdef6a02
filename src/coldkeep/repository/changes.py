"""What happened to the files a backup reads: which changed while they were read (stored as
read) and which could not be read (left out), with a warning for each; and the error of a strict
backup that refuses such a snapshot.  See ``repository/backup.py``."""

from __future__ import annotations

import os

from coldkeep.errors import SourceChanged
from coldkeep.repository.tree import TreeEntry


class Report:
    """What went wrong with which file, appended to from worker threads (``list.append`` is atomic)."""

    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.changed: list[str] = []
        self.skipped: list[str] = []

    def change(self, path: str, what: str, nread: int) -> None:
        self.changed.append(path)
        self.warnings.append(
            f"{path}: {what} while being backed up; the snapshot holds the {nread} bytes read"
        )

    def skip(self, path: str, why: str) -> None:
        self.skipped.append(path)
        self.warnings.append(f"{path}: {why}; not in the snapshot")

    def unreadable(self, path: str, exc: OSError) -> None:
        if isinstance(exc, FileNotFoundError):
            self.skip(path, "vanished before it could be read")
        else:
            self.skip(path, f"cannot read ({exc.strerror or exc})")


def what_changed(path: str, listed: TreeEntry, opened: os.stat_result, nread: int) -> str | None:
    """How a file changed between the walk (``listed``: its entry as walked), its opening
    (``opened``) and now, that ``nread`` bytes were read from; ``None`` if it did not."""
    try:
        now: os.stat_result | None = os.lstat(path)
    except FileNotFoundError:
        return "was removed"
    except OSError:
        now = None
    if opened.st_ino != listed["ino"] or (now is not None and now.st_ino != opened.st_ino):
        return "was replaced"
    end = now.st_size if now is not None else opened.st_size
    if end > nread:
        return f"grew ({listed['size']} bytes when listed, {end} now)"
    if nread < opened.st_size or end < listed["size"]:
        return f"shrank ({listed['size']} bytes when listed, {end} now)"
    if nread != listed["size"]:
        return f"grew ({listed['size']} bytes when listed, {end} now)"
    if now is not None and now.st_mtime_ns != listed["mtime_ns"]:
        return "was modified"
    return None


def refusal(report: Report) -> SourceChanged:
    """The error of a strict backup that saw files change or could not read some."""
    named = report.changed[:5] + report.skipped[: max(0, 5 - len(report.changed))]
    more = len(report.changed) + len(report.skipped) - len(named)
    parts = []
    if report.changed:
        parts.append(f"{len(report.changed)} file(s) changed while being read")
    if report.skipped:
        parts.append(f"{len(report.skipped)} could not be read")
    listing = ", ".join(named) + (f" (+{more} more)" if more else "")
    return SourceChanged(
        f"{' and '.join(parts)}: {listing}",
        changed=report.changed,
        skipped=report.skipped,
        warnings=report.warnings,
    )
