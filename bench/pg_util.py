#!/usr/bin/env python3
"""Small helpers for bench/bench_pg.sh (standard library only, so any Python 3.11 runs it).

pg_util.py record OUT key=value ...        append one JSON record (values parsed as JSON if they parse)
pg_util.py extra OUT key=value ...         add fields to the LAST record of OUT
pg_util.py get OUT dotted.key              print a field of the last record (e.g. output.port)
pg_util.py runner DIR SRC SITE             build a coldkeep runnable by the postgres OS user
pg_util.py bytes PATH [PATH...]            apparent size of every file under the paths
pg_util.py ckrepo REPO                     coldkeep repository bytes split into wal / backup parts (JSON)
pg_util.py tps FILE                        TPS from pgbench output
pg_util.py segcost ...                     per-segment cost of the archive / restore commands
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _value(v: str) -> object:
    try:
        return json.loads(v)
    except ValueError:
        return v


def _kv(items: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for item in items:
        k, _, v = item.partition("=")
        out[k] = _value(v)
    return out


def record(out: str, items: list[str]) -> None:
    rec = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S"), "epoch": round(time.time(), 1)} | _kv(items)
    with open(out, "a") as fh:
        fh.write(json.dumps(rec) + "\n")


def extra(out: str, items: list[str]) -> None:
    lines = [line for line in Path(out).read_text().splitlines() if line.strip()]
    rec = json.loads(lines[-1])
    rec.update(_kv(items))
    lines[-1] = json.dumps(rec)
    Path(out).write_text("\n".join(lines) + "\n")


def get(out: str, key: str) -> None:
    lines = [line for line in Path(out).read_text().splitlines() if line.strip()]
    cur: object = json.loads(lines[-1])
    for part in key.split("."):
        cur = cur[part] if isinstance(cur, dict) else None  # type: ignore[index]
    print("" if cur is None else cur)


def apparent(paths: list[str]) -> int:
    total = 0
    for top in paths:
        if os.path.isfile(top):
            total += os.lstat(top).st_size
            continue
        for root, _dirs, files in os.walk(top):
            for name in files:
                try:
                    st = os.lstat(os.path.join(root, name))
                except FileNotFoundError:
                    continue
                total += st.st_size
    return total


def ckrepo(repo: str) -> None:
    wal = apparent([os.path.join(repo, "named")])
    total = apparent([repo])
    print(json.dumps({"total": total, "wal": wal, "backup": total - wal}))


def tps(path: str) -> None:
    for line in Path(path).read_text().splitlines():
        if line.startswith("tps = ") and "without" in line:
            print(line.split()[2])
            return
    print("")


def runner(dest: str, src: str, site: str) -> None:
    """A coldkeep the postgres OS user can run: a venv of the system python3.11 whose own
    site-packages hold a snapshot of ``src/coldkeep`` (so edits made during the benchmark do not
    leak in) and a .pth adding the project venv's site-packages (world-readable) for dependencies.
    The project venv's interpreter (pyenv under /root, mode 0700) is not runnable by postgres."""
    d = Path(dest)
    shutil.rmtree(d, ignore_errors=True)
    system_python = shutil.which(f"python3.{sys.version_info.minor}", path="/usr/bin:/usr/local/bin")
    if not system_python:
        raise SystemExit("no system python3.x to build the runner from")
    subprocess.run([system_python, "-m", "venv", "--without-pip", str(d)], check=True)
    purelib = subprocess.run([str(d / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    shutil.copytree(Path(src) / "coldkeep", Path(purelib) / "coldkeep",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    Path(purelib, "zz-project-venv.pth").write_text(f"import site; site.addsitedir({site!r})\n")
    script = d / "bin" / "coldkeep"
    script.write_text(
        f"#!{d / 'bin' / 'python'}\nimport sys\nfrom coldkeep.cli.entry import main\nsys.exit(main())\n"
    )
    script.chmod(0o755)
    # byte-compile as root now: postgres cannot write __pycache__ here, and should not pay for it
    subprocess.run(
        [str(d / "bin" / "python"), "-m", "compileall", "-q", str(Path(purelib) / "coldkeep")], check=True
    )
    subprocess.run(["chmod", "-R", "a+rX", str(d)], check=True)
    print(script)


# ------------------------------------------------------------------------------------------------
# per-segment cost


def _timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd="/")
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stderr


KEY_MODULES = (
    "coldkeep.cli.app",
    "click",
    "logging",
    "coldkeep.lean",
    "coldkeep.cli.walfast",
    "coldkeep.postgres.archive",
    "coldkeep.repository.repository",
    "coldkeep.repository.crypto",
    "secrets",
    "socket",
    "concurrent.futures",
    "sqlite3",
    "pyfastcdc",
    "zstandard",
    "blake3",
    "cryptography",
    "rich",
    "pydantic",
)


def _importtime(stderr: str) -> tuple[float, dict[str, float]]:
    """(total ms of top-level imports, {module: cumulative ms}) from ``-X importtime`` output."""
    cum: dict[str, float] = {}
    total = 0.0
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _self_us, cum_us, raw = line[len("import time:") :].split("|")
        name = raw.rstrip()
        if len(name) - len(name.lstrip()) == 1:  # top level: "| name"; nested ones are indented further
            total += int(cum_us) / 1000
        cum.setdefault(name.strip(), int(cum_us) / 1000)
    return total, cum


def segcost(a: list[str]) -> None:
    """segcost OUT SEGDIR CK CKCFG PGBR_CONF STANZA K

    Pushes/fetches K real segments one process at a time, as the postgres OS user (what the
    archiver does), into a scratch coldkeep repository / pgBackRest stanza, and records wall and
    CPU per segment; plus interpreter start-up and the import profile of ``wal-push``."""
    out, segdir, ck, ckcfg, pgbr_conf, stanza, k = a[:7]
    segs = sorted(p for p in Path(segdir).iterdir() if len(p.name) == 24)[: int(k)]
    if not segs:
        raise SystemExit(f"no segments in {segdir}")
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}
    as_pg = ["runuser", "-u", "postgres", "--"]
    py = str(Path(ck).parent / "python")
    fetch_dir = Path(segdir).parent / "segcost-fetch"
    shutil.rmtree(fetch_dir, ignore_errors=True)
    fetch_dir.mkdir()
    shutil.chown(fetch_dir, "postgres", "postgres")
    variants: list[tuple[str, list[list[str]]]] = [
        ("python3.11 -c pass (runner interpreter)", [[py, "-c", "pass"] for _ in segs]),
        ("runuser -u postgres -- /bin/true", [["/bin/true"] for _ in segs]),
        ("coldkeep pg wal-push", [[ck, "--config", ckcfg, "pg", "wal-push", str(s)] for s in segs]),
        (
            "coldkeep pg wal-fetch",
            [[ck, "--config", ckcfg, "pg", "wal-fetch", s.name, str(fetch_dir / s.name)] for s in segs],
        ),
        (
            "pgbackrest archive-push (sync)",
            [
                ["pgbackrest", f"--config={pgbr_conf}", f"--stanza={stanza}", "archive-push", str(s)]
                for s in segs
            ],
        ),
        (
            "pgbackrest archive-get (sync)",
            [
                [
                    "pgbackrest",
                    f"--config={pgbr_conf}",
                    f"--stanza={stanza}",
                    "archive-get",
                    s.name,
                    str(fetch_dir / ("g" + s.name)),
                ]
                for s in segs
            ],
        ),
    ]
    for name, argvs in variants:
        walls, cpus = [], []
        for argv in argvs:
            w, c, _ = _timed(as_pg + argv, env)
            walls.append(w)
            cpus.append(c)
        rec = {"workload": "segcost", "tool": name, "step": "per segment", "n": len(walls),
               "wall_ms_median": round(statistics.median(walls) * 1000, 1),
               "wall_ms_min": round(min(walls) * 1000, 1), "wall_ms_max": round(max(walls) * 1000, 1),
               "cpu_ms_median": round(statistics.median(cpus) * 1000, 1),
               "segs_per_s_serial": round(len(walls) / sum(walls), 2)}  # fmt: skip
        record_doc(out, rec)
        print(
            f"[segcost] {name}: wall {rec['wall_ms_median']} ms, cpu {rec['cpu_ms_median']} ms",
            file=sys.stderr,
        )
    # import profile of wal-push (median of 5 runs; a segment already archived: start-up, imports,
    # one read and the duplicate check — the import table is what matters here)
    totals: list[float] = []
    per_mod: dict[str, list[float]] = {}
    mods: set[str] = set()
    for _ in range(5):
        _, _, err = _timed(
            [*as_pg, py, "-X", "importtime", ck, "--config", ckcfg, "pg", "wal-push", str(segs[0])], env
        )
        total, cum = _importtime(err)
        totals.append(total)
        mods |= set(cum)
        for m in KEY_MODULES:
            if m in cum:
                per_mod.setdefault(m, []).append(cum[m])
    record_doc(out, {"workload": "segcost", "tool": "coldkeep pg wal-push", "step": "imports",
                     "import_ms_total": round(statistics.median(totals), 1), "modules": len(mods),
                     "import_ms": {m: round(statistics.median(v), 1) for m, v in per_mod.items()}})  # fmt: skip
    shutil.rmtree(fetch_dir, ignore_errors=True)


def record_doc(out: str, doc: dict[str, object]) -> None:
    doc = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S"), "epoch": round(time.time(), 1)} | doc
    with open(out, "a") as fh:
        fh.write(json.dumps(doc) + "\n")


def main() -> None:
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "record":
        record(args[0], args[1:])
    elif cmd == "extra":
        extra(args[0], args[1:])
    elif cmd == "get":
        get(args[0], args[1])
    elif cmd == "runner":
        runner(*args)
    elif cmd == "bytes":
        print(apparent(args))
    elif cmd == "ckrepo":
        ckrepo(args[0])
    elif cmd == "tps":
        tps(args[0])
    elif cmd == "segcost":
        segcost(args)
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
