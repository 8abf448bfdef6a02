"""``checkpoints promote``, ``checkpoints rollback`` and ``checkpoints history``.

The spec's naming: promoting ``cet-d-phase4/best-20251015_092000`` makes it appear as
``cet-d-phase4/production-{now}`` (hard links to its files: no copy, same file system), and the
previous production becomes ``rollback-{now}`` (renamed, so its 30-day rollback retention counts
from its demotion; its original name stays in the history).  ``rollback PHASE`` makes the most
recently demoted production the production again (as ``production-{now}``, linked from its
``rollback-…`` directory, or restored from the repository when that was archived) and demotes
the current one the same way.

The history is the repository record ``state/checkpoints-history`` (changed only by
compare-and-swap): one event per promotion or rollback — who, when, phase, from, to, the
demoted production's name before and after, the stored snapshot of what became production, the
reason — so ``recover cet-d-phase4-production --at TIME`` can answer what was in production then,
and the offsite copy carries it.

Kill-safe, and never two productions in a phase:

1. the event is recorded first, ``state: pending`` (at most one per phase);
2. the new production is built under ``.coldkeep-promote-<event id>`` (rebuilt from scratch when a
   killed run left it half made);
3. the current production is renamed to its ``rollback-{now}`` name;
4. the new one is renamed to ``production-{now}``;
5. the event is marked ``done``.

Each step checks whether it was done already, so any later promote, rollback or history run
finishes a pending event before anything else: the new production never has its name before the
old one lost its name.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from coldkeep import clock
from coldkeep.checkpoints.inventory import stored_checkpoints
from coldkeep.checkpoints.naming import OWN_PREFIX, CheckpointName, parse_name, stamp_of
from coldkeep.checkpoints.service import Service, kill_point, remove_tree
from coldkeep.durable import fsync_dir
from coldkeep.errors import CheckpointBusy, CheckpointError, CheckpointNotFound, UsageError

HISTORY_STATE = "checkpoints-history"
BUILD = OWN_PREFIX + "promote-"


def history(svc: Service, phase: str | None = None) -> list[dict[str, Any]]:
    """Every promotion and rollback (of ``phase``), oldest first.  Pending ones (a run was killed)
    are finished first, unless another run holds the root (then they are shown as pending)."""
    events = (svc.repo.get_state(HISTORY_STATE) or {}).get("events", [])
    if any(e.get("state") == "pending" for e in events):
        try:
            with svc.exclusive("history"):
                finish_pending(svc)
        except CheckpointBusy:
            pass
        events = (svc.repo.get_state(HISTORY_STATE) or {}).get("events", [])
    return [e for e in events if phase is None or e.get("phase") == phase]


def production_at(repo: Any, phase: str, at: datetime) -> dict[str, Any] | None:
    """The last completed event of ``phase`` at or before ``at`` (its ``to`` was in production)."""
    events = (repo.get_state(HISTORY_STATE) or {}).get("events", [])
    done = [e for e in events if e.get("phase") == phase and e.get("state") == "done"
            and clock.parse_timestamp(e["time"]) <= at]  # fmt: skip
    return done[-1] if done else None


def _update(svc: Service, change: Any) -> dict[str, Any] | None:
    return svc.repo.update_state(HISTORY_STATE, change)


def _hot(svc: Service, name: str) -> str:
    phase_dir, dirname = name.split("/", 1)
    return os.path.join(svc.root, phase_dir, dirname)


def _snapshot_of(svc: Service, name: CheckpointName) -> str:
    """The stored copy of ``name``: the one the history records for it (a production made by a
    promotion, just linked, so not settled yet), else the newest stored, else one made now
    (strict; the checkpoint must be complete)."""
    from coldkeep.checkpoints.store import store

    events = (svc.repo.get_state(HISTORY_STATE) or {}).get("events", [])
    made = [e for e in events if e.get("to") == name.name and e.get("state") == "done"]
    if made:
        return str(made[-1]["snapshot"])
    snaps = stored_checkpoints(svc.repo).get(name.name)
    if snaps:
        return snaps[-1].id
    hot = _hot(svc, name.name)
    if not os.path.isdir(hot):
        raise CheckpointNotFound(f"{name.name} (neither on the hot disk nor in the repository)")
    entry = next((e for e in svc.scan().checkpoints if e.name == name), None)
    if entry is None or not entry.assessment.complete:
        why = entry.assessment.reason() if entry else "not recognised"
        raise CheckpointError(f"{name.name} is incomplete ({why}); it cannot be promoted")
    return store(svc.repo, name, hot).id


def _link_tree(source: str, dest: str) -> None:
    """``dest`` made of hard links to ``source``'s files (directories and symlinks recreated)."""
    os.mkdir(dest)
    shutil.copystat(source, dest)
    for dirpath, dirnames, filenames in os.walk(source):
        rel = os.path.relpath(dirpath, source)
        out = dest if rel == "." else os.path.join(dest, rel)
        for d in dirnames:
            src = os.path.join(dirpath, d)
            if os.path.islink(src):
                os.symlink(os.readlink(src), os.path.join(out, d))
            else:
                os.mkdir(os.path.join(out, d))
                shutil.copystat(src, os.path.join(out, d))
        for f in filenames:
            src = os.path.join(dirpath, f)
            if os.path.islink(src):
                os.symlink(os.readlink(src), os.path.join(out, f))
            else:
                os.link(src, os.path.join(out, f))


