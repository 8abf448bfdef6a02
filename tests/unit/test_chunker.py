"""Tests for coldkeep.repository.chunker: exact coverage, size bounds, stream/buffer equivalence,
deduplication per strategy (CDC, safetensors, PostgreSQL pages) and fallback on bad input."""

from __future__ import annotations

import json
import mmap
import os
import random
import struct
from collections.abc import Iterable
from pathlib import Path

import blake3
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyfastcdc import FastCDC
from pyfastcdc.py import FastCDC as PurePythonFastCDC
from safetensors.numpy import save as save_safetensors

from coldkeep.errors import ConfigError
from coldkeep.repository import fileread
from coldkeep.repository.chunker import (
    CDC_ACCELERATED,
    NORMALIZED_CHUNKING,
    ChunkerParams,
    StreamChunker,
    chunk_buffer,
    chunk_file,
    safetensors_ranges,
    strategy_for,
)

MiB = 1024 * 1024
DEFAULT = ChunkerParams()
#: 1 MiB page chunks (the default before 128 KiB), for tests whose sizes are written for them
MIB_PAGES = ChunkerParams(page_chunk=1024 * 1024)
# small sizes so that property tests see many chunks in little data
SMALL = ChunkerParams(min_size=512, avg_size=2048, max_size=8192, page_chunk=8192)


def rand(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def lengths(ranges: Iterable[tuple[int, int]]) -> list[int]:
    return [n for _, n in ranges]


def assert_covers(ranges: list[tuple[int, int]], size: int, params: ChunkerParams = DEFAULT) -> None:
    pos = 0
    for offset, length in ranges:
        assert offset == pos
        assert 0 < length <= params.max_size
        pos += length
    assert pos == size


def digests(buf: bytes, ranges: Iterable[tuple[int, int]]) -> list[bytes]:
    return [blake3.blake3(buf[o : o + n]).digest() for o, n in ranges]


def stream_chunks(data: bytes, strategy: str, params: ChunkerParams, pieces: Iterable[int]) -> list[bytes]:
    sc = StreamChunker(strategy, params)  # type: ignore[arg-type]
    window = params.max_size if strategy == "cdc" else params.page_chunk
    out: list[bytes] = []
    pos = 0
    for n in pieces:
        out += sc.feed(data[pos : pos + n])
        pos += n
        assert sc.buffered == min(pos, len(data)) - sc.offset
        assert sc.buffered < 4 * window  # memory stays bounded
    out += sc.feed(data[pos:])
    out += sc.finish()
    return out


# --- parameters -----------------------------------------------------------------------------------


def test_defaults_and_the_fast_path() -> None:
    assert (DEFAULT.min_size, DEFAULT.avg_size, DEFAULT.max_size, DEFAULT.page_chunk, DEFAULT.seed) == (
        256 * 1024,
        MiB,
        4 * MiB,
        128 * 1024,
        0,
    )
    assert NORMALIZED_CHUNKING == 1
    assert CDC_ACCELERATED, "pyfastcdc's Cython extension is not in use"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_size": 32},
        {"min_size": 1001},  # odd
        {"min_size": 2 * MiB},  # > pyfastcdc's 1 MiB
        {"avg_size": 128},
        {"max_size": 32 * MiB},
        {"min_size": 1 * MiB, "avg_size": 512 * 1024},  # min > avg
        {"max_size": 512 * 1024},  # avg > max
        {"page_chunk": 4096},
        {"page_chunk": 8 * MiB},  # > max_size
        {"page_chunk": 0},
        {"seed": -1},
        {"seed": 1 << 63},
        {"avg_size": 1.5 * MiB},
        {"min_size": True},
    ],
)
def test_invalid_params_raise_config_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as info:
        ChunkerParams(**kwargs)  # type: ignore[arg-type]
    assert "invalid chunker parameters" in info.value.message
    assert "\n" not in info.value.message


