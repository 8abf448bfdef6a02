"""``[storage]`` allocations: how full each one is, how fast it grows, when it is full.

One implementation for ``coldkeep storage`` and the metrics (:mod:`coldkeep.ops.metrics`).

Used bytes, cheapest source first:

* ``repository``: the allocation's path is the (``file://``) repository: the repository's stored
  bytes (packs and named objects), which the caller has read anyway;
* ``statvfs``: the path is a mount point: the file system's own figure, one system call;
* ``scan``: otherwise a walk adding up every entry's allocated blocks (``du``'s figure), kept in
  ``<cache dir>/storage-scan.json`` with its time; a walk happens only when the cached figure is
  older than ``max_age_s`` (``coldkeep storage --max-age``), never in a metrics refresh
  (``refresh=False``: the cached figure, however old, or unknown);
* ``missing``: the path does not exist (unknown).

Growth per day comes from the run records: every run of ``coldkeep storage`` (a recorded job)
keeps each allocation's used bytes in its figures (``allocations``: ``{location/name: used}``);
the growth is the least-squares slope of those samples over the last :data:`GROWTH_WINDOW_DAYS`
days (the figure being computed now included), once they span a day (:data:`MIN_TREND_S`).  For the allocation holding the repository, with
fewer than two samples, the bytes newly stored by every recorded job in the window, per day,
stand in.  Days until full: the free bytes of the allocation divided by that growth (none when it
does not grow).
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coldkeep import clock
from coldkeep.config import Config, parse_size
from coldkeep.durable import write_atomic
from coldkeep.ops.runs import RunRecord
from coldkeep.repository.index import cache_root

if TYPE_CHECKING:
    from coldkeep.repository.repository import Repository

log = logging.getLogger(__name__)

#: the job whose records carry the allocations' used bytes
STORAGE_JOB = "storage"
#: the samples must span this long before their slope is a growth per day
MIN_TREND_S = 86400.0
#: how far back the growth looks
GROWTH_WINDOW_DAYS = 30
#: the scan cache, in the cache directory
SCAN_CACHE = "storage-scan.json"
#: a cached scan younger than this is used as it is (``coldkeep storage``'s default)
DEFAULT_MAX_AGE_S = 6 * 3600


@dataclass
class Usage:
    """One allocation's figures."""

    location: str  # hot / cold
    name: str
    path: str
    allocated: float
    used: float | None = None
    source: str = "missing"  # repository / statvfs / scan / scan-cached / missing
    measured_at: datetime | None = None
    growth_per_day: float | None = None

    @property
    def key(self) -> str:
        return f"{self.location}/{self.name}"

    @property
    def percent(self) -> float | None:
        return None if self.used is None or self.allocated <= 0 else 100.0 * self.used / self.allocated

    @property
    def days_until_full(self) -> float | None:
        """Free bytes over the growth per day (``0`` when already full; ``None``: not growing)."""
        if self.used is None or self.growth_per_day is None or self.growth_per_day <= 0:
            return None
        return max(0.0, (self.allocated - self.used) / self.growth_per_day)

    def to_json(self) -> dict[str, Any]:
        pct, days = self.percent, self.days_until_full
        return {
            "location": self.location, "name": self.name, "path": self.path,
            "allocated_bytes": int(self.allocated),
            "used_bytes": None if self.used is None else int(self.used),
            "percent": None if pct is None else round(pct, 2), "source": self.source,
            "measured_at": clock.isoformat(self.measured_at) if self.measured_at else None,
            "growth_bytes_per_day": None if self.growth_per_day is None else round(self.growth_per_day, 1),
            "days_until_full": None if days is None else round(days, 1),
        }  # fmt: skip


def repository_figures(repo: Repository) -> dict[str, float]:
    """The repository's snapshots, their logical bytes and the bytes it stores (packs and named
    objects): one listing of each, no object read."""
    from coldkeep.repository.format import NAMED_PREFIX, PACK_PREFIX

    snaps = repo.list_snapshots()
    stored = sum(i.size for i in repo.backend.list(PACK_PREFIX)) + sum(
        i.size for i in repo.backend.list(NAMED_PREFIX)
    )
    return {
        "snapshots": float(len(snaps)),
        "logical_bytes": float(sum(s.logical_bytes for s in snaps)),
        "stored_bytes": float(stored),
    }


def repository_path(config: Config) -> str:
    """The local directory of a ``file://`` repository, else ``""``."""
    url = config.repository.url
    return url.removeprefix("file://") if url.startswith("file://") else ""


def _same(a: str, b: str) -> bool:
    return bool(a and b) and os.path.realpath(a) == os.path.realpath(b)


def disk_usage(path: str) -> int:
    """Bytes allocated to ``path`` and everything below it (``du -s -B1``; a hard-linked file
    once; symlinks not followed; unreadable directories skipped)."""
    total = 0
    seen: set[tuple[int, int]] = set()
    stack = [path]
    while stack:
        directory = stack.pop()
        try:
            st = os.lstat(directory)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        total += st.st_blocks * 512
        if not stat.S_ISDIR(st.st_mode):
            continue
        try:
            with os.scandir(directory) as it:
                entries = list(it)
        except OSError:
            continue
        for entry in entries:
            try:
                est = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(est.st_mode):
                stack.append(entry.path)
            elif (est.st_dev, est.st_ino) not in seen:
                if est.st_nlink > 1:
                    seen.add((est.st_dev, est.st_ino))
                total += est.st_blocks * 512
    return total


