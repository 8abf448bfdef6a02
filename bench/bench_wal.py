#!/usr/bin/env python3
"""Per-segment cost of `coldkeep pg wal-push` / `pg wal-fetch` (one process per 16 MiB segment).

PostgreSQL starts one archive_command / restore_command process per WAL segment, so interpreter
start-up and imports are paid per segment.  This measures, on real segments written by a throwaway
PostgreSQL 15 cluster (md5-text rows, like the peer benchmark's backlog):

* ``push``: the lean path (``cli/entry.py`` -> ``cli/walfast.py``, see ``coldkeep/lean``: no click,
  no rich, no pydantic, no cryptography for an unencrypted repository);
* ``push-click``: the same through the click command (``COLDKEEP_WAL_FASTPATH=0``);
* ``push-before`` (with ``--before-rev REV``): the click command with ``cli/context.py``,
  ``cli/output.py`` and ``repository/crypto.py`` as in git revision REV (``8347b9e``: eager
  pydantic / rich / cryptography imports) — the cost before the import trimming;
* ``push-encrypted``: the lean path into an encrypted repository (one Argon2id run per process);
* ``fetch``: ``pg wal-fetch`` of the same segments.

Each variant pushes every segment into a fresh object (the archived copy is deleted between
runs).  Prints a markdown table: median / min / max wall ms, median user+sys CPU ms per segment,
and segments/s.  Run as root or as a user that can run initdb: ``.venv/bin/python bench/bench_wal.py``.
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
COLDKEEP = str(Path(sys.executable).parent / "coldkeep")
TRIMMED = ["src/coldkeep/cli/context.py", "src/coldkeep/cli/output.py", "src/coldkeep/repository/crypto.py"]


def run_timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall s, user+sys CPU s of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def before_tree(work: Path, rev: str) -> Path | None:
    """A copy of src/ with the import-trimmed files as in ``rev`` (None if unchanged/unknown)."""
    overlay = work / "before-src"
    shutil.copytree(ROOT / "src", overlay)
    changed = False
    for rel in TRIMMED:
        proc = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{rev}:{rel}"], capture_output=True, text=True
        )
        if proc.returncode != 0:
            return None
        target = overlay / Path(rel).relative_to("src")
        if target.read_text() != proc.stdout:
            target.write_text(proc.stdout)
            changed = True
    return overlay if changed else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--segments", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="pushes of every segment per variant")
    parser.add_argument(
        "--before-rev", default="", help="git revision for the push-before variant (e.g. 8347b9e)"
    )
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT / "src"))
    from coldkeep.postgres.archive import record_system_identifier
    from coldkeep.postgres.cluster import TempCluster
    from coldkeep.repository.repository import Repository
    from coldkeep.storage import open_backend

    work = Path(tempfile.mkdtemp(prefix="coldkeep-benchwal-"))
    os.chmod(work, 0o755)
    cluster = TempCluster(work / "pg")
    try:
        cluster.initdb()
        cluster.start()
        cluster.sql("CREATE TABLE t (id bigserial, v text)")
        names = []
        for _ in range(args.segments):
            cluster.sql(
                "INSERT INTO t (v) SELECT md5(g::text) || md5((g*3)::text) FROM generate_series(1, 120000) g"
            )
            lsn = cluster.sql("SELECT pg_switch_wal()")[0][0]
            names.append(str(cluster.sql(f"SELECT pg_walfile_name('{lsn}')")[0][0]))
        sysid = int(cluster.sql("SELECT system_identifier FROM pg_control_system()")[0][0])
        segdir = work / "segments"
        segdir.mkdir()
        for name in names:
            shutil.copy(cluster.data_dir / "pg_wal" / name, segdir / name)
        cluster.stop()

        def make_repo(tag: str, password: str = "") -> tuple[Path, Path]:
            repo_dir = work / f"repo-{tag}"
            backend = open_backend(f"file://{repo_dir}", create=True)
            repo = Repository.init(backend, passphrase=password or None)
            record_system_identifier(repo, sysid)
            repo.close()
            config = work / f"{tag}.toml"
            lines = ["[repository]", f'url = "file://{repo_dir}"', 'owner = "root"']
            if password:
                pw = work / f"{tag}.pw"
                pw.write_text(password)
                lines.append(f'password_file = "{pw}"')
            config.write_text("\n".join(lines) + "\n")
            return config, repo_dir

        env = {k: v for k, v in os.environ.items() if not k.startswith("COLDKEEP_")}
        variants: list[tuple[str, list[str], dict[str, str], str]] = []
        plain, plain_dir = make_repo("plain")
        enc, enc_dir = make_repo("enc", password="bench passphrase")
        variants.append(("push", [COLDKEEP, "--config", str(plain), "pg", "wal-push"], env, str(plain_dir)))
        variants.append(("push-click", [COLDKEEP, "--config", str(plain), "pg", "wal-push"],
                         {**env, "COLDKEEP_WAL_FASTPATH": "0"}, str(plain_dir)))  # fmt: skip
        overlay = before_tree(work, args.before_rev) if args.before_rev else None
        if overlay is not None:
            launcher = [
                sys.executable,
                "-c",
                "import sys; from coldkeep.cli.app import main; sys.argv[0]='coldkeep'; main()",
            ]
            variants.append(("push-before", [*launcher, "--config", str(plain), "pg", "wal-push"],
                             {**env, "COLDKEEP_WAL_FASTPATH": "0", "PYTHONPATH": str(overlay)}, str(plain_dir)))  # fmt: skip
        variants.append(
            ("push-encrypted", [COLDKEEP, "--config", str(enc), "pg", "wal-push"], env, str(enc_dir))
        )

        rows = []
        for label, argv, venv, repo_dir in variants:
            walls, cpus = [], []
            for _ in range(args.rounds):
                for name in names:
                    Path(repo_dir, "named", "wal", name[:8], name).unlink(missing_ok=True)
                    wall, cpu = run_timed([*argv, str(segdir / name)], venv)
                    walls.append(wall)
                    cpus.append(cpu)
            rows.append((label, walls, cpus))
        out = work / "fetched"
        walls, cpus = [], []
        for _ in range(args.rounds):
            for name in names:
                wall, cpu = run_timed(
                    [COLDKEEP, "--config", str(plain), "pg", "wal-fetch", name, str(out)], env
                )
                walls.append(wall)
                cpus.append(cpu)
        rows.append(("fetch", walls, cpus))
        raw = sum((segdir / n).stat().st_size for n in names)
        stored = sum(p.stat().st_size for p in (plain_dir / "named" / "wal").rglob("*") if p.is_file())
        print(f"{len(names)} segments x {args.rounds} rounds, {raw / 1e6:.0f} MB of WAL, stored {stored / 1e6:.1f} MB "
              f"({raw / max(stored, 1):.1f}x)\n")  # fmt: skip
        print("| variant | n | wall ms median | wall ms min-max | CPU ms median | segments/s |")
        print("|---|---|---|---|---|---|")
        for label, walls, cpus in rows:
            med = statistics.median(walls)
            print(f"| {label} | {len(walls)} | {med * 1000:.0f} | {min(walls) * 1000:.0f}-{max(walls) * 1000:.0f} "
                  f"| {statistics.median(cpus) * 1000:.0f} | {1 / med:.1f} |")  # fmt: skip
    finally:
        cluster.remove()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
