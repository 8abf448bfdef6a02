"""Conversation archive: exactly-once archival of old rows to monthly compressed JSON-lines files.

The service behind ``coldkeep conversations …`` (see docs/design.md, "Conversation archive"):

* :mod:`.db` — connections, the table's shape, ``init-schema``, the ledger, the advisory lock;
* :mod:`.files` — file names and layout, writing a batch file durably, reading one back;
* :mod:`.archive` — ``archive`` (stream → batch files → one transaction per batch), storing new
  files in the repository, and ``purge``;
* :mod:`.compact` — ``compact`` (merge a finished month's files);
* :mod:`.access` — ``get``, ``restore`` (rehydrate), ``verify`` and ``stats``.
"""

from __future__ import annotations

from coldkeep.conversations.access import (
    get_rows,
    restore_rows,
    stats,
    verify,
)
from coldkeep.conversations.archive import Archiver, ArchiveResult
from coldkeep.conversations.compact import compact_month
from coldkeep.conversations.db import Target, init_schema, open_target

__all__ = [
    "ArchiveResult",
    "Archiver",
    "Target",
    "compact_month",
    "get_rows",
    "init_schema",
    "open_target",
    "restore_rows",
    "stats",
    "verify",
]
