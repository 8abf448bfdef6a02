"""``repro create --models NAME`` by checkpoint name (issue 14): any name ``checkpoints recover``
accepts, hot or archived; the package holds the stored copy's files byte-exact and names its
snapshot id and checkpoint name (the RO-Crate too); ``repro restore`` puts the checkpoint back;
an unknown name is one error line (exit 5) and leaves nothing; a damaged stored copy is exit 3."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.ckptfiles import checkpoint_site, models, write_checkpoint
from tests.datasetsite import damage_files, make_dataset
from tests.helpers import Site, need, one_line_error, tree_digest

from coldkeep.errors import EXIT_INTEGRITY, EXIT_NOT_FOUND, EXIT_USAGE

ARCHIVED = "cet-d-phase3/best-20251015_092000"
HOT = "cet-d-phase4/checkpoint-20251101_120000"


@dataclass
class Lab:
    site: Site
    root: Path
    code: Path
    out: Path

    def create(self, name: str, *models: str) -> subprocess.CompletedProcess[str]:
        return self.site.run(
            "--json", "repro", "create", "--name", name, "--dataset", "v1", "--models", *models,
            "--code", str(self.code), "--python", sys.executable, "--out", str(self.out),
        )  # fmt: skip

    def checkpoint_snapshots(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for snap in self.site.json("snapshots"):
            if snap.get("kind") == "checkpoint":
                found.setdefault(snap["tags"]["name"], []).append(snap["id"])
        return found


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    need(shutil.which("git") and shutil.which("sha256sum") and shutil.which("tar"), "git, sha256sum, tar")
    site = checkpoint_site(tmp_path / "site")
    data = make_dataset(tmp_path / "applications", train=1, holdout=1, files_per_app=1)
    site.ok("datasets", "snapshot", "--version", "v1", "--root", str(data))
    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text("print('train')\n")
    for args in (["init", "-q"], ["add", "."],
                 ["-c", "user.email=a@b.invalid", "-c", "user.name=n", "commit", "-q", "-m", "c"]):  # fmt: skip
        subprocess.run(["git", "-C", str(code), *args], check=True)
    out = tmp_path / "out"
    out.mkdir()
    return Lab(site, models(site), code, out)


def unpack(archive: Path, dest: Path) -> Path:
    dest.mkdir()
    subprocess.run(["tar", "-xzf", str(archive), "-C", str(dest)], check=True)
    return dest / archive.name.removesuffix(".tar.gz")


def test_archived_checkpoint_by_name(lab: Lab, tmp_path: Path) -> None:
    """Hot copy gone: the package takes the stored copy, byte-exact, and names it everywhere."""
    from rocrate.rocrate import ROCrate

    hot = write_checkpoint(lab.root / ARCHIVED, seed=3)
    want = tree_digest(hot)
    lab.site.ok("checkpoints", "backup")
    snap_id = lab.checkpoint_snapshots()[ARCHIVED][0]
    shutil.rmtree(hot)

    proc = lab.create("pkg", "cet-d-phase3-best")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    model = doc["package"]["models"][0]
    assert model["checkpoint"] == ARCHIVED and model["snapshot_id"] == snap_id
    assert model["file"] == "models/cet-d-phase3_best-20251015_092000.tar.gz"
    assert not hot.exists()  # the hot disk is left alone

    pkg = unpack(lab.out / "pkg.tar.gz", tmp_path / "u")
    sums = subprocess.run(["sha256sum", "-c", "checksums.sha256"], cwd=pkg, capture_output=True, text=True)
    assert sums.returncode == 0, sums.stdout + sums.stderr
    members = tmp_path / "m"
    members.mkdir()
    subprocess.run(["tar", "-xzf", str(pkg / model["file"]), "-C", str(members)], check=True)
    assert tree_digest(members / ARCHIVED) == want  # every file byte-exact (and its mode)
    crate = {e.id: e for e in ROCrate(str(pkg)).data_entities}
    entity = crate[model["file"]]
    assert f"coldkeep-snapshot:{snap_id}" in entity["identifier"]
    assert f"coldkeep-checkpoint:{ARCHIVED}" in entity["identifier"]
    assert ARCHIVED in (pkg / "README.md").read_text()

    assert lab.site.json("repro", "verify", str(lab.out / "pkg.tar.gz"))["ok"] is True
    assert lab.site.json("repro", "verify", "pkg")["ok"] is True
    restored = lab.site.json("repro", "restore", "pkg", "--to", str(tmp_path / "r"))
    assert model["file"] in restored["unpacked"]
    assert tree_digest(tmp_path / "r" / "models" / ARCHIVED) == want


def test_hot_only_checkpoint_is_stored_first(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never stored: stored first, so the package names a snapshot id; changed after that, it is
    stored again for the next package.  A model directory still goes in by path beside it."""
    hot = write_checkpoint(lab.root / HOT, seed=4, shards=1)
    monkeypatch.chdir(lab.root)  # HOT is also a relative path here: its own hot directory, no ambiguity
    plain_dir = tmp_path / "final-model"
    write_checkpoint(plain_dir, seed=5, shards=1)
    assert lab.checkpoint_snapshots() == {}

    proc = lab.create("pkg", HOT, str(plain_dir))
    assert proc.returncode == 0, proc.stderr
    by_file = {m["file"]: m for m in json.loads(proc.stdout)["package"]["models"]}
    stored = lab.checkpoint_snapshots()
    assert list(stored) == [HOT] and len(stored[HOT]) == 1
    assert by_file["models/cet-d-phase4_checkpoint-20251101_120000.tar.gz"]["snapshot_id"] == stored[HOT][0]
    assert by_file["models/final-model.tar.gz"]["snapshot_id"] is None
    pkg = unpack(lab.out / "pkg.tar.gz", tmp_path / "u")
    assert subprocess.run(["sha256sum", "-c", "--quiet", "checksums.sha256"], cwd=pkg).returncode == 0
    restored = tmp_path / "r"
    lab.site.ok("repro", "restore", "pkg", "--to", str(restored))
    assert tree_digest(restored / "models" / HOT) == tree_digest(hot)
    for path in plain_dir.iterdir():  # a directory's archive keeps contents (modes become 0644/0755)
        assert (restored / "models" / "final-model" / path.name).read_bytes() == path.read_bytes()
    assert lab.site.json("repro", "verify", "pkg")["ok"] is True

    (hot / "config.json").write_text('{"changed": true}')
    again = lab.create("pkg2", "cet-d-phase4-checkpoint")
    assert again.returncode == 0, again.stderr
    stored = lab.checkpoint_snapshots()
    assert len(stored[HOT]) == 2
    assert json.loads(again.stdout)["package"]["models"][0]["snapshot_id"] == stored[HOT][1]


