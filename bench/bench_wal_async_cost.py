#!/usr/bin/env python3
"""CPU cost per segment of ``pg wal-push --async``: the background pusher's work and the
per-segment acknowledgement, measured apart (a busy shared machine distorts wall times; CPU
seconds are the steadier figure and bound the rate an idle machine can reach).

* pusher: :class:`coldkeep.postgres.spool.Pusher` in this process, ``--workers`` threads, pushing
  real WAL segments (``.ready`` files in a fake ``pg_wal``) into fresh repositories; CPU from
  ``getrusage(RUSAGE_SELF)`` (all threads);
* ack: ``coldkeep pg wal-push --async SEG`` processes when the marker is already there (the
  common case when the pusher is ahead); CPU of the child processes;
* sync: ``coldkeep pg wal-push SEG`` processes (identical duplicate excluded: fresh repositories).

Segments come from a throwaway cluster (``CREATE TABLE AS`` of md5-text rows).  Run as root:
``.venv/bin/python bench/bench_wal_async_cost.py``.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from coldkeep.postgres import archive, spool  # noqa: E402
from coldkeep.postgres.cluster import TempCluster  # noqa: E402
from coldkeep.repository.repository import Repository  # noqa: E402
from coldkeep.storage import open_backend  # noqa: E402

COLDKEEP = str(Path(sys.executable).parent / "coldkeep")


def cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--segments", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="coldkeep-benchasync-"))
    os.chmod(work, 0o755)
    cluster = TempCluster(work / "pg")
    try:
        cluster.initdb(extra_conf={"max_wal_size": "'4GB'"})
        cluster.start()
        rows = 150_000 * (args.segments + 2)
        cluster.sql(
            f"CREATE TABLE t AS SELECT g, md5(g::text) || md5((g * 7)::text) v FROM generate_series(1, {rows}) g"
        )
        cluster.sql("SELECT pg_switch_wal()")
        sysid = int(str(cluster.sql("SELECT system_identifier FROM pg_control_system()")[0][0]))
        wal = work / "pg_wal"
        (wal / "archive_status").mkdir(parents=True)
        names = sorted(p.name for p in (cluster.data_dir / "pg_wal").glob("0000000100000000000000*"))[1:-1]
        names = names[: args.segments]
        for name in names:
            shutil.copy(cluster.data_dir / "pg_wal" / name, wal / name)
        cluster.stop()

        def fresh_repo(tag: str) -> Path:
            repo_dir = work / f"repo-{tag}"
            repo = Repository.init(open_backend(f"file://{repo_dir}", create=True))
            archive.record_system_identifier(repo, sysid)
            repo.close()
            config = work / f"{tag}.toml"
            config.write_text(f'[repository]\nurl = "file://{repo_dir}"\n')
            return config

        pusher_rows = []
        all_ack: list[tuple[float, float]] = []
        all_sync: list[tuple[float, float]] = []
        for r in range(args.rounds):
            config = fresh_repo(f"pusher-{r}")
            for name in names:
                (wal / "archive_status" / f"{name}.ready").touch()
            root = spool.spool_root(str(wal / names[0]), str(config))
            os.makedirs(root, exist_ok=True)
            from coldkeep.lean.config import load_repository_section
            from coldkeep.repository.setup import open_repository_section

            c0, t0 = cpu_self(), time.perf_counter()
            with open_repository_section(load_repository_section(str(config))) as repo:
                import blake3

                def push(name: str, path: str, repo: Repository = repo) -> tuple[int, str, str]:
                    data = archive.read_wal_file(path)
                    digest = str(blake3.blake3(data, max_threads=1).hexdigest())
                    return len(data), digest, archive.wal_push(repo, path, name=name, data=data).key

                spool.Pusher(root, str(wal), spool.config_identity(str(config)), push, args.workers).run(
                    str(config), idle_exit=0.0, poll=0.002
                )
            wall, cpu = time.perf_counter() - t0, cpu_self() - c0
            assert len(list(Path(root).glob("*.ok"))) == len(names)
            pusher_rows.append((wall, cpu))

            # acknowledgements from the markers, then the synchronous path for comparison
            ack = []
            for name in names:
                c1, t1 = cpu_children(), time.perf_counter()
                proc = subprocess.run([COLDKEEP, "--config", str(config), "pg", "wal-push", "--async", str(wal / name)],
                                      capture_output=True, text=True, check=False)  # fmt: skip
                assert proc.returncode == 0, proc.stderr
                ack.append((time.perf_counter() - t1, cpu_children() - c1))
            sync_config = fresh_repo(f"sync-{r}")
            sync = []
            for name in names:
                c1, t1 = cpu_children(), time.perf_counter()
                proc = subprocess.run([COLDKEEP, "--config", str(sync_config), "pg", "wal-push", str(wal / name)],
                                      capture_output=True, text=True, check=False)  # fmt: skip
                assert proc.returncode == 0, proc.stderr
                sync.append((time.perf_counter() - t1, cpu_children() - c1))
            all_ack += ack
            all_sync += sync
            for f in (wal / "archive_status").iterdir():
                f.unlink()
            shutil.rmtree(Path(root).parent, ignore_errors=True)
            print(f"round {r}: pusher {wall:.2f} s wall {cpu:.2f} s CPU for {len(names)} segments; "
                  f"ack median {statistics.median(a[0] for a in ack) * 1e3:.0f} ms wall "
                  f"{statistics.median(a[1] for a in ack) * 1e3:.0f} ms CPU; sync median "
                  f"{statistics.median(a[0] for a in sync) * 1e3:.0f} ms wall "
                  f"{statistics.median(a[1] for a in sync) * 1e3:.0f} ms CPU; load {os.getloadavg()[0]:.1f}",
                  file=sys.stderr)  # fmt: skip
        n = len(names)
        print(
            f"\n{n} segments x {args.rounds} rounds, pusher workers {args.workers}, load {os.getloadavg()[0]:.1f}\n"
        )
        print("| step | wall ms per segment (median) | CPU ms per segment (median) |")
        print("|---|---|---|")
        print(f"| pusher ({args.workers} threads, per segment) | {statistics.median(w for w, _ in pusher_rows) / n * 1e3:.0f} | "
              f"{statistics.median(c for _, c in pusher_rows) / n * 1e3:.0f} |")  # fmt: skip
        for label, rows_ in (("wal-push --async, marker present (one process)", all_ack),
                             ("wal-push, synchronous (one process)", all_sync)):  # fmt: skip
            print(f"| {label} | {statistics.median(w for w, _ in rows_) * 1e3:.0f} | "
                  f"{statistics.median(c for _, c in rows_) * 1e3:.0f} |")  # fmt: skip
    finally:
        cluster.remove()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
