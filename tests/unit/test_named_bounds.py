"""Named objects are decompressed within the size their header records (issue 11, item 16).

A crafted object, small as stored, whose payload decompresses to hundreds of MiB is refused with
an IntegrityError naming it, having decompressed no more than its header's size (measured with
tracemalloc: the old code read the whole stream into memory first).
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest
import zstandard

from coldkeep.errors import IntegrityError
from coldkeep.repository.format import FLAG_ZSTD, NAMED_PREFIX, add_footer, digest
from coldkeep.repository.repository import NAMED_MAX, Repository
from coldkeep.storage.local import LocalBackend

NAME = "wal/00000001/00000002.history"
MiB = 1024 * 1024


def crafted(recorded_size: int, zeros: int, data: bytes = b"1\t0/3000000\tno recovery target\n") -> bytes:
    """A named object as an attacker with write access to an unencrypted repository can make:
    header recording ``recorded_size``, then ``data`` and ``zeros`` zero bytes, zstd-compressed
    (streamed: the test never holds the decompressed payload either)."""
    header = json.dumps(
        {"name": NAME, "size": recorded_size, "blake3": digest(data).hex(), "meta": {}}
    ).encode()
    compressor = zstandard.ZstdCompressor(level=1).compressobj()
    parts = [compressor.compress(len(header).to_bytes(4, "little") + header + data)]
    block = bytes(MiB)
    for _ in range(zeros // MiB):
        parts.append(compressor.compress(block))
    parts.append(compressor.flush())
    return add_footer(bytes([FLAG_ZSTD]) + b"".join(parts))


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(LocalBackend(tmp_path / "repo"))


def test_a_small_object_that_decompresses_to_hundreds_of_mib_is_refused(repo: Repository) -> None:
    obj = crafted(recorded_size=31, zeros=384 * MiB)
    assert len(obj) < 1 * MiB  # small as stored
    repo.backend.put(NAMED_PREFIX + NAME, obj)
    tracemalloc.start()
    try:
        with pytest.raises(
            IntegrityError, match=f"named object {NAME}: holds more than the 31 bytes"
        ) as info:
            repo.get_named(NAME)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.exit_code == 3
    assert peak < 32 * MiB, f"decompressing took {peak / MiB:.0f} MiB"


def test_a_header_recording_an_absurd_size_is_refused(repo: Repository) -> None:
    repo.backend.put(NAMED_PREFIX + NAME, crafted(recorded_size=NAMED_MAX + 1, zeros=0))
    with pytest.raises(IntegrityError, match=f"named object {NAME}: bad header \\(size {NAMED_MAX + 1}"):
        repo.get_named(NAME)


def test_a_header_length_beyond_the_payload_is_refused(repo: Repository) -> None:
    payload = (10**6).to_bytes(4, "little") + b'{"size": 1}'
    repo.backend.put(NAMED_PREFIX + NAME, add_footer(bytes([FLAG_ZSTD]) + zstandard.compress(payload)))
    with pytest.raises(IntegrityError, match=f"named object {NAME}: shorter than its header records"):
        repo.get_named(NAME)


@pytest.mark.parametrize("size", [0, 1, 70_000, 3 * MiB + 7])
def test_genuine_objects_still_round_trip(repo: Repository, size: int) -> None:
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    assert repo.put_named(f"obj/{size}", data, {"k": size})
    meta, back = repo.get_named(f"obj/{size}")
    assert back == data and meta["size"] == size and meta["meta"] == {"k": size}
    assert repo.put_named(f"obj/{size}", data) is False  # identical: already there


def test_stream_named_yields_the_verified_bytes_in_pieces_and_refuses_what_get_named_refuses(
    repo: Repository,
) -> None:
    """``stream_named`` (the prefetcher's read: one reused buffer) gives the same bytes as
    ``get_named`` and fails, naming the object, on everything ``get_named`` fails on; a failure
    comes after pieces were passed on, which the caller discards."""
    from coldkeep.errors import NotFound
    from coldkeep.repository.named import put_named, stream_named

    data = bytes(range(256)) * (5 * 4096 + 7)  # ~5 MiB: several pieces, the last a short one
    put_named(repo, "wal/00000001/000000010000000000000007", data)
    pieces: list[bytes] = []
    meta = stream_named(
        repo, "wal/00000001/000000010000000000000007", lambda p: pieces.append(bytes(p)), piece=MiB
    )
    assert b"".join(pieces) == data and len(pieces) == 6 and meta["size"] == len(data)
    assert meta == repo.get_named("wal/00000001/000000010000000000000007")[0]
    with pytest.raises(NotFound):
        stream_named(repo, "wal/00000001/000000010000000000000008", lambda p: None)
    # more than the header records (bounded as get_named is)
    repo.backend.put(NAMED_PREFIX + NAME, crafted(recorded_size=31, zeros=8 * MiB))
    with pytest.raises(IntegrityError, match=f"named object {NAME}: holds more than the 31 bytes"):
        stream_named(repo, NAME, lambda p: None)
    # content that does not match the digest its header records
    repo.backend.put(NAMED_PREFIX + NAME, crafted(recorded_size=31 + MiB, zeros=MiB))
    with pytest.raises(IntegrityError, match="content does not match its checksum"):
        stream_named(repo, NAME, lambda p: None)
    # a flipped byte in the stored object: the footer names it before anything is passed on
    stored = bytearray(repo.backend.get(NAMED_PREFIX + "wal/00000001/000000010000000000000007"))
    stored[len(stored) // 2] ^= 0x01
    repo.backend.put(NAMED_PREFIX + "wal/00000001/000000010000000000000007", bytes(stored))
    got: list[bytes] = []
    with pytest.raises(IntegrityError, match="checksum mismatch"):
        stream_named(repo, "wal/00000001/000000010000000000000007", got.append)
    assert got == []
