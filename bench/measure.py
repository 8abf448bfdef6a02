"""Run one command under GNU ``/usr/bin/time -v`` and append a JSON record to a results file.

    python bench/measure.py --out bench/results/repository.jsonl --workload checkpoints \\
        --tool restic --step "backup ckpt-1" [--rep 1] [--stored PATH ...] [--bytes-in N] \\
        [--stdout FILE] [--json-stdout] [--set KEY=VALUE ...] -- command args...

Fields of the record:

``wall_s``       elapsed wall-clock time (GNU time)
``cpu_s``        user + system CPU of the command and every child it waited for (``user_s``, ``sys_s``)
``max_rss_mb``   GNU time's "Maximum resident set size": the largest single process of the tree, MiB
``stored_bytes`` apparent size of every file under the ``--stored`` paths after the command
``bytes_in``     logical input bytes, if given (for throughput)
``output``       the command's stdout parsed as JSON, with ``--json-stdout`` (coldkeep ``--json``)
``machine_cpu_s``  busy CPU of the whole machine during the command (``/proc/stat``), and
``background_cpu_s`` = machine_cpu_s - cpu_s: CPU that other processes took meanwhile. On a shared
                 2-vCPU machine a step with background_cpu_s well above 0 was slowed by someone else.
``quiet_wait_s`` how long ``--quiet-wait`` waited for the machine to go idle before starting

Exits with the command's exit status (after recording it), so a failing step stops a ``set -e`` script.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TIME = "/usr/bin/time"


def machine_busy_s() -> float:
    """Busy CPU seconds of the whole machine since boot (user nice system irq softirq steal)."""
    with open("/proc/stat") as fh:
        v = [int(x) for x in fh.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(limit_s: float, busy_cpus: float = 0.25, window_s: float = 1.0) -> float:
    """Wait (at most ``limit_s``) until the machine used < ``busy_cpus`` CPUs over ``window_s``."""
    t0 = time.monotonic()
    while True:
        b0 = machine_busy_s()
        time.sleep(window_s)
        if (machine_busy_s() - b0) / window_s < busy_cpus or time.monotonic() - t0 >= limit_s:
            return time.monotonic() - t0


def apparent_bytes(paths: list[str]) -> int:
    total = 0
    for top in paths:
        p = Path(top)
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_size
            continue
        for root, _dirs, files in os.walk(top):
            for name in files:
                try:
                    st = os.lstat(os.path.join(root, name))
                except FileNotFoundError:
                    continue
                if not os.path.islink(os.path.join(root, name)):
                    total += st.st_size
    return total


def parse_time_v(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().rpartition(": ")
        if sep:
            out[key] = value.strip()
    return out


def seconds(clock: str) -> float:
    total = 0.0
    for part in clock.split(":"):
        total = total * 60 + float(part)
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="JSON-lines file to append to")
    ap.add_argument("--workload", required=True)
    ap.add_argument("--tool", required=True)
    ap.add_argument("--step", required=True)
    ap.add_argument("--rep", type=int, default=1)
    ap.add_argument("--stored", action="append", default=[], metavar="PATH")
    ap.add_argument("--bytes-in", type=int)
    ap.add_argument("--stdout", metavar="FILE", help="write the command's stdout here")
    ap.add_argument("--json-stdout", action="store_true", help="parse stdout as JSON into 'output'")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra fields")
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=0,
        metavar="S",
        help="first wait up to S seconds for the machine to be idle (other users' load)",
    )
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        ap.error("no command given (put it after --)")
    if not os.access(TIME, os.X_OK):
        ap.error(f"{TIME} is missing: apt-get install -y time")

    fd, time_file = tempfile.mkstemp(prefix="measure-", suffix=".txt")
    os.close(fd)
    capture = a.stdout or a.json_stdout
    waited = wait_for_quiet(a.quiet_wait) if a.quiet_wait > 0 else 0.0
    busy0 = machine_busy_s()
    t0 = time.monotonic()
    proc = subprocess.run([TIME, "-v", "-o", time_file, *cmd], stdout=subprocess.PIPE if capture else None)
    elapsed = time.monotonic() - t0
    machine_cpu = machine_busy_s() - busy0
    tv = parse_time_v(Path(time_file).read_text())
    os.unlink(time_file)
    stdout = proc.stdout.decode(errors="replace") if capture and proc.stdout is not None else ""
    if a.stdout:
        Path(a.stdout).write_text(stdout)

    user = float(tv.get("User time (seconds)", 0))
    system = float(tv.get("System time (seconds)", 0))
    wall = tv.get("Elapsed (wall clock) time (h:mm:ss or m:ss)")
    rec: dict[str, Any] = {
        "workload": a.workload,
        "tool": a.tool,
        "step": a.step,
        "rep": a.rep,
        "rc": proc.returncode,
        "wall_s": round(seconds(wall) if wall else elapsed, 3),
        "wall_monotonic_s": round(elapsed, 3),
        "user_s": user,
        "sys_s": system,
        "cpu_s": round(user + system, 3),
        "machine_cpu_s": round(machine_cpu, 2),
        "background_cpu_s": round(max(0.0, machine_cpu - user - system), 2),
        "quiet_wait_s": round(waited, 1),
        "max_rss_mb": round(int(tv.get("Maximum resident set size (kbytes)", 0)) / 1024, 1),
        "stored_bytes": apparent_bytes(a.stored) if a.stored else None,
        "bytes_in": a.bytes_in,
        "cmd": " ".join(cmd)[:400],
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if a.json_stdout and proc.returncode == 0:
        try:
            rec["output"] = json.loads(stdout)
        except ValueError:
            rec["output_error"] = "stdout was not JSON"
    for kv in a.set:
        key, _, value = kv.partition("=")
        try:
            rec[key] = json.loads(value)
        except ValueError:
            rec[key] = value
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "a") as fh:
        fh.write(json.dumps(rec) + "\n")
    stored = f"{rec['stored_bytes'] / 1e6:.1f} MB" if rec["stored_bytes"] is not None else "-"
    print(
        f"[measure] {a.workload} | {a.tool} | {a.step} | rep {a.rep} | rc={proc.returncode} "
        f"wall={rec['wall_s']:.2f}s cpu={rec['cpu_s']:.2f}s bg={rec['background_cpu_s']:.1f}s rss={rec['max_rss_mb']:.0f}MB stored={stored}",
        file=sys.stderr,
        flush=True,
    )
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
