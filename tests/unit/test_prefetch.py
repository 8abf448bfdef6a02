"""The wal-fetch prefetch spool serves only verified segments (coldkeep.postgres.prefetch)."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import blake3
from tests.unit.test_wal import segment

from coldkeep.postgres import prefetch, prefetcher
from coldkeep.postgres.prefetch import Spool

MiB = 1024 * 1024
NAMES = ["000000010000000000000003", "000000010000000000000004", "000000010000000000000005"]


def spool_with(tmp_path: Path, names: list[str]) -> Spool:
    spool = Spool.for_dest(tmp_path / "pg_wal" / "RECOVERYXLOG", str(tmp_path / "c.toml"), "wal")
    os.makedirs(spool.root)
    spool.fill(names, lambda name: segment(name, seg_size=MiB))
    return spool


def test_fill_and_take(tmp_path: Path) -> None:
    spool = spool_with(tmp_path, NAMES)
    entries = sorted(os.listdir(spool.root))
    assert [e[:24] for e in entries] == NAMES  # no claims or temp files left
    data = segment(NAMES[0], seg_size=MiB)
    content = blake3.blake3(data).digest()
    bound = blake3.blake3(f"coldkeep-prefetch\0{0}\0{NAMES[0]}\0".encode() + content).hexdigest()
    assert entries[0] == f"{NAMES[0]}.{bound}"  # bound to the segment name and the cluster
    dest = tmp_path / "pg_wal" / "RECOVERYXLOG"
    assert spool.take(NAMES[0], dest) == MiB
    assert dest.read_bytes() == data
    assert spool.take(NAMES[0], dest) is None  # consumed
    assert spool.take("000000010000000000000009", dest) is None


def test_damaged_or_misnamed_spool_files_are_dropped(tmp_path: Path) -> None:
    spool = spool_with(tmp_path, NAMES[:2])
    first = next(Path(spool.root).glob(NAMES[0] + ".*"))
    raw = bytearray(first.read_bytes())
    raw[MiB // 2] ^= 0xFF  # the header is intact: only the digest can tell
    first.write_bytes(bytes(raw))
    dest = tmp_path / "pg_wal" / "RECOVERYXLOG"
    assert spool.take(NAMES[0], dest) is None
    assert not first.exists() and not dest.exists()
    # another segment's spool file renamed to this name (its digest kept): the digest covers the
    # name, so it no longer matches
    second = next(Path(spool.root).glob(NAMES[1] + ".*"))
    other = segment(NAMES[0], seg_size=MiB)
    second.unlink()
    (Path(spool.root) / f"{NAMES[1]}.{spool.digest(NAMES[0], other)}").write_bytes(other)
    # a plain content hash (what an older coldkeep wrote) is not the bound digest either
    (Path(spool.root) / f"{NAMES[1]}.{blake3.blake3(other).hexdigest()}").write_bytes(other)
    # truncated, and an empty file
    third = spool.digest(NAMES[1], other)
    (Path(spool.root) / f"{NAMES[1]}.{third}").write_bytes(other[:-1])
    assert spool.take(NAMES[1], dest) is None
    (Path(spool.root) / f"{NAMES[1]}.{spool.digest(NAMES[1], b'')}").write_bytes(b"")
    assert spool.take(NAMES[1], dest) is None
    assert os.listdir(spool.root) == [] and not dest.exists()


def test_spools_are_per_config_and_lineage(tmp_path: Path) -> None:
    dest = tmp_path / "pg_wal" / "RECOVERYXLOG"
    a = Spool.for_dest(dest, str(tmp_path / "a.toml"), "wal")
    b = Spool.for_dest(dest, str(tmp_path / "b.toml"), "wal")
    c = Spool.for_dest(dest, str(tmp_path / "a.toml"), "wal-7")
    assert len({a.root, b.root, c.root}) == 3
    assert Path(a.root).parent == dest.parent / prefetch.SPOOL_DIR


def data_dir_with_sysid(base: Path, sysid: int) -> Path:
    """A directory shaped like a data directory: ``global/pg_control`` starting with ``sysid``."""
    (base / "global").mkdir(parents=True)
    (base / "global" / "pg_control").write_bytes(sysid.to_bytes(8, "little") + b"\0" * 8184)
    (base / "pg_wal").mkdir()
    return base


def test_a_spool_is_bound_to_the_clusters_system_identifier(tmp_path: Path) -> None:
    """The spool of another cluster's recovery into the same directory (same config and lineage)
    is another directory, and its files do not verify under this cluster's identifier either."""
    data = data_dir_with_sysid(tmp_path / "data", 1111)
    dest = data / "pg_wal" / "RECOVERYXLOG"
    assert prefetch.control_system_identifier(dest) == 1111
    assert prefetch.control_system_identifier(tmp_path / "elsewhere" / "x") == 0  # not in pg_wal
    earlier = Spool.for_dest(dest, str(tmp_path / "c.toml"), None)
    os.makedirs(earlier.root)
    earlier.fill(NAMES[:1], lambda name: segment(name, seg_size=MiB))
    (data / "global" / "pg_control").write_bytes((2222).to_bytes(8, "little") + b"\0" * 8184)
    now = Spool.for_dest(dest, str(tmp_path / "c.toml"), None)
    assert now.system_identifier == 2222 and now.root != earlier.root
    assert now.take(NAMES[0], dest) is None
    os.rename(earlier.root, now.root)  # even in this cluster's spool directory: not served
    assert now.take(NAMES[0], dest) is None and not dest.exists()


