"""The global options in front of a command, parsed without importing anything.

The per-segment WAL paths (:func:`coldkeep.postgres.spool.lean_main`,
:func:`coldkeep.postgres.prefetch.lean_fetch`) answer before click is imported; they share this
parser of ``[--config F | --config=F] [-q|--quiet] [-v|--verbose]…``."""

from __future__ import annotations


def split_global_options(args: list[str]) -> tuple[str | None, int, list[str]] | None:
    """``(config, verbosity, rest)`` for ``args``; ``None`` for any other global option (the
    caller then leaves the command line to the full CLI, which reports it)."""
    config: str | None = None
    verbose = 0
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--config" and i + 1 < len(args):
            config = args[i + 1]
            i += 2
            continue
        if arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        elif arg in ("-v", "--verbose"):
            verbose += 1
        elif arg.startswith("-") and arg not in ("-q", "--quiet"):
            return None
        elif not arg.startswith("-"):
            break
        i += 1
    return config, verbose, args[i:]
