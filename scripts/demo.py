"""`make demo`: an end-to-end tour of coldkeep on a throwaway PostgreSQL cluster and sample data.

Everything happens under ./demo-run (wiped at the start); the cluster listens on a private unix
socket only and is stopped at the end, whatever happens.  Each step runs the real `coldkeep`
command and checks what it printed; the demo fails loudly if a step does not do what it says.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "demo-run"
COLDKEEP = str(Path(sys.executable).parent / "coldkeep")


def step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m", flush=True)


def ck(*args: str, expect: int = 0, show: bool = True) -> str:
    cmd = [COLDKEEP, "--config", str(RUN / "coldkeep.toml"), *args]
    print("$ coldkeep " + " ".join(args), flush=True)
    env = dict(os.environ, COLDKEEP_CACHE_DIR=str(RUN / "cache"))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if show and proc.stdout.strip():
        out = proc.stdout.strip()
        print(out if len(out) < 3000 else out[:3000] + "\n…")
    if proc.stderr.strip():
        print(proc.stderr.strip())
    if proc.returncode != expect:
        raise SystemExit(
            f"demo failed: `coldkeep {' '.join(args)}` exited {proc.returncode}, expected {expect}"
        )
    return proc.stdout


def make_dataset(root: Path) -> None:
    """50 apps (40 train / 10 holdout), a few files each, deterministic."""
    import random

    rng = random.Random(12)
    for i in range(50):
        split = "train" if i < 40 else "holdout"
        app = root / split / f"app{i:02d}"
        (app / "src").mkdir(parents=True)
        (app / "metadata.json").write_text(json.dumps({"name": f"app{i:02d}", "split": split}))
        for j in range(4):
            words = " ".join(
                rng.choice(["def", "class", "return", "import", "self", "data", "x", "y"])
                for _ in range(3000)
            )
            (app / "src" / f"module{j}.py").write_text(words)


def set_config(section: str, **values: object) -> None:
    """Set ``key = value`` lines in ``[section]`` of the demo config (the section `coldkeep init` wrote)."""
    path = RUN / "coldkeep.toml"
    lines = path.read_text().splitlines()
    start = lines.index(f"[{section}]")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
    for key, value in values.items():
        text = f"{key} = {json.dumps(value)}"
        at = next((i for i in range(start + 1, end) if lines[i].split("=")[0].strip() == key), None)
        if at is None:
            lines.insert(start + 1, text)
            end += 1
        else:
            lines[at] = text
    path.write_text("\n".join(lines) + "\n")


def make_checkpoint(path: Path, seed: int, *, shards: int = 2) -> None:
    """A small safetensors checkpoint (float16 shards + index + config), as a trainer would leave it."""
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    weight_map: dict[str, str] = {}
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        tensors = {
            f"layers.{s}.{k}.weight": rng.standard_normal((256, 256)).astype(np.float16) for k in range(8)
        }
        save_file(tensors, str(path / name))
        weight_map.update(dict.fromkeys(tensors, name))
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (path / "config.json").write_text(json.dumps({"model_type": "demo", "hidden_size": 256}))


def sha_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def runnable_coldkeep(os_user: str) -> str:
    """A coldkeep executable the PostgreSQL OS user can run (archive_command runs as that user)."""
    from coldkeep.postgres.runnable import build_runnable

    path = build_runnable(RUN / "pg-runner", os_user)
    if path is None:
        raise SystemExit(
            f"demo failed: {os_user} cannot run {COLDKEEP} and there is no system Python to copy onto"
        )
    return path


def pg_section(cluster: object) -> None:
    from coldkeep.postgres.cluster import TempCluster

    assert isinstance(cluster, TempCluster)
    step("PostgreSQL: WAL archiving through coldkeep (archive_command runs as the postgres OS user)")
    executable = runnable_coldkeep(cluster.os_user)
    os.environ["COLDKEEP_EXECUTABLE"] = executable
    ck("pg", "setup", "--apply", "--coldkeep-path", executable)
    cluster.stop()
    cluster.start()
    ck("pg", "check")

    step("two base backups: the second stores only changed pages")
    first = json.loads(ck("--json", "pg", "backup", "--label", "nightly", show=False))
    print(
        f"  backup {first['short_id']}: {first['logical_bytes']} bytes, {first['new_stored_bytes']} new stored"
    )
    cluster.sql("UPDATE conversations SET content = content || '!' WHERE id % 50 = 0", "iccm")
    second = json.loads(ck("--json", "pg", "backup", show=False))
    print(
        f"  backup {second['short_id']}: {second['logical_bytes']} bytes, {second['new_stored_bytes']} new stored"
    )
    assert second["new_stored_bytes"] < first["new_stored_bytes"] / 3, (first, second)
    ck("pg", "verify", "--all")

    step("the weekly restore test, on a private copy (the live server is untouched)")
    ck("pg", "restore-test")
    ck("pg", "backups")

    step("point-in-time recovery: undo an accidental DELETE")
    time.sleep(1.2)
    before = str(cluster.sql("SELECT now()")[0][0].isoformat())
    time.sleep(1.2)
    cluster.sql("DELETE FROM conversations WHERE id <= 1000", "iccm")
    ck("pg", "check")
    report = json.loads(ck("--json", "pg", "restore", "--target-dir", str(RUN / "pitr"), "--time", before, "--start",
                           show=False))  # fmt: skip
    restored = TempCluster(
        RUN / "pitr.run", bin_dir=cluster.bin_dir, data_dir=RUN / "pitr", port=report["port"]
    )
    try:
        count = restored.sql("SELECT count(*) FROM conversations", "iccm")[0][0]
        print(f"  restored to {before}: {count} rows (the live table now has "
              f"{cluster.sql('SELECT count(*) FROM conversations', 'iccm')[0][0]}); "
              f"files {report['files_s']} s, recovery {report['replay_s']} s")  # fmt: skip
        assert count == 5000, count
    finally:
        restored.stop()
    ck("pg", "expire", "--dry-run")
    ck("pg", "expire")


def datasets_section(data: Path) -> None:
    step("dataset versions: immutable, deduplicated, with the spec's manifest")
    set_config("datasets", enabled=True, root=str(data), export_dir=str(RUN / "exports"))
    ck("datasets", "snapshot", "--version", "v1", "--label", "demo dataset")
    (data / "train" / "app00" / "src" / "module9.py").write_text("print('a new file')\n")
    ck("datasets", "status", "--exit-code", expect=1)
    ck("datasets", "snapshot", "--version", "v2")
    ck("datasets", "snapshot", "--version", "v2-again", "--if-changed")
    ck("datasets", "diff", "v1", "v2")
    ck("datasets", "verify", "v2", "--against", str(data))
    (RUN / "exports").mkdir()
    ck("datasets", "export", "v2", "--format", "tar.zst")
    sums = sorted((RUN / "exports").glob("*.sha256"))
    subprocess.run(["sha256sum", "-c", sums[0].name], cwd=RUN / "exports", check=True)
    ck("datasets", "list")


def checkpoints_section() -> Path:
    step("model checkpoints: stored while hot, archived by type only after a verified copy exists")
    root = RUN / "models"
    now = time.time()

    def stamp(days_ago: float) -> str:
        return time.strftime("%Y%m%d_%H%M%S", time.gmtime(now - days_ago * 86400))

    old, best, newest = (f"cet-d-phase1/checkpoint-{stamp(12)}", f"cet-d-phase1/best-{stamp(5)}",
                         f"cet-d-phase1/checkpoint-{stamp(1)}")  # fmt: skip
    for seed, name in enumerate((old, best, newest)):
        make_checkpoint(root / name, seed)
    (root / "cet-d-phase1" / "notes-from-alice").mkdir()  # not the convention: listed, never touched
    set_config("checkpoints", enabled=True, root=str(root), settle_seconds=0)
    before = sha_tree(root / old)
    ck("checkpoints", "backup")
    ck("checkpoints", "archive", "--dry-run")
    ck("checkpoints", "archive")
    assert not (root / old).exists(), "the 12-day-old checkpoint should have been archived"
    ck("checkpoints", "list")
    ck("checkpoints", "recover", old, "--to", str(RUN / "recovered-checkpoint"))
    assert sha_tree(RUN / "recovered-checkpoint") == before, "recovered checkpoint differs"
    print("  the archived checkpoint came back byte for byte")
    ck("checkpoints", "promote", best, "--reason", "demo: eval +2.1%")
    ck("checkpoints", "history", "--phase", "phase1")
    return root / newest


def conversations_section() -> None:
    step("conversation archive: rows older than 90 days to monthly .jsonl.zst, exactly once")
    set_config("conversations", enabled=True, archive_dir=str(RUN / "conversation_archives"))
    ck("conversations", "init-schema")
    ck("conversations", "archive", "--dry-run")
    done = json.loads(ck("--json", "conversations", "archive", "--purge", show=False))
    print(f"  archived {done.get('rows_archived', done.get('archived_rows', '?'))} rows")
    ck("conversations", "verify")
    ck("conversations", "stats")


def repro_section(model: Path) -> None:
    step("a reproducibility package: dataset, model, code, environment, checksums, RO-Crate")
    code = RUN / "code"
    code.mkdir()
    (code / "train.py").write_text("print('train the demo model')\n")
    git = ["git", "-c", "user.name=demo", "-c", "user.email=demo@example.invalid", "-C", str(code)]
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "demo training code"]):
        subprocess.run(git + args, check=True)
    results = RUN / "results"
    results.mkdir()
    (RUN / "repro").mkdir()
    (results / "eval.json").write_text(json.dumps({"accuracy": 0.91}))
    ck("repro", "create", "--name", "demo_repro_v1", "--dataset", "v2", "--models", str(model), "--code",
       str(code), "--results", str(results), "--python", sys.executable, "--out", str(RUN / "repro"))  # fmt: skip
    ck("repro", "verify", "demo_repro_v1")
    ck("repro", "list")


def operations_section() -> None:
    step("operations: every job above left a run record; metrics and alert rules come from them")
    ck("runs")
    metrics = ck("metrics", show=False)
    print(
        "\n".join(line for line in metrics.splitlines() if line.startswith("backup_last_success_timestamp"))
    )
    ck("alerts", "rules", "--out", str(RUN / "coldkeep-rules.yml"), show=False)
    print(f"  alert rules written to {RUN / 'coldkeep-rules.yml'}")
    ck("schedule", "show")


def tiers_and_storage(data: Path, logs: Path) -> None:
    """Point [tiers] and [storage] at the demo's directories (the template names /mnt/nvme, /mnt/hdd)."""
    path = RUN / "coldkeep.toml"
    text = path.read_text()
    start, end = text.index("[tiers.tier1]"), text.index("[metrics]")
    block = f"""[tiers.tier1]
retention_days = "forever"
paths = [{json.dumps(str(data))}]
[tiers.tier2]
retention_days = 365
paths = [{json.dumps(str(RUN / "results"))}]
[tiers.tier3]
retention_days = 30
paths = [{json.dumps(str(logs))}]

[storage.hot]
path = {json.dumps(str(RUN))}
capacity = "40GB"
[storage.hot.allocations]
models = {{ path = {json.dumps(str(RUN / "models"))}, size = "10GB" }}
postgres = {{ path = {json.dumps(str(RUN / "pg"))}, size = "10GB" }}
conversations = {{ path = {json.dumps(str(RUN / "conversation_archives"))}, size = "1GB" }}

[storage.cold]
path = {json.dumps(str(RUN))}
capacity = "80GB"
[storage.cold.allocations]
repository = {{ path = {json.dumps(str(RUN / "repo"))}, size = "20GB" }}
dataset_exports = {{ path = {json.dumps(str(RUN / "exports"))}, size = "2GB" }}

"""
    path.write_text(text[:start] + block + text[end:])
    step("data tiers: a snapshot per tier with the tier's retention; Tier-3 files past 30 days listed")
    ck("tiers", "backup")
    ck("tiers", "clean", "--tier", "3")
    step("storage allocations: used, allocated, growth per day, days until full")
    ck("storage")


