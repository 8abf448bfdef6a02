"""The storage interface: bytes at keys, nothing else.

Modelled on restic's ``internal/backend/backend.go``: a small interface whose contract is stated
here and tested once for every backend (``tests/contract``).

Contract
--------
* Keys are relative, ``/``-separated, made of ``[A-Za-z0-9._-]`` parts; no empty part, no ``.``
  or ``..`` part, at most 1024 characters (:func:`validate_key`).
* ``put(key, data)`` stores the bytes durably and atomically: after it returns, the object is
  complete and survives a crash; a reader never sees a partial object.  Overwriting is allowed
  (used for mutable documents such as locks); ``put_if_absent`` never overwrites and returns
  ``False`` when the key already exists (whatever its content).
* ``get`` / ``get_range`` / ``open`` raise :class:`~coldkeep.errors.ObjectNotFound` for a missing
  key; ``get_range`` returns fewer bytes only at the end of the object.
* ``stat`` returns size and modification time; ``list(prefix)`` yields every object whose key
  starts with ``prefix`` (in no particular order); ``delete`` is idempotent.
* ``get_version`` returns an object and a *version* token that changes whenever the object is
  replaced by different bytes; ``put_if_version(key, data, version)`` stores only if the object
  is still at ``version`` (``None``: only if absent) and returns ``False`` otherwise: a
  compare-and-swap for the few mutable records (``Repository.update_state``).  It is atomic when
  ``capabilities.atomic_update`` says so; the default implementation (read, compare, put) is not.
* Errors other than "not found" are :class:`~coldkeep.errors.StorageError` subclasses;
  ``transient`` on the exception marks those worth retrying.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from coldkeep.errors import InvalidKey

_PART = re.compile(r"^[A-Za-z0-9._-]+$")
MAX_KEY = 1024
#: what ``put`` accepts: any contiguous byte buffer (a sealed pack is a view of a reused buffer,
#: so a backend must not keep a reference to ``data`` once ``put`` returned)
Data = bytes | bytearray | memoryview


def validate_key(key: str) -> str:
    if not key or len(key) > MAX_KEY:
        raise InvalidKey(repr(key))
    for part in key.split("/"):
        if part in ("", ".", "..") or not _PART.match(part):
            raise InvalidKey(repr(key))
    return key


def validate_prefix(prefix: str) -> str:
    """A list prefix: empty, or a key prefix (may end with ``/``)."""
    if prefix:
        validate_key(prefix.rstrip("/"))
    return prefix


#: the name of the thread that refreshes a held lock (``repository/locks.py``): its calls depend on
#: the clock, so the fault plan neither counts nor faults them (a kill test's "Nth call" must be
#: the same call in every run, however long the run takes)
UNCOUNTED_THREAD = "coldkeep-lock"


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    mtime: float  # seconds since the epoch


@dataclass(frozen=True)
class Capabilities:
    #: ``put_if_absent`` is atomic on the server (no race between two writers)
    atomic_create: bool
    #: the backend is on this host's filesystem (durability by fsync)
    local: bool
    #: ``get_range`` costs about the bytes asked for (not the whole object)
    ranged_reads: bool = True
    #: ``put_if_version`` is atomic (a compare-and-swap no second writer can slip into)
    atomic_update: bool = False


class Backend(ABC):
    """Bytes at keys.  Implementations must be safe to call from several threads."""

    capabilities: Capabilities

    @abstractmethod
    def describe(self) -> str:
        """Where this backend stores things, for messages (never includes secrets)."""

    @abstractmethod
    def put(self, key: str, data: Data) -> None: ...

    @abstractmethod
    def put_if_absent(self, key: str, data: Data) -> bool:
        """Store unless the key exists; ``True`` if this call created it."""

    @abstractmethod
    def get(self, key: str) -> bytes: ...

    @abstractmethod
    def get_range(self, key: str, offset: int, length: int) -> bytes: ...

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """A readable binary stream of the whole object (caller closes it)."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo: ...

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...

    def get_version(self, key: str) -> tuple[bytes, str]:
        """The object and its version token (:class:`ObjectNotFound` when missing).

        Default: the SHA-256 of the content, so two stored versions with the same bytes have one
        token (harmless for a compare-and-swap: the caller's change applies to those bytes)."""
        data = self.get(key)
        return data, hashlib.sha256(data).hexdigest()

    def put_if_version(self, key: str, data: Data, version: str | None) -> bool:
        """Store ``data`` at ``key`` only if the object is still at ``version`` (from
        :meth:`get_version`; ``None``: only if there is no object); ``True`` if stored.

        Default: read, compare, put — *not* atomic between two writers; backends whose
        ``capabilities.atomic_update`` is true override it with an atomic one."""
        from coldkeep.errors import ObjectNotFound

        if version is None:
            return self.put_if_absent(key, data)
        try:
            _, current = self.get_version(key)
        except ObjectNotFound:
            return False
        if current != version:
            return False
        self.put(key, data)
        return True

    def exists(self, key: str) -> bool:
        from coldkeep.errors import ObjectNotFound

        try:
            self.stat(key)
        except ObjectNotFound:
            return False
        return True

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the backend is not used afterwards."""
