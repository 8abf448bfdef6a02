"""Lost index documents: the index is rebuilt from the packs' own headers."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from coldkeep.repository.backup import Backup
from coldkeep.repository.check import check
from coldkeep.repository.crypto import KdfParams
from coldkeep.repository.rebuild import rebuild_index
from coldkeep.repository.repository import Repository
from coldkeep.repository.restore import Restorer
from coldkeep.storage.local import LocalBackend


def test_rebuild_index_after_losing_every_index_document(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLDKEEP_CACHE_DIR", str(tmp_path / "cache"))
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        (src / f"f{i}").write_bytes(os.urandom(300_000 * (i + 1)))
    repo = Repository.init(LocalBackend(tmp_path / "repo"), passphrase="pw", kdf_params=KdfParams(8192, 1, 1))
    snap = Backup(repo).run([src], base=src).snapshot
    repo.close()
    for index in (tmp_path / "repo" / "index").iterdir():
        index.unlink()
    broken = Repository.open(LocalBackend(tmp_path / "repo"), "pw")
    assert not check(broken).ok  # chunks are no longer indexed
    result = rebuild_index(broken)
    assert result.packs >= 1 and result.blobs >= 6 and not result.unreadable
    assert check(broken, read_data=True).ok
    out = tmp_path / "out"
    assert not Restorer(broken).run(broken.find_snapshot(snap.id), out).errors
    for p in src.iterdir():
        assert hashlib.sha256((out / p.name).read_bytes()).digest() == hashlib.sha256(p.read_bytes()).digest()
