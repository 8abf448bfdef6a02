"""Streamed partial WAL segments in the repository (written by ``pg receive-wal``).

A named object is written once, so each stored state of the segment ``pg_receivewal`` is writing
(``<segment>.partial`` in its spool) is an object of its own::

    wal-stream/<lineage prefix>/<timeline>/<segment>/<end:08X>-<digest>

``end`` is the length of the segment's content without its trailing zero padding
(``pg_receivewal`` pre-allocates the file with zeros and only appends, so a longer ``end`` is a
newer state); ``digest`` is a 64-bit BLAKE2b of that content, so two reads of the same length
never collide.  Only the content up to ``end`` is stored.  A newer state is written (durable)
*before* the older ones of the segment are deleted; once the complete segment is archived under
``wal/…`` every state of it is deleted.  A ``kill -9`` at any instant therefore leaves at worst
superseded states, which :func:`cleanup` removes (``pg receive-wal`` runs it at start).

:func:`read_streamed` serves the newest state, zero-padded to the segment size and checked like
an archived segment, to ``wal-fetch`` when the segment itself is not archived: recovery replays
up to its valid end and then ends cleanly (the next segment is "not archived", exit 1).

Like :mod:`coldkeep.postgres.archive`, this module stays off the configuration models: it is on
``wal-fetch``'s lean path.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import re
from dataclasses import dataclass
from typing import Any

from coldkeep.errors import IntegrityError, NotFound, ObjectExists, StorageError
from coldkeep.postgres import archive, wal
from coldkeep.repository.repository import Repository

STREAM_PREFIX = "wal-stream"

_VERSION = re.compile(r"^([0-9A-F]{8})-([0-9a-f]{16})$")


@dataclass(frozen=True)
class StreamState:
    key: str  # named object
    segment: str  # 24-character segment name
    timeline: int
    end: int  # content length without trailing zero padding

    @property
    def version(self) -> str:
        return self.key.rsplit("/", 1)[-1]


def stream_dir(lineage_prefix: str, segment: str) -> str:
    parsed = wal.parse_name(segment)
    return f"{STREAM_PREFIX}/{lineage_prefix}/{parsed.timeline:08X}/{parsed.segment}/"


def stream_states(repo: Repository, lineage_prefix: str, segment: str | None = None) -> list[StreamState]:
    """The stored states of partial segments of a lineage (of one ``segment``), oldest first."""
    prefix = stream_dir(lineage_prefix, segment) if segment else f"{STREAM_PREFIX}/{lineage_prefix}/"
    states = []
    for key, _size in repo.list_named(prefix):
        parts = key.split("/")
        if len(parts) != 5 or parts[1] != lineage_prefix:
            continue
        m = _VERSION.match(parts[4])
        try:
            parsed = wal.parse_name(parts[3])
        except wal.InvalidWalName:
            continue
        if not m or parsed.kind != "segment":
            continue
        states.append(StreamState(key, parsed.name, parsed.timeline, int(m.group(1), 16)))
    states.sort(key=lambda s: (s.timeline, s.segment, s.end, s.key))
    return states


def _delete_quietly(repo: Repository, key: str) -> None:
    with contextlib.suppress(NotFound, StorageError):
        repo.delete_named(key)


def store_partial(
    repo: Repository, segment: str, data: bytes, lineage: dict[str, Any]
) -> tuple[StreamState, bool] | None:
    """Store one state of the partial ``segment`` (its file content, zero padding included or
    not); returns ``(state, stored now)``, or ``None`` when there is nothing in it yet.  Older
    states of the segment are deleted once this one is durable."""
    content = data.rstrip(b"\0")
    if len(content) < wal.LONG_HEADER_SIZE:
        return None
    parsed = wal.parse_name(segment + ".partial")
    sysid = int(lineage["system_identifier"])
    header = wal.check_segment(parsed, content, sysid)
    digest = hashlib.blake2b(content, digest_size=8).hexdigest()
    prefix = str(lineage["prefix"])
    key = f"{stream_dir(prefix, segment)}{len(content):08X}-{digest}"
    meta = {"kind": "stream-partial", "segment": parsed.segment, "timeline": parsed.timeline,
            "system_identifier": sysid, "seg_size": header.seg_size, "wal_magic": header.magic,
            "pg_version": header.pg_version, "end": len(content)}  # fmt: skip
    try:
        stored = repo.put_named(key, content, meta)
    except ObjectExists:  # a 64-bit digest collision of two different contents: never overwrite
        raise IntegrityError(f"{key} exists with different content") from None
    state = StreamState(key, parsed.segment, parsed.timeline, len(content))
    for older in stream_states(repo, prefix, segment):
        if older.key != key and older.end <= state.end:
            _delete_quietly(repo, older.key)
    return state, stored


def forget_segment(repo: Repository, lineage_prefix: str, segment: str) -> int:
    """Delete every streamed state of ``segment`` (call once the segment is archived)."""
    states = stream_states(repo, lineage_prefix, segment)
    for state in states:
        _delete_quietly(repo, state.key)
    return len(states)


def cleanup(repo: Repository, lineage_prefix: str) -> int:
    """Delete superseded states: all of a segment that is archived, all but the newest otherwise."""
    archived = archive.archived_set(repo, lineage_prefix)
    by_segment: dict[str, list[StreamState]] = collections.defaultdict(list)
    for state in stream_states(repo, lineage_prefix):
        by_segment[state.segment].append(state)
    removed = 0
    for segment, states in by_segment.items():
        doomed = states if segment in archived else _superseded(repo, states)
        for state in doomed:
            _delete_quietly(repo, state.key)
            removed += 1
    return removed


def _newest(repo: Repository, states: list[StreamState]) -> StreamState:
    """The newest state: the longest; among equally long ones (a read that raced a write, then
    a complete one) the one stored last."""
    end = max(s.end for s in states)
    candidates = [s for s in states if s.end == end]
    if len(candidates) == 1:
        return candidates[0]

    def stored_at(state: StreamState) -> str:
        try:
            meta, _ = repo.get_named(state.key)
        except NotFound:
            return ""
        return str(meta.get("time", ""))

    return max(candidates, key=lambda s: (stored_at(s), s.key))


def _superseded(repo: Repository, states: list[StreamState]) -> list[StreamState]:
    if len(states) <= 1:
        return []
    newest = _newest(repo, states)
    return [s for s in states if s.key != newest.key]


def read_streamed(
    repo: Repository, name: str, *, prefix: str | None = None
) -> tuple[wal.WalName, str, bytes] | None:
    """The newest streamed state of segment ``name``, zero-padded to a whole segment and checked
    like an archived one: ``(parsed name, object name, bytes)``; ``None`` when there is none (or
    ``name`` is not a segment name)."""
    parsed = wal.parse_name(name)
    if parsed.kind != "segment":
        return None
    lineage = archive.find_lineage(repo, prefix)
    states = stream_states(repo, str(lineage["prefix"]), parsed.name)
    if not states:
        return None
    state = _newest(repo, states)
    try:
        meta, content = repo.get_named(state.key)
    except NotFound:  # superseded and deleted meanwhile: take the newer one
        return read_streamed(repo, name, prefix=prefix)
    seg_size = wal.read_header(content, parsed.name).seg_size
    if int(meta.get("meta", {}).get("seg_size", seg_size)) != seg_size or len(content) > seg_size:
        raise IntegrityError(f"{state.key}: segment size does not match its header")
    data = content + bytes(seg_size - len(content))
    wal.check_segment(parsed, data, int(lineage["system_identifier"]))
    return parsed, state.key, data


def newest_reach(repo: Repository, lineage_prefix: str, seg_size: int) -> tuple[int, float] | None:
    """How far the streamed states reach: ``(end LSN, store time as a POSIX timestamp)`` of the
    newest state on the highest timeline, or ``None`` (for a restore's reachability checks)."""
    from coldkeep.repository.format import NAMED_PREFIX

    states = stream_states(repo, lineage_prefix)
    if not states:
        return None
    top = max(states, key=lambda s: (s.timeline, wal.parse_name(s.segment).segno_for(seg_size), s.end))
    start = wal.parse_name(top.segment).start_lsn(seg_size)
    try:
        mtime = repo.backend.stat(NAMED_PREFIX + top.key).mtime
    except StorageError:
        return None
    return start + top.end, mtime
