"""`repo copy` while `pg receive-wal` streams (adversarial pass 2).

`pg receive-wal` takes no repository lock and replaces the stored state of the growing segment
every 0.2 s: it writes the newer state, then deletes the older one (`walstream.store_partial`),
and deletes every state once the segment is archived.  A copy lists the named objects once and
copies them afterwards, so a state superseded in between is gone when the copy reads it.  The copy
must not fail on that (observed: `SourceChanged`, exit 1, and nothing after the named objects —
service records, indexes, snapshots — reaches the copy, on every run that meets a busy receiver).
"""

from __future__ import annotations

from pathlib import Path

from coldkeep.postgres import archive, walstream
from coldkeep.repository.copy import copy_to
from coldkeep.repository.repository import Repository
from coldkeep.storage.local import LocalBackend
from tests.unit.test_wal import SYSID
from tests.unit.test_walstream import SEG, partial


def test_copy_survives_a_streamed_state_superseded_during_the_copy(tmp_path: Path) -> None:
    repo = Repository.init(LocalBackend(tmp_path / "repo"))
    try:
        archive.record_system_identifier(repo, SYSID)
        lineage = archive.current_lineage(repo)
        assert lineage is not None
        writer = repo.writer()  # one pack, so the copy writes something before the WAL
        writer.store(b"x" * 1000)
        writer.finish()
        walstream.store_partial(repo, SEG, partial(1000), lineage)
        raced: list[str] = []

        def receiver_stores_a_newer_state(key: str, nbytes: int) -> None:
            if not raced:  # after the listings: what `pg receive-wal` does every 0.2 s
                state = walstream.store_partial(repo, SEG, partial(5000), lineage)
                assert state is not None
                raced.append(state[0].key)

        dest = LocalBackend(tmp_path / "copy")
        copy_to(repo, dest, on_progress=receiver_stores_a_newer_state)
        assert raced
        # the copy is complete for what it listed: its service records arrived
        assert dest.exists("state/pg-lineage")
        copy_to(repo, dest)  # the next copy brings the newer state
        assert dest.exists("named/" + raced[0])
    finally:
        repo.close()
