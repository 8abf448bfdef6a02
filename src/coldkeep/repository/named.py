"""Named write-once objects (``named/<name>``): a WAL segment, a history file, a service's
archive batch.  Stored once, never overwritten (an identical second put succeeds, a different
one fails), each verified against the size and BLAKE3 its own header records.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO

import blake3
import zstandard

from coldkeep import clock
from coldkeep.errors import IntegrityError, NotFound, ObjectExists, ObjectNotFound, UsageError
from coldkeep.repository.format import (
    DIGEST_SIZE,
    FLAG_RAW,
    FLAG_ZSTD,
    NAMED_PREFIX,
    add_footer,
    digest,
    seal_blob,
    strip_footer,
)
from coldkeep.storage.base import validate_key

if TYPE_CHECKING:
    from coldkeep.repository.repository import Repository

#: the most data a named object holds (a WAL segment is at most 1 GiB): bounds decompression
NAMED_MAX = 2 * 1024 * 1024 * 1024
#: the most bytes a named object's header may have
NAMED_HEADER_MAX = 1024 * 1024
#: named objects are decompressed this many bytes at a time
NAMED_READ_PIECE = 16 * 1024 * 1024


def named_key(name: str) -> str:
    """The repository key of the named object ``name`` (:class:`~coldkeep.errors.InvalidKey`
    when ``name`` is not a valid key)."""
    return NAMED_PREFIX + validate_key(name)


def put_named(
    repo: Repository,
    name: str,
    data: bytes,
    meta: dict[str, Any] | None = None,
    *,
    level: int | None = None,
    blake3_hex: str | None = None,
) -> bool:
    """Store a named object once.  ``True`` if stored now, ``False`` if an identical one was
    already there; :class:`ObjectExists` if a *different* one is (never overwritten).
    ``level``: zstd level for this object (default: the repository's).  ``blake3_hex``: the
    caller's BLAKE3 of ``data`` (:func:`~coldkeep.repository.format.digest`), not computed
    again."""
    key = named_key(name)
    if len(data) > NAMED_MAX:
        raise UsageError(
            f"named object {name}: {len(data)} bytes, more than the {NAMED_MAX} a named object holds"
        )
    sha = blake3_hex or digest(data).hex()
    header = json.dumps({"name": name, "size": len(data), "blake3": sha, "meta": meta or {},
                         "time": clock.isoformat(clock.now())}).encode()  # fmt: skip
    stored, _ = seal_blob(repo.keys, len(header).to_bytes(4, "little") + header + data,
                          repo.config.compression_level if level is None else level, key.encode())  # fmt: skip
    obj = add_footer(stored)
    if repo.backend.put_if_absent(key, obj):
        return True
    existing_meta, _ = get_named(repo, name)
    if existing_meta["blake3"] == sha and existing_meta["size"] == len(data):
        return False
    raise ObjectExists(f"{name} (archived size {existing_meta['size']}, new size {len(data)})")


def get_named(repo: Repository, name: str) -> tuple[dict[str, Any], bytes]:
    """``(header, data)`` of the named object ``name``, verified; :class:`NotFound` if absent."""
    key = named_key(name)
    try:
        obj = repo.backend.get(key)
    except ObjectNotFound:
        raise NotFound(f"no named object {name}") from None
    return decode_named(repo, name, obj)


def decode_named(repo: Repository, name: str, obj: bytes) -> tuple[dict[str, Any], bytes]:
    """``(header, data)`` of the stored named object ``obj``, verified against its footer and
    the size and BLAKE3 its header records.

    Decompression is bounded: the header is read first (at most :data:`NAMED_HEADER_MAX`
    bytes) and then exactly the size it records (at most :data:`NAMED_MAX`), so a small
    object that would decompress to gigabytes is refused (:class:`IntegrityError` naming it)
    having produced no more than that."""
    key = named_key(name)
    what = f"named object {name}"
    plain = repo.keys.open(strip_footer(obj, what), key.encode(), what)
    if not plain:
        raise IntegrityError(f"{what}: empty envelope")
    meta, data = _read_named(plain[0], memoryview(plain)[1:], what)
    if digest(data).hex() != meta.get("blake3"):
        raise IntegrityError(f"{what}: content does not match its checksum")
    return meta, data


def stream_named(
    repo: Repository, name: str, write: Callable[[memoryview], object], *, piece: int = 1024 * 1024
) -> dict[str, Any]:
    """Pass the data of the named object ``name`` to ``write`` a piece at a time (at most
    ``piece`` bytes, one reused buffer: no allocation the size of the object) and return its
    header; :class:`NotFound` if absent.  Verified as :func:`decode_named` verifies, but the
    content's size and BLAKE3 can only be checked at the end: on :class:`IntegrityError` the
    caller discards what ``write`` received (the prefetcher writes a temp file it then deletes)."""
    key = named_key(name)
    what = f"named object {name}"
    try:
        obj = repo.backend.get(key)
    except ObjectNotFound:
        raise NotFound(f"no named object {name}") from None
    if len(obj) < DIGEST_SIZE:
        raise IntegrityError(f"{what}: truncated ({len(obj)} bytes)")
    body = memoryview(obj)[:-DIGEST_SIZE]
    if digest(body) != obj[-DIGEST_SIZE:]:
        raise IntegrityError(f"{what}: checksum mismatch (object damaged)")
    plain = repo.keys.open(body, key.encode(), what)
    if not plain:
        raise IntegrityError(f"{what}: empty envelope")
    payload = memoryview(plain)[1:]
    stream: BinaryIO
    if plain[0] == FLAG_RAW:
        stream = io.BytesIO(payload)
    elif plain[0] == FLAG_ZSTD:
        stream = zstandard.ZstdDecompressor().stream_reader(payload)
    else:
        raise IntegrityError(f"{what}: unknown compression flag {plain[0]}")
    try:
        meta, size = _read_named_header(stream, what)
        hasher = blake3.blake3(max_threads=1)
        buffer = memoryview(bytearray(min(piece, max(size, 1))))
        got = 0
        while got < size:
            n = stream.readinto(buffer[: min(len(buffer), size - got)])
            if not n:
                raise IntegrityError(f"{what}: shorter than its header records ({got} of {size} bytes)")
            hasher.update(buffer[:n])
            write(buffer[:n])
            got += n
        if stream.read(1):
            raise IntegrityError(f"{what}: holds more than the {size} bytes its header records (refused)")
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"{what}: cannot decompress ({exc})") from None
    if hasher.hexdigest() != meta.get("blake3"):
        raise IntegrityError(f"{what}: content does not match its checksum")
    return meta


def list_named(repo: Repository, prefix: str = "") -> Iterator[tuple[str, int]]:
    """``(name, stored size)`` of every named object whose name starts with ``prefix``."""
    for info in repo.backend.list(NAMED_PREFIX + prefix):
        yield info.key.removeprefix(NAMED_PREFIX), info.size


def delete_named(repo: Repository, name: str) -> None:
    """Delete a named object (for services that expire their own: ``pg expire``)."""
    repo.check_lock()
    repo.backend.delete(named_key(name))


def _read_named(flag: int, payload: memoryview, what: str) -> tuple[dict[str, Any], bytes]:
    """Header and data of a named object's envelope payload (``flag``: raw or zstd), reading no
    more than the header's recorded size (see :func:`decode_named`)."""
    stream: BinaryIO
    if flag == FLAG_RAW:
        stream = io.BytesIO(payload)
    elif flag == FLAG_ZSTD:
        stream = zstandard.ZstdDecompressor().stream_reader(payload)
    else:
        raise IntegrityError(f"{what}: unknown compression flag {flag}")
    try:
        meta, size = _read_named_header(stream, what)
        data = _read_exact(stream, size, what)
        if stream.read(1):
            raise IntegrityError(f"{what}: holds more than the {size} bytes its header records (refused)")
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"{what}: cannot decompress ({exc})") from None
    return meta, data


