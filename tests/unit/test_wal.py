"""WAL names, LSNs and page headers (coldkeep.postgres.wal): pure functions."""

from __future__ import annotations

import struct

import pytest

from coldkeep.errors import IntegrityError, UsageError
from coldkeep.postgres import wal
from coldkeep.postgres.wal import BadWalFile, InvalidWalName

MiB = 1024 * 1024
SYSID = 7311234567890123456


def header(
    *,
    magic: int = 0xD110,
    info: int = wal.XLP_LONG_HEADER,
    tli: int = 1,
    pageaddr: int = 0x3000000,
    sysid: int = SYSID,
    seg_size: int = 16 * MiB,
    blcksz: int = 8192,
) -> bytes:
    """A long page header laid out as XLogLongPageHeaderData (little-endian, 8-byte aligned)."""
    raw = (
        struct.pack("<HHIQI", magic, info, tli, pageaddr, 0)
        + b"\0" * 4
        + struct.pack("<QII", sysid, seg_size, blcksz)
    )
    assert len(raw) == wal.LONG_HEADER_SIZE
    return raw


def segment(name: str = "000000010000000000000003", seg_size: int = 16 * MiB, **kw: int) -> bytes:
    parsed = wal.parse_name(name)
    kw.setdefault("pageaddr", parsed.start_lsn(seg_size))
    kw.setdefault("tli", parsed.timeline)
    data = header(seg_size=seg_size, **kw)
    return data + b"\0" * (seg_size - len(data))


# -- names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "tli", "log", "seg"),
    [
        ("000000010000000000000003", "segment", 1, 0, 3),
        ("0000000A00000001000000FF", "segment", 10, 1, 0xFF),
        ("00000002.history", "history", 2, 0, 0),
        ("000000010000000000000002.00000028.backup", "backup", 1, 0, 2),
        ("000000010000000000000007.partial", "partial", 1, 0, 7),
    ],
)
def test_parse_name(name: str, kind: str, tli: int, log: int, seg: int) -> None:
    parsed = wal.parse_name(name)
    assert (parsed.kind, parsed.timeline, parsed.log, parsed.seg, parsed.name) == (kind, tli, log, seg, name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "00000001000000000000003",  # 23 characters
        "0000000100000000000000003",  # 25
        "000000010000000000000003.gz",
        "00000001000000000000000a",  # lower case
        "../000000010000000000000003",
        "pg_wal/000000010000000000000003",
        "00000000.history",  # timeline 0
        "000000000000000000000003",
        "0000001.history",
        "000000010000000000000002.backup",
        "RECOVERYXLOG",
    ],
)
def test_invalid_names_are_usage_errors(name: str) -> None:
    with pytest.raises(InvalidWalName) as info:
        wal.parse_name(name)
    assert isinstance(info.value, UsageError)
    assert info.value.exit_code == 2


def test_seg_part_checked_against_segment_size() -> None:
    assert wal.parse_name("000000010000000000000100").seg == 0x100  # fine without a size
    with pytest.raises(InvalidWalName, match="too large"):
        wal.parse_name("000000010000000000000100", seg_size=16 * MiB)
    assert wal.parse_name("000000010000000000000100", seg_size=MiB).segno_for(MiB) == 0x100


def test_segno_and_ordering() -> None:
    a = wal.parse_name("0000000100000000000000FF")
    b = wal.parse_name("000000010000000100000000")
    assert a.segno == 0xFF and b.segno == 0x100
    assert b.segno_for(MiB) == 4096
    assert a < b
    assert b.start_lsn(16 * MiB) == 0x100000000


def test_archive_key() -> None:
    assert wal.archive_key("000000020000000000000003") == "wal/00000002/000000020000000000000003"
    assert wal.archive_key("00000002.history", "wal-7") == "wal-7/00000002/00000002.history"
    assert (
        wal.archive_key("000000010000000000000002.00000028.backup")
        == "wal/00000001/000000010000000000000002.00000028.backup"
    )


# -- LSNs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "value"), [("0/3000028", 0x3000028), ("1/0", 1 << 32), ("FFFFFFFF/FFFFFFFF", 2**64 - 1),
                                             (" 16/B374D848 ", 0x16B374D848)])  # fmt: skip
def test_lsn_round_trip(text: str, value: int) -> None:
    assert wal.parse_lsn(text) == value
    assert wal.parse_lsn(wal.format_lsn(value)) == value


@pytest.mark.parametrize("text", ["", "0", "0/", "/1", "0/123456789", "x/1", "0/3000028/1", "-1/0"])
def test_bad_lsn(text: str) -> None:
    with pytest.raises(UsageError):
        wal.parse_lsn(text)


