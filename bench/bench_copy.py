"""What verifying every blob costs `repo copy` (issue 11, item 5): copy one repository into a fresh
local directory with and without the per-blob check, alternating, and print wall and CPU times.

    .venv/bin/python bench/gen_data.py checkpoints /tmp/ck-data --n 1      # ~1 GiB of fp16 shards
    .venv/bin/python bench/bench_copy.py /tmp/ck-data /tmp/ck-copy-bench [--reps 3] [--encrypted]

The source repository is made once with the real `coldkeep backup`; each copy runs in this process
through :func:`coldkeep.repository.copy.copy_to` (the same code as `repo copy`).  "without" replaces
:func:`coldkeep.repository.copy.damaged_blobs` by a function that checks nothing, leaving the
footer, name and header checks that the copy made before blobs were verified.  The source stays in
the page cache after the first run, so the difference is the CPU the check costs (open, decompress,
hash every blob); a cold or remote source adds the same read time to both.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from coldkeep.repository import copy as copy_mod
from coldkeep.repository.index import IndexCache
from coldkeep.repository.packer import pack_key
from coldkeep.repository.repository import Repository
from coldkeep.storage.local import LocalBackend

COLDKEEP = str(Path(sys.executable).parent / "coldkeep")
PASSWORD = "bench copy"


def _coldkeep(config: Path, env: dict[str, str], *args: str) -> Any:
    proc = subprocess.run([COLDKEEP, "--config", str(config), "--json", *args], capture_output=True,
                          text=True, env=env, check=True)  # fmt: skip
    return json.loads(proc.stdout)


def make_source(data: Path, work: Path, encrypted: bool) -> Path:
    repo = work / "src"
    if (repo / "config").exists():
        return repo
    work.mkdir(parents=True, exist_ok=True)
    lines = ["[repository]", f'url = "file://{repo}"']
    if encrypted:
        (work / "password").write_text(PASSWORD)
        (work / "password").chmod(0o600)
        lines.append(f'password_file = "{work / "password"}"')
    config = work / "coldkeep.toml"
    config.write_text("\n".join(lines) + "\n")
    env = dict(os.environ, COLDKEEP_CACHE_DIR=str(work / "cache"))
    _coldkeep(config, env, "repo", "init")
    print(
        "backup:", _coldkeep(config, env, "backup", str(data))["new_stored_bytes"], "bytes stored", flush=True
    )
    return repo


def one_copy(repo: Repository, dst: Path, verify: bool) -> dict[str, float]:
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir()
    saved = copy_mod.damaged_blobs
    if not verify:
        copy_mod.damaged_blobs = lambda keys, pack, entries: []  # type: ignore[assignment]
    try:
        wall, cpu = time.monotonic(), time.process_time()
        result = copy_mod.copy_to(repo, LocalBackend(dst))
        return {"wall_s": time.monotonic() - wall, "cpu_s": time.process_time() - cpu, "bytes": result.bytes}
    finally:
        copy_mod.damaged_blobs = saved


def check_only(repo: Repository) -> dict[str, float]:
    """The per-blob check alone, on one thread, over every pack (read from the page cache)."""
    repo.refresh_cache(full=True)
    cpu_total = stored = 0.0
    for pack_id in sorted(repo.cache.packs()):
        data = repo.backend.get(pack_key(pack_id))
        blobs = repo.cache.blobs_in_pack(pack_id)
        cpu = time.process_time()
        assert not copy_mod.damaged_blobs(repo.keys, data, blobs)
        cpu_total += time.process_time() - cpu
        stored += len(data)
    return {"cpu_s": cpu_total, "bytes": stored}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", type=Path)
    parser.add_argument("work", type=Path)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--encrypted", action="store_true")
    args = parser.parse_args()
    source = make_source(args.data, args.work, args.encrypted)
    runs: dict[str, list[dict[str, float]]] = {"with": [], "without": []}
    with Repository.open(LocalBackend(source), PASSWORD if args.encrypted else None) as repo:
        repo._cache = IndexCache(repo.config.id, path=args.work / "bench-cache.sqlite")
        one_copy(repo, args.work / "dst", True)  # warm the page cache
        for _ in range(args.reps):
            for label in ("without", "with"):
                run = one_copy(repo, args.work / "dst", label == "with")
                runs[label].append(run)
                print(label, json.dumps({k: round(v, 2) for k, v in run.items()}), flush=True)
        alone = check_only(repo)
    shutil.rmtree(args.work / "dst", ignore_errors=True)
    print(f"the check alone, one thread: {alone['cpu_s']:.2f} s CPU for {alone['bytes'] / 2**30:.2f} GiB "
          f"({alone['bytes'] / 2**30 / alone['cpu_s']:.2f} GiB/s per core)")  # fmt: skip
    for label, items in runs.items():
        walls = sorted(r["wall_s"] for r in items)
        cpus = sorted(r["cpu_s"] for r in items)
        gib = items[0]["bytes"] / 2**30
        print(f"{label} blob check: median wall {walls[len(walls) // 2]:.2f} s, CPU {cpus[len(cpus) // 2]:.2f} s "
              f"for {gib:.2f} GiB ({gib / walls[len(walls) // 2]:.2f} GiB/s)")  # fmt: skip


if __name__ == "__main__":
    main()
