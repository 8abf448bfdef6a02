"""The whole repository on S3 (a real S3-protocol server), through the real `coldkeep` command:
init, backup, restore, `check --read-data`, and `repo copy` from a local repository to S3."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.helpers import AWS_ENV, Site, make_tree, modify_tree, tree_digest

pytestmark = pytest.mark.s3

PACK_ENV = {"COLDKEEP_PACK_TARGET": str(512 * 1024)}  # several packs, so ranged reads cross objects


def test_repository_on_s3_round_trip(tmp_path: Path, s3_bucket: tuple[str, str]) -> None:
    endpoint, bucket = s3_bucket
    data = make_tree(tmp_path / "data", seed=31)
    site = Site(
        tmp_path / "s3", url=f"s3://{bucket}/repo", endpoint_url=endpoint, env={**AWS_ENV, **PACK_ENV}
    )
    info = site.json("repo", "init")
    assert info["url"] == f"s3://{bucket}/repo"
    first = site.json("backup", str(data))
    v1 = tree_digest(data)
    modify_tree(data, seed=1)
    second = site.json("backup", str(data))
    assert 0 < second["new_stored_bytes"] < first["new_stored_bytes"]  # deduplicated against the first
    assert site.restore_digest(first["snapshot_id"], tmp_path / "r1", data) == v1
    assert site.restore_digest(second["snapshot_id"], tmp_path / "r2", data) == tree_digest(data)
    check = site.json("repo", "check", "--read-data")
    assert check["ok"] and check["snapshots"] == 2 and check["packs_read"] >= 4, check
    assert check["warnings"] == []


def test_copy_local_repository_to_s3(tmp_path: Path, s3_bucket: tuple[str, str]) -> None:
    endpoint, bucket = s3_bucket
    offsite = {"url": f"s3://{bucket}/offsite", "endpoint_url": endpoint}
    data = make_tree(tmp_path / "data", seed=32)
    local = Site(tmp_path / "local", copies={"offsite": offsite}, env={**AWS_ENV, **PACK_ENV})
    local.ok("repo", "init")
    local.ok("backup", str(data))
    v1 = tree_digest(data)
    first = local.json("repo", "copy", "--to", "offsite")
    assert first["copied"]["snapshots"] == 1 and first["copied"]["data"] >= 4, first
    modify_tree(data, seed=2)
    local.ok("backup", str(data))
    v2 = tree_digest(data)
    second = local.json("repo", "copy", "--to", "offsite")  # incremental: only what is new
    assert second["copied"]["snapshots"] == 1 and second["already_there"] > 0, second
    assert local.json("repo", "copy", "--to", "offsite")["copied"] == {}  # nothing left to copy

    # the S3 copy is a repository in its own right: check it and restore from it
    remote = Site(tmp_path / "remote", url=offsite["url"], endpoint_url=endpoint, env=AWS_ENV)
    snaps = remote.snapshot_ids()
    assert snaps == local.snapshot_ids()
    check = remote.json("repo", "check", "--read-data")
    assert check["ok"] and check["snapshots"] == 2, check
    assert remote.restore_digest(snaps[0], tmp_path / "r1", data) == v1
    assert remote.restore_digest(snaps[1], tmp_path / "r2", data) == v2
