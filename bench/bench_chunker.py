"""Micro-benchmark of coldkeep's chunker and of the hashes that follow it.

Data: 256 MiB of float16 weights (numpy random normal), the workload of checkpoint backups.
Prints one table (GB = 10**9 bytes, best of ``--repeat`` runs) and, with ``--json FILE``, writes
the numbers for docs/benchmarks.md.

    .venv/bin/python bench/bench_chunker.py [--mib 256] [--repeat 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import blake3
import numpy as np
import pyfastcdc
from pyfastcdc.py import FastCDC as PurePythonFastCDC
from safetensors.numpy import save as save_safetensors

from coldkeep.repository.chunker import (
    CDC_ACCELERATED,
    DEFAULT_PARAMS,
    StreamChunker,
    chunk_buffer,
    chunk_file,
)

MiB = 1024 * 1024


def best_of(repeat: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def weights(mib: int) -> np.ndarray:
    rng = np.random.default_rng(2024)
    return rng.standard_normal(mib * MiB // 2, dtype=np.float32).astype(np.float16)


def as_safetensors(arr: np.ndarray) -> bytes:
    """The same bytes laid out as a checkpoint: a few big tensors, many middling, many small."""
    n = arr.size
    sizes = [32 * MiB, 32 * MiB, 12 * MiB, 12 * MiB] + [3 * MiB] * 8 + [256 * 1024] * 60  # in elements
    tensors: dict[str, np.ndarray] = {}
    pos = 0
    for i, size in enumerate(sizes):
        if pos + size > n:
            break
        tensors[f"layers.{i}.weight"] = arr[pos : pos + size]
        pos += size
    i = 0
    while pos < n:  # the rest as 16 KiB biases
        size = min(8192, n - pos)
        tensors[f"bias.{i}"] = arr[pos : pos + size]
        pos += size
        i += 1
    return save_safetensors(tensors)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    arr = weights(args.mib)
    buf = arr.tobytes()
    st_buf = as_safetensors(arr)
    params = DEFAULT_PARAMS
    rows: list[dict[str, Any]] = []

    def row(name: str, nbytes: int, seconds: float, chunks: int | None = None) -> None:
        rows.append(
            {
                "operation": name,
                "gb_per_s": nbytes / seconds / 1e9,
                "chunks": chunks,
                "mean_chunk_mib": (nbytes / chunks / MiB) if chunks else None,
            }
        )

    # --- chunking --------------------------------------------------------------------------------
    for strategy, data in (("cdc", buf), ("safetensors", st_buf), ("pages", buf)):
        t, ranges = best_of(args.repeat, lambda d=data, s=strategy: list(chunk_buffer(d, s, params)))
        note = " (offsets only)" if strategy == "pages" else ""
        row(f"chunk_buffer {strategy}{note}", len(data), t, len(ranges))
        if strategy == "cdc":
            cdc_ranges = ranges

    def stream() -> int:
        sc = StreamChunker("cdc", params)
        count = 0
        whole = memoryview(buf)
        for i in range(0, len(buf), MiB):
            count += len(sc.feed(whole[i : i + MiB]))
        return count + len(sc.finish())

    t, count = best_of(args.repeat, stream)
    row("StreamChunker cdc, 1 MiB feeds", len(buf), t, count)

    sample = buf[: 2 * MiB]
    slow = PurePythonFastCDC(params.avg_size, min_size=params.min_size, max_size=params.max_size)
    t, _ = best_of(1, lambda: list(slow.cut_buf(sample)))
    row("pyfastcdc pure Python (2 MiB sample)", len(sample), t)

    # --- hashing the CDC chunks --------------------------------------------------------------------
    views = [memoryview(buf)[o : o + n] for o, n in cdc_ranges]
    pool = ThreadPoolExecutor(2)
    hashes: list[tuple[str, Callable[[memoryview], bytes], bool]] = [
        ("blake3, one thread", lambda v: blake3.blake3(v).digest(), False),
        (
            "blake3, its own threads",
            lambda v: blake3.blake3(v, max_threads=blake3.blake3.AUTO).digest(),
            False,
        ),
        ("blake3, chunks on 2 threads", lambda v: blake3.blake3(v).digest(), True),
        ("sha256, one thread", lambda v: hashlib.sha256(v).digest(), False),
        ("sha256, chunks on 2 threads", lambda v: hashlib.sha256(v).digest(), True),
    ]
    for name, fn, threaded in hashes:
        if threaded:
            t, _ = best_of(args.repeat, lambda fn=fn: list(pool.map(fn, views)))
        else:
            t, _ = best_of(args.repeat, lambda fn=fn: [fn(v) for v in views])
        row(name, len(buf), t, len(views))
    pool.shutdown()

    # --- a file, through the page cache -----------------------------------------------------------
    with tempfile.TemporaryDirectory(prefix="coldkeep-bench-") as tmp:
        path = Path(tmp) / "model.safetensors"
        path.write_bytes(st_buf)

        def file_pass(hash_it: bool) -> int:
            with chunk_file(path) as chunks:
                count = 0
                for v in chunks:
                    if hash_it:
                        blake3.blake3(v).digest()
                    count += 1
                return count

        rel = Path(tmp) / "base" / "16384" / "16385"
        rel.parent.mkdir(parents=True)
        rel.write_bytes(buf)

        def pages_pass() -> int:
            with chunk_file(rel) as chunks:
                return sum(1 for _ in chunks)

        t, count = best_of(args.repeat, pages_pass)
        row("chunk_file auto (read(), relation file)", len(buf), t, count)
        t, count = best_of(args.repeat, lambda: file_pass(False))
        row("chunk_file auto (read in windows, .safetensors)", len(st_buf), t, count)
        t, count = best_of(args.repeat, lambda: file_pass(True))
        row("chunk_file auto + blake3, one thread", len(st_buf), t, count)

    print(
        f"coldkeep chunker benchmark: {args.mib} MiB float16, best of {args.repeat}; python "
        f"{platform.python_version()}, pyfastcdc {pyfastcdc.__version__} "
        f"({'Cython' if CDC_ACCELERATED else 'PURE PYTHON'}), {os.cpu_count()} CPUs"
    )
    print(
        f"params: min {params.min_size // 1024} KiB, avg {params.avg_size // 1024} KiB, "
        f"max {params.max_size // 1024} KiB, pages {params.page_chunk // 1024} KiB"
    )
    print(f"{'operation':<42} {'GB/s':>8} {'chunks':>7} {'mean MiB':>9}")
    for r in rows:
        chunks = "" if r["chunks"] is None else str(r["chunks"])
        mean = "" if r["mean_chunk_mib"] is None else f"{r['mean_chunk_mib']:.2f}"
        speed = f"{r['gb_per_s']:.2f}" if r["gb_per_s"] >= 0.1 else f"{r['gb_per_s']:.4f}"
        print(f"{r['operation']:<42} {speed:>8} {chunks:>7} {mean:>9}")
    if args.json:
        args.json.write_text(
            json.dumps({"mib": args.mib, "accelerated": CDC_ACCELERATED, "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
