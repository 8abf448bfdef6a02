"""``checkpoints recover`` by every NAME form (byte-exact, with a real load check) and
``checkpoints verify`` (hashes, safetensors structure, ``--deep`` NaN/Inf)."""

from __future__ import annotations

import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from tests.ckptfiles import checkpoint_site, models, write_checkpoint
from tests.helpers import Site, flip_byte, need, one_line_error, toml_str, tree_digest

from coldkeep.errors import EXIT_INTEGRITY, EXIT_NOT_FOUND

#: a load check in the lab's style: load every shard named by the index with safetensors
LOAD_CHECK = """
import json, pathlib, sys
from safetensors.numpy import load_file
root = pathlib.Path(sys.argv[1])
index = root / "model.safetensors.index.json"
shards = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else \
    sorted(p.name for p in root.glob("*.safetensors"))
n = sum(len(load_file(str(root / s))) for s in shards)
if "fail" in root.name:
    sys.exit(1)
print(f"loaded {n} tensors")
"""


def site_with_load_check(tmp_path: Path, command: str | None = None) -> Site:
    script = tmp_path / "load_check.py"
    script.write_text(LOAD_CHECK)
    cmd = command if command is not None else f"{sys.executable} {script} {{path}}"
    return checkpoint_site(
        tmp_path / "s", extra=f"load_check_command = {toml_str(cmd)}\nload_check_timeout = 60\n"
    )


def test_recover_by_every_name_form(tmp_path: Path) -> None:
    site = site_with_load_check(tmp_path)
    root = models(site)
    older = write_checkpoint(root / "cet-d-phase3" / "best-20251001_000000", seed=1)
    newer = write_checkpoint(root / "cet-d-phase3" / "best-20251015_092000", seed=2, shards=3)
    want = {p.name: tree_digest(p) for p in (older, newer)}
    site.ok("checkpoints", "backup")
    snaps = {s["tags"]["name"]: s["id"] for s in site.json("snapshots")}
    shutil.rmtree(root)

    exact = site.json("checkpoints", "recover", "cet-d-phase3/best-20251001_000000")
    assert exact["action"] == "restored" and exact["target"] == str(older)
    assert tree_digest(older) == want[older.name]
    assert exact["load_check"]["ok"] and "duration_s" in exact and exact["files"] == 6

    latest = site.json("checkpoints", "recover", "cet-d-phase3-best")
    assert latest["name"] == "cet-d-phase3/best-20251015_092000" and tree_digest(newer) == want[newer.name]

    by_id = site.json("checkpoints", "recover", snaps["cet-d-phase3/best-20251001_000000"][:12],
                      "--to", str(tmp_path / "elsewhere"))  # fmt: skip
    assert tree_digest(tmp_path / "elsewhere") == want[older.name] and by_id["target"] == str(
        tmp_path / "elsewhere"
    )

    at = site.json("checkpoints", "recover", "cet-d-phase3-best", "--at", "2025-10-10T00:00:00Z",
                   "--to", str(tmp_path / "at"))  # fmt: skip
    assert at["name"] == "cet-d-phase3/best-20251001_000000"

    again = site.json("checkpoints", "recover", "cet-d-phase3/best-20251001_000000")
    assert again["action"] == "already there"
    (older / "config.json").write_text("{}")
    proc = site.run("checkpoints", "recover", "cet-d-phase3/best-20251001_000000")
    assert proc.returncode == 1 and "exists and differs" in one_line_error(proc)
    assert (older / "config.json").read_text() == "{}"  # never overwritten

    missing = site.run("checkpoints", "recover", "cet-d-phase9-best")
    assert missing.returncode == EXIT_NOT_FOUND
    one_line_error(missing)
    bad = site.run("checkpoints", "recover", "phase3 best")
    assert bad.returncode == 2
    one_line_error(bad)
    assert not list(root.rglob(".coldkeep-*"))


def test_a_failing_load_check_fails_the_recover(tmp_path: Path) -> None:
    site = site_with_load_check(tmp_path)
    write_checkpoint(models(site) / "cet-d-phase1" / "checkpoint-20251001_000000", seed=3)
    site.ok("checkpoints", "backup")
    proc = site.run(
        "--json", "checkpoints", "recover", "cet-d-phase1-checkpoint", "--to", str(tmp_path / "fail")
    )
    data = json.loads(proc.stdout)
    assert proc.returncode == 1 and data["load_check"]["ok"] is False and data["load_check"]["exit_code"] == 1
    assert tree_digest(tmp_path / "fail")  # restored all the same
    sleeper = f"{sys.executable} -c 'import time; time.sleep(30)'"
    timeout = checkpoint_site(
        tmp_path / "t", extra=f"load_check_command = {toml_str(sleeper)}\nload_check_timeout = 1\n"
    )
    write_checkpoint(models(timeout) / "cet-d-phase1" / "checkpoint-20251001_000000", seed=3)
    timeout.ok("checkpoints", "backup")
    proc = timeout.run(
        "--json", "checkpoints", "recover", "cet-d-phase1-checkpoint", "--to", str(tmp_path / "slow")
    )
    assert proc.returncode == 1 and "timed out after 1 s" in json.loads(proc.stdout)["load_check"]["output"]


def _bf16_file(path: Path, values: list[int]) -> None:
    header = json.dumps(
        {"w": {"dtype": "BF16", "shape": [len(values)], "data_offsets": [0, 2 * len(values)]}}
    ).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + struct.pack(f"<{len(values)}H", *values))


