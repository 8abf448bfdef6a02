#!/usr/bin/env python3
"""Backlog drain: how fast PostgreSQL's archiver empties a ``.ready`` backlog through
``coldkeep pg wal-push`` (synchronous) and ``pg wal-push --async`` (background pusher).

A throwaway PostgreSQL 15 cluster writes a backlog with archiving paused (``archive_command =
''``; a ``CREATE TABLE AS`` of md5-text rows, the peer benchmark's generator), then the variant's
``archive_command`` is set and reloaded and the time until no ``.ready`` file is left is
measured.  Each variant archives into a fresh repository (zstd at the repository's level, every
object fsynced).  Run as root: ``.venv/bin/python bench/bench_wal_drain.py --segments 50``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.fixtures.pg_exec import build_postgres_runnable  # noqa: E402

from coldkeep.postgres import archive, archiving  # noqa: E402
from coldkeep.postgres.cluster import TempCluster  # noqa: E402
from coldkeep.repository.repository import Repository  # noqa: E402
from coldkeep.storage import open_backend  # noqa: E402

PG_USER = "postgres"
ROWS_PER_SEGMENT = 150_000  # md5||md5 rows: ~16 MB of WAL each


def ready_count(cluster: TempCluster) -> int:
    return len(list((cluster.data_dir / "pg_wal" / "archive_status").glob("*.ready")))


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--segments", type=int, default=50)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--variants", nargs="*", default=["sync", "async"])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="coldkeep-benchdrain-"))
    os.chmod(work, 0o755)
    cluster = TempCluster(work / "pg")
    results: list[tuple[str, int, float, int, float]] = []
    try:
        coldkeep = build_postgres_runnable(work / "shim")
        if coldkeep is None:
            raise SystemExit("no coldkeep the postgres user can run")
        cluster.initdb(extra_conf={"archive_mode": "on", "archive_command": "''", "max_wal_size": "'4GB'",
                                   "wal_level": "replica"})  # fmt: skip
        cluster.start()
        sysid = int(cluster.sql("SELECT system_identifier FROM pg_control_system()")[0][0])
        for run in range(args.runs):
            for variant in args.variants:
                tag = f"{variant}-{run}"
                repo_dir = work / f"repo-{tag}"
                repo = Repository.init(open_backend(f"file://{repo_dir}", owner=PG_USER, create=True))
                archive.record_system_identifier(repo, sysid)
                repo.close()
                config = work / f"coldkeep-{tag}.toml"
                config.write_text(f'[repository]\nurl = "file://{repo_dir}"\nowner = "{PG_USER}"\n')
                config.chmod(0o644)
                # the backlog, archiving paused
                cluster.sql("ALTER SYSTEM SET archive_command = ''")
                cluster.sql("SELECT pg_reload_conf()")
                cluster.sql("DROP TABLE IF EXISTS backlog")
                rows = ROWS_PER_SEGMENT * args.segments
                cluster.sql(
                    "CREATE TABLE backlog AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS v "
                    f"FROM generate_series(1, {rows}) g"
                )
                cluster.sql("SELECT pg_switch_wal()")
                time.sleep(1.0)
                segments = ready_count(cluster)
                command = archiving.archive_command(
                    coldkeep, str(config), async_push=variant == "async", workers=args.workers
                )
                quoted = command.replace("'", "''")
                load_before = os.getloadavg()[0]
                started = time.monotonic()
                cluster.sql(f"ALTER SYSTEM SET archive_command = '{quoted}'")
                cluster.sql("SELECT pg_reload_conf()")
                deadline = started + 1800
                while ready_count(cluster) and time.monotonic() < deadline:
                    time.sleep(0.02)
                wall = time.monotonic() - started
                failed = int(str(cluster.sql("SELECT failed_count FROM pg_stat_archiver")[0][0]))
                print(f"{tag}: {segments} segments in {wall:.2f} s ({segments / wall:.1f}/s), "
                      f"load {load_before:.1f}->{os.getloadavg()[0]:.1f}, failed_count {failed}",
                      file=sys.stderr)  # fmt: skip
                results.append((variant, segments, wall, du(repo_dir / "named"), os.getloadavg()[0]))
        print(f"\nbacklog drain, {args.segments} x ~16 MB segments of md5-text rows, "
              f"async workers {args.workers}\n")  # fmt: skip
        print(
            "| variant | n | segments | wall s (median) | min-max | segments/s | stored MB | load 1-min after |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for variant in args.variants:
            rows_v = [r for r in results if r[0] == variant]
            walls = [r[2] for r in rows_v]
            med = statistics.median(walls)
            segs = rows_v[0][1]
            print(f"| {variant} | {len(rows_v)} | {segs} | {med:.2f} | {min(walls):.2f}-{max(walls):.2f} | "
                  f"{segs / med:.1f} | {rows_v[0][3] / 1e6:.1f} | {rows_v[-1][4]:.1f} |")  # fmt: skip
    finally:
        cluster.remove()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