def drill_section() -> None:
    step("the monthly disaster-recovery drill: every scenario, timed, against the 1-hour objective")
    full = json.loads(ck("--json", "drill", "--scenario", "full", show=False))
    for name, scenario in full.get("scenarios", {}).items():
        print(
            f"  {name:<14} {scenario.get('verdict', scenario.get('status', '?')):<10} {scenario.get('total_s', '-')} s"
        )
    print(f"  total {full.get('total_s')} s: {full.get('verdict')}")
    step("status, and the report whose checklists are ticked from the runs above")
    ck("status")
    report = RUN / "coldkeep-report.html"
    ck("report", "--html", str(report))
    print(f"  open {report} in a browser (one self-contained page)")


def main() -> None:
    from coldkeep.postgres.cluster import TempCluster

    shutil.rmtree(RUN, ignore_errors=True)
    RUN.mkdir(parents=True)
    os.chmod(RUN, 0o755)
    started = time.monotonic()
    cluster = TempCluster(RUN / "pg")
    try:
        step("a throwaway PostgreSQL 15 cluster on a private socket")
        cluster.initdb(checksums=True)
        cluster.start()
        cluster.sql("CREATE DATABASE iccm")
        cluster.sql(
            "CREATE TABLE conversations (id bigserial PRIMARY KEY, session_id uuid, timestamp timestamptz,"
            " speaker text, content text, metadata jsonb)",
            "iccm",
        )
        cluster.sql(
            "INSERT INTO conversations (session_id, timestamp, speaker, content, metadata)"
            " SELECT gen_random_uuid(), now() - g * interval '1 hour', 'user', repeat('hello ', 50), '{}'"
            " FROM generate_series(1, 5000) g",
            "iccm",
        )
        print(f"cluster at {cluster.socket_dir} port {cluster.port}: 5000 conversation rows")

        step("coldkeep init: a commented config and a repository")
        dsn = f"host={cluster.socket_dir} port={cluster.port} dbname=iccm user=postgres"
        ck("init", "--repo", f"file://{RUN}/repo", "--pg-dsn", dsn, "--pg-data-dir", str(cluster.data_dir),
           "--owner", cluster.os_user)  # fmt: skip
        ck("config", "check")

        step("a broken config is refused with the key named (exit 2)")
        bad = RUN / "bad.toml"
        bad.write_text("[postgres]\nretention_days = -3\n")
        proc = subprocess.run(
            [COLDKEEP, "--config", str(bad), "config", "check"], capture_output=True, text=True
        )
        print(proc.stderr.strip())
        assert proc.returncode == 2 and "postgres.retention_days" in proc.stderr, proc.stderr

        step("coldkeep doctor (the demo cluster has archiving off, so expect warnings)")
        doctor = json.loads(ck("--json", "doctor", show=False, expect=0))
        for c in doctor["checks"]:
            print(f"  {c['status']:5} {c['name']:18} {c['detail']}")

        step("back up a dataset tree (50 apps, 40 train / 10 holdout)")
        data = RUN / "datasets" / "applications"
        make_dataset(data)
        first = json.loads(ck("--json", "backup", str(data), "--tag", "kind=dataset", "--label", "v3.0"))
        print(
            f"  {first['files']} files, {first['logical_bytes']} bytes, stored {first['new_stored_bytes']} new"
        )

        step("an unchanged re-backup reuses everything")
        again = json.loads(ck("--json", "backup", str(data), "--tag", "kind=dataset"))
        assert again["new_stored_bytes"] < 20000, again
        print(
            f"  re-backup: {again['reused_files']} files reused, {again['new_stored_bytes']} new bytes, {again['duration_s']} s"
        )

        step("change 2 % of the files and back up again")
        for i, path in enumerate(sorted(data.rglob("module0.py"))[:4]):
            path.write_text(path.read_text() + f"\n# change {i}\n")
        third = json.loads(ck("--json", "backup", str(data), "--tag", "kind=dataset"))
        print(f"  changed files cost {third['new_stored_bytes']} new stored bytes")
        ck("snapshots")

        step("restore the latest snapshot and compare every file with sha256")
        target = RUN / "restored"
        ck("restore", "latest", "--target", str(target))
        restored_root = target / str(data).lstrip("/")
        assert sha_tree(restored_root) == sha_tree(data), "restored tree differs"
        print("  restored tree identical to the source")

        step("verify every byte, then flip one byte in a pack: check names it (exit 3)")
        ck("repo", "check", "--read-data")
        pack = sorted((RUN / "repo" / "data").rglob("*"))[-1]
        while pack.is_dir():
            pack = sorted(pack.rglob("*"))[-1]
        raw = bytearray(pack.read_bytes())
        raw[len(raw) // 3] ^= 0xFF
        saved = pack.read_bytes()
        pack.write_bytes(bytes(raw))
        ck("repo", "check", "--read-data", expect=3, show=False)
        pack.write_bytes(saved)
        ck("repo", "check", "--read-data", show=False)
        print("  corruption detected (exit 3); with its original bytes put back the pack checks clean")

        step("retention: `forget` removes generic snapshots only (datasets are Tier-1), then prune")
        logs = RUN / "training-logs"
        logs.mkdir()
        for i in range(3):
            (logs / f"run{i}.log").write_text(f"epoch {i} loss {1.0 / (i + 1):.3f}\n" * 2000)
            ck("backup", str(logs), "--label", f"logs {i}", show=False)
        forgot = json.loads(ck("--json", "forget", "--keep-last", "2", show=False))
        assert len(forgot["removed"]) == 1 and len(forgot["left_alone"]) == 3, forgot
        print(
            f"  removed 1 of 3 log snapshots; left alone: {len(forgot['left_alone'])} dataset snapshots (Tier-1)"
        )
        ck("repo", "prune")
        ck("repo", "check")

        datasets_section(data)
        model = checkpoints_section()

        pg_section(cluster)
        conversations_section()
        repro_section(model)

        step("the README's retention line leaves base backups (pg expire owns them) and datasets alone")
        ck("forget", "--keep-daily", "30", "--keep-monthly", "12")
        kinds = [
            s["kind"] + ":" + s["tags"].get("kind", "")
            for s in json.loads(ck("--json", "snapshots", show=False))
        ]
        assert kinds.count("pg-base:pg-base") == 2 and kinds.count("files:dataset") == 3, kinds

        step("offsite copy (a second local repository stands in for S3 here)")
        with open(RUN / "coldkeep.toml", "a") as fh:
            fh.write(f'\n[repository.copies.offsite]\nurl = "file://{RUN}/offsite"\n')
        ck("repo", "copy", "--to", "offsite")
        ck("repo", "stats")
        tiers_and_storage(data, logs)
        operations_section()
        drill_section()
        print(f"\ndemo finished in {time.monotonic() - started:.1f} s; everything is in {RUN}")
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
