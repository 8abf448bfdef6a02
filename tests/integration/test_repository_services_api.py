"""The API the checkpoint, dataset and drill services build on (issue 12 item 8): the snapshot
catalog (query by kind and tags without reading every document), ``verify_snapshot`` (every
stored byte, and a live tree against it) and ``open_entry`` (one file streamed and verified)."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import tarfile
import time
from pathlib import Path

import pytest
from tests.helpers import flip_byte

from coldkeep.errors import IntegrityError, NotFound, UsageError
from coldkeep.repository.backup import Backup
from coldkeep.repository.chunker import ChunkerParams
from coldkeep.repository.crypto import KdfParams
from coldkeep.repository.format import SNAPSHOT_PREFIX
from coldkeep.repository.packer import pack_key
from coldkeep.repository.repository import Repository
from coldkeep.repository.snapshot import Snapshot
from coldkeep.repository.verify import RACY_NS, HotDigests
from coldkeep.storage.base import Backend
from coldkeep.storage.local import LocalBackend
from coldkeep.storage.wrappers import WrapperBackend

MiB = 1024 * 1024
FAST_KDF = KdfParams(memory_kib=8 * 1024, iterations=1, lanes=1)
SMALL_CHUNKS = ChunkerParams(min_size=64 * 1024, avg_size=128 * 1024, max_size=256 * 1024)


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLDKEEP_CACHE_DIR", str(tmp_path / "cache"))


class CountingBackend(WrapperBackend):
    """The local backend, counting the snapshot documents read through it."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.snapshot_gets = 0

    def get(self, key: str) -> bytes:
        if key.startswith(SNAPSHOT_PREFIX):
            self.snapshot_gets += 1
        return super().get(key)


def open_repo(tmp_path: Path, passphrase: str | None = None) -> Repository:
    return Repository.open(CountingBackend(LocalBackend(tmp_path / "repo")), passphrase)


def counter(repo: Repository) -> CountingBackend:
    assert isinstance(repo.backend, CountingBackend)
    return repo.backend


def make_snapshots(tmp_path: Path, passphrase: str | None = None) -> list[Snapshot]:
    """Six snapshots of three kinds with overlapping tags."""
    Repository.init(LocalBackend(tmp_path / "repo"), passphrase=passphrase, kdf_params=FAST_KDF).close()
    repo = open_repo(tmp_path, passphrase)
    src = tmp_path / "src"
    src.mkdir()
    plan = [
        ("checkpoint", {"phase": "3", "type": "best"}),
        ("checkpoint", {"phase": "3", "type": "checkpoint"}),
        ("checkpoint", {"phase": "4", "type": "best"}),
        ("dataset", {"version": "v1"}),
        ("dataset", {"version": "v2", "phase": "3"}),
        ("files", {}),
    ]
    snaps = []
    for i, (kind, tags) in enumerate(plan):
        (src / "f.txt").write_text(f"state {i}\n")
        snaps.append(Backup(repo).run([src], base=src, kind=kind, tags=tags).snapshot)
    repo.close()
    shutil.rmtree(tmp_path / "cache")  # the backups' own listings filled a catalog: start without
    return snaps


def listing(repo: Repository, kind: str | None = None, tags: dict[str, str] | None = None) -> list[str]:
    """The ids a query should give, from every document read directly (no catalog)."""
    snaps = [repo.load_snapshot_id(i) for i in repo.snapshot_ids()]
    chosen = [
        s
        for s in snaps
        if (kind is None or s.kind == kind) and all(s.tags.get(k) == v for k, v in (tags or {}).items())
    ]
    return [s.id for s in sorted(chosen, key=lambda s: (s.time, s.id))]


QUERIES = [
    (None, None),
    ("checkpoint", None),
    ("checkpoint", {"phase": "3"}),
    ("checkpoint", {"phase": "3", "type": "best"}),
    (None, {"phase": "3"}),
    ("dataset", {"version": "v2"}),
    ("dataset", {"version": "v3"}),
    ("nothing", None),
]


# -- the snapshot catalog ---------------------------------------------------------------------