def test_fill_stops_at_the_end_of_the_archive_and_skips_claimed(tmp_path: Path) -> None:
    spool = Spool.for_dest(tmp_path / "pg_wal" / "X", str(tmp_path / "c.toml"), None)
    os.makedirs(spool.root)
    (Path(spool.root) / f".{NAMES[0]}.claim").write_text("")  # another prefetcher is on it
    asked: list[str] = []

    def fetch(name: str) -> bytes | None:
        asked.append(name)
        return None if name == NAMES[2] else segment(name, seg_size=MiB)

    assert spool.fill([*NAMES, "000000010000000000000006"], fetch) == 1
    assert asked == NAMES[1:]
    assert spool.pending(NAMES[0]) and spool.has(NAMES[1]) and not spool.pending(NAMES[2])


def test_clean_drops_passed_segments_and_stale_claims(tmp_path: Path) -> None:
    spool = spool_with(tmp_path, NAMES)
    stale = Path(spool.root) / ".000000010000000000000009.claim"
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


def test_segments_ahead_follow_the_timelines_recovery_switches_to() -> None:
    """Timeline 2 begins inside segment 0x25, timeline 3 exactly at the start of 0x28 (history
    files as PostgreSQL 15 writes them): the segments after 0x23 on timeline 1 are asked for as
    1/0x24, 2/0x25, 2/0x26, 2/0x27, 3/0x28 (the newest timeline begun by a segment's start)."""
    h2 = b"1\t0/25000118\tno recovery target specified\n"
    h3 = h2 + b"\n2\t0/28000000\tbefore 2000-01-01 00:00:00+00\n"
    histories = {2: h2, 3: h3}
    assert prefetcher.parse_history(h3) == [(1, 0x25000118), (2, 0x28000000)]
    switches = prefetcher.switches_after(1, histories, 16 * MiB)
    assert switches == [(2, 0x25), (3, 0x28)]
    assert prefetcher.segments_ahead("000000010000000000000023", 16 * MiB, 5, switches) == [
        "000000010000000000000024",
        "000000020000000000000025",
        "000000020000000000000026",
        "000000020000000000000027",
        "000000030000000000000028",
    ]
    assert prefetcher.switches_after(2, histories, 16 * MiB) == [(3, 0x28)]
    # a timeline no archived history descends from, a file that is not a history: its own names
    assert prefetcher.switches_after(4, histories, 16 * MiB) == []
    assert prefetcher.switches_after(1, {2: b"not a history file"}, 16 * MiB) == []
    assert prefetcher.segments_ahead("000000040000000000000023", 16 * MiB, 1, []) == [
        "000000040000000000000024"
    ]


#: the spool-hit path (``restore_command`` for a prefetched segment) runs once per 16 MiB of WAL:
#: it imports none of these (issue 18: interpreter start + imports were most of its CPU)
NOT_ON_THE_HIT_PATH = (
    "pathlib",
    "dataclasses",
    "hashlib",
    "re",
    "contextlib",
    "typing",
    "collections",
    "coldkeep.postgres.wal",
    "coldkeep.postgres.archive",
    "coldkeep.repository.repository",
    "coldkeep.cli.walfast",
)

