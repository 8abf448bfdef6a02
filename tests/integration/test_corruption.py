"""Damage and bad input, through the real `coldkeep` command (invariants 3 and 7).

* One flipped byte in any object (pack, index, snapshot, tree blob, config, named object):
  `repo check --read-data` exits 3 and names the object; `restore` of an affected file exits 3
  with an error naming the file and leaves neither that file nor a temp file behind, while the
  undamaged files are restored.
* A truncated pack, a missing index, a wrong passphrase, a newer format version, an S3 endpoint
  that is down and a full disk: each is one named error line plus a hint, never a traceback.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.helpers import (
    AWS_ENV,
    Site,
    flip_byte,
    make_tree,
    modify_tree,
    one_line_error,
    repo_files,
    tree_digest,
)

from coldkeep.errors import IntegrityError
from coldkeep.repository.format import add_footer, strip_footer
from coldkeep.repository.index import IndexCache
from coldkeep.repository.packer import TAIL, BlobEntry, pack_key
from coldkeep.repository.repository import Repository
from coldkeep.storage.local import LocalBackend

PACK_ENV = {"COLDKEEP_PACK_TARGET": str(256 * 1024)}  # a dozen packs from ~9 MiB
WAL_NAME = "wal/00000001/000000010000000000000003"


def open_api(site: Site, cache: Path) -> Repository:
    """The repository through the Python API, with its index cache at ``cache`` (inspection only)."""
    backend = LocalBackend(site.repo_dir)
    repo = Repository.open(backend)
    index_cache = IndexCache(repo.config.id, path=cache)
    index_cache.sync(backend, repo.keys)
    repo._cache = index_cache
    return repo


@dataclass
class Base:
    site: Site
    data: Path
    snap: str
    digest: dict[str, str]
    entries: dict[str, dict[str, Any]]  # snapshot path -> tree entry
    blobs: dict[str, BlobEntry]  # blob id hex -> where it is
    tree_blobs: list[str]

    def name(self, rel: str) -> str:
        """A file's name in the snapshot (absolute path without the leading slash)."""
        return str(self.data / rel).lstrip("/")

    def chunk(self, rel: str, index: int = 0) -> BlobEntry:
        return self.blobs[self.entries[self.name(rel)]["chunks"][index]]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Base]:
    root = tmp_path_factory.mktemp("corruption")
    data = make_tree(root / "data", seed=21)
    site = Site(root / "base", env=PACK_ENV)
    site.ok("repo", "init")
    site.ok("backup", str(data))
    (snap,) = site.snapshot_files()
    with open_api(site, root / "inspect.sqlite") as repo:
        assert repo.put_named(WAL_NAME, b"\x17" * 70_000 + bytes(range(256)), {"timeline": 1})
        repo.put_state("test-record", {"lineages": [1, 2, 3]})
        snapshot = repo.load_snapshot_id(snap)
        entries = {e["path"]: e for e in repo.iter_tree(snapshot)}
        blobs = {e.id.hex(): e for e in repo.cache.all_blobs()}
        tree_blobs = list(snapshot.tree)
    packs = {e.pack for e in blobs.values()}
    assert len(packs) >= 6, "expected several packs"
    yield Base(site, data, snap, tree_digest(data), entries, blobs, tree_blobs)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def site(base: Base, tmp_path: Path) -> Site:
    """A private clone of the base repository for one test to damage."""
    return base.site.clone(tmp_path / "site")


def assert_check_names(site: Site, needle: str) -> dict[str, Any]:
    """`repo check --read-data` exits 3, a problem names ``needle``, and so does the error line."""
    proc = site.run("--json", "repo", "check", "--read-data")
    assert proc.returncode == 3, proc.stderr
    line = one_line_error(proc)
    result: dict[str, Any] = json.loads(proc.stdout)
    assert not result["ok"]
    assert any(needle in p["object"] or needle in p["detail"] for p in result["problems"]), result["problems"]
    assert needle in line, line
    return result


