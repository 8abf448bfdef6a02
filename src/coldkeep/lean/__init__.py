"""The lean path: what the per-segment WAL commands share, below every service.

PostgreSQL starts one ``coldkeep pg wal-push`` (``archive_command``) or ``pg wal-fetch``
(``restore_command``) process per 16 MiB WAL segment, so the interpreter start and the imports are
paid for every segment.  These commands therefore never import click, rich or pydantic
(``coldkeep.config``).  The path, top to bottom:

* :mod:`coldkeep.cli.entry` (the executable) parses the command line with :mod:`.args`; an
  acknowledged ``wal-push --async`` goes straight to :mod:`coldkeep.postgres.spool`, a prefetched
  ``wal-fetch --prefetch`` to :mod:`coldkeep.postgres.prefetch`, every other ``wal-push`` /
  ``wal-fetch`` command line the parser accepts to :mod:`coldkeep.cli.walfast`, anything else to
  click (:mod:`coldkeep.cli.app`, whose ``pg wal-push`` / ``pg wal-fetch`` commands in
  :mod:`coldkeep.cli.pg_wal_cmd` call the same :mod:`~coldkeep.cli.walfast` functions);
* :mod:`.args`: the one parser of those command lines (stdlib only, not even ``typing``);
* :mod:`.config`: ``[repository]`` alone, with the rules of :mod:`coldkeep.config` but without
  pydantic; the background pusher and prefetcher read it too;
* :func:`coldkeep.repository.setup.open_repository_section` opens the repository from it.

This package imports nothing of coldkeep but :mod:`coldkeep.errors`, so ``cli/`` and the services
both use it; ``lint-imports`` (``[tool.importlinter]`` in ``pyproject.toml``) keeps it so, and
``tests/unit/test_walfast.py`` checks that a real ``wal-push`` / ``wal-fetch`` stays lean.
"""
