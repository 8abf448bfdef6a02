"""`kill -9` of `coldkeep checkpoints archive` at storage calls, at the named steps between
verifying and deleting, and at random moments (invariants 1 and 2 for checkpoints).

Each point works on its own copy of a base site (repository, cache, hot checkpoints, config).
After every kill: each due checkpoint's hot copy is still there and intact unless its stored
copy exists and verifies (then it may be renamed aside or partly deleted, never lost); a rerun
exits 0 and leaves the hot disk as an uninterrupted run does; every archived checkpoint restores
byte-exact; ``repo check --read-data`` passes.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.ckptfiles import checkpoint_site, models, write_checkpoint
from tests.crash.test_crash_repository import Point, check_ok, count_calls, kill, kill_points, run_points
from tests.helpers import Site, spread, tree_digest, write_config

pytestmark = pytest.mark.slow

PACK_ENV = {"COLDKEEP_PACK_TARGET": "16384", "COLDKEEP_NOW": "2025-11-01T12:00:00Z"}
DUE = ["cet-d-phase1/checkpoint-20251001_153000", "cet-d-phase1/best-20250701_000000"]
KEPT = ["cet-d-phase1/checkpoint-20251030_000000", "cet-d-phase4/production-20240101_000000"]


@dataclass
class Base:
    root: Path
    digests: dict[str, dict[str, str]]
    points: list[Point]


def clone(base_root: Path, root: Path) -> Site:
    """A copy of the base site under ``root`` (repository, cache, models, config)."""
    shutil.copytree(base_root, root, symlinks=True)
    site = Site.__new__(Site)
    site.root, site.url, site.endpoint_url, site.password_file = root, f"file://{root / 'repo'}", "", ""
    site.copies, site.env = {}, dict(PACK_ENV)
    write_config(site.config, site.url)
    with site.config.open("a", encoding="utf-8") as f:
        f.write(f'[checkpoints]\nroot = "{root / "models"}"\nsettle_seconds = 0\n')
    return site


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Base]:
    top = tmp_path_factory.mktemp("crash-ckpt")
    site = checkpoint_site(top / "base")
    site.env.update(PACK_ENV)
    root = models(site)
    for i, name in enumerate(DUE + KEPT):
        write_checkpoint(root / name, seed=i + 1, shards=3, per_shard=8, shape=(48, 48))
    digests = {name: tree_digest(root / name) for name in DUE + KEPT}
    count, seconds = count_calls(clone(site.root, top / "count"), "checkpoints", "archive")
    points = kill_points(count, seconds, seed=303)
    points += [
        Point(f"stage {s}", fault=None)
        for s in ("verified:1", "renamed:1", "deleting:1", "renamed:2", "deleting:2")
    ]
    yield Base(site.root, digests, points)
    shutil.rmtree(top, ignore_errors=True)


def _stage_kill(site: Site, stage: str) -> bool:
    proc = site.run("checkpoints", "archive", env={"COLDKEEP_CKPT_KILL_AT": stage})
    assert proc.returncode == -9, f"stage {stage}: exit {proc.returncode}\n{proc.stderr}"
    return True


def test_kill_archive(base: Base, tmp_path: Path) -> None:
    def scenario(root: Path, point: Point) -> bool:
        site = clone(base.root, root)
        if point.label.startswith("stage "):
            killed = _stage_kill(site, point.label.removeprefix("stage "))
        else:
            killed = kill(site, point, "checkpoints", "archive")
        check_ok(site, read_data=False)
        hot = models(site)
        stored = {s["tags"]["name"]: s["id"] for s in site.json("snapshots")}
        for name in DUE:
            _phase, dirname = name.split("/")
            if (hot / name).exists():
                assert tree_digest(hot / name) == base.digests[name], f"{point.label}: {name} damaged"
            else:  # gone or renamed aside: only once its stored copy verified
                assert name in stored, f"{point.label}: {name} removed before it was stored"
                restored = root / f"r-{dirname}"
                site.ok("restore", stored[name], "--target", str(restored))
                assert tree_digest(restored) == base.digests[name], f"{point.label}: stored {name} differs"
                shutil.rmtree(restored)
        for name in KEPT:
            assert tree_digest(hot / name) == base.digests[name]
        site.ok("checkpoints", "archive")
        for name in DUE:
            assert not (hot / name).exists()
        assert not list(hot.rglob(".coldkeep-*")), point.label
        for name in KEPT:
            assert tree_digest(hot / name) == base.digests[name]
        stored = {s["tags"]["name"]: s["id"] for s in site.json("snapshots")}
        if point.full_restore or point.label.startswith("stage "):
            for name in DUE:
                restored = root / "r-final"
                site.ok("restore", stored[name], "--target", str(restored))
                assert tree_digest(restored) == base.digests[name]
                shutil.rmtree(restored)
        check_ok(site, read_data=True)
        shutil.rmtree(root)
        return killed

    run_points(tmp_path, base.points, scenario)


# ------------------------------------------------------------------------------------------------
# promote / rollback

PROMOTE = ["checkpoints", "promote", "cet-d-phase4/best-20251015_092000", "--reason", "crash test"]
STAGES = ["promote-recorded", "promote-built", "promote-demoted", "promote-renamed"]


@dataclass
class PromoteBase:
    root: Path
    first: dict[str, str]
    best: dict[str, str]
    points: list[Point]


@pytest.fixture(scope="module")
def promote_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PromoteBase]:
    top = tmp_path_factory.mktemp("crash-promote")
    site = checkpoint_site(top / "base")
    phase = models(site) / "cet-d-phase4"
    first = write_checkpoint(
        phase / "production-20251001_000000", seed=1, shards=3, per_shard=8, shape=(48, 48)
    )
    best = write_checkpoint(phase / "best-20251015_092000", seed=2, shards=3, per_shard=8, shape=(48, 48))
    count, seconds = count_calls(clone(site.root, top / "count"), *PROMOTE)
    points = [Point(f"kill:any:{n}", fault=f"kill:any:{n}") for n in spread(count, 10)]
    points += [Point(f"random-{i}", delay=round(seconds * f, 3)) for i, f in enumerate((0.3, 0.6))]
    points += [Point(f"stage {s}:1") for s in STAGES]
    yield PromoteBase(site.root, tree_digest(first), tree_digest(best), points)
    shutil.rmtree(top, ignore_errors=True)


def _productions(site: Site) -> list[str]:
    return sorted(p.name for p in (models(site) / "cet-d-phase4").glob("production-*"))


def test_kill_promote_and_rollback(promote_base: PromoteBase, tmp_path: Path) -> None:
    base = promote_base

    def scenario(root: Path, point: Point) -> bool:
        site = clone(base.root, root)
        if not point.label.startswith("stage "):
            killed = kill(site, point, *PROMOTE)
        else:
            proc = site.run(*PROMOTE, env={"COLDKEEP_CKPT_KILL_AT": point.label.removeprefix("stage ")})
            killed = proc.returncode == -9
            assert killed, proc.stderr
        assert len(_productions(site)) <= 1, f"{point.label}: two productions {_productions(site)}"
        events = site.json("checkpoints", "history")["events"]  # finishes a pending promotion
        if not events and not killed:  # a random kill that came too late
            raise AssertionError(f"{point.label}: promote finished but recorded nothing")
        if not events:  # killed before the event was recorded: nothing happened, promote again
            assert _productions(site) == ["production-20251001_000000"]
            site.ok(*PROMOTE)
            events = site.json("checkpoints", "history")["events"]
        assert [(e["action"], e["state"]) for e in events] == [("promote", "done")], events
        phase = models(site) / "cet-d-phase4"
        assert _productions(site) == ["production-20251101_120000"]
        assert tree_digest(phase / "production-20251101_120000") == base.best
        assert tree_digest(phase / "rollback-20251101_120000") == base.first
        assert not list(phase.glob(".coldkeep-*"))
        # and a rollback killed at the same step is finished by the next command too
        if point.label.startswith("stage "):
            stage = point.label.removeprefix("stage ")
            env = {"COLDKEEP_CKPT_KILL_AT": stage, "COLDKEEP_NOW": "2025-11-02T00:00:00Z"}
            proc = site.run("checkpoints", "rollback", "phase4", env=env)
            assert proc.returncode == -9 and len(_productions(site)) <= 1, proc.stderr
            events = site.json("checkpoints", "history", "--phase", "phase4")["events"]
            assert [e["action"] for e in events] in (["promote", "rollback"], ["promote"])
            if len(events) == 1:
                site.ok("checkpoints", "rollback", "phase4", env={"COLDKEEP_NOW": "2025-11-02T00:00:00Z"})
            assert _productions(site) == ["production-20251102_000000"]
            assert tree_digest(phase / "production-20251102_000000") == base.first
        check_ok(site, read_data=True)
        shutil.rmtree(root)
        return killed

    run_points(tmp_path, base.points, scenario)
