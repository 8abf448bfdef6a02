"""Shared fixtures: throwaway PostgreSQL clusters (tests/fixtures/pg.py) and a local S3-protocol
server (tests/fixtures/s3.py); the skip report that `.ci/run` checks (tests/skipreport.py).

The whole test session runs with ``COLDKEEP_TESTING=1`` (set here, at import, before any test or
xdist worker starts), so coldkeep honours its test hooks (``COLDKEEP_FAULTS``, ``COLDKEEP_NOW``, …;
see :mod:`coldkeep.testhooks`) in this process and in every subprocess that inherits the
environment.  A helper that builds a child environment from scratch must carry it over.
"""

import os

os.environ["COLDKEEP_TESTING"] = "1"

pytest_plugins = ["tests.fixtures.pg", "tests.fixtures.s3", "tests.fixtures.pg_exec", "tests.skipreport"]
