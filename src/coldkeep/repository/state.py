"""Small mutable records: ``state/<name>``.

The only documents that change in place (besides locks): a service's catalog of statuses, the WAL
lineages.  Every change goes through :func:`update_state`, a compare-and-swap, so two writers
never lose one another's update; :func:`put_state` overwrites blindly and is for a record's first
write in tests and tools only.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from coldkeep.errors import ObjectNotFound, StateConflict
from coldkeep.repository.format import STATE_PREFIX, decode_document, encode_document
from coldkeep.storage.base import validate_key

if TYPE_CHECKING:
    from coldkeep.repository.repository import Repository

#: tries of :func:`update_state` before :class:`StateConflict`
STATE_ATTEMPTS = 50


def state_key(name: str) -> str:
    return STATE_PREFIX + validate_key(name)


def put_state(repo: Repository, name: str, doc: dict[str, Any]) -> None:
    """Overwrite ``state/<name>`` (no compare-and-swap: use :func:`update_state`)."""
    key = state_key(name)
    repo.backend.put(key, encode_document(repo.keys, doc, key.encode()))


def get_state(repo: Repository, name: str) -> dict[str, Any] | None:
    """The record ``state/<name>``, or ``None`` when there is none."""
    key = state_key(name)
    try:
        data = repo.backend.get(key)
    except ObjectNotFound:
        return None
    doc: dict[str, Any] = decode_document(repo.keys, data, key.encode(), key)
    return doc


def update_state(
    repo: Repository,
    name: str,
    change: Callable[[dict[str, Any] | None], dict[str, Any] | None],
    attempts: int = STATE_ATTEMPTS,
) -> dict[str, Any] | None:
    """Read-modify-write ``state/<name>`` without losing a concurrent writer's update.

    ``change`` gets the current document (``None``: there is none; its own copy, to modify
    or replace) and returns the new one, or ``None`` to leave the record as it is.  The new
    document is written only if the record is still the version that was read (the
    backend's :meth:`~coldkeep.storage.base.Backend.put_if_version`: atomic on the local
    backend and on S3 servers with ``If-Match``); otherwise it is read again and ``change``
    runs again on the newer document, so ``change`` must be a function of the document it is
    given (it may run several times, and once more on its own result after a retried write).
    Exceptions from ``change`` propagate and nothing is written.  Returns the document now
    stored (or the unchanged one); :class:`StateConflict` after ``attempts`` lost races.
    """
    key = state_key(name)
    for attempt in range(attempts):
        try:
            data, version = repo.backend.get_version(key)
        except ObjectNotFound:
            current, version = None, None
        else:
            current = decode_document(repo.keys, data, key.encode(), key)
        new = change(copy.deepcopy(current))
        if new is None:
            return current
        if repo.backend.put_if_version(key, encode_document(repo.keys, new, key.encode()), version):
            return new
        time.sleep(random.uniform(0, min(0.2, 0.005 * 2**attempt)))  # someone else won: again
    raise StateConflict(key)
