"""Disaster-recovery drills: ``coldkeep drill --scenario database|checkpoint|dataset|conversations|full
[--from-copy NAME]``.

Each scenario recovers what it protects into a scratch directory, never touching the live copy,
checks it, and times every step (:mod:`.drill_database`, :mod:`.drill_checkpoint`,
:mod:`.drill_dataset`, :mod:`.drill_conversations`; shared parts in :mod:`.drill_common`).
``full`` is the spec's "complete hardware failure": every scenario one after another, each one's
result nested under ``scenarios``, the total time judged against ``[drill] rto_objective``.  A
scenario with nothing to protect (no checkpoint archived, no dataset version, no
``[conversations]``) is reported as skipped with its reason and does not fail the drill; any
failing check does.

The random choices (which archived checkpoint, which older dataset version, which session) come
from one seed, recorded in the result (``--seed`` repeats them); each scenario draws from its
own generator seeded with it, so a scenario chooses the same objects alone or within ``full``.

``--from-copy NAME`` opens the repository copy ``NAME`` instead of the repository, for every
scenario (and the services that open the repository themselves are given a config reading it).

The result is recorded in the repository read (``state/drill-history``, the newest 100 drills)
where ``status``, metrics and the report read it: ``rto_s`` (the total), ``rpo_s`` (the database
scenario's), ``scenario``.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from coldkeep import clock
from coldkeep.config import Config
from coldkeep.errors import UsageError
from coldkeep.ops.drill_checkpoint import drill_checkpoint
from coldkeep.ops.drill_common import ONE_TB_IN_AN_HOUR_MB_S, DrillResult, copy_repository
from coldkeep.ops.drill_conversations import drill_conversations
from coldkeep.ops.drill_database import drill_database
from coldkeep.ops.drill_dataset import drill_dataset
from coldkeep.repository.locks import locked
from coldkeep.repository.repository import Repository

__all__ = ["HISTORY_STATE", "ONE_TB_IN_AN_HOUR_MB_S", "SCENARIOS", "DrillResult", "copy_repository",
           "history", "record", "run_drill"]  # fmt: skip

HISTORY_STATE = "drill-history"
HISTORY_KEEP = 100
#: every scenario, in the order ``full`` runs them
PARTS = ("database", "checkpoint", "dataset", "conversations")
SCENARIOS = (*PARTS, "full")


def run_drill(
    config: Config,
    repo: Repository,
    *,
    scenario: str = "database",
    copy_name: str | None = None,
    scratch: Path | None = None,
    rto_objective_s: float = 3600.0,
    live: bool = True,
    seed: int | None = None,
) -> DrillResult:
    """Run one drill (see the module doc) and record it; never raises for a failed check (the
    result says which), only for what stops the drill from running at all."""
    if scenario not in SCENARIOS:
        raise UsageError(f"unknown drill scenario {scenario!r}", hint=f"one of: {', '.join(SCENARIOS)}")
    if seed is None:
        seed = random.SystemRandom().randrange(2**32)
    with locked(repo.backend, "drill", exclusive=False):
        if scenario == "full":
            result = _full(config, repo, copy_name, scratch, rto_objective_s, live, seed)
        else:
            result = _one(config, repo, scenario, copy_name, scratch, rto_objective_s, live, seed)
    record(repo, result)
    return result


def _one(
    config: Config,
    repo: Repository,
    scenario: str,
    copy_name: str | None,
    scratch: Path | None,
    rto_objective_s: float,
    live: bool,
    seed: int,
) -> DrillResult:
    source = f"copy {copy_name}" if copy_name else "repository"
    result = DrillResult(scenario, source, rto_objective_s=rto_objective_s, seed=seed,
                         started_at=clock.isoformat(clock.now()))  # fmt: skip
    rng = random.Random(f"{seed}-{scenario}")
    started = time.monotonic()
    if scenario == "database":
        # from a copy, a restore point made now would not be in it until the next `repo copy`
        drill_database(config, repo, result, copy_name, scratch, live and copy_name is None)
    elif scenario == "checkpoint":
        drill_checkpoint(config, repo, result, scratch, rng)
    elif scenario == "dataset":
        drill_dataset(config, repo, result, scratch, rng)
    else:
        drill_conversations(config, repo, result, copy_name, scratch, rng)
    result.total_s = round(time.monotonic() - started, 3)
    _judge(result)
    return result


def _full(
    config: Config,
    repo: Repository,
    copy_name: str | None,
    scratch: Path | None,
    rto_objective_s: float,
    live: bool,
    seed: int,
) -> DrillResult:
    """Every scenario in turn, as after losing the whole machine: the checks of all, prefixed
    with their scenario; the total time; the RTO projected as the sum of the scenarios'."""
    source = f"copy {copy_name}" if copy_name else "repository"
    result = DrillResult("full", source, rto_objective_s=rto_objective_s, seed=seed,
                         started_at=clock.isoformat(clock.now()))  # fmt: skip
    started = time.monotonic()
    projected = 0.0
    for part in PARTS:
        sub = _one(config, repo, part, copy_name, scratch, rto_objective_s, live, seed)
        result.scenarios[part] = sub.to_json()
        if sub.skipped:
            continue
        result.steps[part] = sub.total_s
        result.bytes += sub.bytes
        result.checks += [{**c, "name": f"{part}: {c['name']}"} for c in sub.checks]
        projected += sub.projection.get("projected_rto_s", sub.total_s)
        if part == "database":
            result.backup_id, result.rpo_s = sub.backup_id, sub.rpo_s
            result.recovered_until = sub.recovered_until
    result.total_s = round(time.monotonic() - started, 3)
    result.projection = {"one_tb_in_an_hour_mb_s": round(ONE_TB_IN_AN_HOUR_MB_S, 1)}
    if result.steps:
        result.projection["projected_rto_s"] = round(projected, 1)
    else:
        result.skip("no scenario had anything to protect")
    _judge(result)
    return result


def _judge(result: DrillResult) -> None:
    if result.skipped:
        result.ok, result.verdict = True, "skipped"
        return
    result.ok = bool(result.checks) and all(c["ok"] for c in result.checks)
    if not result.ok:
        result.verdict = "failed"
        return
    over = result.total_s > result.rto_objective_s or (
        result.projection.get("projected_rto_s", 0.0) > result.rto_objective_s
    )
    result.verdict = "over-objective" if over else "passed"


def record(repo: Repository, result: DrillResult) -> None:
    """Append ``result`` to the repository's drill history (compare-and-swap; the newest 100)."""

    def update(doc: dict[str, Any] | None) -> dict[str, Any]:
        drills = list((doc or {}).get("drills", []))
        drills.append(result.to_json())
        return {"drills": drills[-HISTORY_KEEP:]}

    repo.update_state(HISTORY_STATE, update)


def history(repo: Repository) -> list[dict[str, Any]]:
    doc = repo.get_state(HISTORY_STATE) or {}
    return list(doc.get("drills", []))
