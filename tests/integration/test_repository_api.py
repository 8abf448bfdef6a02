"""The repository through its Python API: dedup, safetensors, encryption, retention + prune, locks."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from coldkeep.errors import LockHeld, ObjectExists, UsageError, WrongPassword
from coldkeep.repository.backup import Backup
from coldkeep.repository.crypto import KdfParams, add_slot, list_slots, remove_slot
from coldkeep.repository.locks import Lock, list_locks, locked, remove_stale
from coldkeep.repository.prune import prune
from coldkeep.repository.repository import Repository
from coldkeep.repository.restore import Restorer
from coldkeep.storage.local import LocalBackend

FAST_KDF = KdfParams(memory_kib=8 * 1024, iterations=1, lanes=1)


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLDKEEP_CACHE_DIR", str(tmp_path / "cache"))


def new_repo(tmp_path: Path, passphrase: str | None = None) -> Repository:
    return Repository.init(LocalBackend(tmp_path / "repo"), passphrase=passphrase, kdf_params=FAST_KDF)


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def stored_bytes(repo: Repository) -> int:
    return sum(info.size for info in repo.backend.list("data/"))


def test_backup_restore_round_trip_keeps_metadata(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d" / "e").mkdir(parents=True)
    (src / "d" / "e" / "f.bin").write_bytes(os.urandom(5 * 1024 * 1024 + 17))
    (src / "empty").write_bytes(b"")
    (src / "ütf8 näme.txt").write_text("grüße")
    (src / "exec.sh").write_text("#!/bin/sh\n")
    os.chmod(src / "exec.sh", 0o751)
    os.symlink("d/e/f.bin", src / "link")
    os.utime(src / "empty", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    repo = new_repo(tmp_path)
    result = Backup(repo).run([src], base=src)
    assert result.files == 4 and result.logical_bytes == 5 * 1024 * 1024 + 17 + 0 + 10 + len("grüße".encode())
    out = tmp_path / "out"
    restored = Restorer(repo).run(repo.find_snapshot("latest"), out)
    assert not restored.errors
    assert tree_digest(out) == tree_digest(src)
    assert os.readlink(out / "link") == "d/e/f.bin"
    assert (os.stat(out / "exec.sh").st_mode & 0o777) == 0o751
    assert os.stat(out / "empty").st_mtime_ns == 1_600_000_000_123_456_789
    # --include restores only matching paths
    part = Restorer(repo).run(repo.find_snapshot("latest"), tmp_path / "part", includes=["d/*"])
    assert part.files == 1 and (tmp_path / "part" / "d" / "e" / "f.bin").exists()
    assert not (tmp_path / "part" / "exec.sh").exists()


def test_unchanged_rebackup_reuses_entries_and_changes_cost_only_new_data(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(200):
        (src / f"f{i}.txt").write_bytes(os.urandom(3000))
    repo = new_repo(tmp_path)
    first = Backup(repo).run([src])
    again = Backup(repo).run([src])
    assert again.reused_files == 200
    assert again.new_stored_bytes < 5000  # the tree blob only, and identical trees dedupe to 0
    (src / "f7.txt").write_bytes(os.urandom(3000))
    third = Backup(repo).run([src])
    assert third.reused_files == 199
    assert 3000 <= third.new_stored_bytes < 3000 + 60_000
    assert first.snapshot.id != third.snapshot.id
    assert again.snapshot.parent == first.snapshot.id


def _tensor_file(path: Path, tensors: dict[str, np.ndarray]) -> None:
    save_file(tensors, str(path))


def test_safetensors_unchanged_tensors_dedupe_in_mixed_shards(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    frozen = {f"layer{i}.weight": rng.standard_normal((512, 1024)).astype(np.float16) for i in range(6)}
    changing = {f"head{i}.weight": rng.standard_normal((512, 1024)).astype(np.float16) for i in range(3)}
    ck1, ck2 = tmp_path / "ck1", tmp_path / "ck2"
    ck1.mkdir()
    ck2.mkdir()
    _tensor_file(ck1 / "model.safetensors", {**frozen, **changing})
    changed = {k: (v + np.float16(0.01)).astype(np.float16) for k, v in changing.items()}
    _tensor_file(ck2 / "model.safetensors", {**frozen, **changed})
    changed_bytes = sum(v.nbytes for v in changed.values())
    repo = new_repo(tmp_path)
    Backup(repo).run([ck1], base=ck1)
    second = Backup(repo).run([ck2], base=ck2)
    # new data ≈ the changed tensors (compressed fp16 shrinks a little; header and tree are tiny)
    assert second.new_stored_bytes <= changed_bytes * 1.10
    assert second.new_stored_bytes >= changed_bytes * 0.5


def test_encrypted_repository_round_trip_and_key_slots(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    secret = b"the lab's secret results " * 1000
    (src / "results.txt").write_bytes(secret)
    repo = new_repo(tmp_path, passphrase="correct horse")
    Backup(repo).run([src])
    repo.close()
    # nothing in the repository reveals the plaintext
    for path in (tmp_path / "repo").rglob("*"):
        if path.is_file():
            assert b"secret results" not in path.read_bytes()
    with pytest.raises(WrongPassword):
        Repository.open(LocalBackend(tmp_path / "repo"), "wrong")
    repo = Repository.open(LocalBackend(tmp_path / "repo"), "correct horse")
    from coldkeep.repository.crypto import Keys

    assert isinstance(repo.keys, Keys)
    new_slot = add_slot(repo.backend, repo.keys, "battery staple", kdf_params=FAST_KDF)
    old_slot = next(s.slot_id for s in list_slots(repo.backend) if s.slot_id != new_slot)
    remove_slot(repo.backend, repo.keys, old_slot)
    with pytest.raises(WrongPassword):
        Repository.open(LocalBackend(tmp_path / "repo"), "correct horse")
    reopened = Repository.open(LocalBackend(tmp_path / "repo"), "battery staple")
    Restorer(reopened).run(reopened.find_snapshot("latest"), tmp_path / "out")
    assert (tmp_path / "out" / str(src).lstrip("/") / "results.txt").read_bytes() == secret


def test_forget_then_prune_really_reduces_stored_bytes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    repo = new_repo(tmp_path)
    snaps = []
    for _generation in range(3):
        for i in range(3):
            (src / f"g{i}.bin").write_bytes(os.urandom(2 * 1024 * 1024))
        snaps.append(Backup(repo).run([src]).snapshot)
    before = stored_bytes(repo)
    for s in snaps[:2]:
        repo.delete_snapshot(s.id)
    result = prune(repo, max_unused_pct=5)
    after = stored_bytes(repo)
    assert after < before * 0.5, (before, after)
    assert result.stored_after == after
    out = tmp_path / "out"
    assert not Restorer(repo).run(repo.find_snapshot(snaps[2].id), out).errors
    assert tree_digest(out / str(src).lstrip("/")) == tree_digest(src)
    from coldkeep.repository.check import check

    assert check(repo, read_data=True).ok


def test_prune_repacks_partly_used_packs(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    repo = new_repo(tmp_path)
    for i in range(6):
        (src / f"f{i}.bin").write_bytes(os.urandom(1024 * 1024))
    keep = Backup(repo).run([src / "f0.bin"]).snapshot  # f0 alone
    gone = Backup(repo).run([src]).snapshot  # f1..f5 share packs with nothing else
    repo.delete_snapshot(gone.id)
    before = stored_bytes(repo)
    result = prune(repo, max_unused_pct=5)
    assert stored_bytes(repo) < before - 4 * 1024 * 1024
    assert result.blobs_removed >= 5
    assert not Restorer(repo).run(repo.find_snapshot(keep.id), tmp_path / "out").errors


def test_named_objects_are_write_once(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    data = os.urandom(16 * 1024)
    assert repo.put_named("wal/00000001/000000010000000000000001", data, {"kind": "wal"}) is True
    assert repo.put_named("wal/00000001/000000010000000000000001", data) is False  # identical: fine
    with pytest.raises(ObjectExists):
        repo.put_named("wal/00000001/000000010000000000000001", os.urandom(16 * 1024))
    meta, back = repo.get_named("wal/00000001/000000010000000000000001")
    assert back == data and meta["meta"] == {"kind": "wal"}
    # prune never touches named objects
    prune(repo)
    assert repo.get_named("wal/00000001/000000010000000000000001")[1] == data


def test_locks_conflict_and_stale_detection(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "repo")
    backend.ensure_root()
    with locked(backend, "backup", exclusive=False):
        with locked(backend, "backup", exclusive=False):
            pass  # two shared locks coexist
        with pytest.raises(LockHeld) as info, locked(backend, "prune", exclusive=True):
            pass
        assert info.value.exit_code == 4
        assert "backup" in info.value.message
    assert list_locks(backend) == []
    # a lock left by a dead process is stale and removable; a live one is not
    dead = subprocess.Popen([sys.executable, "-c", "import os; print(os.getpid())"], stdout=subprocess.PIPE)
    dead_pid = int(dead.communicate()[0])
    import json

    # a document as a holder that died left it (another process's lock: nothing registered here)
    dead_doc = json.loads(Lock(backend, "backup", exclusive=True)._doc())
    dead_doc["pid"] = dead_pid
    backend.put("locks/1-deadbeefdead", json.dumps(dead_doc).encode())
    assert [lk.pid for lk in remove_stale(backend)] == [dead_pid]  # `repo unlock` removes it
    backend.put("locks/1-deadbeefdead", json.dumps(dead_doc).encode())
    with locked(backend, "prune", exclusive=True) as prune_lock:  # the dead holder does not block ...
        assert prune_lock.operation == "prune"
        assert [lk.pid for lk in list_locks(backend)] == [os.getpid()]  # ... and its document is gone
    assert list_locks(backend) == []  # nothing piles up until `repo unlock`
    live = Lock(backend, "backup", exclusive=True)
    live.acquire()
    try:
        assert remove_stale(backend) == []
        old = json.loads(backend.get(live.key))
        old["refreshed"] = time.time() - 10 * 3600  # not refreshed for hours, but alive on this host
        backend.put(live.key, json.dumps(old).encode())
        assert remove_stale(backend) == []
    finally:
        live.release()


def test_restore_refuses_paths_outside_target(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    writer = repo.writer()
    data_id = writer.store(b"evil")
    entries = [{"path": "../escape.txt", "type": "file", "mode": 0o644, "uid": 0, "gid": 0, "mtime_ns": 0,
                "size": 4, "sha256": hashlib.sha256(b"evil").hexdigest(), "chunks": [data_id.hex()]}]  # fmt: skip
    from coldkeep.repository.repository import Snapshot

    tree = repo.write_tree(writer, entries)
    writer.finish()
    snap = Snapshot(id="", time="2026-01-01T00:00:00Z", host="h", paths=[], tags={}, label="", meta={},
                    tree=tree, summary={})  # fmt: skip
    repo.save_snapshot(snap)
    with pytest.raises(UsageError):
        Restorer(repo).run(repo.find_snapshot(snap.id), tmp_path / "target")
    assert not (tmp_path / "escape.txt").exists()


def test_cache_is_rebuildable_from_the_repository_alone(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(os.urandom(100_000))
    repo = new_repo(tmp_path)
    Backup(repo).run([src])
    cache_path = repo.cache.path
    repo.close()
    for suffix in ("", "-wal", "-shm"):
        Path(str(cache_path) + suffix).unlink(missing_ok=True)
    again = Repository.open(LocalBackend(tmp_path / "repo"))
    out = tmp_path / "out"
    assert not Restorer(again).run(again.find_snapshot("latest"), out).errors
    assert again.cache.stats()[0] >= 2
