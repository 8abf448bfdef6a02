"""WAL file names, LSNs and WAL page headers (pure functions, no I/O).

Names (``src/include/access/xlog_internal.h``)
----------------------------------------------
* segment: ``TTTTTTTTLLLLLLLLSSSSSSSS`` — timeline, "log" and "seg" as 8 upper-case hex digits each;
  the segment number is ``log * (2**32 // seg_size) + seg``;
* timeline history: ``TTTTTTTT.history``;
* backup history: ``<segment>.XXXXXXXX.backup`` (XXXXXXXX: offset of the backup start in it);
* partial segment: ``<segment>.partial`` (the last, incomplete segment of a timeline, archived
  at promotion).

In the repository each file is the named object :func:`archive_key` ``wal/<timeline>/<name>``
(``wal-<system identifier>/…`` for later lineages, see :mod:`coldkeep.postgres.archive`).

Page header
-----------
The first page of every segment starts with ``XLogLongPageHeaderData`` (little-endian on x86)::

    offset  size  field
         0     2  xlp_magic        WAL format version (0xD110 = PostgreSQL 15)
         2     2  xlp_info         flag bits; XLP_LONG_HEADER (0x0002) on a segment's first page
         4     4  xlp_tli          timeline of the first record on the page
         8     8  xlp_pageaddr     LSN of the page = the segment's start LSN on the first page
        16     4  xlp_rem_len      continuation bytes of a record from the previous page
        20     4  (padding to 8)
        24     8  xlp_sysid        system identifier from pg_control
        32     4  xlp_seg_size     segment size (cross-check)
        36     4  xlp_xlog_blcksz  WAL block size (cross-check)

:func:`read_header` parses it and :func:`check_segment` ties it to a file name, so that a renamed,
truncated or foreign file is refused before it reaches the archive.  The layout has not changed
since PostgreSQL 9.3; the magic changes with every major version (known ones: :data:`WAL_MAGIC`,
taken from PostgreSQL 13–17's ``xlog_internal.h``).  An unknown magic of the same family (0xD1xx,
newer than 13's) is accepted as "a newer PostgreSQL" so that a major upgrade does not stop
archiving; anything else is refused.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Literal

from coldkeep.errors import IntegrityError, UsageError

DEFAULT_SEG_SIZE = 16 * 1024 * 1024
MIN_SEG_SIZE = 1024 * 1024
MAX_SEG_SIZE = 1024 * 1024 * 1024
XLP_LONG_HEADER = 0x0002
XLP_ALL_FLAGS = 0x0007
LONG_HEADER_SIZE = 40

#: ``xlp_magic`` -> PostgreSQL major version (from each version's ``xlog_internal.h``)
WAL_MAGIC: dict[int, int] = {0xD106: 13, 0xD10D: 14, 0xD110: 15, 0xD113: 16, 0xD116: 17}

_HEADER = struct.Struct("<HHIQI4xQII")
assert _HEADER.size == LONG_HEADER_SIZE

Kind = Literal["segment", "history", "backup", "partial"]

_SEGMENT = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
_HISTORY = re.compile(r"^([0-9A-F]{8})\.history$")
_BACKUP = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})\.([0-9A-F]{8})\.backup$")
_PARTIAL = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})\.partial$")


class InvalidWalName(UsageError):
    template = "not a WAL file name: {detail}"
    hint = (
        "WAL names look like 000000010000000000000003, 00000002.history, "
        "000000010000000000000003.00000028.backup or 000000010000000000000003.partial"
    )


class BadWalFile(IntegrityError):
    """A file whose content does not match its WAL name (renamed, truncated, foreign, garbage)."""

    template = "{name}: {detail}"
    hint = "this is not the WAL segment its name says; it was refused and nothing was archived"


def segments_per_xlogid(seg_size: int) -> int:
    return 0x100000000 // seg_size


@dataclass(frozen=True, order=True)
class WalName:
    """A parsed WAL file name.  ``log``/``seg`` are 0 for history files."""

    timeline: int
    log: int
    seg: int
    kind: Kind
    name: str

    @property
    def is_segment_data(self) -> bool:
        """Segments and partial segments carry WAL pages (and a long page header)."""
        return self.kind in ("segment", "partial")

    @property
    def segment(self) -> str:
        """The 24-character segment name (``""`` for a history file)."""
        return "" if self.kind == "history" else self.name[:24]

    def segno_for(self, seg_size: int) -> int:
        """PostgreSQL's segment number (``XLogSegNo``) for a segment size."""
        return self.log * segments_per_xlogid(seg_size) + self.seg

    @property
    def segno(self) -> int:
        """The segment number for 16 MiB segments (PostgreSQL's default); see :meth:`segno_for`."""
        return self.segno_for(DEFAULT_SEG_SIZE)

    def start_lsn(self, seg_size: int) -> int:
        return self.segno_for(seg_size) * seg_size


