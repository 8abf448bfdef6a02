"""The repository config is authenticated and key slots carry a checksum (issue 11, item 13).

Whoever can write the store can rewrite the plaintext config and recompute its BLAKE3 footer.
An encrypted repository's key slots authenticate the config they were made for, so the real
`coldkeep` refuses such a config with exit 3 and one error line naming it, before writing
anything: the downgrade to "unencrypted" (later backups would go out in plaintext), a changed
chunker parameter, a changed id.  A flipped byte in a key slot is named as damaged by `repo check`
and by opening.  A repository written by an older coldkeep (format-1 slots) still opens, and its
slot is upgraded so that the same attacks are refused from then on.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.helpers import Site, flip_byte, make_legacy_repository, make_tree, one_line_error, repo_files

from coldkeep.repository.format import add_footer, strip_footer

PASSPHRASE = "correct horse battery staple"
SECOND = "a second passphrase, for the second slot"


def encrypted_site(root: Path) -> Site:
    secret = root / "passphrase"
    root.mkdir(parents=True, exist_ok=True)
    secret.write_text(PASSPHRASE + "\n")
    site = Site(root / "site", password_file=str(secret))
    site.ok("repo", "init")
    return site


def rewrite_config(site: Site, change: Callable[[dict[str, Any]], None]) -> None:
    """What an attacker with write access does: edit the JSON, recompute the footer."""
    path = site.repo_dir / "config"
    doc = json.loads(strip_footer(path.read_bytes(), "config"))
    change(doc)
    path.write_bytes(add_footer(json.dumps(doc, indent=2, sort_keys=True).encode()))


def stored_objects(site: Site) -> set[str]:
    return {k for k in repo_files(site.repo_dir) if not k.startswith("locks/")}


def assert_refused(site: Site, data: Path, needle: str = "repository config") -> None:
    """`backup`, `snapshots` and `repo check` exit 3 naming the config; nothing is written."""
    before = stored_objects(site)
    for args in (("backup", str(data)), ("snapshots",), ("repo", "check")):
        proc = site.run(*args)
        assert proc.returncode == 3, (args, proc.returncode, proc.stderr)
        line = one_line_error(proc)
        assert needle in line, (args, line)
    assert stored_objects(site) == before, "something was written to a repository with a changed config"


CHANGES: dict[str, Callable[[dict[str, Any]], None]] = {
    "encrypted": lambda doc: doc.update(encrypted=False),
    "chunker.avg_size": lambda doc: doc["chunker"].update(avg_size=doc["chunker"]["avg_size"] // 2),
    "chunker.page_chunk": lambda doc: doc["chunker"].update(page_chunk=8192),
    "id": lambda doc: doc.update(id="0" * 32),
}


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_a_changed_config_is_refused(tmp_path: Path, field: str) -> None:
    """The downgrade (encrypted flipped to false) and a changed chunker parameter or id, each with
    its footer recomputed, on a fresh repository (nothing to decrypt yet that would give it away)
    and after a first backup."""
    data = make_tree(tmp_path / "data", seed=3, small_files=4, big_sizes=(200_000,))
    site = encrypted_site(tmp_path / "fresh")
    rewrite_config(site, CHANGES[field])
    assert_refused(site, data)
    assert not (site.repo_dir / "data").exists() or not any((site.repo_dir / "data").rglob("*"))

    used = encrypted_site(tmp_path / "used")
    used.ok("backup", str(data))
    rewrite_config(used, CHANGES[field])
    assert_refused(used, data)


def test_downgrade_with_the_key_slots_deleted_too(tmp_path: Path) -> None:
    """The attacker also deletes keys/: the configured passphrase still gives it away."""
    data = make_tree(tmp_path / "data", seed=3, small_files=4, big_sizes=(200_000,))
    site = encrypted_site(tmp_path / "enc")
    rewrite_config(site, CHANGES["encrypted"])
    shutil.rmtree(site.repo_dir / "keys")
    assert_refused(site, data, "a passphrase is configured")


def test_damaged_key_slot_is_named_by_check_and_by_open(tmp_path: Path) -> None:
    """A flipped byte in a slot: `repo check` names it (problem, exit 3) and opening with that
    slot's passphrase says "damaged", naming it, not "wrong passphrase"."""
    site = encrypted_site(tmp_path / "enc")
    other = tmp_path / "second"
    other.write_text(SECOND + "\n")
    added = site.json("repo", "key", "add", "--new-password-file", str(other))["added"]
    (first,) = {k.removeprefix("keys/") for k in repo_files(site.repo_dir) if k.startswith("keys/")} - {added}
    slot = site.repo_dir / "keys" / added
    text = slot.read_bytes()
    flip_byte(slot, text.index(b'"ciphertext"') + 20)  # inside the wrapped keys' base64
    proc = site.run("--json", "repo", "check")
    assert proc.returncode == 3, proc.stderr
    assert f"keys/{added}" in one_line_error(proc) and "damaged" in proc.stderr
    problems = json.loads(proc.stdout)["problems"]
    assert [p["object"] for p in problems] == [f"keys/{added}"] and problems[0]["detail"].startswith(
        "damaged ("
    )
    proc = site.run("snapshots", env={"COLDKEEP_PASSWORD": SECOND})
    assert proc.returncode == 3, proc.stderr
    line = one_line_error(proc)
    assert f"keys/{added}: damaged" in line and "wrong passphrase" not in line, line
    # the only slot of its passphrase damaged: the same, with nothing else to try
    flip_byte(slot, text.index(b'"ciphertext"') + 20)
    flip_byte(site.repo_dir / "keys" / first, 40)
    proc = site.run("snapshots")
    assert proc.returncode == 3, proc.stderr
    assert f"keys/{first}: damaged" in one_line_error(proc)
    assert site.run("snapshots", env={"COLDKEEP_PASSWORD": SECOND}).returncode == 0


def test_old_style_repository_opens_and_is_upgraded(tmp_path: Path) -> None:
    """A repository as an older coldkeep wrote it (format-1 slots: no checksum, no config
    binding) opens; the slot of the passphrase used is upgraded, `repo check` warns about the
    other one, and from then on a changed config is refused."""
    data = make_tree(tmp_path / "data", seed=4, small_files=4, big_sizes=(200_000,))
    site = encrypted_site(tmp_path / "old")
    site.ok("backup", str(data))
    first, second = make_legacy_repository(site.repo_dir, [PASSPHRASE, SECOND])
    assert json.loads((site.repo_dir / "keys" / first).read_bytes())["version"] == 1
    assert len(site.json("snapshots")) == 1  # opens (and upgrades the first slot)
    upgraded = (site.repo_dir / "keys" / first).read_bytes()
    assert json.loads(upgraded)["version"] == 2
    proc = site.ok("repo", "check")
    assert f"key slot keys/{second} is format 1" in proc.stderr
    site.ok("backup", str(data))
    rewrite_config(site, CHANGES["chunker.avg_size"])
    assert_refused(site, data)
    # the second passphrase's slot is still format 1: it opens only with the original config ...
    proc = site.run("snapshots", env={"COLDKEEP_PASSWORD": SECOND})
    assert proc.returncode == 3 and "repository config" in one_line_error(proc)
