"""Crash tests of the WAL prefetcher (issue 18) on real PostgreSQL 15 WAL: a prefetcher killed
mid-fetch, a stale spool of another cluster's recovery, damaged spooled segments, and a recovery
that ends with segments still prefetched.  Whatever happens to the spool, ``restore_command``
hands PostgreSQL the archived bytes or nothing, and "not archived" stays exit 1."""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.helpers import flip_byte
from tests.pgsite import Env, archiving_env
from tests.walsite import WalSite, generate_wal, make_site, remove_site

from coldkeep.errors import PostgresError
from coldkeep.postgres import wal
from coldkeep.postgres.cluster import TempCluster, chown_to, free_port
from coldkeep.postgres.prefetch import KILL_ENV, LOCK_NAME, SPOOL_DIR, Spool, is_segment_name
from coldkeep.processes import pid_alive

pytestmark = pytest.mark.pg

NOT_ARCHIVED = 1


@pytest.fixture
def registered(pg_cluster: TempCluster, pg_coldkeep: str) -> Iterator[WalSite]:
    """Archiving configured (lineage recorded), segments pushed by hand."""
    site = make_site(pg_cluster, pg_coldkeep)
    site.setup_archiving(restart=False)
    yield site
    remove_site(site)


def wait_for(predicate: Callable[[], bool], timeout: float = 30) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def push_segments(site: WalSite, count: int) -> tuple[list[str], dict[str, bytes]]:
    names = generate_wal(site.cluster, segments=count, rows=2000)
    sources = {}
    for name in names:
        sources[name] = site.wal_file(name).read_bytes()
        site.ok("pg", "wal-push", str(site.wal_file(name)))
    return names, sources


def data_dir_of(site: WalSite, base: Path) -> Path:
    """A restore target shaped like a data directory: ``pg_wal`` and the cluster's ``pg_control``
    (what binds the spool to the cluster being recovered)."""
    (base / "global").mkdir(parents=True)
    shutil.copyfile(site.cluster.data_dir / "global" / "pg_control", base / "global" / "pg_control")
    (base / "pg_wal").mkdir()
    return base


def spooled(spool_dir: Path) -> list[str]:
    """The segment names in a spool's directories (claims, temp and lock files and the ``ready``
    directory of hard links to spooled files left out)."""
    if not spool_dir.exists():
        return []
    return sorted(
        p.name[:24]
        for d in spool_dir.iterdir()
        for p in d.iterdir()
        if not p.name.startswith(".") and p.is_file()
    )


def prefetchers(spool_dir: Path) -> set[int]:
    """Pids of the processes that hold a spool's ``.prefetcher`` lock file open."""
    locks = {str(p) for p in spool_dir.glob(f"*/{LOCK_NAME}")}
    pids = set()
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            if os.readlink(fd) in locks:
                pids.add(int(fd.parts[2]))
        except OSError:
            continue
    return pids


def dead_claims(spool_dir: Path) -> list[str]:
    """Segments claimed by a prefetcher that no longer runs."""
    out = []
    for claim in spool_dir.glob("*/.*.claim"):
        try:
            pid = int(claim.read_text() or "0")
        except (OSError, ValueError):
            continue
        if pid > 0 and not pid_alive(pid):
            out.append(claim.name[1:25])
    return out


def after(name: str) -> str:
    return wal.segment_name(1, wal.parse_name(name).segno + 1)


def test_a_prefetcher_killed_mid_fetch_is_replaced_and_the_fetches_stay_exact(
    registered: WalSite, tmp_path: Path
) -> None:
    site = registered
    names, sources = push_segments(site, 6)
    data = data_dir_of(site, tmp_path / "data")
    dest, spool_dir = data / "pg_wal" / "RECOVERYXLOG", data / "pg_wal" / SPOOL_DIR

    def fetch(name: str, env: dict[str, str] | None = None) -> bool:
        """Restore ``name`` as PostgreSQL would; ``True`` when it came from the spool."""
        proc = site.ok("--json", "pg", "wal-fetch", "--prefetch", "2", name, str(dest), env=env)
        assert dest.read_bytes() == sources[name], name
        return bool(json.loads(proc.stdout).get("prefetched"))

    # killed with a segment read and verified, its claim held, nothing written
    fetch(names[0], env={"COLDKEEP_TESTING": "1", KILL_ENV: "fetched:1"})
    wait_for(lambda: bool(dead_claims(spool_dir)))
    wait_for(lambda: not prefetchers(spool_dir))
    killed = dead_claims(spool_dir)  # both fetches in flight (two threads) died with it
    assert set(killed) <= set(names[1:3]) and set(killed) - set(spooled(spool_dir))
    for name in names[1:4]:  # the dead claim is no reason to wait, nor a file to serve
        fetch(name)
    wait_for(lambda: spooled(spool_dir) == names[4:6])  # a new prefetcher took over the spool
    assert prefetchers(spool_dir)
    assert fetch(names[4]) and fetch(names[5])
    # the end of the archive, with a prefetcher running: "not archived", exit 1
    assert (
        site.run("pg", "wal-fetch", "--prefetch", "2", after(names[5]), str(dest)).returncode == NOT_ARCHIVED
    )