def _read_named_header(stream: BinaryIO, what: str) -> tuple[dict[str, Any], int]:
    """The header of a named object's decompressed stream and the data size it records
    (bounded: at most :data:`NAMED_HEADER_MAX` header bytes, :data:`NAMED_MAX` data bytes)."""
    hlen = int.from_bytes(_read_exact(stream, 4, what), "little")
    if hlen > NAMED_HEADER_MAX:
        raise IntegrityError(f"{what}: bad header (it says {hlen} bytes)")
    try:
        meta = json.loads(_read_exact(stream, hlen, what))
    except (ValueError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{what}: bad header ({exc})") from None
    size = meta.get("size") if isinstance(meta, dict) else None
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= NAMED_MAX:
        raise IntegrityError(f"{what}: bad header (size {size!r}; at most {NAMED_MAX})")
    return meta, size


def _read_exact(stream: BinaryIO, size: int, what: str) -> bytes:
    """``size`` bytes from ``stream``, read in pieces (memory grows only with what it yields)."""
    pieces: list[bytes] = []
    got = 0
    while got < size:
        piece = stream.read(min(size - got, NAMED_READ_PIECE))
        if not piece:
            raise IntegrityError(f"{what}: shorter than its header records ({got} of {size} bytes)")
        pieces.append(piece)
        got += len(piece)
    return b"".join(pieces)
