"""The lean path of wal-push / wal-fetch reads ``[repository]`` exactly like coldkeep.config does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from coldkeep import config as config_mod
from coldkeep.cli import walfast
from coldkeep.errors import RESTORE_COMMAND_FATAL, ConfigError, ConfigNotFound


def test_keys_and_defaults_match_the_pydantic_model() -> None:
    fields = config_mod.RepositoryConfig.model_fields
    assert set(walfast.REPOSITORY_KEYS) == set(fields)
    lean = walfast.RepositorySection()
    full = config_mod.RepositoryConfig()
    for key in walfast.REPOSITORY_KEYS:
        if key != "copies":
            assert getattr(lean, key) == getattr(full, key), key


SECTIONS: list[dict[str, Any]] = [
    {},
    {"url": "file:///srv/coldkeep"},
    {"url": "file://localhost/srv/coldkeep", "owner": "postgres", "compression_level": 19},
    {"url": "s3://bucket/prefix", "endpoint_url": "http://127.0.0.1:9000", "region": "eu-west-1"},
    {"url": "file:///srv/c", "password_file": "/etc/coldkeep/pw", "compression_level": -7},
    {"url": "file:///srv/c", "copies": {"offsite": {"url": "s3://b/p"}}},
    # refused by both
    {"url": "file://relative/path"},
    {"url": "file:relative"},
    {"url": "http://example.com/repo"},
    {"url": "s3://"},
    {"url": "s3://user:secret@bucket/p"},
    {"url": 5},
    {"compression_level": "3"},
    {"compression_level": 23},
    {"compression_level": True},
    {"compression_level": 3.0},
    {"owner": 0},
    {"pasword_file": "/x"},
    {"copies": "offsite"},
]


@pytest.mark.parametrize("section", SECTIONS, ids=[str(i) for i in range(len(SECTIONS))])
def test_lean_and_full_agree(section: dict[str, Any]) -> None:
    data = {"repository": section}
    try:
        full: config_mod.RepositoryConfig | None = config_mod.validate(data).repository
    except ConfigError:
        full = None
    try:
        lean: walfast.RepositorySection | None = walfast.parse_repository_section(data, "c.toml")
    except ConfigError as exc:
        assert "c.toml: repository" in exc.message
        lean = None
    assert (full is None) == (lean is None), (section, full, lean)
    if full is not None and lean is not None:
        for key in walfast.REPOSITORY_KEYS:
            if key != "copies":
                assert getattr(lean, key) == getattr(full, key)


def test_other_sections_do_not_stop_archiving() -> None:
    data = {"repository": {"url": "file:///srv/c"}, "postgres": {"retention_days": "30"}}
    with pytest.raises(ConfigError):
        config_mod.validate(data)
    assert walfast.parse_repository_section(data, "c.toml").url == "file:///srv/c"


def test_config_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLDKEEP_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    explicit = tmp_path / "explicit.toml"
    explicit.write_text("")
    assert walfast.find_config_path(str(explicit)) == str(explicit)
    with pytest.raises(ConfigNotFound):
        walfast.find_config_path(str(tmp_path / "missing.toml"))
    env = tmp_path / "env.toml"
    env.write_text("")
    monkeypatch.setenv("COLDKEEP_CONFIG", str(env))
    assert walfast.find_config_path(None) == str(env) == str(config_mod.find_config(None))
    monkeypatch.delenv("COLDKEEP_CONFIG")
    (tmp_path / "coldkeep.toml").write_text("")
    assert Path(walfast.find_config_path(None)) == config_mod.find_config(None)


def test_toml_errors_are_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[repository\nurl = 1\n")
    with pytest.raises(ConfigError, match="TOML syntax error"):
        walfast.load_repository_section(str(bad))


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["pg", "wal-push", "p"], "wal-push"),
        (["--config", "c", "-vv", "--json", "pg", "wal-fetch", "n", "d"], "wal-fetch"),
        (["--config=c", "pg", "wal-fetch", "--lineage", "wal", "n", "d"], "wal-fetch"),
        (["pg", "backup"], None),
        (["repo", "wal-push"], None),
    ],
)
def test_is_wal_command(argv: list[str], command: str | None) -> None:
    assert walfast.is_wal_command(argv) == command


@pytest.mark.parametrize(
    "argv",
    [
        ["pg", "wal-push", "--help"],
        ["pg", "wal-fetch", "-h"],
        ["pg", "wal-push"],
        ["pg", "wal-push", "a", "b"],
        ["pg", "wal-fetch", "only-one"],
        ["--unknown", "pg", "wal-push", "p"],
        ["pg", "wal-fetch", "--lineage"],
        ["pg", "backups"],
    ],
)
def test_fast_parser_leaves_the_unusual_to_click(argv: list[str]) -> None:
    assert walfast.run_fast(argv) is None


def test_usage_errors_of_wal_fetch_are_fatal() -> None:
    assert walfast.usage_exit_code(["pg", "wal-fetch", "x"], 2) == RESTORE_COMMAND_FATAL
    assert walfast.usage_exit_code(["pg", "wal-push", "x"], 2) == 2


def test_fast_path_imports_stay_lean() -> None:
    """wal-push / wal-fetch never import click's rendering (rich), pydantic or cryptography
    (unencrypted repository), nor psycopg."""
    code = (
        "import sys\n"
        "from coldkeep.cli import app\n"
        "app.run(['--config', '/nonexistent.toml', 'pg', 'wal-push', '/x/000000010000000000000001'])\n"
        "heavy = sorted(m for m in ('rich', 'pydantic', 'cryptography', 'psycopg', 'boto3') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""
    assert "no configuration file found" in proc.stderr
