"""PostgreSQL server binaries, the OS user they run as, and throwaway instances.

The server refuses to run as root, so when coldkeep runs as root every server-side program
(``initdb``, ``pg_ctl``, ``postgres``, ``pg_basebackup``) runs as ``[postgres].os_user``, in
directories that user owns.  Every program is started through :mod:`coldkeep.postgres.children`
(an allow-listed environment: no ``COLDKEEP_PASSWORD``, no ``AWS_*``).

:class:`TempCluster` is a private instance (unix socket in its own directory, ``listen_addresses``
empty, a free port) used by restore tests, drills, the demo and the test suite.  It never touches a
server it did not start.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from coldkeep.errors import PostgresBinariesNotFound, PostgresError
from coldkeep.postgres import children

SERVER_PROGRAMS = ("postgres", "pg_ctl", "initdb")


def _has_server(bin_dir: Path) -> bool:
    return all((bin_dir / prog).is_file() for prog in SERVER_PROGRAMS)


def find_bin_dir(configured: str = "") -> Path:
    """``[postgres].bin_dir`` if set, else ``pg_config --bindir``, else the newest
    ``/usr/lib/postgresql/*/bin``, else ``postgres`` on ``PATH``."""
    if configured:
        path = Path(configured)
        if not _has_server(path):
            raise PostgresBinariesNotFound(f"{configured} has no postgres/pg_ctl/initdb")
        return path
    looked: list[str] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = children.run([pg_config, "--bindir"], timeout=10)
            candidate = Path(out.stdout.strip())
            if out.returncode == 0 and _has_server(candidate):
                return candidate
            looked.append(str(candidate))
    versions = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if _has_server(p)),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if versions:
        return versions[-1]
    looked.append("/usr/lib/postgresql/*/bin")
    on_path = shutil.which("postgres")
    if on_path and _has_server(Path(on_path).parent):
        return Path(on_path).parent
    looked.append("PATH")
    raise PostgresBinariesNotFound("looked at " + ", ".join(looked))


def server_version(bin_dir: Path) -> tuple[int, str]:
    """``(major, full text)`` from ``postgres --version``."""
    out = children.run([str(bin_dir / "postgres"), "--version"], timeout=30)
    match = re.search(r"(\d+)(?:\.(\d+))?", out.stdout)
    if out.returncode != 0 or not match:
        raise PostgresBinariesNotFound(f"{bin_dir}/postgres --version failed: {out.stderr.strip()}")
    return int(match.group(1)), out.stdout.strip()


def running_as_root() -> bool:
    return os.geteuid() == 0


def os_owner(os_user: str) -> tuple[int, int] | None:
    """``(uid, gid)`` of ``os_user`` when files must be given to it (running as root); else ``None``."""
    if not running_as_root():
        return None
    pw = pwd.getpwnam(os_user)
    return pw.pw_uid, pw.pw_gid