def test_a_prefetcher_killed_right_after_spooling_left_a_servable_segment(
    registered: WalSite, tmp_path: Path
) -> None:
    site = registered
    names, sources = push_segments(site, 3)
    data = data_dir_of(site, tmp_path / "data")
    dest, spool_dir = data / "pg_wal" / "RECOVERYXLOG", data / "pg_wal" / SPOOL_DIR
    site.ok("pg", "wal-fetch", "--prefetch", "2", names[0], str(dest), env={"COLDKEEP_TESTING": "1", KILL_ENV: "spooled:1"})  # fmt: skip
    wait_for(lambda: bool(dead_claims(spool_dir)))
    killed = dead_claims(spool_dir)
    ready = set(killed) & set(spooled(spool_dir))  # renamed into place, the claim kept
    assert set(killed) <= set(names[1:3]) and ready
    for name in names[1:]:  # a claim left by a dead prefetcher does not stop a spooled file's use
        proc = site.ok("--json", "pg", "wal-fetch", "--prefetch", "2", name, str(dest))
        assert dest.read_bytes() == sources[name]
        assert json.loads(proc.stdout).get("prefetched") or name not in ready
    assert (
        site.run("pg", "wal-fetch", "--prefetch", "2", after(names[2]), str(dest)).returncode == NOT_ARCHIVED
    )


def as_segment(segment: bytes, name: str) -> bytes:
    """``segment`` with the page address of segment ``name`` in its header (offset 8)."""
    return segment[:8] + struct.pack("<Q", wal.parse_name(name).start_lsn(len(segment))) + segment[16:]


def foreign(segment: bytes, system_identifier: int) -> bytes:
    """``segment`` as another cluster would have written it: its long page header carries that
    cluster's system identifier (offset 24)."""
    return segment[:24] + struct.pack("<Q", system_identifier) + segment[32:]


def test_a_stale_spool_of_another_clusters_recovery_is_never_served(
    registered: WalSite, tmp_path: Path
) -> None:
    """An earlier recovery of another cluster into this directory (same config and lineage, no
    recovery_end_command ran) left its spool: this recovery gets the archived bytes, and a stale
    file for a segment that is not archived still yields "not archived"."""
    site = registered
    names, sources = push_segments(site, 2)
    data = data_dir_of(site, tmp_path / "data")
    dest = data / "pg_wal" / "RECOVERYXLOG"
    control = data / "global" / "pg_control"
    ours = control.read_bytes()
    other_sysid = struct.unpack_from("<Q", ours)[0] ^ 0x5A5A
    missing = after(names[1])  # not archived
    stale = {
        names[0]: foreign(sources[names[0]], other_sysid),
        names[1]: foreign(sources[names[1]], other_sysid),
        missing: foreign(as_segment(sources[names[1]], missing), other_sysid),
    }
    # the earlier recovery: the other cluster's pg_control, its prefetcher spooled its segments
    control.write_bytes(struct.pack("<Q", other_sysid) + ours[8:])
    earlier = Spool.for_dest(dest, str(site.config), None)
    os.makedirs(earlier.root)
    assert earlier.fill([names[0], names[1], missing], stale.__getitem__) == 3
    control.write_bytes(ours)  # this recovery: the cluster the archive belongs to

    now = Spool.for_dest(dest, str(site.config), None)
    assert now.root != earlier.root  # the stale spool is another directory...
    shutil.copytree(earlier.root, now.root)  # ...but even its files in this recovery's own: refused

    proc = site.ok("--json", "pg", "wal-fetch", "--prefetch", "2", names[0], str(dest))
    assert dest.read_bytes() == sources[names[0]] and "prefetched" not in json.loads(proc.stdout)
    site.ok("pg", "wal-fetch", "--prefetch", "2", names[1], str(dest))  # (perhaps prefetched meanwhile)
    assert dest.read_bytes() == sources[names[1]]
    dest.unlink()
    assert site.run("pg", "wal-fetch", "--prefetch", "2", missing, str(dest)).returncode == NOT_ARCHIVED
    assert not dest.exists()


