"""``coldkeep doctor``: is this machine ready to protect its data?

Each check returns a :class:`Check` with status ``pass``, ``warn``, ``fail`` or ``skip`` and one
line of detail.  Checks never change anything except a probe object written to and deleted from
the repository (to prove it is writable).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from coldkeep import clock
from coldkeep.config import Config, Location, check_paths, parse_size
from coldkeep.errors import ColdkeepError
from coldkeep.units import human_bytes as _human_bytes

Status = Literal["pass", "warn", "fail", "skip"]


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _pg_env(config: Config) -> dict[str, str]:
    env: dict[str, str] = {}
    if config.postgres.passfile:
        env["PGPASSFILE"] = config.postgres.passfile
    return env


class Doctor:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._settings: dict[str, str] | None = None
        self._server_now: datetime | None = None
        self._pg_error: str | None = None

    # -- PostgreSQL ------------------------------------------------------------------------------

    def _connect_and_read(self) -> None:
        import psycopg

        if self._settings is not None or self._pg_error is not None:
            return
        old = {k: os.environ.get(k) for k in _pg_env(self.config)}
        os.environ.update(_pg_env(self.config))
        try:
            with psycopg.connect(self.config.postgres.dsn, connect_timeout=5, autocommit=True) as conn:
                rows = conn.execute(
                    "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                    (
                        [
                            "wal_level",
                            "archive_mode",
                            "archive_command",
                            "archive_timeout",
                            "data_checksums",
                            "server_version",
                            "data_directory",
                        ],
                    ),
                ).fetchall()
                self._settings = {str(k): str(v) for k, v in rows}
                now_row = conn.execute("SELECT now()").fetchone()
                self._server_now = now_row[0] if now_row else None
        except psycopg.Error as exc:
            self._pg_error = " ".join(str(exc).split())[:300]
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def check_config(self) -> Check:
        problems = check_paths(self.config)
        if problems:
            return Check(
                "config",
                "fail",
                f"{problems[0]}" + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""),
            )
        return Check("config", "pass", self.config.source or "defaults")

    def check_pg_binaries(self) -> Check:
        from coldkeep.postgres.cluster import find_bin_dir, server_version

        try:
            bin_dir = find_bin_dir(self.config.postgres.bin_dir)
            major, text = server_version(bin_dir)
        except ColdkeepError as exc:
            return Check("postgres binaries", "fail", exc.message)
        if major < 12:
            return Check("postgres binaries", "fail", f"{text} in {bin_dir}: PostgreSQL 12+ is required")
        status: Status = "pass" if major == 15 else "warn"
        return Check("postgres binaries", status, f"{text} in {bin_dir}")

    def check_pg_server(self) -> Check:
        self._connect_and_read()
        if self._pg_error is not None:
            return Check("postgres server", "fail", f"cannot connect: {self._pg_error}")
        assert self._settings is not None
        return Check(
            "postgres server",
            "pass",
            f"version {self._settings.get('server_version')}, data directory {self._settings.get('data_directory')}",
        )

    def _need_settings(self, name: str) -> dict[str, str] | Check:
        self._connect_and_read()
        if self._settings is None:
            return Check(name, "skip", "server not reachable")
        return self._settings

    def check_wal_level(self) -> Check:
        s = self._need_settings("wal_level")
        if isinstance(s, Check):
            return s
        level = s.get("wal_level", "")
        if level in ("replica", "logical"):
            return Check("wal_level", "pass", level)
        return Check(
            "wal_level", "fail", f"{level}: WAL archiving needs replica (run `coldkeep pg setup --apply`)"
        )

    def check_archive_mode(self) -> Check:
        s = self._need_settings("archive_mode")
        if isinstance(s, Check):
            return s
        mode = s.get("archive_mode", "")
        if mode in ("on", "always"):
            return Check("archive_mode", "pass", mode)
        return Check("archive_mode", "warn", f"{mode}: no WAL is archived (run `coldkeep pg setup --apply`)")

    def check_archive_command(self) -> Check:
        s = self._need_settings("archive_command")
        if isinstance(s, Check):
            return s
        command = s.get("archive_command", "")
        if "coldkeep" in command and "wal-push" in command:
            if "--config" not in command:
                return Check(
                    "archive_command",
                    "warn",
                    f"{command!r} has no --config (the server's environment differs)",
                )
            return Check("archive_command", "pass", command)
        if not command or command == "(disabled)":
            return Check("archive_command", "warn", "not set (run `coldkeep pg setup --apply`)")
        return Check("archive_command", "warn", f"{command!r} is not coldkeep's wal-push")

    def check_archive_timeout(self) -> Check:
        s = self._need_settings("archive_timeout")
        if isinstance(s, Check):
            return s
        actual = int(s.get("archive_timeout", "0") or 0)
        wanted = self.config.postgres.archive_timeout
        if actual == wanted:
            return Check(
                "archive_timeout",
                "pass",
                f"{actual} s (up to {actual} s of commits at risk without streaming)",
            )
        return Check("archive_timeout", "warn", f"{actual} s, config says {wanted} s")

    def check_data_checksums(self) -> Check:
        s = self._need_settings("data_checksums")
        if isinstance(s, Check):
            return s
        if s.get("data_checksums") == "on":
            return Check("data checksums", "pass", "on")
        return Check(
            "data checksums",
            "warn",
            "off: silent page corruption goes unnoticed (pg_checksums --enable, offline)",
        )

    def check_os_user(self) -> Check:
        users = {self.config.postgres.os_user, self.config.repository.owner}
        missing = []
        for user in sorted(users):
            try:
                pwd.getpwnam(user)
            except KeyError:
                missing.append(user)
        if missing:
            return Check("os users", "fail", f"no such OS user: {', '.join(missing)}")
        who = pwd.getpwuid(os.geteuid()).pw_name
        return Check("os users", "pass", f"{', '.join(sorted(users))} exist; running as {who}")

    # -- repository ------------------------------------------------------------------------------

    def check_repository(self) -> Check:
        from coldkeep.storage import open_backend

        repo = self.config.repository
        try:
            backend = open_backend(repo.url, endpoint_url=repo.endpoint_url, region=repo.region)
            key = f"tmp/doctor-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            payload = os.urandom(64)
            started = time.monotonic()
            backend.put(key, payload)
            ok = backend.get(key) == payload
            backend.delete(key)
            elapsed = (time.monotonic() - started) * 1000
        except ColdkeepError as exc:
            return Check("repository", "fail", f"{repo.url}: {exc.message}")
        except OSError as exc:
            return Check("repository", "fail", f"{repo.url}: {exc}")
        if not ok:
            return Check("repository", "fail", f"{repo.url}: read back different bytes")
        initialised = backend.exists("config")
        if not initialised:
            return Check(
                "repository", "warn", f"{repo.url}: writable but not initialised (`coldkeep repo init`)"
            )
        return Check(
            "repository", "pass", f"{repo.url}: reachable and writable ({elapsed:.0f} ms round trip)"
        )

    # -- storage locations -----------------------------------------------------------------------

    def check_location(self, name: str, loc: Location) -> Check:
        label = f"storage {name}"
        path = Path(loc.path)
        if not path.exists():
            return Check(label, "warn", f"{loc.path} does not exist on this machine")
        usage = shutil.disk_usage(path)
        capacity = parse_size(loc.capacity)
        free_pct = 100 * usage.free / usage.total if usage.total else 0
        detail = (
            f"{loc.path}: {_human_bytes(usage.free)} free of {_human_bytes(usage.total)} "
            f"({free_pct:.0f} %), planned {loc.capacity}"
        )
        allocated = sum(parse_size(a.size) for a in loc.allocations.values())
        if usage.total < allocated * 0.95:
            return Check(label, "warn", detail + f"; allocations need {_human_bytes(allocated)}")
        if free_pct < 10:
            return Check(label, "warn", detail + "; less than 10 % free")
        if usage.total < capacity * 0.95:
            return Check(label, "warn", detail + "; smaller than planned")
        return Check(label, "pass", detail)

    # -- clock -----------------------------------------------------------------------------------

    def check_clock(self) -> Check:
        now = clock.now()
        if now.year < 2024:
            return Check("clock", "fail", f"system time {clock.isoformat(now)} is implausible")
        if self.config.postgres.in_use:
            self._connect_and_read()
            if self._server_now is not None:
                skew = abs((datetime.now(UTC) - self._server_now).total_seconds())
                if skew > 5:
                    return Check("clock", "warn", f"server clock differs by {skew:.1f} s")
                return Check("clock", "pass", f"{clock.isoformat(now)}; server skew {skew:.2f} s")
        return Check("clock", "pass", clock.isoformat(now))

    # -- all -------------------------------------------------------------------------------------

    def run(self) -> Iterator[Check]:
        checks: list[Callable[[], Check]] = [self.check_config]
        if self.config.postgres.in_use:
            checks += [
                self.check_pg_binaries,
                self.check_pg_server,
                self.check_wal_level,
                self.check_archive_mode,
                self.check_archive_command,
                self.check_archive_timeout,
                self.check_data_checksums,
            ]
        checks += [self.check_os_user, self.check_repository]
        for check in checks:
            yield _guard(check)
        yield _guard(lambda: self.check_location("hot", self.config.storage.hot))
        yield _guard(lambda: self.check_location("cold", self.config.storage.cold))
        yield _guard(self.check_clock)


def _guard(check: Callable[[], Check]) -> Check:
    """A check that crashes is a failed check, not a crashed doctor."""
    try:
        return check()
    except Exception as exc:
        name = getattr(check, "__name__", "check").removeprefix("check_").replace("_", " ")
        return Check(name, "fail", f"{type(exc).__name__}: {exc}")
