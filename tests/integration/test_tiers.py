"""`coldkeep tiers backup | clean` (coldkeep.ops.tiers): a snapshot per tier, each tier's retention
on its own snapshots only (Tier 1 never expires; generic `forget` leaves them all alone), under a
controllable clock (COLDKEEP_NOW); `tiers clean` lists old live Tier-3 files and deletes only those
a tier snapshot holds; kill -9 during `tiers backup`, then a rerun, leaves a sound repository."""

from __future__ import annotations

import json
import os
import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.helpers import Site, make_tree, tree_digest


def at(day: str) -> dict[str, str]:
    return {"COLDKEEP_NOW": f"{day}T12:00:00Z"}


def _site(tmp_path: Path) -> tuple[Site, dict[int, Path]]:
    site = Site(tmp_path / "site")
    dirs = {n: make_tree(tmp_path / f"t{n}", seed=n, small_files=4) for n in (1, 2, 3)}
    with site.config.open("a") as f:
        for n, days in ((1, '"forever"'), (2, "365"), (3, "30")):
            f.write(f'[tiers.tier{n}]\nretention_days = {days}\npaths = ["{dirs[n]}"]\n')
    site.ok("repo", "init")
    return site, dirs


def tier_snapshots(site: Site) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {1: [], 2: [], 3: []}
    for s in site.json("snapshots"):
        if s["kind"] == "tier":
            out[int(s["tags"]["tier"])].append(s["time"][:10])
    return out


