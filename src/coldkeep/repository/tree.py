"""A snapshot's tree: its entries (:class:`TreeEntry`), as JSON lines in tree blobs.

A tree is the list of a snapshot's entries in walk order (depth first, children by name), one
JSON object per line.  The lines are cut into tree blobs (see :func:`write_tree`), stored like any
chunk (kind ``tree``) and listed, in order, by the snapshot document; readers concatenate them.

An entry is a plain ``dict`` (parsed with one ``json.loads`` per blob, compared as dicts when a
backup reuses its parent's lines): :class:`TreeEntry` types it without costing anything at run
time.  The order of an entry's keys is part of what a tree blob is (an unchanged tree must
serialise to the same bytes to deduplicate): writers build entries in the documented order.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Literal, Required, TypedDict, cast

if TYPE_CHECKING:
    from coldkeep.repository.blobwriter import BlobWriter
    from coldkeep.repository.repository import Repository
    from coldkeep.repository.snapshot import Snapshot

#: what an entry is
EntryType = Literal["file", "dir", "symlink"]


class TreeEntry(TypedDict, total=False):
    """One entry of a snapshot's tree.  Keys in the order writers put them (backup: ``path``,
    ``mode``, ``uid``, ``gid``, ``mtime_ns``, ``type``, then the type's own; see
    ``repository/backup.py`` and ``postgres/basebackup.py``)."""

    #: the name in the snapshot: relative, ``/``-separated; not valid UTF-8 where the file
    #: system name was not (``surrogateescape``, see :func:`tree_line`)
    path: Required[str]
    type: Required[EntryType]
    #: permission bits (``stat.S_IMODE``), owner and group ids
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    #: file: the number of bytes stored (what was read)
    size: int
    #: file: inode number and ctime when walked (a re-backup reuses an entry whose size, mtime
    #: and inode are unchanged)
    ino: int
    ctime_ns: int
    #: symlink: where it points
    target: str
    #: file: SHA-256 (hex) of the bytes stored, and the ids (hex) of their chunks, in order
    sha256: str
    chunks: list[str]
    #: file: it had holes (restore leaves its all-zero chunks as holes)
    sparse: bool
    #: file: ``"dev:ino"`` of a file with several names (restore links the later ones)
    hardlink: str
    #: file: it changed while it was read (stored as read; never reused by the next backup)
    changed: bool


_TREE_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
#: for the entries :data:`_TREE_ENCODER`'s UTF-8 cannot carry: see :func:`tree_line`
_TREE_ENCODER_ASCII = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True)
#: a tree blob ends after an entry whose (keyed) path hash has its low bits all zero, or once it
#: reaches this size: see :func:`write_tree`
TREE_BLOB_MAX = 1024 * 1024
#: tree blobs hold 2 ** TREE_MIN_BITS entries on average, or more for big trees ...
TREE_MIN_BITS = 4
#: ... so that a snapshot has about this many tree blobs at most (its document lists them all)
TREE_MAX_BLOBS = 1024


def tree_line(entry: TreeEntry) -> bytes:
    """One tree entry as a JSON line: UTF-8, with non-ASCII characters as they are.

    File names (and symlink targets) are bytes on Linux; Python gives those that are not valid
    UTF-8 as ``str`` with each undecodable byte as a lone surrogate U+DC80..U+DCFF
    (``surrogateescape``), which UTF-8 cannot encode.  Only such an entry is written with every
    non-ASCII character escaped (``\\udcff``, ``\\u00e9``): ``json.loads`` gives the same ``str``
    back and ``os`` functions turn it into the original bytes, while every other entry keeps
    the bytes it always had (unchanged tree blobs still deduplicate).
    """
    try:
        return _TREE_ENCODER.encode(entry).encode() + b"\n"
    except UnicodeEncodeError:
        return _TREE_ENCODER_ASCII.encode(entry).encode() + b"\n"


def tree_cut_bits(entries: int) -> int:
    """How many low bits of a path hash must be zero for a tree blob to end there, for a tree of
    ``entries`` entries: 2 ** TREE_MIN_BITS entries per blob on average, more in trees of more
    than TREE_MAX_BLOBS times that (only a tree that doubles or halves changes its boundaries)."""
    bits = TREE_MIN_BITS
    while entries >> bits > TREE_MAX_BLOBS:
        bits += 1
    return bits


def parse_tree_blob(data: bytes) -> list[TreeEntry]:
    """The entries of one tree blob (JSON lines), parsed in one ``json.loads`` call when possible.

    JSON text never contains a raw newline, so the lines of a well-formed blob joined with commas
    are a JSON array; anything else (blank lines, a damaged line) is parsed line by line, with the
    same result and errors as before.  Entries are not validated beyond being JSON objects on
    the fast path (readers use ``.get`` for every key a type does not always have).
    """
    return parse_tree_blob_lines(data)[0]


def parse_tree_blob_lines(data: bytes) -> tuple[list[TreeEntry], list[bytes] | None]:
    """:func:`parse_tree_blob`, and each entry's line (with its newline) when parsed in one call."""
    body = data.strip(b"\n")
    if not body:
        return [], None
    if b"\n\n" not in body and b"\r" not in body:
        with contextlib.suppress(ValueError):
            entries = json.loads(b"[" + body.replace(b"\n", b",") + b"]")
            if isinstance(entries, list) and all(isinstance(e, dict) for e in entries):
                raw = [line + b"\n" for line in body.split(b"\n")]
                return cast(list[TreeEntry], entries), raw if len(raw) == len(entries) else None
    return [json.loads(line) for line in data.splitlines() if line], None


