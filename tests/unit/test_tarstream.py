"""The streaming tar reader of ``pg backup`` against archives written by GNU ``tar`` (ustar, GNU
and pax formats: long names, long link targets, empty files, directories, symlinks), read through
a reader that returns odd-sized pieces like a pipe does; and damaged streams (truncated, a
corrupted header), which must raise a named error and leave no snapshot behind."""

from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from tests.helpers import need

from coldkeep.postgres.basebackup import read_backup_stream
from coldkeep.postgres.tarstream import TarFormatError, TarReader, TarTruncated
from coldkeep.repository.chunker import ChunkerParams
from coldkeep.repository.repository import Repository
from coldkeep.storage.local import LocalBackend


@pytest.fixture(autouse=True)
def _gnu_tar() -> None:
    need(shutil.which("tar"), "needs GNU tar (make sysdeps installs it)")


LONG_DIR = "d" * 60 + "/" + "e" * 70
LONG_FILE = f"{LONG_DIR}/{'f' * 90}.dat"  # > 100 (GNU/pax) and > 155 + 100 split rules for ustar


class Pieces(io.RawIOBase):
    """A raw reader returning at most a random number of bytes per call (a pipe does that)."""

    def __init__(self, data: bytes, seed: int = 0, max_piece: int = 70_000) -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.rng = random.Random(seed)
        self.max_piece = max_piece

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self.rng.randint(1, self.max_piece), len(self.data) - self.pos)
        buffer[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n


def _tree(root: Path) -> dict[str, bytes | str | None]:
    """Sample content: name -> bytes (file), str (symlink target), None (directory)."""
    rng = random.Random(7)
    want: dict[str, bytes | str | None] = {
        "base": None,
        "base/1": None,
        "base/1/1259": rng.randbytes(3 * 1024 * 1024 + 8192),  # pages, spans several buffers
        "base/1/1259_fsm": rng.randbytes(24576),
        "global": None,
        "global/pg_control": rng.randbytes(8192),
        "empty": b"",
        "odd": rng.randbytes(513),
        "PG_VERSION": b"15\n",
        "d" * 60: None,
        LONG_DIR: None,
        LONG_FILE: rng.randbytes(100_001),
        "link": "base/1/1259",
        "longlink": "x/" + "t" * 150,
        "emptydir": None,
    }
    for name, value in want.items():
        path = root / name
        if value is None:
            path.mkdir(parents=True, exist_ok=True)
        elif isinstance(value, str):
            path.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(value, path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(value)
    return want


def _archive(tmp_path: Path, fmt: str) -> tuple[bytes, dict[str, bytes | str | None]]:
    src = tmp_path / "src"
    want = _tree(src)
    out = subprocess.run(["tar", f"--format={fmt}", "-C", str(src), "-cf", "-", "."],
                         check=True, capture_output=True).stdout  # fmt: skip
    return out, want


def _read_all(reader: TarReader) -> dict[str, bytes | str | None]:
    got: dict[str, bytes | str | None] = {}
    for member in reader:
        name = member.name.removeprefix("./").rstrip("/")
        if not name or name == ".":
            continue
        if member.isdir():
            got[name] = None
        elif member.issym():
            got[name] = member.linkname
        else:
            assert member.isfile(), member
            if name == "odd":
                got[name] = reader.read(100) + reader.read()  # two reads
            elif name.endswith("1259"):
                continue  # left unread: the reader must skip it
            else:
                got[name] = reader.read()
    return got


@pytest.mark.parametrize("fmt", ["gnu", "pax", "posix", "oldgnu"])
@pytest.mark.parametrize("max_piece", [1, 511, 70_000, 4 * 1024 * 1024])
def test_reads_tar_written_archives(tmp_path: Path, fmt: str, max_piece: int) -> None:
    data, want = _archive(tmp_path, fmt)
    if max_piece == 1:
        data_reader = Pieces(data, max_piece=4096)  # 1..4096-byte pieces
    else:
        data_reader = Pieces(data, seed=max_piece, max_piece=max_piece)
    got = _read_all(TarReader(data_reader, buffer_size=64 * 1024))
    expected = {k: v for k, v in want.items() if not k.endswith("1259")}
    assert got == expected


def test_ustar_prefix_names(tmp_path: Path) -> None:
    src = tmp_path / "src"
    long_dir = src / ("p" * 80) / ("q" * 60)
    long_dir.mkdir(parents=True)
    (long_dir / "file").write_bytes(b"hello")
    data = subprocess.run(["tar", "--format=ustar", "-C", str(src), "-cf", "-", "."],
                          check=True, capture_output=True).stdout  # fmt: skip
    reader = TarReader(Pieces(data))
    names = {m.name.removeprefix("./"): (reader.read() if m.isfile() else None) for m in reader}
    assert names[f"{'p' * 80}/{'q' * 60}/file"] == b"hello"


def test_pax_overrides_and_mtime(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x" * 10)
    os.utime(src / "f", (1_700_000_000.5, 1_700_000_000.5))
    data = subprocess.run(["tar", "--format=pax", "-C", str(src), "-cf", "-", "f"],
                          check=True, capture_output=True).stdout  # fmt: skip
    members = list(TarReader(io.BytesIO(data)))
    assert [(m.name, m.size, m.mtime) for m in members] == [("f", 10, 1_700_000_000)]


def test_truncated_streams_raise_a_named_error(tmp_path: Path) -> None:
    data, _ = _archive(tmp_path, "gnu")
    rng = random.Random(3)
    cuts = [0, 100, 512, 1000, len(data) // 2, len(data) - 1024 * 10 - 1] + [
        rng.randrange(1, len(data) - 10240) for _ in range(20)
    ]
    for cut in cuts:
        reader = TarReader(Pieces(data[:cut], seed=cut), buffer_size=64 * 1024)
        with pytest.raises(TarTruncated) as info:
            for m in reader:
                if m.isfile() and cut % 2:
                    reader.read()  # read half of the time, skip (unread data) the other half
        assert "ended" in info.value.message


def test_missing_end_marker_is_truncation(tmp_path: Path) -> None:
    data, _ = _archive(tmp_path, "gnu")
    end = len(data.rstrip(b"\0"))
    end += -end % 512
    with pytest.raises(TarTruncated, match="end-of-archive"):
        list(TarReader(io.BytesIO(data[:end])))


def test_corrupt_header_is_a_format_error(tmp_path: Path) -> None:
    data, _ = _archive(tmp_path, "gnu")
    damaged = bytearray(data)
    damaged[3] ^= 0x01  # the first member's name: its header checksum no longer matches
    with pytest.raises(TarFormatError, match="checksum"):
        list(TarReader(io.BytesIO(bytes(damaged))))


def test_base256_size() -> None:
    from coldkeep.postgres.tarstream import _number

    assert _number(b"\x80" + (9 * 1024**3).to_bytes(11, "big"), "size") == 9 * 1024**3
    assert _number(b"00000001750\0", "size") == 0o1750


# -- through the backup pipeline --------------------------------------------------------------------


def _repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Repository:
    monkeypatch.setenv("COLDKEEP_CACHE_DIR", str(tmp_path / "cache"))
    return Repository.init(LocalBackend(tmp_path / "repo"), chunker=ChunkerParams(page_chunk=128 * 1024))


def test_backup_stream_chunks_and_hashes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, want = _archive(tmp_path, "gnu")
    repo = _repo(tmp_path, monkeypatch)
    writer = repo.writer()
    stream = read_backup_stream(Pieces(data, seed=11), writer, repo.config.chunker, threads=2)
    writer.finish()
    files = {e["path"]: e for e, _, _ in stream.pending if e["type"] == "file"}
    for name, value in want.items():
        if isinstance(value, bytes):
            entry = files[name]
            assert entry["size"] == len(value)
            assert entry["sha256"] == hashlib.sha256(value).hexdigest()
            restored = b"".join(repo.read_blob(bytes.fromhex(c)) for c in entry["chunks"])
            assert restored == value
    # relation files are cut into page chunks
    assert len(files["base/1/1259"]["chunks"]) == (3 * 1024 * 1024 + 8192 + 128 * 1024 - 1) // (128 * 1024)
    links = {e["path"]: e["target"] for e, _, _ in stream.pending if e["type"] == "symlink"}
    assert links == {"link": "base/1/1259", "longlink": want["longlink"]}
    repo.close()


def test_truncated_backup_stream_records_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, _ = _archive(tmp_path, "gnu")
    repo = _repo(tmp_path, monkeypatch)
    writer = repo.writer()
    with pytest.raises(TarTruncated):
        try:
            read_backup_stream(Pieces(data[: len(data) // 2]), writer, repo.config.chunker, threads=2)
        except BaseException:
            writer.abort()
            raise
    assert repo.list_snapshots() == []
    assert list(repo.backend.list("index/")) == []
    repo.close()
