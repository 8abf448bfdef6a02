"""The archived WAL as a chain: what a backup needs, how far the archive reaches, where it has gaps.

Built on :mod:`coldkeep.postgres.archive` (names and listings) and :mod:`coldkeep.postgres.wal`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from coldkeep.errors import ColdkeepError, IntegrityError
from coldkeep.postgres import archive, wal
from coldkeep.postgres.archive import archived_names, archived_set, current_lineage, lineages
from coldkeep.repository.format import NAMED_PREFIX
from coldkeep.repository.repository import Repository

__all__ = [
    "archive_end_lsn",
    "archived_names",
    "archived_set",
    "check_chain",
    "current_lineage",
    "lineages",
    "newest_segment_time",
    "position",
    "segments_for_backup",
]


def position(name: str) -> tuple[int, int]:
    """(log, seg) of a segment-like WAL name: the order of WAL positions for any segment size."""
    parsed = wal.parse_name(name.rsplit("/", 1)[-1])
    return parsed.log, parsed.seg


def segments_for_backup(timeline: int, start_lsn: str, stop_lsn: str, seg_size: int) -> list[str]:
    return archive.segments_for_backup(timeline, wal.parse_lsn(start_lsn), wal.parse_lsn(stop_lsn), seg_size)


def _segments(repo: Repository, prefix: str) -> list[archive.ArchivedWal]:
    return [a for a in archive.archived(repo, prefix) if a.parsed.kind == "segment"]


def newest_segment_time(repo: Repository, prefix: str) -> datetime | None:
    """When the newest archived segment was stored: every commit in the archive happened before."""
    segments = _segments(repo, prefix)
    if not segments:
        return None
    newest = max(segments, key=lambda a: (a.parsed.timeline, a.parsed.log, a.parsed.seg))
    return datetime.fromtimestamp(repo.backend.stat(NAMED_PREFIX + newest.key).mtime, UTC)


def archive_end_lsn(repo: Repository, prefix: str, seg_size: int = wal.DEFAULT_SEG_SIZE) -> int | None:
    """The LSN at the end of the newest archived segment (on the highest timeline)."""
    segments = _segments(repo, prefix)
    if not segments:
        return None
    newest = max(segments, key=lambda a: (a.parsed.timeline, a.parsed.log, a.parsed.seg))
    return (newest.parsed.segno_for(seg_size) + 1) * seg_size


def _history_parents(repo: Repository, prefix: str) -> tuple[dict[int, int], list[str]]:
    """timeline -> parent timeline, from the archived history files; and a problem for every
    history file that cannot be read (damaged, gone since listed, not a history file): without it
    the chain may follow the wrong timeline, so it is never skipped silently."""
    parents: dict[int, int] = {}
    problems: list[str] = []
    for item in archive.archived(repo, prefix):
        if item.parsed.kind != "history":
            continue
        try:
            _, data = repo.get_named(item.key)
            parents[item.parsed.timeline] = _parent_timeline(data, item.key)
        except ColdkeepError as exc:
            problems.append(
                f"history file {item.name} cannot be read ({exc.message}): where timeline "
                f"{item.parsed.timeline} branches off is unknown, the chain may follow the wrong timeline"
            )
    return parents, problems


def _parent_timeline(data: bytes, key: str) -> int:
    """The timeline a history file's timeline branched from (the first field of its last entry)."""
    entries = [
        line.split()
        for line in data.decode(errors="replace").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    try:
        return int(entries[-1][0])
    except (IndexError, ValueError):
        raise IntegrityError(f"named object {key}: not a timeline history file") from None


def check_chain(
    repo: Repository,
    prefix: str,
    timeline: int,
    start_wal: str,
    stop_wal: str,
    seg_size: int = wal.DEFAULT_SEG_SIZE,
) -> dict[str, Any]:
    """Follow the WAL from ``start_wal`` on ``timeline`` (and onto child timelines, via the
    archived history files) to the newest segment; report missing segments and timelines crossed."""
    by_tl: dict[int, set[int]] = {}
    for s in _segments(repo, prefix):
        by_tl.setdefault(s.parsed.timeline, set()).add(s.parsed.segno_for(seg_size))
    parents, problems = _history_parents(repo, prefix)
    path = [timeline]
    while True:
        children = sorted(t for t, p in parents.items() if p == path[-1])
        if not children:
            break
        path.append(children[-1])
    count = 0
    first = last = None
    segno = wal.parse_name(start_wal).segno_for(seg_size)
    for i, tl in enumerate(path):
        have = by_tl.get(tl, set())
        child = by_tl.get(path[i + 1], set()) if i + 1 < len(path) else set()
        # on a parent timeline the chain runs up to the first segment of the child timeline
        end = min(child) - 1 if child else max(have, default=segno - 1)
        while segno <= end:
            name = wal.segment_name(tl, segno, seg_size)
            if segno in have:
                count += 1
                first = first or name
                last = name
            elif len(problems) < 20:  # history problems first: they can explain the gaps
                problems.append(f"WAL gap: {name} is missing from the archive")
            segno += 1
    stop = wal.parse_name(stop_wal).segno_for(seg_size)
    if last is None or wal.parse_name(last).segno_for(seg_size) < stop:
        problems.append(f"WAL up to the backup's stop segment {stop_wal} is not archived")
    return {"segments": count, "first": first, "last": last, "timelines": path, "problems": problems}
