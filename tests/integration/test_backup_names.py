"""File names are bytes: names and symlink targets that are not UTF-8 back up and restore exactly,
through the CLI (arguments, --json, warnings, --include); a top-level path that is a symlink to
a directory is backed up as that directory."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tests.helpers import Site

from coldkeep.repository.backup import Backup
from coldkeep.repository.repository import Repository
from coldkeep.storage.local import LocalBackend

#: stdout and stderr that refuse what UTF-8 cannot encode, as under a non-C UTF-8 locale
STRICT_IO = {"PYTHONIOENCODING": "utf-8:strict"}


def byte_tree(root: bytes) -> dict[bytes, tuple[str, bytes]]:
    """``relative path -> (kind, content or link target)`` for everything below ``root``, with
    names as the bytes the file system has."""
    out: dict[bytes, tuple[str, bytes]] = {}

    def visit(directory: bytes, rel: bytes) -> None:
        for name in sorted(os.listdir(directory)):
            path, key = os.path.join(directory, name), rel + name
            if os.path.islink(path):
                out[key] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                out[key] = ("dir", b"")
                visit(path, key + b"/")
            elif os.path.isfile(path):
                with open(path, "rb") as f:
                    out[key] = ("file", f.read())

    visit(root, b"")
    return out


def make_names(src: bytes) -> None:
    os.makedirs(src)
    files = {
        b"caf\xe9.txt": b"latin-1 name\n",  # not UTF-8
        b"ok-\xc3\xa9.txt": b"a UTF-8 name\n",
        b"[bold]markup": b"a name rich must not interpret\n",
        b"d\x80ir/inner\xff": b"inside a directory whose name is not UTF-8\n",
    }
    os.mkdir(os.path.join(src, b"d\x80ir"))
    for name, content in files.items():
        with open(os.path.join(src, name), "wb") as f:
            f.write(content)
    os.symlink(b"target-\xff", os.path.join(src, b"link\xfe"))  # a dangling link, target not UTF-8
    os.symlink(b"caf\xe9.txt", os.path.join(src, b"good-link"))
    os.mkfifo(os.path.join(src, b"[red]fifo\xfd"))  # skipped with a warning that names it as it is


def test_names_and_link_targets_that_are_not_utf8_restore_exactly(tmp_path: Path) -> None:
    site = Site(tmp_path / "site")
    site.ok("repo", "init")
    src = os.path.join(os.fsencode(tmp_path), b"src-\xff")  # the source path itself is not UTF-8
    make_names(src)
    expected = byte_tree(src)
    arg = os.fsdecode(src)

    proc = site.run("--json", "backup", arg, env=STRICT_IO)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)  # valid UTF-8 JSON: the names travel as \udcXX escapes
    fifo_warning = [w for w in out["warnings"] if "fifo" in w]
    assert len(fifo_warning) == 1 and fifo_warning[0].startswith(os.fsdecode(src + b"/[red]fifo\xfd") + ":")
    assert out["files"] == 4 and out["changed_files"] == [] and out["skipped_files"] == []

    human = site.run("backup", arg, env=STRICT_IO)
    assert human.returncode == 0, human.stderr
    assert "warning: " + os.fsdecode(src).encode("utf-8", "surrogateescape").decode(
        "utf-8", "backslashreplace"
    ) + "/[red]fifo\\xfd: skipped" in " ".join(human.stderr.split())

    snaps = json.loads(site.ok("--json", "snapshots").stdout)
    assert [s["paths"] for s in snaps] == [[arg], [arg]]

    target = tmp_path / "out"
    restore = site.run("restore", "latest", "--target", str(target), env=STRICT_IO)
    assert restore.returncode == 0, restore.stderr
    assert byte_tree(os.path.join(os.fsencode(target), src.lstrip(b"/"))) == expected
    assert site.run("repo", "check", "--read-data").returncode == 0

    # --include with a pattern that is not UTF-8
    part = tmp_path / "part"
    pattern = os.fsdecode(src.lstrip(b"/") + b"/d\x80ir/*")
    site.ok("restore", "latest", "--target", str(part), "--include", pattern)
    assert byte_tree(os.fsencode(part / arg.lstrip("/"))) == {
        b"d\x80ir": ("dir", b""),
        b"d\x80ir/inner\xff": ("file", b"inside a directory whose name is not UTF-8\n"),
    }


def test_tree_lines_escape_only_the_entries_that_need_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry with a UTF-8 name is the same line as ever (unchanged tree blobs dedupe); one
    whose name is not UTF-8 is ASCII with escapes and reads back as the same name."""
    from coldkeep.repository.repository import tree_line

    assert tree_line({"path": "café", "type": "file"}) == '{"path":"café","type":"file"}\n'.encode()
    name = os.fsdecode(b"caf\xe9-\xc3\xa9")
    line = tree_line({"path": name, "target": name})
    assert line == b'{"path":"caf\\udce9-\\u00e9","target":"caf\\udce9-\\u00e9"}\n'
    assert os.fsencode(json.loads(line)["path"]) == b"caf\xe9-\xc3\xa9"

    monkeypatch.setenv("COLDKEEP_CACHE_DIR", str(tmp_path / "cache"))
    repo = Repository.init(LocalBackend(tmp_path / "repo"))
    src = tmp_path / "src"
    src.mkdir()
    for i in range(300):
        (src / f"f{i:03d}-é").write_text(str(i))
    first = Backup(repo).run([src], base=src).snapshot
    with open(os.path.join(os.fsencode(src), b"new-\xff"), "wb") as f:
        f.write(b"x")
    second = Backup(repo).run([src], base=src).snapshot
    assert len(first.tree) >= 10
    assert len(set(second.tree) - set(first.tree)) <= 2  # the blob that gained the entry


