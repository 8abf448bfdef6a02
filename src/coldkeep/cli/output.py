"""Rendering: a human view with rich, or ``--json``; errors as one line each on stderr."""

from __future__ import annotations

import io
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from coldkeep.errors import ColdkeepError

if TYPE_CHECKING:  # rich is imported on first use: `pg wal-push` never renders anything
    from rich.console import Console


def dumps(data: Any, **kwargs: Any) -> str:
    """``json.dumps`` with non-ASCII characters as they are, unless ``data`` holds a file name
    that is not UTF-8 (lone surrogates, from ``surrogateescape``): then every non-ASCII character
    is escaped (``\\udcff``), so the output is always valid UTF-8 and ``json.loads`` gives the
    same strings back (``os.fsencode`` of such a name gives its bytes)."""
    text = json.dumps(data, ensure_ascii=False, **kwargs)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(data, ensure_ascii=True, **kwargs)
    return text


def printable(text: str) -> str:
    """``text`` for a terminal: a file name's bytes that are not UTF-8 as ``\\xff`` escapes."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that no file name has
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


#: C0 and C1 control characters and DEL: never written to a terminal as they are
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def safe_line(text: str) -> str:
    """``text`` (a message naming a label, a tag, a file name) for one line on a terminal:
    :func:`printable`, and control characters shown as ``\x1b`` escapes, so that a name cannot
    clear the screen or forge another line."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", printable(text))


def plain(value: object) -> str:
    """``value`` as text for a rich table cell or ``print``: never read as markup (``[/]`` in a
    label, a path or a conversation message stays as it is), control characters shown as
    ``\x1b`` escapes (a label cannot drive the operator's terminal), and a file name's bytes that
    are not UTF-8 as in :func:`printable`."""
    from rich.markup import escape

    return escape(safe_line(str(value)))


def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    if isinstance(stream, io.TextIOWrapper) and stream.errors == "strict":
        # a file name that is not UTF-8 is written as its own bytes (as ls does), not a crash
        stream.reconfigure(errors="surrogateescape")

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


@dataclass
class Output:
    json: bool = False
    quiet: bool = False
    verbose: int = 0
    _console: Console | None = field(default=None, repr=False)
    _err: Console | None = field(default=None, repr=False)
    #: what the command emitted last (a recorded job takes its figures from it: cli/recorded.py)
    last_data: Any = field(default=None, repr=False)

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
        self.last_data = data
        if self.json:
            sys.stdout.write(dumps(data, indent=2, default=str) + "\n")
            sys.stdout.flush()
        elif not self.quiet:
            if human is None:
                self.console.print_json(json.dumps(data, default=str))
            else:
                human(self.console)

    def info(self, text: str) -> None:
        """A line on stderr (not with --quiet or --json); ``text`` is plain text, not markup."""
        if not self.quiet and not self.json:
            from rich.markup import escape

            self.err.print(escape(safe_line(text)))

    def warn(self, text: str) -> None:
        """``warning: text`` on stderr; ``text`` (a path, say) is plain text, not markup."""
        if not self.json:
            from rich.markup import escape

            self.err.print(f"[yellow]warning:[/yellow] {escape(safe_line(text))}")
        else:
            sys.stderr.write(f"warning: {safe_line(text)}\n")

    def error(self, exc: ColdkeepError) -> None:
        if self.json:
            sys.stdout.write(dumps({"error": exc.to_json()}) + "\n")
        self.failure(exc)

    def failure(self, exc: ColdkeepError) -> None:
        """``error:`` and ``hint:`` lines on stderr only: for a command that already emitted its
        result (which carries the details, e.g. with ``--json``) and then exits non-zero."""
        sys.stderr.write(f"error: {safe_line(exc.message)}\n")
        if exc.hint:
            sys.stderr.write(f"hint: {exc.hint}\n")
        sys.stderr.flush()

    @property
    def progress_enabled(self) -> bool:
        return not self.json and not self.quiet and self.err.is_terminal