def test_params_round_trip() -> None:
    p = ChunkerParams(
        min_size=128 * 1024, avg_size=512 * 1024, max_size=2 * MiB, page_chunk=256 * 1024, seed=7
    )
    assert ChunkerParams.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    old = {k: v for k, v in DEFAULT.to_dict().items() if k != "seed"}
    assert ChunkerParams.from_dict(old) == DEFAULT
    with pytest.raises(ConfigError, match="unknown"):
        ChunkerParams.from_dict({**DEFAULT.to_dict(), "window": 64})
    with pytest.raises(ConfigError, match="missing"):
        ChunkerParams.from_dict({"min_size": 256 * 1024})


# --- strategy selection ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/models/llama/model-00001-of-00002.safetensors", "safetensors"),
        ("ckpt/MODEL.SafeTensors", "safetensors"),
        ("model.safetensors.index.json", "cdc"),
        ("/var/lib/postgresql/15/main/base/16384/16385", "pages"),
        ("/var/lib/postgresql/15/main/base/16384/16385.3", "pages"),
        ("base/16384/16385_fsm", "pages"),
        ("./base/1/1259_vm", "pages"),
        ("base/16384/16385_init", "pages"),
        ("base/16384/16385_vm.1", "pages"),
        ("/pgdata/global/1262", "pages"),
        ("global/pg_control", "cdc"),
        ("global/pg_filenode.map", "cdc"),
        ("base/16384/PG_VERSION", "cdc"),
        ("base/16384/pg_internal.init", "cdc"),
        ("base/16384/t3_16390", "cdc"),  # temporary relation
        ("base/pgsql_tmp/pgsql_tmp123.0", "cdc"),
        ("pg_tblspc/16400/PG_15_202209061/16384/16401", "pages"),
        ("/mnt/fast/PG_15_202209061/16384/16401.2", "pages"),  # tablespace reached directly
        ("pg_wal/000000010000000000000001", "cdc"),
        ("pg_xact/0000", "cdc"),
        ("data/base/train/12345", "cdc"),  # "base" but not <dboid>/<relfilenode>
        ("16385", "cdc"),
        ("base/16384/16385.tmp", "cdc"),
        ("", "cdc"),
    ],
)
def test_strategy_for(path: str, expected: str) -> None:
    assert strategy_for(path) == expected
    assert strategy_for(Path(path)) == expected


# --- content-defined chunking ---------------------------------------------------------------------


def test_cdc_golden_boundaries() -> None:
    """Boundaries are effectively part of the repository format: a pyfastcdc upgrade or a parameter
    change that moves them would make every existing chunk miss once.  This pins them."""
    data = blake3.blake3(b"coldkeep chunker golden").digest(length=16 * MiB)
    ranges = chunk_buffer(data, "cdc", DEFAULT)
    assert ranges.strategy == "cdc" and not ranges.fallback
    assert lengths(ranges) == [
        1209053, 314744, 1117981, 1309177, 898705, 1632865, 1156557, 1597183,
        442886, 1159763, 1253448, 1057631, 603646, 1294648, 1453239, 275690,
    ]  # fmt: skip
    seeded = lengths(chunk_buffer(data, "cdc", ChunkerParams(seed=12345)))
    assert seeded[:4] == [1200309, 511553, 1162792, 534491]
    assert sum(seeded) == len(data)


@pytest.mark.parametrize("seed", [0, 987654321])
def test_pure_python_pyfastcdc_finds_the_same_boundaries(seed: int) -> None:
    """The boundaries do not depend on whether pyfastcdc's compiled extension is available."""
    params = ChunkerParams(min_size=1024, avg_size=4096, max_size=16384, page_chunk=16384, seed=seed)
    data = rand(300_000, seed=3)
    slow = PurePythonFastCDC(4096, min_size=1024, max_size=16384, normalized_chunking=1, seed=seed)
    assert [(c.offset, c.length) for c in slow.cut_buf(data)] == list(chunk_buffer(data, "cdc", params))


def test_cdc_size_bounds_on_random_and_constant_data() -> None:
    data = rand(20 * MiB)
    ranges = list(chunk_buffer(data, "cdc", DEFAULT))
    assert_covers(ranges, len(data))
    assert all(n >= DEFAULT.min_size for n in lengths(ranges)[:-1])
    mean = len(data) / len(ranges)
    assert 0.75 * MiB < mean < 2 * MiB
    zeros = bytes(10 * MiB)  # no cut point ever matches: every chunk is max_size
    z = list(chunk_buffer(zeros, "cdc", DEFAULT))
    assert_covers(z, len(zeros))
    assert lengths(z)[:-1] == [DEFAULT.max_size] * (len(z) - 1)


