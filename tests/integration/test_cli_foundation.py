"""Acceptance of the foundation through the real `coldkeep` command."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest
from tests.helpers import Site

from coldkeep.postgres.cluster import TempCluster

COLDKEEP = str(Path(sys.executable).parent / "coldkeep")
ME = pwd.getpwuid(os.getuid()).pw_name


def run(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "COLDKEEP_CONFIG"}
    full_env.update(env or {})
    return subprocess.run(
        [COLDKEEP, *args], capture_output=True, text=True, cwd=cwd, env=full_env, timeout=120
    )


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert all(line.startswith(("error: ", "hint: ")) for line in lines), proc.stderr
    return errors[0]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ('[postgres]\nretention_days = "30"\n', "postgres.retention_days"),
        ("[postgres]\nretention_dayz = 30\n", "postgres.retention_dayz: unknown key"),
        ("[checkpoints.hot_retention_days]\nrollback = -1\n", "checkpoints.hot_retention_days.rollback"),
        ("[postgres]\nretention_days = 30\narchive_timeout 300\n", "line 5"),
        (
            '[datasets]\nroot = "/nonexistent/datasets"\n',
            "datasets.root: /nonexistent/datasets: no such directory",
        ),
        ('[postgres]\ndsn = "this is not a dsn"\n', "postgres.dsn: not a connection string"),
        (
            '[postgres]\ndata_dir = "/nonexistent/pgdata"\nos_user = "root"\n',
            "postgres.data_dir: /nonexistent/pgdata: no such directory",
        ),
        (
            '[postgres]\ndata_dir = "/tmp"\nos_user = "no-such-user-ck"\n',
            "postgres.os_user: no-such-user-ck: no such user",
        ),
    ],
)
def test_config_check_names_the_problem(tmp_path: Path, body: str, needle: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[repository]\nurl = "file://{tmp_path}/repo"\n' + body)
    proc = run("--config", str(cfg), "config", "check")
    assert proc.returncode == 2, proc.stderr
    assert needle in one_line_error(proc)
    assert "run `coldkeep config check`" not in proc.stderr  # not back to the command just run


def test_sections_not_in_use_are_not_checked_against_disk(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[repository]\nurl = "file://{tmp_path}/repo"\n'
        '[checkpoints]\nenabled = false\nroot = "/nonexistent/models"\n'
    )
    proc = run("--config", str(cfg), "--json", "config", "check")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["sections_in_use"] == []


def test_config_found_via_env_and_cwd(tmp_path: Path) -> None:
    cfg = tmp_path / "coldkeep.toml"
    cfg.write_text(f'[repository]\nurl = "file://{tmp_path}/repo"\n')
    assert run("config", "check", cwd=tmp_path).returncode == 0
    other = tmp_path / "elsewhere"
    other.mkdir()
    assert run("config", "check", cwd=other, env={"COLDKEEP_CONFIG": str(cfg)}).returncode == 0
    proc = run("config", "check", cwd=other)
    assert proc.returncode == 2
    assert "no configuration file found" in one_line_error(proc)


def test_config_show_redacts_and_fills_defaults(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[repository]\nurl = "file://{tmp_path}/repo"\n[metrics]\npushgateway_url = "http://u:s3cret@gw:9091"\n'
    )
    proc = run("--config", str(cfg), "--json", "config", "show")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert "s3cret" not in proc.stdout
    assert data["postgres"]["retention_days"] == 30
    assert data["checkpoints"]["hot_retention_days"]["production"] == "forever"


def test_init_writes_config_creates_repo_and_refuses_overwrite(tmp_path: Path) -> None:
    cfg = tmp_path / "coldkeep.toml"
    proc = run("--config", str(cfg), "--json", "init", "--repo", f"file://{tmp_path}/repo", "--owner", ME,
               "--no-postgres", env={"COLDKEEP_CACHE_DIR": str(tmp_path / "cache")})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["repository_init"]["version"] == 2  # format version 2 (byte planes)
    assert (tmp_path / "repo" / "config").is_file()
    text = cfg.read_text()
    assert text.startswith("# coldkeep configuration") and "retention_days = 30" in text
    before = cfg.read_bytes()
    again = run("--config", str(cfg), "init", "--repo", f"file://{tmp_path}/other")
    assert again.returncode == 2
    assert "refusing to overwrite" in one_line_error(again)
    assert cfg.read_bytes() == before
    assert run("--config", str(cfg), "config", "check").returncode == 0


def test_usage_errors_exit_2_in_one_line() -> None:
    proc = run("no-such-command")
    assert proc.returncode == 2
    one_line_error(proc)
    proc = run("--json", "restore")
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["error"]["exit_code"] == 2


def test_not_found_exit_5(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[repository]\nurl = "file://{tmp_path}/repo"\nowner = "{ME}"\n')
    assert (
        run(
            "--config", str(cfg), "repo", "init", env={"COLDKEEP_CACHE_DIR": str(tmp_path / "cache")}
        ).returncode
        == 0
    )
    proc = run("--config", str(cfg), "restore", "deadbeef", "--target", str(tmp_path / "t"),
               env={"COLDKEEP_CACHE_DIR": str(tmp_path / "cache")})  # fmt: skip
    assert proc.returncode == 5
    assert "no snapshot" in one_line_error(proc)
    cfg2 = tmp_path / "c2.toml"
    cfg2.write_text(f'[repository]\nurl = "file://{tmp_path}/none"\n')
    proc = run("--config", str(cfg2), "snapshots")
    assert proc.returncode == 5
    assert "no coldkeep repository" in one_line_error(proc)


@pytest.mark.pg
def test_doctor_json_against_a_throwaway_cluster(tmp_path: Path, pg_cluster: TempCluster) -> None:
    repo = tmp_path / "repo"
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[repository]\nurl = "file://{repo}"\nowner = "{ME}"\n'
        f'[postgres]\ndsn = "{pg_cluster.dsn}"\ndata_dir = "{pg_cluster.data_dir}"\n'
        f'bin_dir = "{pg_cluster.bin_dir}"\nos_user = "{pg_cluster.os_user}"\n'
        f'[storage.hot]\npath = "{tmp_path}"\ncapacity = "1GB"\n'
        f'[storage.cold]\npath = "/nonexistent-hdd"\ncapacity = "8TB"\n'
    )
    env = {"COLDKEEP_CACHE_DIR": str(tmp_path / "cache")}
    assert run("--config", str(cfg), "repo", "init", env=env).returncode == 0
    proc = run("--config", str(cfg), "--json", "doctor", env=env)
    data = json.loads(proc.stdout)
    checks = {c["name"]: c for c in data["checks"]}
    assert all(c["status"] in ("pass", "warn", "fail", "skip") and c["detail"] for c in data["checks"])
    assert checks["postgres binaries"]["status"] == "pass"
    assert "15" in checks["postgres binaries"]["detail"]
    assert checks["postgres server"]["status"] == "pass"
    assert checks["wal_level"]["status"] == "pass"
    assert checks["archive_mode"]["status"] == "warn"  # the throwaway cluster does not archive
    assert checks["archive_command"]["status"] == "warn"
    assert checks["data checksums"]["status"] == "pass"
    assert checks["repository"]["status"] == "pass"
    assert checks["storage cold"]["status"] == "warn"
    assert checks["clock"]["status"] == "pass"
    assert checks["os users"]["status"] == "pass"
    assert proc.returncode == 0 and data["ok"] is True

    # the server going away is a failed check (and exit 1), not a crash
    pg_cluster.stop()
    proc = run("--config", str(cfg), "--json", "doctor", env=env)
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert checks["postgres server"]["status"] == "fail"
    assert checks["wal_level"]["status"] == "skip"
    assert proc.returncode == 1


@pytest.mark.pg
def test_doctor_checksums_off_warns(tmp_path: Path) -> None:
    cluster = TempCluster()  # a base directory of its own, owned by the postgres OS user
    try:
        cluster.initdb(checksums=False)
        cluster.start()
        cfg = tmp_path / "c.toml"
        cfg.write_text(f'[repository]\nurl = "file://{tmp_path}/repo"\nowner = "{ME}"\n[postgres]\ndsn = "{cluster.dsn}"\n'
                       f'os_user = "{cluster.os_user}"\n')  # fmt: skip
        proc = run("--config", str(cfg), "--json", "doctor")
        checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
        assert checks["data checksums"]["status"] == "warn"
        assert checks["repository"]["status"] == "warn"  # writable but not initialised
    finally:
        cluster.remove()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_number_option_refuses_nan_and_infinity(tmp_path: Path, value: str) -> None:
    """`repo prune --max-unused nan` passed click's range check (nan compares false to every
    bound) and silently repacked nothing."""
    site = Site(tmp_path / "site")
    site.ok("repo", "init")
    proc = site.run("repo", "prune", "--max-unused", value)
    assert proc.returncode == 2, proc.stderr
    assert "not a finite number" in proc.stderr or "not in the range" in proc.stderr, proc.stderr


def test_global_options_work_after_the_subcommand_too(tmp_path: Path) -> None:
    """The README's own `coldkeep config show --json` and `coldkeep repo stats --json`."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[repository]\nurl = "file://{tmp_path}/repo"\nowner = "{ME}"\n')
    env = {"COLDKEEP_CACHE_DIR": str(tmp_path / "cache")}
    assert run("repo", "init", "--config", str(cfg), "-q", env=env).returncode == 0
    for args in (
        ("repo", "stats", "--json", "--config", str(cfg)),
        ("--config", str(cfg), "repo", "--json", "stats"),
        ("config", "show", "--config", str(cfg), "--json"),
        ("snapshots", "--config", str(cfg), "--json", "-v"),
    ):
        proc = run(*args, env=env)
        assert proc.returncode == 0, (args, proc.stderr)
        json.loads(proc.stdout)  # JSON, not a table
    assert run("repo", "stats", "--config", str(cfg), env=env).stdout.strip()  # says something …
    quiet = run("repo", "stats", "--config", str(cfg), "-q", env=env)
    assert quiet.returncode == 0 and quiet.stdout == ""  # … but not with -q after the subcommand
    same = run("--config", str(cfg), "snapshots", "--config", str(cfg.parent / "." / cfg.name), env=env)
    assert same.returncode == 0, same.stderr  # one file, written two ways
    twice = run("--config", str(tmp_path / "other.toml"), "snapshots", "--config", str(cfg), env=env)
    assert twice.returncode == 2 and "--config" in one_line_error(twice)


