"""``pg receive-wal``: stream WAL with ``pg_receivewal`` and a replication slot into the archive.

A long-running service.  ``pg_receivewal`` (``-n``: no loop of its own, so every disconnection
comes back here) writes into a local *spool* directory; this module watches the spool and

* pushes every completed segment (and ``.history`` file) with :func:`coldkeep.postgres.archive.wal_push`
  — the same checks as ``archive_command`` (page header, system identifier, size).  The archiver
  and the receiver both push each segment: an identical duplicate is a success on either side;
  a *different* one is an integrity error (exit 3 here, and ``archive_command`` fails loudly);
* stores the segment being written (``<segment>.partial``) in the repository whenever it grows,
  at most every :attr:`ReceiveOptions.min_interval_s` (longer when a store takes long), and always
  when ``pg_receivewal`` exits (connection lost, server gone, stop requested).

The stored states of the partial segment and how ``wal-fetch`` serves them:
:mod:`coldkeep.postgres.walstream`.

Exit codes of the command (:mod:`coldkeep.cli.pg_receive_cmd`): 0 stopped by SIGTERM/SIGINT (or
``--once`` and ``pg_receivewal`` ended normally), 1 failure (``--once`` and ``pg_receivewal``
failed; no lineage yet), 2 usage or configuration, 3 integrity (a spooled segment differs from the
archived one or is not what its name says).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import logging
import os
import pwd
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coldkeep.config import Config
from coldkeep.errors import (
    ColdkeepError,
    IntegrityError,
    PostgresError,
    UsageError,
)
from coldkeep.postgres import archive, children, wal
from coldkeep.postgres.cluster import find_bin_dir, running_as_root
from coldkeep.postgres.walstream import cleanup, forget_segment, store_partial
from coldkeep.repository.repository import Repository

log = logging.getLogger(__name__)

DEFAULT_SLOT = "coldkeep"
SYSTEM_SPOOL_ROOT = Path("/var/lib/coldkeep/receive-wal")


class ReceiverFailed(PostgresError):
    template = "{detail}"
    hint = "check the connection settings ([postgres].receive_dsn / dsn), max_wal_senders and pg_hba.conf"


class SpoolUnusable(UsageError):
    template = "cannot use the spool directory {detail}"
    hint = "set [postgres].receive_dir to a directory the PostgreSQL OS user can write"


# ------------------------------------------------------------------------------------------------
# the service


@dataclass
class ReceiveOptions:
    synchronous: bool = False
    slot: str = DEFAULT_SLOT
    spool: Path | None = None  # None: [postgres].receive_dir or the default
    min_interval_s: float = 0.2  # the least time between two stores of the partial segment
    poll_s: float = 0.05
    keep_segments: int = 2  # completed (archived) segments left in the spool
    once: bool = False  # run pg_receivewal once, no reconnecting
    backoff_max_s: float = 30.0


def default_spool(config: Config, repo: Repository) -> Path:
    """``[postgres].receive_dir``; else ``/var/lib/coldkeep/receive-wal/<repository id>`` when
    running as root (pg_receivewal then runs as the PostgreSQL OS user, which cannot reach
    root's home), else ``<cache dir>/<repository id>/receive-wal``."""
    if config.postgres.receive_dir:
        return Path(config.postgres.receive_dir)
    if running_as_root():
        return SYSTEM_SPOOL_ROOT / repo.config.id
    from coldkeep.repository.index import cache_root

    return cache_root() / repo.config.id / "receive-wal"


def _parent_death_signal() -> Callable[[], None]:
    """A ``preexec_fn`` (run in the child after the user switch, which would reset it): die with
    SIGTERM when coldkeep dies, so that a ``kill -9`` of the service does not leave a receiver
    holding the slot.  libc is loaded here, in the parent: the child (forked while reader threads
    run) only makes the one system call."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the call
            os._exit(1)

    return preexec


@dataclass
class _Partial:
    signature: tuple[int, int, int] | None = None  # (inode, size, mtime_ns) of the last stored read
    last_end: float = 0.0  # monotonic time the last store finished
    last_cost: float = 0.0


@dataclass
class Receiver:
    config: Config
    repo: Repository
    options: ReceiveOptions
    emit: Callable[[dict[str, Any]], None] = lambda event: None
    _stop: threading.Event = field(default_factory=threading.Event)
    _pushed: set[str] = field(default_factory=set)
    _partials: dict[str, _Partial] = field(default_factory=dict)
    _errors: dict[str, str] = field(default_factory=dict)
    _stderr: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=20))
    proc: subprocess.Popen[bytes] | None = None
    stats: dict[str, int] = field(default_factory=lambda: {"segments": 0, "partials": 0, "restarts": 0})

    def __post_init__(self) -> None:
        self.pg = self.config.postgres
        self.spool = self.options.spool or default_spool(self.config, self.repo)
        self.lineage = archive.find_lineage(self.repo)
        self.prefix = str(self.lineage["prefix"])
        self.bin_dir = find_bin_dir(self.pg.bin_dir)
        self.program = self.bin_dir / "pg_receivewal"
        if not self.program.is_file():
            raise ReceiverFailed(f"{self.program}: no such program (PostgreSQL client binaries)")

    # -- control -------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask :meth:`run` to stop (signal-safe): pg_receivewal is interrupted, the partial
        segment stored a last time, and :meth:`run` returns 0."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- helpers -------------------------------------------------------------------------------

    def _user(self) -> pwd.struct_passwd | None:
        """The account pg_receivewal runs as when we are root (``None``: as ourselves)."""
        if running_as_root() and self.pg.os_user != "root":
            return pwd.getpwnam(self.pg.os_user)
        return None

    def prepare_spool(self) -> None:
        try:
            self.spool.mkdir(parents=True, exist_ok=True, mode=0o700)
            user = self._user()
            if user is not None:
                os.chown(self.spool, user.pw_uid, user.pw_gid)
            os.chmod(self.spool, 0o700)
        except OSError as exc:
            raise SpoolUnusable(f"{self.spool}: {exc.strerror or exc}") from None

    def repair_torn_partials(self) -> None:
        """Make ``.partial`` files that a kill left half pre-allocated acceptable to pg_receivewal.

        pg_receivewal zero-fills a new segment file to its full size *before* writing WAL into
        it; killed during that fill, it leaves a file of another size, and every later start
        fails ("has N bytes, should be 0 or 16777216").  Such a file holds zeros only (no WAL was
        written yet): it is removed, and streaming resumes from the slot.  A file of an odd size
        that does hold WAL (never seen; not pg_receivewal's doing) is padded with zeros to the
        segment size its header states, which is what pg_receivewal itself would have written."""
        try:
            names = [n for n in os.listdir(self.spool) if n.endswith(".partial")]
        except OSError:
            return
        for name in names:
            path = self.spool / name
            try:
                size = path.stat().st_size
                with open(path, "rb") as fh:
                    head = fh.read(wal.LONG_HEADER_SIZE)
                    if not any(head):
                        if size in (0, wal.DEFAULT_SEG_SIZE):
                            continue
                        zeros = bytes(1 << 20)
                        while block := fh.read(1 << 20):
                            if block != zeros[: len(block)]:
                                break
                        else:
                            path.unlink()
                            self.emit({"event": "torn_partial_removed", "file": name, "bytes": size})
                        continue
                seg_size = wal.read_header(head, name).seg_size
                if size < seg_size:
                    with open(path, "r+b") as fh:
                        fh.truncate(seg_size)
                        os.fsync(fh.fileno())
                    self.emit({"event": "torn_partial_padded", "file": name, "bytes": size})
            except (OSError, ColdkeepError) as exc:
                self._note_error(str(path), exc)

    def conninfo(self) -> str:
        from psycopg.conninfo import make_conninfo

        dsn = self.pg.receive_dsn or self.pg.dsn
        try:
            return make_conninfo(dsn, application_name=self.options.slot)
        except Exception as exc:
            raise UsageError(f"postgres.receive_dsn: {exc}") from None

    def _popen_kwargs(self) -> dict[str, Any]:
        """pg_receivewal as the PostgreSQL OS user (when root), in a session of its own, with
        libpq's variables and nothing else of coldkeep's environment."""
        kwargs = children.spawn_args(os_user=self.pg.os_user, connect=True, passfile=self.pg.passfile)
        kwargs["start_new_session"] = True
        return kwargs

    def create_slot(self) -> None:
        argv = [str(self.program), "--create-slot", "--if-not-exists", "-S", self.options.slot,
                "-d", self.conninfo()]  # fmt: skip
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, **self._popen_kwargs())
        except (OSError, subprocess.SubprocessError) as exc:
            raise ReceiverFailed(f"pg_receivewal --create-slot: {exc}") from None
        if proc.returncode != 0:
            tail = " / ".join(proc.stderr.strip().splitlines()[-3:])
            raise ReceiverFailed(f"cannot create the replication slot {self.options.slot!r}: {tail}")

    def _start(self) -> subprocess.Popen[bytes]:
        argv = [str(self.program), "-D", str(self.spool), "-S", self.options.slot, "-d", self.conninfo(),
                "-n", "--status-interval", "1"]  # fmt: skip
        if self.options.synchronous:
            argv.append("--synchronous")
        if log.isEnabledFor(logging.DEBUG):
            argv.append("-v")
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, preexec_fn=_parent_death_signal(),
                                **self._popen_kwargs())  # fmt: skip
        self._stderr.clear()

        def drain(stream: Any) -> None:
            for raw in stream:
                line = raw.decode(errors="replace").rstrip()
                if line:
                    self._stderr.append(line)
                    self.emit({"event": "pg_receivewal", "line": line})

        threading.Thread(target=drain, args=(proc.stderr,), daemon=True).start()
        return proc

    def _interrupt(self, proc: subprocess.Popen[bytes]) -> int:
        """SIGINT (pg_receivewal 15 exits cleanly on it, flushing its file), SIGKILL after 30 s."""
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def _note_error(self, what: str, exc: BaseException) -> None:
        text = exc.message if isinstance(exc, ColdkeepError) else f"{type(exc).__name__}: {exc}"
        if self._errors.get(what) != text:  # once per distinct problem, not every 50 ms
            self._errors[what] = text
            self.emit({"event": "error", "file": what, "error": text, "retrying": True})

    # -- the spool -----------------------------------------------------------------------------

    def sync_spool(self, *, final: bool = False) -> None:
        """Push completed files and store the partial segment(s) that changed.

        Integrity errors (a different segment is archived, a file that is not what its name
        says) propagate; storage and file errors are reported and retried on the next call (the
        file stays in the spool)."""
        try:
            names = sorted(os.listdir(self.spool))
        except OSError as exc:
            self._note_error(str(self.spool), exc)
            return
        done: list[str] = []
        for name in names:
            try:
                parsed = wal.parse_name(name)
            except wal.InvalidWalName:
                continue  # pg_receivewal's temp files, anything else
            path = self.spool / name
            try:
                if parsed.kind in ("segment", "history"):
                    if name not in self._pushed:
                        self._push_complete(parsed, path)
                    if parsed.kind == "segment":
                        done.append(name)
                elif parsed.kind == "partial":
                    self._store_partial(parsed, path, final=final)
            except (IntegrityError, UsageError):
                raise
            except FileNotFoundError:
                continue  # renamed (partial -> complete) under our feet: next round
            except (ColdkeepError, OSError) as exc:
                self._note_error(name, exc)
            else:
                self._errors.pop(name, None)
        for name in done[: max(0, len(done) - self.options.keep_segments)]:
            with contextlib.suppress(OSError):
                os.unlink(self.spool / name)
            self._pushed.discard(name)

    def _push_complete(self, parsed: wal.WalName, path: Path) -> None:
        started = time.monotonic()
        result = archive.wal_push(self.repo, path)
        self._pushed.add(parsed.name)
        removed = forget_segment(self.repo, self.prefix, parsed.name) if parsed.kind == "segment" else 0
        self._partials.pop(parsed.name, None)
        self.stats["segments"] += 1
        self.emit({"event": "segment", "name": parsed.name, "key": result.key, "stored": result.stored,
                   "bytes": result.bytes, "partials_removed": removed,
                   "duration_s": round(time.monotonic() - started, 4)})  # fmt: skip

    def _store_partial(self, parsed: wal.WalName, path: Path, *, final: bool) -> None:
        segment = parsed.segment
        state = self._partials.setdefault(segment, _Partial())
        st = os.stat(path)
        signature = (st.st_ino, st.st_size, st.st_mtime_ns)
        if signature == state.signature:
            return
        now = time.monotonic()
        wait = max(self.options.min_interval_s, 3 * state.last_cost)
        if not final and now - state.last_end < wait:
            return  # debounced: stored again after the interval
        with open(path, "rb") as fh:
            data = fh.read()
            after = os.fstat(fh.fileno())
        if (after.st_ino, after.st_size, after.st_mtime_ns) != signature and not final:
            return  # written while we read: take it next round
        started = time.monotonic()
        stored = store_partial(self.repo, segment, data, self.lineage)
        state.signature = signature
        state.last_end = time.monotonic()
        state.last_cost = state.last_end - started
        if stored is None:
            return
        info, new = stored
        if new:
            self.stats["partials"] += 1
            self.emit({"event": "partial", "segment": segment, "end": info.end, "key": info.key,
                       "duration_s": round(state.last_cost, 4)})  # fmt: skip

    # -- main loop ------------------------------------------------------------------------------

    def run(self) -> int:
        """Stream until :meth:`stop` (returns 0), or with ``once`` until pg_receivewal ends
        (0 if it ended normally, 1 otherwise).  On an error (integrity: exit 3) pg_receivewal
        is interrupted before the error propagates."""
        try:
            return self._run()
        finally:
            proc = self.proc
            if proc is not None and proc.poll() is None:
                self._interrupt(proc)
            self.proc = None

    def _run(self) -> int:
        self.prepare_spool()
        removed = cleanup(self.repo, self.prefix)
        self.emit({"event": "start", "spool": str(self.spool), "slot": self.options.slot,
                   "synchronous": self.options.synchronous, "lineage": self.prefix,
                   "stale_partials_removed": removed})  # fmt: skip
        self.sync_spool(final=True)  # whatever a previous run left behind
        backoff = 1.0
        status = 0
        while not self.stopping:
            try:
                self.repair_torn_partials()
                self.create_slot()
                self.proc = proc = self._start()
            except ColdkeepError as exc:
                self.emit({"event": "disconnected", "error": exc.message, "retry_in_s": None if self.options.once else backoff})  # fmt: skip
                if self.options.once:
                    return 1
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.options.backoff_max_s)
                continue
            started = time.monotonic()
            self.emit({"event": "streaming", "pid": proc.pid})
            while proc.poll() is None and not self.stopping:
                self.sync_spool()
                self._stop.wait(self.options.poll_s)
            rc = self._interrupt(proc) if proc.poll() is None else proc.returncode
            self.proc = None
            time.sleep(0.05)  # let the stderr reader catch the last lines
            self.sync_spool(final=True)
            if self.stopping:
                break
            self.stats["restarts"] += 1
            if time.monotonic() - started > 60:
                backoff = 1.0
            detail = " / ".join(list(self._stderr)[-3:]) or f"exit code {rc}"
            self.emit({"event": "disconnected", "returncode": rc, "error": detail,
                       "retry_in_s": None if self.options.once else backoff})  # fmt: skip
            if self.options.once:
                status = 0 if rc == 0 else 1
                break
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self.options.backoff_max_s)
        self.sync_spool(final=True)
        self.emit({"event": "stopped", **self.stats})
        return status
