"""Streamed partial segments (coldkeep.postgres.walstream): write-once states, the newest one is
served zero-padded, superseded and archived ones are removed, wal-fetch falls back to them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.unit.test_wal import SYSID, segment

from coldkeep.errors import IntegrityError
from coldkeep.postgres import archive, walstream
from coldkeep.postgres.wal import BadWalFile
from coldkeep.repository.repository import Repository
from coldkeep.storage.local import LocalBackend

MiB = 1024 * 1024
SEG = "000000010000000000000003"


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repository]:
    r = Repository.init(LocalBackend(tmp_path / "repo"))
    archive.record_system_identifier(r, SYSID)
    yield r
    r.close()


def partial(end: int, name: str = SEG, fill: int = 0x5A) -> bytes:
    """A 1 MiB segment file whose content reaches ``end`` (then zero padding, as pg_receivewal)."""
    data = bytearray(segment(name, seg_size=MiB))
    data[64:end] = bytes([fill]) * (end - 64)
    return bytes(data)


def lineage(repo: Repository) -> dict[str, object]:
    found = archive.current_lineage(repo)
    assert found is not None
    return found


def test_states_are_write_once_and_superseded_ones_removed(repo: Repository) -> None:
    first = walstream.store_partial(repo, SEG, partial(1000), lineage(repo))
    assert first is not None and first[1] is True and first[0].end == 1000
    assert first[0].key.startswith(f"wal-stream/wal/00000001/{SEG}/000003E8-")
    again = walstream.store_partial(repo, SEG, partial(1000), lineage(repo))
    assert again is not None and again[1] is False  # identical: nothing new
    second = walstream.store_partial(repo, SEG, partial(5000), lineage(repo))
    assert second is not None
    assert [s.key for s in walstream.stream_states(repo, "wal")] == [second[0].key]
    # an empty (all-zero) file has nothing to store
    assert walstream.store_partial(repo, "000000010000000000000004", bytes(MiB), lineage(repo)) is None


def test_read_streamed_pads_and_checks(repo: Repository) -> None:
    assert walstream.read_streamed(repo, SEG) is None
    walstream.store_partial(repo, SEG, partial(5000), lineage(repo))
    found = walstream.read_streamed(repo, SEG)
    assert found is not None
    parsed, key, data = found
    assert parsed.name == SEG and key.startswith("wal-stream/") and data == partial(5000)
    assert walstream.read_streamed(repo, "00000002.history") is None


def test_a_foreign_or_misnamed_partial_is_refused(repo: Repository) -> None:
    with pytest.raises(BadWalFile):
        walstream.store_partial(repo, "000000010000000000000004", partial(5000), lineage(repo))
    other = bytearray(partial(5000))
    other[24:32] = (SYSID + 1).to_bytes(8, "little")
    with pytest.raises(BadWalFile):
        walstream.store_partial(repo, SEG, bytes(other), lineage(repo))
    assert walstream.stream_states(repo, "wal") == []


def test_cleanup_after_a_crash(repo: Repository) -> None:
    lin = lineage(repo)
    # a crash between storing a newer state and deleting the older ones: both are there
    old = walstream.store_partial(repo, SEG, partial(1000), lin)
    assert old is not None
    newer_data = partial(3000)
    key = f"wal-stream/wal/00000001/{SEG}/00000BB8-0123456789abcdef"
    repo.put_named(key, newer_data.rstrip(b"\0"), {"seg_size": MiB})
    archived_seg = "000000010000000000000002"
    walstream.store_partial(repo, archived_seg, partial(2000, archived_seg), lin)
    repo.put_named(f"wal/00000001/{archived_seg}", segment(archived_seg, seg_size=MiB), {})
    assert walstream.cleanup(repo, "wal") == 2  # the superseded state and the archived segment's
    assert [s.key for s in walstream.stream_states(repo, "wal")] == [key]
    # wal-fetch falls back to the stream only when the segment is not archived
    found = walstream.read_streamed(repo, SEG)
    assert found is not None and found[2] == newer_data


def test_wal_fetch_falls_back_to_the_newest_state(repo: Repository, tmp_path: Path) -> None:
    dest = tmp_path / "RECOVERYXLOG"
    with pytest.raises(archive.NotArchived):
        archive.wal_fetch(repo, SEG, dest)
    walstream.store_partial(repo, SEG, partial(4000), lineage(repo))
    result = archive.wal_fetch(repo, SEG, dest)
    assert result.key.startswith("wal-stream/") and dest.read_bytes() == partial(4000)
    # archived wins over streamed
    full = partial(MiB - 100)
    repo.put_named(f"wal/00000001/{SEG}", full, {})
    assert archive.wal_fetch(repo, SEG, dest).key == f"wal/00000001/{SEG}"
    assert dest.read_bytes() == full
    with pytest.raises(archive.NotArchived):
        archive.wal_fetch(repo, "000000010000000000000009", dest)


def test_a_damaged_state_is_an_integrity_error(repo: Repository, tmp_path: Path) -> None:
    state = walstream.store_partial(repo, SEG, partial(4000), lineage(repo))
    assert state is not None
    path = tmp_path / "repo" / "named" / state[0].key
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError):
        archive.wal_fetch(repo, SEG, tmp_path / "RECOVERYXLOG")


def test_receive_settings_are_validated() -> None:
    from coldkeep import config as config_mod
    from coldkeep.errors import ConfigError

    cfg = config_mod.parse_text(
        '[postgres]\nreceive_slot = "ck_1"\nreceive_dir = "/srv/spool"\n', source="c.toml"
    )
    assert (cfg.postgres.receive_slot, cfg.postgres.receive_dir, cfg.postgres.receive_dsn) == (
        "ck_1",
        "/srv/spool",
        "",
    )
    for bad in (
        'receive_slot = "Cold-Keep"',
        'receive_dir = "relative/spool"',
        'receive_dsn = "host=x password=y"',
    ):
        with pytest.raises(ConfigError, match=r"postgres\.receive_"):
            config_mod.parse_text(f"[postgres]\n{bad}\n", source="c.toml")
