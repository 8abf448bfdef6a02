"""``checkpoints promote / rollback / history`` and ``recover … --at``; ``checkpoints export``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.ckptfiles import checkpoint_site, models, write_checkpoint
from tests.helpers import Site, need, one_line_error, tree_digest

from coldkeep.errors import EXIT_NOT_FOUND


def at(when: str) -> dict[str, str]:
    return {"COLDKEEP_NOW": when}


def productions(site: Site, phase: str = "cet-d-phase4") -> list[str]:
    return sorted(p.name for p in (models(site) / phase).glob("production-*"))


def test_promote_rollback_history_and_at(tmp_path: Path) -> None:
    site = checkpoint_site(tmp_path / "s")
    phase = models(site) / "cet-d-phase4"
    first = write_checkpoint(phase / "production-20251001_000000", seed=1)
    best = write_checkpoint(phase / "best-20251015_092000", seed=2)
    want = {"first": tree_digest(first), "best": tree_digest(best)}

    event = site.json("checkpoints", "promote", "cet-d-phase4/best-20251015_092000", "--reason", "eval +2%",
                      env=at("2025-11-01T12:00:00Z"))  # fmt: skip
    assert event["to"] == "cet-d-phase4/production-20251101_120000"
    assert event["demote_from"] == "cet-d-phase4/production-20251001_000000"
    assert event["demote_to"] == "cet-d-phase4/rollback-20251101_120000"
    assert event["reason"] == "eval +2%" and "@" in event["who"] and event["state"] == "done"
    assert productions(site) == ["production-20251101_120000"]
    new = phase / "production-20251101_120000"
    assert (
        tree_digest(new) == want["best"] and tree_digest(phase / "rollback-20251101_120000") == want["first"]
    )
    shard = "model-00001-of-00002.safetensors"
    assert os.stat(new / shard).st_ino == os.stat(best / shard).st_ino  # hard links, no copy

    back = site.json(
        "checkpoints", "rollback", "phase4", "--reason", "regression", env=at("2025-11-02T00:00:00Z")
    )
    assert back["from"] == "cet-d-phase4/rollback-20251101_120000"
    assert back["to"] == "cet-d-phase4/production-20251102_000000"
    assert back["demote_to"] == "cet-d-phase4/rollback-20251102_000000"
    assert productions(site) == ["production-20251102_000000"]
    assert tree_digest(phase / "production-20251102_000000") == want["first"]
    assert tree_digest(phase / "rollback-20251102_000000") == want["best"]

    events = site.json("checkpoints", "history", "--phase", "phase4")["events"]
    assert [(e["action"], e["reason"]) for e in events] == [
        ("promote", "eval +2%"),
        ("rollback", "regression"),
    ]
    assert "cet-d-phase4/production-20251001_000000" in events[0]["demote_from"]  # the original name stays

    # --at: what was in production then (the history), restored elsewhere byte-exact
    def production_at(when: str, where: str) -> dict[str, str]:
        out = site.json(
            "checkpoints", "recover", "cet-d-phase4-production", "--at", when, "--to", str(tmp_path / where)
        )
        return tree_digest(Path(out["target"]))

    assert production_at("2025-10-20T00:00:00Z", "a") == want["first"]  # before any promotion: by name
    assert production_at("2025-11-01T18:00:00Z", "b") == want["best"]
    assert production_at("2025-11-03T00:00:00Z", "c") == want["first"]
    # recovering a production to the hot disk next to the current one is refused
    proc = site.run("checkpoints", "recover", "cet-d-phase4-production", "--at", "2025-11-01T18:00:00Z")
    assert proc.returncode == 1 and "second production" in one_line_error(proc)
    assert productions(site) == ["production-20251102_000000"]

    nothing = site.run("checkpoints", "rollback", "phase7")
    assert nothing.returncode == EXIT_NOT_FOUND
    one_line_error(nothing)


def test_promote_an_archived_checkpoint_restores_it(tmp_path: Path) -> None:
    site = checkpoint_site(tmp_path / "s")
    phase = models(site) / "cet-d-phase2"
    old = write_checkpoint(phase / "best-20250101_000000", seed=5)
    write_checkpoint(phase / "checkpoint-20251030_000000", seed=6)
    want = tree_digest(old)
    site.ok("checkpoints", "archive", env=at("2025-11-01T00:00:00Z"))
    assert not old.exists()
    event = site.json(
        "checkpoints", "promote", "cet-d-phase2/best-20250101_000000", env=at("2025-11-01T01:00:00Z")
    )
    assert event["demote_from"] is None
    assert tree_digest(phase / "production-20251101_010000") == want


def test_export_passes_sha256sum(tmp_path: Path) -> None:
    need(subprocess.run(["which", "sha256sum"], capture_output=True).returncode == 0, "sha256sum")
    site = checkpoint_site(tmp_path / "s")
    ckpt = write_checkpoint(models(site) / "cet-d-phase3" / "best-20251015_092000", seed=8)
    os.symlink("config.json", ckpt / "config-link.json")
    want = tree_digest(ckpt)
    site.ok("checkpoints", "backup")
    for fmt in ("tar.zst", "tar.gz"):
        out = site.json(
            "checkpoints", "export", "cet-d-phase3-best", "--format", fmt, "--to", str(tmp_path / "x")
        )
        archive = Path(out["archive"])
        assert archive.name == f"cet-d-phase3_best-20251015_092000.{fmt}"
        check = subprocess.run(["sha256sum", "-c", archive.name + ".sha256"], cwd=archive.parent,
                               capture_output=True, text=True)  # fmt: skip
        assert check.returncode == 0 and ": OK" in check.stdout, check.stdout + check.stderr
        target = tmp_path / f"untar-{fmt}"
        target.mkdir()
        if fmt == "tar.zst":
            need(subprocess.run(["which", "zstd"], capture_output=True).returncode == 0, "zstd")
        flag = "--zstd" if fmt == "tar.zst" else "--gzip"
        subprocess.run(["tar", flag, "-xf", str(archive), "-C", str(target)], check=True)  # the real tar
        assert tree_digest(target / "cet-d-phase3" / "best-20251015_092000") == want


def test_rollback_right_after_a_promotion_with_the_default_settle_time(tmp_path: Path) -> None:
    """The new production's hard links are minutes old (not settled): rolling back must not need
    to store it again; the history knows its stored copy."""
    site = checkpoint_site(tmp_path / "s")
    phase = models(site) / "cet-d-phase1"
    first = write_checkpoint(phase / "production-20251001_000000", seed=1)
    write_checkpoint(phase / "best-20251015_092000", seed=2)
    want = tree_digest(first)
    site.ok("checkpoints", "promote", "cet-d-phase1-best", env=at("2025-11-01T12:00:00Z"))
    site.config.write_text(site.config.read_text().replace("settle_seconds = 0", "settle_seconds = 120"))
    assert site.json("checkpoints", "list")["checkpoints"][0]["complete"] is False  # links just made
    site.ok("checkpoints", "rollback", "cet-d-phase1", "--reason", "bad eval", env=at("2025-11-01T12:05:00Z"))
    assert productions(site, "cet-d-phase1") == ["production-20251101_120500"]
    assert tree_digest(phase / "production-20251101_120500") == want
