"""The environment of every program coldkeep starts: an allow-list, never coldkeep's secrets."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from coldkeep.postgres import children

CALLER = {
    "PATH": "/opt/venv/bin:/usr/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "LC_CTYPE": "C.UTF-8",
    "TZ": "UTC",
    "COLDKEEP_PASSWORD": "repo-secret",
    "COLDKEEP_CONFIG": "/etc/coldkeep.toml",
    "COLDKEEP_CACHE_DIR": "/root/.cache/coldkeep",
    "AWS_ACCESS_KEY_ID": "AKIA",
    "AWS_SECRET_ACCESS_KEY": "aws-secret",
    "AWS_SESSION_TOKEN": "token",
    "GITHUB_TOKEN": "gh-secret",
    "PYTHONPATH": "/root/src",
    "VIRTUAL_ENV": "/opt/venv",
    "PGPASSWORD": "pg-secret",
    "PGSSLMODE": "verify-full",
    "PGHOST": "db.example",
    "AWS_SHARED_CREDENTIALS_FILE": "/etc/coldkeep/aws-credentials",
    "AWS_CA_BUNDLE": "/etc/ssl/certs/ca.pem",
}


def test_a_tool_or_server_gets_only_the_base_variables() -> None:
    env = children.child_env(source=CALLER)
    assert env == {"PATH": "/opt/venv/bin:/usr/bin", "HOME": "/root", "LANG": "C.UTF-8", "LC_CTYPE": "C.UTF-8",
                   "TZ": "UTC"}  # fmt: skip


def test_a_client_of_the_configured_server_also_gets_libpq_variables() -> None:
    env = children.child_env(source=CALLER, connect=True, passfile="/etc/coldkeep/pgpass")
    assert env["PGPASSFILE"] == "/etc/coldkeep/pgpass"
    assert env["PGSSLMODE"] == "verify-full" and env["PGHOST"] == "db.example"
    assert env["PGPASSWORD"] == "pg-secret"  # the password of exactly that connection
    assert not [k for k in env if k.startswith(("COLDKEEP_", "AWS_")) or k in ("GITHUB_TOKEN", "PYTHONPATH")]


def test_a_server_learns_where_s3_credential_files_are_never_the_keys() -> None:
    env = children.child_env(source=CALLER, server=True)
    assert env["AWS_SHARED_CREDENTIALS_FILE"] == "/etc/coldkeep/aws-credentials"
    assert env["AWS_CA_BUNDLE"] == "/etc/ssl/certs/ca.pem"
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "PGPASSWORD"} & env.keys()
    assert not [k for k in env if k.startswith("COLDKEEP_")]


def test_another_account_gets_its_own_home() -> None:
    user = pwd.struct_passwd(("postgres", "x", 101, 104, "", "/var/lib/postgresql", "/bin/bash"))
    env = children.child_env(source=CALLER, user=user, extra={"PGAPPNAME": "x"})
    assert env["HOME"] == "/var/lib/postgresql" and env["USER"] == env["LOGNAME"] == "postgres"
    assert env["PGAPPNAME"] == "x"
    assert children.child_env(source={})["PATH"] == children.SAFE_PATH


def test_a_started_child_sees_no_secret(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key, value in CALLER.items():
        if key != "PATH":
            monkeypatch.setenv(key, value)
    out = tmp_path / "environ"
    script = f"import json, os; open({str(out)!r}, 'w').write(json.dumps(dict(os.environ)))"
    proc = children.run([sys.executable, "-c", script], timeout=60, connect=True)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(out.read_text())
    assert (
        "COLDKEEP_PASSWORD" not in seen and "AWS_SECRET_ACCESS_KEY" not in seen and "GITHUB_TOKEN" not in seen
    )
    assert seen["PGSSLMODE"] == "verify-full"
    started = children.popen([sys.executable, "-c", "import time; time.sleep(30)"], stdout=subprocess.DEVNULL)
    try:
        environ = Path(f"/proc/{started.pid}/environ").read_bytes()
        assert b"repo-secret" not in environ and b"aws-secret" not in environ and b"PGPASSWORD" not in environ
    finally:
        started.kill()
        started.wait()
    assert os.environ["COLDKEEP_PASSWORD"] == "repo-secret"  # coldkeep's own environment is untouched
