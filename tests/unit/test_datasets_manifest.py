"""The pure parts of dataset versions: version names, the sha256sum list (checked against the real
``sha256sum``), the content hash, the manifest's counts, diffs; and the export's parallel gzip
(decompressed by the real ``gzip``, the same bytes on any number of threads)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from tests.helpers import need

from coldkeep.datasets.export import GZIP_BLOCK, HashingFile, ParallelGzip
from coldkeep.datasets.manifest import (
    apps_of,
    build_manifest,
    check_version,
    checksum_line,
    checksum_list,
    content_hash,
    diff,
    ordered,
)
from coldkeep.errors import UsageError
from coldkeep.repository.tree import TreeEntry


@pytest.mark.parametrize("name", ["v3.0", "v1", "2026-12-04", "v3.0+fix_1", "A" * 64])
def test_version_names_accepted(name: str) -> None:
    assert check_version(name) == name


@pytest.mark.parametrize("name", ["", "../v1", "v1/x", ".hidden", "-v", "v 1", "v1\n", "A" * 65, "vé"])
def test_version_names_refused(name: str) -> None:
    with pytest.raises(UsageError):
        check_version(name)


def f(path: str, data: bytes) -> TreeEntry:
    return {"path": path, "type": "file", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_checksum_lines_are_what_sha256sum_writes(tmp_path: Path) -> None:
    need(shutil.which("sha256sum"), "sha256sum")
    names = ["plain.txt", "back\\slash", "new\nline", "sp ace", "ünï"]
    for i, name in enumerate(names):
        (tmp_path / name).write_bytes(bytes([i]) * 10)
    for i, name in enumerate(names):
        real = subprocess.run(["sha256sum", "--", name], cwd=tmp_path, capture_output=True, check=True).stdout
        assert checksum_line(hashlib.sha256(bytes([i]) * 10).hexdigest(), name) == real
    listing = checksum_list([f(n, bytes([i]) * 10) for i, n in enumerate(names)])
    check = subprocess.run(
        ["sha256sum", "-c", "--quiet", "-"], input=listing, cwd=tmp_path, capture_output=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_content_hash_is_the_hash_of_the_list_and_covers_links_and_empty_dirs() -> None:
    entries: list[TreeEntry] = [
        {"path": "train", "type": "dir"},
        f("train/b", b"2"),
        f("train/a", b"1"),
    ]
    assert content_hash(entries) == hashlib.sha256(checksum_list(entries)).hexdigest()
    assert checksum_list(entries).splitlines()[0].endswith(b"  train/a")  # sorted by path
    assert content_hash(list(reversed(entries))) == content_hash(entries)  # order of the walk is not content
    with_link = [*entries, {"path": "train/l", "type": "symlink", "target": "a"}]
    other_link = [*entries, {"path": "train/l", "type": "symlink", "target": "b"}]
    with_dir = [*entries, {"path": "empty", "type": "dir"}]
    hashes = {content_hash(e) for e in (entries, with_link, other_link, with_dir)}
    assert len(hashes) == 4
    renamed = [{"path": "train", "type": "dir"}, f("train/b", b"2"), f("train/c", b"1")]
    assert content_hash(renamed) != content_hash(entries)


def test_manifest_counts_apps_per_split() -> None:
    entries = [
        f("train/app1/metadata.json", b"{}"),
        f("train/app1/x.py", b"x" * 10),
        f("train/app2/metadata.json", b"{}"),
        f("holdout/app3/metadata.json", b"{}"),
        f("notes.txt", b"n"),
        f("metadata.json", b"top level: not an app"),
    ]
    m = build_manifest("v1", "2026-12-04T00:00:00Z", entries, ["train", "holdout"])
    assert (m["total_apps"], m["train_apps"], m["holdout_apps"], m["files"]) == (3, 2, 1, 6)
    assert m["total_size_bytes"] == sum(e["size"] for e in entries)
    assert list(ordered(dict(sorted(m.items())))) == list(m)
    assert apps_of(["a/b/metadata.json", "c/metadata.json.bak"]) == {"a/b"}


def test_diff_files_and_apps() -> None:
    old = {
        e["path"]: e for e in [f("t/a/metadata.json", b"1"), f("t/a/x", b"1"), f("t/b/metadata.json", b"1")]
    }
    new = {
        e["path"]: e for e in [f("t/a/metadata.json", b"1"), f("t/a/x", b"22"), f("t/c/metadata.json", b"1")]
    }
    d = diff(old, new)
    assert (d.added, d.removed, d.changed) == (["t/c/metadata.json"], ["t/b/metadata.json"], ["t/a/x"])
    assert (d.apps_added, d.apps_removed, d.apps_changed) == (["t/c"], ["t/b"], ["t/a"])
    assert d.sizes["t/a/x"] == (1, 2) and not d.clean
    assert diff(old, old).clean


def _gzip(data: bytes, threads: int, piece: int) -> bytes:
    buf = io.BytesIO()
    stream = ParallelGzip(HashingFile(buf), 6, threads)
    for i in range(0, len(data), piece):
        stream.write(data[i : i + piece])
    stream.close()
    return buf.getvalue()


def test_parallel_gzip_is_gzip_and_deterministic(tmp_path: Path) -> None:
    rng = random.Random(1)
    data = rng.randbytes(2 * GZIP_BLOCK) + b"words and more words " * 100_000 + rng.randbytes(17)
    one = _gzip(data, 1, 10_000)
    assert gzip.decompress(one) == data
    assert _gzip(data, 3, 777_777) == one  # threads and write sizes do not change the bytes
    assert _gzip(b"", 2, 1) and gzip.decompress(_gzip(b"", 2, 1)) == b""
    need(shutil.which("gzip"), "gzip")
    path = tmp_path / "x.gz"
    path.write_bytes(one)
    out = subprocess.run(["gzip", "-dc", str(path)], capture_output=True, check=True).stdout
    assert out == data
    assert len(one) < len(data) * 0.75  # the text compresses: blocks are primed, not independent
    assert os.path.getsize(path) == len(one)
