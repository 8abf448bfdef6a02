"""``checkpoints recover`` and ``checkpoints verify``, and the load check both run.

*Which checkpoint* (:func:`resolve`): an exact name, ``cet-d-{phase}-{type}`` (the newest of that
type and phase; with ``at``, the newest named at or before it — for ``production``, what the
promotion history says was in production then), or a snapshot id.

*Recover* restores the stored copy into a fresh directory beside its destination (the hot path by
default, or ``--to DIR``), every chunk and every file's size and SHA-256 checked before the file
takes its name (``Restorer``, durable: files and directories fsynced), gives the directory its
recorded mode (and owner, as root), and renames it into place.  An existing destination is never overwritten:
identical (verified against the stored copy), there is nothing to do; different, it is refused.

*Verify* reads every stored byte (against the hot copy too, when there is one), checks every
safetensors file's structure from its header (:mod:`.tensors`) and, with ``deep``, reads every
tensor (``safetensors`` + numpy) and reports NaN and Inf by tensor name.

*Load check*: ``[checkpoints] load_check_command`` (split like a shell would, ``{path}`` replaced
by the checkpoint directory in each word; no shell) runs with ``load_check_timeout``; its result
is recorded with the verification (``state/checkpoints-verified``).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coldkeep.checkpoints.inventory import KIND, record_verified, stored_checkpoints, stored_names
from coldkeep.checkpoints.naming import (
    OWN_PREFIX,
    CheckpointName,
    SnapshotRef,
    Unrecognised,
    parse_ref,
)
from coldkeep.checkpoints.service import Service, remove_tree
from coldkeep.checkpoints.store import apply_dir_meta
from coldkeep.checkpoints.tensors import MAX_HEADER, check_layout, header_length
from coldkeep.durable import fsync_dir
from coldkeep.errors import (
    EXIT_INTEGRITY,
    CheckpointDamaged,
    CheckpointError,
    CheckpointNotFound,
    ColdkeepError,
    UsageError,
)

if TYPE_CHECKING:
    from coldkeep.repository.snapshot import Snapshot
    from coldkeep.repository.tree import TreeEntry


def resolve_name(
    svc: Service, ref: str, at: datetime | None = None
) -> tuple[CheckpointName, Snapshot | None]:
    """The checkpoint ``ref`` names, hot or stored, and its stored copy when ``ref`` pins one
    (a snapshot id, or ``--at`` answered by the promotion history)."""
    parsed = parse_ref(ref)
    if isinstance(parsed, Unrecognised):
        raise UsageError(
            f"{ref!r}: {parsed.reason}", hint="e.g. cet-d-phase3/best-20251015_092000 or cet-d-phase3-best"
        )
    if isinstance(parsed, SnapshotRef):
        snap = svc.repo.find_snapshot(parsed.id)
        name = parse_ref(snap.tags.get("name", ""))
        if snap.kind != KIND or not isinstance(name, CheckpointName):
            raise CheckpointNotFound(f"{ref} (snapshot {snap.short_id} is not a checkpoint)")
        return name, snap
    if isinstance(parsed, CheckpointName):
        return parsed, None
    if at is not None and parsed.type == "production":
        from coldkeep.checkpoints.promote import production_at

        event = production_at(svc.repo, parsed.phase, at)
        if event is not None:
            name = parse_ref(event["to"])
            if isinstance(name, CheckpointName):
                return name, svc.repo.find_snapshot(event["snapshot"])
    hot = [e.name for e in svc.scan().checkpoints]
    fitting = [
        n for n in {*stored_names(stored_checkpoints(svc.repo)), *hot}
        if n.phase == parsed.phase and n.type == parsed.type and (at is None or n.time <= at)
    ]  # fmt: skip
    if not fitting:
        when = f" at {at.isoformat()}" if at else ""
        raise CheckpointNotFound(f"of type {parsed.type} in phase {parsed.phase}{when}")
    return max(fitting, key=lambda n: n.time), None


def resolve(svc: Service, ref: str, at: datetime | None = None) -> tuple[CheckpointName, Snapshot]:
    """The checkpoint ``ref`` names and its stored copy (see the module docstring)."""
    name, snap = resolve_name(svc, ref, at)
    if snap is not None:
        return name, snap
    snaps = stored_checkpoints(svc.repo).get(name.name)
    if not snaps:
        hot_path = os.path.join(svc.root, name.phase_dir, name.dirname)
        where = f" (it is on the hot disk at {hot_path})" if os.path.isdir(hot_path) else ""
        raise CheckpointNotFound(f"{name.name} in the repository{where}",
                                 hint="store it with `coldkeep checkpoints backup`")  # fmt: skip
    return name, snaps[-1]


@dataclass
class LoadCheck:
    command: list[str]
    ok: bool
    exit_code: int | None
    duration_s: float
    output: str

    def to_json(self) -> dict[str, Any]:
        return {"command": self.command, "ok": self.ok, "exit_code": self.exit_code,
                "duration_s": self.duration_s, "output": self.output}  # fmt: skip


def load_check(svc: Service, path: str) -> LoadCheck | None:
    """Run ``load_check_command`` on ``path`` (``None`` when none is set)."""
    template = svc.cfg.load_check_command
    if not template.strip():
        return None
    argv = [word.replace("{path}", path) for word in shlex.split(template)]
    started = time.monotonic()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, errors="replace",
                              timeout=svc.cfg.load_check_timeout, check=False, stdin=subprocess.DEVNULL)  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        out = (
            (exc.stdout or b"").decode(errors="replace")
            if isinstance(exc.stdout, bytes)
            else (exc.stdout or "")
        )
        return LoadCheck(argv, False, None, round(time.monotonic() - started, 3),
                         f"timed out after {svc.cfg.load_check_timeout} s\n{out[-2000:]}")  # fmt: skip
    except OSError as exc:
        return LoadCheck(argv, False, None, 0.0, f"cannot run: {exc.strerror or exc}")
    text = (proc.stdout + proc.stderr)[-2000:]
    return LoadCheck(argv, proc.returncode == 0, proc.returncode, round(time.monotonic() - started, 3), text)


@dataclass
class Recovered:
    name: str
    snapshot: str
    target: str
    action: str  # "restored" | "already there"
    files: int = 0
    bytes: int = 0
    duration_s: float = 0.0
    load_check: LoadCheck | None = None

    @property
    def exit_code(self) -> int:
        return 1 if self.load_check is not None and not self.load_check.ok else 0

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "snapshot": self.snapshot, "target": self.target, "action": self.action,
                "files": self.files, "bytes": self.bytes, "duration_s": self.duration_s,
                "load_check": self.load_check.to_json() if self.load_check else None,
                "exit_code": self.exit_code}  # fmt: skip


def recover(svc: Service, ref: str, *, to: str | None = None, at: datetime | None = None) -> Recovered:
    """``checkpoints recover`` (see the module docstring)."""
    from coldkeep.repository.restore import Restorer

    started = time.monotonic()
    with svc.exclusive("recover"):
        name, snap = resolve(svc, ref, at)
        target = os.path.abspath(to) if to else os.path.join(svc.root, name.phase_dir, name.dirname)
        if not to and name.type == "production":
            others = [e.name.name for e in svc.scan().checkpoints
                      if e.name.phase == name.phase and e.name.type == "production" and e.name != name]  # fmt: skip
            if others:
                raise CheckpointError(f"recovering {name.name} to the hot disk would make a second production "
                                      f"in phase {name.phase} (next to {others[0]})",
                                      hint="recover it with --to DIR, or promote it instead")  # fmt: skip
        result = Recovered(name.name, snap.id, target, "restored")
        if os.path.lexists(target) and not (os.path.isdir(target) and not os.listdir(target)):
            verification = svc.repo.verify_snapshot(snap, against=target)
            if not verification.ok:
                shown = "; ".join(p.line() for p in verification.problems[:3])
                raise CheckpointError(f"{target} exists and differs from the stored copy of {name.name} ({shown})",
                                      hint="recover with --to ANOTHER_DIR, or move the directory aside first")  # fmt: skip
            result.action, result.files, result.bytes = (
                "already there",
                verification.files,
                verification.bytes,
            )
        else:
            parent = os.path.dirname(target)
            os.makedirs(parent, exist_ok=True)
            for leftover in os.listdir(parent):  # a killed recover of this checkpoint
                if leftover.startswith(f"{OWN_PREFIX}recover-{os.path.basename(target)}-"):
                    remove_tree(os.path.join(parent, leftover))
            tmp = tempfile.mkdtemp(prefix=f"{OWN_PREFIX}recover-{os.path.basename(target)}-", dir=parent)
            try:
                restored = Restorer(svc.repo, durable=True).run(snap, Path(tmp))
                if restored.errors:
                    error = CheckpointDamaged if restored.damage else CheckpointError
                    raise error(
                        f"{name.name}: {len(restored.errors)} file(s) could not be restored: {restored.errors[0]}"
                    )
                apply_dir_meta(tmp, snap)
                if os.path.isdir(target):
                    os.rmdir(target)  # empty (checked above)
                os.rename(tmp, target)
                fsync_dir(parent)
            except BaseException:
                if os.path.isdir(tmp):
                    remove_tree(tmp)
                raise
            result.files, result.bytes = restored.files, restored.bytes
        result.load_check = load_check(svc, target)
        record_verified(svc.repo, name.name, snap.id, "recovered", load_check=_lc(result.load_check))
    result.duration_s = round(time.monotonic() - started, 3)
    return result


def _lc(check: LoadCheck | None) -> dict[str, Any] | None:
    return (
        None
        if check is None
        else {"ok": check.ok, "exit_code": check.exit_code, "duration_s": check.duration_s}
    )


@dataclass
class Verified:
    name: str
    snapshot: str
    against: str | None
    files: int = 0
    bytes: int = 0
    tensors: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    load_check: LoadCheck | None = None

    @property
    def exit_code(self) -> int:
        if self.problems:
            return EXIT_INTEGRITY
        return 1 if self.load_check is not None and not self.load_check.ok else 0

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "snapshot": self.snapshot, "against": self.against, "ok": not self.problems,
                "files": self.files, "bytes": self.bytes, "tensors": self.tensors, "problems": self.problems,
                "notes": self.notes,
                "load_check": self.load_check.to_json() if self.load_check else None,
                "exit_code": self.exit_code}  # fmt: skip


def verify(svc: Service, ref: str, *, deep: bool = False) -> Verified:
    """``checkpoints verify`` (see the module docstring)."""
    from coldkeep.checkpoints.deep import deep_check

    name, snap = resolve(svc, ref)
    hot = os.path.join(svc.root, name.phase_dir, name.dirname)
    against = hot if os.path.isdir(hot) else None
    verification = svc.repo.verify_snapshot(snap, against=against)
    result = Verified(name.name, snap.id, against, verification.files, verification.bytes)
    result.problems += [p.line() for p in verification.problems]
    entries = [
        e
        for e in svc.repo.iter_tree(snap)
        if e.get("type") == "file" and e["path"].lower().endswith(".safetensors")
    ]
    for entry in entries:
        try:
            layout = _stored_layout(svc, snap, entry)
        except ColdkeepError as exc:
            result.problems.append(f"{entry['path']}: {exc.message}")
            continue
        result.tensors += len(layout.tensors)
        reasons = ([layout.fatal] if layout.fatal else []) + layout.problems
        if not layout.fatal and not layout.complete:
            reasons.append(layout.incomplete_reason)
        result.problems += [f"{entry['path']}: {r}" for r in reasons]
    if deep and not verification.problems:
        result.problems += deep_check(svc, snap, entries, against)
    if against is not None:
        result.load_check = load_check(svc, against)
    elif svc.cfg.load_check_command:
        result.notes.append("load check skipped: the checkpoint is not on the hot disk (recover it first)")
    if not result.problems:
        record_verified(
            svc.repo, name.name, snap.id, "hot" if against else "stored", load_check=_lc(result.load_check)
        )
    return result


def _stored_layout(svc: Service, snap: Snapshot, entry: TreeEntry) -> Any:
    """The safetensors layout of a stored file, from its first bytes only."""
    size = int(entry.get("size", 0))
    with svc.repo.open_entry(snap, entry) as reader:
        head = _read_exact(reader, min(size, 8))
        n = header_length(head)
        if n is not None and 8 + n <= min(size, 8 + MAX_HEADER):
            head += _read_exact(reader, n)
    return check_layout(head, size)


def _read_exact(reader: Any, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        piece = reader.read(n - len(out))
        if not piece:
            break
        out += piece
    return bytes(out)