def write_tree(
    repo: Repository,
    writer: BlobWriter,
    entries: Sequence[TreeEntry],
    lines: Sequence[bytes | None] | None = None,
) -> list[str]:
    """Serialise tree entries as JSON lines into tree blobs; returns their ids, in order.

    Readers concatenate the blobs, so where a blob ends is free.  It ends after an entry
    whose path hashes (keyed, as chunk ids) to a value with its low :func:`tree_cut_bits`
    bits zero, or once it reaches :data:`TREE_BLOB_MAX`: a boundary depends on the path
    there and not on what came before, so the entries of unchanged files between two
    boundaries make the same blob as in the previous snapshot, and a backup that changed a
    few files writes only the few tree blobs that hold them.  ``lines[i]``, when given and
    not ``None``, is the JSON line of ``entries[i]`` already encoded (a previous tree's).
    """
    mask = (1 << tree_cut_bits(len(entries))) - 1
    path_hash = repo.keys.chunk_id
    blobs: list[bytes] = []
    buf: list[bytes] = []
    size = 0
    for i, entry in enumerate(entries):
        line = lines[i] if lines is not None else None
        if line is None:
            line = tree_line(entry)
        buf.append(line)
        size += len(line)
        if size >= TREE_BLOB_MAX or not (
            int.from_bytes(path_hash(str(entry["path"]).encode("utf-8", "surrogateescape"))[:4], "little")
            & mask
        ):
            blobs.append(b"".join(buf))
            buf, size = [], 0
    if buf or not blobs:
        blobs.append(b"".join(buf))
    return [blob_id.hex() for blob_id in writer.store_many(blobs, "tree", repo.config.compression_level)]


def iter_tree(repo: Repository, snap: Snapshot) -> Iterator[TreeEntry]:
    """Every entry of ``snap``'s tree, in order (each tree blob verified against its id)."""
    for data in repo.read_blobs([bytes.fromhex(h) for h in snap.tree]):
        yield from parse_tree_blob(data)


def iter_tree_lines(repo: Repository, snap: Snapshot) -> Iterator[tuple[TreeEntry, bytes | None]]:
    """:func:`iter_tree` with each entry's JSON line as stored (``None`` where a blob had to be
    parsed line by line)."""
    for data in repo.read_blobs([bytes.fromhex(h) for h in snap.tree]):
        entries, raw = parse_tree_blob_lines(data)
        if raw is None:
            for entry in entries:
                yield entry, None
        else:
            yield from zip(entries, raw, strict=True)


def find_entry(repo: Repository, snap: Snapshot, path: str) -> TreeEntry | None:
    """The entry named ``path`` in ``snap`` (``None``: there is none); reads the tree up to it."""
    name = path.strip("/")
    for entry in iter_tree(repo, snap):
        if entry["path"] == name:
            return entry
    return None
