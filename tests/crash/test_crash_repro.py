"""`kill -9` of `coldkeep repro create` at storage calls spread over its run (issue 14).

The package is stored last (its snapshot document is the last object written), so after a kill at
any storage call it is either not listed or listed whole (it verifies); `repo check` passes; a
rerun records it (or, when the kill came after the document, is refused as recorded already) and
the package verifies, from the repository and as the archive on disk.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from tests.datasetsite import make_dataset
from tests.helpers import Site, read_counts, spread

pytestmark = pytest.mark.slow

POINTS = 8


def test_kill_during_repro_create(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "applications", train=2, holdout=1)
    base = Site(tmp_path / "base", env={"COLDKEEP_PACK_TARGET": "16384"})
    base.ok("repo", "init")
    base.ok("datasets", "snapshot", "--version", "v1", "--root", str(data))
    model = tmp_path / "model-final"
    model.mkdir()
    (model / "weights.bin").write_bytes(os.urandom(120_000))
    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text("print(1)\n")
    for args in (
        ["init", "-q"],
        ["add", "."],
        ["-c", "user.email=a@b.invalid", "-c", "user.name=n", "commit", "-q", "-m", "c"],
    ):
        subprocess.run(["git", "-C", str(code), *args], check=True)

    def args(out: Path) -> list[str]:
        return ["repro", "create", "--name", "pkg", "--dataset", "v1", "--models", str(model), "--code", str(code),
                "--python", sys.executable, "--out", str(out)]  # fmt: skip

    counter = base.clone(tmp_path / "counter")
    counts = tmp_path / "counts.json"
    (tmp_path / "out-counter").mkdir()
    counter.ok(
        *args(tmp_path / "out-counter"),
        env={"COLDKEEP_FAULTS": "count", "COLDKEEP_FAULTS_COUNTS": str(counts)},
    )
    calls = read_counts(counts)["any"]
    assert calls >= POINTS, calls

    # spread over the run, every other one after its call, and the last calls after they are done
    # (the snapshot document, then the lock's release): the version is then recorded whole
    faults = [
        f"kill:any:{n}:after" if i % 2 else f"kill:any:{n}" for i, n in enumerate(spread(calls, POINTS))
    ]
    faults += [f"kill:any:{n}:after" for n in (calls - 2, calls - 1)]

    def one(item: tuple[int, str]) -> tuple[str, bool]:
        i, fault = item
        try:
            site = base.clone(tmp_path / f"point-{i:02d}")
            out = tmp_path / f"out-{i:02d}"
            out.mkdir()
            proc = site.run(*args(out), env={"COLDKEEP_FAULTS": fault})
            assert proc.returncode == -signal.SIGKILL, f"exit {proc.returncode}:\n{proc.stderr}"
            listed = [p["name"] for p in site.json("repro", "list")]
            assert listed in ([], ["pkg"]), listed
            if listed:
                site.ok("repro", "verify", "pkg")
            check = site.run("repo", "check")
            assert check.returncode == 0, check.stdout + check.stderr
            rerun = site.run("--json", *args(out))
            if listed:
                assert rerun.returncode == 1 and "recorded already" in rerun.stderr, rerun.stderr
            else:
                assert rerun.returncode == 0, rerun.stderr
                assert json.loads(rerun.stdout)["name"] == "pkg"
                site.ok("repro", "verify", str(out / "pkg.tar.gz"))
            assert [p["name"] for p in site.json("repro", "list")] == ["pkg"]
            site.ok("repro", "verify", "pkg")
            assert not list(out.glob(".pkg.repro-*"))  # no staging directory left behind
            return "", bool(listed)
        except BaseException:
            return f"--- {fault}\n{traceback.format_exc()}", False

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(one, enumerate(faults)))
    failures = [f for f, _ in results if f]
    assert not failures, "\n".join(failures)
    recorded = [whole for _, whole in results]
    assert any(recorded) and not all(recorded), recorded  # both cases happened
