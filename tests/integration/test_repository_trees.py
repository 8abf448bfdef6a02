"""Tree blobs end where the paths say (content-defined), so a re-backup after a few changes in a
big tree writes only the few tree blobs that hold them; readers still just concatenate the blobs."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from coldkeep.repository.backup import Backup
from coldkeep.repository.crypto import KdfParams
from coldkeep.repository.packer import parse_pack
from coldkeep.repository.repository import (
    TREE_BLOB_MAX,
    TREE_MAX_BLOBS,
    TREE_MIN_BITS,
    Repository,
    Snapshot,
    tree_cut_bits,
)
from coldkeep.repository.restore import Restorer
from coldkeep.storage.local import LocalBackend

FAST_KDF = KdfParams(memory_kib=8 * 1024, iterations=1, lanes=1)


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLDKEEP_CACHE_DIR", str(tmp_path / "cache"))


def make_tree(root: Path, dirs: int = 40, per_dir: int = 60) -> list[Path]:
    files = []
    for d in range(dirs):
        sub = root / f"d{d:03d}"
        sub.mkdir(parents=True)
        for i in range(per_dir):
            path = sub / f"f{i:04d}.txt"
            path.write_bytes(f"{d}/{i}\n".encode() * 3)
            files.append(path)
    return files


def tree_blob_sizes(repo: Repository) -> dict[str, int]:
    """Raw length of every tree blob, from the packs themselves."""
    sizes = {}
    for info in repo.backend.list("data/"):
        pack_id = info.key.rsplit("/", 1)[1]
        for entry in parse_pack(repo.keys, repo.backend.get(info.key), pack_id):
            if entry.kind == "tree":
                sizes[entry.id.hex()] = entry.raw_length
    return sizes


def digest_dir(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("passphrase", [None, "tree-secret"])
def test_rebackup_after_a_few_changes_writes_a_few_tree_blobs(tmp_path: Path, passphrase: str | None) -> None:
    src = tmp_path / "src"
    files = make_tree(src)  # 2,400 files in 40 directories: 2,440 entries
    repo = Repository.init(LocalBackend(tmp_path / "repo"), passphrase=passphrase, kdf_params=FAST_KDF)
    first = Backup(repo).run([src]).snapshot
    assert len(first.tree) > 60  # ~2,440 / 16 blobs, where fixed 1 MiB blobs made one
    again = Backup(repo).run([src])
    assert again.snapshot.tree == first.tree and again.new_stored_bytes == 0

    changed = [files[7], files[1000], files[2399]]
    for path in changed:  # new content, new size: same directory entries
        path.write_bytes(b"changed " + path.read_bytes())
    third = Backup(repo).run([src]).snapshot
    new_blobs = [t for t in third.tree if t not in set(first.tree)]
    assert 1 <= len(new_blobs) <= len(changed)
    assert len(third.tree) == len(first.tree)  # modified files move no boundary

    # a new file: its blob, maybe the one after it, and its directory's entry (new mtime) change
    (files[1500].parent / "added.txt").write_bytes(b"new")
    fourth = Backup(repo).run([src]).snapshot
    assert 1 <= len([t for t in fourth.tree if t not in set(third.tree)]) <= 3

    # every tree blob is a whole number of lines, and the concatenation is the walk, in order
    sizes = tree_blob_sizes(repo)
    assert all(sizes[t] > 0 for t in fourth.tree)
    entries = list(repo.iter_tree(fourth))
    assert len(entries) == 2400 + 1 + 40 + 1  # files, added file, directories, the source itself
    assert [e["path"] for e in entries[:3]] == [str(src).lstrip("/"), f"{str(src).lstrip('/')}/d000",
                                                f"{str(src).lstrip('/')}/d001"]  # fmt: skip
    out = tmp_path / "out"
    result = Restorer(repo).run(fourth, out)
    assert not result.errors
    assert digest_dir(out / str(src).lstrip("/")) == digest_dir(src)


def test_boundaries_depend_on_the_repository_key(tmp_path: Path) -> None:
    """Encrypted repositories cut with the keyed hash (as chunk ids): tree blob sizes say nothing
    about paths to someone without the key."""
    src = tmp_path / "src"
    make_tree(src, dirs=10, per_dir=50)
    plain = Repository.init(LocalBackend(tmp_path / "plain"))
    enc = Repository.init(LocalBackend(tmp_path / "enc"), passphrase="k", kdf_params=FAST_KDF)
    a = Backup(plain).run([src], base=src).snapshot
    b = Backup(enc).run([src], base=src).snapshot
    # the same entries (chunk ids aside: keyed in the encrypted one), cut elsewhere
    assert [e["path"] for e in plain.iter_tree(a)] == [e["path"] for e in enc.iter_tree(b)]
    sizes_a = [tree_blob_sizes(plain)[t] for t in a.tree]
    sizes_b = [tree_blob_sizes(enc)[t] for t in b.tree]
    assert sizes_a != sizes_b


def test_cut_bits_grow_with_the_tree() -> None:
    assert tree_cut_bits(0) == tree_cut_bits(10_000) == TREE_MIN_BITS
    assert tree_cut_bits(TREE_MAX_BLOBS << TREE_MIN_BITS) == TREE_MIN_BITS
    assert tree_cut_bits((TREE_MAX_BLOBS << TREE_MIN_BITS) * 2) == TREE_MIN_BITS + 1
    assert tree_cut_bits(1_000_000) == 10  # ~980 blobs of ~1,000 entries
    for n in (1, 5_000, 100_000, 3_000_000):
        assert n >> tree_cut_bits(n) <= TREE_MAX_BLOBS


def _entry(path: str, chunks: int) -> dict[str, Any]:
    return {"path": path, "mode": 0o644, "uid": 0, "gid": 0, "mtime_ns": 1, "type": "file", "size": 0,
            "sha256": "0" * 64, "chunks": ["ab" * 32] * chunks}  # fmt: skip


def test_tree_blobs_stay_bounded_and_empty_trees_still_get_one_blob(tmp_path: Path) -> None:
    repo = Repository.init(LocalBackend(tmp_path / "repo"))
    writer = repo.writer()
    big = [_entry(f"f{i:03d}", 4000) for i in range(12)]  # ~270 KB per line
    tree = repo.write_tree(writer, big)
    empty = repo.write_tree(writer, [])
    writer.finish()
    sizes = tree_blob_sizes(repo)
    assert all(sizes[t] < TREE_BLOB_MAX + 300_000 for t in tree)
    assert len(empty) == 1 and sizes[empty[0]] == 0
    snap = Snapshot(id="", time="2026-01-01T00:00:00Z", host="h", paths=[], tags={}, label="", meta={},
                    tree=tree, summary={})  # fmt: skip
    assert list(repo.iter_tree(snap)) == big


def test_reading_a_tree_fetches_neighbouring_blobs_together(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, dirs=5, per_dir=100)
    backend = LocalBackend(tmp_path / "repo")
    repo = Repository.init(backend)
    snap = Backup(repo).run([src], base=src).snapshot
    assert len(snap.tree) > 10
    calls: list[int] = []
    original = backend.get_range

    def counting(key: str, offset: int, length: int) -> bytes:
        calls.append(length)
        return original(key, offset, length)

    backend.get_range = counting  # type: ignore[method-assign]
    entries = list(repo.iter_tree(snap))
    assert len(entries) == 505
    assert len(calls) == 1  # the tree blobs lie back to back in one pack
    # and a damaged one is still caught, naming it
    tree_id = bytes.fromhex(snap.tree[3])
    loc = repo.cache.get(tree_id)
    assert loc is not None
    pack = tmp_path / "repo" / "data" / loc.pack[:2] / loc.pack
    data = bytearray(pack.read_bytes())
    data[loc.offset + loc.length // 2] ^= 0xFF
    os.chmod(pack, 0o600)
    pack.write_bytes(bytes(data))
    with pytest.raises(Exception, match=snap.tree[3][:16]):
        list(repo.iter_tree(snap))
