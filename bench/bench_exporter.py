"""What a `coldkeep exporter` scrape costs with many run records (issue 15): write N run records
into a fresh local repository, time the first render (reads every record), a render from the
local record cache (with and without the report page of issue 16), and the scrapes and the page
(served from memory), and print them.

    .venv/bin/python bench/bench_exporter.py [--records 1000] [--scrapes 200]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--scrapes", type=int, default=200)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="coldkeep-bench-exporter-"))
    os.environ["COLDKEEP_CACHE_DIR"] = str(work / "cache")

    from coldkeep.config import parse_text
    from coldkeep.ops.exporter import Exporter, MetricsSource
    from coldkeep.ops.runs import RunRecord, write_record
    from coldkeep.repository.crypto import KdfParams
    from coldkeep.repository.repository import Repository
    from coldkeep.storage.local import LocalBackend

    kdf = KdfParams(memory_kib=8192, iterations=1, lanes=1)
    repo = Repository.init(LocalBackend(work / "repo"), passphrase=None, kdf_params=kdf)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(args.records):
        t = start + timedelta(hours=i)
        job = ("pg backup", "repo check", "backup")[i % 3]
        write_record(repo, RunRecord(job=job, start=t, end=t + timedelta(seconds=5), result="ok"))
    repo.close()

    source = MetricsSource(parse_text(f'[repository]\nurl = "file://{work / "repo"}"\nowner = ""\n'))
    t0 = time.perf_counter()
    source.render()
    print(f"first render, reading {args.records} records: {time.perf_counter() - t0:.3f} s")
    t0 = time.perf_counter()
    source.render()
    print(f"render from the record cache: {time.perf_counter() - t0:.3f} s (the metrics alone)")
    t0 = time.perf_counter()
    source.render_all()
    print(f"render with the report page: {time.perf_counter() - t0:.3f} s (the background refresh)")
    server = Exporter(source.render_all, "127.0.0.1:0", refresh_s=60)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    times = []
    for _ in range(args.scrapes):
        t0 = time.perf_counter()
        with urllib.request.urlopen(f"http://{server.address}/metrics") as answer:
            answer.read()
        times.append(time.perf_counter() - t0)
    times.sort()
    median, p99 = times[len(times) // 2], times[int(len(times) * 0.99) - 1]
    print(f"scrape: median {median * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms ({args.scrapes} scrapes)")
    t0 = time.perf_counter()
    with urllib.request.urlopen(f"http://{server.address}/") as answer:
        size = len(answer.read())
    print(f"the report page (GET /, {size} bytes): {(time.perf_counter() - t0) * 1000:.2f} ms")
    server.stop()
    source.close()


if __name__ == "__main__":
    main()