def test_cdc_insertion_at_start_keeps_most_chunks() -> None:
    data = rand(20 * MiB, seed=1)
    shifted = b"coldkeep inserted these bytes" * 7 + data
    a = digests(data, chunk_buffer(data, "cdc", DEFAULT))
    b_ranges = list(chunk_buffer(shifted, "cdc", DEFAULT))
    known = set(a)
    reused = sum(n for d, (_, n) in zip(digests(shifted, b_ranges), b_ranges, strict=True) if d in known)
    assert reused / len(shifted) > 0.85
    # only the chunks touching the insertion differ
    assert sum(1 for d in digests(shifted, b_ranges) if d not in known) <= 2


def test_chunk_buffer_accepts_bytes_memoryview_mmap_and_numpy(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).standard_normal(3 * MiB // 2).astype(np.float16)  # 3 MiB
    raw = arr.tobytes()
    expected = list(chunk_buffer(raw, "cdc", DEFAULT))
    assert list(chunk_buffer(memoryview(raw), "cdc", DEFAULT)) == expected
    assert list(chunk_buffer(arr.data, "cdc", DEFAULT)) == expected  # format "e" is cast to bytes
    f = tmp_path / "raw"
    f.write_bytes(raw)
    with f.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        ranges = chunk_buffer(mm, "cdc", DEFAULT)
        assert list(ranges) == expected
        ranges.close()
    with pytest.raises(ValueError, match="unknown chunking strategy"):
        chunk_buffer(raw, "fixed", DEFAULT)  # type: ignore[arg-type]
    assert list(chunk_buffer(b"", "cdc", DEFAULT)) == []
    assert list(chunk_buffer(b"", "pages", DEFAULT)) == []
    assert list(chunk_buffer(b"", "safetensors", DEFAULT)) == []


# --- streams ---------------------------------------------------------------------------------------


def make_data(kind: str, n: int, seed: int) -> bytes:
    if kind == "random":
        return rand(n, seed)
    if kind == "zeros":
        return bytes(n)
    # low entropy: a short random pattern repeated, with random runs of zeros spliced in
    r = random.Random(seed)
    pattern = r.randbytes(r.randint(1, 300))
    out = bytearray()
    while len(out) < n:
        out += pattern * r.randint(1, 40) if r.random() < 0.7 else bytes(r.randint(1, 20_000))
    return bytes(out[:n])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["random", "zeros", "patterned"]),
    size=st.integers(0, 120_000),
    seed=st.integers(0, 2**32),
    pieces=st.lists(st.integers(0, 20_000), max_size=40),
    strategy=st.sampled_from(["cdc", "pages"]),
)
def test_stream_chunker_matches_chunk_buffer(
    kind: str, size: int, seed: int, pieces: list[int], strategy: str
) -> None:
    data = make_data(kind, size, seed)
    expected = [data[o : o + n] for o, n in chunk_buffer(data, strategy, SMALL)]  # type: ignore[arg-type]
    got = stream_chunks(data, strategy, SMALL, pieces)
    assert got == expected
    assert b"".join(got) == data
    assert all(0 < len(c) <= SMALL.max_size for c in got)
    if strategy == "cdc":
        assert all(len(c) >= SMALL.min_size for c in got[:-1])
    else:
        assert all(len(c) == SMALL.page_chunk for c in got[:-1])


def test_stream_chunker_with_default_params_and_odd_pieces() -> None:
    data = rand(13 * MiB + 12345, seed=9)
    pieces = [1, 65536, 4 * MiB - 1, 3, 5 * MiB + 7, 1000]
    got = stream_chunks(data, "cdc", DEFAULT, pieces)
    assert [len(c) for c in got] == lengths(chunk_buffer(data, "cdc", DEFAULT))
    assert b"".join(got) == data


