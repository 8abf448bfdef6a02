"""The repository's fast paths keep their promises: the walk sees every entry, reuse is checked in
batches, packs are sealed without copies, restore still refuses paths outside the target.
Behaviour only: speed is for ``bench/``."""

from __future__ import annotations

import hashlib
import os
import random
import stat
from pathlib import Path
from typing import Any

import pytest

from coldkeep.repository import backup as backup_mod
from coldkeep.repository.backup import Backup, walk
from coldkeep.repository.chunker import chunk_file
from coldkeep.repository.crypto import PlainKeys
from coldkeep.repository.format import seal_parts
from coldkeep.repository.packer import PackBuilder, parse_pack
from coldkeep.repository.repository import Repository, Snapshot
from coldkeep.repository.restore import Restorer
from coldkeep.storage.local import LocalBackend

MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLDKEEP_CACHE_DIR", str(tmp_path / "cache"))


def new_repo(tmp_path: Path) -> Repository:
    return Repository.init(LocalBackend(tmp_path / "repo"))


def test_walk_sees_every_entry_type_in_order(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "b" / "c").mkdir(parents=True)
    (root / "a.txt").write_text("a")
    (root / "b" / "c" / "deep.txt").write_text("deep")
    (root / "b" / "ü.txt").write_text("u")
    (root / "empty").mkdir()
    os.symlink("a.txt", root / "link")
    os.symlink("missing", root / "dangling")
    os.mkfifo(root / "fifo")
    warnings: list[str] = []
    seen = [(name, stat.S_IFMT(st.st_mode)) for _, name, st in walk([str(root)], str(root), warnings)]
    # a directory's entries sorted by name, then its subdirectories' in the same order (as before
    # the walk lost its Path objects: the same tree gives the same tree blobs)
    assert seen == [
        ("a.txt", stat.S_IFREG),
        ("b", stat.S_IFDIR),
        ("dangling", stat.S_IFLNK),
        ("empty", stat.S_IFDIR),
        ("fifo", stat.S_IFIFO),
        ("link", stat.S_IFLNK),
        ("b/c", stat.S_IFDIR),
        ("b/ü.txt", stat.S_IFREG),
        ("b/c/deep.txt", stat.S_IFREG),
    ]
    assert not warnings
    # without a base, names are the absolute paths without the leading slash
    paths = {path: name for path, name, _ in walk([str(root / "b")], None, [])}
    assert paths[str(root / "b" / "c" / "deep.txt")] == str(root / "b" / "c" / "deep.txt").lstrip("/")
    # the backup keeps the types, skips the fifo with a warning, and restores the rest
    repo = new_repo(tmp_path)
    result = Backup(repo).run([root], base=root)
    assert any("fifo" in w for w in result.warnings)
    types = {e["path"]: e["type"] for e in repo.iter_tree(result.snapshot)}
    assert types == {"a.txt": "file", "b": "dir", "b/c": "dir", "b/c/deep.txt": "file", "b/ü.txt": "file",
                     "dangling": "symlink", "empty": "dir", "link": "symlink"}  # fmt: skip
    out = tmp_path / "out"
    assert not Restorer(repo).run(result.snapshot, out).errors
    assert (out / "b" / "c" / "deep.txt").read_text() == "deep"
    assert os.readlink(out / "dangling") == "missing"


def test_reuse_is_checked_in_batches_and_refused_for_missing_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backup_mod, "REUSE_BATCH", 7)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(40):
        (src / f"f{i:02}").write_bytes(os.urandom(1000 + i))
    repo = new_repo(tmp_path)
    first = Backup(repo).run([src], base=src)
    assert first.reused_files == 0
    second = Backup(repo).run([src], base=src)
    assert second.reused_files == 40 and second.new_stored_bytes == 0
    # a chunk the index does not have: that file is read again instead of reused
    victim = next(e for e in repo.iter_tree(second.snapshot) if e["path"] == "f13")
    repo.cache.db.execute("DELETE FROM blobs WHERE id = ?", (bytes.fromhex(victim["chunks"][0]),))
    third = Backup(repo).run([src], base=src)
    assert third.reused_files == 39 and third.new_stored_bytes > 0
    assert repo.cache.has(bytes.fromhex(victim["chunks"][0]))
    out = tmp_path / "out"
    assert not Restorer(repo).run(third.snapshot, out).errors
    assert (out / "f13").read_bytes() == (src / "f13").read_bytes()