def test_damaged_spooled_segments_are_refetched_never_served(registered: WalSite, tmp_path: Path) -> None:
    site = registered
    names, sources = push_segments(site, 3)
    data = data_dir_of(site, tmp_path / "data")
    dest, spool_dir = data / "pg_wal" / "RECOVERYXLOG", data / "pg_wal" / SPOOL_DIR
    site.ok("pg", "wal-fetch", "--prefetch", "2", names[0], str(dest))
    wait_for(lambda: spooled(spool_dir) == names[1:3])
    files = {p.name[:24]: p for d in spool_dir.iterdir() for p in d.iterdir() if not p.name.startswith(".")}
    flip_byte(files[names[1]], 9 * 1024 * 1024)  # the header intact: only the digest can tell
    with open(files[names[2]], "r+b") as fh:
        fh.truncate(8 * 1024 * 1024)
    for name in names[1:]:
        proc = site.ok("--json", "pg", "wal-fetch", "--prefetch", "2", name, str(dest))
        assert dest.read_bytes() == sources[name]
        assert not files[name].exists()
        if name == names[1]:  # damaged while spooled (and made ready): fetched from the repository
            assert "prefetched" not in json.loads(proc.stdout)
        # names[2]: the prefetcher may have found the damage first (making it ready), dropped it
        # and spooled a verified copy again: served either way, never the damaged bytes
    # a damaged spooled copy of a segment that is not archived: exit 1, nothing written
    missing = after(names[2])
    spool = Spool.for_dest(dest, str(site.config), None)  # the spool of `wal-fetch` without --lineage
    bogus = as_segment(sources[names[2]], missing)
    spool.put(missing, bogus)
    flip_byte(next(Path(spool.root).glob(missing + ".*")))
    dest.unlink()
    assert site.run("pg", "wal-fetch", "--prefetch", "2", missing, str(dest)).returncode == NOT_ARCHIVED
    assert not dest.exists()


def test_the_prefetcher_follows_a_timeline_switch_as_recovery_will(
    registered: WalSite, tmp_path: Path
) -> None:
    """With ``00000002.history`` archived (timeline 2 begins inside the fourth segment), a
    recovery on timeline 1 asks for the segments from that one on under timeline 2's names
    (PostgreSQL tries the newest timeline begun by a segment's start): the prefetcher spools
    those, not timeline 1's, and serves them exactly."""
    site = registered
    names, sources = push_segments(site, 5)
    seg_size = len(sources[names[0]])
    switch = wal.parse_name(names[3]).start_lsn(seg_size) + 0x118
    history = tmp_path / wal.history_name(2)
    history.write_text(f"1\t{switch >> 32:X}/{switch & 0xFFFFFFFF:08X}\tno recovery target specified\n")
    site.ok("pg", "wal-push", str(history))
    on_2 = {n: wal.segment_name(2, wal.parse_name(n).segno_for(seg_size), seg_size) for n in names[3:]}
    for (
        name,
        renamed,
    ) in on_2.items():  # timeline 2's copies (the first page keeps timeline 1, as at a switch)
        (tmp_path / renamed).write_bytes(sources[name])
        site.ok("pg", "wal-push", str(tmp_path / renamed))
    data = data_dir_of(site, tmp_path / "data")
    dest, spool_dir = data / "pg_wal" / "RECOVERYXLOG", data / "pg_wal" / SPOOL_DIR

    site.ok("pg", "wal-fetch", "--prefetch", "3", names[1], str(dest))
    wait_for(lambda: spooled(spool_dir) == sorted([names[2], *on_2.values()]))
    asked = [(names[2], names[2]), *((renamed, name) for name, renamed in on_2.items())]
    for name, source in asked:  # served from the spool, byte for byte
        proc = site.ok("--json", "pg", "wal-fetch", "--prefetch", "3", name, str(dest))
        assert json.loads(proc.stdout).get("prefetched"), name
        assert dest.read_bytes() == sources[source], name