def test_stream_chunker_lifecycle() -> None:
    sc = StreamChunker("pages", MIB_PAGES)
    assert sc.feed(b"x" * (2 * MiB)) == []  # chunks are cut when the 4-window buffer fills
    assert sc.feed(b"x" * (2 * MiB + 5)) == [b"x" * MiB] * 4
    assert sc.buffered == 5 and sc.offset == 4 * MiB
    assert sc.finish() == [b"xxxxx"]
    assert sc.finish() == []
    with pytest.raises(ValueError, match="after finish"):
        sc.feed(b"more")
    assert StreamChunker("cdc", DEFAULT).finish() == []
    with pytest.raises(ValueError):
        StreamChunker("safetensors", DEFAULT)  # type: ignore[arg-type]


# --- PostgreSQL pages ------------------------------------------------------------------------------


def test_pages_one_changed_page_changes_one_chunk(tmp_path: Path) -> None:
    rel = tmp_path / "base" / "16384" / "16385"
    rel.parent.mkdir(parents=True)
    data = bytearray(rand(10 * MiB, seed=4))
    rel.write_bytes(data)
    with chunk_file(rel, "auto", MIB_PAGES) as chunks:
        assert chunks.strategy == "pages"
        before = [blake3.blake3(v).digest() for v in chunks]
    assert len(before) == 10
    page = 700  # page 700 lives in chunk 700 // 128 = 5
    data[page * 8192 : (page + 1) * 8192] = rand(8192, seed=5)
    rel.write_bytes(data)
    with chunk_file(rel, "auto", MIB_PAGES) as chunks:
        after = [blake3.blake3(v).digest() for v in chunks]
    assert [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b] == [5]


def test_pages_file_truncated_while_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        fileread, "READ_WINDOW", MiB
    )  # one read per chunk: the truncation lands between reads
    rel = tmp_path / "global" / "1262"
    rel.parent.mkdir()
    rel.write_bytes(rand(5 * MiB, seed=6))
    with chunk_file(rel, "auto", MIB_PAGES) as chunks:
        first = next(chunks)
        os.truncate(rel, 2 * MiB + 8192)  # VACUUM truncating the relation under a hot backup
        rest = list(chunks)
        assert chunks.size == 5 * MiB
        assert chunks.bytes_yielded == 2 * MiB + 8192
    assert len(first) == MiB and [len(v) for v in rest] == [MiB, 8192]


# --- safetensors -----------------------------------------------------------------------------------

SHAPES = {
    "embed.weight": (1024, 2048),  # 4 MiB: one chunk (== max_size)
    "layers.0.attn.weight": (1536, 1536),  # 4.5 MiB: CDC inside the tensor
    "layers.0.mlp.weight": (512, 1024),
    "layers.0.norm.bias": (1024,),
    "layers.1.attn.weight": (1536, 1536),
    "layers.1.mlp.weight": (512, 1024),
    "layers.1.norm.bias": (1024,),
    "lm_head.weight": (3000,),
}


def tensors(seed: int, shapes: dict[str, tuple[int, ...]] = SHAPES) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        name: rng.standard_normal(shape, dtype=np.float32).astype(np.float16)
        for name, shape in shapes.items()
    }


def chunk_map(buf: bytes, params: ChunkerParams = DEFAULT) -> tuple[list[tuple[int, int]], list[bytes]]:
    ranges = chunk_buffer(buf, "safetensors", params)
    assert ranges.strategy == "safetensors" and ranges.fallback_reason is None
    out = list(ranges)
    assert_covers(out, len(buf), params)
    return out, digests(buf, out)


def tensor_digests(buf: bytes, ranges: list[tuple[int, int]], name: str) -> list[bytes]:
    (header_len,) = struct.unpack_from("<Q", buf)
    begin, end = json.loads(buf[8 : 8 + header_len])[name]["data_offsets"]
    begin, end = begin + 8 + header_len, end + 8 + header_len
    inside = [(o, n) for o, n in ranges if begin <= o < end]
    assert inside and inside[0][0] == begin and sum(n for _, n in inside) == end - begin  # exact cover
    return digests(buf, inside)


