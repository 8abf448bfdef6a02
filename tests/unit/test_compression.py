"""Blob compression: the level's full parameters for every input size, standard zstd frames."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest
import zstandard
from tests.helpers import need

from coldkeep.repository.format import FLAG_ZSTD, compress, decompress


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
