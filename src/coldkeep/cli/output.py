"""Rendering: a human view with rich, or ``--json``; errors as one line each on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from coldkeep.errors import ColdkeepError

if TYPE_CHECKING:  # rich is imported on first use: `pg wal-push` never renders anything
    from rich.console import Console


def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


@dataclass
class Output:
    json: bool = False
    quiet: bool = False
    verbose: int = 0
    _console: Console | None = field(default=None, repr=False)
    _err: Console | None = field(default=None, repr=False)

    @property
    def console(self) -> Console:
        if self._console is None:
            self._console = _console()
        return self._console

    @property
    def err(self) -> Console:
        if self._err is None:
            self._err = _console(stderr=True)
        return self._err

    def emit(self, data: Any, human: Callable[[Console], None] | None = None) -> None:
        """``--json``: dump ``data``; otherwise call ``human`` (unless ``--quiet``)."""
        if self.json:
            sys.stdout.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")
            sys.stdout.flush()
        elif not self.quiet:
            if human is None:
                self.console.print_json(json.dumps(data, default=str))
            else:
                human(self.console)

    def info(self, text: str) -> None:
        if not self.quiet and not self.json:
            self.err.print(text)

    def warn(self, text: str) -> None:
        if not self.json:
            self.err.print(f"[yellow]warning:[/yellow] {text}")
        else:
            sys.stderr.write(f"warning: {text}\n")

    def error(self, exc: ColdkeepError) -> None:
        if self.json:
            sys.stdout.write(json.dumps({"error": exc.to_json()}, ensure_ascii=False) + "\n")
        self.failure(exc)

    def failure(self, exc: ColdkeepError) -> None:
        """``error:`` and ``hint:`` lines on stderr only: for a command that already emitted its
        result (which carries the details, e.g. with ``--json``) and then exits non-zero."""
        sys.stderr.write(f"error: {exc.message}\n")
        if exc.hint:
            sys.stderr.write(f"hint: {exc.hint}\n")
        sys.stderr.flush()

    @property
    def progress_enabled(self) -> bool:
        return not self.json and not self.quiet and self.err.is_terminal
