"""The ``coldkeep`` executable's entry point: the per-segment WAL commands before anything else.

PostgreSQL starts ``coldkeep pg wal-push`` once per WAL segment.  In async mode
(``wal-push --async``, :mod:`coldkeep.postgres.spool`) most calls only check an acknowledgement
marker, and with ``wal-fetch --prefetch K`` most calls only rename a verified prefetched file
(:mod:`coldkeep.postgres.prefetch`), so they must not pay for click, logging or the repository
modules that :mod:`coldkeep.cli.app` imports: :func:`main` tries the parsers of
:func:`coldkeep.postgres.spool.lean_main` and :func:`coldkeep.postgres.prefetch.lean_fetch`
first and hands everything else to
:func:`coldkeep.cli.app.main` (which runs ``wal-push`` / ``wal-fetch`` on the lean path of
:mod:`coldkeep.cli.walfast`).
"""

from __future__ import annotations

import sys


def main() -> None:
    args = sys.argv[1:]
    if "--async" in args and "wal-push" in args and "--help" not in args:
        from coldkeep.postgres.spool import lean_main

        code = lean_main(args)
        if code is not None:
            sys.exit(code)
    if "--prefetch" in args and "wal-fetch" in args and "--help" not in args:
        try:
            from coldkeep.postgres.prefetch import lean_fetch

            code = lean_fetch(args)
        except Exception:  # never exit 1 ("not archived") by accident: take the normal path
            code = None
        if code is not None:
            sys.exit(code)
    from coldkeep.cli.app import main as app_main

    app_main()
