"""Every program coldkeep starts: PostgreSQL's binaries and a few system tools.

A child never inherits coldkeep's environment: :func:`child_env` builds it from an allow-list,
so ``COLDKEEP_PASSWORD``, ``AWS_*`` and whatever else the caller's environment holds stay in
coldkeep.  Every child gets ``PATH``, ``LANG``/``LANGUAGE``/``LC_*``, ``TZ`` and ``HOME`` (the
home of the account it runs as); a program that connects to the configured server
(``pg_basebackup``, ``pg_receivewal``) also gets libpq's connection variables (``PGHOST``,
``PGPASSFILE``, ``PGSSL*``, …, :data:`LIBPQ_VARS`) — ``PGPASSWORD`` included, being the
password of exactly that connection.  Servers (``initdb``, ``pg_ctl``, ``postgres``) and the
clients of a private scratch instance get no ``PG*`` variable at all: they are given every
setting on the command line.  A server's own children (``archive_command``,
``restore_command`` = ``coldkeep pg wal-push``/``wal-fetch``) read the repository passphrase
from ``[repository].password_file`` and S3 keys from a credentials file, never from the
environment: a server gets only where those files are (:data:`SERVER_VARS`:
``AWS_SHARED_CREDENTIALS_FILE``, ``AWS_CONFIG_FILE``, ``AWS_PROFILE``, ``AWS_CA_BUNDLE``), never
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``.

When coldkeep runs as root, :func:`run`/:func:`popen` with ``os_user`` start the program as that
account (uid, gid and its supplementary groups, set by the kernel between fork and exec), so the
process id returned is the program's own — no ``runuser`` in between to outlive a kill.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

#: the search path of a child when coldkeep's own environment has none
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: passed to every child when set
BASE_VARS = frozenset({"PATH", "LANG", "LANGUAGE", "TZ"})
BASE_PREFIXES = ("LC_",)

#: where a server's ``restore_command``/``archive_command`` (coldkeep, against an S3 repository)
#: finds its S3 settings: files, a profile name and a CA bundle — never a key
SERVER_VARS = frozenset({"AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_PROFILE", "AWS_CA_BUNDLE"})

#: libpq's connection variables, passed only to programs that connect to the configured server
LIBPQ_VARS = frozenset({
    "PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD", "PGPASSFILE",
    "PGSERVICE", "PGSERVICEFILE", "PGSYSCONFDIR", "PGOPTIONS", "PGAPPNAME", "PGSSLMODE",
    "PGREQUIRESSL", "PGSSLCOMPRESSION", "PGSSLCERT", "PGSSLKEY", "PGSSLROOTCERT", "PGSSLCRL",
    "PGSSLCRLDIR", "PGSSLSNI", "PGSSLMINPROTOCOLVERSION", "PGSSLMAXPROTOCOLVERSION",
    "PGREQUIREPEER", "PGGSSENCMODE", "PGKRBSRVNAME", "PGGSSLIB", "PGCONNECT_TIMEOUT",
    "PGCLIENTENCODING", "PGTARGETSESSIONATTRS", "PGCHANNELBINDING", "PGREQUIREAUTH",
    "PGLOADBALANCEHOSTS", "PGTZ", "PGDATESTYLE", "PGGEQO",
})  # fmt: skip


def switch_to(os_user: str | None) -> pwd.struct_passwd | None:
    """The account a child runs as: ``os_user`` when coldkeep runs as root and that is another
    account; ``None`` (as coldkeep itself) otherwise."""
    if not os_user or os.geteuid() != 0 or os_user == "root":
        return None
    try:
        return pwd.getpwnam(os_user)
    except KeyError:
        from coldkeep.errors import UsageError

        raise UsageError(f"[postgres].os_user {os_user!r}: no such account",
                         hint="set it to the account PostgreSQL runs as") from None  # fmt: skip


def child_env(
    *,
    user: pwd.struct_passwd | None = None,
    connect: bool = False,
    server: bool = False,
    passfile: str = "",
    extra: Mapping[str, str] | None = None,
    source: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The whole environment of a child: the allow-listed variables of ``source`` (default
    ``os.environ``), libpq's too when ``connect`` (with ``PGPASSFILE = passfile`` when given),
    :data:`SERVER_VARS` when ``server``, ``HOME`` (and ``USER``/``LOGNAME``) of ``user`` when it
    runs as another account, then ``extra``."""
    source = os.environ if source is None else source
    env = {k: v for k, v in source.items() if k in BASE_VARS or k.startswith(BASE_PREFIXES)}
    if server:
        env.update((k, v) for k, v in source.items() if k in SERVER_VARS)
    if connect:
        env.update((k, v) for k, v in source.items() if k in LIBPQ_VARS)
        if passfile:
            env["PGPASSFILE"] = passfile
    env.setdefault("PATH", SAFE_PATH)
    if user is not None:
        env.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
    elif "HOME" in source:
        env["HOME"] = source["HOME"]
    env.update(extra or {})
    return env


def spawn_args(
    *,
    os_user: str | None = None,
    connect: bool = False,
    server: bool = False,
    passfile: str = "",
    extra_env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """``subprocess`` keyword arguments for a child: its environment, ``cwd="/"`` and, when it
    runs as another account, that account's uid, gid and supplementary groups."""
    user = switch_to(os_user)
    kwargs: dict[str, Any] = {
        "env": child_env(user=user, connect=connect, server=server, passfile=passfile, extra=extra_env),
        "cwd": "/",
    }
    if user is not None:
        kwargs.update(user=user.pw_uid, group=user.pw_gid,
                      extra_groups=os.getgrouplist(user.pw_name, user.pw_gid))  # fmt: skip
    return kwargs


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    os_user: str | None = None,
    connect: bool = False,
    server: bool = False,
    passfile: str = "",
    extra_env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to the end (output captured as text); never raises for its exit code."""
    kwargs = spawn_args(
        os_user=os_user, connect=connect, server=server, passfile=passfile, extra_env=extra_env
    )
    if cwd:
        kwargs["cwd"] = cwd
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False, **kwargs)


def popen(
    argv: Sequence[str],
    *,
    os_user: str | None = None,
    connect: bool = False,
    passfile: str = "",
    extra_env: Mapping[str, str] | None = None,
    **popen_args: Any,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` (``popen_args``: stdin/stdout/stderr, bufsize, preexec_fn, …)."""
    kwargs = spawn_args(os_user=os_user, connect=connect, passfile=passfile, extra_env=extra_env)
    kwargs.update(popen_args)
    return subprocess.Popen(list(argv), **kwargs)