def test_safetensors_unchanged_tensors_dedupe() -> None:
    old_t = tensors(seed=1)
    new_t = dict(old_t)
    changed = ["layers.0.attn.weight", "layers.0.norm.bias", "layers.1.mlp.weight", "lm_head.weight"]
    fresh = tensors(seed=2)
    for name in changed:
        new_t[name] = fresh[name]
    old, new = save_safetensors(old_t), save_safetensors(new_t)
    old_ranges, old_d = chunk_map(old)
    new_ranges, new_d = chunk_map(new)
    assert old_d[0] == new_d[0]  # same names, dtypes and shapes: same header
    assert old_ranges[0] == (0, 8 + struct.unpack_from("<Q", old)[0])
    assert lengths(chunk_buffer(old, "safetensors", DEFAULT)).count(4 * MiB) == 1  # embed.weight, whole
    for name in SHAPES:
        a, b = tensor_digests(old, old_ranges, name), tensor_digests(new, new_ranges, name)
        if name in changed:
            assert not set(a) & set(b), name
        else:
            assert a == b, name
    assert len(tensor_digests(old, old_ranges, "layers.0.attn.weight")) > 1  # split inside the tensor


def test_safetensors_changed_header_moves_offsets_but_tensors_still_dedupe() -> None:
    """A reshaped tensor changes the header and every later offset; plain CDC would still
    resynchronise, but only per-tensor chunking keeps every other tensor's chunks identical."""
    old_t = tensors(seed=1)
    shapes = dict(SHAPES, **{"layers.0.mlp.weight": (512, 1000)})
    new_t = dict(old_t, **{"layers.0.mlp.weight": tensors(3, shapes)["layers.0.mlp.weight"]})
    new_t["extra.scale"] = np.ones((7,), dtype=np.float16)
    old, new = (
        save_safetensors(old_t, metadata={"step": "100"}),
        save_safetensors(new_t, metadata={"step": "200"}),
    )
    old_ranges, old_d = chunk_map(old)
    new_ranges, new_d = chunk_map(new)
    assert old_d[0] != new_d[0]
    for name in SHAPES:
        if name != "layers.0.mlp.weight":
            assert tensor_digests(old, old_ranges, name) == tensor_digests(new, new_ranges, name), name


def safetensors_bytes(header: dict[str, object] | bytes, data: bytes) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def test_safetensors_gaps_and_trailing_bytes_are_chunks_of_their_own() -> None:
    header = {
        "__metadata__": {"format": "np"},
        "b": {"dtype": "F16", "shape": [100], "data_offsets": [300, 500]},
        "a": {"dtype": "F16", "shape": [50], "data_offsets": [0, 100]},
        "empty": {"dtype": "F16", "shape": [0], "data_offsets": [100, 100]},
    }
    buf = safetensors_bytes(header, rand(650))
    h = len(buf) - 650
    ranges = chunk_buffer(buf, "safetensors", SMALL)
    assert list(ranges) == [(0, h), (h, 100), (h + 100, 200), (h + 300, 200), (h + 500, 150)]
    assert safetensors_ranges(buf) == [
        (0, h),
        (h, h + 100),
        (h + 100, h + 300),
        (h + 300, h + 500),
        (h + 500, h + 650),
    ]


def test_safetensors_big_gap_and_big_header_respect_max_size() -> None:
    header: dict[str, object] = {
        f"t{i}": {"dtype": "U8", "shape": [1], "data_offsets": [i, i + 1]} for i in range(600)
    }
    header["big"] = {"dtype": "U8", "shape": [9000], "data_offsets": [30_000, 39_000]}
    buf = safetensors_bytes(header, rand(40_000))
    assert len(buf) - 40_000 > SMALL.max_size  # the header itself is cut with CDC
    ranges = chunk_buffer(buf, "safetensors", SMALL)
    assert ranges.strategy == "safetensors"
    out = list(ranges)
    assert_covers(out, len(buf), SMALL)


