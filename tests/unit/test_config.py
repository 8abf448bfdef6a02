"""Config validation: one line naming the key, exit 2; spec defaults; secrets refused/redacted."""

from __future__ import annotations

from pathlib import Path

import pytest

from coldkeep import config as config_mod
from coldkeep.errors import ConfigError, ConfigNotFound


def test_defaults_are_the_specs_numbers() -> None:
    cfg = config_mod.parse_text("")
    assert cfg.repository.url == "file:///mnt/hdd/coldkeep"
    assert cfg.postgres.retention_days == 30
    assert cfg.postgres.archive_timeout == 300
    hot = cfg.checkpoints.hot_retention_days
    assert (hot.checkpoint, hot.best, hot.production, hot.rollback) == (7, 90, "forever", 30)
    assert cfg.datasets.splits == ["train", "holdout"]
    assert cfg.conversations.archive_after_days == 90
    assert cfg.conversations.format == "jsonl.zst"
    assert cfg.tiers.tier1.retention_days == "forever"
    assert cfg.tiers.tier2.retention_days == 365
    assert cfg.tiers.tier3.retention_days == 30
    assert config_mod.parse_size(cfg.storage.hot.capacity) == 4 * 10**12
    assert [config_mod.parse_size(a.size) for a in cfg.storage.cold.allocations.values()] == [2 * 10**12] * 4
    assert cfg.schedule.pg_backup == "0 2 * * *"
    assert cfg.schedule.checkpoints_archive == "0 3 * * 0"
    assert cfg.schedule.conversations_archive == "0 4 1 * *"
    # no section in the file: nothing is in use
    assert not any(section.in_use for _, section in cfg.services())