def test_batched_index_lookups(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    writer = repo.writer()
    ids = [writer.store(os.urandom(100) + i.to_bytes(4, "little")) for i in range(1200)]
    writer.finish()
    unknown = [bytes([i]) * 32 for i in range(3)]
    assert repo.cache.present([*ids, *unknown]) == set(ids)
    located = repo.cache.get_many([*ids, *ids[:10], *unknown])
    assert set(located) == set(ids)
    for blob_id in ids[:50]:
        assert located[blob_id] == repo.cache.get(blob_id)


def test_pack_of_parts_equals_pack_of_bytes() -> None:
    keys = PlainKeys()
    blobs = [os.urandom(5000), b"a" * 5000, b"tiny"]
    by_parts, by_bytes = PackBuilder(), PackBuilder()
    for i, blob in enumerate(blobs):
        blob_id = bytes([i]) * 32
        parts, length, _ = seal_parts(keys, memoryview(blob), 3, blob_id)
        assert length == sum(len(p) for p in parts)
        by_parts.add(blob_id, "data", parts, len(blob))
        by_bytes.add(blob_id, "data", b"".join(parts), len(blob))
    pid_a, data_a, entries_a = by_parts.finish(keys)
    pid_b, data_b, entries_b = by_bytes.finish(keys)
    assert pid_a == pid_b and bytes(data_a) == bytes(data_b) and entries_a == entries_b
    assert parse_pack(keys, bytes(data_a), pid_a) == entries_a


def _snapshot_with(repo: Repository, entries: list[dict[str, Any]]) -> Snapshot:
    writer = repo.writer()
    for entry in entries:
        if entry["type"] == "file":
            entry["chunks"] = [writer.store(entry.pop("content")).hex()]
    tree = repo.write_tree(writer, entries)
    writer.finish()
    snap = Snapshot(id="", time="2026-01-01T00:00:00Z", host="h", paths=[], tags={}, label="", meta={},
                    tree=tree, summary={})  # fmt: skip
    repo.save_snapshot(snap)
    return snap


def _file(path: str, content: bytes) -> dict[str, Any]:
    return {"path": path, "type": "file", "mode": 0o644, "uid": 0, "gid": 0, "mtime_ns": 0,
            "size": len(content), "sha256": hashlib.sha256(content).hexdigest(), "content": content}  # fmt: skip


def test_restore_refuses_a_symlinked_directory_already_in_the_target(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    snap = _snapshot_with(repo, [_file("d/x", b"evil"), _file("ok", b"fine")])
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "target"
    target.mkdir()
    os.symlink(outside, target / "d")
    result = Restorer(repo).run(snap, target)
    assert result.errors and "refusing" in result.errors[0]
    assert not (outside / "x").exists()
    assert (target / "ok").read_bytes() == b"fine"


def test_restore_never_writes_through_a_symlink_of_the_snapshot(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    link = {"path": "s", "type": "symlink", "target": str(outside), "mode": 0o777, "uid": 0, "gid": 0,
            "mtime_ns": 0}  # fmt: skip
    snap = _snapshot_with(
        repo, [link, _file("s/f", b"evil"), {**link, "path": "t"}, _file("t/../../g", b"x")]
    )
    with pytest.raises(Exception, match="outside the target"):
        Restorer(repo).run(snap, tmp_path / "target")
    assert not (tmp_path / "target").exists() or not any((tmp_path / "target").iterdir())
    # without the '..' entry: the file lands in a real directory, the symlink is refused
    snap = _snapshot_with(repo, [link, _file("s/f", b"evil")])
    result = Restorer(repo).run(snap, tmp_path / "target2")
    assert result.errors
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\n",
        b'{"path":"a","type":"file"}\n{"path":"b\\nc","type":"dir"}\n',
        b'{"path":"a"}\n\n{"path":"b"}\n',  # blank line: parsed line by line
        b'{"path":"a"}\r\n{"path":"b"}',
        b'{"path":"\xc3\xbc,x"}\n[1]\n',  # not every line an object
    ],
)
def test_tree_blob_parsing_in_one_call_matches_line_by_line(data: bytes) -> None:
    import json

    from coldkeep.repository.repository import _tree_lines

    assert _tree_lines(data) == [json.loads(line) for line in data.splitlines() if line]


def test_tree_blob_with_a_damaged_line_still_fails() -> None:
    from coldkeep.repository.repository import _tree_lines

    with pytest.raises(ValueError):
        _tree_lines(b'{"path":"a"}\n{"path":\n')


def test_small_files_read_whole_chunk_like_chunk_file(tmp_path: Path) -> None:
    import numpy as np
    from safetensors.numpy import save as save_safetensors

    from coldkeep.repository.chunker import ChunkerParams

    params = ChunkerParams(
        min_size=64 * 1024, avg_size=128 * 1024, max_size=512 * 1024, page_chunk=256 * 1024
    )
    repo = Repository.init(LocalBackend(tmp_path / "repo"), chunker=params)
    rng = np.random.default_rng(5)
    tensors = {f"t{i}": rng.standard_normal(20_000 + i).astype(np.float16) for i in range(6)}
    files = {
        "empty": b"",
        "tiny": b"0123456789",
        "random.bin": os.urandom(3 * MiB + 7),
        "blobs/0f3a": save_safetensors(tensors),  # a safetensors file without the extension
        "model.safetensors": save_safetensors(tensors),
        "base/1/1259": os.urandom(2 * 256 * 1024 + 8192),  # a relation file: pages
    }
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content)
    backup = Backup(repo)
    writer = repo.writer()
    for name, content in files.items():
        path = str(tmp_path / name)
        with chunk_file(path, "auto", params) as chunks:
            expected = [repo.keys.chunk_id(bytes(view)).hex() for view in chunks]
        sha, ids, _, nread = backup._file(writer, None, path, len(content))  # type: ignore[arg-type]
        assert nread == len(content)
        assert (sha, ids) == (hashlib.sha256(content).hexdigest(), expected), name
    writer.finish()


