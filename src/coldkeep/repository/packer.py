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
import mmap
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from coldkeep.errors import IntegrityError
from coldkeep.repository.crypto import KeyRing
from coldkeep.repository.format import DIGEST_SIZE, Buffer, digest, open_blob, seal_blob, strip_footer

MAGIC = b"CKP1"
TAIL = 4 + len(MAGIC) + DIGEST_SIZE  # header length + magic + footer
HEADER_AAD = b"coldkeep-pack-header-v1"


@dataclass(frozen=True, slots=True)
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
    """Collects blobs until the pack is big enough, then :meth:`finish` seals it.

    Each blob is copied once, into one buffer: an anonymous ``mmap`` of ``capacity`` bytes (the
    kernel supplies zeroed pages only where they are written, and the pages go back to it as soon
    as the sealed pack is dropped).  A pack that outgrows it moves to a mapping twice as big
    (rare: the capacity covers a pack target plus one big blob).  Header, trailer and footer are
    appended to the same buffer and the sealed pack is a view of it, so sealing copies nothing.
    """

    def __init__(self, capacity: int = 0, buffer: mmap.mmap | None = None) -> None:
        self._capacity = max(capacity, 1 << 20)
        # mapped at the first blob, unless the buffer of a pack already written is handed in
        # (its pages are resident already: no page faults, no zeroing)
        self._mm: mmap.mmap | None = buffer
        self._size = 0
        self.rows: list[tuple[bytes, str, int, int, int]] = []

    @property
    def size(self) -> int:
        return self._size

    def _append(self, part: Buffer) -> None:
        n = len(part)
        end = self._size + n
        if self._mm is None:
            self._mm = mmap.mmap(-1, max(self._capacity, end))
        elif end > len(self._mm):
            bigger = mmap.mmap(-1, max(end, 2 * len(self._mm)))
            with memoryview(bigger) as dst, memoryview(self._mm) as src:
                dst[: self._size] = src[: self._size]
            self._mm.close()
            self._mm = bigger
        self._mm[self._size : end] = part
        self._size = end

    def add(self, blob_id: bytes, kind: str, stored: Buffer | Sequence[Buffer], raw_length: int) -> None:
        """Add one sealed blob: bytes, or buffers that are its envelope back to back (copied now)."""
        parts = (stored,) if isinstance(stored, (bytes, bytearray, memoryview)) else stored
        start = self._size
        for part in parts:
            self._append(part)
        self.rows.append((blob_id, kind, start, self._size - start, raw_length))

    def __len__(self) -> int:
        return len(self.rows)

    def finish(self, keys: KeyRing) -> tuple[str, memoryview, list[BlobEntry]]:
        """Seal the pack: (pack id, its bytes, entries).  The builder is spent afterwards."""
        header_doc = [[i.hex(), k, o, n, r] for i, k, o, n, r in self.rows]
        header, _ = seal_blob(keys, json.dumps(header_doc, separators=(",", ":")).encode(), 3, HEADER_AAD)
        self._append(header)
        self._append(struct.pack("<I", len(header)))
        self._append(MAGIC)
        assert self._mm is not None
        with memoryview(self._mm) as whole:
            footer = digest(whole[: self._size])
        self._append(footer)
        pack_id = footer.hex()
        entries = [BlobEntry(i, k, pack_id, o, n, r) for i, k, o, n, r in self.rows]
        return pack_id, memoryview(self._mm)[: self._size], entries

    def detach(self) -> mmap.mmap | None:
        """Hand the buffer over for the next pack, once every view of the sealed pack is released."""
        mm, self._mm = self._mm, None
        return mm


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


def damaged_blobs(
    keys: KeyRing, pack: bytes | memoryview, entries: Iterable[BlobEntry]
) -> list[tuple[BlobEntry, IntegrityError]]:
    """The blobs of ``entries`` that do not read back from ``pack`` (the whole pack's bytes) as
    readers read them: envelope opened (authenticated when encrypted), decompressed to
    ``raw_length`` bytes, content hashing to its id.  Each with the error naming blob and pack;
    empty when every blob verifies."""
    view = memoryview(pack)
    damaged = []
    for entry in entries:
        what = f"blob {entry.id.hex()[:16]} in pack {entry.pack[:16]}"
        try:
            stored = view[entry.offset : entry.offset + entry.length]
            if len(stored) != entry.length:
                raise IntegrityError(f"{what}: pack truncated")
            plain = open_blob(keys, stored, entry.id, entry.raw_length, what)
            if len(plain) != entry.raw_length or keys.chunk_id(plain) != entry.id:
                raise IntegrityError(f"{what}: content does not match its id (corrupt)")
        except IntegrityError as exc:
            damaged.append((entry, exc))
    return damaged
