"""Backends that wrap another backend: retries and fault injection.

Both keep the :class:`~coldkeep.storage.base.Backend` contract, so they stack in any order;
:func:`coldkeep.storage.open_backend` builds ``RetryBackend(FaultBackend(real))`` (the fault layer
only when the test hook ``COLDKEEP_FAULTS`` is set, which needs ``COLDKEEP_TESTING=1``: see
:mod:`coldkeep.testhooks`), so injected transient failures exercise the retry path.

Fault plans
-----------
A plan is a comma-separated list of ``ACTION:OP:N[:OPTION]``:

* ``ACTION``: ``fail`` (raise :class:`~coldkeep.errors.StorageError`; option ``transient`` marks it
  retryable), ``flip`` (flip one byte of the data put or got), ``truncate`` (store / return only
  the first half), ``full`` (raise :class:`~coldkeep.errors.StorageFull`), ``kill`` (SIGKILL this
  process; option ``before`` (default) or ``after`` the real call, also when that call raised
  or a listing was abandoned early, so every counted call can be a kill point).
* ``OP``: a method name (``put``, ``put_if_absent``, ``get``, ``get_range``, ``open``, ``stat``,
  ``list``, ``delete``), or ``write`` (both puts), ``read`` (get, get_range, open) or ``any``.
* ``N``: the fault fires on the N-th call (1-based) of that operation; ``N+`` fires on the N-th
  and every later call.

Examples: ``kill:put:7``, ``fail:any:3:transient``, ``flip:get:2,full:put:5``.  The word
``count`` alone is an empty plan (only counts calls).  Calls are counted per process when the plan
comes from the environment (:meth:`FaultPlan.from_env`); with ``COLDKEEP_FAULTS_COUNTS=FILE`` the
counts are written to FILE as JSON when the process exits normally, so a test can learn how many
storage calls a command makes and pick kill points.
"""

from __future__ import annotations

import atexit
import io
import json
import logging
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO, ClassVar, TypeVar

from coldkeep import testhooks
from coldkeep.errors import ObjectNotFound, StorageError, StorageFull
from coldkeep.storage.base import UNCOUNTED_THREAD, Backend, Capabilities, Data, ObjectInfo

log = logging.getLogger("coldkeep.storage")

E = TypeVar("E", bound=BaseException)
T = TypeVar("T")

FAULTS_ENV = "COLDKEEP_FAULTS"
COUNTS_ENV = "COLDKEEP_FAULTS_COUNTS"


def mark_transient(exc: E, transient: bool = True) -> E:
    """Set ``exc.transient`` (worth retrying) and return ``exc``."""
    setattr(exc, "transient", transient)  # noqa: B010 - not a declared attribute
    return exc


def is_transient(exc: BaseException) -> bool:
    """Whether a retry may succeed: ``transient`` is true and it is not a "not found"."""
    return getattr(exc, "transient", False) is True and not isinstance(exc, ObjectNotFound)


