"""Snapshots: the model (:class:`Snapshot`) and its documents (``snapshots/<id>``).

A snapshot document is written once, last (after the packs, the index and the tree blobs it
needs) and named by its content.  Listings go through the snapshot catalog
(:mod:`~coldkeep.repository.catalog`), which reads only documents it has not seen; a document that
cannot be read is skipped with a warning (or, for callers that delete on the strength of the
list, raised).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from coldkeep import clock
from coldkeep.errors import ColdkeepError, IntegrityError, NotFound, ObjectNotFound, UsageError
from coldkeep.repository.format import SNAPSHOT_PREFIX, decode_document, encode_document, object_id

if TYPE_CHECKING:
    from coldkeep.repository.catalog import SnapshotCatalog, Stamp
    from coldkeep.repository.repository import Repository

log = logging.getLogger(__name__)

SNAPSHOT_AAD = b"coldkeep-snapshot-v1"
#: snapshot documents read at once by a listing
LOAD_THREADS = 8


@dataclass
class Snapshot:
    id: str
    time: str
    host: str
    paths: list[str]
    tags: dict[str, str]
    label: str
    meta: dict[str, Any]
    tree: list[str]
    summary: dict[str, Any]
    parent: str | None = None
    kind: str = "files"

    @property
    def short_id(self) -> str:
        return self.id[:8]

    @property
    def logical_bytes(self) -> int:
        return int(self.summary.get("logical_bytes", 0))

    def to_doc(self) -> dict[str, Any]:
        return {
            "version": 1,
            "time": self.time,
            "host": self.host,
            "paths": self.paths,
            "tags": self.tags,
            "label": self.label,
            "meta": self.meta,
            "tree": self.tree,
            "summary": self.summary,
            "parent": self.parent,
            "kind": self.kind,
        }

    def to_json(self) -> dict[str, Any]:
        doc = self.to_doc()
        doc.pop("tree")
        return {"id": self.id, "short_id": self.short_id, "logical_bytes": self.logical_bytes, **doc}

    @classmethod
    def from_doc(cls, snapshot_id: str, doc: dict[str, Any]) -> Snapshot:
        return cls(
            id=snapshot_id,
            time=str(doc["time"]),
            host=str(doc.get("host", "")),
            paths=list(doc.get("paths", [])),
            tags=dict(doc.get("tags", {})),
            label=str(doc.get("label", "")),
            meta=dict(doc.get("meta", {})),
            tree=list(doc["tree"]),
            summary=dict(doc.get("summary", {})),
            parent=doc.get("parent"),
            kind=str(doc.get("kind", "files")),
        )


def save_snapshot(repo: Repository, snap: Snapshot) -> str:
    """Write ``snap``'s document (after everything it references); sets and returns its id."""
    data = encode_document(repo.keys, snap.to_doc(), SNAPSHOT_AAD)
    snap.id = object_id(data)
    repo.check_lock(confirm=True)  # a run whose lock was lost never writes its snapshot
    repo.backend.put_if_absent(SNAPSHOT_PREFIX + snap.id, data)
    return snap.id


def snapshot_ids(repo: Repository) -> list[str]:
    return [info.key.removeprefix(SNAPSHOT_PREFIX) for info in repo.backend.list(SNAPSHOT_PREFIX)]


def load_snapshot_id(repo: Repository, snapshot_id: str) -> Snapshot:
    """Read and verify one snapshot document (:class:`NotFound`, :class:`IntegrityError`)."""
    try:
        data = repo.backend.get(SNAPSHOT_PREFIX + snapshot_id)
    except ObjectNotFound:
        raise NotFound(f"no snapshot {snapshot_id}") from None
    what = f"snapshot {snapshot_id[:8]}"
    if object_id(data) != snapshot_id:
        raise IntegrityError(f"{what}: content does not match its name")
    doc = decode_document(repo.keys, data, SNAPSHOT_AAD, what)
    try:
        snap = Snapshot.from_doc(snapshot_id, doc)
        clock.parse_timestamp(snap.time)  # listings sort by it
    except (KeyError, TypeError, ValueError, ColdkeepError) as exc:
        raise IntegrityError(f"{what}: malformed ({exc})") from None
    return snap


#: the fewest characters of a snapshot id accepted as a prefix
MIN_PREFIX = 4


def find_snapshot(repo: Repository, ref: str) -> Snapshot:
    """By full id, unique id prefix, or ``latest``."""
    if ref == "latest":
        snaps = list_snapshots(repo)
        if not snaps:
            raise NotFound("the repository has no snapshots")
        return snaps[-1]
    if len(ref) < MIN_PREFIX:
        raise UsageError(
            f"snapshot id prefix {ref!r} is too short: give at least {MIN_PREFIX} characters",
            hint="list them with `coldkeep snapshots`, or use `latest`",
        )
    ids = sorted(i for i in snapshot_ids(repo) if i.startswith(ref))
    if not ids:
        raise NotFound(f"no snapshot {ref!r}", hint="list them with `coldkeep snapshots`")
    if len(ids) > 1:
        shown = ", ".join(i[: len(ref) + 4] for i in ids[:5]) + (" …" if len(ids) > 5 else "")
        raise UsageError(
            f"snapshot id prefix {ref!r} is ambiguous: {len(ids)} match ({shown})",
            hint="give more characters",
        )
    return load_snapshot_id(repo, ids[0])


