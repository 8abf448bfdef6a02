"""Total loss of the database server and of the local repository: everything is recovered from the
offsite copy alone (invariant 9, the spec's "complete hardware failure").

A cluster archives into a local repository (`pg setup`); a base backup, then 250 marker rows; a
file snapshot; `repo copy --to offsite` (S3 protocol).  Then the server is stopped, its data
directory, the local repository and the local cache are deleted, and a new machine's config points
`[repository] url` at the copy: `pg restore --start` recovers every marker row through `wal-fetch`
from the copy, and `pg verify`, `pg backups` and a file restore work against the copy.  Plain and
encrypted (passphrase from a file).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from tests.helpers import make_tree, toml_str, tree_digest
from tests.pgsite import Env

from coldkeep.postgres.cluster import TempCluster, chown_to

pytestmark = [pytest.mark.pg, pytest.mark.s3, pytest.mark.slow]

MARKERS = 250
PASSWORD = "correct horse battery staple"


def _config(
    base: Path, cluster: TempCluster, repo: dict[str, str], copies: dict[str, dict[str, str]]
) -> Path:
    lines = ["[repository]", *(f"{k} = {toml_str(v)}" for k, v in repo.items())]
    for name, section in copies.items():
        lines += [f"[repository.copies.{name}]", *(f"{k} = {toml_str(v)}" for k, v in section.items())]
    lines += [
        "[postgres]",
        f"dsn = {toml_str(cluster.dsn)}",
        f"data_dir = {toml_str(str(cluster.data_dir))}",
        f"bin_dir = {toml_str(str(cluster.bin_dir))}",
        f"os_user = {toml_str(cluster.os_user)}",
        "archive_timeout = 60",
        'count_tables = ["marks"]',
    ]
    config = base / "coldkeep.toml"
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.chmod(config, 0o644)
    return config


def _machine(prefix: str, cluster: TempCluster, encrypted: bool) -> tuple[Path, dict[str, str]]:
    """A directory the server's OS user can use, and the [repository] keys of a machine there
    (with a password file when ``encrypted``)."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(base, 0o755)
    chown_to(base, cluster.os_user)
    repo = {"owner": cluster.os_user}
    if encrypted:
        secrets = base / "secrets"
        secrets.mkdir(mode=0o700)
        chown_to(secrets, cluster.os_user)
        password_file = secrets / "repo-password"
        password_file.write_text(PASSWORD + "\n")
        os.chmod(password_file, 0o600)
        chown_to(password_file, cluster.os_user)
        repo["password_file"] = str(password_file)
    return base, repo


def _aws_files(base: Path, cluster: TempCluster) -> dict[str, str]:
    """An S3 credentials file and config file the server's OS user can read (a server is given
    where they are, never the keys themselves); the environment that names them."""
    files = {
        "AWS_SHARED_CREDENTIALS_FILE": (base / "aws-credentials", "[default]\naws_access_key_id = testing\n"
                                        "aws_secret_access_key = testing\naws_session_token = testing\n"),
        "AWS_CONFIG_FILE": (base / "aws-config", "[default]\nregion = us-east-1\n"),
    }  # fmt: skip
    for path, text in files.values():
        path.write_text(text)
        os.chmod(path, 0o600)
        chown_to(path, cluster.os_user)
    return {name: str(path) for name, (path, _) in files.items()}


def _labels(report: dict[str, Any]) -> list[str]:
    import psycopg

    dsn = f"host={report['socket_dir']} port={report['port']} dbname=postgres user=postgres"
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [r[0] for r in conn.execute("SELECT label FROM marks ORDER BY id")]


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_total_loss_is_recovered_from_the_offsite_copy_alone(
    pg_cluster: TempCluster, pg_coldkeep: str, s3_bucket: tuple[str, str], tmp_path: Path, encrypted: bool
) -> None:
    endpoint, bucket = s3_bucket
    offsite = {"url": f"s3://{bucket}/offsite", "endpoint_url": endpoint}
    cluster = pg_cluster
    old_base, old_repo = _machine("coldkeep-lost-", cluster, encrypted)
    new_base, new_repo = _machine("coldkeep-new-", cluster, encrypted)
    try:
        # --- the machine that will be lost -------------------------------------------------------
        old = Env(old_base, _config(old_base, cluster, {"url": f"file://{old_base}/repo", **old_repo},
                                    {"offsite": offsite}), cluster, old_base / "cache", pg_coldkeep)  # fmt: skip
        old.ck("repo", "init")
        old.ck("pg", "setup", "--apply")
        cluster.stop()
        cluster.start()
        cluster.sql("CREATE TABLE marks (id serial PRIMARY KEY, label text NOT NULL)")
        cluster.sql("INSERT INTO marks (label) VALUES ('before-backup')")
        backup = old.ckj("pg", "backup", "--label", "nightly")
        cluster.sql(f"INSERT INTO marks (label) SELECT 'm-' || g FROM generate_series(1, {MARKERS}) g")
        old.switch_and_wait()  # the markers' WAL is archived
        data = make_tree(tmp_path / "data", seed=7, small_files=12, big_sizes=(int(1.5 * 1024 * 1024),))
        files = old.ckj("backup", str(data))
        copied = old.ckj("repo", "copy", "--to", "offsite")
        assert copied["copied"]["snapshots"] == 2, copied

        # --- total loss: server, data directory, local repository and cache ----------------------
        cluster.stop()
        shutil.rmtree(cluster.data_dir)
        shutil.rmtree(old_base)

        # --- a new machine with only the config, the passphrase file and S3 credentials ----------
        new = Env(new_base, _config(new_base, cluster, {"url": offsite["url"], "endpoint_url": endpoint,
                                                        "region": "us-east-1", **new_repo},
                                    {}), cluster, new_base / "cache", pg_coldkeep)  # fmt: skip
        server_env = _aws_files(new_base, cluster)  # restore_command reads S3 keys from files
        listing = new.ckj("pg", "backups")
        assert [b["id"] for b in listing] == [backup["id"]], listing
        new.ck("pg", "verify")
        report: dict[str, Any] = new.ckj(
            "pg", "restore", "--target-dir", str(cluster.data_dir), "--start", extra_env=server_env
        )
        try:
            labels = _labels(report)
        finally:
            data_dir = Path(report["data_dir"])
            TempCluster(data_dir.with_name(data_dir.name + ".run"), bin_dir=cluster.bin_dir,
                        data_dir=data_dir).stop()  # fmt: skip
        assert labels == ["before-backup", *(f"m-{i}" for i in range(1, MARKERS + 1))]
        # the backup's own first segments were staged from the copy for the fast path
        assert report["wal_staged"] >= 1, report
        target = tmp_path / "restored"
        new.ck("restore", files["snapshot_id"], "--target", str(target))
        assert tree_digest(target / str(data).lstrip("/")) == tree_digest(data)
        check = new.ckj("repo", "check", "--read-data")
        assert check["ok"], check
    finally:
        shutil.rmtree(old_base, ignore_errors=True)
        shutil.rmtree(new_base, ignore_errors=True)
