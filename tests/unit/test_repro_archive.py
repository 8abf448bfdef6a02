"""The reproducibility package's archive helpers: deterministic tarballs of a directory, safe
unpacking (nothing outside the target), the checksum list read back, the crate's shape."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from coldkeep.datasets.manifest import checksum_line
from coldkeep.repro.archive import checksums, safe_extract, tar_directory
from coldkeep.repro.crate import build_crate
from coldkeep.repro.environment import parse_code
from coldkeep.repro.verify import parse_checksums


def tree(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "a.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    (root / "sub" / "b.txt").write_text("words " * 10_000)
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    os.symlink("sub/b.txt", root / "link")
    return root


def test_tar_directory_is_deterministic_and_complete(tmp_path: Path) -> None:
    src = tree(tmp_path / "src")
    one = tar_directory(src, tmp_path / "one.tar.gz", "model", mtime=1_700_000_000, threads=1)
    two = tar_directory(src, tmp_path / "two.tar.gz", "model", mtime=1_700_000_000, threads=3)
    assert one == two and (tmp_path / "one.tar.gz").read_bytes() == (tmp_path / "two.tar.gz").read_bytes()
    with tarfile.open(tmp_path / "one.tar.gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert list(members) == [
            "model",
            "model/a.bin",
            "model/link",
            "model/run.sh",
            "model/sub",
            "model/sub/b.txt",
        ]
        assert members["model/link"].issym() and members["model/link"].linkname == "sub/b.txt"
        assert members["model/run.sh"].mode == 0o755 and members["model/a.bin"].mode == 0o644
        assert {m.uid for m in members.values()} == {0} and {m.mtime for m in members.values()} == {
            1_700_000_000
        }
    out = tmp_path / "out"
    out.mkdir()
    assert safe_extract(tmp_path / "one.tar.gz", out) == 3
    assert (out / "model" / "a.bin").read_bytes() == (src / "a.bin").read_bytes()
    assert os.readlink(out / "model" / "link") == "sub/b.txt"


def _evil(path: Path, members: list[tuple[str, bytes | None, str]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data, link in members:
            info = tarfile.TarInfo(name)
            if link:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            else:
                info.size = len(data or b"")
                tar.addfile(info, io.BytesIO(data or b""))
    return path


@pytest.mark.parametrize(
    "members",
    [
        [("../escape.txt", b"x", "")],
        [("/abs.txt", b"x", "")],
        [("top/ok", b"x", ""), ("top/../../escape", b"x", "")],
        [("top/link", None, "/tmp"), ("top/link/escape.txt", b"x", "")],
    ],
)
def test_safe_extract_refuses_to_write_outside(
    tmp_path: Path, members: list[tuple[str, bytes | None, str]]
) -> None:
    archive = _evil(tmp_path / "evil.tar.gz", members)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ValueError):
        safe_extract(archive, dest)
    assert not (tmp_path / "escape.txt").exists() and not Path("/tmp/escape.txt").exists()


def test_checksum_list_round_trip(tmp_path: Path) -> None:
    src = tree(tmp_path / "src")
    (src / "odd\nname\\x").write_text("odd")
    listing, found = checksums(src, skip="run.sh")
    parsed = parse_checksums(listing)
    assert parsed == {path: sha for path, (sha, _size) in found.items()}
    assert "run.sh" not in parsed and "link" not in parsed
    assert parse_checksums(b"0" * 64 + b"  ./x\n") == {"x": "0" * 64}  # find . -type f | sha256sum style
    assert parse_checksums(checksum_line("1" * 64, "a\\b")) == {"a\\b": "1" * 64}


def test_parse_code() -> None:
    assert parse_code("/nonexistent/code@v1.0") == ("/nonexistent/code", "v1.0")
    assert parse_code("/nonexistent/code") == ("/nonexistent/code", "HEAD")
    assert parse_code("/nonexistent/code@") == ("/nonexistent/code", "HEAD")


def test_crate_shape() -> None:
    files = {
        "dataset/d.tar.gz": ("a" * 64, 10),
        "code/c.tar.gz": ("b" * 64, 20),
        "models/m.tar.gz": ("c" * 64, 30),
    }
    crate = build_crate(
        name="pkg", created="2026-12-04T00:00:00Z", files=files, tool_version="0.1.0",
        dataset={"file": "dataset/d.tar.gz", "version": "v1", "content_sha256": "d" * 64, "snapshot_id": "e" * 64},
        code={"file": "code/c.tar.gz", "commit": "f" * 40, "branch": "main", "remotes": ["origin x"]},
        models=[{"file": "models/m.tar.gz", "name": "m", "source": "/m", "snapshot_id": None}],
    )  # fmt: skip
    graph = {e["@id"]: e for e in crate["@graph"]}
    assert graph["ro-crate-metadata.json"]["conformsTo"] == {"@id": "https://w3id.org/ro/crate/1.1"}
    assert graph["./"]["@type"] == "Dataset" and {p["@id"] for p in graph["./"]["hasPart"]} == set(files)
    assert graph["models/m.tar.gz"]["sha256"] == "c" * 64 and graph["models/m.tar.gz"]["contentSize"] == "30"
    assert graph["#create"]["instrument"] == {"@id": "#coldkeep"} and graph["#coldkeep"]["version"] == "0.1.0"