def flip_in_blob(site: Site, blob: BlobEntry) -> Path:
    path = site.repo_dir / pack_key(blob.pack)
    flip_byte(path, blob.offset + blob.length // 2)
    return path


def leftovers(target: Path) -> list[str]:
    return sorted(p.name for p in target.rglob(".coldkeep-restore-*"))


# ------------------------------------------------------------------------------------------------
# a flipped byte anywhere


def assert_restore_never_corrupt(base: Base, site: Site, target: Path, pack_id: str) -> None:
    """Restore with a damaged pack: what is restored is intact, what is not is named (exit 3)."""
    proc = site.run("restore", base.snap, "--target", str(target))
    restored = target / str(base.data).lstrip("/")
    got = tree_digest(restored) if restored.exists() else {}
    assert leftovers(target) == []
    assert all(base.digest[k] == v for k, v in got.items()), "a restored file differs from the source"
    missing = {k for k, v in base.digest.items() if v.startswith("file:")} - set(got)
    if proc.returncode == 0:  # the flip hit the pack's header or footer, which restore does not read
        assert not missing and not proc.stderr.strip(), proc.stderr
    else:
        assert proc.returncode == 3, proc.stderr
        line = one_line_error(proc)
        assert pack_id[:16] in line, line
        assert missing, "exit 3 but every file was restored"
        assert not got or any(base.name(k) in line for k in missing), line
    shutil.rmtree(target, ignore_errors=True)


def sweep(
    site: Site, seed: int, on_pack: Callable[[str], None] | None = None, skip: tuple[str, ...] = ()
) -> int:
    """Flip one byte at a random place (seeded) in every object of ``site``, one object at a
    time, and insist that `repo check --read-data` exits 3 naming it.  Returns how many."""
    rng = random.Random(seed)
    done = 0
    for key, path in repo_files(site.repo_dir).items():
        if key.startswith("locks/") or key in skip:
            continue  # locks: mutable, no checksum by design
        at = rng.randrange(path.stat().st_size)
        flip_byte(path, at)
        try:
            if key == "config":
                proc = site.run("repo", "check", "--read-data")
                assert proc.returncode == 3, proc.stderr
                assert "repository config" in one_line_error(proc)
            elif key.startswith("data/"):
                pack_id = key.split("/")[-1]
                assert_check_names(site, pack_id[:16])
                if on_pack is not None:
                    on_pack(pack_id)
            elif key.startswith("named/"):
                assert_check_names(site, key.removeprefix("named/"))
            else:  # index/<id>, snapshots/<id>, state/<name>, keys/<slot>
                assert_check_names(site, key)
            done += 1
        except AssertionError as exc:
            raise AssertionError(f"{key} flipped at byte {at}: {exc}") from None
        finally:
            flip_byte(path, at)  # undo
    proc = site.run("repo", "check", "--read-data")
    assert proc.returncode == 0, proc.stderr
    return done


def test_flip_a_byte_in_every_object(base: Base, site: Site, tmp_path: Path) -> None:
    """`repo check --read-data` names every damaged object, and a restore with a damaged pack
    writes nothing corrupt."""
    kinds = {key.split("/")[0] for key in repo_files(site.repo_dir)}
    assert kinds >= {"config", "data", "index", "snapshots", "named", "state"}, kinds
    n = sweep(
        site, 7, lambda pack_id: assert_restore_never_corrupt(base, site, tmp_path / pack_id[:8], pack_id)
    )
    assert n >= 12


def test_flip_a_byte_in_every_object_of_an_encrypted_repository(tmp_path: Path) -> None:
    """The same with AES-GCM envelopes, two key slots and an encrypted state record."""
    secret, other = tmp_path / "passphrase", tmp_path / "second-passphrase"
    secret.write_text("correct horse battery staple\n")
    other.write_text("a second passphrase\n")
    data = make_tree(tmp_path / "data", seed=6, small_files=6, big_sizes=(300_000,))
    site = Site(tmp_path / "enc", password_file=str(secret), env=PACK_ENV)
    site.ok("repo", "init")
    site.ok("repo", "key", "add", "--new-password-file", str(other))
    site.ok("backup", str(data))
    with Repository.open(LocalBackend(site.repo_dir), "correct horse battery staple") as repo:
        repo.put_state("test-record", {"ok": True})
    slots = sorted(k for k in repo_files(site.repo_dir) if k.startswith("keys/"))
    assert len(slots) == 2
    # the slot the passphrase opens: damaged, it cannot open the repository; the error names it
    first = site.json("repo", "key", "list")[0]["id"]
    path = site.repo_dir / "keys" / first
    flip_byte(path)
    proc = site.run("repo", "check", "--read-data")
    assert proc.returncode in (2, 3) and first in one_line_error(proc), proc.stderr
    flip_byte(path)
    # every other object, the other key slot included
    assert sweep(site, 8, skip=(f"keys/{first}",)) >= 6


@pytest.mark.parametrize("region", ["header", "trailer", "footer"])
def test_flip_in_pack_structure(base: Base, site: Site, region: str) -> None:
    """Damage outside any blob (the pack header, its length + magic, the footer digest)."""
    blob = base.chunk("b/big-0.bin")
    path = site.repo_dir / pack_key(blob.pack)
    size = path.stat().st_size
    offset = {"header": size - TAIL - 3, "trailer": size - TAIL + 1, "footer": size - 5}[region]
    flip_byte(path, offset)
    assert_check_names(site, blob.pack[:16])


def test_restore_refuses_a_damaged_chunk(base: Base, site: Site, tmp_path: Path) -> None:
    damaged = "b/big-0.bin"
    flip_in_blob(site, base.chunk(damaged, 1))
    result = assert_check_names(site, base.chunk(damaged, 1).pack[:16])
    affected = [a for p in result["problems"] for a in p["affected"]]
    assert any(a.endswith(base.name(damaged)) for a in affected), result["problems"]

    target = tmp_path / "restore"
    proc = site.run("restore", base.snap, "--target", str(target))
    assert proc.returncode == 3, proc.stderr
    line = one_line_error(proc)
    assert base.name(damaged) in line and base.chunk(damaged, 1).pack[:16] in line, line
    restored = target / str(base.data).lstrip("/")
    assert not (restored / damaged).exists()
    assert leftovers(target) == []
    expected = {k: v for k, v in base.digest.items() if k != damaged}
    assert tree_digest(restored) == expected  # everything else, including the (now dangling) symlink


def test_restore_refuses_a_damaged_small_file_and_keeps_its_pack_neighbours(
    base: Base, site: Site, tmp_path: Path
) -> None:
    """A pack holds several small files: only the one whose blob is damaged fails."""
    by_pack: dict[str, list[str]] = {}
    for rel, fp in base.digest.items():
        entry = base.entries.get(base.name(rel))
        if fp.startswith("file:") and entry and len(entry["chunks"]) == 1:
            by_pack.setdefault(base.blobs[entry["chunks"][0]].pack, []).append(rel)
    files = max(by_pack.values(), key=len)
    assert len(files) >= 2
    damaged = sorted(files)[0]
    flip_in_blob(site, base.chunk(damaged))
    target = tmp_path / "restore"
    proc = site.run("restore", base.snap, "--target", str(target))
    assert proc.returncode == 3
    assert base.name(damaged) in one_line_error(proc)
    restored = target / str(base.data).lstrip("/")
    assert not (restored / damaged).exists() and leftovers(target) == []
    assert tree_digest(restored) == {k: v for k, v in base.digest.items() if k != damaged}
    # the undamaged neighbours in the same pack were restored
    assert all((restored / f).is_file() for f in files if f != damaged)


def test_damaged_tree_blob(base: Base, site: Site, tmp_path: Path) -> None:
    tree = base.blobs[base.tree_blobs[0]]
    flip_in_blob(site, tree)
    assert_check_names(site, tree.pack[:16])
    target = tmp_path / "restore"
    proc = site.run("restore", base.snap, "--target", str(target))
    assert proc.returncode == 3
    assert tree.pack[:16] in one_line_error(proc)
    assert not target.exists() or not any(p.is_file() for p in target.rglob("*"))


def test_damaged_snapshot_document(base: Base, site: Site, tmp_path: Path) -> None:
    flip_byte(site.repo_dir / "snapshots" / base.snap)
    assert_check_names(site, f"snapshots/{base.snap}")
    proc = site.run("restore", base.snap, "--target", str(tmp_path / "restore"))
    assert proc.returncode == 3
    assert base.snap[:8] in one_line_error(proc)
    assert not (tmp_path / "restore").exists() or not any((tmp_path / "restore").iterdir())


def test_damaged_index_document(base: Base, site: Site, tmp_path: Path) -> None:
    (key,) = [k for k in repo_files(site.repo_dir) if k.startswith("index/")]
    flip_byte(site.repo_dir / key)
    assert_check_names(site, key)
    # the local cache is only a cache: rebuilt from the repository, the damage is named
    proc = site.run("repo", "rebuild-cache")
    assert proc.returncode == 3
    assert key.removeprefix("index/") in one_line_error(proc)


def test_damaged_config(base: Base, site: Site) -> None:
    flip_byte(site.repo_dir / "config", 10)
    for args in (("snapshots",), ("repo", "check"), ("backup", str(base.data))):
        proc = site.run(*args)
        assert proc.returncode == 3, (args, proc.stderr)
        assert "repository config" in one_line_error(proc)
    assert not (site.repo_dir / "locks").exists() or not any((site.repo_dir / "locks").iterdir())


def test_damaged_named_object(base: Base, site: Site, tmp_path: Path) -> None:
    path = site.repo_dir / "named" / WAL_NAME
    flip_byte(path, path.stat().st_size // 3)
    assert_check_names(site, WAL_NAME)
    with open_api(site, tmp_path / "inspect.sqlite") as repo, pytest.raises(IntegrityError, match=WAL_NAME):
        repo.get_named(WAL_NAME)


# ------------------------------------------------------------------------------------------------
# truncated pack, missing index


def test_truncated_pack(base: Base, site: Site, tmp_path: Path) -> None:
    damaged = "b/big-1.bin"
    blob = base.chunk(damaged, -1)
    path = site.repo_dir / pack_key(blob.pack)
    with open(path, "r+b") as fh:
        fh.truncate(blob.offset + blob.length // 2)  # cut inside the file's last chunk
    proc = site.run("--json", "repo", "check")  # structure only: the size gives it away
    assert proc.returncode == 3
    assert pack_key(blob.pack) in one_line_error(proc) and "truncated" in proc.stderr
    assert_check_names(site, blob.pack[:16])
    target = tmp_path / "restore"
    proc = site.run("restore", base.snap, "--target", str(target))
    assert proc.returncode == 3
    line = one_line_error(proc)
    assert base.name(damaged) in line and "truncated" in line, line
    restored = target / str(base.data).lstrip("/")
    assert not (restored / damaged).exists() and leftovers(target) == []
    assert tree_digest(restored) == {k: v for k, v in base.digest.items() if k != damaged}


def test_missing_index(base: Base, site: Site, tmp_path: Path) -> None:
    for key, path in repo_files(site.repo_dir).items():
        if key.startswith("index/"):
            path.unlink()
    proc = site.run("--json", "repo", "check")
    assert proc.returncode == 3
    line = one_line_error(proc)
    result = json.loads(proc.stdout)
    assert "missing from the index" in line or "not in the index" in line, line
    assert any(base.tree_blobs[0][:16] in p["object"] + p["detail"] for p in result["problems"])
    assert any("not in any index" in w for w in result["warnings"])  # every pack is now unindexed
    # rebuilding the cache cannot invent an index: it succeeds, with nothing in it
    rebuilt = site.json("repo", "rebuild-cache")
    assert rebuilt["blobs"] == 0
    # restore fails with one named line and writes nothing
    target = tmp_path / "restore"
    proc = site.run("restore", base.snap, "--target", str(target))
    assert proc.returncode == 3
    assert "not in the index" in one_line_error(proc)
    assert not target.exists() or not any(p.is_file() for p in target.rglob("*"))
    # prune refuses rather than deleting every (unindexed) pack
    packs_before = {k for k in repo_files(site.repo_dir) if k.startswith("data/")}
    proc = site.run("repo", "prune")
    assert proc.returncode == 3
    assert "not in the index" in one_line_error(proc)
    assert {k for k in repo_files(site.repo_dir) if k.startswith("data/")} == packs_before


# ------------------------------------------------------------------------------------------------
# bad input and failing storage


def test_wrong_passphrase(tmp_path: Path) -> None:
    secret = tmp_path / "passphrase"
    secret.write_text("correct horse battery staple\n")
    data = make_tree(tmp_path / "data", seed=5, small_files=5, big_sizes=(100_000,))
    site = Site(tmp_path / "enc", password_file=str(secret))
    site.ok("repo", "init")
    site.ok("backup", str(data))
    for args in (("snapshots",), ("restore", "latest", "--target", str(tmp_path / "r")), ("repo", "check")):
        proc = site.run(*args, env={"COLDKEEP_PASSWORD": "Tr0ub4dor&3"})
        assert proc.returncode == 2, proc.stderr
        line = one_line_error(proc)
        assert "wrong passphrase" in line and "Tr0ub4dor" not in proc.stderr + proc.stdout
    assert not (tmp_path / "r").exists()
    assert len(site.json("snapshots")) == 1  # the right one still works


def test_newer_format_version(base: Base, site: Site) -> None:
    path = site.repo_dir / "config"
    doc = json.loads(strip_footer(path.read_bytes(), "config"))
    doc["version"] = 99
    path.write_bytes(add_footer(json.dumps(doc).encode()))
    before = repo_files(site.repo_dir).keys()
    for args in (("snapshots",), ("repo", "check", "--read-data"), ("backup", str(base.data))):
        proc = site.run(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        line = one_line_error(proc)
        assert "format version 99 is newer" in line, line
    assert repo_files(site.repo_dir).keys() == before  # nothing written


def test_s3_endpoint_down(tmp_path: Path, s3_stopped_endpoint: str) -> None:
    site = Site(tmp_path / "s3", url="s3://bucket/x", endpoint_url=s3_stopped_endpoint, env=AWS_ENV)
    for args in (("repo", "init"), ("snapshots",)):
        started = time.monotonic()
        proc = site.run(*args, timeout=60)
        elapsed = time.monotonic() - started
        assert proc.returncode == 1, proc.stderr
        line = one_line_error(proc)
        assert line.startswith("error: storage unreachable") and s3_stopped_endpoint in line, line
        assert elapsed < 20, f"{args}: {elapsed:.1f} s"


def test_full_disk(base: Base, site: Site, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(base.data, data, symlinks=True)
    modify_tree(data, seed=9)
    # `write` = put or put_if_absent: packs, index and snapshot all go through put_if_absent
    proc = site.run("backup", str(data), env={"COLDKEEP_FAULTS": "full:write:3"})
    assert proc.returncode == 1, proc.stderr
    assert "no space left" in one_line_error(proc)
    assert site.snapshot_files() == {base.snap}
    proc = site.run("repo", "check")
    assert proc.returncode == 0, proc.stderr
    assert site.restore_digest(base.snap, tmp_path / "r1", base.data) == base.digest
    site.ok("backup", str(data))
    site.ok("repo", "check", "--read-data")
    (new,) = site.snapshot_files() - {base.snap}
    assert site.restore_digest(new, tmp_path / "r2", data) == tree_digest(data)