def parse_name(name: str, seg_size: int | None = None) -> WalName:
    """Parse a WAL file name (not a path); :class:`InvalidWalName` for anything else.

    With ``seg_size`` the "seg" part is also checked against it (a 16 MiB segment's "seg" part is
    below 0x100)."""
    shown = repr(name) if len(name) <= 80 else repr(name[:80] + "…")
    tli = log = seg = 0
    kind: Kind
    if m := _SEGMENT.match(name):
        kind = "segment"
    elif m := _PARTIAL.match(name):
        kind = "partial"
    elif m := _BACKUP.match(name):
        kind = "backup"
    elif m := _HISTORY.match(name):
        kind = "history"
    else:
        raise InvalidWalName(shown)
    tli = int(m.group(1), 16)
    if kind != "history":
        log, seg = int(m.group(2), 16), int(m.group(3), 16)
    if tli == 0:
        raise InvalidWalName(f"{shown} (timeline 0 does not exist)")
    if seg_size is not None and kind != "history" and seg >= segments_per_xlogid(check_seg_size(seg_size)):
        raise InvalidWalName(f"{shown} (segment part {seg:08X} is too large for {seg_size}-byte segments)")
    return WalName(timeline=tli, log=log, seg=seg, kind=kind, name=name)


def check_seg_size(seg_size: int) -> int:
    if not (MIN_SEG_SIZE <= seg_size <= MAX_SEG_SIZE) or seg_size & (seg_size - 1):
        raise UsageError(f"invalid WAL segment size {seg_size} (a power of two from 1 MiB to 1 GiB)")
    return seg_size


# ------------------------------------------------------------------------------------------------
# LSNs and segment numbers

_LSN = re.compile(r"^\s*([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})\s*$")


def parse_lsn(text: str) -> int:
    """``"0/3000028"`` -> ``0x3000028``; :class:`~coldkeep.errors.UsageError` for anything else."""
    m = _LSN.match(text)
    if not m:
        raise UsageError(f"not an LSN: {text!r}", hint="an LSN looks like 0/3000028 (two hex numbers)")
    return (int(m.group(1), 16) << 32) | int(m.group(2), 16)


def format_lsn(lsn: int) -> str:
    if not 0 <= lsn < 1 << 64:
        raise ValueError(f"LSN out of range: {lsn}")
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def segment_of(lsn: int, seg_size: int = DEFAULT_SEG_SIZE) -> int:
    """The segment number holding byte ``lsn`` (PostgreSQL's ``XLByteToSeg``)."""
    return lsn // seg_size


def segment_name(timeline: int, segno: int, seg_size: int = DEFAULT_SEG_SIZE) -> str:
    """PostgreSQL's ``XLogFileName``."""
    per_id = segments_per_xlogid(seg_size)
    return f"{timeline:08X}{segno // per_id:08X}{segno % per_id:08X}"


def segments_between(
    timeline: int,
    start_lsn: int,
    end_lsn: int,
    seg_size: int = DEFAULT_SEG_SIZE,
    *,
    end_exclusive: bool = False,
) -> list[str]:
    """Names of the segments from the one holding ``start_lsn`` to the one holding ``end_lsn``
    (inclusive).  With ``end_exclusive`` the end is the segment holding byte ``end_lsn - 1``
    (PostgreSQL's ``XLByteToPrevSeg``: an end exactly on a segment boundary does not need the
    next segment), e.g. for a backup's stop LSN."""
    if end_lsn < start_lsn:
        raise UsageError(f"end LSN {format_lsn(end_lsn)} is before start LSN {format_lsn(start_lsn)}")
    first = segment_of(start_lsn, seg_size)
    last = segment_of(end_lsn - 1 if end_exclusive and end_lsn > start_lsn else end_lsn, seg_size)
    return [segment_name(timeline, n, seg_size) for n in range(first, last + 1)]


def history_name(timeline: int) -> str:
    return f"{timeline:08X}.history"


