"""The lean path: what the per-segment WAL commands share, below every service; and their parser.

PostgreSQL starts one ``coldkeep pg wal-push`` (``archive_command``) or ``pg wal-fetch``
(``restore_command``) process per 16 MiB WAL segment, so the interpreter start and the imports are
paid for every segment.  These commands therefore never import click, rich or pydantic
(``coldkeep.config``).  The path, top to bottom:

* :mod:`coldkeep.cli.entry` (the executable) parses the command line with :func:`parse` (this
  module: the package itself, so that the path imports one module for it); an acknowledged
  ``wal-push --async`` goes straight to :mod:`coldkeep.postgres.spool`, a prefetched
  ``wal-fetch --prefetch`` to :mod:`coldkeep.postgres.prefetch`, every other ``wal-push`` /
  ``wal-fetch`` command line the parser accepts to :mod:`coldkeep.cli.walfast`, anything else to
  click (:mod:`coldkeep.cli.app`, whose ``pg wal-push`` / ``pg wal-fetch`` commands in
  :mod:`coldkeep.cli.pg_wal_cmd` call the same :mod:`~coldkeep.cli.walfast` functions);
* :mod:`coldkeep.lean.config`: ``[repository]`` alone, with the rules of :mod:`coldkeep.config`
  but without pydantic; the background pusher and prefetcher read it too;
* :func:`coldkeep.repository.setup.open_repository_section` opens the repository from it.

The package imports nothing of coldkeep but :mod:`coldkeep.errors` (in ``config``), so ``cli/``
and the services both use it; ``lint-imports`` (``[tool.importlinter]`` in ``pyproject.toml``)
keeps it so, and ``tests/unit/test_walfast.py`` checks that a real ``wal-push`` / ``wal-fetch``
stays lean.

The command lines :func:`parse` accepts::

    coldkeep [--config F | --config=F] [--json] [-q|--quiet] [-v|-vv…|--verbose]…
             pg wal-push [--async] [--workers N] PATH
    coldkeep [global options] pg wal-fetch [--lineage L] [--prefetch K] NAME DEST

with click's meaning (the options of ``cli/app.py``'s group and ``cli/pg_wal_cmd.py``'s
commands); anything else (``--help``, an unknown or combined option, a value out of range, a
missing argument) is ``None`` and goes to click, which reports it.  Standard library only, not
even :mod:`typing`.
"""

from __future__ import annotations

#: the most segments ``wal-fetch --prefetch`` fetches ahead
MAX_PREFETCH = 64
#: the most threads of the ``wal-push --async`` background pusher
MAX_WORKERS = 64
WAL_COMMANDS = ("wal-push", "wal-fetch")
#: command -> (how many operands, its flags, its options that take a count (and its maximum),
#: its options that take any text)
_SYNTAX = {
    "wal-push": (1, ("--async",), {"--workers": MAX_WORKERS}, ()),
    "wal-fetch": (2, (), {"--prefetch": MAX_PREFETCH}, ("--lineage",)),
}


class GlobalOptions:
    """The options in front of the command (``--config``, ``--json``, ``-q``, ``-v``)."""

    __slots__ = ("config", "json", "quiet", "verbose")

    def __init__(
        self, config: str | None = None, json: bool = False, quiet: bool = False, verbose: int = 0
    ) -> None:
        self.config = config
        self.json = json
        self.quiet = quiet
        self.verbose = verbose


class WalCommand:
    """One ``pg wal-push`` (``operands``: PATH) or ``pg wal-fetch`` (NAME, DEST) command line."""

    __slots__ = ("async_", "lineage", "name", "operands", "options", "prefetch", "workers")

    def __init__(self, name: str, options: GlobalOptions, operands: list[str]) -> None:
        self.name = name
        self.options = options
        self.operands = operands
        self.async_ = False
        self.workers = 0
        self.lineage: str | None = None
        self.prefetch = 0

    @property
    def asynchronous(self) -> bool:
        """``wal-push`` through the background pusher: ``--async`` or a ``--workers`` count (as the
        click command decides)."""
        return self.async_ or self.workers > 0


def _global_options(args: list[str]) -> tuple[GlobalOptions, list[str]] | None:
    """The global options and the rest of ``args``; ``None`` for an option click must handle."""
    options = GlobalOptions()
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--config":
            if i + 1 >= len(args):
                return None
            options.config = args[i + 1]
            i += 2
            continue
        if arg.startswith("--config="):
            options.config = arg[len("--config=") :]
        elif arg == "--json":
            options.json = True
        elif arg in ("-q", "--quiet"):
            options.quiet = True
        elif arg == "--verbose":
            options.verbose += 1
        elif len(arg) > 1 and arg == "-" + "v" * (len(arg) - 1):
            options.verbose += len(arg) - 1
        elif arg.startswith("-"):
            return None
        else:
            break
        i += 1
    return options, args[i:]


def _command_arguments(
    rest: list[str], valued: tuple[str, ...], flags: tuple[str, ...]
) -> tuple[dict[str, str], list[str]] | None:
    """The options (``--opt V`` / ``--opt=V``; a flag maps to ``""``) and the operands of one
    command; ``None`` for anything else (``--help``, unknown options, a missing value)."""
    values: dict[str, str] = {}
    operands: list[str] = []
    only_operands = False
    i = 0
    while i < len(rest):
        arg = rest[i]
        key, eq, value = arg.partition("=")
        if only_operands or arg == "-" or not arg.startswith("-"):
            operands.append(arg)
        elif arg == "--":
            only_operands = True
        elif arg in valued:
            if i + 1 >= len(rest):
                return None
            values[arg] = rest[i + 1]
            i += 1
        elif eq and key in valued:
            values[key] = value
        elif arg in flags:
            values[arg] = ""
        else:
            return None
        i += 1
    return values, operands


def _is_count(text: str, most: int) -> bool:
    """``text`` is an integer in ``0..most`` (else click reports the bad value)."""
    return text.isascii() and text.isdigit() and int(text) <= most


def parse(args: list[str]) -> WalCommand | None:
    """The ``pg wal-push`` / ``pg wal-fetch`` command line in ``args`` (``sys.argv[1:]``), or
    ``None``: another command, or one that click must parse (and report)."""
    split = _global_options(args)
    if split is None:
        return None
    options, rest = split
    if len(rest) < 2 or rest[0] != "pg" or rest[1] not in _SYNTAX:
        return None
    operand_count, flags, counts, texts = _SYNTAX[rest[1]]
    parsed = _command_arguments(rest[2:], (*counts, *texts), flags)
    if parsed is None or len(parsed[1]) != operand_count:
        return None
    values, operands = parsed
    if not all(_is_count(values[key], most) for key, most in counts.items() if key in values):
        return None
    command = WalCommand(rest[1], options, operands)
    command.async_ = "--async" in values
    command.workers = int(values.get("--workers", "0"))
    command.lineage = values.get("--lineage")
    command.prefetch = int(values.get("--prefetch", "0"))
    return command


def wal_command_name(args: list[str]) -> str | None:
    """``"wal-push"`` / ``"wal-fetch"`` when ``args`` run one of them, even a malformed one (so
    that a usage error of ``wal-fetch`` can exit 126), else ``None``: the first two words that are
    neither options nor the value of ``--config`` are ``pg`` and the command."""
    words: list[str] = []
    i = 0
    while i < len(args) and len(words) < 2:
        if args[i] == "--config":
            i += 2
            continue
        if not args[i].startswith("-"):
            words.append(args[i])
        i += 1
    if len(words) == 2 and words[0] == "pg" and words[1] in WAL_COMMANDS:
        return words[1]
    return None
