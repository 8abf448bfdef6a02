"""Restore puts the snapshot's bytes, and only them, under the snapshot's names (issue 11 items 1,
8 and 11): temporary files never meet a real name, vectored writes stay within IOV_MAX, holes
stay holes and hard links stay hard links.

Most tests run twice: with unnamed temporary files (``O_TMPFILE``, the default where the
filesystem and the process can link them) and with named ones (a filesystem without
``O_TMPFILE``: the module's list of ways to link an unnamed file emptied)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from tests.helpers import COLDKEEP, Site, base_env

from coldkeep.repository import restore as restore_mod
from coldkeep.repository import restore_io
from coldkeep.repository.backup import Backup
from coldkeep.repository.repository import Repository, Snapshot
from coldkeep.repository.restore import Restorer
from coldkeep.storage.local import LocalBackend

MiB = 1024 * 1024
GiB = 1024 * MiB
TEMP_NAME = re.compile(r"^\.coldkeep-restore-[0-9a-f]{32}\.tmp$")


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLDKEEP_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(params=["unnamed", "named"])
def temp_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """``unnamed``: O_TMPFILE as the machine allows; ``named``: as on a filesystem without it."""
    if request.param == "named":
        monkeypatch.setattr(restore_io, "_LINKERS", [])
    return str(request.param)


def new_repo(tmp_path: Path) -> Repository:
    return Repository.init(LocalBackend(tmp_path / "repo"))


def backup(repo: Repository, src: Path) -> Snapshot:
    return Backup(repo).run([src], base=src).snapshot


def restore(repo: Repository, snap: Snapshot, out: Path, path: str = "sha256") -> restore_mod.RestoreResult:
    """``path``: ``sha256`` (files restore: whole-file SHA-256), ``segments`` (pg restore: chunk ids
    only, big files written in parallel segments; SEGMENT_MIN lowered by the caller)."""
    if path == "sha256":
        return Restorer(repo).run(snap, out)
    return Restorer(repo, verify_files=False, durable=True, threads=4).run(snap, out)


def names_in(directory: Path) -> set[str]:
    return {p.relative_to(directory).as_posix() for p in directory.rglob("*")}


def segments_path(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if path == "segments":
        monkeypatch.setattr(restore_mod, "SEGMENT_MIN", 2 * MiB)
        monkeypatch.setattr(restore_mod, "SEGMENT_PART", 1 * MiB)


# ------------------------------------------------------------------------------------------------
# item 1: temporary names


@pytest.mark.parametrize("path", ["sha256", "segments"])
def test_a_file_named_like_a_temporary_name_never_replaces_a_big_file(
    tmp_path: Path, temp_kind: str, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A multi-chunk model.bin next to a small `.coldkeep-tmp-model.bin` (the old temp name) and
    one named like today's pattern: each restores its own bytes (before: model.bin got the
    small file's 31 bytes, exit 0)."""
    segments_path(path, monkeypatch)
    repo = new_repo(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    files = {
        "model.bin": random.Random(1).randbytes(9 * MiB),
        ".coldkeep-tmp-model.bin": b"x" * 31,
        ".coldkeep-restore-" + "0" * 32 + ".tmp": b"named like a temp file",
    }
    for name, content in files.items():
        (src / name).write_bytes(content)
    snap = backup(repo, src)
    assert len(next(e for e in repo.iter_tree(snap) if e["path"] == "model.bin")["chunks"]) > 1
    out = tmp_path / "out"
    result = restore(repo, snap, out, path)
    assert not result.errors and result.files == 3
    assert names_in(out) == set(files)
    for name, content in files.items():
        assert (out / name).read_bytes() == content, name


@pytest.mark.parametrize("path", ["sha256", "segments"])
def test_a_real_file_in_the_target_keeps_its_content_or_gets_its_own_entry(
    tmp_path: Path, temp_kind: str, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Restoring into a directory that holds real files named like temporary files (one a hard
    link to a file outside the target): one the snapshot lacks keeps its content and is not
    counted; one the snapshot has is replaced by that entry only, never written into (before:
    model.bin's bytes went through the link into the outside file, and the name was removed)."""
    segments_path(path, monkeypatch)
    repo = new_repo(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    model = random.Random(2).randbytes(9 * MiB)
    (src / "model.bin").write_bytes(model)
    (src / "small.bin").write_bytes(b"small")
    (src / ".coldkeep-tmp-small.bin").write_bytes(b"its own entry")
    snap = backup(repo, src)
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious, outside the target")
    out = tmp_path / "out"
    out.mkdir()
    os.link(outside, out / ".coldkeep-tmp-model.bin")
    (out / ".coldkeep-tmp-small.bin").write_bytes(b"in the way")
    pattern = ".coldkeep-restore-" + "f" * 32 + ".tmp"
    (out / pattern).write_bytes(b"real data")
    result = restore(repo, snap, out, path)
    assert not result.errors and result.files == 3
    assert (out / "model.bin").read_bytes() == model
    assert (out / "small.bin").read_bytes() == b"small"
    assert (out / ".coldkeep-tmp-small.bin").read_bytes() == b"its own entry"
    assert (out / ".coldkeep-tmp-model.bin").read_bytes() == b"precious, outside the target"
    assert outside.read_bytes() == b"precious, outside the target"
    assert (out / pattern).read_bytes() == b"real data"
    assert names_in(out) == {
        "model.bin",
        "small.bin",
        ".coldkeep-tmp-small.bin",
        ".coldkeep-tmp-model.bin",
        pattern,
    }


@pytest.mark.parametrize("path", ["sha256", "segments"])
def test_a_255_byte_name_restores_fresh_and_over_an_existing_file(
    tmp_path: Path, temp_kind: str, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The longest name a directory takes restores, for a multi-chunk file and a small one, into
    an empty target and again over the files the first restore left (the replacing path).
    Before: `File name too long` (the temporary name was the final name plus a prefix)."""
    segments_path(path, monkeypatch)
    repo = new_repo(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    big, small = "b" * 255, "s" * 255
    files = {big: random.Random(3).randbytes(5 * MiB + 17), small: b"small one"}
    for name, content in files.items():
        (src / name).write_bytes(content)
    snap = backup(repo, src)
    out = tmp_path / "out"
    for _ in range(2):
        result = restore(repo, snap, out, path)
        assert not result.errors and result.files == 2
        assert names_in(out) == set(files)
        for name, content in files.items():
            assert (out / name).read_bytes() == content


def test_temporary_names_are_short_random_and_never_a_name_the_restore_creates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh name follows the documented pattern, and one the restore creates is skipped (forced
    here by a random source that repeats itself)."""
    names = restore_io.Names()
    fresh = {names.fresh(str(tmp_path)) for _ in range(100)}
    assert len(fresh) == 100
    for name in fresh:
        base = name.rpartition("/")[2]
        assert TEMP_NAME.match(base) and len(base) == 54
    taken = f"{tmp_path}/.coldkeep-restore-{'00' * 16}.tmp"
    draws = iter([bytes(16), bytes(16), b"\x01" * 16])
    monkeypatch.setattr(restore_io.os, "urandom", lambda n: next(draws))
    assert restore_io.Names({taken}).fresh(str(tmp_path)) == f"{tmp_path}/.coldkeep-restore-{'01' * 16}.tmp"


@pytest.mark.parametrize("size", [100, 5 * MiB])
def test_a_directory_or_symlink_where_a_file_goes(tmp_path: Path, temp_kind: str, size: int) -> None:
    """A directory in the target where the snapshot has a file: an error naming the file, the
    directory and its content untouched, no temporary file left.  A symlink there (to a file
    outside the target) is replaced by the file, never followed."""
    repo = new_repo(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    content = random.Random(4).randbytes(size)
    (src / "f").write_bytes(content)
    (src / "g").write_bytes(content)
    snap = backup(repo, src)
    outside = tmp_path / "outside"
    outside.write_bytes(b"outside")
    out = tmp_path / "out"
    (out / "f").mkdir(parents=True)
    (out / "f" / "inside").write_bytes(b"keep me")
    os.symlink(outside, out / "g")
    result = Restorer(repo).run(snap, out)
    assert len(result.errors) == 1 and result.errors[0].startswith("f:"), result.errors
    assert (out / "f" / "inside").read_bytes() == b"keep me"
    assert not (out / "g").is_symlink() and (out / "g").read_bytes() == content
    assert outside.read_bytes() == b"outside"
    assert names_in(out) == {"f", "f/inside", "g"}


def test_a_failed_big_file_leaves_no_temporary_file(tmp_path: Path, temp_kind: str) -> None:
    """A chunk that does not verify fails its file: nothing under its name, no temporary name."""
    from coldkeep.repository.packer import pack_key

    repo = new_repo(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(random.Random(5).randbytes(9 * MiB))
    (src / "ok").write_bytes(b"fine")
    snap = backup(repo, src)
    entry = next(e for e in repo.iter_tree(snap) if e["path"] == "big.bin")
    victim = bytes.fromhex(entry["chunks"][-1])
    loc = repo.cache.get(victim)
    assert loc is not None
    pack = tmp_path / "repo" / pack_key(loc.pack)
    raw = bytearray(pack.read_bytes())
    raw[loc.offset + loc.length // 2] ^= 0x01
    os.chmod(pack, 0o600)
    pack.write_bytes(bytes(raw))
    out = tmp_path / "out"
    result = Restorer(repo).run(snap, out)
    assert len(result.errors) == 1 and "big.bin" in result.errors[0] and victim.hex()[:16] in result.errors[0]
    assert names_in(out) == {"ok"}


# ------------------------------------------------------------------------------------------------
# item 8: vectored writes


def _many_tensors(count: int, seed: int) -> bytes:
    """A valid safetensors file of ``count`` small float16 tensors of different sizes."""
    import numpy as np
    from safetensors.numpy import save

    rng = np.random.default_rng(seed)
    per = max(4, 3_300_000 // (2 * count))
    return save(
        {f"layer.{i}.weight": rng.standard_normal(per + i % 7).astype(np.float16) for i in range(count)}
    )


@pytest.mark.parametrize("count", [3000, 20000])
@pytest.mark.parametrize("verify_files", [True, False])
def test_a_shard_of_many_small_tensors_restores(tmp_path: Path, count: int, verify_files: bool) -> None:
    """Every tensor is its own chunk, so one run of chunks holds more buffers than IOV_MAX (1024
    on Linux); before, its `writev` failed with `Invalid argument` (exit 3)."""
    repo = new_repo(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    shard = _many_tensors(count, seed=count)
    (src / "model-00001-of-00002.safetensors").write_bytes(shard)
    snap = backup(repo, src)
    (entry,) = [e for e in repo.iter_tree(snap) if e["type"] == "file"]
    assert len(entry["chunks"]) > count  # header + one chunk per tensor
    out = tmp_path / "out"
    result = Restorer(repo, verify_files=verify_files).run(snap, out)
    assert not result.errors, result.errors
    assert (out / "model-00001-of-00002.safetensors").read_bytes() == shard


@pytest.mark.parametrize("offset", [None, 3])
def test_write_all_passes_at_most_iov_max_buffers_per_call(tmp_path: Path, offset: int | None) -> None:
    """Three times IOV_MAX pieces (and an empty one), at the file position and at an offset."""
    rng = random.Random(6)
    pieces = [rng.randbytes(rng.randrange(1, 40)) for _ in range(3 * restore_io.IOV_MAX + 5)]
    pieces.insert(7, b"")
    want = b"".join(pieces)
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if offset is not None:
            os.write(fd, b"abc")
        assert restore_io.write_all(fd, pieces, offset) == len(want)
    finally:
        os.close(fd)
    assert path.read_bytes() == (b"abc" if offset is not None else b"") + want


# ------------------------------------------------------------------------------------------------
# item 11: holes


def data_extents(path: Path) -> list[tuple[int, int]]:
    """The ranges of ``path`` that are not holes (``SEEK_DATA`` / ``SEEK_HOLE``)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size, pos, out = os.fstat(fd).st_size, 0, []
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    break
                raise
            pos = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, pos))
        return out
    finally:
        os.close(fd)


def same_sparse_bytes(a: Path, b: Path) -> bool:
    """``a`` and ``b`` hold the same bytes, compared where either has data (everywhere else both
    are holes, i.e. zeros), without reading gigabytes of holes."""
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for start, end in sorted(data_extents(a) + data_extents(b)):
            fa.seek(start)
            fb.seek(start)
            pos = start
            while pos < end:
                n = min(8 * MiB, end - pos)
                if fa.read(n) != fb.read(n):
                    return False
                pos += n
    return True


def make_sparse(path: Path, size: int, regions: list[int], seed: int) -> None:
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for offset in regions:
            f.seek(offset)
            f.write(rng.randbytes(min(MiB, size - offset)))


def test_a_2_gib_sparse_file_restores_with_its_holes(tmp_path: Path) -> None:
    """A 2 GiB file with three 1 MiB data regions (one at the very end) backs up as sparse and
    restores with its holes: identical bytes, a few MiB allocated (before: 2 GiB)."""
    repo = new_repo(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    disk = src / "disk.img"
    make_sparse(disk, 2 * GiB, [0, 700 * MiB + 12345, 2 * GiB - MiB], seed=7)
    (src / "hole-only").write_bytes(b"")
    os.truncate(src / "hole-only", 200 * 1024)  # one chunk, all hole: the small-file path
    (src / "dense").write_bytes(bytes(MiB))  # zeros, but allocated: not sparse, stays allocated
    assert disk.stat().st_blocks * 512 < 8 * MiB
    snap = backup(repo, src)
    entries = {e["path"]: e for e in repo.iter_tree(snap) if e["type"] == "file"}
    assert entries["disk.img"].get("sparse") is True and entries["hole-only"].get("sparse") is True
    assert "sparse" not in entries["dense"]
    out = tmp_path / "out"
    result = Restorer(repo).run(snap, out)
    assert not result.errors and result.files == 3
    restored = out / "disk.img"
    assert restored.stat().st_size == 2 * GiB
    assert restored.stat().st_blocks * 512 < 64 * MiB
    assert same_sparse_bytes(disk, restored)
    assert (out / "hole-only").stat().st_size == 200 * 1024 and (out / "hole-only").stat().st_blocks == 0
    assert (out / "hole-only").read_bytes() == bytes(200 * 1024)
    assert (out / "dense").stat().st_blocks * 512 >= MiB


def test_a_sparse_file_restores_with_holes_on_the_segmented_path(tmp_path: Path) -> None:
    """pg restore's path (chunk ids only, parallel segments at offsets) keeps holes too, and
    ends the file at its size when it ends in a hole."""
    repo = new_repo(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    make_sparse(src / "rel", 256 * MiB, [5 * MiB, 130 * MiB], seed=8)
    snap = backup(repo, src)
    out = tmp_path / "out"
    result = Restorer(repo, verify_files=False, durable=True, threads=4).run(snap, out)
    assert not result.errors
    assert (out / "rel").stat().st_size == 256 * MiB
    assert (out / "rel").stat().st_blocks * 512 < 32 * MiB
    assert same_sparse_bytes(src / "rel", out / "rel")


# ------------------------------------------------------------------------------------------------
# item 11: hard links


def link_tree(tmp_path: Path) -> tuple[Path, Path]:
    """``src`` with a small file of three names, a big one of two, and a file whose other name
    is outside ``src``; returns (src, the outside file)."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a").write_bytes(b"small, three names")
    os.link(src / "a", src / "sub" / "b")
    os.link(src / "a", src / "c")
    (src / "big").write_bytes(random.Random(9).randbytes(5 * MiB))
    os.link(src / "big", src / "sub" / "big2")
    outside = tmp_path / "outside"
    outside.write_bytes(b"linked from outside the backed-up paths")
    os.link(outside, src / "lonely")
    return src, outside


def inode(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_nlink


@pytest.mark.parametrize("path", ["sha256", "segments"])
def test_hard_links_restore_as_hard_links(
    tmp_path: Path, temp_kind: str, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Names of one inode restore as one inode; a file whose other name is outside the backed-up
    paths is just a file (before: every name its own copy)."""
    segments_path(path, monkeypatch)
    repo = new_repo(tmp_path)
    src, outside = link_tree(tmp_path)
    snap = backup(repo, src)
    out = tmp_path / "out"
    result = restore(repo, snap, out, path)
    assert not result.errors and not result.warnings and result.files == 6
    assert inode(out / "a")[1] == 3 and inode(out / "a") == inode(out / "sub/b") == inode(out / "c")
    assert inode(out / "big")[1] == 2 and inode(out / "big") == inode(out / "sub/big2")
    assert inode(out / "lonely")[1] == 1 and (out / "lonely").read_bytes() == outside.read_bytes()
    for name in ("a", "sub/b", "c", "big", "sub/big2"):
        assert (out / name).read_bytes() == (src / name).read_bytes()
    # again into the same target: every name replaced, the links made anew
    result = restore(repo, snap, out, path)
    assert not result.errors and result.files == 6
    assert inode(out / "a")[1] == 3 and inode(out / "big")[1] == 2
    # a part of the snapshot: the names it holds
    part = Restorer(repo).run(snap, tmp_path / "part", includes=["sub/*"])
    assert not part.errors and part.files == 2
    assert (tmp_path / "part/sub/b").read_bytes() == b"small, three names"


def test_a_re_backup_keeps_the_new_fields_and_reuses_its_tree(tmp_path: Path) -> None:
    """An unchanged tree backs up to the same tree blobs (the new fields come out equal), a link
    made since the parent snapshot is recorded although the file's data is reused, and a link
    removed since is forgotten."""
    repo = new_repo(tmp_path)
    src, _ = link_tree(tmp_path)
    make_sparse(src / "sparse", 8 * MiB, [MiB], seed=10)
    first = Backup(repo).run([src], base=src)
    second = Backup(repo).run([src], base=src)
    assert second.snapshot.parent == first.snapshot.id and second.reused_files == second.files
    assert second.snapshot.tree == first.snapshot.tree
    os.link(src / "big", src / "big3")
    os.unlink(src / "sub" / "b")
    third = Backup(repo).run([src], base=src)
    assert third.reused_files == third.files - 1  # big3 is a new name: read again
    entries = {e["path"]: e for e in repo.iter_tree(third.snapshot) if e["type"] == "file"}
    assert entries["big3"]["hardlink"] == entries["big"]["hardlink"]
    assert entries["a"]["hardlink"] == entries["c"]["hardlink"]  # still two names
    assert entries["sparse"]["sparse"] is True
    out = tmp_path / "out"
    result = Restorer(repo).run(third.snapshot, out)
    assert not result.errors
    assert inode(out / "big")[1] == 3 and inode(out / "big") == inode(out / "big3")
    assert inode(out / "a")[1] == 2 and not (out / "sub" / "b").exists()
    assert same_sparse_bytes(src / "sparse", out / "sparse")


def _crafted(repo: Repository, entries: list[dict[str, Any]]) -> Snapshot:
    """A snapshot of hand-written tree entries (``content`` becomes one chunk)."""
    writer = repo.writer()
    for entry in entries:
        if entry["type"] == "file":
            content = entry.pop("content")
            entry.update(size=len(content), sha256=hashlib.sha256(content).hexdigest(),
                         chunks=[writer.store(content).hex()] if content else [])  # fmt: skip
    tree = repo.write_tree(writer, entries)
    writer.finish()
    snap = Snapshot(id="", time="2026-01-01T00:00:00Z", host="h", paths=[], tags={}, label="", meta={},
                    tree=tree, summary={})  # fmt: skip
    repo.save_snapshot(snap)
    return snap


def _file(path: str, content: bytes, **extra: Any) -> dict[str, Any]:
    return {"path": path, "type": "file", "mode": 0o644, "uid": 0, "gid": 0, "mtime_ns": 0, "content": content,
            **extra}  # fmt: skip


def test_crafted_link_keys_never_give_a_name_other_bytes_or_leave_the_target(tmp_path: Path) -> None:
    """A link key shared by names of different content: each name keeps its own bytes.  A later
    name whose place is a symlink to outside the target: the symlink is replaced by the link,
    the outside file untouched.  A later name that is an existing directory: an error for it
    alone.  A key whose first name cannot be restored: the next name is restored from its
    chunks and the rest link to it.  A `..` name with a key: refused before anything is written."""
    repo = new_repo(tmp_path)
    snap = _crafted(repo, [
        _file("x", b"same", hardlink="k1"),
        _file("y", b"different", hardlink="k1"),
        _file("z", b"same", hardlink="k1"),
        _file("dir", b"same", hardlink="k1"),
        _file("p", b"first fails", hardlink="k2"),
        _file("q", b"first fails", hardlink="k2"),
        _file("r", b"first fails", hardlink="k2"),
    ])  # fmt: skip
    outside = tmp_path / "outside"
    outside.write_bytes(b"outside")
    out = tmp_path / "out"
    (out / "dir").mkdir(parents=True)
    (out / "p").mkdir()
    os.symlink(outside, out / "z")
    result = Restorer(repo).run(snap, out)
    assert sorted(e.split(":")[0] for e in result.errors) == ["dir", "p"], result.errors
    assert (out / "y").read_bytes() == b"different" and inode(out / "y")[1] == 1
    assert not (out / "z").is_symlink() and inode(out / "z") == inode(out / "x") and inode(out / "x")[1] == 2
    assert outside.read_bytes() == b"outside" and inode(outside)[1] == 1
    assert (out / "dir").is_dir() and (out / "p").is_dir()
    assert (out / "q").read_bytes() == b"first fails" and inode(out / "q") == inode(out / "r")
    assert names_in(out) == {"x", "y", "z", "dir", "p", "q", "r"}
    evil = _crafted(repo, [_file("ok", b"ok", hardlink="k"), _file("../escape", b"ok", hardlink="k")])
    with pytest.raises(Exception, match="outside the target"):
        Restorer(repo).run(evil, tmp_path / "evil")
    assert not (tmp_path / "escape").exists() and not (tmp_path / "evil" / "ok").exists()


def test_a_link_the_filesystem_refuses_is_restored_as_a_copy_and_said_so(tmp_path: Path) -> None:
    """The second name lies on another filesystem mounted inside the target (a tmpfs, mounted in
    a private mount namespace by `unshare`): `link` fails with EXDEV, the name is restored from
    its chunks, and `restore` warns about it (exit 0)."""
    site = Site(tmp_path / "site")
    site.ok("repo", "init")
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a").write_bytes(b"two names, two filesystems")
    os.link(src / "a", src / "sub" / "b")
    site.ok("backup", str(src))
    out = tmp_path / "out"
    (out / str(src).lstrip("/") / "sub").mkdir(parents=True)
    root = out / str(src).lstrip("/")
    script = (
        'mount -t tmpfs tmpfs "$1/sub" && "$2" --json --config "$3" restore latest --target "$4" > "$5" && '
        'stat -c "%h %d" "$1/a" "$1/sub/b" && cat "$1/sub/b"'
    )
    report = tmp_path / "restore.json"
    args = [str(root), COLDKEEP, str(site.config), str(out), str(report)]
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", *args], capture_output=True, text=True,
                          env=base_env(site.full_env()), timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(report.read_text())
    assert result["files"] == 2 and not result["errors"]
    (warning,) = result["warnings"]
    assert (
        warning.startswith(f"{str(src).lstrip('/')}/sub/b: restored as a copy") and "cross-device" in warning
    )
    assert "warning:" in proc.stderr and "restored as a copy" in proc.stderr
    lines = proc.stdout.splitlines()
    (nlink_a, dev_a), (nlink_b, dev_b) = (line.split() for line in lines[:2])
    assert nlink_a == nlink_b == "1" and dev_a != dev_b
    assert lines[2] == "two names, two filesystems"
    shutil.rmtree(out)


def test_hard_link_fields_are_only_recorded_where_they_apply(tmp_path: Path) -> None:
    """Plain files carry neither field, so old snapshots and new ones of plain trees look alike;
    a snapshot without the fields (written before them) restores every name as its own file."""
    repo = new_repo(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    (src / "plain").write_bytes(b"plain")
    snap = backup(repo, src)
    (entry,) = [e for e in repo.iter_tree(snap) if e["type"] == "file"]
    assert "hardlink" not in entry and "sparse" not in entry
    old = _crafted(repo, [_file("a", b"same"), _file("b", b"same")])
    out = tmp_path / "out"
    assert not Restorer(repo).run(old, out).errors
    assert inode(out / "a")[1] == inode(out / "b")[1] == 1
    for name in names_in(out):
        assert stat.S_ISREG((out / name).lstat().st_mode)
