"""`coldkeep backup` while another process truncates or appends to a big file it is reading.

The backup runs as a real process, so a crash (SIGBUS when a mapped file shrinks under the
reader) fails the test instead of killing pytest.  The other process acts the moment the file is
first opened (inotify, tests/changer.py): between the walk and the end of the read.  Whatever
the exact instant, the file changed during the backup, which must say so (exit 6, or exit 1 and
no snapshot with --strict) and record exactly the bytes it read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.changer import change_on_open, finish
from tests.helpers import Site, one_line_error

MiB = 1024 * 1024
BIG = 256 * MiB
EXIT_PARTIAL = 6


def big_file(path: Path) -> bytes:
    """A BIG-byte file of one random MiB repeated (cheap to store: its chunks repeat); returns
    the MiB, from which any prefix of the file can be rebuilt."""
    block = os.urandom(MiB)
    with path.open("wb") as f:
        for _ in range(BIG // MiB):
            f.write(block)
    return block


def prefix(block: bytes, size: int) -> bytes:
    return (block * (size // MiB + 1))[:size]


def restored(site: Site, snapshot: str, target: Path, name: Path) -> bytes:
    site.ok("restore", snapshot, "--target", str(target))
    return (target / str(name).lstrip("/")).read_bytes()


def no_locks(site: Site) -> bool:
    return not any((site.repo_dir / "locks").glob("*"))


def test_a_big_file_truncated_by_another_process_while_read(tmp_path: Path) -> None:
    site = Site(tmp_path / "site")
    site.ok("repo", "init")
    src = tmp_path / "src"
    src.mkdir()
    (src / "other.txt").write_text("unchanged\n")
    path = src / "shard.bin"
    block = big_file(path)
    changer = change_on_open(path, "truncate", 1024)
    proc = site.run("--json", "backup", str(src), timeout=600)
    finish(changer)
    assert proc.returncode == EXIT_PARTIAL, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    out = json.loads(proc.stdout)
    assert out["changed_files"] == [str(path)] and out["skipped_files"] == []
    assert any(str(path) in w and "shrank" in w for w in out["warnings"]), out["warnings"]
    assert f"warning: {path}: shrank" in proc.stderr
    assert no_locks(site)
    assert site.ok("repo", "check").returncode == 0
    data = restored(site, out["snapshot_id"], tmp_path / "out", path)
    assert len(data) < BIG and data == prefix(block, len(data))
    assert out["logical_bytes"] == len(data) + len("unchanged\n")
    # no pack is left behind that no index knows
    assert "not in any index" not in site.ok("repo", "check").stdout


def test_a_big_file_appended_by_another_process_while_read(tmp_path: Path) -> None:
    site = Site(tmp_path / "site")
    site.ok("repo", "init")
    src = tmp_path / "src"
    src.mkdir()
    path = src / "train.log"
    block = big_file(path)
    changer = change_on_open(path, "append", MiB)
    proc = site.run("--json", "backup", str(src), timeout=600)
    finish(changer)
    assert proc.returncode == EXIT_PARTIAL, (proc.returncode, proc.stderr[-2000:])
    out = json.loads(proc.stdout)
    assert out["changed_files"] == [str(path)]
    assert any(str(path) in w and "grew" in w for w in out["warnings"]), out["warnings"]
    assert site.ok("repo", "check", "--read-data").returncode == 0
    data = restored(site, out["snapshot_id"], tmp_path / "out", path)
    assert out["logical_bytes"] == len(data)
    # what was read: the file as it was at some instant of the read (at least what the walk saw)
    assert data[:BIG] == prefix(block, BIG) and data == path.read_bytes()[: len(data)]

    # --strict: the same change refuses the snapshot, names the file, exit 1
    before = site.snapshot_files()
    changer = change_on_open(path, "append", MiB)
    strict = site.run("backup", "--strict", str(src), timeout=600)
    finish(changer)
    assert strict.returncode == 1, (strict.returncode, strict.stderr[-2000:])
    assert f"error: no snapshot written: 1 file(s) changed while being read: {path}" in strict.stderr
    assert f"warning: {path}: grew" in strict.stderr
    one_line_error(strict)
    assert site.snapshot_files() == before
    assert no_locks(site)
    # and a quiet file backs up with exit 0
    site.ok("backup", "--strict", str(src))
    assert len(site.snapshot_files()) == len(before) + 1