BAD_HEADERS = [
    pytest.param(b"", id="empty"),
    pytest.param(b"\x05\x00\x00", id="short"),
    pytest.param(struct.pack("<Q", 2**63) + b"{}", id="huge-length"),
    pytest.param(struct.pack("<Q", 1000) + b"{}", id="length-past-end"),
    pytest.param(safetensors_bytes(b"", b"x" * 10), id="zero-length-header"),
    pytest.param(safetensors_bytes(b"{not json", b"x" * 10), id="not-json"),
    pytest.param(safetensors_bytes(b'{"a": "\xff\xfe"}', b"x" * 10), id="not-utf8"),
    pytest.param(safetensors_bytes(b"[1, 2]", b"x" * 10), id="array"),
    pytest.param(safetensors_bytes(b"{" + b'"a":{' * 5000 + b"}" * 5001, b"x"), id="deep-nesting"),
    pytest.param(safetensors_bytes({"a": [0, 4]}, b"x" * 10), id="entry-not-object"),
    pytest.param(safetensors_bytes({"a": {"dtype": "F16"}}, b"x" * 10), id="no-offsets"),
    pytest.param(safetensors_bytes({"a": {"data_offsets": [0, 4.0]}}, b"x" * 10), id="float-offset"),
    pytest.param(safetensors_bytes({"a": {"data_offsets": [False, 4]}}, b"x" * 10), id="bool-offset"),
    pytest.param(safetensors_bytes({"a": {"data_offsets": [0, 1, 2]}}, b"x" * 10), id="three-offsets"),
    pytest.param(safetensors_bytes({"a": {"data_offsets": [4, 2]}}, b"x" * 10), id="reversed"),
    pytest.param(safetensors_bytes({"a": {"data_offsets": [-2, 2]}}, b"x" * 10), id="negative"),
    pytest.param(safetensors_bytes({"a": {"data_offsets": [0, 11]}}, b"x" * 10), id="past-end"),
    pytest.param(
        safetensors_bytes({"a": {"data_offsets": [0, 6]}, "b\n": {"data_offsets": [4, 10]}}, b"x" * 10),
        id="overlap",
    ),
]


@pytest.mark.parametrize("buf", BAD_HEADERS)
def test_bad_safetensors_falls_back_to_cdc(buf: bytes, tmp_path: Path) -> None:
    ranges = chunk_buffer(buf, "safetensors", SMALL)
    assert ranges.strategy == "cdc" and ranges.fallback
    assert ranges.fallback_reason and "\n" not in ranges.fallback_reason and len(ranges.fallback_reason) < 300
    out = list(ranges)
    assert_covers(out, len(buf), SMALL)
    assert out == list(chunk_buffer(buf, "cdc", SMALL))
    auto = chunk_buffer(buf, "auto", SMALL)  # sniffing quietly decides it is not safetensors
    assert auto.strategy == "cdc" and auto.fallback_reason is None
    f = tmp_path / "broken.safetensors"
    f.write_bytes(buf)
    with chunk_file(f, params=SMALL) as chunks:
        assert b"".join(chunks) == buf
        if buf:  # an empty file has no chunks and nothing to fall back from
            assert chunks.strategy == "cdc" and chunks.fallback_reason is not None


def test_fallback_on_a_real_file_with_a_corrupted_header() -> None:
    good = save_safetensors(tensors(seed=1))
    (n,) = struct.unpack_from("<Q", good)
    bad = good[: 8 + n // 2] + b"\x00" + good[8 + n // 2 + 1 :]
    ranges = chunk_buffer(bad, "safetensors", DEFAULT)
    assert ranges.fallback and "JSON" in (ranges.fallback_reason or "")
    assert_covers(list(ranges), len(bad))


@settings(max_examples=200, deadline=None)
@given(
    edits=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6),
    cut=st.integers(0, 5000),
)
def test_mutated_safetensors_never_raise(edits: list[tuple[int, int]], cut: int) -> None:
    base = bytearray(
        save_safetensors({"w": np.arange(1000, dtype=np.float16), "b": np.ones(600, dtype=np.float16)})
    )
    for pos, value in edits:
        if pos < len(base):
            base[pos] = value
    buf = bytes(base[: len(base) - cut])
    for strategy in ("safetensors", "auto"):
        assert_covers(list(chunk_buffer(buf, strategy, SMALL)), len(buf), SMALL)


# --- files ---------------------------------------------------------------------------------------


