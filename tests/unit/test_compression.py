"""Blob compression: the level's full parameters for every input size, standard zstd frames."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import zstandard
from tests.helpers import need

from coldkeep.errors import IntegrityError
from coldkeep.repository.format import FLAG_PLANES, FLAG_RAW, FLAG_ZSTD, compress, decompress


def text(n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    words = [rng.randbytes(rng.randrange(2, 9)).hex() for _ in range(400)]
    return " ".join(rng.choice(words) for _ in range(n // 8)).encode()[:n]


@pytest.mark.parametrize("level", [-3, 1, 3, 9, 12])
def test_blobs_are_standard_zstd_frames_the_zstd_tool_reads(tmp_path: Path, level: int) -> None:
    need(shutil.which("zstd"), "needs the zstd command (make sysdeps installs it)")
    for size in (100, 50_000, 300_000):
        data = text(size, size)
        flag, payload = compress(data, level)
        if flag != FLAG_ZSTD:  # stored raw: compression saved less than 2 %
            assert size == 100 and payload == data
            continue
        assert zstandard.get_frame_parameters(payload).content_size == len(data)
        frame = tmp_path / f"b{size}.zst"
        frame.write_bytes(payload)
        out = subprocess.run(["zstd", "-dc", str(frame)], capture_output=True, check=True).stdout
        assert out == data
        assert decompress(flag, payload, len(data), "blob") == data


# -- byte planes (envelope flag 2, format version 2) ------------------------------------------------


def weights(n: int, seed: int, dtype: str = "float16") -> bytes:
    """``n`` bytes of half-precision weights like a checkpoint's (bfloat16: float32's high half)."""
    rng = np.random.default_rng(seed)
    values = (0.02 * rng.standard_normal(n // 2)).astype(np.float32)
    if dtype == "bfloat16":
        return (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    return values.astype("<f2").tobytes()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("cut", [0, 1], ids=["even", "odd"])
def test_half_precision_chunks_are_stored_as_byte_planes_smaller_than_zstd(dtype: str, cut: int) -> None:
    data = weights(1_200_000, 1, dtype)[cut:]  # CDC cuts tensors at any byte: odd starts and lengths
    plain_flag, plain = compress(data, 3)
    flag, payload = compress(data, 3, planes=True)
    assert plain_flag == FLAG_ZSTD and flag == FLAG_PLANES
    assert len(payload) < 0.97 * len(plain)  # the point of it (the benchmark's tensors: ~8 %)
    assert decompress(flag, payload, len(data), "blob") == data
    assert decompress(flag, payload, None, "blob") == data  # sizes from the planes themselves


def test_other_chunks_keep_plain_zstd_or_raw_with_planes_allowed() -> None:
    for data in (text(300_000, 7), os.urandom(300_000), weights(4_000, 3)):
        expected = compress(data, 3)
        assert compress(data, 3, planes=True) == expected  # text, random, small
        assert compress(data, 0, planes=True) == (FLAG_RAW, data)


def test_a_damaged_planes_payload_is_an_integrity_error_never_wrong_bytes() -> None:
    data = weights(600_000, 4)
    flag, payload = compress(data, 3, planes=True)
    assert flag == FLAG_PLANES
    for at in (0, 2, 4, 5, len(payload) // 3, len(payload) - 1):  # header, flags, zstd, raw plane
        damaged = bytearray(payload)
        damaged[at] ^= 0xFF
        try:
            out = decompress(flag, bytes(damaged), len(data), "blob 0123")
        except IntegrityError as exc:
            assert "blob 0123" in exc.message
            continue
        assert out != data  # a flipped raw byte decodes to other bytes: the chunk id check catches it
    with pytest.raises(IntegrityError, match="malformed byte planes"):
        decompress(flag, payload[:3], len(data), "blob")
    with pytest.raises(IntegrityError, match="different lengths"):
        decompress(flag, payload, len(data) + 2, "blob")
