#!/usr/bin/env python3
"""pgbench TPS with ``archive_command`` off (``/bin/true``) vs ``coldkeep pg wal-push`` (sync)
and ``wal-push --async``: short alternating runs on a throwaway cluster, ``.ready`` backlog at the
end of each run.  Run as root: ``.venv/bin/python bench/bench_wal_tps.py --duration 15 --rounds 3``.
"""

from __future__ import annotations

import argparse
import os
import re
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--variants", nargs="*", default=["noop", "sync", "async"])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="coldkeep-benchtps-"))
    os.chmod(work, 0o755)
    cluster = TempCluster(work / "pg")
    tps: dict[str, list[float]] = {v: [] for v in args.variants}
    backlog: dict[str, list[int]] = {v: [] for v in args.variants}
    try:
        coldkeep = build_postgres_runnable(work / "shim")
        if coldkeep is None:
            raise SystemExit("no coldkeep the postgres user can run")
        cluster.initdb(extra_conf={"archive_mode": "on", "archive_command": "'/bin/true'", "max_wal_size": "'64MB'",
                                   "min_wal_size": "'32MB'"})  # fmt: skip
        cluster.start()
        pgbench = str(cluster.bin_dir / "pgbench")
        conn = ["-h", str(cluster.socket_dir), "-p", str(cluster.port), "-U", "postgres", "postgres"]
        proc = cluster.run([pgbench, "-i", "-s", str(args.scale), "-q", *conn])
        if proc.returncode != 0:
            raise SystemExit(proc.stderr)
        sysid = int(str(cluster.sql("SELECT system_identifier FROM pg_control_system()")[0][0]))
        repo_dir = work / "repo"
        repo = Repository.init(open_backend(f"file://{repo_dir}", owner=PG_USER, create=True))
        archive.record_system_identifier(repo, sysid)
        repo.close()
        config = work / "coldkeep.toml"
        config.write_text(f'[repository]\nurl = "file://{repo_dir}"\nowner = "{PG_USER}"\n')
        config.chmod(0o644)
        commands = {
            "noop": "/bin/true",
            "sync": archiving.archive_command(coldkeep, str(config)),
            "async": archiving.archive_command(coldkeep, str(config), async_push=True, workers=2),
        }
        status = cluster.data_dir / "pg_wal" / "archive_status"
        for r in range(args.rounds):
            order = args.variants if r % 2 == 0 else list(reversed(args.variants))
            for variant in order:
                quoted = commands[variant].replace("'", "''")
                cluster.sql(f"ALTER SYSTEM SET archive_command = '{quoted}'")
                cluster.sql("SELECT pg_reload_conf()")
                deadline = time.monotonic() + 120
                while list(status.glob("*.ready")) and time.monotonic() < deadline:
                    time.sleep(0.1)
                proc = cluster.run(
                    [pgbench, "-c4", "-j2", "-T", str(args.duration), "-n", *conn], timeout=600
                )
                match = re.search(r"tps = ([0-9.]+)", proc.stdout)
                if proc.returncode != 0 or not match:
                    raise SystemExit(proc.stdout + proc.stderr)
                tps[variant].append(float(match.group(1)))
                backlog[variant].append(len(list(status.glob("*.ready"))))
                print(f"round {r} {variant}: {tps[variant][-1]:.0f} TPS, .ready {backlog[variant][-1]}, "
                      f"load {os.getloadavg()[0]:.1f}", file=sys.stderr)  # fmt: skip
        base = statistics.median(tps["noop"]) if tps.get("noop") else None
        print(f"\npgbench -c4 -j2 -T{args.duration} -n, scale {args.scale}, max_wal_size 64MB, "
              f"{args.rounds} alternating rounds\n")  # fmt: skip
        print("| archive_command | TPS per round | median TPS | vs noop | .ready at end (max) |")
        print("|---|---|---|---|---|")
        for variant in args.variants:
            med = statistics.median(tps[variant])
            rel = f"{(med / base - 1) * 100:+.1f} %" if base and variant != "noop" else "—"
            rounds = " / ".join(f"{t:.0f}" for t in tps[variant])
            print(f"| {variant} | {rounds} | {med:.0f} | {rel} | {max(backlog[variant])} |")
    finally:
        cluster.remove()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
