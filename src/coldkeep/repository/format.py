"""Repository format version 2: object layout, envelopes and footers.

Version 2 adds one envelope flag to version 1: 2, a chunk of 16-bit data stored as byte planes
(:mod:`~coldkeep.repository.planes`).  Readers read both; writers use flag 2 only in a repository
whose config says version 2 or later (``repo init`` makes those), so a version-1 repository stays
readable by the coldkeep that made it.

Every object the repository stores ends with a 32-byte BLAKE3 digest of everything before it,
so any object can be verified without the passphrase (``repo check``, ``repo copy``), and the
content-addressed ones (packs, indexes, snapshots) are named by that digest.

Keys::

    config                      repository config (JSON, plaintext + footer)
    keys/<slot>                 passphrase key slots (encrypted repositories)
    data/<id[:2]>/<id>          pack files
    index/<id>                  index documents (which blob is where)
    snapshots/<id>              snapshot documents
    named/<name…>               named write-once objects (e.g. named/wal/00000001/0000000100…)
    locks/<id>                  locks (JSON, mutable, refreshed)
    state/<name>                small mutable service records (e.g. restore-test results)

An *envelope* is how a chunk or a document is stored: ``seal(flag || payload)`` where flag 0 = raw,
1 = zstd, 2 = byte planes (chunks only, see :func:`_encode`), and ``seal`` is AES-256-GCM in encrypted repositories (identity otherwise), with the
blob id / object key as associated data so a blob cannot be swapped for another.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

import blake3
import zstandard

from coldkeep.errors import IntegrityError
from coldkeep.repository import planes as _planes
from coldkeep.repository.crypto import KeyRing

FORMAT_VERSION = 2
#: the first format version whose writers may use :data:`FLAG_PLANES`
PLANES_VERSION = 2
DIGEST_SIZE = 32
FLAG_RAW = 0
FLAG_ZSTD = 1
FLAG_PLANES = 2

PACK_PREFIX = "data/"
INDEX_PREFIX = "index/"
SNAPSHOT_PREFIX = "snapshots/"
NAMED_PREFIX = "named/"
LOCK_PREFIX = "locks/"
KEYS_PREFIX = "keys/"
STATE_PREFIX = "state/"
CONFIG_KEY = "config"

_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    """One compressor per thread and level (zstandard objects are not thread-safe).

    It uses the level's parameters whatever the input's size: given only a level, zstd shrinks
    its window and tables for a small input, and a 50 KB text file then compresses ~0.7 % worse
    for no measurable gain in speed (the dataset benchmark's 10,000 files: 178.0 → 176.8 MB at
    level 3).  Frames stay standard zstd: readers are unchanged.  Levels above 9 keep zstd's
    size-adjusted parameters (their full-size tables cost tens of MB per thread)."""
    cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_local, "cctx", None)
    if cache is None:
        cache = _local.cctx = {}
    if level not in cache:
        if level <= 9:
            params = zstandard.ZstdCompressionParameters.from_level(level)
            cache[level] = zstandard.ZstdCompressor(compression_params=params)
        else:
            cache[level] = zstandard.ZstdCompressor(level=level)
    return cache[level]


def _sample_size(data: Buffer) -> int:
    """The size of ``data`` compressed by a cheap compressor (level 1, tables sized to the
    input): how :mod:`~coldkeep.repository.planes` estimates a chunk from a sample."""
    sampler: zstandard.ZstdCompressor | None = getattr(_local, "sampler", None)
    if sampler is None:
        sampler = _local.sampler = zstandard.ZstdCompressor(level=1, write_content_size=False)
    return len(sampler.compress(data))


def _decompressor() -> zstandard.ZstdDecompressor:
    dctx: zstandard.ZstdDecompressor | None = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor()
    return dctx


def digest(data: bytes | memoryview) -> bytes:
    return bytes(blake3.blake3(data, max_threads=1).digest())


def add_footer(body: bytes) -> bytes:
    return body + digest(body)


def strip_footer(data: bytes, what: str) -> bytes:
    """Verify and remove the trailing digest; :class:`IntegrityError` names ``what`` on mismatch."""
    if len(data) < DIGEST_SIZE:
        raise IntegrityError(f"{what}: truncated ({len(data)} bytes)")
    body, footer = data[:-DIGEST_SIZE], data[-DIGEST_SIZE:]
    if digest(body) != footer:
        raise IntegrityError(f"{what}: checksum mismatch (object damaged)")
    return body


def object_id(stored: bytes) -> str:
    """The id of a content-addressed object: hex of its footer digest."""
    return stored[-DIGEST_SIZE:].hex()


#: a buffer the pack writer copies from: bytes, or a view (of a mapped file, say) that stays valid
#: until the envelope has been copied into its pack
Buffer = bytes | bytearray | memoryview
_FLAG_BYTES = (bytes([FLAG_RAW]), bytes([FLAG_ZSTD]), bytes([FLAG_PLANES]))


def _compress_view(data: Buffer, level: int) -> tuple[int, Buffer]:
    """Like :func:`compress`, but a raw payload is ``data`` itself (no copy)."""
    if level == 0 or len(data) < 64:
        return FLAG_RAW, data
    packed = _compressor(level).compress(data)
    if len(packed) >= len(data) * 0.98:
        return FLAG_RAW, data
    return FLAG_ZSTD, packed


def _encode(data: Buffer, level: int, planes: bool) -> tuple[int, list[Buffer]]:
    """(flag, the payload as buffers back to back): :func:`_compress_view`, or with ``planes`` a
    chunk that :func:`~coldkeep.repository.planes.choose` finds to be 16-bit data as flag 2:
    ``u32le length of A || A || B`` where A and B are the odd and the even byte plane, each as
    ``flag (0 raw, 1 zstd) || payload``."""
    choice = _planes.choose(data, _sample_size) if planes and level != 0 else None
    if choice is None:
        flag, payload = _compress_view(data, level)
        return flag, [payload]
    parts: list[Buffer] = []
    for plane, try_zstd in zip(_planes.split(data), choice, strict=True):
        sub, payload = _compress_view(memoryview(plane), level) if try_zstd else (FLAG_RAW, memoryview(plane))
        parts += [_FLAG_BYTES[sub], payload]
    return FLAG_PLANES, [(1 + len(parts[1])).to_bytes(4, "little"), *parts]


def compress(data: bytes | memoryview, level: int, planes: bool = False) -> tuple[int, bytes]:
    """zstd, or raw when compression saves less than 2 %; with ``planes``, byte planes for a
    chunk of 16-bit data (see :func:`_encode`)."""
    flag, payload = _encode(data, level, planes)
    return flag, b"".join(payload)


def _decompress_planes(payload: memoryview, raw_length: int | None, what: str) -> bytes:
    """The content of a flag-2 payload (see :func:`_encode`)."""
    first = int.from_bytes(payload[:4], "little") if len(payload) >= 4 else 0
    odd_env, even_env = payload[4 : 4 + first], payload[4 + first :]
    if len(odd_env) != first or not odd_env or not even_env:
        raise IntegrityError(f"{what}: malformed byte planes")
    sizes = (raw_length // 2, raw_length - raw_length // 2) if raw_length is not None else (None, None)
    planes = []
    for env, size in zip((odd_env, even_env), sizes, strict=True):
        if env[0] not in (FLAG_RAW, FLAG_ZSTD):
            raise IntegrityError(f"{what}: malformed byte planes (flag {env[0]})")
        planes.append(env[1:] if env[0] == FLAG_RAW else decompress(env[0], env[1:], size, what))
    if not 0 <= len(planes[1]) - len(planes[0]) <= 1 or (
        raw_length is not None and len(planes[0]) + len(planes[1]) != raw_length
    ):
        raise IntegrityError(f"{what}: byte planes of different lengths (corrupt)")
    return _planes.join(planes[0], planes[1])


def decompress(flag: int, payload: bytes | memoryview, raw_length: int | None, what: str) -> bytes:
    if flag == FLAG_RAW:
        return bytes(payload)
    if flag == FLAG_ZSTD:
        try:
            if raw_length is not None:
                return bytes(_decompressor().decompress(payload, max_output_size=raw_length))
            return bytes(_decompressor().stream_reader(payload).readall())
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"{what}: cannot decompress ({exc})") from None
    if flag == FLAG_PLANES:
        return _decompress_planes(memoryview(payload), raw_length, what)
    raise IntegrityError(f"{what}: unknown compression flag {flag}")


def seal_blob(keys: KeyRing, data: bytes | memoryview, level: int, aad: bytes) -> tuple[bytes, int]:
    """Envelope for one chunk: returns (stored bytes, flag)."""
    parts, _, flag = seal_parts(keys, data, level, aad)
    return b"".join(parts), flag


def seal_parts(
    keys: KeyRing, data: Buffer, level: int, aad: bytes, planes: bool = False
) -> tuple[Sequence[Buffer], int, int]:
    """The envelope of one chunk as buffers to store back to back: (parts, total length, flag).

    Unencrypted, the parts are the flag byte and the payload, where a raw payload is ``data``
    itself: the only copy is the one into the pack (:class:`~coldkeep.repository.packer.PackBuilder`).
    Encrypted, one part: ``seal`` needs the plaintext in one piece.  ``planes``: byte planes
    allowed (a repository of format :data:`PLANES_VERSION` or later; see :func:`_encode`).
    """
    flag, payload = _encode(data, level, planes)
    if keys.encrypted:
        stored = keys.seal(b"".join([_FLAG_BYTES[flag], *payload]), aad)
        return (stored,), len(stored), flag
    return (_FLAG_BYTES[flag], *payload), 1 + sum(len(p) for p in payload), flag


def open_blob(
    keys: KeyRing, stored: bytes | memoryview, aad: bytes, raw_length: int | None, what: str
) -> bytes:
    plain = keys.open(stored, aad, what)
    if not plain:
        raise IntegrityError(f"{what}: empty envelope")
    return decompress(plain[0], memoryview(plain)[1:], raw_length, what)


def encode_document(keys: KeyRing, doc: Any, aad: bytes, level: int = 3) -> bytes:
    """A JSON document as a stored object: envelope + footer."""
    try:
        raw = json.dumps(doc, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()
    except UnicodeEncodeError:  # a path that is not UTF-8 (surrogateescape): see repository.tree_line
        raw = json.dumps(doc, separators=(",", ":"), sort_keys=True, ensure_ascii=True).encode()
    stored, _ = seal_blob(keys, raw, level, aad)
    return add_footer(stored)


def decode_document(keys: KeyRing, data: bytes, aad: bytes, what: str) -> Any:
    body = strip_footer(data, what)
    raw = open_blob(keys, body, aad, None, what)
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{what}: not a valid document ({exc})") from None
