"""Small dataset trees in the spec's layout (``train/<app>/``, ``holdout/<app>/``, each app a
directory with a ``metadata.json``), for the datasets and repro tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.helpers import Site, flip_byte


def make_dataset(
    root: Path, *, train: int = 4, holdout: int = 2, files_per_app: int = 3, seed: int = 0
) -> Path:
    """A deterministic dataset: ``train`` + ``holdout`` apps, each a ``metadata.json``, a
    ``src/`` with ``files_per_app`` files (text and random bytes, up to 24 KiB) and a README."""
    rng = random.Random(seed)
    for split, count in (("train", train), ("holdout", holdout)):
        for i in range(count):
            app = root / split / f"app-{split}-{i:02d}"
            (app / "src").mkdir(parents=True, exist_ok=True)
            (app / "metadata.json").write_text(json.dumps({"name": app.name, "split": split, "i": i}) + "\n")
            (app / "README.md").write_text(f"# {app.name}\n" + "lorem ipsum " * rng.randrange(1, 200))
            for k in range(files_per_app):
                size = rng.randrange(1, 24 * 1024)
                data = (
                    rng.getrandbits(size * 8).to_bytes(size, "little")
                    if k % 2
                    else (f"line {k}\n" * size).encode()[:size]
                )
                (app / "src" / f"part-{k}.bin").write_bytes(data)
    return root


def app_files(root: Path) -> list[Path]:
    """Every file of the dataset, sorted."""
    return sorted(p for p in root.rglob("*") if p.is_file())


def damage_files(
    site: Site, names: list[str], cache: Path, monkeypatch: pytest.MonkeyPatch, *, kind: str = "dataset"
) -> None:
    """Flip a byte inside the stored chunk of each file of ``names`` (the newest snapshot of ``kind``)."""
    from coldkeep.repository.packer import pack_key
    from coldkeep.repository.repository import Repository
    from coldkeep.storage.local import LocalBackend

    monkeypatch.setenv("COLDKEEP_CACHE_DIR", str(cache))
    with Repository.open(LocalBackend(site.repo_dir)) as repo:
        version = repo.list_snapshots(kind=kind)[-1]
        entries = {e["path"]: e for e in repo.iter_tree(version)}
        for name in names:
            chunk = bytes.fromhex(entries[name]["chunks"][0])
            blob = repo.cache.get_many([chunk])[chunk]
            flip_byte(site.repo_dir / pack_key(blob.pack), blob.offset + blob.length // 2)
