"""`repo copy` while the source changes, and a copy that must not carry damage (issue 11, items 4-5).

The copy runs through the Python API so that a test can act between its listings and its writes
(``on_progress`` is called after each object written, on the thread that runs the copy): a backup
there, or a prune started while the copy holds its shared lock on the source.  Everything else is
the real `coldkeep` command.  Afterwards `repo check --read-data` on the copy must be clean and its
snapshots restore exactly.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.helpers import Site, flip_byte, make_tree, modify_tree, one_line_error, repo_files, tree_digest

from coldkeep.repository.copy import copy_to
from coldkeep.repository.format import SNAPSHOT_PREFIX
from coldkeep.repository.index import IndexCache
from coldkeep.repository.repository import Repository
from coldkeep.storage.local import LocalBackend

PACK_ENV = {"COLDKEEP_PACK_TARGET": str(256 * 1024)}  # a dozen packs from ~9 MiB


def _sites(tmp_path: Path) -> tuple[Site, Site]:
    """A repository with a copy named ``offsite``, and a site whose repository is that copy."""
    copy_dir = tmp_path / "copy"
    site = Site(tmp_path / "site", copies={"offsite": {"url": f"file://{copy_dir}"}}, env=PACK_ENV)
    site.ok("repo", "init")
    return site, Site(tmp_path / "copy-view", url=f"file://{copy_dir}")


def _open(site: Site, tmp_path: Path) -> Repository:
    """The source through the Python API (index cache in a private file)."""
    repo = Repository.open(LocalBackend(site.repo_dir))
    repo._cache = IndexCache(repo.config.id, path=tmp_path / "api-cache.sqlite")
    return repo


def _check_clean(site: Site) -> None:
    result = site.json("repo", "check", "--read-data")
    assert result["ok"] and not result["problems"], result


def test_copy_racing_a_backup_copies_one_consistent_view(tmp_path: Path) -> None:
    site, copy = _sites(tmp_path)
    data = make_tree(tmp_path / "data", seed=41)
    first = site.json("backup", str(data))["snapshot_id"]
    v1 = tree_digest(data)
    modify_tree(data, seed=41)
    raced: list[str] = []

    def backup_during_the_copy(key: str, nbytes: int) -> None:
        if not raced:  # after the first object written: the copy has listed what it copies
            raced.append(site.json("backup", str(data))["snapshot_id"])

    with _open(site, tmp_path) as repo:
        copy_to(repo, LocalBackend(copy.repo_dir), on_progress=backup_during_the_copy)
    assert raced
    _check_clean(copy)
    assert copy.snapshot_ids() == [first]  # the view listed before the backup, complete
    assert copy.restore_digest(first, tmp_path / "r1", data) == v1
    site.ok("repo", "copy", "--to", "offsite")  # the next copy brings the rest
    _check_clean(copy)
    assert copy.snapshot_ids() == [first, raced[0]]
    assert copy.restore_digest(raced[0], tmp_path / "r2", data) == tree_digest(data)


@pytest.fixture
def pruned_source(tmp_path: Path) -> Iterator[tuple[Site, Site, Path, str]]:
    """Two snapshots, the first one removed (its data is garbage for a prune to delete)."""
    site, copy = _sites(tmp_path)
    data = make_tree(tmp_path / "data", seed=42)
    old = site.json("backup", str(data))["snapshot_id"]
    modify_tree(data, seed=42)
    new = site.json("backup", str(data))["snapshot_id"]
    (site.repo_dir / SNAPSHOT_PREFIX / old).unlink()  # what `forget` does
    yield site, copy, data, new


def test_prune_during_a_copy_waits_or_is_refused_and_the_copy_is_whole(
    pruned_source: tuple[Site, Site, Path, str], tmp_path: Path
) -> None:
    site, copy, data, snap = pruned_source
    prunes: list[subprocess.Popen[str]] = []
    finished_during_copy: list[int] = []

    def prune_during_the_copy(key: str, nbytes: int) -> None:
        if prunes:
            return
        proc = site.popen("repo", "prune", "--max-unused", "0")
        prunes.append(proc)
        with contextlib.suppress(subprocess.TimeoutExpired):  # a prune that waits for the lock
            finished_during_copy.append(proc.wait(timeout=120))  # runs after the copy

    with _open(site, tmp_path) as repo:
        copy_to(repo, LocalBackend(copy.repo_dir), on_progress=prune_during_the_copy)
    (proc,) = prunes
    _, stderr = proc.communicate(timeout=300)
    if finished_during_copy:
        assert finished_during_copy == [4], stderr  # LockHeld: the copy holds the source
        assert "locked by copy" in stderr, stderr
    else:
        assert proc.returncode == 0, stderr
    _check_clean(copy)
    assert copy.restore_digest(snap, tmp_path / "r", data) == tree_digest(data)
    site.ok("repo", "prune", "--max-unused", "0")  # no copy running: the prune goes ahead
    site.ok("repo", "copy", "--to", "offsite")
    _check_clean(copy)


def test_copy_refuses_a_damaged_blob_inside_a_valid_pack(tmp_path: Path) -> None:
    """What the old prune made of a flipped byte: the damaged blob, sealed as it was, in a new pack
    with a valid footer (and its own index).  The copy must not take it."""
    site, copy = _sites(tmp_path)
    data = make_tree(tmp_path / "data", seed=43)
    site.ok("backup", str(data))
    site.ok("repo", "copy", "--to", "offsite")
    before = {key: path.read_bytes() for key, path in repo_files(copy.repo_dir).items()}
    with _open(site, tmp_path) as repo:
        repo.refresh_cache(full=True)
        blob = max(repo.cache.all_blobs(), key=lambda b: b.length)
        stored = bytearray(
            repo.backend.get_range(f"data/{blob.pack[:2]}/{blob.pack}", blob.offset, blob.length)
        )
        stored[len(stored) // 2] ^= 0xFF
        writer = repo.writer(use_cache=False)
        writer.add(blob.id, blob.kind, bytes(stored), blob.raw_length)
        writer.finish()
        (bad_pack,) = writer._written
    proc = site.run("repo", "copy", "--to", "offsite")
    assert proc.returncode == 3, proc.stderr
    line = one_line_error(proc)
    assert blob.id.hex()[:16] in line and bad_pack[:16] in line, line
    after = {key: path.read_bytes() for key, path in repo_files(copy.repo_dir).items()}
    assert after == before  # nothing added, nothing replaced
    _check_clean(copy)


def test_copy_carries_service_records_replaces_changed_ones_and_refuses_damaged_ones(tmp_path: Path) -> None:
    site, copy = _sites(tmp_path)
    with _open(site, tmp_path) as repo:
        repo.put_state("pg-lineage", {"lineages": [{"system_identifier": 1, "prefix": "wal"}]})
    site.ok("repo", "copy", "--to", "offsite")
    with _open(site, tmp_path) as repo:
        repo.put_state("pg-lineage", {"lineages": [{"system_identifier": 2, "prefix": "wal"}]})
    site.ok("repo", "copy", "--to", "offsite")
    with Repository.open(LocalBackend(copy.repo_dir)) as there:
        assert there.get_state("pg-lineage") == {"lineages": [{"system_identifier": 2, "prefix": "wal"}]}
    # a damaged record at the source is refused, the copy keeps the good one, the rest is copied
    flip_byte(site.repo_dir / "state" / "pg-lineage")
    data = make_tree(tmp_path / "data", seed=44, small_files=4, big_sizes=(100_000,))
    snap = site.json("backup", str(data))["snapshot_id"]
    proc = site.run("repo", "copy", "--to", "offsite")
    assert proc.returncode == 3 and "state/pg-lineage" in one_line_error(proc), proc.stderr
    _check_clean(copy)
    assert copy.snapshot_ids() == [snap]
    with Repository.open(LocalBackend(copy.repo_dir)) as there:
        assert there.get_state("pg-lineage") == {"lineages": [{"system_identifier": 2, "prefix": "wal"}]}


def test_a_copy_into_the_repository_itself_is_refused(tmp_path: Path) -> None:
    """A copy whose url names the repository (here through a symlink) copied nothing and said
    so with exit 0: the user believed there was an offsite copy."""
    alias = tmp_path / "alias"
    site = Site(tmp_path / "site", copies={"offsite": {"url": f"file://{alias}"}})
    site.ok("repo", "init")
    alias.symlink_to(site.repo_dir)
    proc = site.run("repo", "copy", "--to", "offsite")
    assert proc.returncode == 2, proc.stderr
    assert "is the repository itself" in one_line_error(proc)
