"""`backup --exclude / --exclude-file / --exclude-caches` (issue 17), through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import Site

from coldkeep.repository.excludes import CACHEDIR_SIGNATURE


def stored_names(site: Site, snapshot: str, tmp: Path) -> set[str]:
    out = tmp / f"out-{snapshot[:8]}"
    site.ok("restore", snapshot, "--target", str(out), "--relative")
    return {p.relative_to(out).as_posix() for p in out.rglob("*")}


def test_patterns_files_and_cache_dirs_are_left_out_and_recorded(tmp_path: Path) -> None:
    src = tmp_path / "work"
    for rel in ("train/a.json", "train/a.json.tmp", "train/__pycache__/x.pyc", "scratch/big.bin",
                "cache/blob", "fake-cache/blob", "keep/notes.txt"):  # fmt: skip
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(rel.encode())
    (src / "cache" / "CACHEDIR.TAG").write_bytes(CACHEDIR_SIGNATURE + b"\n# a cache\n")
    (src / "fake-cache" / "CACHEDIR.TAG").write_bytes(b"not the signature\n")
    rules = tmp_path / "excludes.txt"
    rules.write_text("# comments and blank lines are skipped\n\n__pycache__\n")
    site = Site(tmp_path / "site")
    site.ok("repo", "init")
    proc = site.ok("--json", "backup", str(src), "--exclude", "*.tmp", "--exclude", "scratch/*",
                   "--exclude-file", str(rules), "--exclude-caches")  # fmt: skip
    snap_id = json.loads(proc.stdout)["snapshot_id"]
    assert stored_names(site, snap_id, tmp_path) == {
        "train", "train/a.json", "scratch", "fake-cache", "fake-cache/blob", "fake-cache/CACHEDIR.TAG",
        "keep", "keep/notes.txt",
    }  # fmt: skip
    (snap,) = [s for s in site.json("snapshots") if s["id"] == snap_id]
    assert snap["meta"]["excludes"] == {
        "patterns": ["*.tmp", "scratch/*", "__pycache__"], "exclude_caches": True, "excluded": 4,
    }  # fmt: skip

    absolute = site.ok("--json", "backup", str(src), "--exclude", str(src / "keep"))  # an absolute path
    names = stored_names(site, json.loads(absolute.stdout)["snapshot_id"], tmp_path)
    assert "keep" not in names and "train/a.json.tmp" in names and "cache/blob" in names


def test_bad_exclude_input_is_exit_2_in_one_line(tmp_path: Path) -> None:
    site = Site(tmp_path / "site")
    site.ok("repo", "init")
    (tmp_path / "d").mkdir()
    missing = site.run("backup", str(tmp_path / "d"), "--exclude-file", str(tmp_path / "nope.txt"))
    assert (
        missing.returncode == 2 and "--exclude-file" in missing.stderr and "Traceback" not in missing.stderr
    )
    everything = site.run("backup", str(tmp_path / "d"), "--exclude", "/")
    assert everything.returncode == 2 and "would leave out everything" in everything.stderr
    assert site.json("snapshots") == []
