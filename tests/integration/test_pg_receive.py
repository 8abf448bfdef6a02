"""``pg receive-wal`` on real PostgreSQL 15: synchronous streaming survives the loss of the primary
and its data directory; the archiver and the receiver pushing the same segment is no error;
``wal-fetch`` serves a streamed partial segment only when the segment is not archived."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.pgsite import Env, archiving_env
from tests.receivesite import Receiver, switch_and_wait_for_segment, use_spool, wait_gone, wait_replication
from tests.walsite import wait_archived

from coldkeep.postgres.cluster import TempCluster

pytestmark = [pytest.mark.pg, pytest.mark.slow]


@pytest.fixture
def pgenv(pg_cluster: TempCluster, pg_coldkeep: str) -> Iterator[Env]:
    yield from archiving_env(pg_cluster, pg_coldkeep)


@pytest.fixture
def pgenv_sync(pg_cluster: TempCluster, pg_coldkeep: str) -> Iterator[Env]:
    """One ``wal-push`` per segment (``archive_async = false``): its messages are in the server log."""
    yield from archiving_env(pg_cluster, pg_coldkeep, archive_async=False)


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for r in made:
        r.close()


def labels(port: int, socket_dir: str) -> list[str]:
    import psycopg

    dsn = f"host={socket_dir} port={port} dbname=postgres user=postgres"
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [str(r[0]) for r in conn.execute("SELECT label FROM marks ORDER BY id")]


def stream_objects(env: Env) -> list[Path]:
    root = env.base / "repo" / "named" / "wal-stream"
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".tmp-"))


def test_synchronous_commit_survives_losing_the_primary(pgenv: Env, receivers: list[Receiver]) -> None:
    env, c = pgenv, pgenv.cluster
    use_spool(env)
    setup = env.ckj("pg", "setup", "--apply", "--synchronous")
    assert setup["slot"]["exists"] and not setup["slot"]["receiver_streaming"]
    sync = {s["name"]: s for s in setup["settings"]}["synchronous_standby_names"]
    assert sync["apply"] is False  # no receiver yet: commits would wait forever
    c.sql("INSERT INTO marks (label) VALUES ('before-backup')")
    env.ckj("pg", "backup", "--label", "base")

    receiver = Receiver(env, ("--synchronous",)).start()
    receivers.append(receiver)
    streaming = receiver.event("streaming")
    wait_replication(env)
    # with a receiver streaming, pg setup --synchronous now makes commits wait for it
    again = env.ckj("pg", "setup", "--apply", "--synchronous")
    assert {s["name"]: s for s in again["settings"]}["synchronous_standby_names"]["apply"] is True
    wait_replication(env, sync_state="sync")
    assert c.sql("SHOW synchronous_standby_names")[0][0] == "coldkeep"

    c.sql("INSERT INTO marks (label) VALUES ('committed')")  # returns once pg_receivewal flushed it
    lsn = str(c.sql("SELECT pg_current_wal_lsn()")[0][0])
    segment = str(c.sql(f"SELECT pg_walfile_name('{lsn}')")[0][0])
    # the primary dies at once and its data directory is lost
    c.stop(mode="immediate")
    shutil.rmtree(c.data_dir)
    # pg_receivewal loses the connection; the receiver stores the partial segment a last time
    receiver.event("disconnected", timeout=60)
    wait_gone(int(streaming["pid"]))
    assert receiver.terminate() == 0
    stopped = receiver.of("stopped")[-1]
    assert stopped["partials"] >= 1
    assert not receiver.of("error"), receiver.events

    # the commit is not in any archived segment: only the streamed partial state has it
    archived = env.base / "repo" / "named" / "wal" / segment[:8] / segment
    assert not archived.exists()
    states = [p for p in stream_objects(env) if p.parent.name == segment]
    assert len(states) == 1, stream_objects(env)
    # it reaches the commit (the stored end omits zero bytes: alignment padding, trailing zeros)
    assert int(states[0].name.split("-")[0], 16) >= int(lsn.split("/")[1], 16) % (16 << 20) - 64

    # recovered from the repository alone
    target = env.base / "restored"
    report: dict[str, Any] = env.ckj("pg", "restore", "--target-dir", str(target), "--start")
    try:
        assert labels(report["port"], report["socket_dir"]) == ["before-backup", "committed"]
    finally:
        TempCluster(target.with_name(target.name + ".run"), bin_dir=c.bin_dir, data_dir=target).stop()


def test_archiver_and_receiver_push_the_same_segment(
    pgenv_sync: Env, receivers: list[Receiver], tmp_path: Path
) -> None:
    env, c = pgenv_sync, pgenv_sync.cluster
    spool = use_spool(env)
    receiver = Receiver(env, ()).start()
    receivers.append(receiver)
    receiver.event("streaming")
    wait_replication(env)
    names = []
    for i in range(3):
        c.sql(f"INSERT INTO marks (label) SELECT 'row-{i}-' || g FROM generate_series(1, 2000) g")
        lsn = c.sql("SELECT pg_switch_wal()")[0][0]
        names.append(str(c.sql(f"SELECT pg_walfile_name('{lsn}')")[0][0]))
    for name in names:
        receiver.event("segment", name=name)
    stats = wait_archived(c, names[-1], timeout=90)
    assert stats["failed_count"] == 0, c.log_text()[-3000:]
    assert not receiver.of("error"), receiver.events
    # each segment was pushed from both sides: whichever came second found the identical copy
    pushed = {e["name"]: e for e in receiver.of("segment")}
    assert set(names) <= set(pushed)
    duplicates = c.log_text().count("already archived with identical content")
    duplicates += sum(1 for name in names if not pushed[name]["stored"])
    assert duplicates >= len(names)
    # ... and a manual re-push of the receiver's copy is an identical duplicate too
    copy = spool / names[-1]
    assert copy.is_file()
    again = env.ck("pg", "wal-push", str(copy))
    assert "already archived with identical content" in again.stderr
    assert (env.base / "repo" / "named" / "wal" / names[-1][:8] / names[-1]).is_file()
    # the streamed states of completed segments are gone; only the current segment's newest remains
    assert {p.parent.name for p in stream_objects(env)} <= {
        f"{names[-1][:16]}{int(names[-1][16:], 16) + 1:08X}"
    }
    assert receiver.terminate() == 0
    # (no base backup here, so nothing for `pg verify --all`: it says so with exit 5)
    assert env.ck("pg", "verify", "--all", expect=5).returncode == 5
    assert env.ckj("repo", "check", "--read-data")["problems"] == []  # every archived object verifies


def test_wal_fetch_serves_a_streamed_partial_only_when_not_archived(
    pgenv: Env, receivers: list[Receiver], tmp_path: Path
) -> None:
    env, c = pgenv, pgenv.cluster
    use_spool(env)
    receiver = Receiver(env, ("--interval", "0.05")).start()
    receivers.append(receiver)
    receiver.event("streaming")
    c.sql("INSERT INTO marks (label) VALUES ('streamed')")
    lsn = str(c.sql("SELECT pg_current_wal_lsn()")[0][0])
    segment = str(c.sql(f"SELECT pg_walfile_name('{lsn}')")[0][0])
    offset = int(lsn.split("/")[1], 16) % (16 << 20)
    receiver.wait_for(
        lambda e: e.get("event") == "partial" and e["segment"] == segment and e["end"] >= offset
    )
    dest = tmp_path / "fetched"
    env.ck("pg", "wal-fetch", segment, str(dest))
    data = dest.read_bytes()
    assert len(data) == 16 << 20 and data[:offset].rstrip(b"\0") and not data[offset + 8192 :].strip(b"\0")
    # the next segment is neither archived nor streamed: "not archived", exit 1
    nxt = f"{segment[:16]}{int(segment[16:], 16) + 1:08X}"
    env.ck("pg", "wal-fetch", nxt, str(tmp_path / "next"), expect=1)
    # once archived, the archived segment is served and the streamed states are removed
    env.switch_and_wait()
    receiver.event("segment", name=segment)
    deadline = time.monotonic() + 10
    while any(p.parent.name == segment for p in stream_objects(env)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in stream_objects(env) if p.parent.name == segment]
    env.ck("pg", "wal-fetch", segment, str(dest))
    archived = env.base / "repo" / "named" / "wal" / segment[:8] / segment
    assert archived.is_file()
    assert dest.read_bytes()[:offset] == data[:offset]
    assert receiver.terminate() == 0


def test_pitr_to_a_time_only_the_stream_reaches(pgenv: Env, receivers: list[Receiver]) -> None:
    """A target time after the newest archived segment but covered by a streamed state is
    accepted (and reached); before `pg receive-wal` it was refused as beyond the archive."""
    env, c = pgenv, pgenv.cluster
    use_spool(env)
    c.sql("INSERT INTO marks (label) VALUES ('base')")
    env.ckj("pg", "backup")
    receiver = Receiver(env, ("--interval", "0.05")).start()
    receivers.append(receiver)
    receiver.event("streaming")
    c.sql("INSERT INTO marks (label) VALUES ('before-target')")
    time.sleep(1.1)
    target = str(c.sql("SELECT now()")[0][0].isoformat())
    time.sleep(1.1)
    c.sql("INSERT INTO marks (label) VALUES ('after-target')")
    lsn = str(c.sql("SELECT pg_current_wal_lsn()")[0][0])
    segment = str(c.sql(f"SELECT pg_walfile_name('{lsn}')")[0][0])
    offset = int(lsn.split("/")[1], 16) % (16 << 20)
    receiver.wait_for(
        lambda e: e.get("event") == "partial" and e["segment"] == segment and e["end"] >= offset - 64
    )
    time.sleep(0.5)  # the stored state is newer than the target time
    assert receiver.terminate() == 0
    assert not (env.base / "repo" / "named" / "wal" / segment[:8] / segment).exists()
    restored = env.base / "pitr"
    report: dict[str, Any] = env.ckj(
        "pg", "restore", "--target-dir", str(restored), "--time", target, "--start"
    )
    try:
        assert labels(report["port"], report["socket_dir"]) == ["base", "before-target"]
    finally:
        TempCluster(restored.with_name(restored.name + ".run"), bin_dir=c.bin_dir, data_dir=restored).stop()


def test_expire_removes_streamed_states_no_kept_backup_needs(pgenv: Env, receivers: list[Receiver]) -> None:
    env, c = pgenv, pgenv.cluster
    use_spool(env)
    receiver = Receiver(env, ("--interval", "0.05")).start()
    receivers.append(receiver)
    receiver.event("streaming")
    c.sql("INSERT INTO marks (label) VALUES ('streamed')")
    lsn = str(c.sql("SELECT pg_current_wal_lsn()")[0][0])
    segment = str(c.sql(f"SELECT pg_walfile_name('{lsn}')")[0][0])
    receiver.wait_for(lambda e: e.get("event") == "partial" and e["segment"] == segment)
    assert receiver.terminate() == 0
    # the receiver is gone when the segment completes: its state stays behind (as after a kill -9)
    env.switch_and_wait()
    assert [p.parent.name for p in stream_objects(env)] == [segment]
    for _ in range(2):
        env.ckj("pg", "backup")
        env.switch_and_wait()
    os.environ["COLDKEEP_NOW"] = "2099-01-01T00:00:00+00:00"
    try:
        env.ckj("pg", "expire")
    finally:
        os.environ.pop("COLDKEEP_NOW")
    assert stream_objects(env) == []
    env.ck("pg", "verify", "--all")  # the kept backup and its WAL chain
    assert env.ckj("repo", "check", "--read-data")["problems"] == []  # every archived object verifies


def test_reconnects_after_the_server_restarts(pgenv: Env, receivers: list[Receiver]) -> None:
    env, c = pgenv, pgenv.cluster
    use_spool(env)
    receiver = Receiver(env, ()).start()
    receivers.append(receiver)
    first = receiver.event("streaming")
    wait_replication(env)
    c.stop()
    gone = receiver.event("disconnected", timeout=60)
    assert gone["retry_in_s"] == 1 and gone["error"]
    wait_gone(int(first["pid"]))
    time.sleep(2.5)  # a failed attempt or two while the server is down: the backoff grows
    c.start()
    second = receiver.wait_for(
        lambda e: e.get("event") == "streaming" and e["pid"] != first["pid"], timeout=90
    )
    assert second
    wait_replication(env)
    switch_and_wait_for_segment(c, receiver)
    assert receiver.terminate() == 0
    assert not receiver.of("error"), receiver.events
    assert [e["retry_in_s"] for e in receiver.of("disconnected")][:2] == [1, 2]


def test_a_conflicting_segment_stops_the_receiver_loudly(
    pgenv: Env, receivers: list[Receiver], tmp_path: Path
) -> None:
    env, c = pgenv, pgenv.cluster
    spool = use_spool(env)
    receiver = Receiver(env, ()).start()
    receivers.append(receiver)
    receiver.event("streaming")
    c.sql("INSERT INTO marks (label) VALUES ('x')")
    lsn = str(c.sql("SELECT pg_current_wal_lsn()")[0][0])
    segment = str(c.sql(f"SELECT pg_walfile_name('{lsn}')")[0][0])
    receiver.wait_for(lambda e: e.get("event") == "partial" and e["segment"] == segment)
    # someone archived a different segment under that name (a header-valid impostor)
    impostor = bytearray((spool / f"{segment}.partial").read_bytes())
    impostor[-100] ^= 0xFF
    (tmp_path / segment).write_bytes(bytes(impostor))
    env.ck("pg", "wal-push", str(tmp_path / segment))
    c.sql("SELECT pg_switch_wal()")
    assert receiver.proc is not None
    assert receiver.proc.wait(timeout=60) == 3
    assert any("DIFFERENT content" in line for line in receiver.stderr), receiver.stderr


def test_a_partial_torn_while_pg_receivewal_preallocated_it_is_repaired(
    pgenv: Env, receivers: list[Receiver]
) -> None:
    """pg_receivewal killed while zero-filling a new segment leaves a ``.partial`` of an odd size
    that makes every later pg_receivewal start fail; the receiver removes it (zeros only, no WAL)
    and streams on from the slot."""
    env, c = pgenv, pgenv.cluster
    spool = use_spool(env)
    first = Receiver(env, ()).start()
    receivers.append(first)
    first.event("streaming")
    wait_replication(env)
    assert first.terminate() == 0
    partial = next(p for p in spool.iterdir() if p.name.endswith(".partial"))
    seg = partial.name.removesuffix(".partial")
    torn = spool / f"{seg[:16]}{int(seg[16:], 16) + 1:08X}.partial"
    torn.write_bytes(bytes(13_262_848))  # the size seen after a real kill
    shutil.chown(torn, "postgres", "postgres")

    second = Receiver(env, ()).start()
    receivers.append(second)
    removed = second.event("torn_partial_removed", timeout=60)
    assert removed["file"] == torn.name and removed["bytes"] == 13_262_848
    second.event("streaming")
    wait_replication(env)
    switch_and_wait_for_segment(c, second)
    assert second.terminate() == 0
    assert not second.of("disconnected"), second.events