def list_snapshots(
    repo: Repository,
    tags: Mapping[str, str] | None = None,
    *,
    kind: str | None = None,
    strict: bool = False,
) -> list[Snapshot]:
    """Every readable snapshot (optionally of ``kind`` and with every given tag), oldest first.

    A snapshot whose document cannot be read (damaged, malformed) is left out, so that one
    damaged document does not hide all the others: it is named in a warning (logged once per
    repository object: the CLI prints ``warning: snapshot ID is damaged (…); skipped — run
    `coldkeep repo check```) and recorded in ``repo.damaged_snapshots``; ``repo check`` reports
    it as a problem.  ``strict=True`` raises its :class:`IntegrityError` instead: for callers
    that delete data on the strength of the list (prune, ``pg expire``), which must not act on
    an incomplete one.  A snapshot deleted between listing and reading is left out silently.

    Documents are read through the snapshot catalog (see :mod:`~coldkeep.repository.catalog`):
    only those it has not seen, or whose object changed since, are read; when the catalog
    cannot be used (no writable cache directory) every document is read, as before it existed.
    """
    listing = {
        info.key.removeprefix(SNAPSHOT_PREFIX): (info.size, info.mtime)
        for info in repo.backend.list(SNAPSHOT_PREFIX)
    }
    catalog = repo.catalog
    snaps: list[Snapshot] | None = None
    if catalog is not None:
        try:
            snaps = _list_cached(repo, catalog, listing, tags, kind, strict)
        except sqlite3.Error as exc:
            log.debug("snapshot catalog %s unusable (%s): reading every document", catalog.path, exc)
    if snaps is None:
        snaps = [s for s in _load_all(repo, list(listing), strict) if _selected(s, tags, kind)]
    return sorted(snaps, key=lambda s: (clock.parse_timestamp(s.time), s.id))


def _selected(snap: Snapshot, tags: Mapping[str, str] | None, kind: str | None) -> bool:
    return (kind is None or snap.kind == kind) and all(snap.tags.get(k) == v for k, v in (tags or {}).items())


def _list_cached(
    repo: Repository,
    catalog: SnapshotCatalog,
    listing: dict[str, Stamp],
    tags: Mapping[str, str] | None,
    kind: str | None,
    strict: bool,
) -> list[Snapshot]:
    """:func:`list_snapshots` through the catalog: read what it lacks, drop what is gone, query."""
    cached = catalog.stamps()
    unread = [i for i, stamp in listing.items() if cached.get(i) != stamp]
    loaded = _load_all(repo, unread, strict)
    add = [(snap, listing[snap.id]) for snap in loaded]
    unreadable = set(unread) - {snap.id for snap in loaded}  # damaged, or deleted since listed
    gone = [i for i in cached if i not in listing or i in unreadable]
    catalog.update(add, gone)
    # only what this listing saw: another process may have cached ids of another listing since
    # (a snapshot newer than it, or one that only a copy of this repository still has)
    return [s for s in catalog.query(kind=kind, tags=tags) if s.id in listing and s.id not in unreadable]


def _load_all(repo: Repository, ids: list[str], strict: bool) -> list[Snapshot]:
    """The readable snapshots of ``ids``, read in parallel; damaged ones warned about and left
    out (raised when ``strict``), deleted ones left out."""
    if not ids:
        return []
    with ThreadPoolExecutor(max_workers=min(LOAD_THREADS, len(ids))) as pool:
        loaded = list(pool.map(lambda i: _try_load(repo, i), ids))
    snaps = []
    for snapshot_id, snap, error in loaded:
        if error is not None:
            if strict:
                raise error
            _skip_damaged(repo, snapshot_id, error)
        elif snap is not None:
            snaps.append(snap)
    return snaps


def _try_load(repo: Repository, snapshot_id: str) -> tuple[str, Snapshot | None, IntegrityError | None]:
    try:
        return snapshot_id, load_snapshot_id(repo, snapshot_id), None
    except NotFound:  # deleted since it was listed (forget, pg expire)
        return snapshot_id, None, None
    except IntegrityError as exc:
        return snapshot_id, None, exc


def _skip_damaged(repo: Repository, snapshot_id: str, error: IntegrityError) -> None:
    if snapshot_id in repo.damaged_snapshots:
        return
    detail = error.message.removeprefix(f"snapshot {snapshot_id[:8]}: ")
    repo.damaged_snapshots[snapshot_id] = detail
    log.warning("snapshot %s is damaged (%s); skipped — run `coldkeep repo check`", snapshot_id, detail)


def delete_snapshot(repo: Repository, snapshot_id: str) -> None:
    repo.check_lock()
    repo.backend.delete(SNAPSHOT_PREFIX + snapshot_id)
