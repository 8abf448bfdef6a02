"""Conversation archive benchmark: coldkeep vs the spec's script vs a floor, in one run.

    .venv/bin/python bench/bench_conversations.py [--rows 1000000] [--months 12] [--repeats 1]
        [--order random|chronological] [--workdir /tmp/coldkeep-bench-conv] [--json FILE] [--skip spec]

A private PostgreSQL 15 cluster (shared_buffers 1GB, max_wal_size 4GB) gets a template database of
``--rows`` rows over ``--months`` months (bench/conv_load.py, ~500 bytes of text each, ids unrelated to
timestamps by default).  Each measured step runs on a fresh copy of it (CREATE DATABASE … TEMPLATE,
then CHECKPOINT) under GNU ``/usr/bin/time -v``:

* ``spec``   — bench/conv_spec_script.py: fetchall(), gzip.open("at") JSON lines, UPDATE … ANY(ids);
* ``export`` — floor, part 1: ``psql -c "COPY (SELECT …) TO STDOUT" | zstd -3`` (read-only);
* ``mark``   — floor, part 2: one ``UPDATE … SET archived = true, archive_file = … WHERE …``;
* ``coldkeep`` — ``coldkeep conversations archive`` (streamed batches, fsync, ledger transactions,
  the new files stored in a fresh local repository); ``init-schema`` (scan index + ledger) runs
  before, untimed, and its time is reported separately;
* ``coldkeep --purge`` — the same plus re-verifying every batch and deleting the archived rows.

Peak RSS is GNU time's "Maximum resident set size": the largest single process of the command
(the PostgreSQL server's own memory is not in it, for any of the steps).  Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from coldkeep.postgres.cluster import TempCluster, free_port

HERE = Path(__file__).resolve().parent
PY = sys.executable
COLDKEEP = str(Path(sys.executable).parent / "coldkeep")
SEL = (
    "SELECT id, session_id, timestamp, speaker, content, metadata FROM conversations "
    "WHERE timestamp < now() - interval '90 days' AND NOT archived"
)
MARK = (
    "UPDATE conversations SET archived = true, archive_file = 'conversations_' || to_char(timestamp, 'YYYY-MM') "
    "|| '.jsonl.zst' WHERE timestamp < now() - interval '90 days' AND NOT archived"
)


def timed(argv: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``argv`` under /usr/bin/time -v; wall, peak RSS, CPU and stdout."""
    started = time.monotonic()
    load = os.getloadavg()[0]
    proc = subprocess.run(["/usr/bin/time", "-v", *argv], capture_output=True, text=True, env=env)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(
            f"{argv[:3]} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        )
    err = proc.stderr

    def field(name: str) -> float:
        m = re.search(rf"{re.escape(name)}: ([\d.:]+)", err)
        assert m, name
        return float(m.group(1))

    return {
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(field("Maximum resident set size (kbytes)") / 1024, 1),
        "cpu_s": round(field("User time (seconds)") + field("System time (seconds)"), 2),
        "load_before": round(load, 2),
        "stdout": proc.stdout,
    }


class Bench:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.work = Path(a.workdir)
        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        self.cluster = TempCluster(self.work / "pg", port=free_port())
        self.cluster.initdb(checksums=True, extra_conf={"shared_buffers": "1GB", "max_wal_size": "4GB"})
        self.cluster.start()
        self.psql = [
            str(self.cluster.bin_dir / "psql"),
            "-X",
            "-q",
            "-At",
            "-h",
            str(self.cluster.socket_dir),
            "-p",
            str(self.cluster.port),
            "-U",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
        ]

    def sql(self, db: str, query: str) -> str:
        out = subprocess.run([*self.psql, "-d", db, "-c", query], capture_output=True, text=True, check=True)
        return out.stdout.strip()

    def fresh(self, name: str = "run") -> str:
        self.sql("postgres", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        self.sql("postgres", f"CREATE DATABASE {name} TEMPLATE tmpl STRATEGY FILE_COPY")
        self.sql("postgres", "CHECKPOINT")
        return name

    def load(self) -> dict[str, Any]:
        self.sql("postgres", "CREATE DATABASE tmpl")
        started = time.monotonic()
        subprocess.run(
            [
                PY,
                str(HERE / "conv_load.py"),
                self.cluster.dsn_for("tmpl"),
                "--rows",
                str(self.a.rows),
                "--months",
                str(self.a.months),
                "--order",
                self.a.order,
            ],
            check=True,
        )
        self.sql("postgres", "CHECKPOINT")
        eligible = int(
            self.sql(
                "tmpl", "SELECT count(*) FROM conversations WHERE timestamp < now() - interval '90 days'"
            )
        )
        copy = subprocess.Popen(
            [*self.psql, "-d", "tmpl", "-c", f"COPY ({SEL}) TO STDOUT"], stdout=subprocess.PIPE
        )
        assert copy.stdout is not None
        size = 0
        while chunk := copy.stdout.read(1 << 20):
            size += len(chunk)
        copy.wait()
        return {
            "rows": self.a.rows,
            "eligible": eligible,
            "copy_text_bytes": size,
            "load_s": round(time.monotonic() - started, 1),
        }

    # -- the steps -------------------------------------------------------------------------------

    def spec(self) -> dict[str, Any]:
        db = self.fresh()
        out = self.work / "spec-out"
        shutil.rmtree(out, ignore_errors=True)
        r = timed([PY, str(HERE / "conv_spec_script.py"), self.cluster.dsn_for(db), str(out)])
        r["detail"] = json.loads(r.pop("stdout").strip().splitlines()[-1])
        r["rows"] = r["detail"]["rows"]
        r["output_bytes"] = sum(p.stat().st_size for p in out.glob("*"))
        return r

    def export(self) -> dict[str, Any]:
        db = self.fresh()
        out = self.work / "floor.tsv.zst"
        cmd = " ".join([*(f"'{x}'" for x in self.psql), "-d", db, "-c", f'"COPY ({SEL}) TO STDOUT"'])
        r = timed(["bash", "-o", "pipefail", "-c", f"{cmd} | zstd -3 -q -f -o {out}"])
        r.pop("stdout")
        r["output_bytes"] = out.stat().st_size
        return r

    def mark(self) -> dict[str, Any]:
        db = self.fresh()
        r = timed([*self.psql, "-d", db, "-c", MARK])
        r.pop("stdout")
        r["rows"] = int(self.sql(db, "SELECT count(*) FROM conversations WHERE archived"))
        return r

    def coldkeep(self, purge: bool = False) -> dict[str, Any]:
        db = self.fresh()
        site = self.work / "coldkeep"
        shutil.rmtree(site, ignore_errors=True)
        site.mkdir()
        cfg = site / "coldkeep.toml"
        cfg.write_text(
            f'[repository]\nurl = "file://{site}/repo"\nowner = "{os.environ.get("USER", "root")}"\n'
            f'[postgres]\ndsn = "{self.cluster.dsn_for(db)}"\n'
            f'[conversations]\narchive_dir = "{site}/archive"\n'
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("COLDKEEP_")}
        env["COLDKEEP_CACHE_DIR"] = str(site / "cache")
        subprocess.run(
            [COLDKEEP, "--config", str(cfg), "repo", "init"], check=True, env=env, capture_output=True
        )
        started = time.monotonic()
        subprocess.run(
            [COLDKEEP, "--config", str(cfg), "conversations", "init-schema"],
            check=True,
            env=env,
            capture_output=True,
        )
        init_s = round(time.monotonic() - started, 2)
        self.sql("postgres", "CHECKPOINT")
        args = [
            COLDKEEP,
            "--config",
            str(cfg),
            "--json",
            "conversations",
            "archive",
            *(["--purge"] if purge else []),
        ]
        r = timed(args, env=env)
        detail = json.loads(r.pop("stdout"))
        r["rows"] = detail["rows_archived"]
        r["output_bytes"] = detail["bytes_written"]
        r["detail"] = {
            "files": detail["files"],
            "phases_s": detail["phases_s"],
            "init_schema_s": init_s,
            "purged": (detail.get("purge") or {}).get("rows_deleted"),
        }
        started = time.monotonic()
        verify = subprocess.run(
            [COLDKEEP, "--config", str(cfg), "--json", "conversations", "verify"],
            env=env,
            capture_output=True,
            text=True,
        )
        r["verify_ok"] = verify.returncode == 0
        r["detail"]["verify_s"] = round(time.monotonic() - started, 2)
        return r

    def close(self) -> None:
        self.cluster.remove()
        if not self.a.keep:
            shutil.rmtree(self.work, ignore_errors=True)


def table(info: dict[str, Any], results: dict[str, list[dict[str, Any]]]) -> str:
    eligible = info["eligible"]

    def best(name: str) -> dict[str, Any] | None:
        runs = results.get(name) or []
        return min(runs, key=lambda r: r["wall_s"]) if runs else None

    lines = [
        f"{info['rows']:,} rows over {info['months']} months ({info['order']} order); {eligible:,} older than 90 days "
        f"({info['copy_text_bytes'] / 1e6:.0f} MB as COPY text). Best of {info['repeats']} run(s); "
        f"{platform.machine()}, {os.cpu_count()} CPUs.",
        "",
        "| step | wall s | rows/s | peak RSS MB | CPU s (client) | output MB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    labels = {
        "spec": "spec script (fetchall, gzip append, UPDATE … ANY)",
        "export": "floor: COPY … TO STDOUT \\| zstd -3",
        "mark": "floor: one UPDATE … SET archived = true",
        "coldkeep": "**coldkeep conversations archive**",
        "coldkeep_purge": "coldkeep conversations archive --purge",
    }
    for name, label in labels.items():
        r = best(name)
        if r is None:
            continue
        out = f"{r['output_bytes'] / 1e6:.0f}" if r.get("output_bytes") else "—"
        lines.append(
            f"| {label} | {r['wall_s']:.1f} | {eligible / r['wall_s']:,.0f} | {r['peak_rss_mb']:.0f} | "
            f"{r['cpu_s']:.1f} | {out} |"
        )
    e, m, c, s = best("export"), best("mark"), best("coldkeep"), best("spec")
    if e and m:
        floor = e["wall_s"] + m["wall_s"]
        lines.append(f"| floor total (export + mark) | {floor:.1f} | {eligible / floor:,.0f} | — | — | — |")
        if c:
            lines += ["", f"coldkeep / floor: **{c['wall_s'] / floor:.2f} ×** wall (target ≤ 1.5 ×)."]
    if c and s:
        lines.append(
            f"coldkeep rows/s / spec script rows/s: **{s['wall_s'] / c['wall_s']:.1f} ×** (target ≥ 3 ×)."
        )
    if c:
        lines.append(
            f"coldkeep peak RSS: **{c['peak_rss_mb']:.0f} MB** (target < 150 MB); phases "
            f"{c['detail']['phases_s']}; init-schema (index + ledger, untimed) {c['detail']['init_schema_s']} s; "
            f"{c['detail']['files']} batch files; verify {'ok' if c['verify_ok'] else 'FAILED'}."
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--months", type=int, default=12)
    ap.add_argument("--order", choices=["random", "chronological"], default="random")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--workdir", default="/tmp/coldkeep-bench-conv")
    ap.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=["spec", "export", "mark", "coldkeep", "coldkeep_purge"],
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args()
    if not Path("/usr/bin/time").exists():
        raise SystemExit("GNU time is needed: apt-get install -y time")
    bench = Bench(a)
    try:
        info = bench.load() | {"months": a.months, "order": a.order, "repeats": a.repeats}
        print(f"# loaded: {info}", file=sys.stderr)
        results: dict[str, list[dict[str, Any]]] = {}
        steps = {
            "export": bench.export,
            "mark": bench.mark,
            "coldkeep": bench.coldkeep,
            "spec": bench.spec,
            "coldkeep_purge": lambda: bench.coldkeep(purge=True),
        }
        for rep in range(a.repeats):
            for name, step in steps.items():
                if name in a.skip:
                    continue
                r = step()
                results.setdefault(name, []).append(r)
                print(f"# rep {rep + 1} {name}: {json.dumps(r)}", file=sys.stderr)
        report = table(info, results)
        print(report)
        if a.json:
            a.json.write_text(json.dumps({"info": info, "results": results}, indent=2) + "\n")
    finally:
        bench.close()


if __name__ == "__main__":
    os.umask(0o022)
    main()
