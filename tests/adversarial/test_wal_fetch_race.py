"""`wal-fetch` of the segment `pg receive-wal` completes at that moment (adversarial pass 2).

`wal_fetch` looks for the archived segment, and when it is not there, for streamed states.  The
receiver, which takes no lock, archives the complete segment and then deletes every state of it
(`walstream.forget_segment`).  If that happens between the two lookups, neither finds anything and
`wal-fetch` answers "not archived" (exit 1) for a segment that is archived: PostgreSQL ends
recovery there, early, without the rest of that segment (invariant 8: recovery never ends early by
accident).  The interleaving is made deterministic by a backend that lets the receiver finish the
segment right after the archive lookup missed (the receiver's own functions, real storage).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from coldkeep.errors import ObjectNotFound
from coldkeep.postgres import archive, walstream
from coldkeep.repository.repository import Repository
from coldkeep.storage.local import LocalBackend
from tests.unit.test_wal import SYSID, segment
from tests.unit.test_walstream import SEG, partial

MiB = 1024 * 1024


class ReceiverFinishesBetween(LocalBackend):
    """Local storage; right after the first lookup of ``key`` missed, ``then()`` runs."""

    def __init__(self, root: Path, key: str) -> None:
        super().__init__(root)
        self.key, self.then, self.fired = key, None, False  # type: ignore[assignment]

    def get(self, key: str, *args: Any, **kwargs: Any) -> bytes:
        try:
            return super().get(key, *args, **kwargs)
        except ObjectNotFound:
            if key == self.key and not self.fired and self.then is not None:
                self.fired = True
                self.then()
            raise


def test_fetch_while_the_receiver_completes_the_segment(tmp_path: Path) -> None:
    backend = ReceiverFinishesBetween(tmp_path / "repo", f"named/wal/00000001/{SEG}")
    repo = Repository.init(backend)
    try:
        archive.record_system_identifier(repo, SYSID)
        lineage = archive.current_lineage(repo)
        assert lineage is not None
        walstream.store_partial(repo, SEG, partial(4000), lineage)
        complete = segment(SEG, seg_size=MiB)

        def receiver_completes_the_segment() -> None:
            repo.put_named(f"wal/00000001/{SEG}", complete, {"seg_size": MiB})
            walstream.forget_segment(repo, "wal", SEG)

        backend.then = receiver_completes_the_segment  # type: ignore[assignment]
        dest = tmp_path / "RECOVERYXLOG"
        result = archive.wal_fetch(repo, SEG, dest)  # observed: NotArchived (exit 1)
        assert backend.fired
        assert dest.read_bytes() == complete and result.key == f"wal/00000001/{SEG}"
    finally:
        repo.close()
