"""Repository locks against real races: a prune started while a restore or a check reads packs,
and a lock whose refresh fails under a running backup.

Readers run in a thread of this process over a backend that holds one read of pack data until
the test lets it go (a real restore or check, paused where the reproduction paused it); the
prune is the real ``coldkeep repo prune`` in another process with its own cache.
"""

from __future__ import annotations

import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.helpers import Site, one_line_error, tree_digest

from coldkeep.errors import LockHeld, LockLost, StorageError
from coldkeep.repository import locks
from coldkeep.repository.backup import Backup
from coldkeep.repository.check import check
from coldkeep.repository.format import INDEX_PREFIX, LOCK_PREFIX, PACK_PREFIX
from coldkeep.repository.locks import Lock, list_locks, locked
from coldkeep.repository.repository import Repository
from coldkeep.repository.restore import Restorer
from coldkeep.storage.base import Backend, Data
from coldkeep.storage.local import LocalBackend
from coldkeep.storage.wrappers import WrapperBackend

WAIT = 60.0  # seconds a test waits for something that happens at once, before it gives up


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


class Gate(WrapperBackend):
    """Holds the first ``op`` call on a key that ``match`` accepts until :attr:`go` is set."""

    def __init__(self, inner: Backend, op: str, match: Callable[[str], bool]) -> None:
        super().__init__(inner)
        self.op = op
        self.match = match
        self.reached = threading.Event()
        self.go = threading.Event()
        self._fired = False
        self._guard = threading.Lock()

    def _hold(self, op: str, key: str) -> None:
        if op != self.op or not self.match(key):
            return
        with self._guard:
            first, self._fired = not self._fired, True
        if first:
            self.reached.set()
            assert self.go.wait(WAIT), "the test never opened the gate"

    def get(self, key: str) -> bytes:
        self._hold("get", key)
        return self.inner.get(key)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        self._hold("get_range", key)
        return self.inner.get_range(key, offset, length)

    def put_if_absent(self, key: str, data: Data) -> bool:
        self._hold("put_if_absent", key)
        return self.inner.put_if_absent(key, data)


