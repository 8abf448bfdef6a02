"""`restore` as tar, restic and borg users type it: patterns relative to the backed-up directory,
`--exclude`, `--relative` and `--strip-components` (issue 17), byte-exact through the real CLI."""

from __future__ import annotations

import os
from pathlib import Path

from tests.helpers import Site, make_tree, tree_digest


def _one_line_error(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    return errors[0]


def test_relative_patterns_exclusions_and_landing(tmp_path: Path) -> None:
    data = tmp_path / "lab" / "datasets"
    make_tree(data / "train", seed=3)
    make_tree(data / "holdout", seed=4)
    (data / "trainer.py").write_text("print('x')\n")
    site = Site(tmp_path / "site")
    site.ok("repo", "init")
    os.chmod(data / "train", 0o750)
    os.utime(data / "train", (1_600_000_000, 1_600_000_000))
    site.ok("backup", str(data))

    out = tmp_path / "only-train"
    site.ok("restore", "latest", "--target", str(out), "--include", "train/*", "--relative")
    assert sorted(os.listdir(out)) == ["train"]
    assert tree_digest(out / "train") == tree_digest(data / "train")
    # the directory holding what was selected comes back with its own mode and times too
    assert (out / "train").stat().st_mode & 0o7777 == 0o750
    assert int((out / "train").stat().st_mtime) == 1_600_000_000
    full = tmp_path / "only-train-full-paths"
    site.ok("restore", "latest", "--target", str(full), "--include", "train/*")
    assert int((full / str(data).lstrip("/") / "train").stat().st_mtime) == 1_600_000_000

    out = tmp_path / "no-holdout"
    site.ok("restore", "latest", "--target", str(out), "--exclude", "holdout", "--relative")
    assert sorted(os.listdir(out)) == ["train", "trainer.py"]

    out = tmp_path / "stripped"
    depth = len(data.parts) - 1  # the stored path has no leading "/"
    site.ok("restore", "latest", "--target", str(out), "--strip-components", str(depth))
    assert tree_digest(out) == tree_digest(data)

    out = tmp_path / "default"  # unchanged: TARGET/<full source path>
    site.ok("restore", "latest", "--target", str(out), "--include", "holdout")
    assert tree_digest(out / str(data).lstrip("/") / "holdout") == tree_digest(data / "holdout")

    nothing = site.run("restore", "latest", "--target", str(tmp_path / "none"), "--include", "tran/*")
    assert nothing.returncode == 5
    assert "matches --include 'tran/*'" in _one_line_error(nothing.stderr)
    assert "relative to the backed-up directory" in nothing.stderr


def test_two_sources_landing_on_one_name_is_refused_before_writing(tmp_path: Path) -> None:
    for side in ("a", "b"):
        (tmp_path / side / "run").mkdir(parents=True)
        (tmp_path / side / "run" / "model.bin").write_bytes(side.encode() * 1000)
    site = Site(tmp_path / "site")
    site.ok("repo", "init")
    site.ok("backup", str(tmp_path / "a" / "run"), str(tmp_path / "b" / "run"))
    target = tmp_path / "out"
    depth = len((tmp_path / "a").parts) - 1  # no leading "/": both land on run/model.bin
    proc = site.run("restore", "latest", "--target", str(target), "--strip-components", str(depth))
    assert proc.returncode == 2
    assert "would both be restored as 'run/model.bin'" in _one_line_error(proc.stderr)
    assert not target.exists() or not any(target.rglob("model.bin"))
    relative = site.run("restore", "latest", "--target", str(target), "--relative")  # each under its name
    assert relative.returncode == 2  # both backed-up paths are named "run"
    site.ok(
        "restore",
        "latest",
        "--target",
        str(target),
        "--relative",
        "--include",
        "/" + str(tmp_path / "a").lstrip("/"),
    )
    assert (target / "run" / "model.bin").read_bytes() == b"a" * 1000


def test_latest_with_a_tag_is_the_newest_snapshot_having_it(tmp_path: Path) -> None:
    """The README's `restore latest --tag kind=dataset …` after other backups: `latest` alone is
    the newest snapshot of any kind (here the logs), `latest --tag` the newest dataset one."""
    data, logs = tmp_path / "datasets", tmp_path / "logs"
    make_tree(data / "train", seed=5)
    logs.mkdir()
    (logs / "run.log").write_text("epoch 1\n")
    site = Site(tmp_path / "site")
    site.ok("repo", "init")
    site.ok("backup", str(data), "--tag", "kind=dataset")
    site.ok("backup", str(logs))

    out = tmp_path / "out"
    site.ok("restore", "latest", "--tag", "kind=dataset", "--target", str(out), "--relative")
    assert tree_digest(out) == tree_digest(data)

    plain_latest = site.run("restore", "latest", "--target", str(tmp_path / "x"), "--include", "train/*")
    assert plain_latest.returncode == 5  # the logs snapshot has no train/

    none = site.run("restore", "latest", "--tag", "kind=model", "--target", str(tmp_path / "y"))
    assert none.returncode == 5
    assert "kind=model" in _one_line_error(none.stderr)

    first = site.snapshot_ids()[0]
    both = site.run("restore", first, "--tag", "kind=dataset", "--target", str(tmp_path / "z"))
    assert both.returncode == 2
    assert "--tag" in _one_line_error(both.stderr)