def test_segments() -> None:
    assert wal.segment_of(0x3000028) == 3
    assert wal.segment_name(1, 3) == "000000010000000000000003"
    assert wal.segment_name(2, 0x100) == "000000020000000100000000"
    assert wal.segment_name(1, 0x100, MiB) == "000000010000000000000100"
    assert wal.segments_between(1, 0x2000028, 0x4000100) == [
        "000000010000000000000002",
        "000000010000000000000003",
        "000000010000000000000004",
    ]
    # an end exactly on a boundary: inclusive takes the next segment, exclusive does not
    assert wal.segments_between(1, 0x2000028, 0x4000000)[-1] == "000000010000000000000004"
    assert wal.segments_between(1, 0x2000028, 0x4000000, end_exclusive=True)[-1] == "000000010000000000000003"
    assert wal.segments_between(1, 0x2000028, 0x2000028, end_exclusive=True) == ["000000010000000000000002"]
    crossing = wal.segments_between(1, 0xFE000000, 0x101000000)
    assert crossing == ["0000000100000000000000FE", "0000000100000000000000FF",
                        "000000010000000100000000", "000000010000000100000001"]  # fmt: skip
    with pytest.raises(UsageError):
        wal.segments_between(1, 10, 5)


# -- headers -------------------------------------------------------------------------------------


def test_read_header_fields() -> None:
    h = wal.read_header(header(pageaddr=0x5000000, tli=3))
    assert (h.magic, h.timeline, h.pageaddr, h.system_identifier, h.seg_size, h.block_size) == (
        0xD110, 3, 0x5000000, SYSID, 16 * MiB, 8192
    )  # fmt: skip
    assert h.pg_version == 15


@pytest.mark.parametrize(
    ("magic", "version"), [(0xD106, 13), (0xD10D, 14), (0xD110, 15), (0xD113, 16), (0xD116, 17)]
)
def test_known_magics(magic: int, version: int) -> None:
    assert wal.read_header(header(magic=magic)).pg_version == version


def test_newer_magic_accepted_without_version() -> None:
    assert wal.read_header(header(magic=0xD118)).pg_version is None


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"magic": 0x1234}, "page magic 0x1234"),
        ({"magic": 0xD093}, "page magic"),  # 9.x-era magics are older than 13's
        ({"info": 0}, "no long header"),
        ({"info": 0x0012}, "no long header"),
        ({"seg_size": 12345}, "segment size"),
        ({"seg_size": 2 * 1024 * MiB}, "segment size"),
        ({"blcksz": 1000}, "block size"),
        ({"tli": 0}, "timeline 0"),
    ],
)
def test_bad_headers(kw: dict[str, int], needle: str) -> None:
    with pytest.raises(BadWalFile, match=needle) as info:
        wal.read_header(header(**kw), "000000010000000000000003")
    assert isinstance(info.value, IntegrityError)
    assert "000000010000000000000003" in info.value.message


def test_short_file() -> None:
    with pytest.raises(BadWalFile, match="too short"):
        wal.read_header(b"\x10\xd1")


def test_check_segment_accepts_the_real_thing() -> None:
    name = wal.parse_name("000000010000000000000003")
    h = wal.check_segment(name, segment(), SYSID)
    assert h.pageaddr == 0x3000000


def test_check_segment_refuses_renamed_file() -> None:
    data = segment("000000010000000000000003")
    with pytest.raises(BadWalFile, match="000000010000000000000004: header says it starts at LSN 0/3000000"):
        wal.check_segment(wal.parse_name("000000010000000000000004"), data)


def test_check_segment_refuses_truncated_file() -> None:
    data = segment()[: 8 * MiB]
    with pytest.raises(BadWalFile, match="truncated"):
        wal.check_segment(wal.parse_name("000000010000000000000003"), data)


def test_check_segment_refuses_other_cluster() -> None:
    with pytest.raises(BadWalFile, match=f"system identifier {SYSID}, not 42") as info:
        wal.check_segment(wal.parse_name("000000010000000000000003"), segment(), 42)
    assert "new-lineage" in info.value.hint


def test_check_segment_timeline_rules() -> None:
    # first segment of timeline 2 still carries timeline 1 in its first page (copied at the switch)
    wal.check_segment(wal.parse_name("000000020000000000000003"), segment("000000020000000000000003", tli=1))
    with pytest.raises(BadWalFile, match="timeline 3 is after"):
        wal.check_segment(
            wal.parse_name("000000020000000000000003"), segment("000000020000000000000003", tli=3)
        )


def test_check_segment_partial_may_be_short_but_not_long() -> None:
    name = wal.parse_name("000000010000000000000003.partial")
    wal.check_segment(name, segment()[: 4 * MiB])
    with pytest.raises(BadWalFile, match="more than a segment"):
        wal.check_segment(name, segment() + b"\0")


def test_check_segment_other_segment_size() -> None:
    data = segment("000000010000000000000100", seg_size=MiB)
    assert wal.check_segment(wal.parse_name("000000010000000000000100"), data).seg_size == MiB


def test_check_segment_garbage() -> None:
    with pytest.raises(BadWalFile):
        wal.check_segment(wal.parse_name("000000010000000000000003"), b"\xff" * (16 * MiB))


def test_history_file_is_not_a_segment() -> None:
    with pytest.raises(UsageError):
        wal.check_segment(wal.parse_name("00000002.history"), b"1\t0/3000000\tno recovery target specified\n")
