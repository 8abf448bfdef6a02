"""The wal-fetch prefetch spool serves only verified segments (coldkeep.postgres.prefetch)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import blake3
from tests.unit.test_wal import segment

from coldkeep.postgres import prefetch
from coldkeep.postgres.prefetch import Spool

MiB = 1024 * 1024
NAMES = ["000000010000000000000003", "000000010000000000000004", "000000010000000000000005"]


def spool_with(tmp_path: Path, names: list[str]) -> Spool:
    spool = Spool.for_dest(tmp_path / "pg_wal" / "RECOVERYXLOG", str(tmp_path / "c.toml"), "wal")
    spool.root.mkdir(parents=True)
    spool.fill(names, lambda name: segment(name, seg_size=MiB))
    return spool


def test_fill_and_take(tmp_path: Path) -> None:
    spool = spool_with(tmp_path, NAMES)
    entries = sorted(os.listdir(spool.root))
    assert [e[:24] for e in entries] == NAMES  # no claims or temp files left
    data = segment(NAMES[0], seg_size=MiB)
    assert entries[0] == f"{NAMES[0]}.{blake3.blake3(data).hexdigest()}"
    dest = tmp_path / "pg_wal" / "RECOVERYXLOG"
    assert spool.take(NAMES[0], dest) == MiB
    assert dest.read_bytes() == data
    assert spool.take(NAMES[0], dest) is None  # consumed
    assert spool.take("000000010000000000000009", dest) is None


def test_damaged_or_misnamed_spool_files_are_dropped(tmp_path: Path) -> None:
    spool = spool_with(tmp_path, NAMES[:2])
    first = next(spool.root.glob(NAMES[0] + ".*"))
    raw = bytearray(first.read_bytes())
    raw[MiB // 2] ^= 0xFF  # the header is intact: only the digest can tell
    first.write_bytes(bytes(raw))
    dest = tmp_path / "pg_wal" / "RECOVERYXLOG"
    assert spool.take(NAMES[0], dest) is None
    assert not first.exists() and not dest.exists()
    # a file whose digest matches but which is another segment (renamed): refused by its header
    second = next(spool.root.glob(NAMES[1] + ".*"))
    other = segment(NAMES[0], seg_size=MiB)
    second.unlink()
    (spool.root / f"{NAMES[1]}.{blake3.blake3(other).hexdigest()}").write_bytes(other)
    assert spool.take(NAMES[1], dest) is None
    assert os.listdir(spool.root) == []


def test_spools_are_per_config_and_lineage(tmp_path: Path) -> None:
    dest = tmp_path / "pg_wal" / "RECOVERYXLOG"
    a = Spool.for_dest(dest, str(tmp_path / "a.toml"), "wal")
    b = Spool.for_dest(dest, str(tmp_path / "b.toml"), "wal")
    c = Spool.for_dest(dest, str(tmp_path / "a.toml"), "wal-7")
    assert len({a.root, b.root, c.root}) == 3
    assert a.root.parent == dest.parent / prefetch.SPOOL_DIR


def test_fill_stops_at_the_end_of_the_archive_and_skips_claimed(tmp_path: Path) -> None:
    spool = Spool.for_dest(tmp_path / "pg_wal" / "X", str(tmp_path / "c.toml"), None)
    spool.root.mkdir(parents=True)
    (spool.root / f".{NAMES[0]}.claim").write_text("")  # another prefetcher is on it
    asked: list[str] = []

    def fetch(name: str) -> bytes | None:
        asked.append(name)
        return None if name == NAMES[2] else segment(name, seg_size=MiB)

    assert spool.fill([*NAMES, "000000010000000000000006"], fetch) == 1
    assert asked == NAMES[1:]
    assert spool.pending(NAMES[0]) and spool.has(NAMES[1]) and not spool.pending(NAMES[2])


def test_clean_drops_passed_segments_and_stale_claims(tmp_path: Path) -> None:
    spool = spool_with(tmp_path, NAMES)
    stale = spool.root / ".000000010000000000000009.claim"
    stale.write_text("")
    old = time.time() - prefetch.CLAIM_TTL_S - 10
    os.utime(stale, (old, old))
    spool.clean(NAMES[1])
    assert sorted(e[:24] for e in os.listdir(spool.root)) == NAMES[1:]


def test_next_segments() -> None:
    assert prefetch.next_segments("0000000100000000000000FE", 16 * MiB, 3) == [
        "0000000100000000000000FF",
        "000000010000000100000000",
        "000000010000000100000001",
    ]
