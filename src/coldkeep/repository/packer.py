"""Pack files: many blobs in one object, with a header that makes each pack self-describing.

Layout (format version 1)::

    blob_0 … blob_n-1                 envelopes (see format.py), back to back
    header                            envelope of JSON [[id_hex, kind, offset, length, raw_length], …]
    u32 little-endian                 header length
    b"CKP1"                           magic
    32 bytes                          BLAKE3 of everything above; hex of it is the pack id

Because the header lives in the pack, the index can always be rebuilt from the packs alone
(``coldkeep repo rebuild-index``), and ``repo check`` can compare index and packs.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

from coldkeep.errors import IntegrityError
from coldkeep.repository.crypto import KeyRing
from coldkeep.repository.format import DIGEST_SIZE, add_footer, open_blob, seal_blob, strip_footer

MAGIC = b"CKP1"
TAIL = 4 + len(MAGIC) + DIGEST_SIZE  # header length + magic + footer
HEADER_AAD = b"coldkeep-pack-header-v1"


@dataclass(frozen=True)
class BlobEntry:
    id: bytes
    kind: str  # "data" | "tree"
    pack: str
    offset: int
    length: int
    raw_length: int

    def to_row(self) -> list[object]:
        return [self.id.hex(), self.kind, self.offset, self.length, self.raw_length]


def pack_key(pack_id: str) -> str:
    return f"data/{pack_id[:2]}/{pack_id}"


class PackBuilder:
    """Collects blobs in memory until the pack is big enough, then :meth:`finish` seals it."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.rows: list[tuple[bytes, str, int, int, int]] = []

    def add(self, blob_id: bytes, kind: str, stored: bytes, raw_length: int) -> None:
        self.rows.append((blob_id, kind, self.size, len(stored), raw_length))
        self.parts.append(stored)
        self.size += len(stored)

    def __len__(self) -> int:
        return len(self.rows)

    def finish(self, keys: KeyRing) -> tuple[str, bytes, list[BlobEntry]]:
        header_doc = [[i.hex(), k, o, n, r] for i, k, o, n, r in self.rows]
        header, _ = seal_blob(keys, json.dumps(header_doc, separators=(",", ":")).encode(), 3, HEADER_AAD)
        body = b"".join([*self.parts, header, struct.pack("<I", len(header)), MAGIC])
        data = add_footer(body)
        pack_id = data[-DIGEST_SIZE:].hex()
        entries = [BlobEntry(i, k, pack_id, o, n, r) for i, k, o, n, r in self.rows]
        return pack_id, data, entries


def parse_tail(tail: bytes, pack_id: str) -> int:
    """From the last :data:`TAIL` bytes: the header length."""
    if len(tail) < TAIL or tail[4:8] != MAGIC:
        raise IntegrityError(f"pack {pack_id}: bad trailer (not a coldkeep pack or truncated)")
    (header_len,) = struct.unpack("<I", tail[:4])
    return int(header_len)


def parse_header(keys: KeyRing, header: bytes, pack_id: str, pack_size: int) -> list[BlobEntry]:
    what = f"pack {pack_id} header"
    raw = open_blob(keys, header, HEADER_AAD, None, what)
    try:
        rows = json.loads(raw)
        entries = [
            BlobEntry(bytes.fromhex(i), str(k), pack_id, int(o), int(n), int(r)) for i, k, o, n, r in rows
        ]
    except (ValueError, TypeError) as exc:
        raise IntegrityError(f"{what}: malformed ({exc})") from None
    limit = pack_size - TAIL - len(header)
    for e in entries:
        if e.offset < 0 or e.length <= 0 or e.offset + e.length > limit:
            raise IntegrityError(f"{what}: blob {e.id.hex()[:16]} lies outside the pack")
    return entries


def parse_pack(keys: KeyRing, data: bytes, pack_id: str) -> list[BlobEntry]:
    """Verify a whole pack (footer digest and id) and return its blob entries."""
    body = strip_footer(data, f"pack {pack_id}")
    if data[-DIGEST_SIZE:].hex() != pack_id:
        raise IntegrityError(f"pack {pack_id}: content does not match its name")
    header_len = parse_tail(data[-TAIL:], pack_id)
    header_end = len(body) - 8
    header = body[header_end - header_len : header_end]
    return parse_header(keys, header, pack_id, len(data))
