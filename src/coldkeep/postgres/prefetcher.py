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

#: how often the prefetcher's placer looks whether the ready segment was taken
PLACE_POLL_S = 0.005
#: a prefetcher with no new request for this long stops (recovery paused or over)
IDLE_S = 30.0
#: how often a prefetcher with nothing to do looks for a new request
POLL_S = 0.01
#: a segment that was not archived (or not this cluster's) is asked for again after this long
NOT_ARCHIVED_RETRY_S = 1.0


class Prefetcher:
    """The one long-lived prefetcher of a spool: opens the repository once and keeps the segments
    after the newest one PostgreSQL asked for (:meth:`Spool.wanted`) spooled, two at a time, as
    recovery moves on (across timeline switches: it follows the timeline of the request).

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
                    following = next_segments(wanted[0], wanted[1], 1)[0]
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
        for segment in next_segments(name, seg_size, count):
            if self.not_archived.get(segment, 0.0) > now:
                break  # not archived a moment ago: nothing after it either
            if not self.spool.pending(segment) and not os.path.lexists(self.spool.ready_path(segment)):
                todo.append(segment)  # (a ready segment `pg restore` staged is served already)
        return todo