class InThread:
    """Runs ``fn`` in a thread; :meth:`result` joins and re-raises what it raised."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._out: list[Any] = []
        self._err: list[BaseException] = []

        def body() -> None:
            try:
                self._out.append(fn())
            except BaseException as exc:
                self._err.append(exc)

        self.thread = threading.Thread(target=body, daemon=True)
        self.thread.start()

    def result(self) -> Any:
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the operation did not finish"
        if self._err:
            raise self._err[0]
        return self._out[0]


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Site:
    """A repository whose packs are all half used by its one snapshot: prune repacks every one
    of them (and deletes the originals).  ``site.source`` is what the snapshot holds."""
    monkeypatch.setenv("COLDKEEP_CACHE_DIR", str(tmp_path / "cache-tests"))
    monkeypatch.setenv("COLDKEEP_PACK_TARGET", str(64 * 1024))
    s = Site(tmp_path / "site")
    s.ok("repo", "init")
    src = tmp_path / "src"
    src.mkdir()
    for i in range(48):
        (src / f"f{i:02d}.bin").write_bytes(os.urandom(20_000 + 97 * i))
    with open_local(s) as repo:
        first = Backup(repo).run([src], base=src).snapshot
        s.old_packs = {info.key for info in repo.backend.list(PACK_PREFIX)}  # type: ignore[attr-defined]
        for i in range(0, 48, 2):
            (src / f"f{i:02d}.bin").unlink()
        Backup(repo).run([src], base=src)  # reuses the odd files' chunks from the first packs
        repo.delete_snapshot(first.id)
    s.source = src  # type: ignore[attr-defined]
    return s


def open_local(s: Site, wrap: Callable[[Backend], Backend] | None = None) -> Repository:
    backend: Backend = LocalBackend(s.repo_dir)
    return Repository.open(wrap(backend) if wrap else backend)


@pytest.fixture
def paused_restore(site: Site, tmp_path: Path) -> Iterator[tuple[Gate, InThread, Path]]:
    """A restore of the snapshot, held at its first read of one of the packs a prune repacks."""
    gates: list[Gate] = []

    def wrap(backend: Backend) -> Backend:
        gates.append(Gate(backend, "get_range", site.old_packs.__contains__))  # type: ignore[attr-defined]
        return gates[-1]

    repo = open_local(site, wrap)
    target = tmp_path / "restored"
    run = InThread(lambda: Restorer(repo, threads=2).run(repo.find_snapshot("latest"), target))
    assert gates[0].reached.wait(WAIT), "the restore never read a pack"
    try:
        yield gates[0], run, target
    finally:
        gates[0].go.set()
        run.thread.join(WAIT)
        repo.close()


def test_prune_during_a_paused_restore_exits_4_naming_it_and_the_restore_is_exact(
    site: Site, paused_restore: tuple[Gate, InThread, Path]
) -> None:
    gate, run, target = paused_restore
    proc = site.run("repo", "prune")
    assert proc.returncode == 4, proc.stderr
    assert f"restore (shared, pid {os.getpid()}" in one_line_error(proc)
    assert {info.key for info in LocalBackend(site.repo_dir).list(PACK_PREFIX)} >= site.old_packs  # type: ignore[attr-defined]
    gate.go.set()
    result = run.result()
    assert result.errors == [] and result.files == 24
    assert tree_digest(target) == tree_digest(site.source)  # type: ignore[attr-defined]
    assert list_locks(LocalBackend(site.repo_dir)) == []
    # afterwards prune runs, and the snapshot still restores exactly from the new packs
    pruned = site.json("repo", "prune")
    assert pruned["packs_repacked"] > 0
    again = site.root / "again"
    with open_local(site) as repo:
        assert Restorer(repo).run(repo.find_snapshot("latest"), again).errors == []
    assert tree_digest(again) == tree_digest(site.source)  # type: ignore[attr-defined]


def _stderr_lines(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def test_prune_with_lock_wait_waits_for_the_restore_then_runs(
    site: Site, paused_restore: tuple[Gate, InThread, Path]
) -> None:
    gate, run, target = paused_restore
    proc = site.popen("--json", "repo", "prune", "--lock-wait", str(WAIT))
    try:
        lines = _stderr_lines(proc)
        line = ""
        while "waits up to" not in line:  # the prune says that it waits, and for whom
            line = lines.get(timeout=WAIT)
        assert "prune (exclusive) waits up to" in line and f"restore (shared, pid {os.getpid()}" in line
        assert proc.poll() is None
        gate.go.set()
        result = run.result()
        assert result.errors == [] and result.files == 24
        assert tree_digest(target) == tree_digest(site.source)  # type: ignore[attr-defined]
        assert proc.wait(WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    remaining = {info.key for info in LocalBackend(site.repo_dir).list(PACK_PREFIX)}
    assert not remaining & site.old_packs  # type: ignore[attr-defined]  # the prune did run, afterwards


def test_prune_during_a_paused_check_read_data_exits_4_and_the_check_is_clean(site: Site) -> None:
    gates: list[Gate] = []

    def wrap(backend: Backend) -> Backend:
        gates.append(Gate(backend, "get", site.old_packs.__contains__))  # type: ignore[attr-defined]
        return gates[-1]

    with open_local(site, wrap) as repo:
        run = InThread(lambda: check(repo, read_data=True))
        try:
            assert gates[0].reached.wait(WAIT), "the check never read a pack"
            proc = site.run("repo", "prune")
            assert proc.returncode == 4, proc.stderr
            assert f"check (shared, pid {os.getpid()}" in one_line_error(proc)
        finally:
            gates[0].go.set()
        result = run.result()
    assert result.ok, [p.line() for p in result.problems]
    assert result.packs_read > len(site.old_packs)  # type: ignore[attr-defined]  # + the second backup's tree pack


def test_a_restore_under_a_prune_exits_4_at_once_naming_it(site: Site, tmp_path: Path) -> None:
    """The other way round: a restore that finds the exclusive lock stops before writing."""
    with locked(LocalBackend(site.repo_dir), "prune", exclusive=True):
        proc = site.run("restore", "latest", "--target", str(tmp_path / "out"))
    assert proc.returncode == 4
    assert "prune (exclusive" in one_line_error(proc)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ------------------------------------------------------------------------------------------------
# a lock that cannot be kept


class LockPutsFail(WrapperBackend):
    """Fails every put of a lock document once :attr:`broken` is set (the refresh's put)."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.broken = threading.Event()

    def put(self, key: str, data: Data) -> None:
        if self.broken.is_set() and key.startswith(LOCK_PREFIX):
            raise StorageError(f"injected: cannot write {key}")
        self.inner.put(key, data)

    def put_if_version(self, key: str, data: Data, version: str | None) -> bool:
        if self.broken.is_set() and key.startswith(LOCK_PREFIX):
            raise StorageError(f"injected: cannot write {key}")
        return self.inner.put_if_version(key, data, version)


def _paused_backup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Repository, Gate, LockPutsFail, list[Lock], InThread]:
    """A backup under a shared lock, held at its first pack upload."""
    monkeypatch.setenv("COLDKEEP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("COLDKEEP_PACK_TARGET", str(64 * 1024))
    monkeypatch.setattr(locks, "REFRESH_S", 0.02)
    monkeypatch.setattr(locks, "RETRY_S", 0.02)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(16):
        (src / f"f{i}.bin").write_bytes(os.urandom(30_000))
    Repository.init(LocalBackend(tmp_path / "repo")).close()
    failing = LockPutsFail(LocalBackend(tmp_path / "repo"))
    gate = Gate(failing, "put_if_absent", lambda key: key.startswith(PACK_PREFIX))
    repo = Repository.open(gate)
    held: list[Lock] = []

    def backup() -> Any:
        with locked(repo.backend, "backup", exclusive=False) as lock:
            held.append(lock)
            return Backup(repo).run([src], base=src)

    run = InThread(backup)
    assert gate.reached.wait(WAIT), "the backup never wrote a pack"
    return repo, gate, failing, held, run


def test_a_backup_whose_lock_document_was_removed_stops_without_a_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, gate, _, held, run = _paused_backup(tmp_path, monkeypatch)
    with repo:
        # `repo unlock --all`, or a host that took the lock for stale, removes its document
        for info in list_locks(repo.backend):
            repo.backend.delete(LOCK_PREFIX + info.id)
        wait_for(lambda: not held[0].ok(), "the refresh to notice")
        gate.go.set()
        with pytest.raises(LockLost) as lost:
            run.result()
        assert lost.value.exit_code == 4
        assert "backup (shared)" in lost.value.message and "removed" in lost.value.message
        assert repo.snapshot_ids() == []
        assert list(repo.backend.list(INDEX_PREFIX)) == []  # nothing made its packs live either


def test_a_backup_whose_lock_refresh_keeps_failing_stops_without_a_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(locks, "LOST_AFTER_S", 0.5)
    repo, gate, failing, held, run = _paused_backup(tmp_path, monkeypatch)
    with repo:
        failing.broken.set()
        wait_for(lambda: not held[0].ok(), "the lock to count as lost")
        gate.go.set()
        with pytest.raises(LockLost) as lost:
            run.result()
        assert (
            "not refreshed for" in lost.value.message
            and "injected: cannot write locks/" in lost.value.message
        )
        assert repo.snapshot_ids() == []


def test_a_failed_refresh_is_retried_and_only_a_long_failure_loses_the_lock(tmp_path: Path) -> None:
    failing = LockPutsFail(LocalBackend(tmp_path / "repo"))
    lock = Lock(failing, "backup", exclusive=False)
    lock.acquire()
    try:
        failing.broken.set()
        assert lock.refresh() is False
        assert lock.ok()  # one failure within the grace time: the backup goes on
        lock.check()
        lock._last_ok -= locks.LOST_AFTER_S  # ... but not for a third of the stale time
        assert not lock.ok()
        with pytest.raises(LockLost, match="injected: cannot write"):
            lock.check()
        failing.broken.clear()
        assert lock.refresh() is True and lock.ok()  # stored again: nobody can have taken it
    finally:
        lock.release()


def test_reentry_and_the_registry_of_held_locks(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "repo")
    backend.ensure_root()
    with locked(backend, "pg restore", exclusive=False) as outer:
        with locked(backend, "restore", exclusive=False) as inner:
            assert inner is outer  # the same thread asks again: no second document
            assert len(list_locks(backend)) == 1

        def in_other_thread() -> str:
            with locked(backend, "restore", exclusive=False) as lock:
                return lock.id

        assert InThread(in_other_thread).result() != outer.id  # another thread: its own document
        with pytest.raises(LockHeld), locked(backend, "prune", exclusive=True):
            pass  # not covered by a shared lock: it conflicts, even in this thread
        assert locks.held_locks(backend)[0] is outer
    assert outer not in locks.held_locks(backend)