@pytest.mark.parametrize("passphrase", [None, "catalog pass"], ids=["plain", "encrypted"])
def test_catalog_queries_match_a_full_listing_and_read_each_document_once(
    tmp_path: Path, passphrase: str | None
) -> None:
    made = make_snapshots(tmp_path, passphrase)
    repo = open_repo(tmp_path, passphrase)
    first = [s.id for s in repo.list_snapshots()]
    assert first == [s.id for s in made]
    assert counter(repo).snapshot_gets == len(made)  # every document read once, into the catalog
    for kind, tags in QUERIES:
        got = repo.list_snapshots(tags, kind=kind)
        assert [s.id for s in got] == listing(repo, kind, tags), (kind, tags)
    counter(repo).snapshot_gets = 0
    for kind, tags in QUERIES:
        repo.list_snapshots(tags, kind=kind)
    repo.find_snapshot("latest")
    assert counter(repo).snapshot_gets == 0  # the queries read no document
    # the catalog's snapshots are the documents' snapshots, tree and meta included
    assert {s.id: s for s in repo.list_snapshots()} == {
        i: repo.load_snapshot_id(i) for i in repo.snapshot_ids()
    }
    repo.close()

    # another process (a new Repository) finds the catalog filled and reads nothing either
    again = open_repo(tmp_path, passphrase)
    assert [s.id for s in again.list_snapshots(kind="checkpoint")] == listing(again, "checkpoint")
    assert counter(again).snapshot_gets == len(made)  # only listing() above read them
    again.close()


def test_catalog_follows_new_and_removed_snapshots(tmp_path: Path) -> None:
    made = make_snapshots(tmp_path)
    repo = open_repo(tmp_path)
    repo.list_snapshots()
    # a snapshot written by another process appears (its document is read, only it)
    other = open_repo(tmp_path)
    (tmp_path / "src" / "f.txt").write_text("new\n")
    new = Backup(other).run([tmp_path / "src"], base=tmp_path / "src", kind="dataset", tags={"version": "v3"})
    other.close()
    counter(repo).snapshot_gets = 0
    assert [s.id for s in repo.list_snapshots({"version": "v3"}, kind="dataset")] == [new.snapshot.id]
    assert counter(repo).snapshot_gets == 1
    # a forgotten one disappears from every query
    repo.delete_snapshot(made[0].id)
    assert made[0].id not in [s.id for s in repo.list_snapshots()]
    assert [s.id for s in repo.list_snapshots({"type": "best"}, kind="checkpoint")] == [made[2].id]
    repo.close()


