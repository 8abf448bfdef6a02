"""Format version 2: half-precision chunks stored as byte planes (envelope flag 2), restored and
verified byte for byte; a repository of format version 1 is still read, and written without
flag 2 so that the coldkeep that made it can still read it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tests.helpers import flip_byte

from coldkeep.repository.backup import Backup
from coldkeep.repository.check import check
from coldkeep.repository.crypto import KdfParams
from coldkeep.repository.format import (
    CONFIG_KEY,
    FLAG_PLANES,
    FLAG_RAW,
    FORMAT_VERSION,
    add_footer,
    strip_footer,
)
from coldkeep.repository.packer import pack_key
from coldkeep.repository.repository import Repository
from coldkeep.repository.restore import Restorer
from coldkeep.repository.snapshot import Snapshot
from coldkeep.storage.local import LocalBackend

FAST_KDF = KdfParams(memory_kib=8 * 1024, iterations=1, lanes=1)


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLDKEEP_CACHE_DIR", str(tmp_path / "cache"))


def checkpoint(root: Path) -> None:
    """Two float16 shards (one tensor each, bigger than a chunk: CDC inside it) and a config."""
    from safetensors.numpy import save_file

    root.mkdir()
    rng = np.random.default_rng(5)
    for i in range(2):
        weights = (0.02 * rng.standard_normal((1024, 3000))).astype(np.float16)
        save_file({f"layer.{i}.weight": weights}, str(root / f"model-0000{i + 1}-of-00002.safetensors"))
    (root / "config.json").write_text(json.dumps({"torch_dtype": "float16", "hidden_size": 3000}))


def flags(repo: Repository, snap: Snapshot, root: Path) -> dict[str, list[int]]:
    """Every file's chunk envelope flags in order, read from the packs (an unencrypted repository)."""
    found: dict[str, list[int]] = {}
    for entry in repo.iter_tree(snap):
        if entry["type"] != "file":
            continue
        for chunk in entry["chunks"]:
            loc = repo.cache.get(bytes.fromhex(chunk))
            assert loc is not None
            with open(root / pack_key(loc.pack), "rb") as f:
                f.seek(loc.offset)
                found.setdefault(entry["path"], []).append(f.read(1)[0])
    return found


def restored_equal(repo: Repository, snap: Snapshot, src: Path, dest: Path) -> None:
    result = Restorer(repo).run(snap, dest)
    assert not result.errors
    for path in src.iterdir():
        assert (dest / path.name).read_bytes() == path.read_bytes(), path.name


def test_new_repositories_store_float16_as_byte_planes_and_restore_them(tmp_path: Path) -> None:
    src = tmp_path / "ckpt"
    checkpoint(src)
    repo = Repository.init(LocalBackend(tmp_path / "repo"))
    assert repo.config.version == FORMAT_VERSION == 2
    snap = Backup(repo).run([src], base=src, kind="checkpoint").snapshot
    found = flags(repo, snap, tmp_path / "repo")
    header, *tensor = found["model-00001-of-00002.safetensors"]
    assert header != FLAG_PLANES and len(tensor) > 2 and set(tensor[:-1]) == {FLAG_PLANES}
    assert found["config.json"] == [FLAG_RAW]
    assert repo.verify_snapshot(snap, src).ok
    assert check(repo, read_data=True).ok
    restored_equal(repo, snap, src, tmp_path / "out")

    # a flipped byte in a planes blob: verify names the file, restore refuses it
    entry = next(e for e in repo.iter_tree(snap) if e["path"] == "model-00002-of-00002.safetensors")
    loc = repo.cache.get(bytes.fromhex(entry["chunks"][1]))
    assert loc is not None
    flip_byte(tmp_path / "repo" / pack_key(loc.pack), loc.offset + loc.length - 10)  # the raw plane
    result = repo.verify_snapshot(snap)
    assert result.paths("damaged") == ["model-00002-of-00002.safetensors"], result.problems
    assert "corrupt" in result.problems[0].detail
    repo.close()


def test_a_format_1_repository_is_read_and_written_without_planes(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "repo")
    Repository.init(backend).close()
    doc = json.loads(strip_footer(backend.get(CONFIG_KEY), "config"))
    doc["version"] = 1  # as coldkeep made repositories before format 2
    backend.put(CONFIG_KEY, add_footer(json.dumps(doc, indent=2, sort_keys=True).encode()))
    src = tmp_path / "ckpt"
    checkpoint(src)
    repo = Repository.open(backend)
    assert repo.config.version == 1
    snap = Backup(repo).run([src], base=src, kind="checkpoint").snapshot
    assert all(FLAG_PLANES not in f for f in flags(repo, snap, tmp_path / "repo").values())
    assert repo.verify_snapshot(snap, src).ok
    restored_equal(repo, snap, src, tmp_path / "out")
    repo.close()


def test_planes_in_an_encrypted_repository(tmp_path: Path) -> None:
    src = tmp_path / "ckpt"
    checkpoint(src)
    repo = Repository.init(LocalBackend(tmp_path / "repo"), passphrase="planes", kdf_params=FAST_KDF)
    snap = Backup(repo).run([src], base=src, kind="checkpoint").snapshot
    stored = sum(p.stat().st_size for p in (tmp_path / "repo" / "data").rglob("*") if p.is_file())
    raw = sum(p.stat().st_size for p in src.iterdir())
    assert stored < 0.9 * raw  # zstd alone keeps ~0.92 of float16 weights; planes ~0.84
    assert repo.verify_snapshot(snap, src).ok
    restored_equal(repo, snap, src, tmp_path / "out")
    repo.close()