def by_tier(result: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {t["tier"]: t for t in result["tiers"]}


def test_tiers_backup_applies_each_tiers_retention_to_its_own_snapshots(tmp_path: Path) -> None:
    site, _dirs = _site(tmp_path)
    site.ok("backup", str(tmp_path / "t3"), env=at("2026-01-01"))
    for day in ("2026-01-01", "2026-01-21"):
        first = by_tier(site.json("tiers", "backup", env=at(day)))
        assert all(t["snapshot"] and not t["expired"] for t in first.values())
    third = by_tier(site.json("tiers", "backup", env=at("2026-02-10")))
    assert third[3]["retention_days"] == 30 and len(third[3]["expired"]) == 1  # 40 days old; 20 is not
    assert third[1]["expired"] == [] and third[2]["expired"] == []
    assert tier_snapshots(site) == {
        1: ["2026-01-01", "2026-01-21", "2026-02-10"],
        2: ["2026-01-01", "2026-01-21", "2026-02-10"],
        3: ["2026-01-21", "2026-02-10"],
    }

    # generic forget keeps one generic snapshot and never touches a tier snapshot
    forgot = site.json("forget", "--keep-last", "1")
    assert forgot["removed"] == [] and {a["owner"] for a in forgot["left_alone"]} == {"tiers"}
    tier1_id = next(s["id"] for s in site.json("snapshots") if s["tags"].get("tier") == "1")
    refused = site.run("forget", tier1_id)
    assert refused.returncode == 2 and "Tier-1" in refused.stderr

    # a year on: Tier 2's older snapshots go, Tier 1 never, Tier 3 keeps only its newest
    site.ok("tiers", "backup", env=at("2027-01-20"))
    snaps = tier_snapshots(site)
    assert snaps[1] == ["2026-01-01", "2026-01-21", "2026-02-10", "2027-01-20"]
    assert snaps[2] == ["2026-01-21", "2026-02-10", "2027-01-20"]
    assert snaps[3] == ["2027-01-20"]

    one = site.json("tiers", "backup", "--tier", "3", env=at("2027-01-21"))
    assert [t["tier"] for t in one["tiers"]] == [3]
    runs = [(r["type"], r["result"]) for r in site.json("runs") if r["job"] == "tiers backup"]
    assert runs == [("tiers_backup", "ok")] * 4 + [("tiers_backup_tier3", "ok")]
    shown = {r["type"] for r in site.json("schedule", "show")}
    assert "tiers_backup" in shown


def test_tiers_clean_lists_then_deletes_only_files_a_tier_snapshot_holds(tmp_path: Path) -> None:
    site, dirs = _site(tmp_path)
    t3 = dirs[3]
    old = datetime(2026, 8, 1, tzinfo=UTC).timestamp()
    held, changed, recent = t3 / "held.bin", t3 / "changed.bin", t3 / "recent.bin"
    for path in (held, changed, recent):
        path.write_bytes(os.urandom(5000))
    for path in (held, changed):
        os.utime(path, (old, old))
    for path in [p for p in t3.rglob("*") if p.is_file() and p not in (held, changed, recent)]:
        os.utime(path, (old, old))  # the tree's own files: old and held
    site.ok("tiers", "backup", "--tier", "3", env=at("2026-12-01"))
    unheld = t3 / "unheld.bin"
    unheld.write_bytes(os.urandom(100))
    os.utime(unheld, (old, old))
    changed.write_bytes(os.urandom(5000))
    os.utime(changed, (old + 60, old + 60))

    listed = site.json("tiers", "clean", env=at("2026-12-01"))
    files = {Path(f["path"]).name: f for f in listed["files"]}
    assert listed["dry_run"] and listed["older_than_days"] == 30 and listed["deleted"] == 0
    assert "recent.bin" not in files
    assert files["held.bin"]["action"] == "would delete" and files["held.bin"]["snapshot"]
    assert (
        files["unheld.bin"]["action"] == "kept" and "no tier snapshot holds" in files["unheld.bin"]["reason"]
    )
    assert files["changed.bin"]["action"] == "kept" and "changed since" in files["changed.bin"]["reason"]
    assert held.exists() and unheld.exists()

    proc = site.run("--json", "tiers", "clean", "--delete", env=at("2026-12-01"))
    assert proc.returncode == 0, proc.stderr
    assert f"{unheld}: kept: no tier snapshot holds this file" in proc.stderr
    done = {Path(f["path"]).name: f["action"] for f in json.loads(proc.stdout)["files"]}
    assert done["held.bin"] == "deleted" and done["unheld.bin"] == "kept" and done["changed.bin"] == "kept"
    assert not held.exists() and unheld.exists() and changed.exists() and recent.exists()
    assert site.json("tiers", "clean", "--older-than", "400", env=at("2026-12-01"))["files"] == []
    refused = site.run("tiers", "clean", "--tier", "1")
    assert refused.returncode == 2


def test_kill_9_during_tiers_backup_then_rerun(tmp_path: Path) -> None:
    site, dirs = _site(tmp_path)
    site.ok("tiers", "backup", "--tier", "3", env=at("2026-01-01"))
    killed = site.run("tiers", "backup", env={**at("2026-02-10"), "COLDKEEP_TIERS_KILL_AT": "entry:3"})
    assert killed.returncode == -signal.SIGKILL
    assert tier_snapshots(site) == {1: [], 2: [], 3: ["2026-01-01"]}  # killed before any snapshot

    # killed between the snapshot and the retention: the old Tier-3 snapshot is still there
    killed = site.run(
        "tiers",
        "backup",
        "--tier",
        "3",
        env={**at("2026-02-10"), "COLDKEEP_TIERS_KILL_AT": "snapshot_written"},
    )
    assert killed.returncode == -signal.SIGKILL
    assert tier_snapshots(site)[3] == ["2026-01-01", "2026-02-10"]

    rerun = by_tier(site.json("tiers", "backup", env=at("2026-02-10")))
    assert len(rerun[3]["expired"]) == 1
    assert tier_snapshots(site) == {1: ["2026-02-10"], 2: ["2026-02-10"], 3: ["2026-02-10", "2026-02-10"]}
    site.ok("repo", "check", "--read-data")
    newest = rerun[3]["snapshot"]
    assert site.restore_digest(newest, tmp_path / "restored", dirs[3]) == tree_digest(dirs[3])