@pytest.mark.parametrize("how", ["flipped", "truncated"])
def test_catalog_survives_a_damaged_document(
    tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    made = make_snapshots(tmp_path)
    repo = open_repo(tmp_path)
    assert len(repo.list_snapshots()) == len(made)  # all cached
    victim = made[1]
    path = tmp_path / "repo" / "snapshots" / victim.id
    if how == "flipped":
        flip_byte(path)
    else:
        path.write_bytes(path.read_bytes()[:-10])
    os.utime(path, ns=(path.stat().st_mtime_ns + 10**9,) * 2)  # rewritten later, whatever the clock's grain
    with caplog.at_level(logging.WARNING):
        got = repo.list_snapshots(kind="checkpoint")
    assert [s.id for s in got] == [made[0].id, made[2].id]
    assert victim.id in repo.damaged_snapshots
    assert f"snapshot {victim.id} is damaged" in caplog.text
    # still skipped by the next listing (it is not cached as readable), still raised when strict
    assert victim.id not in [s.id for s in repo.list_snapshots()]
    with pytest.raises(IntegrityError, match=victim.id[:8]):
        repo.list_snapshots(strict=True)
    repo.close()


def test_catalog_is_rebuilt_after_the_cache_is_deleted_or_damaged(tmp_path: Path) -> None:
    made = make_snapshots(tmp_path)
    repo = open_repo(tmp_path)
    expected = [s.id for s in repo.list_snapshots(kind="checkpoint")]
    assert repo.catalog is not None
    path = repo.catalog.path
    assert path.is_file() and path.stat().st_mode & 0o077 == 0
    repo.close()

    for damage in ("deleted", "garbage"):
        for leftover in path.parent.glob(path.name + "*"):
            leftover.unlink()
        if damage == "garbage":
            path.write_bytes(b"this is not an SQLite database" * 100)
        repo = open_repo(tmp_path)
        assert [s.id for s in repo.list_snapshots(kind="checkpoint")] == expected, damage
        assert counter(repo).snapshot_gets == len(made), damage  # read again from the repository
        repo.close()

    # `repo rebuild-cache` empties and refills it
    for leftover in path.parent.glob(path.name + "*"):
        leftover.unlink()
    repo = open_repo(tmp_path)
    assert repo.rebuild_catalog() == len(made)
    counter(repo).snapshot_gets = 0
    assert [s.id for s in repo.list_snapshots(kind="checkpoint")] == expected
    assert counter(repo).snapshot_gets == 0
    repo.close()


# -- verify_snapshot ------------------------------------------------------------------------------


def make_tree(root: Path) -> dict[str, bytes]:
    """Small files, two multi-chunk ones, a symlink and an empty directory."""
    files = {
        "a.txt": b"alpha\n",
        "sub/b.bin": os.urandom(3000),
        "sub/c.bin": os.urandom(5000),
        "sub/deep/d.txt": b"delta\n" * 100,
        "big1.bin": os.urandom(3 * MiB + 7),
        "big2.bin": os.urandom(2 * MiB + 3),
        "empty": b"",
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    os.symlink("a.txt", root / "link")
    (root / "emptydir").mkdir()
    return files


def tree_repo(
    tmp_path: Path, passphrase: str | None = None
) -> tuple[Repository, Snapshot, Path, dict[str, bytes]]:
    repo = Repository.init(
        LocalBackend(tmp_path / "repo"), passphrase=passphrase, chunker=SMALL_CHUNKS, kdf_params=FAST_KDF
    )
    src = tmp_path / "src"
    src.mkdir()
    files = make_tree(src)
    snap = Backup(repo).run([src], base=src, kind="checkpoint").snapshot
    return repo, snap, src, files


def flip_chunk(tmp_path: Path, repo: Repository, snap: Snapshot, name: str, which: int = 0) -> None:
    """Flip a byte in the middle of the stored bytes of chunk ``which`` of file ``name``."""
    entry = next(e for e in repo.iter_tree(snap) if e["path"] == name)
    loc = repo.cache.get(bytes.fromhex(entry["chunks"][which]))
    assert loc is not None
    flip_byte(tmp_path / "repo" / pack_key(loc.pack), loc.offset + loc.length // 2)


@pytest.mark.parametrize("passphrase", [None, "verify pass"], ids=["plain", "encrypted"])
def test_verify_snapshot_passes_and_names_every_damaged_file(tmp_path: Path, passphrase: str | None) -> None:
    repo, snap, src, files = tree_repo(tmp_path, passphrase)
    result = repo.verify_snapshot(snap, src)
    assert result.ok, result.problems
    assert result.files == len(files) and result.bytes == sum(len(d) for d in files.values())
    assert result.live_files == len(files)

    flip_chunk(tmp_path, repo, snap, "big1.bin", which=3)
    flip_chunk(tmp_path, repo, snap, "sub/c.bin")
    result = repo.verify_snapshot(snap)
    assert not result.ok
    assert result.paths() == result.paths("damaged") == ["big1.bin", "sub/c.bin"]
    assert all("corrupt" in p.detail or "decryption failed" in p.detail for p in result.problems)
    # the live tree is still what the snapshot records: only the stored copy fails
    assert repo.verify_snapshot(snap, src).paths() == ["big1.bin", "sub/c.bin"]
    repo.close()


def test_verify_snapshot_names_every_difference_of_the_live_tree(tmp_path: Path) -> None:
    repo, snap, src, files = tree_repo(tmp_path)
    data = bytearray(files["big2.bin"])
    data[-1] ^= 0xFF
    (src / "big2.bin").write_bytes(bytes(data))  # same size, other content
    (src / "sub" / "b.bin").write_bytes(files["sub/b.bin"] + b"x")  # other size
    (src / "sub" / "deep" / "d.txt").unlink()  # missing
    (src / "new.txt").write_text("not backed up\n")  # extra
    (src / "emptydir" / "late.bin").write_bytes(b"late")  # extra, in a directory the snapshot has
    (src / "link").unlink()
    os.symlink("sub/b.bin", src / "link")  # another target
    (src / "empty").unlink()
    (src / "empty").mkdir()  # a directory where the snapshot has a file
    os.mkfifo(src / "fifo")  # special files are not compared
    result = repo.verify_snapshot(snap, src)
    kinds = {(p.path, p.kind) for p in result.problems}
    assert kinds == {
        ("big2.bin", "different"),
        ("sub/b.bin", "different"),
        ("sub/deep/d.txt", "missing"),
        ("new.txt", "extra"),
        ("emptydir/late.bin", "extra"),
        ("link", "different"),
        ("empty", "different"),
    }, result.problems
    details = {p.path: p.detail for p in result.problems}
    assert "SHA-256" in details["big2.bin"] and "3001 bytes on disk, 3000" in details["sub/b.bin"]
    assert "'sub/b.bin'" in details["link"] and "a directory on disk" in details["empty"]
    # the stored copy itself is intact
    assert repo.verify_snapshot(snap).ok
    repo.close()


def test_verify_snapshot_trusts_what_the_backup_just_read_only_for_untouched_files(tmp_path: Path) -> None:
    """``hashed`` (the backup's own SHA-256 of the hot bytes) spares reading an unchanged live file
    again; a file written since (even with its size and mtime put back) or too recent is read."""
    repo = Repository.init(LocalBackend(tmp_path / "repo"), chunker=SMALL_CHUNKS)
    src = tmp_path / "src"
    src.mkdir()
    files = make_tree(src)
    # a backup that started well after the files were written (none of them racy)
    hashed = HotDigests(started_ns=time.time_ns() + 3 * RACY_NS)
    snap = Backup(repo).run([src], base=src, kind="checkpoint", on_entry=hashed.add).snapshot
    assert sorted(hashed.files) == sorted(files)
    result = repo.verify_snapshot(snap, src, hashed=hashed)
    assert result.ok and result.live_files == len(files) and result.live_read == 0, result
    assert result.bytes == sum(len(d) for d in files.values())  # every stored byte still read back

    big = src / "big2.bin"
    before = big.stat()
    data = bytearray(files["big2.bin"])
    data[-1] ^= 0xFF
    big.write_bytes(bytes(data))  # same size, other content ...
    os.utime(big, ns=(before.st_atime_ns, before.st_mtime_ns))  # ... and the old mtime: ctime moved
    result = repo.verify_snapshot(snap, src, hashed=hashed)
    assert [(p.path, p.kind) for p in result.problems] == [("big2.bin", "different")]
    assert result.live_read == 1

    recent = HotDigests.started()  # files written less than RACY_NS before: read again
    snap = Backup(repo).run([src], base=src, kind="checkpoint", on_entry=recent.add, parent=None).snapshot
    result = repo.verify_snapshot(snap, src, hashed=recent)
    assert result.ok and result.live_read == len(files)
    repo.close()


def test_verify_snapshot_of_a_snapshot_without_base_looks_for_extras_only_in_its_sources(
    tmp_path: Path,
) -> None:
    repo = Repository.init(LocalBackend(tmp_path / "repo"))
    src = tmp_path / "data"
    src.mkdir()
    (src / "x.txt").write_text("x\n")
    (tmp_path / "sibling.txt").write_text("not part of the snapshot's sources\n")
    snap = Backup(repo).run([src]).snapshot  # names are absolute paths without the leading /
    assert repo.verify_snapshot(snap, "/").ok
    (src / "y.txt").write_text("y\n")
    assert [(p.path, p.kind) for p in repo.verify_snapshot(snap, "/").problems] == [
        (str(src / "y.txt").lstrip("/"), "extra")
    ]
    repo.close()


def test_verify_snapshot_reports_an_unreadable_tree(tmp_path: Path) -> None:
    repo, snap, _, _ = tree_repo(tmp_path)
    tree_id = bytes.fromhex(snap.tree[0])
    loc = repo.cache.get(tree_id)
    assert loc is not None
    flip_byte(tmp_path / "repo" / pack_key(loc.pack), loc.offset + loc.length // 2)
    result = repo.verify_snapshot(snap)
    assert (
        not result.ok
        and result.problems[0].path == "<tree>"
        and "tree unreadable" in result.problems[0].detail
    )
    repo.close()


# -- open_entry -----------------------------------------------------------------------------------


def read_in_odd_sizes(reader: io.RawIOBase) -> bytes:
    out = bytearray()
    sizes = [1, 7, 4096, 100_000, 3, MiB]
    i = 0
    while True:
        piece = reader.read(sizes[i % len(sizes)])
        i += 1
        if not piece:
            return bytes(out)
        out += piece


@pytest.mark.parametrize("passphrase", [None, "entry pass"], ids=["plain", "encrypted"])
def test_open_entry_streams_exact_bytes(tmp_path: Path, passphrase: str | None) -> None:
    repo, snap, _, files = tree_repo(tmp_path, passphrase)
    for name, data in files.items():
        with repo.open_entry(snap, name) as reader:
            assert read_in_odd_sizes(reader) == data, name
        with repo.open_entry(snap, name) as reader:
            assert reader.read() == data
    # by tree entry (no tree read per file), and as pieces without a copy
    for entry in repo.iter_tree(snap):
        if entry["type"] == "file":
            with repo.open_entry(snap, entry) as reader:
                assert b"".join(reader.pieces()) == files[entry["path"]]
    with pytest.raises(NotFound):
        repo.open_entry(snap, "no/such/file")
    with pytest.raises(UsageError, match="symlink"):
        repo.open_entry(snap, "link")
    with pytest.raises(UsageError, match="dir"):
        repo.open_entry(snap, "sub")
    repo.close()


def test_open_entries_into_a_tar_export_under_one_lock(tmp_path: Path) -> None:
    from coldkeep.repository.locks import list_locks

    repo, snap, _, files = tree_repo(tmp_path)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for entry, reader in repo.open_entries(snap):
            assert [lk.operation for lk in list_locks(repo.backend)] == ["read files"]
            info = tarfile.TarInfo(entry["path"])
            info.size = entry["size"]
            tar.addfile(info, reader)
    assert list_locks(repo.backend) == []
    out.seek(0)
    with tarfile.open(fileobj=out) as tar:
        got = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    assert got == files
    repo.close()


def chunks_of(repo: Repository, snap: Snapshot, name: str) -> list[str]:
    return next(e for e in repo.iter_tree(snap) if e["path"] == name)["chunks"]


@pytest.mark.parametrize("which", ["first", "last"])
def test_open_entry_raises_on_a_damaged_chunk_naming_the_file(tmp_path: Path, which: str) -> None:
    repo, snap, _, files = tree_repo(tmp_path)
    count = len(chunks_of(repo, snap, "big1.bin"))
    assert count > 10
    flip_chunk(tmp_path, repo, snap, "big1.bin", which=0 if which == "first" else count - 1)
    with (
        repo.open_entry(snap, "big1.bin") as reader,
        pytest.raises(IntegrityError, match=r"big1\.bin") as err,
    ):
        reader.read()
    assert "corrupt" in err.value.message
    # a tar export that reads exactly the recorded size never receives the damaged end
    info = tarfile.TarInfo("big1.bin")
    info.size = len(files["big1.bin"])
    with (
        tarfile.open(fileobj=io.BytesIO(), mode="w") as tar,
        repo.open_entry(snap, "big1.bin") as reader,
        pytest.raises(IntegrityError, match=r"big1\.bin"),
    ):
        tar.addfile(info, reader)
    # the other files still stream
    with repo.open_entry(snap, "big2.bin") as reader:
        assert reader.read() == files["big2.bin"]
    repo.close()


def test_open_entry_checks_the_whole_file_sha256_before_the_last_bytes(tmp_path: Path) -> None:
    """Chunks that verify but a tree that records another SHA-256: no consumer gets the whole file."""
    repo, snap, _, files = tree_repo(tmp_path)
    entries = list(repo.iter_tree(snap))
    for entry in entries:
        if entry["path"] in ("big1.bin", "a.txt"):
            entry["sha256"] = hashlib.sha256(b"something else").hexdigest()
    writer = repo.writer()
    tree = repo.write_tree(writer, entries)
    writer.finish()
    wrong = Snapshot(
        id="", time=snap.time, host="h", paths=[], tags={}, label="", meta={}, tree=tree, summary={}
    )
    repo.save_snapshot(wrong)
    for name in ("big1.bin", "a.txt"):
        received = bytearray()
        with repo.open_entry(wrong, name) as reader, pytest.raises(IntegrityError, match=f"{name}: SHA-256"):
            while piece := reader.read(64 * 1024):
                received += piece
        assert len(received) < len(files[name])  # the end was held back
    assert [p.path for p in repo.verify_snapshot(wrong).problems] == ["a.txt", "big1.bin"]
    repo.close()


def test_open_entry_takes_a_shared_lock_while_open(tmp_path: Path) -> None:
    from coldkeep.repository.locks import list_locks, locked

    repo, snap, _, _ = tree_repo(tmp_path)
    with repo.open_entry(snap, "a.txt") as reader:
        assert [(lk.operation, lk.exclusive) for lk in list_locks(repo.backend)] == [("read file", False)]
        reader.read()
    assert list_locks(repo.backend) == []
    with locked(repo.backend, "export", exclusive=False):  # one lock around an export, not one per file
        readers = [repo.open_entry(snap, name) for name in ("a.txt", "sub/b.bin")]
        assert [lk.operation for lk in list_locks(repo.backend)] == ["export"]
        for reader in readers:
            reader.close()
    repo.close()
