"""``coldkeep datasets …`` through the real command (issue 14): immutable versions, status by stat
data, diff, verify naming every failing file, byte-exact restore, the spec's export checked with
the real ``tar``, ``sha256sum`` and ``zstd``, Tier-1 protection, damaged blobs (exit 3)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from tests.datasetsite import app_files, damage_files, make_dataset
from tests.helpers import Site, need, one_line_error, tree_digest


@pytest.fixture
def site(tmp_path: Path) -> Site:
    site = Site(tmp_path / "site", env={"COLDKEEP_PACK_TARGET": "16384"})
    site.ok("repo", "init")
    return site


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "applications")


def snap(site: Site, data: Path, version: str, *extra: str) -> dict:
    return site.json("datasets", "snapshot", "--version", version, "--root", str(data), *extra)


def files_only(digest: dict[str, str]) -> dict[str, str]:
    """tree_digest without modes (an export or restore gives files its own modes)."""
    return {k: v.rsplit(":", 1)[-1] for k, v in digest.items() if v.startswith("file:")}


def test_snapshot_manifest_and_immutable_versions(site: Site, data: Path) -> None:
    first = snap(site, data, "v1", "--label", "baseline")
    assert first["created"] is True
    m = first["manifest"]
    files = app_files(data)
    assert (m["version"], m["total_apps"], m["train_apps"], m["holdout_apps"]) == ("v1", 6, 4, 2)
    assert m["files"] == len(files)
    assert m["total_size_bytes"] == sum(p.stat().st_size for p in files)
    assert m["snapshot_date"].endswith("Z")
    # the identity is the SHA-256 of the sha256sum list, which `sha256sum -c` accepts in the tree
    sums = site.ok("datasets", "show", "v1", "--checksums").stdout
    assert hashlib.sha256(sums.encode()).hexdigest() == m["content_sha256"]
    check = subprocess.run(
        ["sha256sum", "-c", "--quiet", "-"], input=sums, cwd=data, text=True, capture_output=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert len(sums.splitlines()) == len(files)

    again = snap(site, data, "v1")  # same content, same name: a no-op returning the version
    assert (again["created"], again["snapshot_id"]) == (False, first["snapshot_id"])
    count = len(site.snapshot_ids())

    (data / "train" / "app-train-01" / "README.md").write_text("changed\n")
    proc = site.run("datasets", "snapshot", "--version", "v1", "--root", str(data))
    assert proc.returncode == 1
    error = one_line_error(proc)
    assert m["content_sha256"] in error  # both hashes named
    new_hash = hashlib.sha256(site_sums_of(data).encode()).hexdigest()
    assert new_hash in error
    assert len(site.snapshot_ids()) == count  # nothing recorded

    second = snap(site, data, "v2")
    assert second["created"] is True and second["manifest"]["content_sha256"] == new_hash
    listed = site.json("datasets", "list")
    assert [v["version"] for v in listed] == ["v1", "v2"]
    assert listed[0]["label"] == "baseline"
    shown = site.json("datasets", "show", "latest")
    assert shown["version"] == "v2" and list(shown["manifest"])[:6] == [
        "version", "snapshot_date", "total_apps", "train_apps", "holdout_apps", "total_size_bytes",
    ]  # fmt: skip


def site_sums_of(root: Path) -> str:
    """The sha256sum list of a live tree, as `find | sort | sha256sum` would make it."""
    lines = []
    for path in sorted(app_files(root), key=lambda p: os.fsencode(p.relative_to(root).as_posix())):
        lines.append(
            f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.relative_to(root).as_posix()}\n"
        )
    return "".join(lines)


def test_if_changed_returns_the_recorded_version(site: Site, data: Path) -> None:
    first = snap(site, data, "v1")
    same = snap(site, data, "run-2", "--if-changed")
    assert (same["created"], same["version"], same["snapshot_id"]) == (False, "v1", first["snapshot_id"])
    # touched but not changed: read again, recognised by content
    os.utime(data / "holdout" / "app-holdout-00" / "README.md", ns=(1, 1))
    touched = snap(site, data, "run-3", "--if-changed")
    assert (touched["created"], touched["version"]) == (False, "v1")
    (data / "train" / "app-train-00" / "src" / "part-0.bin").write_bytes(b"new bytes")
    changed = snap(site, data, "run-4", "--if-changed")
    assert (changed["created"], changed["version"]) == (True, "run-4")
    assert [v["version"] for v in site.json("datasets", "list")] == ["v1", "run-4"]


def test_status_by_stat_data(site: Site, data: Path) -> None:
    snap(site, data, "v1")
    clean = site.json("datasets", "status", "--root", str(data))
    assert clean["clean"] is True and clean["version"] == "v1"
    assert (clean["judged_by_stat"], clean["hashed"]) == (len(app_files(data)), 0)  # nothing read

    os.utime(data / "train" / "app-train-00" / "README.md", ns=(10**18, 10**18))  # touched only
    touched = site.json("datasets", "status", "--root", str(data))
    assert touched["clean"] is True and touched["hashed"] == 1

    (data / "train" / "app-train-02" / "src" / "part-1.bin").write_bytes(b"x")  # changed
    shutil.rmtree(data / "holdout" / "app-holdout-01")  # an app removed
    new_app = data / "train" / "app-new"
    new_app.mkdir()
    (new_app / "metadata.json").write_text("{}")  # an app added
    status = site.json("datasets", "status", "--root", str(data))
    assert status["clean"] is False
    assert status["files"]["changed"] == ["train/app-train-02/src/part-1.bin"]
    assert status["files"]["added"] == ["train/app-new/metadata.json"]
    assert len(status["files"]["removed"]) == 5 and all(
        p.startswith("holdout/app-holdout-01/") for p in status["files"]["removed"]
    )
    assert status["apps"] == {"added": ["train/app-new"], "removed": ["holdout/app-holdout-01"],
                              "changed": ["train/app-train-02"]}  # fmt: skip
    human = site.ok("datasets", "status", "--root", str(data)).stdout
    assert "train/app-train-02/src/part-1.bin" in human and "apps removed: holdout/app-holdout-01" in human
    assert site.run("datasets", "status", "--root", str(data), "--exit-code").returncode == 1

    snap(site, data, "v2")
    diff = site.json("datasets", "diff", "v1", "v2")
    assert diff["files"] == status["files"] and diff["apps"] == status["apps"]
    assert diff["sizes"]["train/app-new/metadata.json"] == {"old": None, "new": 2}


def test_verify_names_every_failing_file_and_restore_is_exact(site: Site, data: Path, tmp_path: Path) -> None:
    snap(site, data, "v1")
    assert site.json("datasets", "verify", "v1")["ok"] is True
    assert site.json("datasets", "verify", "v1", "--against", str(data))["ok"] is True

    out = tmp_path / "restored"
    restored = site.json("datasets", "restore", "v1", "--to", str(out))
    assert restored["files"] == len(app_files(data))
    assert files_only(tree_digest(out)) == files_only(tree_digest(data))
    assert site.json("datasets", "status", "v1", "--root", str(out))["clean"] is True
    again = site.run("datasets", "restore", "v1", "--to", str(out))  # never over an existing tree
    assert again.returncode == 2 and "not an empty directory" in one_line_error(again)

    # a live tree that differs in several ways: every file is named, not the first
    (out / "train" / "app-train-00" / "README.md").write_text("edited")
    (out / "train" / "app-train-03" / "src" / "part-2.bin").write_bytes(b"")
    (out / "holdout" / "app-holdout-00" / "metadata.json").unlink()
    (out / "holdout" / "stray.txt").write_text("extra")
    proc = site.run("--json", "datasets", "verify", "v1", "--against", str(out))
    assert proc.returncode == 3
    result = json.loads(proc.stdout)
    assert result["failing"] == [
        "holdout/app-holdout-00/metadata.json",
        "holdout/stray.txt",
        "train/app-train-00/README.md",
        "train/app-train-03/src/part-2.bin",
    ]
    error = one_line_error(proc)
    assert "4 file(s) failed verification" in error and "train/app-train-03/src/part-2.bin" in error

    assert site.run("datasets", "show", "v9").returncode == 5


def test_damaged_blob_verify_names_files_export_and_restore_refuse(
    site: Site, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snap(site, data, "v1")
    damaged = ["holdout/app-holdout-01/src/part-1.bin", "train/app-train-02/metadata.json"]
    damage_files(site, damaged, tmp_path / "api-cache", monkeypatch)
    proc = site.run("--json", "datasets", "verify", "v1")
    assert proc.returncode == 3, proc.stderr
    result = json.loads(proc.stdout)
    failing = result["failing"]
    assert failing == damaged, result  # every damaged file, nothing else
    assert all(p["kind"] == "damaged" for p in result["problems"])
    error = one_line_error(proc)
    assert all(name in error for name in failing)

    out = tmp_path / "exports"
    out.mkdir()
    export = site.run("datasets", "export", "v1", "--to", str(out))
    assert export.returncode == 3
    assert any(name in one_line_error(export) for name in failing)
    assert list(out.iterdir()) == []  # no archive, no temp file, no .sha256

    restore = site.run("datasets", "restore", "v1", "--to", str(tmp_path / "r"))
    assert restore.returncode == 3
    one_line_error(restore)


@pytest.mark.parametrize("fmt", ["tar.gz", "tar.zst"])
def test_export_is_the_specs_archive_and_deterministic(
    site: Site, data: Path, tmp_path: Path, fmt: str
) -> None:
    need(shutil.which("sha256sum") and shutil.which("tar"), "sha256sum and tar")
    if fmt == "tar.zst":
        need(shutil.which("zstd"), "zstd")
    big = data / "train" / "app-train-00" / "src" / "big.bin"
    big.write_bytes(os.urandom(3 * 1024 * 1024) + b"text " * 300_000)  # several compression blocks
    os.symlink("src/big.bin", data / "train" / "app-train-00" / "link")
    version = snap(site, data, "v3.0")
    date = version["manifest"]["snapshot_date"][:10].replace("-", "")
    top = f"iccm_dataset_v3.0_{date}"
    first, second = tmp_path / "e1", tmp_path / "e2"
    first.mkdir()
    second.mkdir()
    result = site.json("datasets", "export", "v3.0", "--to", str(first), "--format", fmt)
    assert result["path"] == str(first / f"{top}.{fmt}")
    site.json("datasets", "export", "v3.0", "--to", str(second), "--format", fmt)
    archive = first / f"{top}.{fmt}"
    assert archive.read_bytes() == (second / archive.name).read_bytes()  # same version, same bytes

    check = subprocess.run(
        ["sha256sum", "-c", archive.name + ".sha256"], cwd=first, capture_output=True, text=True
    )
    assert check.returncode == 0 and f"{archive.name}: OK" in check.stdout, check.stdout + check.stderr
    listing = [
        "tar",
        "-tzf" if fmt == "tar.gz" else "--zstd",
        *([] if fmt == "tar.gz" else ["-tf"]),
        str(archive),
    ]
    names = subprocess.run(listing, capture_output=True, text=True, check=True).stdout.split()
    assert names[:3] == [f"{top}/", f"{top}/manifest.json", f"{top}/SHA256SUMS"]
    assert f"{top}/train/app-train-00/src/big.bin" in names
    if fmt == "tar.gz":
        assert subprocess.run(["gzip", "-t", str(archive)]).returncode == 0
    else:
        assert subprocess.run(["zstd", "-q", "-t", str(archive)]).returncode == 0

    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    flag = "-xzf" if fmt == "tar.gz" else "-xf"
    subprocess.run(
        ["tar", *(["--zstd"] if fmt == "tar.zst" else []), flag, str(archive), "-C", str(unpacked)],
        check=True,
    )
    inner = unpacked / top
    sums = subprocess.run(
        ["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=inner, capture_output=True, text=True
    )
    assert sums.returncode == 0, sums.stdout + sums.stderr
    manifest = json.loads((inner / "manifest.json").read_text())
    assert manifest == version["manifest"]
    assert os.readlink(inner / "train" / "app-train-00" / "link") == "src/big.bin"
    for extra in ("manifest.json", "SHA256SUMS"):
        (inner / extra).unlink()
    assert files_only(tree_digest(inner)) == files_only(tree_digest(data))


def test_dataset_versions_are_tier1(site: Site, data: Path) -> None:
    version = snap(site, data, "v1")
    proc = site.run("forget", version["snapshot_id"])
    assert proc.returncode == 2 and "Tier-1" in proc.stderr
    (data / "train" / "app-train-00" / "README.md").write_text("v2")
    snap(site, data, "v2")
    site.ok("forget", "--keep-last", "1", "--group-by", "")
    assert [v["version"] for v in site.json("datasets", "list")] == ["v1", "v2"]


def test_bad_input_is_one_line(site: Site, data: Path, tmp_path: Path) -> None:
    bad = site.run("datasets", "snapshot", "--version", "../v1", "--root", str(data))
    assert bad.returncode == 2 and "not a dataset version name" in one_line_error(bad)
    missing = site.run("datasets", "snapshot", "--version", "v1", "--root", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "not a directory" in one_line_error(missing)
    none = site.run("datasets", "status", "--root", str(data))
    assert none.returncode == 5 and "no dataset version" in one_line_error(none)


def test_a_file_changing_while_read_fails_the_snapshot(site: Site, data: Path) -> None:
    """Strict: a file appended to by another process while the snapshot reads it (inotify, the
    moment it is opened) fails the snapshot, names the file, records nothing (exit 1)."""
    from tests.changer import change_on_open, finish

    block = os.urandom(1024 * 1024)
    path = data / "train" / "app-train-00" / "shard.bin"
    with path.open("wb") as f:
        for _ in range(128):  # 128 MiB of one repeated MiB: long to read, cheap to store
            f.write(block)
    changer = change_on_open(path, "append", 1024 * 1024)
    proc = site.run("datasets", "snapshot", "--version", "v1", "--root", str(data), timeout=600)
    finish(changer)
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert f"changed while being read: {path}" in one_line_error(proc)
    assert site.snapshot_ids() == []
    assert snap(site, data, "v1")["created"] is True  # quiet again: recorded


def test_export_refuses_a_tree_with_its_own_manifest(site: Site, data: Path, tmp_path: Path) -> None:
    (data / "manifest.json").write_text("{}")
    snap(site, data, "v1")
    out = tmp_path / "out"
    out.mkdir()
    proc = site.run("datasets", "export", "v1", "--to", str(out))
    assert proc.returncode == 2 and "top-level manifest.json" in one_line_error(proc)
    assert list(out.iterdir()) == []
    missing = site.run("datasets", "export", "v1", "--to", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "does not exist" in one_line_error(missing)