def test_a_top_level_symlink_to_a_directory_is_backed_up_as_that_directory(tmp_path: Path) -> None:
    site = Site(tmp_path / "site")
    site.ok("repo", "init")
    real = tmp_path / "real-data"
    (real / "nested").mkdir(parents=True)
    (real / "a.txt").write_text("a\n")
    (real / "nested" / "b.bin").write_bytes(os.urandom(5000))
    (real / "sub-link").symlink_to("nested")  # a symlink below the top level stays a symlink
    (tmp_path / "src").mkdir()
    link = tmp_path / "src" / "data"
    link.symlink_to("../real-data")

    out = site.json("backup", str(link))
    assert out["files"] == 2 and out["dirs"] == 2
    assert len(out["notes"]) == 1 and str(link) in out["notes"][0] and str(real) in out["notes"][0]
    human = site.ok("backup", str(link))
    assert f"note: {link} is a symlink to the directory {real}" in " ".join(human.stderr.split())

    target = tmp_path / "out"
    site.ok("restore", "latest", "--target", str(target))
    restored = target / str(link).lstrip("/")
    assert restored.is_dir() and not restored.is_symlink()
    assert (restored / "a.txt").read_text() == "a\n"
    assert (restored / "nested" / "b.bin").read_bytes() == (real / "nested" / "b.bin").read_bytes()
    assert (restored / "sub-link").is_symlink() and os.readlink(restored / "sub-link") == "nested"
    assert link.is_symlink() and (real / "a.txt").read_text() == "a\n"  # the live data untouched


def test_a_path_inside_another_named_path_is_stored_once(tmp_path: Path) -> None:
    site = Site(tmp_path / "site")
    site.ok("repo", "init")
    data = tmp_path / "d"
    (data / "sub").mkdir(parents=True)
    (data / "a.txt").write_text("a\n")
    (data / "sub" / "b.bin").write_bytes(os.urandom(5000))

    out = site.json("backup", str(data / "sub"), str(data), str(data))
    assert out["files"] == 2 and out["dirs"] == 2, out  # not 3 files: sub/ once
    assert any(f"{data / 'sub'} is inside {data}" in n for n in out["notes"]), out["notes"]
    assert any("named twice" in n for n in out["notes"]), out["notes"]
    snap = site.json("snapshots")[-1]
    assert snap["paths"] == [str(data)]
    target = tmp_path / "out"
    site.ok("restore", "latest", "--target", str(target), "--relative")
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == ["a.txt", "sub", "sub/b.bin"]
