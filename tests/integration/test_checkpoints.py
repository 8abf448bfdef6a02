"""``coldkeep checkpoints list / backup / archive`` on real checkpoint directories, through the
real CLI against a throwaway repository."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

from tests.ckptfiles import checkpoint_site, models, write_checkpoint
from tests.helpers import Site, flip_byte, one_line_error, tree_digest

from coldkeep.errors import EXIT_INTEGRITY

NOW = {"COLDKEEP_NOW": "2025-11-01T12:00:00Z"}


def layout(site: Site) -> dict[str, Path]:
    """Phase 1: an old checkpoint (due), a recent one, the newest; phase 4: an old production;
    plus odd names that must be left alone."""
    root = models(site)
    made = {
        "old": write_checkpoint(root / "cet-d-phase1" / "checkpoint-20251001_153000", seed=1),
        "recent": write_checkpoint(root / "cet-d-phase1" / "checkpoint-20251030_000000", seed=2),
        "best": write_checkpoint(
            root / "cet-d-phase1" / "best-20250701_000000", seed=3, shards=1, index=False
        ),
        "prod": write_checkpoint(root / "cet-d-phase4" / "production-20240101_000000", seed=4),
        "newest4": write_checkpoint(root / "cet-d-phase4" / "checkpoint-20251031_000000", seed=5),
    }
    write_checkpoint(root / "cet-d-phase1" / "final-20251001_000000", seed=6)  # unknown type
    (root / "cet-d-phase1" / "notes.txt").write_text("hello")
    os.symlink(made["old"], root / "cet-d-phase1" / "checkpoint-20250901_000000")  # a symlinked "checkpoint"
    write_checkpoint(root / "cet-d-phase 2" / "checkpoint-20251001_000000", seed=7)
    (root / "hf-cache").mkdir()  # not a phase directory
    return made


def test_list_shows_every_checkpoint_with_reasons_and_leaves_odd_names_alone(tmp_path: Path) -> None:
    site = checkpoint_site(tmp_path / "s")
    layout(site)
    before = tree_digest(models(site))
    data = site.json("checkpoints", "list", env=NOW)
    rows = {r["name"]: r for r in data["checkpoints"]}
    assert set(rows) == {
        "cet-d-phase1/checkpoint-20251001_153000",
        "cet-d-phase1/checkpoint-20251030_000000",
        "cet-d-phase1/best-20250701_000000",
        "cet-d-phase4/production-20240101_000000",
        "cet-d-phase4/checkpoint-20251031_000000",
    }
    old = rows["cet-d-phase1/checkpoint-20251001_153000"]
    assert old["where"] == "hot" and old["complete"] is True and old["verified"] is False
    assert old["action"] == "archive" and old["due"] == "2025-10-08T15:30:00Z" and old["size"] > 0
    assert rows["cet-d-phase4/production-20240101_000000"]["reason"] == "pinned: production"
    assert rows["cet-d-phase1/checkpoint-20251030_000000"]["reason"] == "newest of its phase"
    unrecognised = {Path(u["path"]).name: u["reason"] for u in data["unrecognised"]}
    assert set(unrecognised) == {
        "final-20251001_000000",
        "notes.txt",
        "checkpoint-20250901_000000",
        "cet-d-phase 2",
        "hf-cache",
    }
    assert "a symlink" in unrecognised["checkpoint-20250901_000000"]
    only = site.json("checkpoints", "list", "--phase", "phase4", "--type", "production", env=NOW)
    assert [r["name"] for r in only["checkpoints"]] == ["cet-d-phase4/production-20240101_000000"]
    human = site.ok("checkpoints", "list", env=NOW).stdout  # not a terminal: 80 columns
    assert "unrecognised" in human
    for name in rows:  # every name in full, whatever the width (a table used to cut them to "cet-d-ph…")
        assert f"{name} " in human, (name, human)
    assert "pinned: production" in human and "due 2025-10-08" in human
    done = site.ok("checkpoints", "archive", "--dry-run", env=NOW).stdout
    assert "cet-d-phase1/checkpoint-20251001_153000  would archive: older than 7 days" in done, done
    # archive, then everything unrecognised is exactly as it was
    site.ok("checkpoints", "archive", env=NOW)
    after = tree_digest(models(site))
    for rel, digest in before.items():
        if not rel.startswith(("cet-d-phase1/checkpoint-20251001_153000", "cet-d-phase1/best-")):
            assert after.get(rel) == digest, rel


def test_backup_stores_each_complete_checkpoint_once_and_skips_incomplete(tmp_path: Path) -> None:
    site = checkpoint_site(tmp_path / "s", settle_seconds=0)
    made = layout(site)
    (made["recent"] / "model-00001-of-00002.safetensors").write_bytes(
        (made["recent"] / "model-00001-of-00002.safetensors").read_bytes()[:-10]
    )
    first = site.json("checkpoints", "backup")
    actions = {i["name"]: i["action"] for i in first["checkpoints"]}
    assert actions.pop("cet-d-phase1/checkpoint-20251030_000000") == "skipped"
    assert set(actions.values()) == {"stored"} and len(actions) == 4
    snaps = site.json("snapshots")
    assert {s["kind"] for s in snaps} == {"checkpoint"} and len(snaps) == 4
    tags = next(s["tags"] for s in snaps if s["tags"]["name"] == "cet-d-phase4/production-20240101_000000")
    assert tags == {"name": "cet-d-phase4/production-20240101_000000", "phase": "phase4",
                    "type": "production", "time": "20240101_000000"}  # fmt: skip
    again = site.json("checkpoints", "backup")
    assert [i["action"] for i in again["checkpoints"]] == ["skipped"]  # nothing new
    assert len(site.json("snapshots")) == 4
    # Tier 1: the generic retention never removes them
    site.ok("forget", "--keep-last", "1")
    assert len(site.json("snapshots")) == 4


def test_archive_verifies_then_removes_and_recover_path_is_the_repository(tmp_path: Path) -> None:
    site = checkpoint_site(tmp_path / "s")
    made = layout(site)
    want = {k: tree_digest(made[k]) for k in ("old", "best")}
    dry = site.json("checkpoints", "archive", "--dry-run", env=NOW)
    would = sorted(i["name"] for i in dry["checkpoints"] if i["action"] == "would archive")
    assert would == ["cet-d-phase1/best-20250701_000000", "cet-d-phase1/checkpoint-20251001_153000"]
    assert made["old"].exists() and not site.json("snapshots")  # a dry run stores nothing
    result = site.json("checkpoints", "archive", env=NOW)
    done = {i["name"]: i for i in result["checkpoints"]}
    assert done["cet-d-phase1/checkpoint-20251001_153000"]["action"] == "archived"
    assert done["cet-d-phase4/production-20240101_000000"]["action"] == "keep"
    assert not made["old"].exists() and not made["best"].exists()
    assert made["prod"].exists() and made["recent"].exists()
    assert not list((models(site) / "cet-d-phase1").glob(".coldkeep-*"))
    rows = {r["name"]: r for r in site.json("checkpoints", "list", env=NOW)["checkpoints"]}
    old = rows["cet-d-phase1/checkpoint-20251001_153000"]
    assert old["where"] == "repository" and old["verified"] is True and old["action"] == "archived"
    # the stored copy is byte-exact
    snap = old["snapshot"]
    site.ok("restore", snap, "--target", str(tmp_path / "back"))
    assert tree_digest(tmp_path / "back") == want["old"]
    site.ok("repo", "check", "--read-data")


def test_a_damaged_stored_copy_is_never_trusted(tmp_path: Path) -> None:
    site = checkpoint_site(tmp_path / "s")
    made = layout(site)
    site.ok("checkpoints", "backup")
    for pack in sorted((site.repo_dir / "data").rglob("*")):
        if pack.is_file():
            flip_byte(pack)
    proc = site.run("checkpoints", "archive", env=NOW)
    assert proc.returncode == EXIT_INTEGRITY, proc.stderr
    assert made["old"].exists() and made["best"].exists()  # hot copies kept
    assert not list((models(site) / "cet-d-phase1").glob(".coldkeep-*"))
    assert "does not verify" in proc.stderr and "damaged: " in proc.stderr
    assert any(
        name in proc.stderr for name in ("optimizer.bin", ".safetensors", "config.json", "tokenizer.json")
    )
    data = json.loads(site.run("--json", "checkpoints", "archive", env=NOW).stdout)
    assert data["exit_code"] == EXIT_INTEGRITY and data["problems"]


def test_a_writer_appending_during_backup_and_archive(tmp_path: Path) -> None:
    """A shard being appended to: never archived, never deleted, reported incomplete (its data
    section outgrows its header) or as changed while read."""
    site = checkpoint_site(tmp_path / "s")
    made = layout(site)
    shard = made["old"] / "model-00001-of-00002.safetensors"
    stop = threading.Event()

    def writer() -> None:
        with shard.open("ab") as f:
            while not stop.is_set():
                f.write(os.urandom(4096))
                f.flush()
                time.sleep(0.001)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for command in ("backup", "archive"):
            proc = site.run("--json", "checkpoints", command, env=NOW)
            data = json.loads(proc.stdout)
            item = next(
                i for i in data["checkpoints"] if i["name"] == "cet-d-phase1/checkpoint-20251001_153000"
            )
            assert item["action"] in ("skipped", "keep", "kept", "failed"), item
            assert "incomplete" in item["reason"] or "changed" in item["reason"], item
            assert made["old"].exists() and shard.exists()
    finally:
        stop.set()
        thread.join()
    assert made["old"].exists()
    assert not made["best"].exists()  # the rest of the run went on


def test_odd_names_and_no_root(tmp_path: Path) -> None:
    site = checkpoint_site(tmp_path / "s")
    shutil.rmtree(models(site))
    assert site.json("checkpoints", "list")["checkpoints"] == []
    proc = site.run("checkpoints", "list", "--type", "weird")
    assert proc.returncode == 2
    one_line_error(proc)


def test_many_tensors_orbax_and_no_index_end_to_end(tmp_path: Path) -> None:
    """A 3,000-tensor shard and a checkpoint without an index archive and recover byte-exact; an
    Orbax save in progress is listed incomplete and never touched."""
    import numpy as np
    from safetensors.numpy import save_file

    site = checkpoint_site(tmp_path / "s")
    phase = models(site) / "cet-d-phase7"
    many = phase / "checkpoint-20251001_000000"
    many.mkdir(parents=True)
    rng = np.random.default_rng(30)
    save_file({f"block.{i}.w": rng.standard_normal((i % 5 + 1, 4)).astype(np.float16) for i in range(3000)},
              str(many / "model.safetensors"))  # fmt: skip
    plain = write_checkpoint(phase / "checkpoint-20251002_000000", seed=3, shards=1, index=False)
    orbax = write_checkpoint(phase / "checkpoint-20251003_000000", seed=4)
    (orbax / "params.orbax-checkpoint-tmp-1730000000").mkdir()
    write_checkpoint(phase / "checkpoint-20251031_000000", seed=5)  # the newest: stays hot
    want = {p.name: tree_digest(p) for p in (many, plain, orbax)}
    result = {i["name"].split("/")[1]: i for i in site.json("checkpoints", "archive", env=NOW)["checkpoints"]}
    assert result[many.name]["action"] == result[plain.name]["action"] == "archived"
    assert result[orbax.name]["action"] == "keep" and "Orbax save in progress" in result[orbax.name]["reason"]
    assert tree_digest(orbax) == want[orbax.name]
    for ckpt in (many, plain):
        site.ok("checkpoints", "recover", f"cet-d-phase7/{ckpt.name}")
        assert tree_digest(ckpt) == want[ckpt.name]
    assert site.json("checkpoints", "verify", f"cet-d-phase7/{many.name}")["tensors"] == 3000