class WrapperBackend(Backend):
    """Delegates everything to ``inner``; subclasses override what they change."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner

    @property
    def capabilities(self) -> Capabilities:
        return self.inner.capabilities

    @capabilities.setter
    def capabilities(self, value: Capabilities) -> None:
        self.inner.capabilities = value

    def describe(self) -> str:
        return self.inner.describe()

    def close(self) -> None:
        self.inner.close()

    def put(self, key: str, data: Data) -> None:
        self.inner.put(key, data)

    def put_if_absent(self, key: str, data: Data) -> bool:
        return self.inner.put_if_absent(key, data)

    def get(self, key: str) -> bytes:
        return self.inner.get(key)

    def get_version(self, key: str) -> tuple[bytes, str]:
        return self.inner.get_version(key)

    def put_if_version(self, key: str, data: Data, version: str | None) -> bool:
        return self.inner.put_if_version(key, data, version)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        return self.inner.get_range(key, offset, length)

    def open(self, key: str) -> BinaryIO:
        return self.inner.open(key)

    def stat(self, key: str) -> ObjectInfo:
        return self.inner.stat(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)


def unwrap(backend: Backend) -> Backend:
    """The innermost backend below any wrappers (e.g. to reach ``LocalBackend.remove_stale_temp``)."""
    while isinstance(backend, WrapperBackend):
        backend = backend.inner
    return backend


# ------------------------------------------------------------------------------------------------
# retries


class RetryBackend(WrapperBackend):
    """Retries calls that fail with a transient error (``exc.transient is True``).

    ``attempts`` is the total number of tries; the delay before try ``n`` is
    ``min(max_delay, base_delay * 2**(n-1))`` with jitter (between half and all of it).
    Permanent errors and :class:`~coldkeep.errors.ObjectNotFound` propagate at once.

    A retried ``put_if_absent`` may return ``False`` although an earlier, seemingly failed try of
    the same call created the object; callers that care compare the stored content.  ``list``
    restarts after a transient failure and skips keys it already yielded.  ``open`` retries
    opening the stream only; a failure while reading it reaches the caller.  Likewise a retried
    ``put_if_version`` may return ``False`` because its own earlier try changed the version; a
    compare-and-swap loop then re-reads and applies its change again to its own result.
    """

    def __init__(
        self,
        inner: Backend,
        attempts: int = 5,
        base_delay: float = 0.2,
        max_delay: float = 5.0,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(inner)
        if attempts < 1:
            raise ValueError("attempts must be >= 1")
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._sleep = sleep

    def _delay(self, retry: int) -> float:
        cap = min(self.max_delay, self.base_delay * (2 ** (retry - 1)))
        return float(cap / 2 + random.uniform(0, cap / 2))

    def _wait_or_raise(self, exc: BaseException, what: str, tried: int) -> None:
        if not is_transient(exc) or tried >= self.attempts:
            raise exc
        delay = self._delay(tried)
        log.info(  # not a warning: retrying is the normal answer; a final failure is the error
            "%s on %s failed (try %d of %d), retrying in %.1fs: %s",
            what,
            self.inner.describe(),
            tried,
            self.attempts,
            delay,
            exc,
        )
        self._sleep(delay)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        tried = 0
        while True:
            tried += 1
            try:
                return fn()
            except Exception as exc:
                self._wait_or_raise(exc, what, tried)

    def put(self, key: str, data: Data) -> None:
        self._call("put", lambda: self.inner.put(key, data))

    def put_if_absent(self, key: str, data: Data) -> bool:
        return self._call("put_if_absent", lambda: self.inner.put_if_absent(key, data))

    def get(self, key: str) -> bytes:
        return self._call("get", lambda: self.inner.get(key))

    def get_version(self, key: str) -> tuple[bytes, str]:
        return self._call("get", lambda: self.inner.get_version(key))

    def put_if_version(self, key: str, data: Data, version: str | None) -> bool:
        return self._call("put_if_version", lambda: self.inner.put_if_version(key, data, version))

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        return self._call("get_range", lambda: self.inner.get_range(key, offset, length))

    def open(self, key: str) -> BinaryIO:
        return self._call("open", lambda: self.inner.open(key))

    def stat(self, key: str) -> ObjectInfo:
        return self._call("stat", lambda: self.inner.stat(key))

    def delete(self, key: str) -> None:
        self._call("delete", lambda: self.inner.delete(key))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        seen: set[str] = set()
        tried = 0
        while True:
            tried += 1
            try:
                for info in self.inner.list(prefix):
                    if info.key not in seen:
                        seen.add(info.key)
                        yield info
                return
            except Exception as exc:
                self._wait_or_raise(exc, "list", tried)


# ------------------------------------------------------------------------------------------------
# fault injection

OPS = ("put", "put_if_absent", "get", "get_range", "open", "stat", "list", "delete")
GROUPS: Mapping[str, frozenset[str]] = {
    **{op: frozenset({op}) for op in OPS},
    "write": frozenset({"put", "put_if_absent"}),
    "read": frozenset({"get", "get_range", "open"}),
    "any": frozenset(OPS),
}
ACTIONS = ("fail", "flip", "truncate", "full", "kill")
_OPTIONS: Mapping[str, tuple[str, ...]] = {
    "fail": ("", "transient", "permanent"),
    "kill": ("", "before", "after"),
}
_DATA_OPS = frozenset({"put", "put_if_absent", "get", "get_range", "open"})


@dataclass(frozen=True)
class Fault:
    action: str
    op: str  # a key of GROUPS
    n: int
    and_later: bool = False
    option: str = ""

    def matches(self, count: int) -> bool:
        return count >= self.n if self.and_later else count == self.n

    def __str__(self) -> str:
        text = f"{self.action}:{self.op}:{self.n}{'+' if self.and_later else ''}"
        return f"{text}:{self.option}" if self.option else text


class FaultPlan:
    """Faults plus the call counters they are matched against (thread-safe)."""

    def __init__(self, faults: list[Fault] | tuple[Fault, ...] = ()) -> None:
        self.faults = tuple(faults)
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    @classmethod
    def parse(cls, text: str) -> FaultPlan:
        """Parse ``"kill:put:7,fail:any:3:transient"``; ``ValueError`` names the bad item."""
        faults: list[Fault] = []
        for raw in text.split(","):
            item = raw.strip()
            if not item or item == "count":
                continue
            parts = item.split(":")
            if len(parts) not in (3, 4):
                raise ValueError(f"fault {item!r}: expected ACTION:OP:N[:OPTION]")
            action, op, number = parts[0], parts[1], parts[2]
            option = parts[3] if len(parts) == 4 else ""
            if action not in ACTIONS:
                raise ValueError(f"fault {item!r}: action must be one of {', '.join(ACTIONS)}")
            if op not in GROUPS:
                raise ValueError(f"fault {item!r}: operation must be one of {', '.join(GROUPS)}")
            if option not in _OPTIONS.get(action, ("",)):
                raise ValueError(f"fault {item!r}: option {option!r} is not valid for {action}")
            if action in ("flip", "truncate") and not GROUPS[op] & _DATA_OPS:
                raise ValueError(f"fault {item!r}: {action} needs an operation that moves data")
            and_later = number.endswith("+")
            digits = number[:-1] if and_later else number
            if not digits.isdigit() or int(digits) < 1:
                raise ValueError(f"fault {item!r}: N must be a whole number >= 1 (optionally N+)")
            faults.append(Fault(action, op, int(digits), and_later, option))
        return cls(faults)

    _env_plans: ClassVar[dict[str, FaultPlan]] = {}
    _env_lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> FaultPlan | None:
        """The process-wide plan from the test hook ``COLDKEEP_FAULTS`` (``None`` when unset, empty,
        or testing is not switched on in ``environ``: see :mod:`coldkeep.testhooks`).

        Every backend opened in one process shares it, so ``kill:put:7`` means the seventh put
        this process makes.  ``COLDKEEP_FAULTS_COUNTS`` names a file for the call counts.
        """
        text = (testhooks.value(FAULTS_ENV, environ) or "").strip()
        if not text:
            return None
        with cls._env_lock:
            plan = cls._env_plans.get(text)
            if plan is None:
                plan = cls._env_plans[text] = cls.parse(text)
                counts_file = testhooks.value(COUNTS_ENV, environ)
                if counts_file:
                    atexit.register(plan.write_counts, counts_file)
            return plan

    def count(self, op: str) -> list[Fault]:
        """Record one call of ``op``; return the faults that fire on it."""
        with self._lock:
            self.counts[op] += 1
            self.counts["any"] += 1
            firing = []
            for fault in self.faults:
                group = GROUPS[fault.op]
                if op not in group:
                    continue
                n = self.counts["any"] if fault.op == "any" else sum(self.counts[o] for o in group)
                if fault.matches(n):
                    firing.append(fault)
            return firing

    def write_counts(self, path: str) -> None:
        with self._lock:
            data = dict(self.counts)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, sort_keys=True)

    def __str__(self) -> str:
        return ",".join(str(f) for f in self.faults) or "count"


def _flip(data: bytes) -> bytes:
    if not data:
        return data
    i = len(data) // 2
    return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]


def _truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


class FaultBackend(WrapperBackend):
    """Injects the faults of ``plan`` (a :class:`FaultPlan` or its text) into calls of ``inner``.

    For tests only.  ``calls`` counts the calls of each operation (and ``"any"``).
    """

    def __init__(self, inner: Backend, plan: FaultPlan | str) -> None:
        super().__init__(inner)
        self.plan = FaultPlan.parse(plan) if isinstance(plan, str) else plan

    @classmethod
    def from_env(cls, inner: Backend, environ: Mapping[str, str] | None = None) -> Backend:
        """``inner`` wrapped with the plan from ``COLDKEEP_FAULTS``, or ``inner`` if unset."""
        plan = FaultPlan.from_env(environ)
        return inner if plan is None else cls(inner, plan)

    @property
    def calls(self) -> Counter[str]:
        return self.plan.counts

    def _before(self, op: str) -> list[Fault]:
        if threading.current_thread().name == UNCOUNTED_THREAD:
            return []  # time-driven calls: counting them made "the Nth call" vary from run to run
        faults = self.plan.count(op)
        for fault in faults:
            if fault.action == "kill" and fault.option != "after":
                _kill(op)
            elif fault.action == "full":
                raise StorageFull(f"{self.describe()} (injected: {fault})")
            elif fault.action == "fail":
                exc = StorageError(f"injected failure of {op} on {self.describe()} ({fault})")
                raise mark_transient(exc, fault.option == "transient")
        return faults

    @staticmethod
    def _after(op: str, faults: list[Fault]) -> None:
        if any(f.action == "kill" and f.option == "after" for f in faults):
            _kill(op)

    @staticmethod
    def _mangle(data: Data, faults: list[Fault]) -> bytes:
        data = bytes(data)
        for fault in faults:
            if fault.action == "flip":
                data = _flip(data)
            elif fault.action == "truncate":
                data = _truncate(data)
        return data

    def put(self, key: str, data: Data) -> None:
        faults = self._before("put")
        try:
            self.inner.put(key, self._mangle(data, faults))
        finally:
            self._after("put", faults)

    def put_if_absent(self, key: str, data: Data) -> bool:
        faults = self._before("put_if_absent")
        try:
            return self.inner.put_if_absent(key, self._mangle(data, faults))
        finally:
            self._after("put_if_absent", faults)

    def get(self, key: str) -> bytes:
        faults = self._before("get")
        try:
            return self._mangle(self.inner.get(key), faults)
        finally:
            self._after("get", faults)

    def get_version(self, key: str) -> tuple[bytes, str]:
        """Counted (and faulted) as a ``get``."""
        faults = self._before("get")
        try:
            data, version = self.inner.get_version(key)
            return self._mangle(data, faults), version
        finally:
            self._after("get", faults)

    def put_if_version(self, key: str, data: Data, version: str | None) -> bool:
        """Counted (and faulted) as a ``put``."""
        faults = self._before("put")
        try:
            return self.inner.put_if_version(key, self._mangle(data, faults), version)
        finally:
            self._after("put", faults)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        faults = self._before("get_range")
        try:
            return self._mangle(self.inner.get_range(key, offset, length), faults)
        finally:
            self._after("get_range", faults)

    def open(self, key: str) -> BinaryIO:
        faults = self._before("open")
        try:
            stream = self.inner.open(key)
            if any(f.action in ("flip", "truncate") for f in faults):
                with stream:
                    stream = io.BytesIO(self._mangle(stream.read(), faults))
            return stream
        finally:
            self._after("open", faults)

    def stat(self, key: str) -> ObjectInfo:
        faults = self._before("stat")
        try:
            return self.inner.stat(key)
        finally:
            self._after("stat", faults)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        faults = self._before("list")
        try:
            yield from self.inner.list(prefix)
        finally:  # also when the caller stops early or the listing fails
            self._after("list", faults)

    def delete(self, key: str) -> None:
        faults = self._before("delete")
        try:
            self.inner.delete(key)
        finally:
            self._after("delete", faults)


def _kill(op: str) -> None:
    log.warning("fault injection: killing process %d at %s", os.getpid(), op)
    logging.shutdown()
    os.kill(os.getpid(), signal.SIGKILL)