def test_messages_that_tell_the_truth(tmp_path: Path) -> None:
    """Short and ambiguous prefixes, `pg verify --all` with nothing to verify, a missing path."""
    from tests.helpers import Site

    site = Site(tmp_path / "site")
    site.ok("repo", "init")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    snap = site.json("backup", str(tmp_path / "d"))["snapshot_id"]

    short = site.run("restore", snap[:3], "--target", str(tmp_path / "t"))
    assert short.returncode == 2 and "too short: give at least 4 characters" in one_line_error(short)
    # a second document whose name shares the first 6 characters (read as itself by a listing)
    twin = snap[:6] + ("0" if snap[6] != "0" else "1") + snap[7:]
    (site.repo_dir / "snapshots" / twin).write_bytes((site.repo_dir / "snapshots" / snap).read_bytes())
    ambiguous = site.run("restore", snap[:4], "--target", str(tmp_path / "t"))
    assert ambiguous.returncode == 2
    line = one_line_error(ambiguous)
    assert "ambiguous: 2 match" in line and snap[:8] in line and twin[:8] in line
    (site.repo_dir / "snapshots" / twin).unlink()

    none = site.run("pg", "verify", "--all")
    assert none.returncode == 5 and "no base backups to verify" in one_line_error(none)
    short_backup = site.run("pg", "verify", "ab")
    assert short_backup.returncode == 2 and "too short" in one_line_error(short_backup)

    missing = site.run("backup", str(tmp_path / "nope"))
    assert missing.returncode == 5
    assert "does not exist" in one_line_error(missing) and "coldkeep snapshots" not in missing.stderr


