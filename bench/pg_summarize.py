#!/usr/bin/env python3
"""Markdown tables and the issue's targets (met / missed, figure and gap) from bench/bench_pg.sh.

    python bench/pg_summarize.py bench/results/pg.jsonl [--loadavg bench/results/pg-loadavg.log]

MB = 10**6 bytes. "wall" and "CPU" come from GNU time around the command (CPU = user+sys of the
command and the children it waited for: coldkeep's pg_basebackup child, pgBackRest's local
processes; NOT the PostgreSQL server's own processes, which are in "machine CPU": the whole VM's
busy time during the step, including other users' work on this shared machine).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

Rec = dict[str, Any]
PEER_ORDER = ["coldkeep", "pgbackrest", "pg_basebackup"]


#: which archive_command `pg setup` writes: since 2026-12-05 (git after 7d414f5) `[postgres]
#: archive_async` defaults to true, so `coldkeep-async` is what a user gets and `coldkeep` (one
#: `wal-push` process per segment) is the opt-out; records of earlier runs are labelled the same way
ROLE = {"coldkeep": " (opt-out `archive_async = false`)", "coldkeep-async": " (the default)"}


def load(path: Path) -> list[Rec]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def med(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def f(x: float | None, nd: int = 2) -> str:
    if x is None:
        return "-"
    return f"{x:,.{nd}f}"


def mb(x: float | None, nd: int = 1) -> str:
    return "-" if x is None else f"{x / 1e6:,.{nd}f}"


def span(xs: list[float], nd: int = 2) -> str:
    xs = [x for x in xs if x is not None]
    if len(xs) < 2:
        return "-"
    return f"{min(xs):,.{nd}f}–{max(xs):,.{nd}f}"


def pct(a: float | None, b: float | None) -> str:
    if a is None or not b:
        return "-"
    return f"{(a / b - 1) * 100:+.1f} %"


class Summary:
    def __init__(self, recs: list[Rec], loadavg: Path | None) -> None:
        self.recs = recs
        self.loadavg = loadavg
        self.m: dict[tuple[str, str, str], list[Rec]] = defaultdict(list)
        for r in recs:
            if "workload" in r and "step" in r and "tool" in r:
                self.m[(r["workload"], r["tool"], r["step"])].append(r)
        self.lines: list[str] = []
        self.targets: list[tuple[str, bool | None, str]] = []

    def out(self, *lines: str) -> None:
        self.lines.extend(lines)

    def of(self, workload: str, tool: str | None = None) -> list[Rec]:
        return [
            r for (w, t, _), rs in self.m.items() if w == workload and (tool is None or t == tool) for r in rs
        ]

    def typed(self, t: str) -> list[Rec]:
        return [r for r in self.recs if r.get("type") == t]

    # --------------------------------------------------------------------------------------------

    def header(self) -> None:
        env = next((r for r in self.typed("env")), {})
        db = next((r for r in self.typed("db")), {})
        self.out("### Machine, versions, database", "")
        if env:
            self.out(
                f"* {env.get('cpus')} vCPU ({env.get('cpu_model')}), {env.get('mem_gib')} GiB RAM, {env.get('os')}, "
                f"kernel {env.get('kernel')}; warm page cache (nothing is dropped between steps).",
                f"* {env.get('postgres')}; {env.get('pgbackrest')}; {env.get('coldkeep')} run by "
                f"{env.get('runner_python')} (a copy PostgreSQL's OS user can run); {env.get('zstd')}.",
                f"* knobs: `{env.get('knobs')}`",
            )
        if db:
            ld = db.get("load") or {}
            heap, zst = db.get("conversations_heap_bytes"), db.get("conversations_heap_zstd3_bytes")
            self.out(
                f"* database `bench`: {mb(db.get('database_bytes'))} MB (`pg_database_size`), "
                f"{mb(db.get('data_dir_bytes'))} MB of files outside `pg_wal`; pgbench scale {db.get('scale')} "
                f"({mb(db.get('pgbench_bytes'))} MB with indexes) + `conversations` {ld.get('rows', 0):,} rows "
                f"({mb(ld.get('table_bytes'))} MB heap+TOAST, {mb(ld.get('index_bytes'))} MB indexes, "
                f"{db.get('avg_content_bytes')} bytes of text per row on average). The conversations heap "
                f"compresses {heap / zst:.2f}x with `zstd -3` (pgbench's tables ~20x)."
                if heap and zst
                else "",
            )
        self.out("")

    # --------------------------------------------------------------------------------------------

    def backups(self) -> None:
        recs = [r for r in self.of("backup") if r.get("rc") == 0]
        if not recs:
            return
        days = sorted({int(r["rep"]) for r in recs})
        ndays = len(days)
        self.out(f"### Base backups: {ndays} daily backups", "")
        self.out(
            "Day 0 is the database as loaded; before each later day, 2 % new conversation rows are appended "
            "and 0.2 % of all rows are updated at random. coldkeep: `coldkeep --json pg backup` (streamed "
            "`pg_basebackup -Ft -X none`, 128 KiB page chunks deduplicated against earlier backups, zstd-1 (`[postgres] compression_level`), "
            "complete once its WAL is archived). pgBackRest: full on day 0, `--type=incr` after "
            "(`compress-type=zst`, level 3, `process-max=2`, `start-fast=y`). `pg_basebackup -Ft -z -X stream -c fast` "
            "(gzip, a full copy every time). Stored = apparent bytes of the repository / backup directories; "
            "both repositories also hold the WAL archived since setup (archive_command pushed every segment "
            "to both), shown separately.",
            "",
            "| tool | first backup wall s | CPU s | machine CPU s | later backups wall s (median) | min–max | CPU s | "
            "machine CPU s | n | backups stored MB | WAL stored MB | total MB |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        )
        stored: dict[str, dict[str, float]] = {}
        times: dict[str, dict[str, float | None]] = {}
        for tool in PEER_ORDER:
            rs = sorted((r for r in recs if r["tool"] == tool), key=lambda r: r["rep"])
            if not rs:
                continue
            first = [r for r in rs if r["rep"] == 0]
            later = [r for r in rs if r["rep"] > 0]
            last = rs[-1]
            repo = last.get("repo") or {}
            note = ""
            if tool == "pg_basebackup" and len(rs) < ndays:
                # full copies: estimate the days not run by linear interpolation of the measured sizes
                sizes = {r["rep"]: (r.get("repo") or {}) for r in rs}
                per_day = {}
                prev_total = {"backup": 0.0, "wal": 0.0}
                for r in rs:
                    cur = r.get("repo") or {}
                    per_day[r["rep"]] = {k: float(cur.get(k, 0)) - prev_total[k] for k in ("backup", "wal")}
                    prev_total = {k: float(cur.get(k, 0)) for k in ("backup", "wal")}
                known = sorted(per_day)
                est = {"backup": 0.0, "wal": 0.0}
                for d in days:
                    lo = max([k for k in known if k <= d], default=known[0])
                    hi = min([k for k in known if k >= d], default=known[-1])
                    for k in est:
                        if lo == hi:
                            est[k] += per_day[lo][k]
                        else:
                            w = (d - lo) / (hi - lo)
                            est[k] += per_day[lo][k] * (1 - w) + per_day[hi][k] * w
                repo = {"backup": est["backup"], "wal": est["wal"], "total": est["backup"] + est["wal"]}
                note = f" (est.: {len(rs)} of {ndays} days run)"
                del sizes
            stored[tool] = {k: float(repo.get(k, 0)) for k in ("backup", "wal", "total")}
            times[tool] = {
                "first": med([r["wall_s"] for r in first]),
                "later": med([r["wall_s"] for r in later]),
                "first_cpu": med([r["cpu_s"] for r in first]),
                "later_cpu": med([r["cpu_s"] for r in later]),
            }
            self.out(
                f"| {tool}{note} | {f(times[tool]['first'])} | {f(times[tool]['first_cpu'])} | "
                f"{f(med([r['machine_cpu_s'] for r in first]), 1)} | {f(times[tool]['later'])} | "
                f"{span([r['wall_s'] for r in later])} | {f(times[tool]['later_cpu'])} | "
                f"{f(med([r['machine_cpu_s'] for r in later]), 1)} | {len(later)} | {mb(stored[tool]['backup'])} | "
                f"{mb(stored[tool]['wal'])} | {mb(stored[tool]['total'])} |"
            )
        self.out("")
        # per day
        self.out(
            "Per day (wall s / MB added to the store, WAL included; coldkeep's `new_stored_bytes` = "
            "new chunks of that backup):",
            "",
            "| day | rows | "
            + " | ".join(f"{t} wall s | {t} +MB" for t in PEER_ORDER)
            + " | coldkeep new_stored MB |",
            "|---|---" + "|---|---" * len(PEER_ORDER) + "|---|",
        )
        prev: dict[str, float] = {}
        for d in days:
            cells = []
            rows = None
            ck_new = None
            for tool in PEER_ORDER:
                r = next((x for x in recs if x["tool"] == tool and x["rep"] == d), None)
                if r is None:
                    cells += ["-", "-"]
                    continue
                rows = r.get("rows", rows)
                total = float((r.get("repo") or {}).get("total", 0))
                cells += [f(r["wall_s"]), mb(total - prev.get(tool, 0.0))]
                prev[tool] = total
                if tool == "coldkeep":
                    ck_new = (r.get("output") or {}).get("new_stored_bytes")
            self.out(f"| {d} | {rows:,} | " + " | ".join(cells) + f" | {mb(ck_new)} |" if rows else "")
        self.out("")
        ck, pb = times.get("coldkeep"), times.get("pgbackrest")
        if ck and pb:
            for key, what in (
                ("first", "first (full) backup"),
                ("later", "daily backup after day 0 (median)"),
            ):
                a, b = ck[key], pb[key]
                if a is not None and b is not None:
                    self.targets.append(
                        (
                            f"backup no slower than pgBackRest: {what}",
                            a <= b,
                            f"wall: coldkeep {a:.2f} s vs pgBackRest {b:.2f} s ({pct(a, b)}); CPU: "
                            f"{ck[key + '_cpu']:.2f} vs {pb[key + '_cpu']:.2f} s ({pct(ck[key + '_cpu'], pb[key + '_cpu'])})",
                        )
                    )
            sc, sp = stored["coldkeep"], stored["pgbackrest"]
            self.targets.append(
                (
                    f"{ndays} daily backups stored in no more than pgBackRest's full + {ndays - 1} incrementals",
                    sc["backup"] <= sp["backup"],
                    f"backups: coldkeep {mb(sc['backup'])} MB vs pgBackRest {mb(sp['backup'])} MB ({pct(sc['backup'], sp['backup'])}); "
                    f"with the WAL archive: {mb(sc['total'])} vs {mb(sp['total'])} MB ({pct(sc['total'], sp['total'])})",
                )
            )

    # --------------------------------------------------------------------------------------------

    def restore(self) -> None:
        recs = self.of("restore")
        if not recs:
            return
        self.out(
            "### Restore to a running server",
            "",
            "Latest backup into an empty directory, then started on a private socket and waited for until "
            "`pg_is_in_recovery()` is false (immediate recovery target: consistency, then promote); the row count "
            "of `conversations` was checked after every restore. coldkeep: `coldkeep pg restore --target-dir DIR "
            "--immediate --start` (one command; `files_s` = writing the files, `replay_s` = start to promoted). "
            "pgBackRest: `restore --type=immediate --target-action=promote --process-max=2` + `pg_ctl start`. "
            "pg_basebackup: `tar -xzf base.tar.gz` + `pg_wal.tar.gz`, then `pg_ctl start`.",
            "",
            "| tool | n | wall s (median) | min–max | files s | start→promoted s | CPU s | machine CPU s | peak RSS MB |",
            "|---|---|---|---|---|---|---|---|---|",
        )
        walls: dict[str, float | None] = {}
        for tool in PEER_ORDER:
            rs = [r for r in recs if r["tool"] == tool and r.get("rc") == 0]
            if not rs:
                continue
            walls[tool] = med([r["wall_s"] for r in rs])
            self.out(
                f"| {tool} | {len(rs)} | {f(walls[tool])} | {span([r['wall_s'] for r in rs])} | "
                f"{f(med([(r.get('output') or {}).get('files_s') for r in rs]))} | "
                f"{f(med([(r.get('output') or {}).get('replay_s') for r in rs]))} | {f(med([r['cpu_s'] for r in rs]))} | "
                f"{f(med([r['machine_cpu_s'] for r in rs]), 1)} | {f(max(r['max_rss_mb'] for r in rs), 0)} |"
            )
        self.out("")
        a, b = walls.get("coldkeep"), walls.get("pgbackrest")
        if a is not None and b is not None:
            self.targets.append(
                (
                    "restore no slower than pgBackRest",
                    a <= b,
                    f"coldkeep {a:.2f} s vs pgBackRest {b:.2f} s ({pct(a, b)})",
                )
            )

    # --------------------------------------------------------------------------------------------

    def tps(self) -> None:
        recs = [r for r in self.of("tps") if r.get("rc") == 0]
        if not recs:
            return
        variants = list(
            dict.fromkeys(r["tool"] for r in sorted(recs, key=lambda r: (r["rep"], r.get("epoch", 0))))
        )
        order = ["noop", "cp", "coldkeep", "coldkeep-async", "pgbackrest-sync", "pgbackrest-async"]
        variants.sort(key=lambda v: order.index(v) if v in order else 99)
        reps = sorted({r["rep"] for r in recs})
        dur = recs[0]["step"]
        self.out(
            f"### WAL archiving under load: `{dur}`",
            "",
            "pgbench's TPC-B-like script on the benchmark database (its pgbench tables), `max_wal_size=64MB`, "
            "`min_wal_size=32MB` (frequent checkpoints: many full-page images, ~1.5-2 segments/s — the peer "
            "benchmark's setting), `archive_timeout=300`. One run per variant per round; rounds alternate the "
            "order. `noop` is `archive_command='/bin/true'` (archiving off). Right after each run: `.ready` files "
            "(backlog), `pg_stat_archiver`; then the time until the backlog is gone.",
            "",
            "| variant | "
            + " | ".join(f"TPS round {i}" for i in reps)
            + " | median TPS | vs noop | .ready at end (max) "
            "| WAL MB/run | archived segs/s during load | failed | drain after load s (max) |",
            "|---|" + "---|" * len(reps) + "---|---|---|---|---|---|---|",
        )
        noop = med([r.get("tps") for r in recs if r["tool"] == "noop"])
        meds: dict[str, float | None] = {}
        ready_max: dict[str, int] = {}
        for v in variants:
            rs = [r for r in recs if r["tool"] == v]
            by_rep = {r["rep"]: r for r in rs}
            meds[v] = med([r.get("tps") for r in rs])
            ready_max[v] = max(int(r.get("ready_at_end") or 0) for r in rs)
            dur_s = float(dur.split("-T")[-1]) if "-T" in dur else 60.0
            self.out(
                f"| {v} | "
                + " | ".join(f(by_rep[i].get("tps"), 0) if i in by_rep else "-" for i in reps)
                + f" | {f(meds[v], 0)} | {pct(meds[v], noop) if v != 'noop' else '—'} | {ready_max[v]} | "
                f"{mb(med([r.get('wal_bytes') for r in rs]), 0)} | "
                f"{f(med([(r.get('archived_at_end') or 0) / dur_s for r in rs]))} | "
                f"{sum(int(r.get('failed_after_drain') or 0) for r in rs)} | "
                f"{f(max(float(r.get('drain_s') or 0) for r in rs))} |"
            )
        self.out("")
        for ck in ("coldkeep", "coldkeep-async"):
            if ck in meds and noop:
                a = meds[ck]
                assert a is not None
                nr = [float(r["tps"]) for r in recs if r["tool"] == "noop" and r.get("tps")]
                noise = (max(nr) - min(nr)) / 2 / noop if len(nr) > 1 else 0.0
                note = (
                    f"; archiving-off TPS itself ranged {min(nr):,.0f}–{max(nr):,.0f} across rounds "
                    f"(±{noise * 100:.0f} %), more than the 5 % being tested: not conclusive"
                    if noise > 0.05
                    else ""
                )
                self.targets.append(
                    (
                        f"median TPS with {ck}'s archive_command{ROLE[ck]} within 5 % of archiving off",
                        (a >= 0.95 * noop) if noise <= 0.05 else None,
                        f"{a:,.0f} vs {noop:,.0f} TPS ({pct(a, noop)}){note}",
                    )
                )
                self.targets.append(
                    (
                        f"no backlog at the end of the load ({ck}{ROLE[ck]})",
                        ready_max[ck] <= 1,
                        f"at most {ready_max[ck]} `.ready` file(s) at the end of any run "
                        "(1 = the segment just completed, being archived)",
                    )
                )

    # --------------------------------------------------------------------------------------------

    def drain(self) -> None:
        recs = [r for r in self.of("drain") if r.get("rc") == 0]
        if not recs:
            return
        self.out(
            "### Backlog drain (maximum archiving rate)",
            "",
            "With `archive_command=''` (paused) a `CREATE TABLE AS` of md5-text rows writes the backlog (the peer "
            "benchmark's generator), then the variant is switched on and the time until no `.ready` file remains "
            "is measured. `cp` neither compresses nor fsyncs; coldkeep (zstd-1 for WAL) and pgBackRest (zstd-3) compress and fsync "
            "every segment.",
            "",
            "| variant | segments | WAL MB | wall s | segments/s | stored MB | ratio | machine CPU s | failed |",
            "|---|---|---|---|---|---|---|---|---|",
        )
        rates: dict[str, float] = {}
        for r in recs:
            rates[r["tool"]] = float(r.get("segs_per_s") or 0)
            stored = r.get("stored_bytes_added")
            seg_bytes = (r.get("backlog_segs") or 0) * 16777216
            self.out(
                f"| {r['tool']} | {r.get('backlog_segs')} | {mb(r.get('wal_bytes'), 0)} | {f(r['wall_s'])} | "
                f"{f(rates[r['tool']], 1)} | {mb(stored)} | {f(seg_bytes / stored, 2) + 'x' if stored else '-'} | "
                f"{f(r['machine_cpu_s'], 1)} | {r.get('failed')} |"
            )
        self.out("")
        for ck in ("coldkeep", "coldkeep-async"):
            if ck in rates and "pgbackrest-async" in rates:
                a, b = rates[ck], rates["pgbackrest-async"]
                self.targets.append(
                    (
                        f"{ck}{ROLE[ck]}: backlog drain at least pgBackRest async's rate (compression and fsync on)",
                        a >= b,
                        f"{ck} {a:.1f} vs pgBackRest async {b:.1f} segments/s ({pct(a, b)})",
                    )
                )

    # --------------------------------------------------------------------------------------------

    def replay(self) -> None:
        def switches(wal: dict[str, Any]) -> str:
            n = int(wal.get("timeline_switches") or 0)
            if not n:
                return ""
            return (
                f"; {n} timeline switch{'es' if n > 1 else ''} on the way: {wal.get('history_archived')} history "
                f"file(s) and {wal.get('partial_archived')} `.partial` segment(s) archived, recovery follows the "
                "latest timeline"
            )

        recs = [r for r in self.of("replay") if r.get("rc") == 0]
        if not recs:
            return
        wal = next((r for r in self.typed("replay_wal")), {})
        self.out(
            "### WAL replay through restore_command",
            "",
            f"A plain base backup (`pg_basebackup -Fp -X none`), then {mb(wal.get('wal_bytes'), 0)} MB of pgbench WAL "
            f"({wal.get('segments_archived')} segments{switches(wal)}) archived by `cp`, coldkeep and pgBackRest at once. Each variant: "
            "a fresh copy of the backup, `recovery.signal` + `restore_command`, `pg_ctl start` until promoted "
            "(recovery to the end of the archive).",
            "",
            "| restore_command | n | segments restored | wall s (median) | min–max | WAL MB/s | segments/s | machine CPU s |",
            "|---|---|---|---|---|---|---|---|",
        )
        walls: dict[str, float] = {}
        for tool in dict.fromkeys(r["tool"] for r in recs):  # first-seen order, one row per variant
            rs = [r for r in recs if r["tool"] == tool]
            n = rs[0].get("segments_restored") or 0
            wall = statistics.median(r["wall_s"] for r in rs)
            walls[tool] = wall
            self.out(
                f"| {tool} (`{rs[0].get('restore_command', '')}`) | {len(rs)} | {n} | {f(wall)} | "
                f"{span([r['wall_s'] for r in rs])} | {f((rs[0].get('wal_bytes') or 0) / 1e6 / wall, 1)} | "
                f"{f(n / wall, 1)} | {f(statistics.median(r['machine_cpu_s'] for r in rs), 1)} |"
            )
        self.out("")
        a, b = walls.get("coldkeep-prefetch"), walls.get("pgbackrest-async")
        if a is not None and b is not None:
            self.targets.append(
                (
                    "replay through `pg restore`'s restore_command no slower than pgBackRest async archive-get",
                    a <= b,
                    f"coldkeep {a:.2f} s vs pgBackRest {b:.2f} s ({pct(a, b)})",
                )
            )

    # --------------------------------------------------------------------------------------------

    def segcost(self) -> None:
        recs = [r for r in self.recs if r.get("workload") == "segcost"]
        if not recs:
            return
        self.out(
            "### Per-segment process cost",
            "",
            "One process per 16 MiB segment, run as `postgres` through `runuser` (as the archiver does), segments "
            "from the replay archive, into a scratch repository / stanza.",
            "",
            "| command | n | wall ms (median) | min–max | CPU ms (median) | serial segments/s |",
            "|---|---|---|---|---|---|",
        )
        for r in recs:
            if r["step"] != "per segment":
                continue
            self.out(
                f"| {r['tool']} | {r['n']} | {f(r['wall_ms_median'], 1)} | {f(r['wall_ms_min'], 1)}–{f(r['wall_ms_max'], 1)} | "
                f"{f(r['cpu_ms_median'], 1)} | {f(r['segs_per_s_serial'], 1)} |"
            )
        imp = next((r for r in recs if r["step"] == "imports"), None)
        if imp:
            parts = ", ".join(f"`{k}` {v:.0f}" for k, v in imp["import_ms"].items())
            self.out(
                "",
                f"`wal-push` imports (`python -X importtime`, median of 5, as postgres): {imp['modules']} modules, "
                f"{imp['import_ms_total']:.0f} ms in total; cumulative ms of selected modules (nested ones are "
                f"included in their importer's figure): {parts}. Not in the list: not imported.",
            )
        self.out("")

    # --------------------------------------------------------------------------------------------

    def load_table(self) -> None:
        stages = self.typed("stage")
        if not stages:
            return
        samples: list[tuple[float, float]] = []
        if self.loadavg and self.loadavg.exists():
            for line in self.loadavg.read_text().splitlines():
                parts = line.split()
                if len(parts) >= 2:
                    samples.append((float(parts[0]), float(parts[1])))
        self.out(
            "### Machine load during the run",
            "",
            "The machine is shared. 1-minute load average sampled every 5 s per stage (our own work is part of "
            'it: ~1-3 during backups and pgbench); "bg CPU s" = whole-machine CPU minus the measured '
            "command's own, summed over the stage's timed steps (PostgreSQL server processes are in it too).",
            "",
            "| stage | minutes | load 1-min mean | max | bg CPU s in timed steps | timed wall s |",
            "|---|---|---|---|---|---|",
        )
        steps = [r for r in self.recs if "wall_s" in r and "epoch" not in r]
        for a, b in itertools.pairwise(stages):
            t0, t1 = a["epoch"], b["epoch"]
            vals = [v for t, v in samples if t0 <= t <= t1]
            # measure.py records have ts (no epoch): match by timestamp string
            import datetime as dt

            def ep(r: Rec) -> float:
                return dt.datetime.strptime(r["ts"], "%Y-%m-%dT%H:%M:%S").timestamp()

            inside = [r for r in steps if t0 <= ep(r) <= t1 + 1]
            self.out(
                f"| {a['stage']} | {(t1 - t0) / 60:.1f} | {f(statistics.mean(vals)) if vals else '-'} | "
                f"{f(max(vals)) if vals else '-'} | {f(sum(r.get('background_cpu_s') or 0 for r in inside), 0)} | "
                f"{f(sum(r['wall_s'] for r in inside), 0)} |"
            )
        self.out("")

    def target_table(self) -> None:
        if not self.targets:
            return
        self.out("### Targets", "", "| target | result | figure (gap) |", "|---|---|---|")
        for name, ok, text in self.targets:
            result = "inconclusive" if ok is None else "**met**" if ok else "**MISSED**"
            self.out(f"| {name} | {result} | {text} |")
        self.out("")

    def render(self) -> str:
        self.header()
        self.backups()
        self.restore()
        self.tps()
        self.drain()
        self.replay()
        self.segcost()
        body = self.lines
        self.lines = []
        self.target_table()
        targets = self.lines
        self.lines = []
        self.load_table()
        return "\n".join(targets + body + self.lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path)
    ap.add_argument("--loadavg", type=Path)
    a = ap.parse_args()
    print(Summary(load(a.results), a.loadavg).render())


if __name__ == "__main__":
    main()