def _cache_file() -> Path:
    return cache_root() / SCAN_CACHE


def _load_cache() -> dict[str, dict[str, Any]]:
    try:
        doc = json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _save_cache(doc: dict[str, dict[str, Any]]) -> None:
    path = _cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(path, json.dumps(doc, indent=1, sort_keys=True).encode(), mode=0o600)
    except OSError as exc:  # a scan not cached is scanned again next time
        log.warning("storage scan cache %s not written: %s", path, exc)


def _scanned(
    path: str, cache: dict[str, dict[str, Any]], now: datetime, max_age_s: float | None
) -> tuple[float | None, str, datetime | None]:
    """(used, source, measured at) from the cache or a fresh walk (``max_age_s`` ``None``: never walk)."""
    key = os.path.realpath(path)
    hit = cache.get(key)
    at: datetime | None = None
    if isinstance(hit, dict) and isinstance(hit.get("used"), int | float):
        try:
            at = clock.parse_timestamp(str(hit.get("at")))
        except ValueError:
            at = None
    if at is not None and hit is not None and (max_age_s is None or (now - at).total_seconds() < max_age_s):
        return float(hit["used"]), "scan-cached", at
    if max_age_s is None:
        return None, "scan-cached", None
    used = disk_usage(path)
    cache[key] = {"used": used, "at": clock.isoformat(now)}
    return float(used), "scan", now


def usage(
    config: Config,
    records: Sequence[RunRecord] = (),
    *,
    repo_stored: float | None = None,
    max_age_s: float | None = None,
    now: datetime | None = None,
) -> list[Usage]:
    """Every configured allocation's :class:`Usage` (see the module docstring).  ``max_age_s``
    ``None`` never walks a tree (the metrics); a number walks where the cached scan is older."""
    now = now or clock.now()
    repo_path = repository_path(config)
    cache = _load_cache()
    before = json.dumps(cache, sort_keys=True)
    rows: list[Usage] = []
    for loc_name in ("hot", "cold"):
        location = getattr(config.storage, loc_name)
        for name, alloc in sorted(location.allocations.items()):
            row = Usage(loc_name, name, alloc.path, float(parse_size(alloc.size)))
            if _same(repo_path, alloc.path) and repo_stored is not None:
                row.used, row.source, row.measured_at = repo_stored, "repository", now
            elif os.path.ismount(alloc.path):
                st = os.statvfs(alloc.path)
                row.used, row.source = float((st.f_blocks - st.f_bfree) * st.f_frsize), "statvfs"
                row.measured_at = now
            elif os.path.isdir(alloc.path):
                row.used, row.source, row.measured_at = _scanned(alloc.path, cache, now, max_age_s)
            row.growth_per_day = growth(row, records, now, holds_repository=_same(repo_path, alloc.path))
            rows.append(row)
    if json.dumps(cache, sort_keys=True) != before:
        _save_cache(cache)
    return rows


def samples(records: Iterable[RunRecord], key: str, since: datetime) -> list[tuple[datetime, float]]:
    """(end, used bytes) of ``key`` (``location/name``) from the ``storage`` runs since ``since``."""
    out = []
    for record in records:
        if record.job != STORAGE_JOB or not record.succeeded or record.end < since:
            continue
        allocations = record.figures.get("allocations")
        value = allocations.get(key) if isinstance(allocations, dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            out.append((record.end, float(value)))
    return out


def slope_per_day(points: Sequence[tuple[datetime, float]]) -> float | None:
    """Least-squares bytes per day of ``points`` (``None``: fewer than two distinct times)."""
    if len(points) < 2:
        return None
    t0 = points[0][0]
    xs = [(t - t0).total_seconds() / 86400 for t, _ in points]
    ys = [v for _, v in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var <= 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


def growth(
    row: Usage, records: Sequence[RunRecord], now: datetime, *, holds_repository: bool
) -> float | None:
    """Bytes per day of ``row`` over the growth window (see the module docstring)."""
    since = now - timedelta(days=GROWTH_WINDOW_DAYS)
    points = samples(records, row.key, since)
    if row.used is not None and row.measured_at is not None and all(t < row.measured_at for t, _ in points):
        points.append((row.measured_at, row.used))
    points.sort()
    # a trend over less than a day says more about the last hour's jobs than about growth
    spread = (points[-1][0] - points[0][0]).total_seconds() if points else 0.0
    slope = slope_per_day(points) if spread >= MIN_TREND_S else None
    if slope is not None or not holds_repository:
        return slope
    window = [r for r in records if r.end >= since and r.new_bytes is not None and r.succeeded]
    if not window:
        return None
    days = max(1.0, (now - min(r.start for r in window)).total_seconds() / 86400)
    return sum(float(r.new_bytes or 0) for r in window) / days


def holds_repository(config: Config) -> bool:
    """Whether an allocation's path is the (``file://``) repository."""
    repo_path = repository_path(config)
    return any(
        _same(repo_path, a.path)
        for loc in (config.storage.hot, config.storage.cold)
        for a in loc.allocations.values()
    )