def test_unknown_name_is_one_line_and_leaves_nothing(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_checkpoint(lab.root / HOT, seed=4, shards=1)
    cases = [
        ("cet-d-phase9-best", EXIT_NOT_FOUND, "no checkpoint of type best in phase phase9"),
        ("cet-d-phase4/checkpoint-20991231_000000", EXIT_NOT_FOUND, "no checkpoint cet-d-phase4/checkpoint-2099"),
        ("0123abcd0123", EXIT_NOT_FOUND, "no snapshot"),
        ("no-such-model", EXIT_NOT_FOUND, "no such model directory, and not a checkpoint name"),
    ]  # fmt: skip
    for arg, code, needle in cases:
        proc = lab.create("pkg", arg)
        assert proc.returncode == code, (arg, proc.stderr)
        line = one_line_error(proc)
        assert needle in line and f"--models {arg}" in line, (arg, line)
        assert "checkpoints recover" in proc.stderr  # the hint names both forms
    twice = lab.create("pkg", HOT, "cet-d-phase4-checkpoint")
    assert twice.returncode == EXIT_USAGE and "two models named" in one_line_error(twice)
    (tmp_path / "cet-d-phase4-checkpoint").mkdir()  # a directory named like a checkpoint, here
    monkeypatch.chdir(tmp_path)
    both = lab.create("pkg", "cet-d-phase4-checkpoint")
    assert both.returncode == EXIT_USAGE and "both a directory here and checkpoint" in one_line_error(both)
    # nothing left: no package, no staging directory, no checkpoint stored on the way
    assert list(lab.out.iterdir()) == []
    assert lab.site.json("repro", "list") == [] and lab.checkpoint_snapshots() == {}


def test_damaged_stored_checkpoint_stops_the_package(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hot = write_checkpoint(lab.root / ARCHIVED, seed=3)
    lab.site.ok("checkpoints", "backup")
    shutil.rmtree(hot)
    damage_files(lab.site, ["optimizer.bin"], tmp_path / "api-cache", monkeypatch, kind="checkpoint")
    proc = lab.create("pkg", ARCHIVED)
    assert proc.returncode == EXIT_INTEGRITY, proc.stderr
    assert "optimizer.bin" in one_line_error(proc)
    assert list(lab.out.iterdir()) == [] and lab.site.json("repro", "list") == []