def test_verify_structure_and_deep(tmp_path: Path) -> None:
    site = site_with_load_check(tmp_path)
    root = models(site)
    good = write_checkpoint(root / "cet-d-phase2" / "best-20251001_000000", seed=4)
    bad = root / "cet-d-phase2" / "checkpoint-20251002_000000"
    bad.mkdir(parents=True)
    weights = {f"t{i}": np.ones((4, 4), np.float32) for i in range(3)}
    weights["t1"][2, 3] = np.nan
    weights["t2"][0, 0] = np.inf
    save_file(weights, str(bad / "model.safetensors"))
    _bf16_file(bad / "half.safetensors", [0x3F80, 0x7FC0, 0x7F80, 0xFF80])  # 1.0, NaN, +Inf, -Inf
    site.ok("checkpoints", "backup")

    ok = site.json("checkpoints", "verify", "cet-d-phase2/best-20251001_000000", "--deep")
    assert ok["ok"] and ok["tensors"] == 12 and ok["against"] == str(good) and ok["load_check"]["ok"]
    proc = site.run("--json", "checkpoints", "verify", "cet-d-phase2/checkpoint-20251002_000000")
    quick = json.loads(proc.stdout)
    assert quick["problems"] == []  # structure fine; NaN only with --deep
    # numpy cannot load BF16: the lab's load check fails, and says so (exit 1, not 3)
    assert (
        proc.returncode == 1
        and quick["load_check"]["ok"] is False
        and "bfloat16" in quick["load_check"]["output"]
    )
    proc = site.run("--json", "checkpoints", "verify", "cet-d-phase2/checkpoint-20251002_000000", "--deep")
    data = json.loads(proc.stdout)
    assert proc.returncode == EXIT_INTEGRITY
    assert "model.safetensors: tensor 't1': 1 NaN, 0 Inf" in data["problems"]
    assert "model.safetensors: tensor 't2': 0 NaN, 1 Inf" in data["problems"]
    assert "half.safetensors: tensor 'w': 1 NaN, 2 Inf" in data["problems"]
    # --deep of a checkpoint that is only in the repository streams its shards
    shutil.rmtree(bad)
    data = json.loads(site.run("--json", "checkpoints", "verify", "cet-d-phase2-checkpoint", "--deep").stdout)
    assert data["against"] is None and "half.safetensors: tensor 'w': 1 NaN, 2 Inf" in data["problems"]
    assert data["notes"] and not list(root.glob(".coldkeep-*"))


def test_verify_names_structural_problems_and_damage(tmp_path: Path) -> None:
    site = checkpoint_site(tmp_path / "s")
    ckpt = models(site) / "cet-d-phase5" / "checkpoint-20251001_000000"
    ckpt.mkdir(parents=True)
    header = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                         "b": {"dtype": "F32", "shape": [3], "data_offsets": [4, 16]}}).encode()  # fmt: skip
    (ckpt / "odd.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    site.ok("checkpoints", "backup")
    proc = site.run("--json", "checkpoints", "verify", "cet-d-phase5-checkpoint")
    problems = json.loads(proc.stdout)["problems"]
    assert proc.returncode == EXIT_INTEGRITY and "odd.safetensors: tensors 'a' and 'b' overlap" in problems
    good = write_checkpoint(models(site) / "cet-d-phase6" / "checkpoint-20251001_000000", seed=9)
    site.ok("checkpoints", "backup")
    shutil.rmtree(good)
    for pack in sorted((site.repo_dir / "data").rglob("*")):
        if pack.is_file():
            flip_byte(pack)
    proc = site.run("checkpoints", "verify", "cet-d-phase6-checkpoint")
    assert proc.returncode == EXIT_INTEGRITY and "damaged" in proc.stderr
    proc = site.run("checkpoints", "recover", "cet-d-phase6-checkpoint")
    assert proc.returncode == EXIT_INTEGRITY, proc.stderr
    assert not good.exists() and not list(good.parent.glob(".coldkeep-*"))  # nothing corrupt left behind


def test_recover_keeps_owner_and_modes(tmp_path: Path) -> None:
    """Run as root for the training user's checkpoints: what comes back has their owner and modes."""
    import os

    need(os.geteuid() == 0, "root (to give files another owner)")
    site = checkpoint_site(tmp_path / "s")
    ckpt = write_checkpoint(models(site) / "cet-d-phase8" / "best-20250101_000000", seed=6)
    write_checkpoint(models(site) / "cet-d-phase8" / "checkpoint-20251031_000000", seed=7)
    for path in [ckpt, *ckpt.iterdir()]:
        os.chown(path, 65534, 65534)
    os.chmod(ckpt, 0o750)
    os.chmod(ckpt / "optimizer.bin", 0o600)
    site.ok("checkpoints", "archive", env={"COLDKEEP_NOW": "2025-11-01T00:00:00Z"})
    assert not ckpt.exists()
    site.ok("checkpoints", "recover", "cet-d-phase8/best-20250101_000000")
    st = ckpt.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (65534, 65534, 0o750)
    opt = (ckpt / "optimizer.bin").stat()
    assert (opt.st_uid, opt.st_gid, opt.st_mode & 0o7777) == (65534, 65534, 0o600)
    assert all(p.stat().st_uid == 65534 for p in ckpt.iterdir())
