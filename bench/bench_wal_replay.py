#!/usr/bin/env python3
"""Recovery time with ``restore_command = coldkeep pg wal-fetch`` — with and without ``--prefetch``.

A throwaway PostgreSQL 15 cluster takes a plain base backup without WAL (``pg_basebackup -X
none``), then writes ``--segments`` segments of md5-text rows; the archived WAL is pushed into a
coldkeep repository.  Each run copies the backup into a fresh data directory, sets
``restore_command`` (run by PostgreSQL as ``postgres``, like in production) and measures the time
from ``pg_ctl start`` until the server has replayed everything and promoted.  Prints a markdown
table (median / min / max seconds, segments/s).  Run as root:
``.venv/bin/python bench/bench_wal_replay.py --segments 24 --runs 3``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.fixtures.pg_exec import build_postgres_runnable  # noqa: E402

from coldkeep.postgres import archive, archiving  # noqa: E402
from coldkeep.postgres import prefetch as prefetch_mod  # noqa: E402
from coldkeep.postgres.cluster import TempCluster, chown_to, free_port  # noqa: E402
from coldkeep.repository.repository import Repository  # noqa: E402
from coldkeep.storage import open_backend  # noqa: E402

PG_USER = "postgres"
TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int | str) -> list[str]:
    """``/proc/<pid>/stat`` after the command name (field 3 onwards)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2 :].split()


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat_fields(entry.name)[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return out


def recovery_cpu_s(data_dir: Path) -> float:
    """CPU seconds of a finished recovery: the postmaster's reaped children (the startup process,
    which ran every ``restore_command`` and waited for it) plus the still-running detached
    prefetchers (processes other than postgres whose working directory is ``data_dir``), which
    are then told to stop by removing their spool."""
    postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the startup process exits (and is reaped) after promotion
        names = []
        for child in _children(postmaster):
            try:
                names.append(Path(f"/proc/{child}/cmdline").read_bytes())
            except OSError:
                continue
        if not any(b"startup" in n for n in names):
            break
        time.sleep(0.05)
    fields = _stat_fields(postmaster)
    ticks = int(fields[13]) + int(fields[14])  # cutime + cstime
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (
                os.readlink(entry / "cwd") != str(data_dir)
                or (entry / "comm").read_text().strip() == "postgres"
            ):
                continue
            fields = _stat_fields(entry.name)
            ticks += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
        except (OSError, ValueError):
            continue
    shutil.rmtree(data_dir / "pg_wal" / ".coldkeep-prefetch", ignore_errors=True)
    return ticks / TICK


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--segments", type=int, default=24)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--prefetch", type=int, nargs="*", default=[0, 2, 4])
    parser.add_argument("--executable", action="append", default=[], metavar="LABEL=PATH",
                        help="compare coldkeep builds (another checkout's venv/bin/coldkeep), runs interleaved")  # fmt: skip
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="coldkeep-benchreplay-"))
    os.chmod(work, 0o755)
    source = TempCluster(work / "source")
    try:
        coldkeep = build_postgres_runnable(work / "shim")
        if coldkeep is None:
            raise SystemExit("no coldkeep the postgres user can run")
        spool = work / "archive-spool"
        spool.mkdir()
        chown_to(spool, PG_USER)
        source.initdb(extra_conf={"archive_mode": "on", "archive_command": f"'cp %p {spool}/%f'",
                                  "max_wal_size": "'1GB'"})  # fmt: skip
        source.start()
        backup = work / "base"
        backup.mkdir(mode=0o700)
        chown_to(backup, PG_USER)
        proc = source.run([str(source.bin_dir / "pg_basebackup"), "-h", str(source.socket_dir), "-p",
                           str(source.port), "-U", "postgres", "-D", str(backup), "-X", "none", "-c", "fast"])  # fmt: skip
        if proc.returncode != 0:
            raise SystemExit(proc.stderr)
        source.sql("CREATE TABLE t (id bigserial, v text)")
        last = ""
        for _ in range(args.segments):
            source.sql(
                "INSERT INTO t (v) SELECT md5(g::text) || md5((g*3)::text) FROM generate_series(1, 120000) g"
            )
            lsn = source.sql("SELECT pg_switch_wal()")[0][0]
            last = str(source.sql(f"SELECT pg_walfile_name('{lsn}')")[0][0])
        rows = source.sql("SELECT count(*) FROM t")[0][0]
        deadline = time.monotonic() + 300
        while not (spool / last).exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        sysid = int(source.sql("SELECT system_identifier FROM pg_control_system()")[0][0])
        source.stop()

        repo_dir = work / "repo"
        repo = Repository.init(open_backend(f"file://{repo_dir}", owner=PG_USER, create=True))
        archive.record_system_identifier(repo, sysid)
        for path in sorted(spool.iterdir()):
            archive.wal_push(repo, path)
        repo.close()
        pushed = len(list(spool.iterdir()))
        config = work / "coldkeep.toml"
        config.write_text(f'[repository]\nurl = "file://{repo_dir}"\nowner = "{PG_USER}"\n')
        config.chmod(0o644)

        builds = [tuple(item.split("=", 1)) for item in args.executable] or [("", coldkeep)]
        variants = [(label, path, prefetch) for prefetch in args.prefetch for label, path in builds]
        timings: dict[tuple[str, str, int], list[float]] = {v: [] for v in variants}
        cpu: dict[tuple[str, str, int], list[float]] = {v: [] for v in variants}
        for run in range(args.runs):  # interleaved: every variant sees the same machine
            for label, executable, prefetch in variants:
                base = work / f"restore-{label or 'x'}-{prefetch}-{run}"
                base.mkdir()
                subprocess.run(["cp", "-a", str(backup), str(base / "data")], check=True)
                chown_to(base, PG_USER)
                target = TempCluster(base, bin_dir=source.bin_dir, port=free_port())
                fast = prefetch_mod.ready_fast_path(base / "data", str(config), "wal") if prefetch else ""
                command = archiving.restore_command(executable, str(config), "wal", prefetch, fast_path=fast)
                with open(target.data_dir / "postgresql.auto.conf", "a") as fh:
                    fh.write(f"restore_command = '{command}'\narchive_mode = off\n")
                (target.data_dir / "recovery.signal").touch()
                chown_to(target.data_dir / "recovery.signal", PG_USER)
                target.configure({"port": str(target.port)})
                started = time.monotonic()
                try:
                    target.start(timeout=600)
                except Exception:
                    print(target.log_text()[-3000:], file=sys.stderr)
                    raise
                while target.sql("SELECT pg_is_in_recovery()")[0][0]:
                    time.sleep(0.05)
                timings[(label, executable, prefetch)].append(time.monotonic() - started)
                cpu[(label, executable, prefetch)].append(recovery_cpu_s(target.data_dir))
                assert target.sql("SELECT count(*) FROM t")[0][0] == rows
                target.remove()
        results = [
            (label, prefetch, timings[(label, path, prefetch)], cpu[(label, path, prefetch)])
            for label, path, prefetch in variants
        ]
        print(f"{pushed} WAL files archived ({args.segments} written segments of md5-text rows), "
              f"{args.runs} recoveries per variant\n")  # fmt: skip
        print("| restore_command | n | recovery s median | min-max | segments/s | wall ms/segment "
              "| CPU s median (replay + restore_command + prefetcher) | CPU ms/segment |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|")
        for build, prefetch, times, cpus in results:
            med, cpu_med = statistics.median(times), statistics.median(cpus)
            label = f"wal-fetch --prefetch {prefetch}" if prefetch else "wal-fetch"
            label = f"{build}: {label}" if build else label
            print(
                f"| {label} | {len(times)} | {med:.2f} | {min(times):.2f}-{max(times):.2f} | {pushed / med:.1f} "
                f"| {1000 * med / pushed:.0f} | {cpu_med:.2f} | {1000 * cpu_med / pushed:.0f} |"
            )
    finally:
        source.remove()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
