"""The spool's one long-lived prefetcher (:mod:`coldkeep.postgres.prefetch` holds the spool, the
serving paths and the safety rules): a detached process, started by the first ``wal-fetch
--prefetch K`` that had to go to the repository, that opens the repository once, keeps the K
segments after PostgreSQL's newest request verified in the spool, and keeps the next one ready for
the shell fast path of ``restore_command``."""

from __future__ import annotations

import os
import threading
import time

from coldkeep.postgres.prefetch import KILL_ENV, LOCK_NAME, Spool, _unlink, next_segments

TYPE_CHECKING = False  # not ``typing``'s (see prefetch.py)
if TYPE_CHECKING:
    from coldkeep.repository.repository import Repository

#: how often the prefetcher's placer looks whether the ready segment was taken
PLACE_POLL_S = 0.005
#: a prefetcher with no new request for this long stops (recovery paused or over)
IDLE_S = 30.0
#: how often a prefetcher with nothing to do looks for a new request
POLL_S = 0.01
#: a segment that was not archived (or not this cluster's) is asked for again after this long
NOT_ARCHIVED_RETRY_S = 1.0
#: history files probed after the timeline of a request (a recovery crosses a few switches at most)
MAX_TIMELINES_AHEAD = 64


class Prefetcher:
    """The one long-lived prefetcher of a spool: opens the repository once and keeps the segments
    after the newest one PostgreSQL asked for (:meth:`Spool.wanted`) spooled, two at a time, as
    recovery moves on (across timeline switches: ahead of a request, each segment is named on the
    timeline recovery will ask for it on, from the archived history files; :func:`segments_ahead`).

    It runs while it holds the spool's ``.prefetcher`` lock, and stops when the spool directory
    is gone (``recovery_end_command`` removes it once recovery ends), when no new request came
    for :data:`IDLE_S` seconds (recovery paused or over), or on any error.  A segment that is not
    archived, or whose header names another cluster than the spool's, is tried again after
    :data:`NOT_ARCHIVED_RETRY_S` (the archive may still grow)."""

    def __init__(self, spool: Spool, config_path: str, lineage: str | None) -> None:
        self.spool = spool
        self.config_path = config_path
        self.lineage = lineage
        self.not_archived: dict[str, float] = {}
        #: (request timeline, its switches ahead: [(timeline, first segment number)]), set by the
        #: fetch loop (which has the repository) and read by the placer
        self.chain: tuple[int, list[tuple[int, int]]] = (0, [])

    def run(self) -> None:
        import fcntl

        fd = os.open(self.spool.path(LOCK_NAME), os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return  # another prefetcher has this spool
        try:
            self._loop()
        except OSError:
            pass  # the spool removed under it: recovery is over
        finally:
            os.close(fd)

    def _place_loop(self, stop: threading.Event) -> None:
        """Keep ``ready/`` holding the segment after PostgreSQL's newest request, verified again
        right before it is linked there (:meth:`Spool.place`); when the shell fast path took it,
        record that as the newest request (the fetch loop then moves on)."""
        spool = self.spool
        placed: str | None = None
        while not stop.is_set():
            try:
                wanted = spool.wanted()
                if placed is not None and wanted is not None and spool.taken(placed):
                    if wanted[0] < placed:
                        spool.want(placed, wanted[1], wanted[2])
                    wanted = (placed, wanted[1], wanted[2])
                if wanted is not None:
                    following = self._ahead(wanted[0], wanted[1], 1)[0]
                    if following != placed and spool.place(following):
                        placed = following
            except Exception:  # best effort: a miss only means a fetch in the foreground
                pass
            stop.wait(PLACE_POLL_S)

    def _loop(self) -> None:

        spool = self.spool
        stop = threading.Event()
        placer = threading.Thread(
            target=self._place_loop, args=(stop,), name="coldkeep-prefetch-place", daemon=True
        )
        placer.start()
        try:
            self._fetch_loop(spool)
        finally:
            stop.set()
            placer.join()

    def _fetch_loop(self, spool: Spool) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from coldkeep import testhooks
        from coldkeep.lean.config import load_repository_section
        from coldkeep.postgres.archive import NotArchived
        from coldkeep.repository.setup import open_repository_section

        with (
            open_repository_section(load_repository_section(self.config_path)) as repo,
            ThreadPoolExecutor(2) as pool,
        ):

            def fetch(segment: str) -> bool:
                """Spool ``segment`` (verified); ``False`` when it is not archived (or, with the
                data directory's system identifier known, belongs to another cluster)."""
                claim = spool._claim(segment)
                if claim is None:
                    return True  # being fetched by someone else
                try:
                    # streamed into a temp file through one reused buffer (no 16 MiB allocation per
                    # segment: fresh memory is what a VM's page faults make expensive), named for the
                    # content digest the repository verified the bytes against once they all verified
                    temp = spool.path(f".{segment}.{os.getpid()}.{threading.get_ident()}.tmp")
                    try:
                        try:
                            content = spool.stream_in(repo, segment, self.lineage, temp)
                        except NotArchived:
                            content = None
                        if content is None:  # not archived, or not the recovering cluster's (the
                            # foreground fetch reports it): asked for again after a while
                            self.not_archived[segment] = time.monotonic() + NOT_ARCHIVED_RETRY_S
                            return False
                        testhooks.kill_point(KILL_ENV, "fetched")
                        now_wanted = spool.wanted()
                        if now_wanted is not None and segment <= now_wanted[0]:
                            return True  # asked for meanwhile: served already (or fetched by the asker)
                        os.rename(temp, spool.path(f"{segment}.{spool.entry_digest(segment, content)}"))
                        testhooks.kill_point(KILL_ENV, "spooled")
                        return True
                    finally:
                        _unlink(temp)  # gone after the rename; a failed or unwanted fetch leaves nothing
                finally:
                    _unlink(claim)

            last: tuple[str, int, int] | None = None
            idle_since = time.monotonic()
            while os.path.isdir(spool.root):
                wanted = spool.wanted()
                now = time.monotonic()
                if wanted != last:
                    last, idle_since = wanted, now
                elif now - idle_since > IDLE_S:
                    return
                if wanted and _timeline(wanted[0]) != self.chain[0]:
                    tli = _timeline(wanted[0])
                    self.chain = (tli, switches_after(tli, self._histories(repo, tli), wanted[1]))
                todo = self._todo(wanted, now) if wanted else []
                if not todo:
                    time.sleep(POLL_S)
                    continue
                for ok in pool.map(fetch, todo[:2]):  # in order: the first is needed first
                    if not ok:
                        break

    def _todo(self, wanted: tuple[str, int, int], now: float) -> list[str]:
        name, seg_size, count = wanted
        todo = []
        for segment in self._ahead(name, seg_size, count):
            if self.not_archived.get(segment, 0.0) > now:
                break  # not archived a moment ago: nothing after it either
            if not self.spool.pending(segment) and not os.path.lexists(self.spool.ready_path(segment)):
                todo.append(segment)  # (a ready segment `pg restore` staged is served already)
        return todo

    def _ahead(self, name: str, seg_size: int, count: int) -> list[str]:
        """The ``count`` segments recovery asks for after ``name``: on its timeline, then on the
        timelines it switches to (:attr:`chain`) from their first segment on."""
        tli, switches = self.chain
        return segments_ahead(name, seg_size, count, switches if tli == _timeline(name) else [])

    def _histories(self, repo: Repository, timeline: int) -> dict[int, bytes]:
        """The archived history files of the timelines after ``timeline``, probed one by one
        until one is missing (as PostgreSQL finds the newest timeline); none on any error."""
        from coldkeep.errors import ColdkeepError
        from coldkeep.postgres import wal
        from coldkeep.postgres.archive import NotArchived, read_archived

        found: dict[int, bytes] = {}
        for tli in range(timeline + 1, timeline + 1 + MAX_TIMELINES_AHEAD):
            try:
                found[tli] = read_archived(repo, wal.history_name(tli), prefix=self.lineage)[2]
            except NotArchived:
                break
            except ColdkeepError:
                return {}
        return found


def _timeline(segment: str) -> int:
    """The timeline of a segment name (its first 8 hex digits; the request loop's cheap check)."""
    return int(segment[:8], 16)


def parse_history(data: bytes) -> list[tuple[int, int]]:
    """A timeline history file's entries, oldest first: ``(timeline, LSN where it ended)``
    (the next entry's timeline, or the file's own, begins there)."""
    entries = []
    for line in data.decode(errors="replace").splitlines():
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        hi, _, lo = fields[1].partition("/")
        entries.append((int(fields[0]), (int(hi, 16) << 32) | int(lo, 16)))
    return entries


def switches_after(timeline: int, histories: dict[int, bytes], seg_size: int) -> list[tuple[int, int]]:
    """The timelines a recovery to the newest timeline descending from ``timeline`` switches to
    after it, oldest first, each with the first segment number recovery asks for on it (the one
    holding its starting point: PostgreSQL tries the newest timeline that has begun by a segment's
    start, XLogFileReadAnyTLI).  ``[]`` when no archived history descends from ``timeline``."""
    for newest in sorted(histories, reverse=True):
        try:
            entries = parse_history(histories[newest])
        except (ValueError, IndexError):
            continue  # not a history file: the foreground fetch reports it
        parents = [tli for tli, _ in entries]
        if timeline not in parents:
            continue
        first = parents.index(timeline)
        return [
            (entries[k + 1][0] if k + 1 < len(entries) else newest, entries[k][1] // seg_size)
            for k in range(first, len(entries))
        ]
    return []


def segments_ahead(name: str, seg_size: int, count: int, switches: list[tuple[int, int]]) -> list[str]:
    """The ``count`` segment names after ``name``, each on the timeline recovery asks for it:
    ``name``'s own, or the newest of ``switches`` (from :func:`switches_after`) begun by then."""
    if not switches:
        return next_segments(name, seg_size, count)
    from coldkeep.postgres import wal

    parsed = wal.parse_name(name)
    start = parsed.segno_for(seg_size)
    out = []
    for segno in range(start + 1, start + count + 1):
        tli = parsed.timeline
        for child, begins in switches:
            if segno >= begins:
                tli = child
        out.append(wal.segment_name(tli, segno, seg_size))
    return out
