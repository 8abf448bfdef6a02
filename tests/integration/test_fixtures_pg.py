"""The PostgreSQL fixture is real: a server we can write to and read back from."""

from __future__ import annotations

import os
import stat

import pytest

from coldkeep.postgres.cluster import TempCluster

pytestmark = pytest.mark.pg


def test_pg_cluster_round_trip(pg_cluster: TempCluster) -> None:
    pg_cluster.sql("CREATE TABLE t (id int PRIMARY KEY, v text)")
    pg_cluster.sql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g")
    assert pg_cluster.sql("SELECT count(*), max(id) FROM t") == [(1000, 1000)]
    assert pg_cluster.sql("SHOW data_checksums") == [("on",)]
    # private socket, no TCP listener
    assert pg_cluster.sql("SHOW listen_addresses") == [("",)]
    assert str(pg_cluster.socket_dir) in pg_cluster.dsn
    mode = stat.S_IMODE(os.stat(pg_cluster.base).st_mode)
    assert mode == 0o700


def test_pg_clusters_are_independent(pg_cluster: TempCluster, pg_cluster_factory) -> None:  # type: ignore[no-untyped-def]
    other: TempCluster = pg_cluster_factory()
    other.start()
    assert other.port != pg_cluster.port
    pg_cluster.sql("CREATE TABLE only_here (x int)")
    assert other.sql("SELECT to_regclass('only_here') IS NULL") == [(True,)]
    other.stop()
    assert not (other.data_dir / "postmaster.pid").exists()


def test_kill_simulates_crash(pg_cluster: TempCluster) -> None:
    pg_cluster.sql("CREATE TABLE c (x int)")
    pg_cluster.sql("INSERT INTO c VALUES (1)")
    pg_cluster.kill()
    pg_cluster.start()  # crash recovery
    assert pg_cluster.sql("SELECT count(*) FROM c") == [(1,)]
