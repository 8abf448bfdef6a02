"""Is a checkpoint directory complete, i.e. safe to store and, later, to remove from the hot disk?

Training frameworks write checkpoints in place, and cleanup that took a half-written one for a
finished one is how days of training get lost.  A checkpoint is *complete* only when all of this
holds (:func:`assess`, then :func:`apply_commit_rule` across a phase):

* every ``*.safetensors`` file's header parses and its data section is exactly as long as its
  tensors say (:mod:`.tensors`);
* every shard named by an index file (``*.index.json`` with a ``weight_map``) exists;
* no Orbax ``*.orbax-checkpoint-tmp-*`` entry is in it;
* a directory with torch.distributed shards (``*.distcp``) has its ``.metadata`` (written last);
* ``commit_success.txt`` is present when the framework writes one — taken as: another checkpoint
  of the same phase has one (Orbax writes it on file systems without atomic rename);
* no symlink in it points outside it (the target would not be archived with it);
* it holds at least one file, and nothing in it (files, directories, the directory itself) was
  modified — ``mtime`` or ``ctime``, so a copy that keeps old mtimes still counts — in the last
  ``settle_seconds``.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field

from coldkeep.checkpoints.tensors import read_layout

COMMIT_MARKER = "commit_success.txt"
ORBAX_TMP = ".orbax-checkpoint-tmp-"
DCP_METADATA = ".metadata"
#: reasons kept per checkpoint (the rest are counted)
MAX_REASONS = 5


@dataclass
class Assessment:
    """What :func:`assess` found in one checkpoint directory."""

    path: str
    files: int = 0
    bytes: int = 0
    #: newest mtime or ctime of anything in it (seconds since the epoch)
    changed: float = 0.0
    has_commit_marker: bool = False
    reasons: list[str] = field(default_factory=list)
    more_reasons: int = 0

    @property
    def complete(self) -> bool:
        return not self.reasons

    def add(self, reason: str) -> None:
        if len(self.reasons) < MAX_REASONS:
            self.reasons.append(reason)
        else:
            self.more_reasons += 1

    def reason(self) -> str:
        """One line: why it is incomplete ("" when complete)."""
        more = f" (+{self.more_reasons} more)" if self.more_reasons else ""
        return "; ".join(self.reasons) + more


def assess(path: str, *, now: float, settle_seconds: float) -> Assessment:
    """Everything but the phase-wide commit-marker rule (see the module docstring)."""
    result = Assessment(path)
    root = os.path.abspath(path)
    try:
        st = os.lstat(root)
    except OSError as exc:
        result.add(f"cannot read: {exc.strerror}")
        return result
    result.changed = max(st.st_mtime, st.st_ctime)
    _walk(root, "", result)
    if result.files == 0 and not result.reasons:
        result.add("holds no file")
    age = now - result.changed
    if age < settle_seconds:
        result.add(f"modified {max(age, 0):.0f} s ago (settle_seconds {settle_seconds:g})")
    return result


def _walk(root: str, rel: str, result: Assessment) -> None:
    directory = os.path.join(root, rel) if rel else root
    try:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        result.add(f"{rel or '.'}: cannot list ({exc.strerror})")
        return
    names = {e.name for e in entries}
    if any(n.endswith(".distcp") for n in names) and DCP_METADATA not in names:
        result.add(f"{rel or '.'}: torch.distributed shards without {DCP_METADATA} (save in progress?)")
    for entry in entries:
        name = f"{rel}/{entry.name}" if rel else entry.name
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError as exc:
            result.add(f"{name}: cannot stat ({exc.strerror})")
            continue
        result.changed = max(result.changed, st.st_mtime, st.st_ctime)
        if ORBAX_TMP in entry.name:
            result.add(f"{name}: Orbax save in progress")
        if stat.S_ISDIR(st.st_mode):
            _walk(root, name, result)
        elif stat.S_ISLNK(st.st_mode):
            _check_link(root, name, result)
        elif stat.S_ISREG(st.st_mode):
            result.files += 1
            result.bytes += st.st_size
            _check_file(root, name, entry.name, result)


def _check_link(root: str, name: str, result: Assessment) -> None:
    target = os.readlink(os.path.join(root, name))
    resolved = os.path.normpath(os.path.join(root, os.path.dirname(name), target))
    if os.path.isabs(target) or not (resolved + "/").startswith(root + "/"):
        result.add(f"{name}: symlink to {target!r} outside the checkpoint (it would not be archived)")


def _check_file(root: str, name: str, base: str, result: Assessment) -> None:
    path = os.path.join(root, name)
    lower = base.lower()
    if base == COMMIT_MARKER:
        result.has_commit_marker = True
    elif lower.endswith(".safetensors"):
        try:
            layout = read_layout(path)
        except OSError as exc:
            result.add(f"{name}: cannot read ({exc.strerror})")
            return
        if not layout.complete:
            result.add(f"{name}: {layout.incomplete_reason}")
    elif lower.endswith(".index.json"):
        _check_index(root, name, result)


def _check_index(root: str, name: str, result: Assessment) -> None:
    path = os.path.join(root, name)
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
    except (OSError, ValueError) as exc:
        result.add(f"{name}: index does not parse ({str(exc)[:80]})")
        return
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict):
        return  # not a shard index
    here = os.path.dirname(path)
    missing = sorted({str(s) for s in weight_map.values() if not os.path.isfile(os.path.join(here, str(s)))})
    if missing:
        shown = ", ".join(missing[:3]) + (f" (+{len(missing) - 3} more)" if len(missing) > 3 else "")
        result.add(f"{name}: names shards that do not exist: {shown}")


def apply_commit_rule(assessments: Sequence[Assessment]) -> None:
    """Within one phase: when any checkpoint has a ``commit_success.txt``, the framework writes
    one, so a checkpoint without it is still being saved."""
    if any(a.has_commit_marker for a in assessments):
        for a in assessments:
            if not a.has_commit_marker:
                a.add(f"no {COMMIT_MARKER} (other checkpoints of this phase have one: save in progress?)")
