"""A restore that fails for a reason of the target, not of the repository (adversarial pass 2).

Observed: a target that is full (ENOSPC), or a file too large for it (EFBIG), makes `restore` exit 3
("integrity / verification failure") with the hint "run `coldkeep repo check --read-data`;
`coldkeep repo repair --from COPY` can fix damaged packs" — sending the operator to repair a
healthy repository (the false alarm issue 12 item 1 removed for a prune racing a restore).  A
read-only or impossible target dies with "internal error: OSError" (invariant 7: one line with a
hint, never an internal error for a bad target).  Expected: exit 1 (the operation failed), the
file and the system's reason named, and a hint about the target, not about the repository.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
from pathlib import Path

from tests.helpers import COLDKEEP, Site, base_env, one_line_error


def _restore_with_file_size_limit(site: Site, target: Path, limit: int) -> subprocess.CompletedProcess[str]:
    def limit_file_size() -> None:  # writes past `limit` fail with EFBIG (SIGXFSZ ignored)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(
        [COLDKEEP, "--config", str(site.config), "restore", "latest", "--target", str(target)],
        capture_output=True, text=True, env=base_env(site.full_env()), preexec_fn=limit_file_size,
        timeout=120, check=False,
    )  # fmt: skip


def test_a_target_that_cannot_take_the_file_is_not_a_damaged_repository(tmp_path: Path) -> None:
    site = Site(tmp_path / "site")
    site.ok("repo", "init")
    data = tmp_path / "data"
    data.mkdir()
    (data / "big.bin").write_bytes(os.urandom(6 * 1024 * 1024))
    site.ok("backup", str(data))
    site.ok("repo", "rebuild-cache")  # the cache exists before the limit applies
    proc = _restore_with_file_size_limit(site, tmp_path / "out", 2 * 1024 * 1024)
    assert proc.returncode == 1, proc.stderr  # the operation failed; nothing is damaged
    line = one_line_error(proc)
    assert "big.bin" in line and "File too large" in line, line
    assert "repair" not in proc.stderr, proc.stderr
    assert site.run("repo", "check", "--read-data").returncode == 0


def test_an_unusable_target_is_one_line_not_an_internal_error(tmp_path: Path) -> None:
    site = Site(tmp_path / "site")
    site.ok("repo", "init")
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("x")
    site.ok("backup", str(data))
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("I am a file")
    for target in (not_a_dir, not_a_dir / "below"):
        proc = site.run("restore", "latest", "--target", str(target))
        assert proc.returncode == 2, proc.stderr
        line = one_line_error(proc)
        assert "internal error" not in line and str(not_a_dir) in line, line


def test_an_empty_path_is_not_the_current_directory(tmp_path: Path) -> None:
    """`backup ""` backed up the current directory and `restore ID --target ""` restored into it
    (from `/`, over the live files): an unset shell variable must not mean "here"."""
    site = Site(tmp_path / "site")
    site.ok("repo", "init")
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("x")
    site.ok("backup", str(data))
    work = tmp_path / "cwd"
    work.mkdir()
    for args in (["backup", ""], ["restore", "latest", "--target", ""]):
        proc = subprocess.run(
            [COLDKEEP, "--config", str(site.config), *args], cwd=work, capture_output=True, text=True,
            env=base_env(site.full_env()), timeout=120, check=False,
        )  # fmt: skip
        assert proc.returncode == 2, (args, proc.stderr)
        one_line_error(proc)
    assert list(work.iterdir()) == []
    assert len(site.snapshot_ids()) == 1


def test_an_include_that_matches_nothing_is_not_a_successful_restore(tmp_path: Path) -> None:
    """The README's `restore latest --include 'mnt/…/train/*'`: when `latest` is another snapshot
    (a later backup of other paths, a base backup) or the pattern has a typo, restore said
    "restored 0 files" and exited 0 — a drill or a script took that for a good restore."""
    site = Site(tmp_path / "site")
    site.ok("repo", "init")
    for name in ("datasets", "other"):
        (tmp_path / name / "train").mkdir(parents=True)
        (tmp_path / name / "train" / "f").write_text(name)
        site.ok("backup", str(tmp_path / name))
    pattern = str(tmp_path / "datasets" / "train" / "*").lstrip("/")
    proc = site.run("restore", "latest", "--target", str(tmp_path / "out"), "--include", pattern)
    assert proc.returncode == 5, proc.stdout + proc.stderr
    assert "matches --include" in one_line_error(proc)
    first = site.snapshot_ids()[0]
    site.ok("restore", first, "--target", str(tmp_path / "out2"), "--include", pattern)
    assert (tmp_path / "out2" / pattern.removesuffix("*") / "f").read_text() == "datasets"