def _build(svc: Service, event: dict[str, Any], build: str) -> None:
    """Step 2: the new production under its build name."""
    from coldkeep.checkpoints.store import apply_dir_meta
    from coldkeep.repository.restore import Restorer

    if os.path.lexists(build):
        remove_tree(build)
    source = _hot(svc, event["from"])
    if os.path.isdir(source):
        _link_tree(source, build)
    else:
        snap = svc.repo.load_snapshot_id(event["snapshot"])
        result = Restorer(svc.repo, durable=True).run(snap, Path(build))
        if result.errors:
            remove_tree(build)
            raise CheckpointError(f"{event['from']}: cannot restore it to promote it: {result.errors[0]}")
        apply_dir_meta(build, snap)
    fsync_dir(os.path.dirname(build))


def _apply(svc: Service, event: dict[str, Any]) -> None:
    """Steps 2–5 for a pending ``event``, each skipped when already done."""
    new = _hot(svc, event["to"])
    phase_dir = os.path.dirname(new)
    build = os.path.join(phase_dir, BUILD + event["id"])
    if not os.path.isdir(new):
        _build(svc, event, build)  # from scratch: a killed run may have left it half made
        kill_point("promote-built")
        old, demoted = event.get("demote_from") or "", event.get("demote_to") or ""
        if old and demoted and os.path.isdir(_hot(svc, old)) and not os.path.lexists(_hot(svc, demoted)):
            os.rename(_hot(svc, old), _hot(svc, demoted))
            fsync_dir(phase_dir)
            kill_point("promote-demoted")
        os.rename(build, new)
        fsync_dir(phase_dir)
        kill_point("promote-renamed")

    def done(doc: dict[str, Any] | None) -> dict[str, Any] | None:
        for e in (doc or {}).get("events", []):
            if e["id"] == event["id"] and e["state"] != "done":
                e["state"] = "done"
                return doc
        return None

    _update(svc, done)


def finish_pending(svc: Service) -> list[dict[str, Any]]:
    """Complete every promotion or rollback a killed run left pending."""
    events = (svc.repo.get_state(HISTORY_STATE) or {}).get("events", [])
    pending = [e for e in events if e.get("state") == "pending"]
    for event in pending:
        _apply(svc, event)
    return pending


def _productions(svc: Service, phase: str) -> list[CheckpointName]:
    return sorted(
        e.name for e in svc.scan().checkpoints if e.name.phase == phase and e.name.type == "production"
    )


def _stamp(svc: Service, phase: str) -> str:
    """A ``YYYYmmdd_HHMMSS`` of now that no production or rollback of ``phase`` has yet."""
    moment = clock.now()
    taken = {e.name.stamp for e in svc.scan().checkpoints if e.name.phase == phase}
    while stamp_of(moment) in taken:
        moment += timedelta(seconds=1)
    return stamp_of(moment)


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def _change(svc: Service, action: str, source: CheckpointName, snapshot: str, reason: str) -> dict[str, Any]:
    """Record the event (step 1) and carry it out (steps 2–5)."""
    phase = source.phase
    current = _productions(svc, phase)
    if len(current) > 1:
        raise CheckpointError(f"phase {phase} has {len(current)} production checkpoints on the hot disk: "
                              + ", ".join(c.name for c in current), hint="rename all but one, then run it again")  # fmt: skip
    old = current[0] if current else None
    if old is not None and old == source:
        raise UsageError(f"{source.name} is the production checkpoint of phase {phase} already")
    stamp = _stamp(svc, phase)
    event = {
        "id": uuid.uuid4().hex[:16], "action": action, "phase": phase, "time": clock.isoformat(clock.now()),
        "who": _who(), "from": source.name, "to": source.with_type("production", stamp).name,
        "snapshot": snapshot, "demote_from": old.name if old else None,
        "demote_to": old.with_type("rollback", stamp).name if old else None,
        "demoted_snapshot": _snapshot_of(svc, old) if old else None,
        "reason": reason, "state": "pending",
    }  # fmt: skip

    def append(doc: dict[str, Any] | None) -> dict[str, Any]:
        doc = doc or {"events": []}
        if any(e.get("phase") == phase and e.get("state") == "pending" for e in doc["events"]):
            raise CheckpointError(f"a promotion of phase {phase} is pending", hint="run the command again")
        doc["events"].append(event)
        return doc

    _update(svc, append)
    kill_point("promote-recorded")
    _apply(svc, event)
    event["state"] = "done"
    return event


def promote(svc: Service, ref: str, reason: str = "") -> dict[str, Any]:
    """``checkpoints promote NAME [--reason]``."""
    from coldkeep.checkpoints.recover import resolve_name

    with svc.exclusive("promote"):
        finish_pending(svc)
        name, snap = resolve_name(svc, ref)
        return _change(svc, "promote", name, snap.id if snap else _snapshot_of(svc, name), reason)


def rollback(svc: Service, phase: str, reason: str = "") -> dict[str, Any]:
    """``checkpoints rollback PHASE [--reason]``: the most recently demoted production returns."""
    phase = phase.removeprefix("cet-d-")
    with svc.exclusive("rollback"):
        finish_pending(svc)
        events = [e for e in (svc.repo.get_state(HISTORY_STATE) or {}).get("events", [])
                  if e.get("phase") == phase and e.get("demote_to")]  # fmt: skip
        if not events:
            raise CheckpointNotFound(f"demoted production in phase {phase} to roll back to",
                                     hint="`coldkeep checkpoints history` shows what was promoted")  # fmt: skip
        last = events[-1]
        target = parse_name(last["demote_to"])
        assert isinstance(target, CheckpointName)
        snapshot = last["demoted_snapshot"]
        return _change(svc, "rollback", target, snapshot, reason)
