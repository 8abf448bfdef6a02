"""Files that change while a backup reads them: the snapshot records exactly the bytes read (so it
always restores), the files are reported, strict mode refuses, and `repo check` catches a tree
whose sizes disagree with its chunks.

The changes are made at chosen points of the read through the test-only ``fileread.READ_HOOK``
(called before a file is opened, offset -1, and before each read): deterministic, no timing.  tests/integration/test_backup_changed_by_another_process.py does the same from
another process, through the CLI.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.helpers import Site

from coldkeep.repository import fileread
from coldkeep.repository.backup import Backup, BackupResult
from coldkeep.repository.check import check
from coldkeep.repository.repository import Repository, Snapshot
from coldkeep.repository.restore import Restorer
from coldkeep.storage.local import LocalBackend

MiB = 1024 * 1024
#: one size per backup path: a group of small files, a small file alone, a big chunked file
SIZES = {"group": 100_000, "alone": 2 * MiB + 3, "big": 9 * MiB + 5}


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLDKEEP_CACHE_DIR", str(tmp_path / "cache"))


def new_repo(tmp_path: Path) -> Repository:
    return Repository.init(LocalBackend(tmp_path / "repo"))


def source(tmp_path: Path, name: str, size: int) -> tuple[Path, Path, bytes]:
    """A source directory with a neighbour file and ``name`` of ``size`` random bytes."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "neighbour.txt").write_bytes(b"stays the same\n")
    data = os.urandom(size)
    (src / name).write_bytes(data)
    return src, src / name, data


def on(path: Path, when: Callable[[int], bool], action: Callable[[], None]) -> Callable[[str, int], None]:
    """A READ_HOOK that runs ``action`` once, at the first event on ``path`` that ``when(offset)``
    accepts."""
    done: list[bool] = []

    def hook(p: str, offset: int) -> None:
        if p == str(path) and not done and when(offset):
            done.append(True)
            action()

    return hook


def entries(repo: Repository, snap: Snapshot) -> dict[str, dict[str, Any]]:
    return {e["path"]: e for e in repo.iter_tree(snap)}


def restore(repo: Repository, snap: Snapshot, target: Path) -> Path:
    result = Restorer(repo).run(snap, target)
    assert not result.errors, result.errors
    return target


def assert_consistent(repo: Repository, result: BackupResult, tmp_path: Path) -> dict[str, bytes]:
    """The snapshot restores, each file being exactly what its entry says, the logical bytes are
    the bytes stored, and `repo check` (structure and data) is clean.  Returns the restored files."""
    tree = entries(repo, result.snapshot)
    files = {k: v for k, v in tree.items() if v["type"] == "file"}
    out = restore(repo, result.snapshot, tmp_path / f"out-{result.snapshot.short_id}")
    restored = {name: (out / name).read_bytes() for name in files}
    for name, entry in files.items():
        assert len(restored[name]) == entry["size"], name
        assert hashlib.sha256(restored[name]).hexdigest() == entry["sha256"], name
    assert result.logical_bytes == sum(e["size"] for e in files.values())
    assert result.snapshot.summary["logical_bytes"] == result.logical_bytes
    for read_data in (False, True):
        checked = check(repo, read_data=read_data)
        assert checked.ok, [p.line() for p in checked.problems]
        assert not checked.warnings, checked.warnings
    return restored


@pytest.mark.parametrize("kind", sorted(SIZES))
def test_a_file_that_grows_while_read_is_stored_as_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    src, path, data = source(tmp_path, "log.txt", SIZES[kind])

    def append() -> None:
        with path.open("ab") as f:
            f.write(b"more log lines\n" * 70_000)  # ~1 MiB, once the file is open

    monkeypatch.setattr(fileread, "READ_HOOK", on(path, lambda offset: offset >= 0, append))
    repo = new_repo(tmp_path)
    result = Backup(repo).run([src], base=src)
    assert result.changed_files == [str(path)] and result.skipped_files == [] and result.partial
    assert any(w.startswith(f"{path}: grew") for w in result.warnings), result.warnings
    entry = entries(repo, result.snapshot)["log.txt"]
    assert entry["size"] == len(data) and entry["changed"] is True
    restored = assert_consistent(repo, result, tmp_path)
    assert restored["log.txt"] == data  # the bytes there were when it was opened
    assert restored["neighbour.txt"] == b"stays the same\n"
    assert result.snapshot.summary["changed_files"] == 1
    # the next backup reads it again (it is not reused although size and mtime may match) and
    # stores what is there now, quietly
    monkeypatch.setattr(fileread, "READ_HOOK", None)
    again = Backup(repo).run([src], base=src)
    assert not again.partial and again.reused_files == 1  # the neighbour
    assert entries(repo, again.snapshot)["log.txt"]["size"] == path.stat().st_size
    assert assert_consistent(repo, again, tmp_path)["log.txt"] == path.read_bytes()