HIT_PROBE = f"""
import sys
sys.argv[0] = "coldkeep"
from coldkeep.cli.entry import main
try:
    main()
    code = 0
except SystemExit as exc:
    code = exc.code
loaded = [m for m in {NOT_ON_THE_HIT_PATH!r} if m in sys.modules]
sys.stderr.write(f"\\nprobe: exit {{code}}, imported {{','.join(loaded)}}\\n")
"""


def test_a_spool_hit_imports_only_what_it_needs(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.helpers import base_env, write_config

    config = write_config(tmp_path / "c.toml", f"file://{tmp_path / 'repo'}")  # never opened
    data = data_dir_with_sysid(tmp_path / "data", 1111)
    dest = data / "pg_wal" / "RECOVERYXLOG"
    spool = Spool.for_dest(dest, str(config), "wal")
    os.makedirs(spool.root)
    spool.fill(NAMES[:1], lambda name: segment(name, seg_size=MiB))
    spool.want("000000010000000000000002", MiB, 2)
    args = [
        "--config",
        str(config),
        "pg",
        "wal-fetch",
        "--lineage",
        "wal",
        "--prefetch",
        "2",
        NAMES[0],
        str(dest),
    ]
    lock = os.open(os.path.join(spool.root, prefetch.LOCK_NAME), os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a prefetcher "runs": the probe starts none
        proc = subprocess.run(
            [sys.executable, "-c", HIT_PROBE, *args],
            capture_output=True, text=True, timeout=120, env=base_env(), check=False,
        )  # fmt: skip
    finally:
        os.close(lock)
    assert proc.stderr.rstrip().rsplit("\n", 1)[-1] == "probe: exit 0, imported", proc.stderr[-3000:]
    assert dest.read_bytes() == segment(NAMES[0], seg_size=MiB)


def test_a_ready_segment_is_verified_again_and_served_once_by_either_path(tmp_path: Path) -> None:
    """``place`` links a spooled segment as ``ready/<name>`` only when it still verifies; the
    shell fast path (``mv``) or the foreground ``take`` serve it, and the other name goes."""
    spool = spool_with(tmp_path, NAMES)
    dest = tmp_path / "pg_wal" / "RECOVERYXLOG"
    assert spool.place(NAMES[0])
    ready = Path(spool.ready_path(NAMES[0]))
    assert ready.read_bytes() == segment(NAMES[0], seg_size=MiB)
    assert spool.place(NAMES[0])  # already there: unchanged
    assert not spool.taken(NAMES[0])
    # taken by the foreground path: its ready name is dropped with it
    assert spool.take(NAMES[0], dest) == MiB and not ready.exists()
    # taken by the shell fast path: the prefetcher sees it and drops the spool name
    assert spool.place(NAMES[1])
    os.replace(spool.ready_path(NAMES[1]), dest)
    assert dest.read_bytes() == segment(NAMES[1], seg_size=MiB)
    assert spool.taken(NAMES[1]) and not spool.has(NAMES[1])
    assert not spool.taken(NAMES[1])  # once
    # a damaged spool file is never made ready (and is dropped)
    victim = next(Path(spool.root).glob(NAMES[2] + ".*"))
    raw = bytearray(victim.read_bytes())
    raw[MiB // 3] ^= 0x01
    victim.write_bytes(bytes(raw))
    assert not spool.place(NAMES[2])
    assert not Path(spool.ready_path(NAMES[2])).exists() and not spool.has(NAMES[2])
    assert not spool.place("000000010000000000000009")  # not spooled


def test_clean_drops_ready_segments_recovery_is_past(tmp_path: Path) -> None:
    spool = spool_with(tmp_path, NAMES)
    assert spool.place(NAMES[1]) and spool.place(NAMES[2])
    spool.clean(NAMES[1])  # PostgreSQL asked for NAMES[1] through the foreground path
    assert not Path(spool.ready_path(NAMES[1])).exists()
    assert Path(spool.ready_path(NAMES[2])).exists()


def test_the_fast_path_of_restore_command_names_the_spool_recovery_uses(tmp_path: Path) -> None:
    """``ready_fast_path`` (written by ``pg restore``) points at the ready directory that
    ``Spool.for_dest`` derives at recovery time, relative to the data directory; run through
    ``sh`` there it serves a ready segment with ``mv`` and falls through otherwise."""
    import subprocess

    data = data_dir_with_sysid(tmp_path / "data", 4242)
    config = str(tmp_path / "c.toml")
    prefix = prefetch.ready_fast_path(data, config, "wal")
    spool = Spool.for_dest(data / "pg_wal" / "RECOVERYXLOG", config, "wal")
    assert prefix.startswith(f"r=pg_wal/.coldkeep-prefetch/{Path(spool.root).name}/ready/%f; ")
    assert prefix.endswith(" || ")
    os.makedirs(spool.root)
    spool.fill(NAMES[:1], lambda name: segment(name, seg_size=MiB))
    assert spool.place(NAMES[0])

    def run(name: str) -> int:
        command = (prefix + "exit 7").replace("%f", name).replace("%p", "pg_wal/RECOVERYXLOG")
        return subprocess.run(["sh", "-c", command], cwd=data, check=False).returncode

    assert run(NAMES[0]) == 0
    assert (data / "pg_wal" / "RECOVERYXLOG").read_bytes() == segment(NAMES[0], seg_size=MiB)
    assert run(NAMES[0]) == 7  # served once; then the fallback runs (here: exit 7)
    assert run(NAMES[1]) == 7
    # a byte that changes after the segment was made ready: the fast path's cksum refuses it
    spool.fill(NAMES[1:3], lambda name: segment(name, seg_size=MiB))
    assert spool.place(NAMES[1]) and spool.place(NAMES[2])
    flip = Path(spool.ready_path(NAMES[1]))
    raw = bytearray(flip.read_bytes())
    raw[MiB // 2 + 3] ^= 0x10
    flip.write_bytes(bytes(raw))
    (data / "pg_wal" / "RECOVERYXLOG").unlink()
    assert run(NAMES[1]) == 7 and not (data / "pg_wal" / "RECOVERYXLOG").exists()
    assert spool.take(NAMES[1], data / "pg_wal" / "RECOVERYXLOG") is None  # the foreground re-hash drops it
    assert not flip.exists() and not spool.has(NAMES[1])
    # a ready file without its checksum (a placement cut short) is not served by the fast path
    os.unlink(spool.ready_path(NAMES[2]) + ".crc")
    assert run(NAMES[2]) == 7


def test_stage_ready_makes_only_bytes_that_still_hash_to_their_verified_digest_ready(tmp_path: Path) -> None:
    """``pg restore`` stages the backup's first segments with ``stage_ready``: a ``ready/`` name and
    its ``.crc``, no spool name; a file whose bytes no longer hash to the digest the repository
    verified is dropped, never made ready; the prefetcher does not fetch a staged segment again."""
    spool = Spool.for_dest(tmp_path / "pg_wal" / "RECOVERYXLOG", str(tmp_path / "c.toml"), "wal")
    os.makedirs(spool.root)
    good, bad = segment(NAMES[0], seg_size=MiB), segment(NAMES[1], seg_size=MiB)
    temp = Path(spool.path(f".{NAMES[0]}.staged.tmp"))
    temp.write_bytes(good)
    assert spool.stage_ready(NAMES[0], str(temp), blake3.blake3(good).digest())
    ready = Path(spool.ready_path(NAMES[0]))
    assert ready.read_bytes() == good and not temp.exists() and not spool.has(NAMES[0])
    crc = Path(str(ready) + ".crc").read_text().split()
    assert crc[1] == str(MiB) and crc[0].isdigit()
    # changed after the repository verified it: not made ready, the temp file is gone
    temp = Path(spool.path(f".{NAMES[1]}.staged.tmp"))
    changed = bytearray(bad)
    changed[MiB // 4] ^= 0x01
    temp.write_bytes(bytes(changed))
    assert not spool.stage_ready(NAMES[1], str(temp), blake3.blake3(bad).digest())
    assert not temp.exists() and not Path(spool.ready_path(NAMES[1])).exists()
    # the prefetcher skips what is staged (it is served by the fast path) and fetches the rest
    spool.want("000000010000000000000002", MiB, 3)
    todo = prefetcher.Prefetcher(spool, str(tmp_path / "c.toml"), "wal")._todo(
        spool.wanted() or ("", 0, 0), 0.0
    )
    assert todo == NAMES[1:]
