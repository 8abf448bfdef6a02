"""The ``coldkeep`` executable: the per-segment WAL commands first, everything else through click.

PostgreSQL starts ``coldkeep pg wal-push`` / ``pg wal-fetch`` once per WAL segment, so these must
not pay for click, rich, logging or pydantic (:mod:`coldkeep.lean`).  :func:`main` parses the
command line with :func:`coldkeep.lean.parse` and

* answers ``wal-push --async`` from :func:`coldkeep.postgres.spool.push_async` (most calls only
  check an acknowledgement marker: stdlib and blake3 only);
* serves ``wal-fetch --prefetch K`` from the prefetch spool when the segment is there
  (:func:`coldkeep.postgres.prefetch.serve_spooled`);
* runs every other ``wal-push`` / ``wal-fetch`` command line the parser accepts with
  :func:`coldkeep.cli.walfast.run` (unless ``COLDKEEP_WAL_FASTPATH=0``);
* hands anything else to :func:`coldkeep.cli.app.main` (click), whose ``pg wal-push`` /
  ``pg wal-fetch`` commands call the same :mod:`~coldkeep.cli.walfast` functions.
"""

from __future__ import annotations

import os
import sys

from coldkeep.lean import WalCommand, parse

#: ``0``: ``pg wal-push`` / ``pg wal-fetch`` go through click (benchmarks, debugging); an
#: acknowledged ``--async`` push and a prefetch spool hit are still answered here
FASTPATH_ENV = "COLDKEEP_WAL_FASTPATH"


def run_lean(command: WalCommand) -> int | None:
    """The exit code of ``command`` run without click; ``None``: take the click path."""
    options = command.options
    # the shortcuts need a --config file that exists (the full path reports a missing one)
    config = options.config if options.config and os.path.isfile(options.config) else None
    if command.name == "wal-push":
        if command.asynchronous and config and not options.json:
            from coldkeep.postgres.spool import push_async

            return push_async(config, command.operands[0], workers=command.workers, verbose=options.verbose)
    elif command.prefetch and config and not (options.json or options.verbose) and _served(config, command):
        return 0
    if os.environ.get(FASTPATH_ENV, "1") == "0":
        return None
    from coldkeep.cli.walfast import run

    return run(command)


def _served(config: str, command: WalCommand) -> bool:
    """``wal-fetch --prefetch K``: the segment was served from the prefetch spool.  On any error
    ``False``: the full path fetches it and reports (never exit 1, "not archived", by accident)."""
    name, dest = command.operands
    try:
        from coldkeep.postgres.prefetch import serve_spooled

        return serve_spooled(config, name, dest, command.lineage, command.prefetch)
    except Exception:
        return False


def main() -> None:
    """Run ``coldkeep`` with ``sys.argv`` and exit with its code."""
    command = parse(sys.argv[1:])
    if command is not None:
        code = run_lean(command)
        if code is not None:
            sys.exit(code)
    from coldkeep.cli.app import main as app_main

    app_main()


if __name__ == "__main__":
    main()
