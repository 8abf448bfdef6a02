"""A flipped byte must stay repairable (issue 11, item 5), through the real `coldkeep` command.

`repo check --read-data` names the damaged blob; `repo prune` refuses to move it (exit 3, nothing
deleted) instead of sealing it into a new pack with a valid footer; `repo repair --from COPY` finds
the blob by id in the copy even where the copy keeps it in another pack, and repairs damaged
snapshot documents, index documents and key slots from the copy too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.helpers import (
    Site,
    blob_kept_elsewhere_by_the_copy,
    flip_byte,
    forget_file,
    make_tree,
    modify_tree,
    one_line_error,
    repo_files,
    tree_digest,
)

from coldkeep.repository.format import INDEX_PREFIX, SNAPSHOT_PREFIX
from coldkeep.repository.packer import pack_key
from coldkeep.repository.repository import Repository
from coldkeep.storage.base import ObjectInfo
from coldkeep.storage.local import LocalBackend

PACK_ENV = {"COLDKEEP_PACK_TARGET": str(256 * 1024)}  # a dozen packs from ~9 MiB
PASSWORD = "repair me"
WAL_NAME = "wal/00000001/000000010000000000000003"


@dataclass
class Pair:
    site: Site  # the repository, with a copy named "offsite"
    copy: Site  # a site whose repository is that copy
    data: Path
    old: str  # a snapshot both remove, so that prune has work
    new: str  # the snapshot that must survive
    digest: dict[str, str]
    passphrase: str | None


def _sites(tmp_path: Path, password_file: str = "") -> tuple[Site, Site]:
    copy_dir = tmp_path / "copy"
    site = Site(tmp_path / "site", copies={"offsite": {"url": f"file://{copy_dir}"}}, env=PACK_ENV,
                password_file=password_file)  # fmt: skip
    site.ok("repo", "init")
    return site, Site(
        tmp_path / "copy-view", url=f"file://{copy_dir}", env=PACK_ENV, password_file=password_file
    )


def _password_file(tmp_path: Path) -> str:
    path = tmp_path / "password"
    path.write_text(PASSWORD + "\n")
    path.chmod(0o600)
    return str(path)


@pytest.fixture
def pair(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Pair]:
    """Plain unless parametrized with "encrypted".  Encrypted, a rescued pack never has its damaged
    original's id (pack headers are sealed with a random nonce): the damaged pack is dropped from
    the index documents and deleted."""
    encrypted = getattr(request, "param", "plain") == "encrypted"
    site, copy = _sites(tmp_path, _password_file(tmp_path) if encrypted else "")
    data = make_tree(tmp_path / "data", seed=51)
    old = site.json("backup", str(data))["snapshot_id"]
    modify_tree(data, seed=51)
    new = site.json("backup", str(data))["snapshot_id"]
    site.ok("repo", "copy", "--to", "offsite")
    yield Pair(site, copy, data, old, new, tree_digest(data), PASSWORD if encrypted else None)


def _contents(repo_dir: Path) -> dict[str, bytes]:
    return {
        key: path.read_bytes() for key, path in repo_files(repo_dir).items() if not key.startswith("locks/")
    }


@pytest.mark.parametrize("pair", ["plain", "encrypted"], indirect=True)
def test_prune_refuses_a_damaged_blob_and_repair_finds_it_in_another_pack_of_the_copy(
    pair: Pair, tmp_path: Path
) -> None:
    site, copy = pair.site, pair.copy
    # the copy is pruned on its own: it repacks differently, so its blobs sit in other packs
    forget_file(copy, pair.old)
    copy.ok("repo", "prune", "--max-unused", "0")
    victim = blob_kept_elsewhere_by_the_copy(
        site, copy, pair.old, pair.new, tmp_path / "inspect.sqlite", pair.passphrase
    )
    flip_byte(site.repo_dir / pack_key(victim.pack), victim.offset + victim.length // 2)
    blob_hex = victim.id.hex()[:16]

    proc = site.run("--json", "repo", "check", "--read-data")
    assert proc.returncode == 3, proc.stderr
    one_line_error(proc)
    problems = json.loads(proc.stdout)["problems"]
    assert any(p["kind"] == "blob" and blob_hex in p["object"] for p in problems), problems

    forget_file(site, pair.old)
    before = _contents(site.repo_dir)
    proc = site.run("repo", "prune", "--max-unused", "0")
    assert proc.returncode == 3, proc.stderr
    line = one_line_error(proc)
    assert blob_hex in line and victim.pack[:16] in line, line
    after = _contents(site.repo_dir)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing deleted or changed

    repaired = site.json("repo", "repair", "--from", "offsite")
    assert repaired["remaining_problems"] == [], repaired
    if pair.passphrase:  # the damaged pack is dropped and deleted
        assert pack_key(victim.pack) in repaired["packs_removed"], repaired
    else:  # or rebuilt in place (its blobs, in their order, make the very same pack)
        assert pack_key(victim.pack) in repaired["replaced"], repaired
    assert repaired["blobs_rescued"] > 0 and not repaired["lost"], repaired
    check = site.json("repo", "check", "--read-data")
    assert check["ok"], check
    assert site.restore_digest(pair.new, tmp_path / "r", pair.data) == pair.digest
    # now prune and copy go ahead, and the copy stays intact
    site.ok("repo", "prune", "--max-unused", "0")
    site.ok("repo", "copy", "--to", "offsite")
    assert copy.json("repo", "check", "--read-data")["ok"]


def test_repair_snapshot_index_wal_record_and_missing_pack_from_the_copy(pair: Pair, tmp_path: Path) -> None:
    site = pair.site
    with Repository.open(LocalBackend(site.repo_dir)) as repo:
        repo.put_named(WAL_NAME, bytes(range(256)) * 300, {"timeline": 1})
        repo.put_state("pg-lineage", {"lineages": [{"system_identifier": 7, "prefix": "wal"}]})
    site.ok("repo", "copy", "--to", "offsite")
    files = repo_files(site.repo_dir)
    flip_byte(files[f"{SNAPSHOT_PREFIX}{pair.new}"])
    flip_byte(files[f"named/{WAL_NAME}"])
    flip_byte(files["state/pg-lineage"])
    index_key = next(k for k in files if k.startswith(INDEX_PREFIX))
    flip_byte(files[index_key])
    pack = next(k for k in files if k.startswith("data/"))
    files[pack].unlink()
    proc = site.run("repo", "check", "--read-data")
    assert proc.returncode == 3, proc.stderr
    repaired = site.json("repo", "repair", "--from", "offsite")
    expected = {f"{SNAPSHOT_PREFIX}{pair.new}", index_key, pack, f"named/{WAL_NAME}", "state/pg-lineage"}
    assert expected <= set(repaired["replaced"]), repaired
    assert repaired["remaining_problems"] == [], repaired
    assert site.json("repo", "check", "--read-data")["ok"]
    assert site.restore_digest(pair.new, tmp_path / "r", pair.data) == pair.digest


def test_repair_reports_what_the_copy_does_not_have(pair: Pair) -> None:
    site, copy = pair.site, pair.copy
    files = repo_files(site.repo_dir)
    pack = next(k for k in files if k.startswith("data/"))
    flip_byte(files[pack])
    (copy.repo_dir / pack).unlink()  # the copy lost it too
    proc = site.run("--json", "repo", "repair", "--from", "offsite")
    assert proc.returncode == 3, proc.stderr
    one_line_error(proc)
    result = json.loads(proc.stdout)
    assert result["lost"] and result["remaining_problems"], result
    assert (site.repo_dir / pack).exists()  # the damaged pack stays: it is all there is


def test_repair_a_damaged_key_slot_from_the_copy(tmp_path: Path) -> None:
    site, _copy = _sites(tmp_path, _password_file(tmp_path))
    data = make_tree(tmp_path / "data", seed=52, small_files=6, big_sizes=(300_000,))
    snap = site.json("backup", str(data))["snapshot_id"]
    site.ok("repo", "copy", "--to", "offsite")
    (slot,) = (p for k, p in repo_files(site.repo_dir).items() if k.startswith("keys/"))
    slot.write_bytes(slot.read_bytes()[: slot.stat().st_size // 2])  # torn: the only passphrase slot
    assert site.run("snapshots").returncode != 0
    repaired = site.json("repo", "repair", "--from", "offsite")
    assert f"keys/{slot.name}" in repaired["replaced"] and repaired["remaining_problems"] == [], repaired
    assert site.restore_digest(snap, tmp_path / "r", data) == tree_digest(data)


class _ListsAVanishedObject(LocalBackend):
    """A listing that still names an object deleted right after it was listed (a streamed WAL
    state that completed while repair scanned): the race, made deterministic."""

    def __init__(self, root: Path, vanished: str) -> None:
        super().__init__(root)
        self.vanished = vanished

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        yield from super().list(prefix)
        if self.vanished.startswith(prefix):
            yield ObjectInfo(self.vanished, 10, 0.0)


def test_repair_never_brings_back_an_object_deleted_while_it_scanned(pair: Pair) -> None:
    from coldkeep.repository.repair import repair_from

    stream = "named/wal-stream/00000001/000000010000000000000009.partial"
    site = pair.site
    with Repository.open(LocalBackend(site.repo_dir)) as repo:
        repo.put_named(stream.removeprefix("named/"), b"partial" * 100, {"timeline": 1})
    site.ok("repo", "copy", "--to", "offsite")  # the copy has it ...
    (site.repo_dir / stream).unlink()  # ... and the repository's receiver has since deleted it
    backend = _ListsAVanishedObject(site.repo_dir, stream)
    with Repository.open(backend) as repo:
        result = repair_from(repo, LocalBackend(pair.copy.repo_dir))
    assert stream not in result.replaced and not any(stream in line for line in result.lost)
    assert not (site.repo_dir / stream).exists()