def test_chunk_file_views_cover_the_file_and_outlive_it(tmp_path: Path) -> None:
    f = tmp_path / "blob.bin"
    data = rand(9 * MiB, seed=8)
    f.write_bytes(data)
    with chunk_file(f, "cdc") as chunks:
        views = list(chunks)
        assert b"".join(views) == data
        assert [len(v) for v in views] == lengths(chunk_buffer(data, "cdc", DEFAULT))
        assert chunks.bytes_yielded == chunks.size == len(data)
    # closing while views are alive must neither fail nor invalidate them
    assert bytes(views[-1]) == data[-len(views[-1]) :]
    del views


@pytest.mark.parametrize("window", [MiB, 4 * MiB + 1, 6 * MiB, 64 * MiB])
def test_chunk_file_reads_in_windows_with_the_boundaries_of_the_whole_buffer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, window: int
) -> None:
    """Windows smaller than a chunk, a little over max_size, and bigger than the file: the cuts are
    those of chunk_buffer on the whole file, for CDC, for safetensors (header, tensors, CDC
    inside big tensors) and for pages."""
    monkeypatch.setattr(fileread, "READ_WINDOW", window)
    st_buf = save_safetensors(tensors(seed=3))
    cases = {
        "random.bin": (rand(21 * MiB + 77, seed=2), "cdc"),
        "model.safetensors": (st_buf, "safetensors"),
        "blobs/9e1d": (st_buf, "auto"),  # sniffed
        "base/1/1259": (rand(3 * MiB + 8192, seed=4), "pages"),
    }
    for name, (data, strategy) in cases.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        expected_strategy = "pages" if strategy == "pages" else "cdc" if strategy == "cdc" else "safetensors"
        with chunk_file(path, "auto", DEFAULT) as chunks:
            views = [bytes(v) for v in chunks]
            assert chunks.strategy == expected_strategy, name
        if strategy == "pages":
            expected = [
                min(DEFAULT.page_chunk, len(data) - o) for o in range(0, len(data), DEFAULT.page_chunk)
            ]
        else:
            expected = lengths(chunk_buffer(data, "safetensors" if strategy != "cdc" else "cdc", DEFAULT))
        assert [len(v) for v in views] == expected, name
        assert b"".join(views) == data, name


@settings(max_examples=150, deadline=None)
@given(
    size=st.integers(0, 120_000),
    window=st.integers(1, 40_000),
    zeros=st.lists(st.tuples(st.integers(0, 120_000), st.integers(1, 20_000)), max_size=3),
    seed=st.integers(0, 2**32),
)
def test_windowed_cuts_are_the_cuts_of_the_whole_file(
    size: int, window: int, zeros: list[tuple[int, int]], seed: int
) -> None:
    """Whatever the window size (smaller than a chunk, or anything else), and with runs of zeros
    that force cuts at max_size, reading in windows cuts where chunk_buffer cuts the whole file."""
    import tempfile

    data = bytearray(random.Random(seed).randbytes(size))
    for start, length in zeros:
        data[start : start + length] = bytes(len(data[start : start + length]))
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        mp.setattr(fileread, "READ_WINDOW", window)
        path = Path(tmp) / "f.bin"
        path.write_bytes(data)
        with chunk_file(path, "cdc", SMALL) as chunks:
            got = [len(v) for v in chunks]
    assert got == lengths(chunk_buffer(bytes(data), "cdc", SMALL))


