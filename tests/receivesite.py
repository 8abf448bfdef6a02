"""A running ``coldkeep pg receive-wal`` for tests: started with ``--json``, its event lines
collected by a thread, stopped with SIGTERM (or killed)."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.pgsite import COLDKEEP, Env


def use_spool(env: Env) -> Path:
    """Point ``[postgres].receive_dir`` at a spool under the test's base directory."""
    spool = env.base / "spool"
    with open(env.config, "a", encoding="utf-8") as fh:
        fh.write(f'receive_dir = "{spool}"\n')
    return spool


@dataclass
class Receiver:
    env: Env
    args: tuple[str, ...]
    extra_env: dict[str, str] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    proc: subprocess.Popen[str] | None = None
    _queue: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)
    stderr: list[str] = field(default_factory=list)

    def start(self) -> Receiver:
        env = dict(
            os.environ, COLDKEEP_CACHE_DIR=str(self.env.cache), COLDKEEP_EXECUTABLE=self.env.executable
        )
        env.update(self.extra_env)
        self.proc = subprocess.Popen(
            [COLDKEEP, "--config", str(self.env.config), "--json", "pg", "receive-wal", *self.args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip

        def read_out(stream: Any) -> None:
            for line in stream:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                self.events.append(event)
                self._queue.put(event)

        def read_err(stream: Any) -> None:
            for line in stream:
                self.stderr.append(line.rstrip())

        threading.Thread(target=read_out, args=(self.proc.stdout,), daemon=True).start()
        threading.Thread(target=read_err, args=(self.proc.stderr,), daemon=True).start()
        return self

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60) -> dict[str, Any]:
        for event in list(self.events):
            if predicate(event):
                return event
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                event = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self.proc is not None and self.proc.poll() is not None and self._queue.empty():
                    break
                continue
            if predicate(event):
                return event
        raise AssertionError(
            f"no such event within {timeout} s; events: {self.events[-15:]}; stderr: {self.stderr[-10:]}"
        )

    def event(self, kind: str, timeout: float = 60, **match: Any) -> dict[str, Any]:
        return self.wait_for(
            lambda e: e.get("event") == kind and all(e.get(k) == v for k, v in match.items()), timeout
        )

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == kind]

    def terminate(self, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=timeout)
        time.sleep(0.2)  # the reader threads drain the pipes
        return rc

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead too
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} still alive")
        time.sleep(0.1)


def replication(env: Env, name: str = "coldkeep") -> list[tuple[object, ...]]:
    return env.cluster.sql(
        f"SELECT state, sync_state, flush_lsn::text FROM pg_stat_replication WHERE application_name = '{name}'"
    )


def switch_and_wait_for_segment(c: Any, receiver: Receiver) -> None:
    """Switch WAL (with a transaction after it, so the switch completes) and wait until the
    receiver stored the segment that was switched away from."""
    lsn = c.sql("SELECT pg_switch_wal()")[0][0]
    name = str(c.sql(f"SELECT pg_walfile_name('{lsn}')")[0][0])
    c.sql("SELECT txid_current()")
    receiver.event("segment", name=name, timeout=60)


def wait_replication(env: Env, *, sync_state: str | None = None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    rows: list[tuple[object, ...]] = []
    while time.monotonic() < deadline:
        rows = replication(env)
        if rows and rows[0][0] == "streaming" and (sync_state is None or rows[0][1] == sync_state):
            return
        time.sleep(0.2)
    raise AssertionError(f"receiver not streaming ({sync_state or 'any'}) within {timeout} s: {rows}")
