"""Where `restore --relative` / `--strip-components` land a snapshot's entries (adversarial pass on
restore_select.py).

Observed before the fix, each with exit 0:

* `restore --relative` of a snapshot of one file (or of a symlink to one) restored nothing:
  the backed-up path itself "is the target" also when it is not a directory;
* `--relative` of a snapshot whose names do not start with its backed-up path (stored relative
  to it, as a PostgreSQL base backup is; a backup of ``/``) restored nothing;
* `--strip-components` deeper than every name restored nothing, silently;
* a snapshot of nested paths (``backup /d /d/train``) lists ``d/train`` twice: restore wrote each
  file twice, counted it twice, and left a ``.coldkeep-restore-*.tmp`` name in the target (a
  hard link renamed onto a name of the same file: rename(2) does nothing).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from coldkeep.repository.backup import Backup
from coldkeep.repository.repository import Repository
from coldkeep.repository.restore import Restorer
from coldkeep.repository.restore_select import Selection
from coldkeep.storage.local import LocalBackend
from tests.helpers import Site, one_line_error


def _files(root: Path) -> dict[str, bytes]:
    """Every regular file below ``root`` (relative name -> bytes); symlinks as their target."""
    out: dict[str, bytes] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[rel] = b"-> " + os.readlink(path).encode()
        elif path.is_file():
            out[rel] = path.read_bytes()
    return out


def test_relative_restore_of_a_backed_up_file_lands_it_under_its_name(tmp_path: Path) -> None:
    site = Site(tmp_path / "site")
    site.ok("repo", "init")
    data = tmp_path / "data"
    data.mkdir()
    (data / "model.ckpt").write_bytes(b"weights")
    (data / "link.ckpt").symlink_to("model.ckpt")
    for name, expected in (("model.ckpt", b"weights"), ("link.ckpt", b"-> model.ckpt")):
        site.ok("backup", str(data / name))
        out = tmp_path / f"out-{name}"
        proc = site.ok("--json", "restore", "latest", "--target", str(out), "--relative")
        assert _files(out) == {name: expected}, proc.stdout


def test_relative_restore_of_names_stored_relative_to_the_backed_up_path(tmp_path: Path) -> None:
    src = tmp_path / "pgdata"
    (src / "base" / "1").mkdir(parents=True)
    (src / "PG_VERSION").write_text("15\n")
    (src / "base" / "1" / "1259").write_bytes(b"relation")
    repo = Repository.init(LocalBackend(tmp_path / "repo"))
    snap = Backup(repo).run([src], base=src).snapshot  # names 'PG_VERSION', 'base/1/1259'
    out = tmp_path / "out"
    result = Restorer(repo).run(snap, out, selection=Selection(relative=True, roots=tuple(snap.paths)))
    assert result.files == 2 and not result.errors
    assert _files(out) == {"PG_VERSION": b"15\n", "base/1/1259": b"relation"}


def test_strip_components_that_take_every_name_is_refused(tmp_path: Path) -> None:
    site = Site(tmp_path / "site")
    site.ok("repo", "init")
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("a")
    site.ok("backup", str(data))
    depth = len(data.parts)  # '/' counts as a part: the file's stored name has `depth` components
    out = tmp_path / "out"
    proc = site.run("restore", "latest", "--target", str(out), "--strip-components", str(depth))
    assert proc.returncode == 2, proc.stderr
    assert "--strip-components" in one_line_error(proc)
    assert _files(out) == {} if out.exists() else True
    site.ok("restore", "latest", "--target", str(out), "--strip-components", str(depth - 1))
    assert _files(out) == {"a.txt": b"a"}


def test_nested_backed_up_paths_restore_each_file_once_and_leave_no_temporary(tmp_path: Path) -> None:
    site = Site(tmp_path / "site")
    site.ok("repo", "init")
    data = tmp_path / "d"
    (data / "train").mkdir(parents=True)
    (data / "train" / "a.json").write_text("a")
    os.link(data / "train" / "a.json", data / "hl.json")  # a hard link across the two paths
    (data / "train" / "b.json").write_text("b")
    site.ok("backup", str(data), str(data / "train"))
    stored = str(data).lstrip("/")
    expected = {
        "default": {
            f"{stored}/hl.json": b"a",
            f"{stored}/train/a.json": b"a",
            f"{stored}/train/b.json": b"b",
        },
        "relative": {
            "hl.json": b"a",
            "train/a.json": b"a",
            "train/b.json": b"b",
        },  # d/train: stored once, inside d
    }
    for mode, want in expected.items():
        out = tmp_path / f"out-{mode}"
        extra = ["--relative"] if mode == "relative" else []
        proc = site.ok("--json", "restore", "latest", "--target", str(out), *extra)
        assert _files(out) == want, f"{mode}: {sorted(_files(out))}"
        assert json.loads(proc.stdout)["files"] == 3, proc.stdout
