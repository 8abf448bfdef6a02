"""`kill -9` of `coldkeep datasets snapshot` at storage calls spread over its run (issue 14).

A counting run learns how many storage calls recording version v2 makes; then the process is
SIGKILLed at its N-th call (``COLDKEEP_FAULTS=kill:any:N``, every other point after the call),
each point on a clone of one base repository.  After every kill: v2 is not listed, or it is listed
whole (it verifies); `repo check` passes; v1 still verifies; a rerun records v2 (or finds it
recorded), exactly one v2 exists, and it verifies against the live tree.
"""

from __future__ import annotations

import json
import os
import signal
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from tests.datasetsite import make_dataset
from tests.helpers import Site, read_counts, spread

pytestmark = pytest.mark.slow

PACK_ENV = {"COLDKEEP_PACK_TARGET": "16384"}  # small packs: many storage calls to kill at
POINTS = 10


def versions(site: Site) -> list[str]:
    return [v["version"] for v in site.json("datasets", "list")]


def test_kill_during_dataset_snapshot(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "applications", train=6, holdout=2, files_per_app=4)
    base = Site(tmp_path / "base", env=PACK_ENV)
    base.ok("repo", "init")
    base.ok("datasets", "snapshot", "--version", "v1", "--root", str(data))
    for i in range(4):  # the next version: changed, added and bigger files
        (data / "train" / f"app-train-{i:02d}" / "src" / "part-1.bin").write_bytes(os.urandom(40_000 + i))
    (data / "holdout" / "app-holdout-00" / "weights.bin").write_bytes(os.urandom(300_000))
    args = ("datasets", "snapshot", "--version", "v2", "--root", str(data))

    counter = base.clone(tmp_path / "counter")
    counts = tmp_path / "counts.json"
    counter.ok(*args, env={"COLDKEEP_FAULTS": "count", "COLDKEEP_FAULTS_COUNTS": str(counts)})
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
            proc = site.run(*args, env={"COLDKEEP_FAULTS": fault})
            assert proc.returncode == -signal.SIGKILL, f"exit {proc.returncode}:\n{proc.stderr}"
            listed = versions(site)
            assert listed in (["v1"], ["v1", "v2"]), listed  # never half a version
            if "v2" in listed:
                site.ok("datasets", "verify", "v2")
            check = site.run("repo", "check")
            assert check.returncode == 0, check.stdout + check.stderr
            site.ok("datasets", "verify", "v1")
            rerun = json.loads(site.ok("--json", *args).stdout)
            assert rerun["version"] == "v2" and rerun["created"] == ("v2" not in listed)
            assert versions(site) == ["v1", "v2"]
            assert len(site.json("snapshots")) == 2  # one snapshot per version
            site.ok("datasets", "verify", "v2", "--against", str(data))
            return "", "v2" in listed
        except BaseException:
            return f"--- {fault}\n{traceback.format_exc()}", False

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(one, enumerate(faults)))
    failures = [f for f, _ in results if f]
    assert not failures, "\n".join(failures)
    recorded = [whole for _, whole in results]
    assert any(recorded) and not all(recorded), recorded  # both cases happened
