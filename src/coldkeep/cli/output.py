"""Rendering: a human view with rich, or ``--json``; errors as one line each on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from coldkeep.errors import ColdkeepError


@dataclass
class Output:
    json: bool = False
    quiet: bool = False
    verbose: int = 0
    console: Console = field(default_factory=lambda: Console(highlight=False, soft_wrap=True))
    err: Console = field(default_factory=lambda: Console(stderr=True, highlight=False, soft_wrap=True))

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
        sys.stderr.write(f"error: {exc.message}\n")
        if exc.hint:
            sys.stderr.write(f"hint: {exc.hint}\n")
        sys.stderr.flush()

    @property
    def progress_enabled(self) -> bool:
        return not self.json and not self.quiet and self.err.is_terminal