def test_pack_buffers_are_reused_without_mixing_packs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLDKEEP_PACK_TARGET", str(64 * 1024))
    repo = new_repo(tmp_path)
    writer = repo.writer()
    reused: list[int] = []
    original = PackBuilder.__init__

    def spy(self: PackBuilder, capacity: int = 0, buffer: Any = None) -> None:
        reused.append(buffer is not None)
        original(self, capacity, buffer)

    monkeypatch.setattr(PackBuilder, "__init__", spy)
    blobs = {}
    for i in range(300):
        # incompressible (stored raw, copied from a view), or hex text whose zstd output is big
        # enough to be copied with the GIL released
        data = os.urandom(100_000 + i).hex().encode() if i % 10 == 0 else os.urandom(1000 + 37 * i)
        blobs[writer.store(data)] = data
    writer.finish()
    assert writer.stats.packs >= 20 and any(reused)
    assert writer._spare == []  # given back at finish
    for key in [info.key for info in repo.backend.list("data/")]:
        pack_id = key.rsplit("/", 1)[1]
        parse_pack(repo.keys, repo.backend.get(key), pack_id)  # footer, id and header all verify
    for blob_id, data in blobs.items():
        assert repo.read_blob(blob_id) == data


def test_restore_of_a_very_deep_path(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    name = "/".join(["d"] * 1200) + "/f"  # deeper than Python's recursion limit
    snap = _snapshot_with(repo, [_file(name, b"deep")])
    try:
        result = Restorer(repo).run(snap, tmp_path / "t")
        assert not result.errors
        assert (tmp_path / "t" / name).read_bytes() == b"deep"
    finally:
        _remove_deep(tmp_path / "t")


def _remove_deep(root: Path) -> None:
    """Remove a tree deeper than the recursion limit (pytest's rmtree and os.walk recurse on 3.11)."""
    stack = [str(root)]
    while stack:
        top = stack[-1]
        subdirs = []
        with os.scandir(top) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append(entry.path)
                else:
                    os.unlink(entry.path)
        if subdirs:
            stack.extend(subdirs)
        else:
            os.rmdir(stack.pop())


class CountingBackend(LocalBackend):
    """A local backend that counts ranged reads (restore reads runs of chunks with one each)."""

    ranged = 0

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        type(self).ranged += 1
        return super().get_range(key, offset, length)


def small_chunk_repo(tmp_path: Path) -> tuple[Repository, Path, bytes]:
    from coldkeep.repository.chunker import ChunkerParams

    repo = Repository.init(
        CountingBackend(tmp_path / "repo"),
        chunker=ChunkerParams(min_size=64 * 1024, avg_size=128 * 1024, max_size=256 * 1024),
    )
    src = tmp_path / "src"
    src.mkdir()
    big = os.urandom(9 * MiB + 12345)
    (src / "big.bin").write_bytes(big)
    (src / "one.txt").write_bytes(b"one chunk")
    Backup(repo).run([src], base=src)
    return repo, src, big


@pytest.mark.parametrize("verify_files", [True, False])
def test_restore_reads_runs_of_chunks_with_one_request_each(tmp_path: Path, verify_files: bool) -> None:
    from coldkeep.repository import restore as restore_mod

    repo, _, big = small_chunk_repo(tmp_path)
    snap = repo.find_snapshot("latest")
    entry = next(e for e in repo.iter_tree(snap) if e["path"].endswith("big.bin"))
    assert len(entry["chunks"]) > 40
    assert 2 * MiB == restore_mod.RUN_BYTES  # random ~170 KB chunks: runs of up to ~12
    CountingBackend.ranged = 0
    out = tmp_path / "out"
    result = Restorer(repo, verify_files=verify_files).run(snap, out)
    assert not result.errors and result.files == 2
    assert (out / "big.bin").read_bytes() == big
    assert (out / "one.txt").read_bytes() == b"one chunk"
    # one ranged read per run of <= 2 MiB (plus the small file), not one per chunk
    assert 5 <= CountingBackend.ranged <= len(entry["chunks"]) // 2


@pytest.mark.parametrize("verify_files", [True, False])
def test_a_flipped_byte_inside_a_run_fails_the_file_and_leaves_nothing(
    tmp_path: Path, verify_files: bool
) -> None:
    from coldkeep.repository.packer import pack_key

    repo, _, _ = small_chunk_repo(tmp_path)
    snap = repo.find_snapshot("latest")
    entry = next(e for e in repo.iter_tree(snap) if e["path"].endswith("big.bin"))
    victim = bytes.fromhex(entry["chunks"][len(entry["chunks"]) // 2])
    loc = repo.cache.get(victim)
    assert loc is not None
    pack = tmp_path / "repo" / pack_key(loc.pack)
    raw = bytearray(pack.read_bytes())
    raw[loc.offset + loc.length // 2] ^= 0x01
    os.chmod(pack, 0o600)
    pack.write_bytes(bytes(raw))
    out = tmp_path / "out"
    result = Restorer(repo, verify_files=verify_files).run(snap, out)
    assert len(result.errors) == 1
    assert "big.bin" in result.errors[0] and victim.hex()[:16] in result.errors[0]
    assert not (out / "big.bin").exists()
    assert [p.name for p in out.iterdir()] == ["one.txt"]  # no temp file left behind


def test_runs_are_bounded_by_content_size_for_a_repeated_chunk(tmp_path: Path) -> None:
    """An all-zero page chunk repeated 1,000 times is ~20 bytes in the pack: runs must still hold
    at most RUN_BYTES of content (memory), and never mix packs."""
    from coldkeep.repository import restore as restore_mod
    from coldkeep.repository.packer import BlobEntry

    zero = BlobEntry(b"z" * 32, "data", "p1", 100, 20, 128 * 1024)
    other = BlobEntry(b"o" * 32, "data", "p2", 0, 5000, 128 * 1024)
    located = {zero.id: zero, other.id: other}
    entry = {"chunks": [zero.id.hex()] * 1000 + [other.id.hex()] + [zero.id.hex()] * 3}
    runs = Restorer(new_repo(tmp_path))._runs(entry, located)
    assert [blob for run in runs for blob, _ in run] == [bytes.fromhex(c) for c in entry["chunks"]]
    for run in runs:
        assert len({loc.pack for _, loc in run}) == 1
        assert sum(loc.raw_length for _, loc in run) <= restore_mod.RUN_BYTES
    assert len(runs) == 1000 // 16 + 1 + 1 + 1  # 62 full runs of 16, the rest, p2, the tail


def test_a_writer_compresses_at_its_own_level(tmp_path: Path) -> None:
    """``writer(level=N)`` (pg backup's ``[postgres] compression_level``) overrides the
    repository's level for the chunks it stores; they read back the same."""
    repo = new_repo(tmp_path)
    text = b"".join(
        b"row %d: the quick brown fox jumps over the lazy dog\n" % (i % 977) for i in range(20000)
    )
    sizes = {}
    for level in (-7, 19):
        data = text + str(level).encode()  # a distinct chunk per level
        writer = repo.writer(level=level)
        blob_id = writer.store(data)
        writer.finish()
        loc = repo.cache.get(blob_id)
        assert loc is not None and repo.read_blob(blob_id) == data
        sizes[level] = loc.length
    assert sizes[19] < sizes[-7] < len(text)


@pytest.mark.parametrize("corrupt", [False, True])
def test_big_files_are_written_in_parallel_segments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, corrupt: bool
) -> None:
    """Without the whole-file SHA-256 (pg restore) a big file is written by several threads at
    their offsets: the bytes are the same, and a corrupt chunk in any segment still fails the
    file and leaves nothing behind."""
    from coldkeep.repository import restore as restore_mod
    from coldkeep.repository.packer import pack_key

    monkeypatch.setattr(restore_mod, "SEGMENT_MIN", 2 * MiB)
    monkeypatch.setattr(restore_mod, "SEGMENT_PART", 1 * MiB)
    repo, _, big = small_chunk_repo(tmp_path)
    snap = repo.find_snapshot("latest")
    if corrupt:
        entry = next(e for e in repo.iter_tree(snap) if e["path"].endswith("big.bin"))
        victim = bytes.fromhex(entry["chunks"][-3])  # in the last segment
        loc = repo.cache.get(victim)
        assert loc is not None
        pack = tmp_path / "repo" / pack_key(loc.pack)
        raw = bytearray(pack.read_bytes())
        raw[loc.offset + 7] ^= 0x40
        os.chmod(pack, 0o600)
        pack.write_bytes(bytes(raw))
    calls: list[int] = []
    original = Restorer._write_segments

    def counting(self: Restorer, *args: Any) -> int:
        calls.append(1)
        return original(self, *args)

    monkeypatch.setattr(Restorer, "_write_segments", counting)
    out = tmp_path / "out"
    result = Restorer(repo, verify_files=False, durable=True, threads=4).run(snap, out)
    assert calls == [1]  # big.bin only; one.txt is small
    if corrupt:
        assert len(result.errors) == 1 and "big.bin" in result.errors[0]
        assert sorted(p.name for p in out.iterdir()) == ["one.txt"]
    else:
        assert not result.errors
        assert (out / "big.bin").read_bytes() == big


def test_small_files_are_read_a_run_at_a_time_and_keep_their_metadata(tmp_path: Path) -> None:
    """One-chunk files restored in groups: neighbours' chunks (one pack, close together) come in
    one ranged read, and every file gets its content, mode and mtime."""
    repo = Repository.init(CountingBackend(tmp_path / "repo"))
    src = tmp_path / "src"
    rng = random.Random(7)
    files: dict[str, bytes] = {}
    for d in range(4):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(40):
            name = f"d{d}/f{i:02d}.txt"
            files[name] = rng.randbytes(rng.randrange(0, 20_000))
            (src / name).write_bytes(files[name])
            os.chmod(src / name, 0o640 if i % 2 else 0o600)
            os.utime(src / name, ns=(1_600_000_000_000_000_000 + i, 1_600_000_000_000_000_000 + i))
    Backup(repo).run([src], base=src)
    snap = repo.find_snapshot("latest")
    CountingBackend.ranged = 0
    out = tmp_path / "out"
    result = Restorer(repo).run(snap, out)
    assert not result.errors and result.files == len(files)
    assert CountingBackend.ranged <= len(files) // 4  # groups of 16 neighbours, not one read per file
    for name, content in files.items():
        got = out / name
        assert got.read_bytes() == content
        st, orig = got.stat(), (src / name).stat()
        assert stat.S_IMODE(st.st_mode) == stat.S_IMODE(orig.st_mode)
        assert st.st_mtime_ns == orig.st_mtime_ns
    assert not list(out.rglob(".coldkeep-restore-*"))


def test_an_existing_file_in_the_target_is_replaced_not_written_into(tmp_path: Path) -> None:
    """Small files are created with O_EXCL; one that already exists (here a hard link to a file
    outside the target) is replaced by a rename, so the file outside keeps its content."""
    repo = new_repo(tmp_path)
    snap = _snapshot_with(repo, [_file("a", b"restored a"), _file("b", b"restored b"), _file("e", b"")])
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious")
    target = tmp_path / "target"
    target.mkdir()
    os.link(outside, target / "a")
    result = Restorer(repo).run(snap, target)
    assert not result.errors, result.errors
    assert outside.read_bytes() == b"precious"
    assert (target / "a").read_bytes() == b"restored a"
    assert (target / "b").read_bytes() == b"restored b"
    assert (target / "e").read_bytes() == b""
    assert sorted(p.name for p in target.iterdir()) == ["a", "b", "e"]


def test_small_files_are_backed_up_in_groups_with_one_index_query_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files up to GROUP_FILE go to the workers a group at a time: the group's chunks are looked
    up with one query (no per-chunk ``has``), duplicates inside a group are stored once, empty
    files and a small safetensors file (tensor-aligned chunks) come back exactly, and files above
    GROUP_FILE still take the per-file path."""
    import numpy as np
    from safetensors.numpy import save_file

    from coldkeep.repository.index import IndexCache

    repo = new_repo(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(3)
    expected: dict[str, bytes] = {}
    shared = rng.randbytes(30_000)
    for i in range(100):
        content = shared if i % 10 == 0 else rng.randbytes(rng.randrange(0, 50_000))
        expected[f"f{i:03d}"] = content
    expected["big"] = rng.randbytes(backup_mod.GROUP_FILE + 1)
    for name, content in expected.items():
        (src / name).write_bytes(content)
    save_file({"a": np.arange(1000, dtype=np.float16), "b": np.ones(3000, dtype=np.float16)},
              str(src / "t.safetensors"))  # fmt: skip
    expected["t.safetensors"] = (src / "t.safetensors").read_bytes()
    calls = {"has": 0, "present": 0}
    real_has, real_present = IndexCache.has, IndexCache.present

    def has(self: IndexCache, blob_id: bytes) -> bool:
        calls["has"] += 1
        return real_has(self, blob_id)

    def present(self: IndexCache, blob_ids: Any) -> set[bytes]:
        calls["present"] += 1
        return real_present(self, blob_ids)

    monkeypatch.setattr(IndexCache, "has", has)
    monkeypatch.setattr(IndexCache, "present", present)
    result = Backup(repo).run([src], base=src)
    assert result.files == len(expected)
    # the 2 MiB file's chunks each ask `has`; the 101 small files ask in a few group queries
    assert calls["has"] < 10
    assert 1 <= calls["present"] <= 101 // backup_mod.GROUP_FILES + 3 + 2  # + tree blobs
    tensor = next(e for e in repo.iter_tree(result.snapshot) if e["path"] == "t.safetensors")
    assert len(tensor["chunks"]) >= 2  # header + tensors: not one CDC chunk
    out = tmp_path / "out"
    restored = Restorer(repo).run(result.snapshot, out)
    assert not restored.errors
    for name, content in expected.items():
        assert (out / name).read_bytes() == content
    # the shared content is stored once
    assert result.new_stored_bytes < sum(len(c) for c in expected.values()) - 8 * len(shared)
