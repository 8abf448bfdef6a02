"""Progress counters a command can render while a backup, restore or verification runs."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Progress:
    """Counters a command can render; updated from worker threads."""

    files_total: int = 0
    bytes_total: int = 0
    files_done: int = 0
    bytes_done: int = 0
    callback: Callable[[Progress], None] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, files: int = 0, nbytes: int = 0) -> None:
        with self._lock:
            self.files_done += files
            self.bytes_done += nbytes
        if self.callback is not None:
            with contextlib.suppress(Exception):
                self.callback(self)
