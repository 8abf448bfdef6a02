"""The lean path of wal-push / wal-fetch (:mod:`coldkeep.lean`): it reads ``[repository]`` exactly
like coldkeep.config does, parses its command lines as click would, and a real wal-push /
wal-fetch imports neither click nor rich nor pydantic."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from coldkeep import config as config_mod
from coldkeep import lean as lean_path
from coldkeep.errors import RESTORE_COMMAND_FATAL, ConfigError, ConfigNotFound
from coldkeep.lean import config as lean_config


def test_keys_and_defaults_match_the_pydantic_model() -> None:
    fields = config_mod.RepositoryConfig.model_fields
    assert set(lean_config.REPOSITORY_KEYS) == set(fields)
    lean = lean_config.RepositorySection()
    full = config_mod.RepositoryConfig()
    for key in lean_config.REPOSITORY_KEYS:
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
    {"url": "s3://b/p", "endpoint_url": "not a url"},
    {"url": "s3://b/p", "endpoint_url": "ftp://host"},
    {"url": "s3://b/p", "endpoint_url": "http://user:pw@host"},
    {"url": "s3://b/p", "endpoint_url": "http://host:port"},
    {"url": "file:///srv/c\x00x"},
]


@pytest.mark.parametrize("section", SECTIONS, ids=[str(i) for i in range(len(SECTIONS))])
def test_lean_and_full_agree(section: dict[str, Any]) -> None:
    data = {"repository": section}
    try:
        full: config_mod.RepositoryConfig | None = config_mod.validate(data).repository
    except ConfigError:
        full = None
    try:
        lean: lean_config.RepositorySection | None = lean_config.parse_repository_section(data, "c.toml")
    except ConfigError as exc:
        assert "c.toml: repository" in exc.message
        lean = None
    assert (full is None) == (lean is None), (section, full, lean)
    if full is not None and lean is not None:
        for key in lean_config.REPOSITORY_KEYS:
            if key != "copies":
                assert getattr(lean, key) == getattr(full, key)


def test_other_sections_do_not_stop_archiving() -> None:
    data = {"repository": {"url": "file:///srv/c"}, "postgres": {"retention_days": "30"}}
    with pytest.raises(ConfigError):
        config_mod.validate(data)
    assert lean_config.parse_repository_section(data, "c.toml").url == "file:///srv/c"


def test_config_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLDKEEP_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    explicit = tmp_path / "explicit.toml"
    explicit.write_text("")
    assert lean_config.find_config_path(str(explicit)) == str(explicit)
    with pytest.raises(ConfigNotFound):
        lean_config.find_config_path(str(tmp_path / "missing.toml"))
    env = tmp_path / "env.toml"
    env.write_text("")
    monkeypatch.setenv("COLDKEEP_CONFIG", str(env))
    assert lean_config.find_config_path(None) == str(env) == str(config_mod.find_config(None))
    monkeypatch.delenv("COLDKEEP_CONFIG")
    (tmp_path / "coldkeep.toml").write_text("")
    assert Path(lean_config.find_config_path(None)) == config_mod.find_config(None)


def test_toml_errors_are_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[repository\nurl = 1\n")
    with pytest.raises(ConfigError, match="TOML syntax error"):
        lean_config.load_repository_section(str(bad))


# ------------------------------------------------------------------------------------------------
# the command line


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["pg", "wal-push", "p"], "wal-push"),
        (["--config", "c", "-vv", "--json", "pg", "wal-fetch", "n", "d"], "wal-fetch"),
        (["--config=c", "pg", "wal-fetch", "--lineage", "wal", "n", "d"], "wal-fetch"),
        (["--config", "c", "--bogus", "pg", "wal-fetch", "--bogus"], "wal-fetch"),
        (["--config", "pg", "wal-fetch", "n", "d"], None),  # "pg" is the config file
        (["pg", "backup"], None),
        (["repo", "wal-push"], None),
    ],
)
def test_wal_command_name(argv: list[str], command: str | None) -> None:
    assert lean_path.wal_command_name(argv) == command


def test_parse_means_what_click_means() -> None:
    push = lean_path.parse(
        ["--config=/c.toml", "-q", "-vv", "--verbose", "pg", "wal-push", "--async", "--workers=3", "/w/X"]
    )
    assert push is not None
    assert (push.name, push.operands, push.asynchronous, push.workers) == ("wal-push", ["/w/X"], True, 3)
    opts = push.options
    assert (opts.config, opts.json, opts.quiet, opts.verbose) == ("/c.toml", False, True, 3)
    workers_only = lean_path.parse(["pg", "wal-push", "--workers", "2", "X"])
    assert workers_only is not None and workers_only.asynchronous  # click: `if async_ or workers`
    plain = lean_path.parse(["--json", "pg", "wal-push", "--", "-X"])
    assert plain is not None and not plain.asynchronous and plain.operands == ["-X"] and plain.options.json
    fetch = lean_path.parse(
        ["--config", "c", "pg", "wal-fetch", "N", "--prefetch", "8", "D", "--lineage=wal-7"]
    )
    assert fetch is not None
    assert (fetch.name, fetch.operands, fetch.prefetch, fetch.lineage) == (
        "wal-fetch",
        ["N", "D"],
        8,
        "wal-7",
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["pg", "wal-push", "--help"],
        ["pg", "wal-fetch", "-h"],
        ["pg", "wal-push"],
        ["pg", "wal-push", "a", "b"],
        ["pg", "wal-fetch", "only-one"],
        ["--unknown", "pg", "wal-push", "p"],
        ["--config"],
        ["-qv", "pg", "wal-push", "p"],
        ["pg", "wal-fetch", "--lineage"],
        ["pg", "wal-fetch", "--prefetch", "65", "n", "d"],
        ["pg", "wal-fetch", "--prefetch", "²", "n", "d"],
        ["pg", "wal-push", "--async", "--workers", "x", "X"],
        ["pg", "wal-push", "--async=1", "X"],
        ["pg", "wal-push", "--async", "--bogus", "X"],
        ["pg", "backups"],
        ["--version"],
    ],
)
def test_the_unusual_is_left_to_click(argv: list[str]) -> None:
    assert lean_path.parse(argv) is None


def test_usage_errors_of_wal_fetch_are_fatal(capsys: pytest.CaptureFixture[str]) -> None:
    """A broken restore_command must stop recovery (126), not end it (1 = not archived)."""
    from coldkeep.cli import app

    assert app.run(["pg", "wal-fetch", "only-one"]) == RESTORE_COMMAND_FATAL
    assert (
        app.run(["--config", "c.toml", "pg", "wal-fetch", "--prefetch", "65", "n", "d"])
        == RESTORE_COMMAND_FATAL
    )
    assert app.run(["pg", "wal-push"]) == 2
    assert "error:" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# what a real per-segment process imports

#: never on the per-segment path (cryptography: only for an encrypted repository)
HEAVY = (
    "click",
    "rich",
    "pydantic",
    "coldkeep.config",
    "coldkeep.cli.app",
    "cryptography",
    "psycopg",
    "boto3",
)

#: runs the ``coldkeep`` executable's entry point, then reports its exit code and the heavy modules
PROBE = f"""
import sys
sys.argv[0] = "coldkeep"
from coldkeep.cli.entry import main
try:
    main()
    code = 0
