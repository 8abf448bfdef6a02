"""``kill -9`` of ``pg receive-wal`` under a real write load: at chosen storage calls (while a
partial state is written, while superseded states are deleted) and at random instants.  Each time
its ``pg_receivewal`` dies with it (the slot is free again), a restart carries on, and at the end
the repository holds no torn or conflicting object: ``repo check --read-data`` and
``pg verify --all`` pass, every archived segment verifies, and at most the newest streamed state
of the current segment is left."""

from __future__ import annotations

import random
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.pgsite import Env, archiving_env
from tests.receivesite import Receiver, use_spool, wait_gone
from tests.walsite import wait_archived

from coldkeep.postgres.cluster import TempCluster

pytestmark = [pytest.mark.pg, pytest.mark.slow]


@pytest.fixture
def pgenv(pg_cluster: TempCluster, pg_coldkeep: str) -> Iterator[Env]:
    yield from archiving_env(pg_cluster, pg_coldkeep)


class Load:
    """Small commits every few milliseconds and a segment switch about every second."""

    def __init__(self, cluster: TempCluster) -> None:
        self.cluster = cluster
        self.done = threading.Event()
        self.rows = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        import psycopg

        try:
            with psycopg.connect(self.cluster.dsn, autocommit=True) as conn:
                last_switch = time.monotonic()
                while not self.done.is_set():
                    conn.execute(
                        "INSERT INTO marks (label) SELECT md5(g::text) FROM generate_series(1, 50) g"
                    )
                    self.rows += 50
                    if time.monotonic() - last_switch > 1.0:
                        conn.execute("SELECT pg_switch_wal()")
                        last_switch = time.monotonic()
                    time.sleep(0.01)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(timeout=30)


def stream_states(env: Env) -> list[Path]:
    root = env.base / "repo" / "named" / "wal-stream"
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".tmp-"))


def run_until_killed(receiver: Receiver) -> None:
    """Wait for the fault-injected kill (it may come before streaming starts, e.g. while the
    start-up cleanup deletes what an earlier kill left); a pg_receivewal must die with it."""
    assert receiver.proc is not None
    try:
        receiver.proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"the fault never fired; last events: {receiver.events[-8:]} stderr: {receiver.stderr[-5:]}"
        )
    assert receiver.proc.returncode == -9, (receiver.proc.returncode, receiver.stderr[-5:])
    time.sleep(0.3)  # the reader thread drains the last events
    for event in receiver.of("streaming"):
        wait_gone(int(event["pid"]))


def test_kill_receive_wal_at_storage_calls_and_random_instants(pgenv: Env, tmp_path: Path) -> None:
    env, c = pgenv, pgenv.cluster
    use_spool(env)
    env.ckj("pg", "backup", "--label", "base")
    rng = random.Random(20261126)
    kills = 0
    with Load(c) as load:
        # deterministic points: while a state is written (before/after the link) and while
        # superseded states are deleted
        for fault in ("kill:put_if_absent:3:before", "kill:put_if_absent:5:after", "kill:delete:2:before",
                      "kill:delete:4:after", "kill:put_if_absent:12:after"):  # fmt: skip
            receiver = Receiver(env, ("--interval", "0.05"), extra_env={"COLDKEEP_FAULTS": fault}).start()
            try:
                run_until_killed(receiver)
                kills += 1
            finally:
                receiver.close()
        # random instants
        for _ in range(6):
            receiver = Receiver(env, ("--interval", "0.05")).start()
            try:
                streaming = receiver.event("streaming", timeout=60)
                time.sleep(rng.uniform(0.2, 2.5))
                receiver.kill()
                kills += 1
                wait_gone(int(streaming["pid"]))
            finally:
                receiver.close()
        # a clean run to the end of the load
        final = Receiver(env, ("--interval", "0.05")).start()
        final.event("streaming", timeout=60)
        time.sleep(2)
    assert load.error is None, load.error
    assert kills == 11 and load.rows > 0
    lsn = c.sql("SELECT pg_switch_wal()")[0][0]
    last = str(c.sql(f"SELECT pg_walfile_name('{lsn}')")[0][0])
    final.event("segment", name=last, timeout=60)
    assert final.terminate() == 0
    assert not [e for e in final.events if e.get("event") == "error"], final.events
    stats = wait_archived(c, last, timeout=90)
    assert stats["failed_count"] == 0, c.log_text()[-3000:]  # the archiver never met a conflict

    # nothing torn, nothing conflicting
    check = env.ckj("repo", "check", "--read-data")
    assert check["problems"] == [], check
    env.ck("pg", "verify", "--all")
    # streamed states: none for archived segments, at most one (the newest) per segment
    archived = {p.name for p in (env.base / "repo" / "named" / "wal").rglob("*") if p.is_file()}
    states = stream_states(env)
    segments = [p.parent.name for p in states]
    assert len(segments) == len(set(segments)) <= 1, states
    assert not set(segments) & archived
    # the current segment is served from its streamed state, or is simply not there yet
    current = f"{last[:16]}{int(last[16:], 16) + 1:08X}"
    fetched = env.ck("pg", "wal-fetch", current, str(tmp_path / "current"), expect=None)
    assert fetched.returncode == (0 if segments else 1), fetched.stderr