def test_chunk_file_views_stay_valid_while_windows_are_recycled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A window's buffer is reused only once no view of it is left: views kept while later
    windows are read still hold their bytes, and dropped ones let buffers be reused."""
    monkeypatch.setattr(fileread, "READ_WINDOW", 4 * MiB + 4096)
    data = rand(48 * MiB, seed=11)
    f = tmp_path / "big.bin"
    f.write_bytes(data)
    kept: list[tuple[int, memoryview]] = []
    offset = 0
    with chunk_file(f, "cdc") as chunks:
        for i, view in enumerate(chunks):
            if i % 3 == 0:
                kept.append((offset, view))
            offset += len(view)
        del view
    assert offset == len(data)
    assert len(kept) > 5
    for start, view in kept:
        assert bytes(view) == data[start : start + len(view)]


def test_chunk_views_keep_the_bytes_read_when_the_file_is_rewritten_in_place(tmp_path: Path) -> None:
    """What was read is what is hashed and stored: rewriting the file afterwards (a mapped file
    would show the new bytes through the old views) changes nothing in the views."""
    f = tmp_path / "w.bin"
    data = rand(9 * MiB, seed=12)
    f.write_bytes(data)
    with chunk_file(f, "cdc") as chunks:
        first = next(chunks)
        with f.open("r+b") as w:
            w.write(bytes(len(first)))  # zeros over the first chunk, in place
        assert bytes(first) == data[: len(first)]
        rest = list(chunks)
    assert b"".join([first, *rest]) == data  # the file fits in one window: all of it was read at once


def test_chunk_file_truncated_while_read_yields_what_was_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file truncated between two reads (with mmap: SIGBUS) ends where it ended: the views
    hold exactly ``bytes_yielded`` bytes of it, and nothing raises."""
    monkeypatch.setattr(fileread, "READ_WINDOW", 4 * MiB)
    data = rand(20 * MiB, seed=13)
    for strategy in ("cdc", "pages"):
        f = tmp_path / f"t-{strategy}.bin"
        f.write_bytes(data)

        def truncate(path: str, offset: int, target: str = str(f)) -> None:
            if path == target and offset >= 8 * MiB:
                os.truncate(path, 1024)

        monkeypatch.setattr(fileread, "READ_HOOK", truncate)
        with chunk_file(f, strategy) as chunks:
            got = b"".join(bytes(v) for v in chunks)
            assert chunks.size == len(data)
            assert chunks.bytes_yielded == len(got)
        assert 4 * MiB <= len(got) < len(data) and got == data[: len(got)], strategy


def test_chunk_file_empty_and_missing(tmp_path: Path) -> None:
    empty = tmp_path / "empty.safetensors"
    empty.touch()
    chunks = chunk_file(empty)
    assert list(chunks) == [] and chunks.size == 0
    chunks.close()
    chunks.close()  # idempotent
    with pytest.raises(FileNotFoundError):
        chunk_file(tmp_path / "nope")  # at the call, not at the first next()


def test_chunk_file_auto_by_name_and_by_content(tmp_path: Path) -> None:
    buf = save_safetensors(tensors(seed=1))
    expected = list(chunk_buffer(buf, "safetensors", DEFAULT))
    named = tmp_path / "model.safetensors"
    blob = tmp_path / "blobs" / "4f1c0a"  # a Hugging Face cache blob: no extension
    blob.parent.mkdir()
    named.write_bytes(buf)
    blob.write_bytes(buf)
    for path in (named, blob):
        with chunk_file(path) as chunks:
            assert chunks.strategy == "safetensors" and chunks.fallback_reason is None
            assert [len(v) for v in chunks] == lengths(expected)
    with chunk_file(blob, "cdc") as chunks:  # an explicit strategy is obeyed
        assert chunks.strategy == "cdc"
        assert b"".join(chunks) == buf


def test_chunk_file_close_mid_iteration(tmp_path: Path) -> None:
    f = tmp_path / "x.bin"
    f.write_bytes(rand(6 * MiB))
    chunks = chunk_file(f)
    first = bytes(next(chunks))
    chunks.close()
    assert list(chunks) == []
    assert len(first) >= DEFAULT.min_size


@pytest.mark.parametrize("params", [SMALL, DEFAULT], ids=["small", "default"])
def test_buffers_up_to_min_size_are_one_chunk_as_fastcdc_cuts_them(params: ChunkerParams) -> None:
    """The short cut for small buffers (no FastCDC object per small file) gives FastCDC's own
    answer for every size up to and just past ``min_size``."""
    rng = random.Random(3)
    data = rng.randbytes(params.min_size + 2)
    for n in (0, 1, 2, 63, params.min_size // 2, params.min_size - 1, params.min_size, params.min_size + 1):
        expected = [(c.offset, c.length) for c in FastCDC(params.avg_size, min_size=params.min_size,
                    max_size=params.max_size, normalized_chunking=NORMALIZED_CHUNKING,
                    seed=params.seed).cut_buf(data[:n])]  # fmt: skip
        assert list(chunk_buffer(data[:n], "cdc", params)) == expected, n
        assert list(chunk_buffer(data[:n], "auto", params)) == expected, n
