"""Shared fixtures: throwaway PostgreSQL clusters (tests/fixtures/pg.py) and a local S3-protocol
server (tests/fixtures/s3.py)."""

pytest_plugins = ["tests.fixtures.pg", "tests.fixtures.s3", "tests.fixtures.pg_exec"]