except SystemExit as exc:
    code = exc.code
heavy = [m for m in {HEAVY!r} if m in sys.modules]
sys.stderr.write(f"\\nprobe: exit {{code}}, imported {{','.join(heavy) or 'nothing heavy'}}\\n")
"""


def probe(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``coldkeep ARGS`` in a fresh interpreter: (exit code, the heavy modules it imported, stderr)."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    last = proc.stderr.rstrip().rsplit("\n", 1)[-1]
    assert last.startswith("probe: exit "), proc.stderr
    code, _, heavy = last[len("probe: exit ") :].partition(", imported ")
    return int(code), heavy, proc.stderr


def test_a_missing_config_is_reported_without_heavy_imports() -> None:
    code, heavy, stderr = probe(
        "--config", "/nonexistent.toml", "pg", "wal-push", "/x/000000010000000000000001"
    )
    assert (code, heavy) == (2, "nothing heavy")
    assert "no configuration file found" in stderr


def test_wal_push_and_fetch_import_no_click_rich_or_pydantic(tmp_path: Path) -> None:
    """The real commands PostgreSQL runs, against a real (unencrypted) repository: push, an
    identical re-push, fetch (also with --json), a fetch of a file that is not archived (exit 1),
    an --async push (started pusher, then the acknowledgement path) and a prefetching fetch."""
    from tests.helpers import MiB, base_env, write_config
    from tests.unit.test_wal import SYSID, segment

    from coldkeep.postgres import spool
    from coldkeep.postgres.archive import record_system_identifier
    from coldkeep.repository.repository import Repository
    from coldkeep.storage.local import LocalBackend

    repo = Repository.init(LocalBackend(tmp_path / "repo"))
    record_system_identifier(repo, SYSID)
    repo.close()
    config = str(write_config(tmp_path / "coldkeep.toml", f"file://{tmp_path / 'repo'}"))
    pg_wal = tmp_path / "pg_wal"
    (pg_wal / "archive_status").mkdir(parents=True)
    names = [f"0000000100000000000000{i:02X}" for i in range(3, 7)]
    for name in names:
        (pg_wal / name).write_bytes(segment(name, seg_size=MiB))
    env = base_env({"COLDKEEP_CACHE_DIR": str(tmp_path / "cache"), "COLDKEEP_WAL_ASYNC_IDLE": "0.2"})
    restored = tmp_path / "restored"
    restored.mkdir()
    runs = [
        (0, ["pg", "wal-push", str(pg_wal / names[0])]),
        (0, ["pg", "wal-push", str(pg_wal / names[0])]),  # identical duplicate
        (0, ["pg", "wal-push", str(pg_wal / names[1])]),
        (0, ["pg", "wal-fetch", names[0], str(restored / "a")]),
        (0, ["--json", "pg", "wal-fetch", names[1], str(restored / "b")]),
        (1, ["pg", "wal-fetch", "000000010000000100000001", str(restored / "c")]),
        (0, ["pg", "wal-push", "--async", str(pg_wal / names[2])]),
        (0, ["pg", "wal-push", "--async", str(pg_wal / names[2])]),  # acknowledged from the marker
        (0, ["pg", "wal-fetch", "--prefetch", "2", names[0], str(pg_wal / "RECOVERYXLOG")]),
    ]
    try:
        for expected, args in runs:
            code, heavy, stderr = probe("--config", config, *args, env=env)
            assert (code, heavy) == (expected, "nothing heavy"), (args, stderr)
    finally:
        root = spool.spool_root(str(pg_wal / names[2]), config)
        for _ in range(600):  # the detached pusher leaves after 0.2 s idle
            if spool.pusher_pid(root) is None:
                break
            time.sleep(0.05)
    assert (restored / "a").read_bytes() == (pg_wal / names[0]).read_bytes()
    assert (restored / "b").read_bytes() == (pg_wal / names[1]).read_bytes()
    assert (pg_wal / "RECOVERYXLOG").read_bytes() == (pg_wal / names[0]).read_bytes()


def test_the_lean_history_miss_says_not_archived_only_when_the_storage_is_sure(tmp_path: Path) -> None:
    """``wal-fetch`` answers a history probe from the storage alone (no repository open) only
    when the repository's config object is there and the file's named object is not; an
    archived file, a repository that is not there (unmounted, wrong URL) or a segment name
    leave the answer to the full path."""
    from coldkeep.cli import walfast
    from coldkeep.repository import format as repo_format
    from coldkeep.repository.repository import Repository
    from coldkeep.storage.local import LocalBackend

    assert walfast.REPOSITORY_CONFIG_KEY == repo_format.CONFIG_KEY
    assert walfast.NAMED_OBJECT_PREFIX == repo_format.NAMED_PREFIX
    repo = Repository.init(LocalBackend(tmp_path / "repo"))
    config = tmp_path / "c.toml"
    config.write_text(f'[repository]\nurl = "file://{tmp_path}/repo"\n')
    assert walfast.history_not_archived(str(config), "00000002.history", "wal")
    repo.put_named("wal/00000002/00000002.history", b"1\t0/3000000\tno recovery target\n")
    assert not walfast.history_not_archived(str(config), "00000002.history", "wal")
    assert walfast.history_not_archived(str(config), "00000003.history", "wal")
    assert not walfast.history_not_archived(str(config), "000000010000000000000003", "wal")
    # the same lookups in another lineage's names: not this one's file
    assert walfast.history_not_archived(str(config), "00000002.history", "wal-2")
    # the repository is not there: never "not archived" from the lean path
    config.write_text(f'[repository]\nurl = "file://{tmp_path}/unmounted"\n')
    assert not walfast.history_not_archived(str(config), "00000003.history", "wal")
    (tmp_path / "repo" / "config").rename(tmp_path / "config.aside")
    config.write_text(f'[repository]\nurl = "file://{tmp_path}/repo"\n')
    assert not walfast.history_not_archived(str(config), "00000003.history", "wal")
    config.write_text("[repository]\nurl = 5\n")  # a broken config: the full path reports it (126)
    assert not walfast.history_not_archived(str(config), "00000003.history", "wal")