def chown_to(path: Path, os_user: str) -> None:
    owner = os_owner(os_user)
    if owner is not None:
        os.chown(path, *owner)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(argv: Sequence[str], *, os_user: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run a server program (or a client of a private instance, given every setting on its command
    line) as ``os_user``, with no ``PG*`` variables and none of coldkeep's secrets (only where S3
    credential files are, for ``restore_command``: :data:`~coldkeep.postgres.children.SERVER_VARS`)."""
    return children.run(argv, os_user=os_user, timeout=timeout, server=True)


class TempCluster:
    """A private PostgreSQL instance in a directory of its own.

    ``base`` (created if missing) holds ``data/``, ``sock/`` and ``server.log``; it is owned by
    ``os_user``.  Use as a context manager, or call :meth:`start`/:meth:`stop`/:meth:`remove`.
    """

    def __init__(
        self,
        base: Path | None = None,
        *,
        bin_dir: Path | None = None,
        os_user: str = "postgres",
        port: int | None = None,
        data_dir: Path | None = None,
    ) -> None:
        self.os_user = os_user if running_as_root() else pwd.getpwuid(os.geteuid()).pw_name
        self.bin_dir = bin_dir or find_bin_dir()
        if base is None:
            base = Path(tempfile.mkdtemp(prefix="coldkeep-pg-"))
        self.base = base
        self.base.mkdir(parents=True, exist_ok=True)
        chown_to(self.base, self.os_user)
        os.chmod(self.base, 0o700)
        self.data_dir = data_dir or self.base / "data"
        self.socket_dir = self.base / "sock"
        self.log_file = self.base / "server.log"
        self.port = port or free_port()
        self.started = False

    # -- helpers ---------------------------------------------------------------------------------

    def _bin(self, name: str) -> str:
        return str(self.bin_dir / name)

    def run(self, argv: Sequence[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return run(argv, os_user=self.os_user, timeout=timeout)

    def _check(self, proc: subprocess.CompletedProcess[str], what: str) -> None:
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise PostgresError(f"{what} failed: {' / '.join(tail)}; log: {self.log_file}")

    @property
    def dsn(self) -> str:
        return f"host={self.socket_dir} port={self.port} dbname=postgres user=postgres"

    def dsn_for(self, dbname: str) -> str:
        return f"host={self.socket_dir} port={self.port} dbname={dbname} user=postgres"

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    # -- lifecycle -------------------------------------------------------------------------------

    def initdb(self, *, checksums: bool = True, extra_conf: Mapping[str, str] | None = None) -> None:
        argv = [self._bin("initdb"), "-D", str(self.data_dir), "-U", "postgres", "-A", "trust", "-E", "UTF8"]
        argv += ["--locale=C.UTF-8"] if _has_locale("C.UTF-8") else ["--locale=C"]
        if checksums:
            argv.append("--data-checksums")
        self._check(self.run(argv), "initdb")
        self.configure(extra_conf or {})

    def configure(self, settings: Mapping[str, str]) -> None:
        """Append settings to ``postgresql.conf`` (later lines win) and set the private socket."""
        base = {
            "listen_addresses": "''",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "port": str(self.port),
            "logging_collector": "off",
            "max_wal_senders": "10",
            "wal_level": "replica",
        }
        base.update(settings)
        lines = "".join(f"{k} = {v}\n" for k, v in base.items())
        conf = self.data_dir / "postgresql.conf"
        # write as the OS user (the file is theirs); we may be root, so append directly then chown
        with open(conf, "a", encoding="utf-8") as fh:
            fh.write("\n# --- coldkeep TempCluster ---\n" + lines)
        chown_to(conf, self.os_user)

    def start(self, *, timeout: float = 60, options: Sequence[str] = ()) -> None:
        self.socket_dir.mkdir(exist_ok=True)
        chown_to(self.socket_dir, self.os_user)
        os.chmod(self.socket_dir, 0o700)
        if not self.log_file.exists():
            self.log_file.touch()
            chown_to(self.log_file, self.os_user)
        opts = f"-p {self.port} -k {self.socket_dir} -c listen_addresses=''"
        for opt in options:
            opts += f" {opt}"
        argv = [self._bin("pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file), "-o", opts, "-w",
                "-t", str(int(timeout)), "start"]  # fmt: skip
        proc = self.run(argv, timeout=timeout + 10)
        self.started = True  # even on failure: a half-started server must be stopped
        self._check(proc, "pg_ctl start")

    def stop(self, mode: str = "fast") -> None:
        if not (self.data_dir / "postmaster.pid").exists():
            self.started = False
            return
        proc = self.run(
            [self._bin("pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop"], timeout=120
        )
        if proc.returncode != 0 and (self.data_dir / "postmaster.pid").exists():
            self.kill()
        self.started = False

    def kill(self) -> None:
        """SIGKILL the postmaster (simulates a crash); children exit on their own."""
        pid_file = self.data_dir / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(pid_file.read_text().splitlines()[0])
            os.kill(pid, signal.SIGKILL)
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> TempCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    # -- queries ---------------------------------------------------------------------------------

    def sql(self, query: str, dbname: str = "postgres") -> list[tuple[object, ...]]:
        """Run one statement in autocommit mode and return its rows (empty if none)."""
        import psycopg

        with psycopg.connect(self.dsn_for(dbname), autocommit=True, connect_timeout=10) as conn:
            cur = conn.execute(query.encode())
            return list(cur.fetchall()) if cur.description else []

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.run(
                [self._bin("pg_isready"), "-h", str(self.socket_dir), "-p", str(self.port)], timeout=10
            )
            if proc.returncode == 0:
                return
            time.sleep(0.2)
        raise PostgresError(f"server at {self.socket_dir}:{self.port} not ready after {timeout} s")


def _has_locale(name: str) -> bool:
    try:
        out = children.run(["locale", "-a"], timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    wanted = name.lower().replace("-", "")
    return any(line.strip().lower().replace("-", "") == wanted for line in out.stdout.splitlines())


@contextlib.contextmanager
def temp_cluster(**kwargs: object) -> Iterator[TempCluster]:
    cluster = TempCluster(**kwargs)  # type: ignore[arg-type]
    try:
        yield cluster
    finally:
        cluster.remove()
