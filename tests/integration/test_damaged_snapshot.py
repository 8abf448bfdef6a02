"""One damaged snapshot document does not take every listing down with it (issue 11, item 15).

`snapshots`, `backup` (which looks for a parent), `forget` and `restore latest` name the damaged
snapshot in a warning and go on with the others; `repo check` still reports it as a problem and
`repo prune`, which would otherwise free the blobs only that snapshot uses, refuses (exit 3).
The base-backup side (`pg backups`, `pg restore`) is in tests/integration/test_pg_damaged.py.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from tests.helpers import Site, flip_byte, make_tree, one_line_error, repo_files, tree_digest

DAMAGE = ["truncated", "flipped"]


def damage(path: Path, how: str) -> None:
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        flip_byte(path)


def warned(proc: subprocess.CompletedProcess[str], snapshot_id: str) -> bool:
    pattern = rf"^warning: snapshot {snapshot_id} is damaged \(.+\); skipped — run `coldkeep repo check`$"
    return re.search(pattern, proc.stderr, re.MULTILINE) is not None


def three_snapshots(tmp_path: Path) -> tuple[Site, Path, list[str]]:
    data = make_tree(tmp_path / "data", seed=11, small_files=6, big_sizes=(300_000,))
    site = Site(tmp_path / "site")
    site.ok("repo", "init")
    for i in range(3):
        (data / "counter.txt").write_text(f"backup {i}\n")
        site.ok("backup", str(data), "--tag", f"n={i}")
    ids = site.snapshot_ids()
    assert len(ids) == 3
    return site, data, ids


@pytest.mark.parametrize("how", DAMAGE)
def test_listings_name_the_damaged_snapshot_and_go_on(tmp_path: Path, how: str) -> None:
    site, data, (old, middle, newest) = three_snapshots(tmp_path)
    damage(site.repo_dir / "snapshots" / newest, how)

    proc = site.ok("--json", "snapshots")
    assert [s["id"] for s in json.loads(proc.stdout)] == [old, middle]
    assert warned(proc, newest), proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [
        line for line in proc.stderr.splitlines() if line.startswith("warning: snapshot")
    ]

    # restore latest: the newest readable snapshot, with the warning
    target = tmp_path / "restored"
    proc = site.ok("restore", "latest", "--target", str(target))
    assert warned(proc, newest), proc.stderr
    assert (target / str(data).lstrip("/") / "counter.txt").read_text() == "backup 1\n"

    # backup: the parent search skips it; the new snapshot is complete
    (data / "counter.txt").write_text("backup 3\n")
    proc = site.ok("--json", "backup", str(data), "--tag", "n=3")
    assert warned(proc, newest), proc.stderr
    new = json.loads(proc.stdout)["snapshot_id"]
    assert site.restore_digest(new, tmp_path / "r-new", data) == tree_digest(data)

    # repo check still calls it a problem; prune refuses to free what only it uses
    proc = site.run("--json", "repo", "check")
    assert proc.returncode == 3, proc.stderr
    assert f"snapshots/{newest}" in one_line_error(proc)
    packs = {k for k in repo_files(site.repo_dir) if k.startswith("data/")}
    proc = site.run("repo", "prune")
    assert proc.returncode == 3, proc.stderr
    assert newest[:8] in one_line_error(proc)
    assert {k for k in repo_files(site.repo_dir) if k.startswith("data/")} == packs


@pytest.mark.parametrize("how", DAMAGE)
def test_forget_skips_the_damaged_snapshot_and_leaves_it(tmp_path: Path, how: str) -> None:
    site, _, (old, middle, newest) = three_snapshots(tmp_path)
    damage(site.repo_dir / "snapshots" / middle, how)
    proc = site.ok("--json", "forget", "--keep-last", "1")
    assert warned(proc, middle), proc.stderr
    decisions = {d["id"]: d["keep"] for d in json.loads(proc.stdout)["decisions"]}
    assert decisions == {old: False, newest: True}
    assert site.snapshot_files() == {middle, newest}  # the damaged one is left for repo check/repair
