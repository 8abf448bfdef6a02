"""LocalBackend specifics beyond the contract: modes, ownership, temp files, error mapping."""

from __future__ import annotations

import errno
import os
import pwd
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.helpers import missing, need

from coldkeep.errors import ConfigError, InvalidKey, ObjectNotFound, StorageError, StorageFull
from coldkeep.storage.local import LocalBackend
from coldkeep.storage.wrappers import FaultBackend, RetryBackend


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".tmp-")]


def test_files_0600_and_directories_0700(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    backend = LocalBackend(root)
    old = os.umask(0o022)
    try:
        backend.put("a/b/c/obj", b"x")
        backend.put_if_absent("a/other", b"y")
    finally:
        os.umask(old)
    assert mode(root) == 0o700
    assert mode(root / "a") == 0o700
    assert mode(root / "a" / "b") == 0o700
    assert mode(root / "a" / "b" / "c") == 0o700
    assert mode(root / "a" / "b" / "c" / "obj") == 0o600
    assert mode(root / "a" / "other") == 0o600


def test_root_is_created_on_demand_or_by_ensure_root(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "deep" / "repo")
    assert list(backend.list()) == []  # a missing root is an empty repository
    assert not (tmp_path / "deep").exists()
    backend.ensure_root()
    assert mode(tmp_path / "deep" / "repo") == 0o700


def test_no_temp_files_left(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    for i in range(20):
        backend.put(f"k/{i}", os.urandom(1000))
        backend.put(f"k/{i}", b"overwritten")
        assert backend.put_if_absent(f"k/{i}", b"refused") is False
        assert backend.put_if_absent(f"n/{i}", b"new") is True
    assert temp_files(tmp_path) == []
    assert backend.get("k/3") == b"overwritten"


def test_put_if_absent_keeps_the_existing_file(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    backend.put("seg", b"first")
    inode = (tmp_path / "seg").stat().st_ino
    assert backend.put_if_absent("seg", b"second") is False
    assert (tmp_path / "seg").stat().st_ino == inode
    assert (tmp_path / "seg").read_bytes() == b"first"
    assert (tmp_path / "seg").stat().st_nlink == 1


def test_put_if_absent_already_there_makes_the_existing_object_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first writer may have crashed after its link and before its directory fsync: the
    second one ("already there") fsyncs the existing file and its directory before returning,
    so a second `wal-push` never acknowledges a segment a power cut can still take away."""
    backend = LocalBackend(tmp_path)
    segment = tmp_path / "wal" / "00000001" / "000000010000000000000003"
    segment.parent.mkdir(parents=True)
    segment.write_bytes(b"the first writer's bytes, linked but its directory not yet synced")
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    assert backend.put_if_absent("wal/00000001/000000010000000000000003", b"the same segment again") is False
    assert str(segment) in synced, synced
    assert str(segment.parent) in synced, synced
    assert synced.index(str(segment.parent)) > synced.index(str(segment))  # the entry after the file
    assert segment.read_bytes().startswith(b"the first writer's bytes")
    assert temp_files(tmp_path) == []


def test_list_skips_temp_files_and_stale_ones_are_removed(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    backend.put("d/real", b"x")
    stale = tmp_path / "d" / ".tmp-real-0123"
    fresh = tmp_path / "d" / ".tmp-other-4567"
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"being written")
    an_hour_ago = time.time() - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))
    assert {i.key for i in backend.list()} == {"d/real"}
    assert backend.remove_stale_temp(older_than_s=600) == 1
    assert not stale.exists()
    assert fresh.exists()
    assert backend.remove_stale_temp(older_than_s=0) == 1
    assert temp_files(tmp_path) == []
    assert backend.get("d/real") == b"x"


def test_temp_names_are_reserved(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    with pytest.raises(InvalidKey):
        backend.put(".tmp-sneaky", b"x")
    with pytest.raises(InvalidKey):
        backend.get("a/.tmp-x/b")


def test_keys_map_to_paths_below_root(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "repo")
    backend.put("x/y", b"1")
    assert (tmp_path / "repo" / "x" / "y").read_bytes() == b"1"
    assert backend.describe() == f"file://{tmp_path / 'repo'}"


def test_concurrent_directory_creation(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for i in range(10):
                backend.put(f"same/new/dir/{i}/t{t}", b"x")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(list(backend.list("same/"))) == 80


def test_key_below_a_file_is_a_storage_error(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    backend.put("file", b"x")
    with pytest.raises(StorageError) as info:
        backend.put("file/child", b"y")
    assert not isinstance(info.value, ObjectNotFound)
    with pytest.raises(ObjectNotFound):
        backend.get("file/child")


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (errno.ENOSPC, StorageFull),
        (errno.EDQUOT, StorageFull),
        (errno.EIO, StorageError),
        (errno.EACCES, StorageError),
    ],
)
def test_oserror_mapping(tmp_path: Path, code: int, expected: type[StorageError]) -> None:
    backend = LocalBackend(tmp_path)
    with pytest.raises(expected) as info:
        backend._raise(OSError(code, os.strerror(code)), "write x", "x")
    assert type(info.value) is expected
    with pytest.raises(ObjectNotFound):
        backend._raise(FileNotFoundError(errno.ENOENT, "gone"), "read x", "x")
    assert getattr(info.value, "transient", False) is False


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (needs root and mount permission: skipped otherwise, failed under CI)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    need(os.geteuid() == 0, "mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    need(done.returncode == 0, f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_real_enospc_is_storage_full_and_leaves_nothing(tiny_fs: Path) -> None:
    backend = LocalBackend(tiny_fs / "repo")
    backend.put("small", b"ok")
    with pytest.raises(StorageFull):
        backend.put("big", os.urandom(2 * 1024 * 1024))
    with pytest.raises(StorageFull):
        backend.put_if_absent("big", os.urandom(2 * 1024 * 1024))
    assert temp_files(tiny_fs) == []
    assert {i.key for i in backend.list()} == {"small"}


def test_storage_full_via_fault_backend_is_not_retried(tmp_path: Path) -> None:
    faulty = FaultBackend(LocalBackend(tmp_path), "full:put:2")
    backend = RetryBackend(faulty, sleep=lambda s: None)
    backend.put("one", b"1")
    with pytest.raises(StorageFull):
        backend.put("two", b"2")
    assert faulty.calls["put"] == 2
    assert {i.key for i in backend.list()} == {"one"}


def test_owner_gets_everything_created(tmp_path: Path) -> None:
    need(os.geteuid() == 0, "chown needs root")
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        missing("no postgres user on this host (make sysdeps creates it)")
    root = tmp_path / "repo"
    backend = LocalBackend(root, owner="postgres")
    backend.put("a/b/obj", b"x")
    backend.put_if_absent("a/seg", b"y")
    for path in (root, root / "a", root / "a" / "b", root / "a" / "b" / "obj", root / "a" / "seg"):
        st = path.stat()
        assert (st.st_uid, st.st_gid) == (user.pw_uid, user.pw_gid), path


def test_unknown_owner_is_a_config_error_as_root_and_ignored_otherwise(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        with pytest.raises(ConfigError):
            LocalBackend(tmp_path, owner="no-such-user-coldkeep")
        return
    # not root: coldkeep cannot chown, so the owner is ignored and what it creates is ours
    backend = LocalBackend(tmp_path / "repo", owner="no-such-user-coldkeep")
    backend.put("a/obj", b"x")
    for path in (tmp_path / "repo", tmp_path / "repo" / "a", tmp_path / "repo" / "a" / "obj"):
        assert path.stat().st_uid == os.geteuid(), path
    assert backend.get("a/obj") == b"x"


def test_a_delete_waits_for_a_compare_and_swap_in_progress(tmp_path: Path) -> None:
    """A delete between put_if_version's comparison and its rename would be undone by the rename
    (a refresh bringing back a lock document `repo unlock --all` removed): delete takes the
    directory's flock, as the compare-and-swap does."""
    import fcntl

    backend = LocalBackend(tmp_path)
    backend.put("locks/a", b"doc")
    fd = os.open(tmp_path / "locks", os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a compare-and-swap of locks/a in progress
    deleter = threading.Thread(target=backend.delete, args=("locks/a",))
    try:
        deleter.start()
        deleter.join(0.3)
        assert deleter.is_alive() and (tmp_path / "locks/a").exists()
    finally:
        os.close(fd)
    deleter.join(10)
    assert not deleter.is_alive() and not (tmp_path / "locks/a").exists()
    backend.delete("locks/a")  # still no error for a missing key
    backend.delete("nowhere/b")  # nor for a missing directory
