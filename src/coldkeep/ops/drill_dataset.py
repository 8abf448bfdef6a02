"""The dataset drill: ``coldkeep drill --scenario dataset``.

Restores the newest dataset version and one older version chosen at random into the drill's
scratch directory with ``datasets restore`` (:func:`coldkeep.datasets.check.restore_version`: the
tree checked against the manifest first, every byte verified on the way, the files written
counted against the manifest).  A version that does not restore whole is then verified
(:func:`~coldkeep.datasets.check.verify_version`) so that every failing file is named, not only
the first.  The RTO is projected at the newest version's size (the dataset as it is today).
No version recorded: skipped (nothing to protect).
"""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path

from coldkeep.config import Config
from coldkeep.datasets.check import restore_version, verify_version
from coldkeep.datasets.versions import DatasetVersion, versions
from coldkeep.errors import ColdkeepError
from coldkeep.ops.drill_common import DrillResult, make_scratch, project
from coldkeep.repository.repository import Repository


def drill_dataset(
    config: Config, repo: Repository, result: DrillResult, scratch: Path | None, rng: random.Random
) -> None:
    """The dataset scenario (see the module doc) into ``result``."""
    recorded = versions(repo)
    if not recorded:
        result.skip("no dataset version in the repository")
        return
    chosen = [("newest", recorded[-1])]
    if len(recorded) > 1:
        chosen.append(("older", rng.choice(recorded[:-1])))
    base = make_scratch(config, scratch)
    restore_s = 0.0
    try:
        for role, version in chosen:
            result.recovered[role] = {"version": version.name, "snapshot": version.snapshot.id}
            seconds = _restore_one(repo, result, role, version, base)
            if seconds is not None:
                result.steps[role] = seconds
                restore_s += seconds
    finally:
        shutil.rmtree(base, ignore_errors=True)
    newest_bytes = _size(recorded[-1])
    project(result, restore_s, newest_bytes or None, 0.0, "dataset_bytes")


def _restore_one(
    repo: Repository, result: DrillResult, role: str, version: DatasetVersion, base: Path
) -> float | None:
    """Seconds the restore of ``version`` took, or ``None`` (a failed check naming every file)."""
    started = time.monotonic()
    try:
        done = restore_version(repo, version, base / "datasets" / version.snapshot.id)
    except ColdkeepError as exc:
        detail = exc.message
        try:
            failing = verify_version(repo, version).failing()
        except ColdkeepError as again:
            failing = [f"(verify: {again.message})"]
        if failing:
            detail += f"; failing files: {', '.join(failing)}"
        result.add(f"restore {role} dataset {version.name}", False, detail)
        return None
    result.bytes += done.bytes
    result.add(f"restore {role} dataset {version.name}", True,
               f"{done.files} files, {done.bytes} bytes as the manifest lists them, every byte verified, "
               f"in {done.duration_s} s")  # fmt: skip
    return round(time.monotonic() - started, 3)


def _size(version: DatasetVersion) -> int:
    try:
        return int(version.manifest.get("total_size_bytes") or 0)
    except ColdkeepError:
        return 0
