"""The WAL archive: lineages, ``wal-push``, ``wal-fetch`` and listings.

WAL files are named write-once objects in the repository (:meth:`Repository.put_named`), not
snapshots: ``<prefix>/<timeline>/<name>`` (:func:`coldkeep.postgres.wal.archive_key`).  Storing
one is durable when ``put_named`` returns (the local backend fsyncs the file and its directory,
S3 acknowledges a completed PUT), and never overwrites: an identical re-push is a success with a
warning, a different one an :class:`WalExists` error (pgBackRest's rule).

Lineages
--------
The archive belongs to one cluster, identified by its *system identifier* (``pg_control``, also in
every segment's first page header).  ``pg setup`` records it in the repository state
``state/pg-lineage``::

    {"lineages": [{"system_identifier": 7311..., "prefix": "wal", "started": "2026-11-26T08:00:00Z"},
                  {"system_identifier": 7392..., "prefix": "wal-7392...", "started": "..."}]}

The last lineage is the *current* one: ``wal-push`` stores there and refuses segments whose header
carries another system identifier ("push from another cluster").  ``pg_upgrade`` makes a new
system identifier; ``pg setup --new-lineage`` then appends a lineage with prefix
``wal-<system identifier>`` so the older base backups keep their WAL under the old prefix and stay
restorable (a restore passes ``--lineage PREFIX`` to ``wal-fetch``).

This module imports neither the configuration nor click/rich: it is on the per-segment path.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from coldkeep import clock
from coldkeep.durable import write_atomic
from coldkeep.errors import (
    EXIT_FAILED,
    ColdkeepError,
    IntegrityError,
    NotFound,
    ObjectExists,
    PostgresError,
    UsageError,
)
from coldkeep.errors import NotArchived as NotArchived  # (defined there for wal-fetch's lean miss path)
from coldkeep.postgres import wal
from coldkeep.repository.repository import Repository

LINEAGE_STATE = "pg-lineage"
#: WAL objects are compressed at most at this zstd level: on WAL, level 1 compresses as well as
#: level 3 (2.50x vs 2.41x on md5-text rows) for half the CPU, and the archiver waits for it
WAL_MAX_LEVEL = 1
FIRST_PREFIX = "wal"


# ------------------------------------------------------------------------------------------------
# errors


class NoLineage(PostgresError):
    template = "no PostgreSQL cluster is registered with this repository{detail}"
    hint = "run `coldkeep pg setup --apply` on the database server first"


class OtherCluster(PostgresError):
    """``pg setup`` on a cluster whose system identifier is not the recorded one."""

    template = (
        "this repository archives the cluster with system identifier {recorded}; "
        "the server has {found}{detail}"
    )
    hint = (
        "if the server was upgraded with pg_upgrade, start a new lineage with "
        "`coldkeep pg setup --new-lineage`; otherwise point [repository].url at this cluster's repository"
    )


class WalExists(IntegrityError):
    template = (
        "{detail} is already archived with DIFFERENT content (archived: {archived}; new: {new}); "
        "refusing to overwrite it"
    )
    hint = (
        "two clusters may archive into one repository, or a restored copy archives into production's "
        "archive; stop that server's archiving and compare the system identifiers (`coldkeep pg check`)"
    )


class UnknownLineage(NotFound):
    template = "no WAL lineage {detail} in this repository"
    hint = "the lineages are recorded by `coldkeep pg setup`; a restore passes the one of its backup"


class WalDestUnwritable(ColdkeepError):
    exit_code = EXIT_FAILED
    template = "cannot write {detail}"
    hint = "PostgreSQL passes the destination as %p (relative to the data directory); check its directory"


class WalFileUnreadable(ColdkeepError):
    exit_code = EXIT_FAILED
    template = "cannot read {detail}"
    hint = "PostgreSQL passes the segment's path as %p; check that it exists and is readable by this user"


# ------------------------------------------------------------------------------------------------
# lineages


def lineages(repo: Repository) -> list[dict[str, Any]]:
    """Every recorded lineage, oldest first (empty when ``pg setup`` never ran)."""
    return _lineage_list(repo.get_state(LINEAGE_STATE))


def _lineage_list(doc: dict[str, Any] | None) -> list[dict[str, Any]]:
    items = (doc or {}).get("lineages", [])
    if not isinstance(items, list):
        raise IntegrityError(f"state/{LINEAGE_STATE}: 'lineages' is not a list")
    return [dict(item) for item in items]


def current_lineage(repo: Repository) -> dict[str, Any] | None:
    """The lineage new WAL goes to (the last one), or ``None``."""
    items = lineages(repo)
    return items[-1] if items else None


def find_lineage(repo: Repository, prefix: str | None = None) -> dict[str, Any]:
    """The lineage with ``prefix``, or the current one when ``prefix`` is ``None``."""
    items = lineages(repo)
    if not items:
        raise NoLineage()
    if prefix is None:
        return items[-1]
    for item in items:
        if item.get("prefix") == prefix:
            return item
    known = ", ".join(str(i.get("prefix")) for i in items)
    raise UnknownLineage(f"{prefix!r} (known: {known})")


def record_system_identifier(
    repo: Repository, system_identifier: int, *, new_lineage: bool = False, pg_version: int | None = None
) -> tuple[dict[str, Any], bool]:
    """Register the cluster; returns ``(current lineage, changed)``.

    First time: records the ``wal`` lineage.  Same system identifier as the current lineage: no
    change.  A different one: :class:`OtherCluster`, unless ``new_lineage`` (after ``pg_upgrade``),
    which appends ``wal-<system identifier>``.  A system identifier that belongs to an *older*
    lineage is refused either way (that would mix two histories under one prefix).  The record is
    updated by compare-and-swap (:meth:`Repository.update_state`): two ``pg setup`` runs at once
    never lose a lineage.
    """
    if system_identifier <= 0:
        raise UsageError(f"invalid system identifier {system_identifier}")
    now = clock.isoformat(clock.now())
    outcome: list[tuple[dict[str, Any], bool]] = []

    def change(doc: dict[str, Any] | None) -> dict[str, Any] | None:
        outcome.clear()
        items = _lineage_list(doc)
        entry: dict[str, Any] = {"system_identifier": int(system_identifier), "started": now}
        if pg_version is not None:
            entry["pg_version"] = pg_version
        if not items:
            entry["prefix"] = FIRST_PREFIX
            outcome.append((entry, True))
            return {**(doc or {}), "lineages": [entry]}
        current = items[-1]
        if int(current["system_identifier"]) == system_identifier:
            outcome.append((current, False))
            return None
        older = [i for i in items[:-1] if int(i["system_identifier"]) == system_identifier]
        if older:
            raise OtherCluster(
                f" (it was archived earlier under {older[0]['prefix']!r}; going back to an older lineage is not supported)",
                recorded=current["system_identifier"],
                found=system_identifier,
            )
        if not new_lineage:
            raise OtherCluster(recorded=current["system_identifier"], found=system_identifier)
        entry["prefix"] = f"{FIRST_PREFIX}-{system_identifier}"
        outcome.append((entry, True))
        return {**(doc or {}), "lineages": [*items, entry]}

    repo.update_state(LINEAGE_STATE, change)
    return outcome[-1]


# ------------------------------------------------------------------------------------------------
# push


@dataclass
class PushResult:
    name: str
    key: str
    stored: bool  # False: an identical copy was already archived
    bytes: int
    duration_s: float
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def wal_level(repository_level: int) -> int:
    """The zstd level of a WAL object: the repository's, but at most :data:`WAL_MAX_LEVEL`
    (0 = uncompressed and negative fast levels are kept)."""
    return min(repository_level, WAL_MAX_LEVEL)


def read_wal_file(path: str | os.PathLike[str]) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise WalFileUnreadable(f"{os.fspath(path)}: {exc.strerror or exc}") from None


def wal_push(
    repo: Repository,
    path: str | os.PathLike[str],
    *,
    name: str | None = None,
    data: bytes | None = None,
    blake3_hex: str | None = None,
) -> PushResult:
    """Archive one WAL file (segment, ``.partial``, ``.history`` or ``.backup``).

    Returns once the object is durable in the repository.  Segments are checked first (name,
    page header, size, system identifier of the current lineage); history and backup-history
    files have no header and are stored as they are.  Raises :class:`WalExists` when a different
    file with this name is archived, :class:`~coldkeep.postgres.wal.BadWalFile` for a file that
    is not what its name says, :class:`NoLineage` before ``pg setup``.  ``data``: the file's
    content when the caller has read it already, ``blake3_hex`` its BLAKE3 when the caller has
    computed it (the async pusher, for its marker).
    """
    start = time.monotonic()
    parsed = wal.parse_name(name or os.path.basename(os.fspath(path)))
    lineage = find_lineage(repo)
    if data is None:
        data = read_wal_file(path)
    sysid = int(lineage["system_identifier"])
    meta: dict[str, Any] = {"kind": parsed.kind, "timeline": parsed.timeline, "system_identifier": sysid}
    if parsed.is_segment_data:
        header = wal.check_segment(parsed, data, sysid)
        meta.update(seg_size=header.seg_size, wal_magic=header.magic, pg_version=header.pg_version)
    key = wal.archive_key(parsed, str(lineage["prefix"]))
    try:
        stored = repo.put_named(
            key, data, meta, level=wal_level(repo.config.compression_level), blake3_hex=blake3_hex
        )
    except ObjectExists:
        archived_meta, _ = repo.get_named(key)
        raise WalExists(
            parsed.name,
            archived=f"{archived_meta.get('size')} bytes, blake3 {str(archived_meta.get('blake3'))[:16]}",
            new=f"{len(data)} bytes",
        ) from None
    result = PushResult(parsed.name, key, stored, len(data), round(time.monotonic() - start, 4))
    if not stored:
        result.warnings.append(f"{parsed.name} was already archived with identical content; nothing to do")
    return result


# ------------------------------------------------------------------------------------------------
# fetch


@dataclass
class FetchResult:
    name: str
    key: str
    dest: str
    bytes: int
    duration_s: float
    seg_size: int | None = None  # from the header, for segments

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def read_archived(
    repo: Repository, name: str, *, prefix: str | None = None
) -> tuple[wal.WalName, str, bytes]:
    """An archived WAL file's verified content: ``(parsed name, object name, bytes)``.

    :class:`NotArchived` only when the object does not exist; every other failure (damaged
    object, wrong passphrase, storage down, a segment whose header does not match its name or the
    lineage's system identifier) raises something else.
    """
    parsed, key, _, data = read_archived_digest(repo, name, prefix=prefix)
    return parsed, key, data


def read_archived_digest(
    repo: Repository, name: str, *, prefix: str | None = None
) -> tuple[wal.WalName, str, bytes, bytes]:
    """:func:`read_archived`, with the content's BLAKE3 digest (32 bytes) that the repository
    verified the bytes against: ``(parsed name, object name, digest, bytes)``."""
    parsed = wal.parse_name(name)
    lineage = find_lineage(repo, prefix)
    key = wal.archive_key(parsed, str(lineage["prefix"]))
    try:
        meta, data = repo.get_named(key)
    except NotFound:
        raise NotArchived(parsed.name) from None
    if parsed.is_segment_data:
        wal.check_segment(parsed, data, int(lineage["system_identifier"]))
    return parsed, key, bytes.fromhex(str(meta["blake3"])), data


def stream_archived(
    repo: Repository, name: str, write: Callable[[memoryview], object], *, prefix: str | None = None
) -> tuple[wal.WalName, bytes, int, wal.WalHeader | None]:
    """:func:`read_archived_digest` a piece at a time (:func:`~coldkeep.repository.named.stream_named`:
    no buffer the size of the segment): ``write`` gets the bytes, then the checks run (content
    BLAKE3 and size at the end, the segment's header from its first page), so on any error the
    caller discards what it wrote.  Returns ``(parsed name, content digest, size, segment header
    or None for a history file)``."""
    from coldkeep.repository.named import stream_named

    parsed = wal.parse_name(name)
    lineage = find_lineage(repo, prefix)
    key = wal.archive_key(parsed, str(lineage["prefix"]))
    head = bytearray()

    def keep(piece: memoryview) -> None:
        if len(head) < wal.LONG_HEADER_SIZE:
            head.extend(piece[: wal.LONG_HEADER_SIZE - len(head)])
        write(piece)

    try:
        meta = stream_named(repo, key, keep)
    except NotFound:
        raise NotArchived(parsed.name) from None
    size = int(meta["size"])
    header = None
    if parsed.is_segment_data:
        header = wal.check_segment(parsed, bytes(head), int(lineage["system_identifier"]), size=size)
    return parsed, bytes.fromhex(str(meta["blake3"])), size, header


def _seg_size(parsed: wal.WalName, data: bytes) -> int | None:
    return wal.read_header(data, parsed.name).seg_size if parsed.is_segment_data else None


def write_atomically(dest: str | os.PathLike[str], data: bytes, *, sync: bool = False) -> None:
    """Write ``dest`` through a temp file in its directory and a rename (a reader never sees a
    partial file).  When running as root, the file gets the owner of its directory (PostgreSQL
    must be able to read and rename it).

    ``sync`` fsyncs the temp file first.  ``wal-fetch`` does not need it: after a crash recovery
    starts over and fetches again, and a restored segment PostgreSQL keeps is moved into place
    with ``durable_rename`` (``KeepFileRestoredFromArchive``), which fsyncs it.  Skipping it saves
    a 16 MiB flush per segment during replay."""
    directory = os.path.dirname(os.fspath(dest)) or "."
    owner = None
    if os.geteuid() == 0:
        st = os.stat(directory)
        owner = (st.st_uid, st.st_gid)
    write_atomic(dest, data, sync=sync, owner=owner)


def wal_fetch(
    repo: Repository, name: str, dest: str | os.PathLike[str], *, prefix: str | None = None
) -> FetchResult:
    """Fetch, verify and write one archived WAL file to ``dest`` (PostgreSQL's ``%p``)."""
    start = time.monotonic()
    try:
        parsed, key, data = read_archived(repo, name, prefix=prefix)
    except NotArchived:  # not archived, but maybe streamed by `pg receive-wal` (coldkeep.postgres.walstream)
        from coldkeep.postgres.walstream import read_streamed

        streamed = read_streamed(repo, name, prefix=prefix)
        if streamed is None:
            # `pg receive-wal` archives a segment, then deletes its states: if it did both since
            # the first lookup, the segment is archived now ("not archived" would end recovery)
            parsed, key, data = read_archived(repo, name, prefix=prefix)
        else:
            parsed, key, data = streamed
    try:
        write_atomically(dest, data)
    except OSError as exc:
        raise WalDestUnwritable(f"{os.fspath(dest)}: {exc.strerror or exc}") from None
    return FetchResult(
        parsed.name,
        key,
        os.fspath(dest),
        len(data),
        round(time.monotonic() - start, 4),
        _seg_size(parsed, data),
    )


# ------------------------------------------------------------------------------------------------
# listings (for verify, expire, restore)


@dataclass(frozen=True)
class ArchivedWal:
    key: str  # the named object's name, for Repository.get_named / delete_named
    name: str  # the WAL file name
    size: int  # stored bytes (compressed, with header and footer)

    @property
    def parsed(self) -> wal.WalName:
        return wal.parse_name(self.name)


def archived(repo: Repository, prefix: str = FIRST_PREFIX) -> list[ArchivedWal]:
    """Every archived WAL file of the lineage ``prefix``, in WAL order (timeline, position)."""
    found: list[tuple[wal.WalName, ArchivedWal]] = []
    for key, size in repo.list_named(prefix + "/"):
        name = key.rsplit("/", 1)[-1]
        try:
            parsed = wal.parse_name(name)
        except wal.InvalidWalName:
            continue  # not ours; `repo check` reports stray objects
        found.append((parsed, ArchivedWal(key, name, size)))
    found.sort(key=lambda item: (item[0].timeline, item[0].log, item[0].seg, item[0].name))
    return [item for _, item in found]


def archived_names(repo: Repository, prefix: str = FIRST_PREFIX) -> list[str]:
    """Named-object names (``wal/00000001/0000000100…``) of the lineage, in WAL order; pass them
    to :meth:`Repository.delete_named`."""
    return [a.key for a in archived(repo, prefix)]


def archived_set(repo: Repository, lineage: dict[str, Any] | str) -> set[str]:
    """WAL file names (``000000010000000000000003``, ``00000002.history``…) archived in a lineage
    (a lineage record or its prefix)."""
    prefix = lineage if isinstance(lineage, str) else str(lineage["prefix"])
    return {a.name for a in archived(repo, prefix)}


def segments_for_backup(timeline: int, start_lsn: int, stop_lsn: int, seg_size: int) -> list[str]:
    """The segments a base backup needs: from the one holding its start LSN to the one holding
    the last byte before its stop LSN (PostgreSQL's ``XLByteToPrevSeg``, as ``pg_backup_stop``
    uses to wait for the archive)."""
    return wal.segments_between(timeline, start_lsn, stop_lsn, seg_size, end_exclusive=True)