def test_fixed_key_names_from_the_issue_parse() -> None:
    text = """
[repository]
url = "file:///mnt/hdd/coldkeep"
password_file = ""
owner = "postgres"
[repository.copies.offsite]
url = "s3://lab-backups/coldkeep"
endpoint_url = "http://127.0.0.1:9000"
[postgres]
dsn = "host=/var/run/postgresql port=5432 dbname=iccm user=postgres"
data_dir = "/var/lib/postgresql/15/main"
bin_dir = ""
os_user = "postgres"
retention_days = 30
archive_timeout = 300
count_tables = ["conversations"]
[checkpoints]
root = "/mnt/nvme/models"
phase_glob = "cet-d-*"
[checkpoints.hot_retention_days]
checkpoint = 7
best = 90
production = "forever"
rollback = 30
[datasets]
root = "/mnt/projects/ICCM/datasets/applications"
splits = ["train", "holdout"]
[conversations]
table = "conversations"
archive_after_days = 90
archive_dir = "/mnt/hdd/conversation_archives"
format = "jsonl.zst"
"""
    cfg = config_mod.parse_text(text)
    assert cfg.repository.copies["offsite"].endpoint_url == "http://127.0.0.1:9000"
    assert all(section.in_use for _, section in cfg.services())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[postgres]\nretention_days = "30"\n', "postgres.retention_days"),  # wrong type
        ("[postgres]\nretention_dayz = 30\n", "postgres.retention_dayz: unknown key"),  # unknown key
        ("[bogus]\nx = 1\n", "bogus: unknown key"),
        (
            "[postgres]\nretention_days = -1\n",
            "postgres.retention_days: Input should be greater than or equal to 0",
        ),
        ("[checkpoints.hot_retention_days]\nbest = -5\n", "checkpoints.hot_retention_days.best"),
        ('[checkpoints.hot_retention_days]\nbest = "never"\n', "checkpoints.hot_retention_days.best"),
        ('[conversations]\nformat = "jsonl.bz2"\n', "conversations.format"),
        (
            '[repository]\nurl = "ftp://x"\n',
            "repository.url: repository URL must start with file:// or s3://",
        ),
        ('[postgres]\ndsn = "host=x password=secret"\n', "postgres.dsn: the DSN must not contain a password"),
        (
            '[repository]\nurl = "s3://b/p"\nendpoint_url = "not a url"\n',
            "repository.endpoint_url: must be an http:// or https:// URL with a host",
        ),
        (
            '[repository.copies.offsite]\nurl = "s3://b/p"\nendpoint_url = "127.0.0.1:9000"\n',
            "repository.copies.offsite.endpoint_url: must be an http:// or https:// URL",
        ),
        (
            "[postgres]\nbackup_wal_timeout = 0\n",
            "postgres.backup_wal_timeout: Input should be greater than or equal to 1",
        ),
        ('[postgres]\nbackup_wal_timeout = "soon"\n', "postgres.backup_wal_timeout"),
        ('[schedule]\npg_backup = "0 25 * * *"\n', "schedule.pg_backup"),
        ('[storage.hot]\npath = "/x"\ncapacity = "lots"\n', "storage.hot.capacity"),
        ("[tiers.tier1]\nretention_days = 30\n", "tiers.tier1: Tier 1 is kept forever"),
    ],
)
def test_bad_values_name_the_key(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_mod.parse_text(text, source="lab.toml")
    message = info.value.message
    assert expected in message
    assert message.startswith("lab.toml: ")
    assert "\n" not in message
    assert message.count("(got ") <= 1, message  # the bad value is named once
    assert info.value.exit_code == 2


def test_password_in_dsn_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as info:
        config_mod.parse_text('[postgres]\ndsn = "postgresql://iccm:hunter2@localhost/iccm"\n')
    assert "hunter2" not in info.value.message


def test_broken_toml_names_the_line() -> None:
    with pytest.raises(ConfigError) as info:
        config_mod.parse_text("[postgres]\nretention_days = 30\narchive_timeout = = 5\n", source="c.toml")
    assert "line 3" in info.value.message
    assert info.value.exit_code == 2


def test_paths_checked_only_for_sections_in_use(tmp_path: Path) -> None:
    text = f'''
[repository]
url = "file://{tmp_path}/repo"
[checkpoints]
enabled = false
root = "/does/not/exist"
[datasets]
root = "{tmp_path}/missing-datasets"
'''
    problems = config_mod.check_paths(config_mod.parse_text(text))
    assert problems == [f"datasets.root: {tmp_path}/missing-datasets: no such directory"]


def test_repository_parent_must_exist(tmp_path: Path) -> None:
    cfg = config_mod.parse_text(f'[repository]\nurl = "file://{tmp_path}/a/b/repo"\n')
    (problem,) = config_mod.check_paths(cfg)
    assert problem.startswith("repository.url:")


def test_redacted_hides_secrets() -> None:
    cfg = config_mod.parse_text('[metrics]\npushgateway_url = "http://user:pw@gw:9091"\n')
    data = config_mod.redacted(cfg)
    assert data["metrics"]["pushgateway_url"] == "http://user:***@gw:9091"


def test_find_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit = tmp_path / "explicit.toml"
    env = tmp_path / "env.toml"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    for p in (explicit, env, cwd / "coldkeep.toml"):
        p.write_text("")
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("COLDKEEP_CONFIG", str(env))
    assert config_mod.find_config(str(explicit)) == explicit
    assert config_mod.find_config(None) == env
    monkeypatch.delenv("COLDKEEP_CONFIG")
    assert config_mod.find_config(None).resolve() == (cwd / "coldkeep.toml").resolve()
    with pytest.raises(ConfigNotFound):
        config_mod.find_config(str(tmp_path / "nope.toml"))


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4TB", 4 * 10**12),
        ("512GiB", 512 * 2**30),
        ("100", 100),
        ("1.5 GB", 1_500_000_000),
        ("2tib", 2 * 2**40),
    ],
)
def test_parse_size(text: str, value: int) -> None:
    assert config_mod.parse_size(text) == value


def test_template_written_by_init_is_valid() -> None:
    template = (Path(config_mod.__file__).parent / "templates" / "coldkeep.toml").read_text()
    text = template.format(
        repo_url="file:///tmp/r",
        endpoint_url="",
        password_file="",
        owner="postgres",
        pg_enabled="true",
        pg_dsn="host=/tmp port=5432 dbname=x user=postgres",
        pg_data_dir="/tmp/d",
        pg_bin_dir="",
        os_user="postgres",
    )
    cfg = config_mod.parse_text(text)
    assert cfg.postgres.in_use and not cfg.checkpoints.in_use
    assert cfg == config_mod.parse_text(text)  # deterministic
    defaults = config_mod.parse_text("")
    assert (
        cfg.storage == defaults.storage and cfg.schedule == defaults.schedule and cfg.tiers == defaults.tiers
    )
