"""The checkpoint naming convention, parsed by one pure function (no I/O, no clock).

The spec's layout is ``<root>/cet-d-{phase}/{type}-{YYYYmmdd_HHMMSS}``: one directory per phase,
one directory per checkpoint, ``type`` one of :data:`TYPES`.  :func:`parse` turns a phase
directory's name and a checkpoint directory's name into a :class:`CheckpointName`, or an
:class:`Unrecognised` saying why not; nothing is ever guessed (a name that does not parse is
listed and left alone).  The time in a name is read as UTC.

:func:`parse_ref` reads what a user may call a checkpoint on the command line (``recover``,
``verify``, ``export``, ``promote``): an exact name ``cet-d-phase3/best-20251015_092000``, the
spec's ``cet-d-phase3-best`` (the newest ``best`` of phase 3; with ``--at`` the one in place at
that time), or a snapshot id.  Golden-tested: ``tests/unit/golden/checkpoint_names.json``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = [
    "PHASE_PREFIX",
    "TYPES",
    "CheckpointName",
    "Latest",
    "SnapshotRef",
    "Unrecognised",
    "is_own_temp",
    "parse",
    "parse_name",
    "parse_phase",
    "parse_ref",
    "stamp_of",
]

#: the checkpoint types, in the spec's order
TYPES = ("checkpoint", "best", "production", "rollback")
PHASE_PREFIX = "cet-d-"
#: the names coldkeep gives its own work directories inside a phase directory (never parsed)
OWN_PREFIX = ".coldkeep-"

_PHASE = re.compile(r"cet-d-([A-Za-z0-9][A-Za-z0-9._-]{0,63})")
_CHECKPOINT = re.compile(r"(checkpoint|best|production|rollback)-([0-9]{8}_[0-9]{6})")
_STAMP_FORMAT = "%Y%m%d_%H%M%S"
_SNAPSHOT_ID = re.compile(r"[0-9a-f]{8,64}")


@dataclass(frozen=True, order=True)
class CheckpointName:
    """A parsed checkpoint name: ``cet-d-{phase}/{type}-{stamp}``."""

    phase: str
    type: str
    stamp: str  # YYYYmmdd_HHMMSS

    @property
    def time(self) -> datetime:
        """The time in the name, as UTC."""
        return datetime.strptime(self.stamp, _STAMP_FORMAT).replace(tzinfo=UTC)

    @property
    def phase_dir(self) -> str:
        return PHASE_PREFIX + self.phase

    @property
    def dirname(self) -> str:
        return f"{self.type}-{self.stamp}"

    @property
    def name(self) -> str:
        return f"{self.phase_dir}/{self.dirname}"

    def with_type(self, type_: str, stamp: str) -> CheckpointName:
        return CheckpointName(self.phase, type_, stamp)

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Unrecognised:
    """A name that is not a checkpoint of the convention, and why."""

    name: str
    reason: str


@dataclass(frozen=True)
class Latest:
    """``cet-d-{phase}-{type}``: the newest checkpoint of that type in that phase (or the one in
    place at ``--at``)."""

    phase: str
    type: str


@dataclass(frozen=True)
class SnapshotRef:
    """A snapshot id (or a unique prefix of at least 8 hex digits)."""

    id: str


def stamp_of(moment: datetime) -> str:
    """``moment`` as a name's ``YYYYmmdd_HHMMSS`` (UTC)."""
    return moment.astimezone(UTC).strftime(_STAMP_FORMAT)


def _valid_stamp(stamp: str) -> bool:
    try:
        datetime.strptime(stamp, _STAMP_FORMAT)
    except ValueError:
        return False
    return True


def parse_phase(dirname: str) -> str | Unrecognised:
    """The phase of a phase directory's name (``cet-d-phase3`` -> ``phase3``)."""
    m = _PHASE.fullmatch(dirname)
    if m is None:
        return Unrecognised(dirname, "not a phase directory (cet-d-{phase}: letters, digits, . _ -)")
    return m.group(1)


def parse(phase_dirname: str, dirname: str) -> CheckpointName | Unrecognised:
    """The checkpoint ``phase_dirname/dirname``, or why it is not one."""
    phase = parse_phase(phase_dirname)
    full = f"{phase_dirname}/{dirname}"
    if isinstance(phase, Unrecognised):
        return Unrecognised(full, phase.reason)
    m = _CHECKPOINT.fullmatch(dirname)
    if m is None:
        head = dirname.split("-", 1)[0]
        if head not in TYPES:
            return Unrecognised(full, f"unknown type {head!r} (one of {', '.join(TYPES)})")
        return Unrecognised(full, "not {type}-YYYYmmdd_HHMMSS")
    if not _valid_stamp(m.group(2)):
        return Unrecognised(full, f"{m.group(2)} is not a valid date and time")
    return CheckpointName(phase, m.group(1), m.group(2))


def parse_name(text: str) -> CheckpointName | Unrecognised:
    """``cet-d-phase3/best-20251015_092000`` (also with a leading path: its last two parts)."""
    parts = [p for p in text.strip().split("/") if p]
    if len(parts) < 2:
        return Unrecognised(text, "not cet-d-{phase}/{type}-YYYYmmdd_HHMMSS")
    return parse(parts[-2], parts[-1])


def parse_ref(text: str) -> CheckpointName | Latest | SnapshotRef | Unrecognised:
    """What a user may call a checkpoint (see the module docstring)."""
    text = text.strip()
    if "/" in text:
        return parse_name(text)
    phase_and_type = parse_phase(text)
    if not isinstance(phase_and_type, Unrecognised):
        phase, _, type_ = phase_and_type.rpartition("-")
        if type_ in TYPES and phase and not isinstance(parse_phase(PHASE_PREFIX + phase), Unrecognised):
            return Latest(phase, type_)
        return Unrecognised(text, f"not cet-d-{{phase}}-{{type}} (type one of {', '.join(TYPES)})")
    if _SNAPSHOT_ID.fullmatch(text):
        return SnapshotRef(text)
    return Unrecognised(
        text,
        "not a checkpoint name (cet-d-phase3/best-20251015_092000), cet-d-{phase}-{type}, or a snapshot id",
    )


def is_own_temp(dirname: str) -> bool:
    """A work directory coldkeep made (a hot copy renamed aside, a promotion being built)."""
    return dirname.startswith(OWN_PREFIX)
