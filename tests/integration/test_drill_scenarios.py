"""`coldkeep drill --scenario checkpoint|dataset|full` on small real checkpoints and dataset
versions: they pass, recovering the production checkpoint, a seeded random archived one, the
newest and a random older dataset version, all into scratch (the hot disk untouched); a damaged
blob of an archived checkpoint or of a dataset file fails them naming the object; `full` skips the
scenarios that protect nothing (issue 16; `full --from-copy` after losing the repository:
tests/integration/test_drill.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from tests.ckptfiles import checkpoint_site, models, write_checkpoint
from tests.datasetsite import make_dataset
from tests.helpers import Site, flip_byte, toml_str, tree_digest

from coldkeep.errors import EXIT_INTEGRITY

#: a load check that fails on a checkpoint without its config (i.e. not recovered whole)
LOAD_CHECK = (
    "import pathlib, sys; sys.exit(0 if (pathlib.Path(sys.argv[1]) / 'config.json').is_file() else 1)"
)
PRODUCTION = "cet-d-phase1/production-20251010_000000"
ARCHIVED = {"cet-d-phase1/best-20251001_000000", "cet-d-phase1/checkpoint-20251002_000000"}


def drill_site(tmp_path: Path) -> tuple[Site, Path]:
    """Three stored checkpoints (one in production) and two dataset versions (v2 changes one
    file of v1 and adds one)."""
    command = f'{sys.executable} -c "{LOAD_CHECK}" {{path}}'
    site = checkpoint_site(tmp_path / "s", extra=f"load_check_command = {toml_str(command)}\n")
    phase = models(site) / "cet-d-phase1"
    for seed, name in enumerate(
        ("best-20251001_000000", "checkpoint-20251002_000000", "production-20251010_000000")
    ):
        write_checkpoint(phase / name, seed=seed + 1, shards=1, per_shard=4)
    site.ok("checkpoints", "backup")
    data = make_dataset(tmp_path / "applications", train=2, holdout=1, files_per_app=2)
    site.ok("datasets", "snapshot", "--version", "v1", "--root", str(data))
    (data / "train" / "app-train-00" / "src" / "part-0.bin").write_bytes(b"changed in v2\n" * 100)
    (data / "train" / "app-train-00" / "NEW.md").write_text("new in v2\n" * 50)
    site.ok("datasets", "snapshot", "--version", "v2", "--root", str(data))
    return site, data


def damage(site: Site, kind: str, tag: str, value: str, paths: list[str]) -> None:
    """Flip a byte in the last stored chunk of each of ``paths`` in the snapshot of ``kind`` tagged
    ``tag=value``."""
    from coldkeep.repository.packer import pack_key
    from coldkeep.repository.repository import Repository
    from coldkeep.storage.local import LocalBackend

    with Repository.open(LocalBackend(site.repo_dir)) as repo:
        (snap,) = [s for s in repo.list_snapshots(kind=kind) if s.tags.get(tag) == value]
        entries = {e["path"]: e for e in repo.iter_tree(snap)}
        for path in paths:
            (entry,) = [e for p, e in entries.items() if p.endswith(path)]
            chunk = bytes.fromhex(entry["chunks"][-1])  # (a shard's first chunk is its header, shared)
            blob = repo.cache.get_many([chunk])[chunk]
            flip_byte(site.repo_dir / pack_key(blob.pack), blob.offset + blob.length // 2)


def test_checkpoint_and_dataset_drills_pass_recovering_into_scratch(tmp_path: Path) -> None:
    site, _data = drill_site(tmp_path)
    hot = tree_digest(models(site))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    ck = site.json("drill", "--scenario", "checkpoint", "--seed", "7", "--scratch", str(scratch))
    assert ck["verdict"] == "passed" and ck["ok"], ck["checks"]
    assert ck["seed"] == 7 and ck["recovered"]["production"]["name"] == PRODUCTION
    archived = ck["recovered"]["archived"]["name"]
    assert archived in ARCHIVED
    names = [c["name"] for c in ck["checks"]]
    assert names == [f"recover production {PRODUCTION}", f"load check {PRODUCTION}",
                     f"recover archived {archived}", f"load check {archived}"]  # fmt: skip
    assert set(ck["steps"]) == {"production", "archived", "load check"}
    assert ck["bytes"] > 0 and ck["files_mb_s"] > 0
    assert ck["projection"]["checkpoint_bytes"] > 0 and "projected_rto_s" in ck["projection"]
    # the same seed chooses the same archived checkpoint; the choice is among all archived ones
    # (seeds 7 and 0 choose different ones)
    seeds = {s: site.json("drill", "--scenario", "checkpoint", "--seed", str(s))["recovered"]["archived"]["name"]
             for s in (7, 0)}  # fmt: skip
    assert seeds[7] == archived and set(seeds.values()) == ARCHIVED

    ds = site.json("drill", "--scenario", "dataset", "--scratch", str(scratch))
    assert ds["verdict"] == "passed", ds["checks"]
    assert ds["recovered"]["newest"]["version"] == "v2" and ds["recovered"]["older"]["version"] == "v1"
    assert [c["ok"] for c in ds["checks"]] == [True, True] and ds["projection"]["dataset_bytes"] > 0

    assert tree_digest(models(site)) == hot  # the hot disk untouched
    assert list(scratch.iterdir()) == []  # nothing left in scratch
    runs = site.json("runs", "--job", "drill")
    assert {r["result"] for r in runs} == {"ok"} and all("rto_s" in r["figures"] for r in runs)


def test_damaged_archived_checkpoint_and_dataset_file_fail_the_drill_naming_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site, _data = drill_site(tmp_path)
    monkeypatch.setenv("COLDKEEP_CACHE_DIR", str(site.cache_dir))
    full = site.json("drill", "--scenario", "full", "--seed", "11")
    assert full["verdict"] == "passed", full["checks"]
    subs = full["scenarios"]
    # nothing to protect: skipped, not failed
    assert subs["database"]["skipped"] == "no base backup in the repository and no [postgres] section"
    assert subs["conversations"]["skipped"] == "no [conversations] section"
    assert set(full["steps"]) == {"checkpoint", "dataset"}
    assert all(c["name"].split(": ")[0] in ("checkpoint", "dataset") for c in full["checks"])
    assert full["bytes"] == subs["checkpoint"]["bytes"] + subs["dataset"]["bytes"] > 0
    chosen = subs["checkpoint"]["recovered"]["archived"]["name"]

    shard = "model-00001-of-00001.safetensors"
    damage(site, "checkpoint", "name", chosen, [shard])
    proc = site.run("drill", "--scenario", "full", "--seed", "11")  # the same seed: the same choice
    assert proc.returncode == EXIT_INTEGRITY, proc.stderr
    assert f"drill failed: checkpoint: recover archived {chosen}: " in proc.stderr and shard in proc.stderr

    damage(
        site, "dataset", "version", "v2", ["train/app-train-00/NEW.md", "train/app-train-00/src/part-0.bin"]
    )
    out = site.run("--json", "drill", "--scenario", "dataset")
    assert out.returncode == EXIT_INTEGRITY
    assert "v2" in out.stderr and "NEW.md" in out.stderr
    result = json.loads(out.stdout)
    (bad,) = [c for c in result["checks"] if not c["ok"]]
    assert bad["name"] == "restore newest dataset v2"
    assert (
        "train/app-train-00/NEW.md" in bad["detail"] and "train/app-train-00/src/part-0.bin" in bad["detail"]
    )
