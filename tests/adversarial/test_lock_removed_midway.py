"""A backup whose lock document is removed while it runs (adversarial pass 2).

docs/design.md ("Locks"): "The lock counts as lost once removed ... a backup whose lock was lost
never writes its index or snapshot".  `repo unlock --all` removes a running backup's lock; a
`repo prune` may then take the exclusive lock at once and delete packs whose chunks the backup
found in the index and did not store again.  The backup only learns of the removal at its next
refresh (every 60 s), so a backup that finishes within that minute writes a snapshot that points
at deleted data: the snapshot does not restore.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from coldkeep.errors import LockLost
from coldkeep.repository import fileread
from coldkeep.repository.backup import Backup
from coldkeep.repository.index import IndexCache
from coldkeep.repository.locks import locked
from coldkeep.repository.repository import Repository
from coldkeep.storage.local import LocalBackend
from tests.helpers import Site


def test_backup_whose_lock_was_removed_writes_no_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = Site(tmp_path / "site")
    site.ok("repo", "init")
    old = tmp_path / "old"
    old.mkdir()
    data = os.urandom(3 * 1024 * 1024)
    (old / "model.bin").write_bytes(data)
    first = site.json("backup", str(old))["snapshot_id"]
    site.ok("forget", first)  # its chunks are garbage now, still indexed
    new = tmp_path / "new"
    new.mkdir()
    (new / "model.bin").write_bytes(data)  # same bytes: the backup finds every chunk indexed

    done: list[bool] = []

    def operator_unlocks_and_prunes(path: str, offset: int) -> None:
        if path.endswith("model.bin") and not done:
            done.append(True)
            site.ok("repo", "unlock", "--all")  # removes this backup's lock document
            site.ok("repo", "prune")  # takes the exclusive lock; deletes the old packs

    monkeypatch.setattr(fileread, "READ_HOOK", operator_unlocks_and_prunes)
    repo = Repository.open(LocalBackend(site.repo_dir))
    repo._cache = IndexCache(repo.config.id, path=tmp_path / "api-cache.sqlite")
    repo.refresh_cache()  # loaded, as by the files a long backup has read before this one
    try:
        with pytest.raises(LockLost), locked(repo.backend, "backup", exclusive=False):
            Backup(repo).run([new], base=new)
    finally:
        repo.close()
    assert done
    # whatever happened, no snapshot that cannot be restored may exist
    monkeypatch.setattr(fileread, "READ_HOOK", None)
    check = site.run("repo", "check", "--read-data")
    assert check.returncode == 0, check.stdout + check.stderr