def test_control_characters_never_reach_the_terminal(tmp_path: Path) -> None:
    """A label, tag, file name or pattern holding ESC[2J must not clear the operator's screen."""
    from tests.helpers import Site

    evil = "\x1b[2J\x1b]0;owned\x07"
    site = Site(tmp_path / "site")
    site.ok("repo", "init")
    src = tmp_path / "d"
    src.mkdir()
    (src / f"name{evil}.txt").write_text("x")
    site.ok("backup", str(src), "--label", evil, "--tag", f"k={evil}")
    outputs = [
        site.run("snapshots"),
        site.run("forget", "--keep-last", "1", "--dry-run"),
        site.run("restore", "latest", "--target", str(tmp_path / "t"), "--include", evil),  # exit 5, names it
        site.run("backup", str(src), "--exclude-file", str(tmp_path / f"no{evil}")),  # exit 2, names it
    ]
    assert [p.returncode for p in outputs] == [0, 0, 5, 2]
    for proc in outputs:
        assert "\x1b" not in proc.stdout and "\x07" not in proc.stdout, proc.stdout
        assert "\x1b" not in proc.stderr and "\x07" not in proc.stderr, proc.stderr
    assert "\\x1b[2J" in outputs[0].stdout  # shown, escaped
    assert "\\x1b[2J" in outputs[2].stderr


