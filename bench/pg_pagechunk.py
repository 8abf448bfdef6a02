"""Stored bytes of daily backups for several page-chunk sizes, on a live benchmark cluster.

    .venv/bin/python bench/pg_pagechunk.py DATA_DIR DSN WORKDIR [--days 2] [--first-day 10]
        [--sizes 131072,262144,1048576]

One repository per ``page_chunk``; each gets a file backup of the data directory's relation files
(``base/`` and ``global/``, chunked exactly as ``pg backup`` chunks them: ``strategy_for`` picks
page chunks by path), then ``--days`` times: a day of change (``pg_load.py day``: 2 % appended
rows, 0.2 % random updates) + CHECKPOINT, and another backup of each.  Prints one JSON line per
(size, day): new stored bytes, new blobs, index bytes.  Only bytes are compared (timing is not
meaningful on a shared machine); the files are read hot, which is fine for counting what changed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from coldkeep.repository.backup import Backup
from coldkeep.repository.chunker import ChunkerParams
from coldkeep.repository.repository import Repository
from coldkeep.storage.local import LocalBackend


def _bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data_dir")
    ap.add_argument("dsn")
    ap.add_argument("workdir")
    ap.add_argument("--days", type=int, default=2)
    ap.add_argument("--first-day", type=int, default=10)
    ap.add_argument("--sizes", default="131072,262144,1048576")
    a = ap.parse_args()
    data = Path(a.data_dir)
    work = Path(a.workdir)
    sizes = [int(s) for s in a.sizes.split(",")]
    os.environ["COLDKEEP_CACHE_DIR"] = str(work / "cache")
    repos: dict[int, Repository] = {}
    for size in sizes:
        repos[size] = Repository.init(
            LocalBackend(work / f"repo-{size}"), chunker=ChunkerParams(page_chunk=size)
        )

    def checkpoint() -> None:
        subprocess.run(["psql", "-X", "-q", a.dsn, "-c", "CHECKPOINT"], check=True)

    def backup_all(day: int) -> None:
        for size, repo in repos.items():
            res = Backup(repo, threads=2).run([data / "base", data / "global"], base=data, tags={"t": "pc"})
            print(json.dumps({"page_chunk": size, "day": day, "new_stored_bytes": res.new_stored_bytes,
                              "blobs_total": repo.cache.stats()[0],
                              "logical_bytes": res.logical_bytes, "reused_files": res.reused_files,
                              "index_bytes": _bytes(work / f"repo-{size}" / "index"),
                              "repo_bytes": _bytes(work / f"repo-{size}")}), flush=True)  # fmt: skip

    checkpoint()
    backup_all(0)
    for i in range(a.days):
        day = a.first_day + i
        subprocess.run([sys.executable, str(Path(__file__).with_name("pg_load.py")), "day", a.dsn, "--day", str(day)],
                       check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        checkpoint()
        backup_all(day)


if __name__ == "__main__":
    main()
