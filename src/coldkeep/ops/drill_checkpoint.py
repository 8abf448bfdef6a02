"""The checkpoint drill: ``coldkeep drill --scenario checkpoint``.

What a team does after losing the model disk: recover the current production checkpoint, and one
archived checkpoint chosen at random among all of them (not only the newest: an old archive that
no longer restores is found by a drill, not on the day it is needed), into the drill's scratch
directory, with ``checkpoints recover`` (:func:`coldkeep.checkpoints.recover.recover`: every chunk
and every file's size and SHA-256 checked before a file takes its name), then
``[checkpoints] load_check_command`` on each when one is set.

*The current production* is what the promotion history (``state/checkpoints-history``) last made
production in its phase, else the newest stored ``production-…`` checkpoint; of several phases,
the newest.  The hot disk is never written: the service the drill uses has its root in the scratch
directory.  A production on the hot disk that the repository does not hold fails the drill.

The RTO is projected at the production checkpoint's bytes from the measured MB/s of both
recoveries, plus its load check's time.  Nothing archived and no production on the hot disk:
skipped (nothing to protect).
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

from coldkeep.checkpoints.inventory import stored_checkpoints, stored_names
from coldkeep.checkpoints.naming import CheckpointName, parse_name
from coldkeep.checkpoints.promote import HISTORY_STATE
from coldkeep.checkpoints.recover import Recovered, recover
from coldkeep.checkpoints.service import Service
from coldkeep.config import Config
from coldkeep.errors import ColdkeepError
from coldkeep.ops.drill_common import DrillResult, make_scratch, project
from coldkeep.repository.repository import Repository
from coldkeep.repository.snapshot import Snapshot


def drill_checkpoint(
    config: Config, repo: Repository, result: DrillResult, scratch: Path | None, rng: random.Random
) -> None:
    """The checkpoint scenario (see the module doc) into ``result``."""
    stored = stored_checkpoints(repo)
    production = current_production(repo, stored)
    unarchived = _hot_production_not_stored(config, stored, repo)
    if not stored and not unarchived:
        result.skip("no checkpoint in the repository")
        return
    if unarchived:
        result.add("production archived", False,
                   f"{unarchived} is in production on the hot disk but not in the repository")  # fmt: skip
    base = make_scratch(config, scratch)
    try:
        hot = base / "hot"  # the service's root: the drill never writes the real hot disk
        hot.mkdir()
        svc = Service(config.model_copy(update={"checkpoints": config.checkpoints.model_copy(
            update={"root": str(hot)})}))  # fmt: skip
        svc._repo = repo  # the repository (or copy) the drill opened
        chosen: list[tuple[str, str, str]] = []  # (role, name, snapshot id)
        if production is not None:
            chosen.append(("production", *production))
        others = sorted(set(stored) - {_name_of(stored, production[1]) if production else ""})
        if others:
            name = rng.choice(others)
            chosen.append(("archived", name, stored[name][-1].id))
        restore_s = load_s = 0.0
        production_bytes = 0
        for role, name, snapshot in chosen:
            result.recovered[role] = {"name": name, "snapshot": snapshot}
            done = _recover_one(svc, result, role, name, snapshot, base)
            if done is None:
                continue
            lc = done.load_check.duration_s if done.load_check else 0.0
            result.steps[role] = round(done.duration_s - lc, 3)
            restore_s += done.duration_s - lc
            load_s += lc
            result.bytes += done.bytes
            if role == "production":
                production_bytes = done.bytes
        if load_s:
            result.steps["load check"] = round(load_s, 3)
        production_lc = _load_check_s(result, "production")
        project(result, restore_s, production_bytes or None, production_lc, "checkpoint_bytes")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def current_production(repo: Repository, stored: dict[str, list[Snapshot]]) -> tuple[str, str] | None:
    """``(name, snapshot id)`` of the current production checkpoint (see the module doc)."""
    by_phase: dict[str, tuple[Any, str, str]] = {}
    events = (repo.get_state(HISTORY_STATE) or {}).get("events", [])
    for event in events:
        name = parse_name(str(event.get("to", "")))
        if event.get("state") == "done" and isinstance(name, CheckpointName):
            by_phase[name.phase] = (name.time, name.name, str(event["snapshot"]))
    for name in stored_names(stored):
        if name.type == "production" and (name.phase not in by_phase or name.time > by_phase[name.phase][0]):
            by_phase[name.phase] = (name.time, name.name, stored[name.name][-1].id)
    if not by_phase:
        return None
    _time, name_, snapshot = max(by_phase.values())
    return name_, snapshot


def _name_of(stored: dict[str, list[Snapshot]], snapshot_id: str) -> str:
    """The name the stored snapshot ``snapshot_id`` was taken under (a promotion's production is
    the stored copy of the checkpoint it was promoted from)."""
    for name, snaps in stored.items():
        if any(s.id == snapshot_id for s in snaps):
            return name
    return ""


def _hot_production_not_stored(config: Config, stored: dict[str, list[Snapshot]], repo: Repository) -> str:
    """The name of a production checkpoint on the hot disk the repository holds no copy of."""
    cfg = config.checkpoints
    if not cfg.in_use or not os.path.isdir(cfg.root):
        return ""
    events = (repo.get_state(HISTORY_STATE) or {}).get("events", [])
    promoted = {e.get("to") for e in events if e.get("state") == "done"}
    for entry in Service(config).scan().checkpoints:
        name = entry.name.name
        if entry.name.type == "production" and name not in stored and name not in promoted:
            return name
    return ""


def _recover_one(
    svc: Service, result: DrillResult, role: str, name: str, snapshot: str, base: Path
) -> Recovered | None:
    parsed = parse_name(name)
    where = base / "recovered" / (parsed.name if isinstance(parsed, CheckpointName) else snapshot)
    try:
        done = recover(svc, snapshot, to=str(where))
    except ColdkeepError as exc:
        result.add(f"recover {role} {name}", False, f"{exc.message} (snapshot {snapshot[:12]})")
        return None
    result.add(f"recover {role} {name}", True,
               f"snapshot {snapshot[:12]}: {done.files} files, {done.bytes} bytes, every file's size and "
               f"SHA-256 checked, in {done.duration_s} s")  # fmt: skip
    if done.load_check is not None:
        lc = done.load_check
        tail = " ".join(lc.output.split())[-300:]
        result.add(f"load check {name}", lc.ok,
                   f"exit {lc.exit_code} in {lc.duration_s} s" + (f": {tail}" if tail else ""))  # fmt: skip
        result.recovered[role]["load_check_s"] = lc.duration_s
    return done


def _load_check_s(result: DrillResult, role: str) -> float:
    return float(result.recovered.get(role, {}).get("load_check_s", 0.0))
