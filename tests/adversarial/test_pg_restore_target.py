"""`pg restore --target-dir` moves aside what is there — whatever it is (adversarial pass 2).

`move_aside` renames any non-empty target to `DIR.coldkeep-old-<time>`, refusing only when the
target itself holds a live `postmaster.pid`.  A typo one level up — `--target-dir
/var/lib/postgresql/15` instead of `…/15/main` — renames the directory that holds the running
production cluster's data directory (the server's files vanish from their paths under it), and
`--target-dir /home/alice` moves a home directory away.  Expected: only a PostgreSQL data
directory (it has `PG_VERSION`) is moved aside; anything else non-empty is refused, one line,
exit 2, nothing renamed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from coldkeep.errors import UsageError
from coldkeep.postgres.restore import move_aside


def _live_cluster_dir(path: Path) -> None:
    path.mkdir(parents=True)
    (path / "PG_VERSION").write_text("15\n")
    (path / "postmaster.pid").write_text(f"{os.getpid()}\n{path}\n")  # a live pid: this process


def test_the_parent_of_a_running_clusters_data_directory_is_not_moved(tmp_path: Path) -> None:
    parent = tmp_path / "15"
    _live_cluster_dir(parent / "main")
    with pytest.raises(UsageError):
        move_aside(parent)  # observed: renamed, with the live cluster inside
    assert (parent / "main" / "postmaster.pid").exists()


def test_a_directory_that_is_not_a_data_directory_is_not_moved(tmp_path: Path) -> None:
    home = tmp_path / "alice"
    (home / "thesis").mkdir(parents=True)
    (home / "thesis" / "draft.tex").write_text("months of work")
    with pytest.raises(UsageError):
        move_aside(home)
    assert (home / "thesis" / "draft.tex").exists()


def test_a_stopped_data_directory_is_still_moved_aside(tmp_path: Path) -> None:
    data = tmp_path / "main"
    data.mkdir()
    (data / "PG_VERSION").write_text("15\n")
    aside = move_aside(data)
    assert aside is not None and (Path(aside) / "PG_VERSION").exists() and not data.exists()
