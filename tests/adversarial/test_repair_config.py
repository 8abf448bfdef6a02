"""A damaged repository config, and a copy that holds it intact (adversarial pass 2).

One flipped byte in `config` makes every command exit 3 ("repository config: checksum mismatch")
with the hint "`coldkeep repo repair --from COPY` can fix damaged packs" — and `repo repair --from
offsite` fails with the same error: it reads the config first and never repairs it, although the
copy holds the identical, intact object.  The README promises repair of "damaged blobs, packs,
indexes, snapshots, key slots from the copy"; the config is the one object without which none
of them can be read.  Encrypted, the repaired config must still be the one the key slots bind.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import flip_byte, make_tree, tree_digest
from tests.integration.test_prune_repair import _password_file, _sites


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_repair_a_damaged_config_from_the_copy(tmp_path: Path, encrypted: bool) -> None:
    site, _copy = _sites(tmp_path, _password_file(tmp_path) if encrypted else "")
    data = make_tree(tmp_path / "data", seed=61, small_files=6, big_sizes=(300_000,))
    snap = site.json("backup", str(data))["snapshot_id"]
    site.ok("repo", "copy", "--to", "offsite")
    flip_byte(site.repo_dir / "config", 12)
    assert site.run("snapshots").returncode == 3
    repaired = site.json("repo", "repair", "--from", "offsite")
    assert "config" in repaired["replaced"] and repaired["remaining_problems"] == [], repaired
    assert site.restore_digest(snap, tmp_path / "r", data) == tree_digest(data)


def test_repair_does_not_take_another_repositorys_config(tmp_path: Path) -> None:
    site, _copy = _sites(tmp_path)
    other, _ = _sites(tmp_path / "other")
    flip_byte(site.repo_dir / "config", -1)  # the footer: the document still names its repository
    before = (site.repo_dir / "config").read_bytes()
    site.copies["offsite"]["url"] = f"file://{other.repo_dir}"  # a copy of another repository
    site.write()
    proc = site.run("repo", "repair", "--from", "offsite")
    assert proc.returncode != 0
    assert (site.repo_dir / "config").read_bytes() == before