def archive_key(name: str | WalName, prefix: str = "wal") -> str:
    """The repository name of a WAL file: ``<prefix>/<timeline as 8 hex digits>/<name>``."""
    parsed = name if isinstance(name, WalName) else parse_name(name)
    return f"{prefix}/{parsed.timeline:08X}/{parsed.name}"


# ------------------------------------------------------------------------------------------------
# page headers


@dataclass(frozen=True)
class WalHeader:
    magic: int
    info: int
    timeline: int
    pageaddr: int
    system_identifier: int
    seg_size: int
    block_size: int

    @property
    def pg_version(self) -> int | None:
        """The PostgreSQL major version of this magic, ``None`` when this coldkeep does not know it."""
        return WAL_MAGIC.get(self.magic)


def read_header(data: bytes | memoryview, name: str = "WAL file") -> WalHeader:
    """Parse and sanity-check the long page header at the start of a segment.

    :class:`BadWalFile` (naming ``name``) for a short file, an unknown magic, a missing long-header
    flag, an impossible segment or block size."""
    if len(data) < LONG_HEADER_SIZE:
        raise BadWalFile(f"too short for a WAL page header ({len(data)} bytes)", name=name)
    magic, info, tli, pageaddr, _rem, sysid, seg_size, blcksz = _HEADER.unpack_from(data, 0)
    if magic not in WAL_MAGIC and not (magic >> 8 == 0xD1 and magic > min(WAL_MAGIC)):
        raise BadWalFile(f"not a WAL segment (page magic 0x{magic:04X})", name=name)
    if not info & XLP_LONG_HEADER or info & ~XLP_ALL_FLAGS:
        raise BadWalFile(f"first page has no long header (xlp_info 0x{info:04X})", name=name)
    if not (MIN_SEG_SIZE <= seg_size <= MAX_SEG_SIZE) or seg_size & (seg_size - 1):
        raise BadWalFile(f"impossible segment size {seg_size} in the header", name=name)
    if not (1024 <= blcksz <= 65536) or blcksz & (blcksz - 1):
        raise BadWalFile(f"impossible WAL block size {blcksz} in the header", name=name)
    if tli == 0:
        raise BadWalFile("timeline 0 in the header", name=name)
    return WalHeader(magic, info, tli, pageaddr, sysid, seg_size, blcksz)


def check_segment(
    parsed: WalName,
    data: bytes | memoryview,
    system_identifier: int | None = None,
    *,
    size: int | None = None,
) -> WalHeader:
    """Check that ``data`` is the segment ``parsed`` names; return its header.  ``size``: the
    segment's length when ``data`` is only its start (a streamed read).

    * the header parses (:func:`read_header`);
    * the page address is the start of the named segment (a renamed or recycled file fails);
    * the header's timeline is not after the name's (the first page of a new timeline's first
      segment still carries the old timeline: PostgreSQL copies it at the switch);
    * a full segment is exactly ``seg_size`` bytes, a partial one at most that;
    * with ``system_identifier``, the header's equals it (a segment from another cluster fails).
    """
    if not parsed.is_segment_data:
        raise UsageError(f"{parsed.name} is a {parsed.kind} file, not a WAL segment")
    header = read_header(data, parsed.name)
    if parsed.seg >= segments_per_xlogid(header.seg_size):
        raise BadWalFile(f"name does not fit the header's segment size {header.seg_size}", name=parsed.name)
    expected = parsed.start_lsn(header.seg_size)
    if header.pageaddr != expected:
        raise BadWalFile(
            f"header says it starts at LSN {format_lsn(header.pageaddr)} ("
            f"{segment_name(header.timeline, segment_of(header.pageaddr, header.seg_size), header.seg_size)}), "
            f"its name says {format_lsn(expected)}",
            name=parsed.name,
        )
    if header.timeline > parsed.timeline:
        raise BadWalFile(
            f"header timeline {header.timeline} is after the name's {parsed.timeline}", name=parsed.name
        )
    length = len(data) if size is None else size
    if parsed.kind == "segment" and length != header.seg_size:
        raise BadWalFile(f"{length} bytes, a segment has {header.seg_size} (truncated?)", name=parsed.name)
    if length > header.seg_size:
        raise BadWalFile(f"{length} bytes, more than a segment ({header.seg_size})", name=parsed.name)
    if system_identifier is not None and header.system_identifier != system_identifier:
        raise BadWalFile(
            f"belongs to the cluster with system identifier {header.system_identifier}, "
            f"not {system_identifier}",
            name=parsed.name,
            hint="a push from another cluster is refused; after pg_upgrade run `coldkeep pg setup --new-lineage`",
        )
    return header