@pytest.mark.pg
def test_init_enables_postgres_only_when_a_server_answers(tmp_path: Path, pg_cluster: TempCluster) -> None:
    """`init` asks nothing and breaks nothing: `doctor` right after it is green without a server."""
    env = {"COLDKEEP_CACHE_DIR": str(tmp_path / "cache")}
    none = tmp_path / "none.toml"
    proc = run("--config", str(none), "--json", "init", "--repo", f"file://{tmp_path}/r1", "--owner", ME,
               "--pg-dsn", f"host={tmp_path} port=5999 dbname=x user=postgres", env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["postgres_enabled"] is False and "could not connect to PostgreSQL at" in out["notes"][0]
    assert "\n[postgres]\nenabled = false\n" in none.read_text()
    doctor = run("--config", str(none), "--json", "doctor", env=env)
    assert doctor.returncode == 0, doctor.stdout
    assert not any(c["name"].startswith("postgres") for c in json.loads(doctor.stdout)["checks"])

    live = tmp_path / "live.toml"
    proc = run("--config", str(live), "--json", "init", "--repo", f"file://{tmp_path}/r2", "--owner", ME,
               "--pg-dsn", pg_cluster.dsn, "--pg-data-dir", str(pg_cluster.data_dir), env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["postgres_enabled"] is True

    forced = tmp_path / "forced.toml"
    proc = run("--config", str(forced), "--json", "init", "--repo", f"file://{tmp_path}/r3", "--owner", ME,
               "--postgres", "--pg-dsn", f"host={tmp_path} port=5999", "--no-repo-init", env=env)  # fmt: skip
    assert proc.returncode == 0 and json.loads(proc.stdout)["postgres_enabled"] is True


def test_listings_fit_80_columns_and_show_new_bytes(tmp_path: Path) -> None:
    from tests.helpers import Site

    site = Site(tmp_path / "site", env={"COLUMNS": "80"})
    site.ok("repo", "init")
    src = tmp_path / "d"
    src.mkdir()
    (src / "f.bin").write_bytes(os.urandom(200_000))
    label = "a very long label that goes on and on about the model checkpoint and the dataset version"
    site.ok(
        "backup",
        str(src),
        "--label",
        label,
        "--tag",
        "kind=dataset",
        "--tag",
        "version=v3.0-a-long-tag-value",
    )
    site.ok("backup", str(src))  # nothing new: all of it deduplicated
    table = site.ok("snapshots").stdout
    lines = table.splitlines()
    assert lines[0].split() == ["id", "time", "host", "tags", "label", "files", "size", "new"]
    assert all(len(line) <= 80 for line in lines), table
    first, second = lines[2], lines[3]
    assert "…" in first and label not in table  # cut, on one line
    assert first.split()[-4:-2] == ["200.0", "KB"] and first.split()[-2] not in ("0", "-")  # size, new
    assert second.split()[-2:] == ["0", "B"]  # the second stored nothing new
    wide = site.ok("snapshots", "--wide").stdout
    assert label in wide and str(src) in wide  # everything in full, paths too