@pytest.mark.parametrize("kind", sorted(SIZES))
def test_a_file_truncated_while_read_is_stored_as_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    monkeypatch.setattr(fileread, "READ_WINDOW", 4 * MiB)  # the big file takes three reads
    src, path, data = source(tmp_path, "data.bin", SIZES[kind])
    # the small paths read once (offset 0): truncate before it; the big file after its first read
    at = 4 * MiB if kind == "big" else 0
    monkeypatch.setattr(
        fileread, "READ_HOOK", on(path, lambda offset: offset >= at, lambda: os.truncate(path, 1000))
    )
    repo = new_repo(tmp_path)
    result = Backup(repo).run([src], base=src)
    assert result.changed_files == [str(path)] and result.partial
    assert any(w.startswith(f"{path}: shrank") for w in result.warnings), result.warnings
    entry = entries(repo, result.snapshot)["data.bin"]
    restored = assert_consistent(repo, result, tmp_path)["data.bin"]
    assert restored == data[: entry["size"]]
    assert entry["size"] == (4 * MiB if kind == "big" else 1000)


@pytest.mark.parametrize("kind", sorted(SIZES))
def test_a_file_replaced_by_rename_before_it_is_read_is_stored_as_the_new_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    src, path, _old = source(tmp_path, "model.bin", SIZES[kind])
    new = os.urandom(SIZES[kind] // 2 + 1)

    def replace() -> None:
        tmp = path.with_name(".model.bin.tmp")  # outside the walk's listing: it is done already
        tmp.write_bytes(new)
        os.chmod(tmp, 0o640)
        os.replace(tmp, path)

    monkeypatch.setattr(fileread, "READ_HOOK", on(path, lambda offset: offset == -1, replace))
    repo = new_repo(tmp_path)
    result = Backup(repo).run([src], base=src)
    assert result.changed_files == [str(path)]
    assert any(w.startswith(f"{path}: was replaced") for w in result.warnings), result.warnings
    entry = entries(repo, result.snapshot)["model.bin"]
    assert entry["ino"] == path.stat().st_ino and entry["mode"] == 0o640  # the file that was read
    out_dir = tmp_path / "out"
    assert_consistent(repo, result, tmp_path)
    restore(repo, result.snapshot, out_dir)
    assert (out_dir / "model.bin").read_bytes() == new
    assert (os.stat(out_dir / "model.bin").st_mode & 0o777) == 0o640


def test_a_file_replaced_while_read_is_stored_as_the_file_that_was_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fileread, "READ_WINDOW", 4 * MiB)
    src, path, old = source(tmp_path, "model.bin", SIZES["big"])

    def replace() -> None:
        tmp = path.with_name(".model.bin.tmp")
        tmp.write_bytes(b"the new version")
        os.replace(tmp, path)

    monkeypatch.setattr(fileread, "READ_HOOK", on(path, lambda offset: offset >= 4 * MiB, replace))
    repo = new_repo(tmp_path)
    result = Backup(repo).run([src], base=src)
    assert result.changed_files == [str(path)]
    assert any(w.startswith(f"{path}: was replaced") for w in result.warnings), result.warnings
    assert assert_consistent(repo, result, tmp_path)["model.bin"] == old  # the open file, whole


@pytest.mark.parametrize("kind", sorted(SIZES))
def test_a_file_deleted_between_walk_and_read_is_left_out_and_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    src, path, _data = source(tmp_path, "gone.bin", SIZES[kind])
    monkeypatch.setattr(fileread, "READ_HOOK", on(path, lambda offset: offset == -1, path.unlink))
    repo = new_repo(tmp_path)
    result = Backup(repo).run([src], base=src)
    assert result.skipped_files == [str(path)] and result.changed_files == [] and result.partial
    assert any(w.startswith(f"{path}: vanished") for w in result.warnings), result.warnings
    assert "gone.bin" not in entries(repo, result.snapshot)
    assert result.files == 1 and result.snapshot.summary["skipped_files"] == 1
    restored = assert_consistent(repo, result, tmp_path)
    assert set(restored) == {"neighbour.txt"}


