#!/usr/bin/env python3
"""The scaling table of ``bench/bench_pg_scaling.sh``: restore and WAL replay at each size, coldkeep
vs pgBackRest (medians), MB/s, cost per GB, and the projection to 1 TB against the 278 MB/s that
an RTO of one hour needs.

    .venv/bin/python bench/pg_scaling.py bench/results/pg-scaling 1000 2000 4000
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

TB = 1e12
HOUR_LINE = TB / 3600 / 1e6  # MB/s that restores 1 TB in one hour


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def summary(rs: list[dict]) -> dict:
    """Medians (and the wall spread) of one tool's records of one step."""
    out = lambda key: [(r.get("output") or {}).get(key, 0) for r in rs]  # noqa: E731
    return {
        "n": len(rs),
        "wall": med([r["wall_s"] for r in rs]),
        "min": min(r["wall_s"] for r in rs),
        "max": max(r["wall_s"] for r in rs),
        "files": med(out("files_s")),
        "promote": med(out("replay_s")),
        "cpu": med([r["cpu_s"] for r in rs]),
        "machine_cpu": med([r["machine_cpu_s"] for r in rs]),
        "segments": rs[0].get("segments_restored"),
    }


def main() -> None:
    out, sizes = Path(sys.argv[1]), sys.argv[2:]
    rows = []
    for size in sizes:
        recs = load(out / size / "pg.jsonl")
        db = next((r for r in recs if r.get("type") == "db"), {})
        wal = next((r for r in recs if r.get("type") == "replay_wal"), {})
        db_bytes = float(db.get("database_bytes") or 0)
        wal_bytes = float(wal.get("wal_bytes") or 0)
        row: dict = {"size": size, "db_bytes": db_bytes, "wal_bytes": wal_bytes}
        for workload, tools in (("restore", ("coldkeep", "pgbackrest")),
                                ("replay", ("cp", "coldkeep-prefetch", "pgbackrest-async"))):  # fmt: skip
            for tool in tools:
                rs = [
                    r
                    for r in recs
                    if r.get("workload") == workload and r.get("tool") == tool and r.get("rc") == 0
                ]
                if rs:
                    row[f"{workload}_{tool}"] = summary(rs)
        loads = [float(x.split()[1]) for x in (out / size / "pg-loadavg.log").read_text().splitlines()
                 if len(x.split()) > 1 and x.split()[1].replace(".", "", 1).isdigit()] \
            if (out / size / "pg-loadavg.log").exists() else []  # fmt: skip
        row["load"] = (statistics.mean(loads), max(loads)) if loads else None
        rows.append(row)

    p = print
    p(
        "### Restore to a promoted server (median; files = writing the data directory, promote = start → promoted)\n"
    )
    p(
        "| size | database MB | tool | n | wall s | min–max | files s | start→promoted s | CPU s | machine CPU s | MB/s | s per GB |"
    )
    p("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        for tool in ("coldkeep", "pgbackrest"):
            r = row.get(f"restore_{tool}")
            if not r:
                continue
            mbs = row["db_bytes"] / 1e6 / r["wall"]
            p(f"| {row['size']} MB | {row['db_bytes'] / 1e6:,.0f} | {tool} | {r['n']} | {r['wall']:.2f} | "
              f"{r['min']:.2f}–{r['max']:.2f} | {r['files']:.2f} | {r['promote']:.2f} | {r['cpu']:.2f} | "
              f"{r['machine_cpu']:.1f} | {mbs:,.0f} | {r['wall'] / (row['db_bytes'] / 1e9):.2f} |")  # fmt: skip
    p(
        "\n### WAL replay through restore_command (median; recovery of a `-X none` base backup to the end of the archive)\n"
    )
    p(
        "| size | WAL MB | restore_command | n | segments | wall s | min–max | WAL MB/s | machine CPU s | vs cp |"
    )
    p("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        cp = (row.get("replay_cp") or {}).get("wall")
        for tool in ("cp", "coldkeep-prefetch", "pgbackrest-async"):
            r = row.get(f"replay_{tool}")
            if not r:
                continue
            vs = f"{r['wall'] / cp:.2f} ×" if cp else "–"
            p(f"| {row['size']} MB | {row['wal_bytes'] / 1e6:,.0f} | {tool} | {r['n']} | {r['segments']} | {r['wall']:.2f} | "
              f"{r['min']:.2f}–{r['max']:.2f} | {row['wal_bytes'] / 1e6 / r['wall']:,.1f} | {r['machine_cpu']:.1f} | {vs} |")  # fmt: skip
    p("\n### Targets and projection\n")
    p(
        "| size | restore: coldkeep / pgBackRest | files phase | start→promoted | restore CPU | replay: coldkeep / pgBackRest | machine load (1-min mean / max) |"
    )
    p("|---|---|---|---|---|---|---|")
    for row in rows:
        a, b = row.get("restore_coldkeep"), row.get("restore_pgbackrest")
        c, d = row.get("replay_coldkeep-prefetch"), row.get("replay_pgbackrest-async")
        machine = f"{row['load'][0]:.2f} / {row['load'][1]:.2f}" if row["load"] else "–"
        p(f"| {row['size']} MB | {a['wall'] / b['wall']:.2f} × ({a['wall']:.2f} vs {b['wall']:.2f} s) | "
          f"{a['files'] / b['files']:.2f} × ({a['files']:.2f} vs {b['files']:.2f} s) | "
          f"{a['promote']:.2f} vs {b['promote']:.2f} s | {a['cpu'] / b['cpu']:.2f} × | "
          f"{c['wall'] / d['wall']:.2f} × ({c['wall']:.2f} vs {d['wall']:.2f} s) | {machine} |"
          if a and b and c and d and b['files'] else f"| {row['size']} MB | incomplete | | | | | {machine} |")  # fmt: skip
    big = rows[-1]
    p("")
    for tool in ("coldkeep", "pgbackrest"):
        r = big.get(f"restore_{tool}")
        if r:
            mbs = big["db_bytes"] / 1e6 / r["wall"]
            p(
                f"- {tool} restore at {big['size']} MB: {mbs:,.0f} MB/s → 1 TB in {TB / 1e6 / mbs / 60:,.0f} min "
                f"({'above' if mbs >= HOUR_LINE else 'below'} the {HOUR_LINE:.0f} MB/s a one-hour RTO needs)"
            )
    for tool in ("coldkeep-prefetch", "pgbackrest-async"):
        r = big.get(f"replay_{tool}")
        if r:
            mbs = big["wal_bytes"] / 1e6 / r["wall"]
            p(
                f"- {tool} replay at {big['size']} MB of WAL: {mbs:,.1f} MB/s → 1 TB of WAL in {TB / 1e6 / mbs / 3600:,.1f} h"
            )
    first = rows[0].get("restore_coldkeep")
    if first and big.get("restore_coldkeep") and len(rows) > 1:
        per = [
            row["restore_coldkeep"]["wall"] / (row["db_bytes"] / 1e9)
            for row in rows
            if row.get("restore_coldkeep")
        ]
        p(
            f"- coldkeep restore seconds per GB across sizes: {', '.join(f'{x:.2f}' for x in per)} "
            "(linear growth: constant per GB, falling when a fixed start-up cost is spread)"
        )


if __name__ == "__main__":
    main()