# ------------------------------------------------------------------------------------------------
# a real recovery


@pytest.fixture
def pgenv(pg_cluster: TempCluster, pg_coldkeep: str) -> Iterator[Env]:
    yield from archiving_env(pg_cluster, pg_coldkeep)


def processes_in(data: Path) -> list[int]:
    """Processes other than PostgreSQL's own working in ``data`` (a prefetcher runs there)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "cwd") == str(data) and (entry / "comm").read_text().strip() != "postgres":
                out.append(int(entry.name))
        except OSError:
            continue
    return out


def test_recovery_ending_with_segments_still_prefetched_leaves_no_spool_and_no_prefetcher(
    pgenv: Env,
) -> None:
    env, c = pgenv, pgenv.cluster
    c.sql("INSERT INTO marks (label) VALUES ('before')")
    env.ck("pg", "backup")
    generate_wal(c, segments=2, rows=2000)
    c.sql("INSERT INTO marks (label) VALUES ('target')")
    c.sql("SELECT pg_create_restore_point('prefetch-end')")
    generate_wal(c, segments=6, rows=2000)  # archived beyond the target: the prefetcher runs ahead
    c.sql("INSERT INTO marks (label) VALUES ('after')")
    env.switch_and_wait()

    report = env.ckj("pg", "restore", "--target-dir", str(env.base / "r"), "--name", "prefetch-end")
    data = Path(report["data_dir"])
    auto = data / "postgresql.auto.conf"
    (cleanup,) = [line for line in auto.read_text().splitlines() if line.startswith("recovery_end_command")]
    # observe the spool as recovery ends (waiting until the prefetcher has spooled something),
    # then run the recovery_end_command pg restore wrote
    look = (
        "for i in $(seq 200); do ls pg_wal/.coldkeep-prefetch/*/0* >/dev/null 2>&1 && break; sleep 0.05; done; "
        "ls -1 pg_wal/.coldkeep-prefetch/*/ > spool-at-end.txt 2>&1; "
    )
    with open(auto, "a") as fh:
        fh.write(cleanup.replace("= '", "= '" + look, 1) + "\n")
    server = TempCluster(env.base / "r.run", bin_dir=c.bin_dir, data_dir=data, port=free_port())
    chown_to(server.base, server.os_user)
    server.start(timeout=300)
    wait_for(lambda: server.sql("SELECT pg_is_in_recovery()")[0][0] is False, timeout=300)
    assert [r[0] for r in server.sql("SELECT label FROM marks ORDER BY id")] == ["before", "target"]

    at_end = (data / "spool-at-end.txt").read_text().split()
    assert [n for n in at_end if is_segment_name(n[:24]) and n[24:25] == "."], at_end
    pg_wal = data / "pg_wal"
    assert not [p.name for p in pg_wal.iterdir() if p.name.startswith(SPOOL_DIR)]
    # the prefetcher stops (its spool is gone) well before its 30 s idle timeout
    wait_for(lambda: not processes_in(data), timeout=20)


def test_pg_restore_stages_the_backups_own_wal_and_the_fast_path_serves_only_intact_copies(
    pgenv: Env,
) -> None:
    """``pg restore`` stages the backup's own first segments ready for the shell fast path (the
    copy equals what ``wal-fetch`` returns, owned by the server's OS user).  Served from there, a
    recovery needs no archive access for them (proved by removing the archived start segment);
    a staged copy whose byte changed after staging is refused by the fast path's CRC and fetched
    from the repository instead; with the copy damaged and the archived segment gone, the server
    never promotes."""
    env, c = pgenv, pgenv.cluster
    c.sql("INSERT INTO marks (label) VALUES ('in-backup')")
    backup = env.ckj("pg", "backup")
    env.switch_and_wait()
    first = backup["start_wal"]
    archived = next((env.base / "repo" / "named" / "wal").rglob(first))
    saved = archived.read_bytes()
    fetched = env.base / "fetched"
    env.ck("pg", "wal-fetch", first, str(fetched))

    def prepare(name: str) -> tuple[Path, Path, TempCluster]:
        report = env.ckj("pg", "restore", "--target-dir", str(env.base / name), "--immediate")
        assert report["wal_staged"] >= 1
        data = Path(report["data_dir"])
        (ready,) = (data / "pg_wal" / SPOOL_DIR).glob(f"*/ready/{first}")
        assert ready.read_bytes() == fetched.read_bytes()
        assert ready.stat().st_uid == c.data_dir.stat().st_uid
        server = TempCluster(
            data.with_name(name + ".run"), bin_dir=c.bin_dir, data_dir=data, port=free_port()
        )
        chown_to(server.base, server.os_user)
        return data, ready, server

    def promoted(server: TempCluster) -> list[str]:
        server.start(timeout=300)
        try:
            wait_for(lambda: server.sql("SELECT pg_is_in_recovery()")[0][0] is False, timeout=300)
            return [r[0] for r in server.sql("SELECT label FROM marks ORDER BY id")]
        finally:
            server.stop()

    def archive_back() -> None:
        archived.write_bytes(saved)
        chown_to(archived, c.os_user)

    # the staged copy is what recovery gets: the archived segment is not needed
    _, _, server = prepare("staged")
    archived.unlink()
    try:
        assert promoted(server) == ["in-backup"]
    finally:
        archive_back()
    # a staged copy damaged after staging, the archived segment gone: recovery stops unpromoted
    data, ready, server = prepare("nowhere")
    flip_byte(ready)
    archived.unlink()
    try:
        with pytest.raises(PostgresError):
            server.start(timeout=120)
        assert "selected new timeline ID" not in server.log_text()
        assert not (data / "postmaster.pid").exists()
    finally:
        server.stop()
        archive_back()
    # a damaged staged copy with the archive intact: wal-fetch serves the archived bytes
    _, ready, server = prepare("refetched")
    flip_byte(ready)
    assert promoted(server) == ["in-backup"]


@pytest.mark.parametrize("stage", ["stage-streamed", "stage-ready"])
def test_pg_restore_killed_while_staging_leaves_no_servable_partial_and_a_rerun_recovers(
    pgenv: Env, stage: str
) -> None:
    """``pg restore`` SIGKILLed while it stages the backup's first segment: with the segment only
    streamed, the spool holds its ``.staged.tmp`` and nothing ready (the fast path has nothing to
    serve); right after it was made ready, the ready copy is complete and exact.  Either way a
    rerun into the same target moves the killed directory aside, stages again and promotes."""
    env, c = pgenv, pgenv.cluster
    c.sql("INSERT INTO marks (label) VALUES ('in-backup')")
    backup = env.ckj("pg", "backup")
    env.switch_and_wait()
    first = backup["start_wal"]
    fetched = env.base / "fetched"
    env.ck("pg", "wal-fetch", first, str(fetched))
    target = env.base / "r"

    killed = env.ck("pg", "restore", "--target-dir", str(target), "--immediate", expect=None,
                    extra_env={KILL_ENV: f"{stage}:1"})  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    (spool,) = (target / "pg_wal" / SPOOL_DIR).iterdir()
    ready = sorted(p.name for p in (spool / "ready").iterdir()) if (spool / "ready").exists() else []
    temps = [p.name for p in spool.iterdir() if p.name.endswith(".staged.tmp")]
    if stage == "stage-streamed":
        assert ready == [] and temps == [f".{first}.{temps[0].split('.')[2]}.staged.tmp"], (ready, temps)
    else:
        assert ready == [first, first + ".crc"] and temps == [], (ready, temps)
        assert (spool / "ready" / first).read_bytes() == fetched.read_bytes()

    report = env.ckj("pg", "restore", "--target-dir", str(target), "--immediate")
    assert report["moved_aside"] and Path(report["moved_aside"]).is_dir()
    assert report["wal_staged"] >= 1
    data = Path(report["data_dir"])
    assert not list((data / "pg_wal" / SPOOL_DIR).glob("*/*.staged.tmp"))
    server = TempCluster(data.with_name("r.run"), bin_dir=c.bin_dir, data_dir=data, port=free_port())
    chown_to(server.base, server.os_user)
    server.start(timeout=300)
    try:
        wait_for(lambda: server.sql("SELECT pg_is_in_recovery()")[0][0] is False, timeout=300)
        assert [r[0] for r in server.sql("SELECT label FROM marks ORDER BY id")] == ["in-backup"]
    finally:
        server.stop()