def test_a_file_that_became_a_fifo_is_skipped_without_blocking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, path, _data = source(tmp_path, "pipe", SIZES["group"])

    def fifo() -> None:
        path.unlink()
        os.mkfifo(path)  # opening it for reading would wait for a writer forever

    monkeypatch.setattr(fileread, "READ_HOOK", on(path, lambda offset: offset == -1, fifo))
    repo = new_repo(tmp_path)
    result = Backup(repo).run([src], base=src)
    assert result.skipped_files == [str(path)]
    assert any("no longer a regular file" in w for w in result.warnings), result.warnings
    assert_consistent(repo, result, tmp_path)


def test_strict_refuses_the_snapshot_and_names_the_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from coldkeep.errors import SourceChanged

    src, path, data = source(tmp_path, "log.txt", SIZES["big"])
    gone = src / "gone.txt"
    gone.write_bytes(b"x" * 10)

    def append() -> None:
        with path.open("ab") as f:
            f.write(b"late line\n")

    grow = on(path, lambda offset: offset >= 0, append)
    delete = on(gone, lambda offset: offset == -1, gone.unlink)

    def both(p: str, offset: int) -> None:
        grow(p, offset)
        delete(p, offset)

    monkeypatch.setattr(fileread, "READ_HOOK", both)
    repo = new_repo(tmp_path)
    with pytest.raises(SourceChanged) as caught:
        Backup(repo).run([src], base=src, strict=True)
    err = caught.value
    assert err.changed == [str(path)] and err.skipped == [str(gone)] and err.exit_code == 1
    assert str(path) in err.message and str(gone) in err.message and "no snapshot written" in err.message
    assert repo.snapshot_ids() == []
    checked = check(repo, read_data=True)  # what was stored is indexed: no orphan packs
    assert checked.ok and not checked.warnings, (checked.problems, checked.warnings)
    # quiet files: the strict backup succeeds, reusing what the refused one stored (all but the
    # chunks around the end, where the file grew)
    monkeypatch.setattr(fileread, "READ_HOOK", None)
    result = Backup(repo).run([src], base=src, strict=True)
    assert not result.partial and result.new_stored_bytes < len(data) // 4
    assert assert_consistent(repo, result, tmp_path)["log.txt"] == path.read_bytes()


def test_check_reports_a_file_whose_size_disagrees_with_its_chunks(tmp_path: Path) -> None:
    """A hand-made tree like the one a file growing under the old backup left: `repo check`
    without --read-data names snapshot and path (the chunks themselves are sound)."""
    site = Site(tmp_path / "site")
    repo = Repository.init(LocalBackend(site.repo_dir))
    writer = repo.writer()
    data = os.urandom(3000)
    chunk = writer.store(data).hex()
    good = {"path": "ok.bin", "mode": 0o644, "uid": 0, "gid": 0, "mtime_ns": 0, "type": "file",
            "size": 3000, "sha256": hashlib.sha256(data).hexdigest(), "chunks": [chunk]}  # fmt: skip
    bad = dict(good, path="logs/app.log", size=2048)  # the walk's size; the chunks hold more
    tree = repo.write_tree(writer, [good, bad])
    writer.finish()
    snap = Snapshot(id="", time="2024-01-01T00:00:00Z", host="h", paths=["/x"], tags={}, label="",
                    meta={}, tree=tree, summary={}, parent=None, kind="files")  # fmt: skip
    repo.save_snapshot(snap)
    result = check(repo)
    lines = [p.line() for p in result.problems]
    assert len(result.problems) == 1, lines
    problem = result.problems[0]
    assert problem.kind == "file" and problem.object == f"{snap.short_id}:logs/app.log"
    assert "2048" in problem.detail and "3000" in problem.detail
    assert Restorer(repo).run(snap, tmp_path / "out").errors  # indeed it cannot be restored
    cli = site.run("repo", "check")
    assert cli.returncode == 3
    assert f"file: {snap.short_id}:logs/app.log: the snapshot records 2048 bytes" in cli.stdout
