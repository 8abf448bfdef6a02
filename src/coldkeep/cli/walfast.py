"""``pg wal-push`` / ``pg wal-fetch`` on the lean path: no click, rich or pydantic.

PostgreSQL starts one ``coldkeep`` process per WAL segment (``archive_command``,
``restore_command``), so the interpreter start and the imports are paid for every 16 MiB.
:func:`coldkeep.cli.app.run` hands these two commands to :func:`run_fast` before it parses
anything with click; ``coldkeep pg wal-push --help`` and anything this parser does not recognise
fall back to the click commands in :mod:`coldkeep.cli.pg_wal_cmd`, which call the same
:func:`push_main` / :func:`fetch_main`.  ``COLDKEEP_WAL_FASTPATH=0`` turns the fast path off (for
benchmarks).

Configuration: only ``[repository]`` is read, with the same rules as :mod:`coldkeep.config`
(unknown keys, wrong types and bad URLs are refused; ``tests/unit/test_walfast.py`` keeps the two
in step), so a mistake in an unrelated section cannot stop WAL archiving; ``coldkeep config
check`` and ``pg setup`` validate the whole file.

Exit codes: ``wal-push`` 0 archived (or already archived, identical), 1 failed, 2 usage or
configuration, 3 integrity (a different file with that name is archived, or the file is not the
segment its name says).  ``wal-fetch`` 0 restored, 1 *only* when the file is not archived,
126 (:data:`~coldkeep.errors.RESTORE_COMMAND_FATAL`) for everything else, including usage and
configuration errors, so that PostgreSQL stops recovery instead of promoting early.
"""

from __future__ import annotations

import json
import os
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coldkeep.errors import (
    EXIT_FAILED,
    RESTORE_COMMAND_FATAL,
    ColdkeepError,
    ConfigError,
    ConfigNotFound,
)

if TYPE_CHECKING:
    from coldkeep.postgres.prefetch import Spool
    from coldkeep.repository.repository import Repository

FASTPATH_ENV = "COLDKEEP_WAL_FASTPATH"
SYSTEM_CONFIG = "/etc/coldkeep/coldkeep.toml"
ENV_CONFIG = "COLDKEEP_CONFIG"
EXIT_NOT_ARCHIVED = 1
#: the most segments ``wal-fetch --prefetch`` fetches ahead
MAX_PREFETCH = 64
#: the most threads of the ``wal-push --async`` background pusher
MAX_WORKERS = 64

# ------------------------------------------------------------------------------------------------
# [repository] without pydantic

#: every key of ``[repository]`` (``coldkeep.config.RepositoryConfig``; a unit test compares them)
REPOSITORY_KEYS = ("url", "endpoint_url", "region", "password_file", "owner", "compression_level", "copies")


@dataclass(frozen=True)
class RepositorySection:
    url: str = "file:///mnt/hdd/coldkeep"
    endpoint_url: str = ""
    region: str = ""
    password_file: str = ""
    owner: str = "postgres"
    compression_level: int = 3
    source: str = ""


def find_config_path(explicit: str | None) -> str:
    """``--config`` > ``$COLDKEEP_CONFIG`` > ``./coldkeep.toml`` > ``/etc/coldkeep/coldkeep.toml``
    (the order of :func:`coldkeep.config.find_config`)."""
    if explicit:
        if not os.path.isfile(explicit):
            raise ConfigNotFound(looked=explicit)
        return explicit
    env = os.environ.get(ENV_CONFIG)
    if env:
        if not os.path.isfile(env):
            raise ConfigNotFound(looked=f"${ENV_CONFIG}={env}")
        return env
    candidates = [os.path.join(os.getcwd(), "coldkeep.toml"), SYSTEM_CONFIG]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    raise ConfigNotFound(looked=", ".join(candidates))


def _check_url(url: str) -> str | None:
    """The problem with a repository URL, or ``None`` (``coldkeep.config._check_repo_url``)."""
    from urllib.parse import urlparse

    parsed = urlparse(url)
    if parsed.scheme == "file":
        if not parsed.path.startswith("/") or parsed.netloc not in ("", "localhost"):
            return f"file URL must be absolute, like file:///mnt/hdd/coldkeep (got {url!r})"
    elif parsed.scheme == "s3":
        if not parsed.netloc:
            return f"s3 URL needs a bucket, like s3://bucket/prefix (got {url!r})"
        if parsed.password or "@" in parsed.netloc:
            return "credentials do not belong in the URL; use the environment"
    else:
        return f"repository URL must start with file:// or s3:// (got {url!r})"
    return None


def parse_repository_section(data: dict[str, Any], source: str) -> RepositorySection:
    where = f"{source}: " if source else ""
    section = data.get("repository", {})
    if not isinstance(section, dict):
        raise ConfigError(f"{where}repository: must be a table")
    values: dict[str, Any] = {}
    for key, value in section.items():
        if key not in REPOSITORY_KEYS:
            raise ConfigError(f"{where}repository.{key}: unknown key")
        if key == "copies":
            if not isinstance(value, dict):
                raise ConfigError(f"{where}repository.copies: must be a table")
            continue
        if key == "compression_level":
            if type(value) is not int:
                raise ConfigError(
                    f"{where}repository.compression_level: Input should be a valid integer (got {value!r})"
                )
            if not -7 <= value <= 22:
                raise ConfigError(
                    f"{where}repository.compression_level: must be between -7 and 22 (got {value!r})"
                )
        elif not isinstance(value, str):
            raise ConfigError(f"{where}repository.{key}: Input should be a valid string (got {value!r})")
        values[key] = value
    section_obj = RepositorySection(**values, source=source)
    problem = _check_url(section_obj.url)
    if problem:
        raise ConfigError(f"{where}repository.url: {problem}")
    return section_obj


def load_repository_section(explicit: str | None) -> RepositorySection:
    path = find_config_path(explicit)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}", hint="fix the line it names") from None
    return parse_repository_section(data, path)


def open_repository_lean(section: RepositorySection) -> Repository:
    """Open the repository from ``[repository]`` alone (what ``repository.setup`` does, without
    importing the configuration models)."""
    from coldkeep.repository.keyslots import read_passphrase
    from coldkeep.repository.repository import Repository
    from coldkeep.storage import open_backend

    backend = open_backend(
        section.url,
        endpoint_url=section.endpoint_url,
        region=section.region,
        owner=section.owner if os.geteuid() == 0 and section.owner else None,
    )
    try:
        return Repository.open(backend, lambda: read_passphrase(section.password_file))
    except BaseException:
        backend.close()
        raise


# ------------------------------------------------------------------------------------------------
# output (plain: these run under PostgreSQL, whose log is the reader)


@dataclass
class Flags:
    config: str | None = None
    json: bool = False
    quiet: bool = False
    verbose: int = 0


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _report_error(flags: Flags, exc: ColdkeepError, message: str | None = None) -> None:
    text = message or exc.message
    if flags.json:
        doc = exc.to_json()
        doc["message"] = text
        sys.stdout.write(json.dumps({"error": doc}, ensure_ascii=False) + "\n")
        sys.stdout.flush()
    _say(f"error: {text}")
    if exc.hint:
        _say(f"hint: {exc.hint}")


def _emit(flags: Flags, doc: dict[str, Any], human: str) -> None:
    if flags.json:
        sys.stdout.write(json.dumps(doc, ensure_ascii=False) + "\n")
        sys.stdout.flush()
    elif flags.verbose and not flags.quiet:
        _say(human)


def _internal(exc: BaseException) -> ColdkeepError:
    return ColdkeepError(
        f"internal error: {type(exc).__name__}: {exc}", hint="rerun with -v for the traceback and report it"
    )


# ------------------------------------------------------------------------------------------------
# the two commands


def push_main(flags: Flags, path: str) -> int:
    """``coldkeep pg wal-push PATH``; returns the exit code."""
    from coldkeep.postgres.archive import wal_push

    try:
        section = load_repository_section(flags.config)
        with open_repository_lean(section) as repo:
            result = wal_push(repo, path)
    except ColdkeepError as exc:
        if flags.verbose:
            import traceback

            traceback.print_exc()
        _report_error(flags, exc, f"wal-push {os.path.basename(path)}: {exc.message}")
        return exc.exit_code
    except Exception as exc:
        if flags.verbose:
            import traceback

            traceback.print_exc()
        _report_error(flags, _internal(exc))
        return EXIT_FAILED
    for warning in result.warnings:
        _say(f"warning: {warning}")
    _emit(flags, result.to_json(), f"archived {result.name} ({result.bytes} bytes) in {result.duration_s:.3f} s"
          if result.stored else f"{result.name} already archived")  # fmt: skip
    return 0


def push_async_main(flags: Flags, path: str, workers: int = 0) -> int:
    """``coldkeep pg wal-push --async PATH`` (:mod:`coldkeep.postgres.spool`)."""
    from coldkeep.postgres.spool import push_async

    try:
        config_path = find_config_path(flags.config)
    except ColdkeepError as exc:
        _report_error(flags, exc, f"wal-push {os.path.basename(path)}: {exc.message}")
        return exc.exit_code

    def emit(doc: dict[str, Any]) -> None:
        _emit(flags, doc, f"{doc['name']} durable in the repository ({doc['acknowledged']})")

    return push_async(config_path, path, workers=workers, verbose=flags.verbose, emit=emit)


def fetch_main(flags: Flags, name: str, dest: str, lineage: str | None = None, prefetch: int = 0) -> int:
    """``coldkeep pg wal-fetch NAME DEST``; returns 0, 1 (not archived) or 126.

    With ``prefetch`` > 0 a segment is first looked up in the prefetch spool next to ``dest``
    (:mod:`coldkeep.postgres.prefetch`) and, when it had to come from the repository, the next
    ``prefetch`` segments are fetched into that spool in the background."""
    try:
        spool = None
        if prefetch > 0:
            from coldkeep.postgres import wal
            from coldkeep.postgres.prefetch import Spool

            if wal.parse_name(name).kind == "segment":
                config_path = find_config_path(flags.config)
                spool = Spool.for_dest(dest, config_path, lineage)
                spool.wait(name)  # being prefetched right now: wait rather than fetch it twice
                seg_size = spool.take(name, dest)
                if seg_size is not None:  # served from the spool: keep it K segments ahead
                    _start_prefetch(spool, config_path, name, seg_size, prefetch, lineage)
                    _emit(
                        flags,
                        {"name": name, "dest": dest, "prefetched": True},
                        f"restored {name} (prefetched)",
                    )
                    return 0

        from coldkeep.postgres.archive import NotArchived, wal_fetch

        try:
            section = load_repository_section(flags.config)
            with open_repository_lean(section) as repo:
                result = wal_fetch(repo, name, dest, prefix=lineage)
        except NotArchived as exc:
            _report_error(flags, exc)
            return EXIT_NOT_ARCHIVED
        if spool is not None and result.seg_size:
            _start_prefetch(spool, section.source, name, result.seg_size, prefetch, lineage)
        _emit(
            flags,
            result.to_json(),
            f"restored {result.name} ({result.bytes} bytes) in {result.duration_s:.3f} s",
        )
        return 0
    except ColdkeepError as exc:
        if flags.verbose:
            import traceback

            traceback.print_exc()
        _report_error(flags, exc, f"cannot restore WAL file {name}: {exc.message}")
        return RESTORE_COMMAND_FATAL
    except BaseException as exc:  # anything at all (even an interrupt): stop recovery, never promote
        if flags.verbose:
            import traceback

            traceback.print_exc()
        _report_error(flags, _internal(exc), f"cannot restore WAL file {name}: {type(exc).__name__}: {exc}")
        return RESTORE_COMMAND_FATAL


def _start_prefetch(
    spool: Spool, config_path: str, name: str, seg_size: int, count: int, lineage: str | None
) -> None:
    """Keep ``count`` segments after ``name`` prefetched (:func:`coldkeep.postgres.prefetch.refill`)."""
    from coldkeep.postgres import prefetch

    prefetch.refill(spool, config_path, name, seg_size, count, lineage)


# ------------------------------------------------------------------------------------------------
# argv parsing for the fast path


class _Fallback(Exception):
    """The fast parser does not handle this command line; let click do it."""


def _parse_globals(args: list[str]) -> tuple[Flags, list[str]]:
    flags = Flags()
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--config":
            if i + 1 >= len(args):
                raise _Fallback
            flags.config = args[i + 1]
            i += 2
            continue
        if arg.startswith("--config="):
            flags.config = arg.split("=", 1)[1]
        elif arg == "--json":
            flags.json = True
        elif arg in ("-q", "--quiet"):
            flags.quiet = True
        elif arg == "--verbose" or (arg.startswith("-v") and set(arg[1:]) == {"v"}):
            flags.verbose += 1 if arg == "--verbose" else len(arg) - 1
        elif arg.startswith("-"):
            raise _Fallback
        else:
            break
        i += 1
    return flags, args[i:]


def _split_command(rest: list[str], options: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Options that take a value (``--opt V`` / ``--opt=V``) and positional arguments."""
    values: dict[str, str] = {}
    positional: list[str] = []
    i = 0
    only_positional = False
    while i < len(rest):
        arg = rest[i]
        if only_positional or not arg.startswith("-") or arg == "-":
            positional.append(arg)
        elif arg == "--":
            only_positional = True
        elif arg in options:
            if i + 1 >= len(rest):
                raise _Fallback
            values[arg] = rest[i + 1]
            i += 1
        elif "=" in arg and arg.split("=", 1)[0] in options:
            key, value = arg.split("=", 1)
            values[key] = value
        else:
            raise _Fallback  # --help, unknown options: click reports them
        i += 1
    return values, positional


def is_wal_command(args: Sequence[str]) -> str | None:
    """``"wal-push"`` / ``"wal-fetch"`` when ``args`` run one of them, else ``None``."""
    try:
        _, rest = _parse_globals(list(args))
    except _Fallback:
        rest = [a for a in args if not a.startswith("-")]
    if len(rest) >= 2 and rest[0] == "pg" and rest[1] in ("wal-push", "wal-fetch"):
        return rest[1]
    return None


def run_fast(args: Sequence[str]) -> int | None:
    """Run ``pg wal-push`` / ``pg wal-fetch`` without click; ``None``: not handled here."""
    if os.environ.get(FASTPATH_ENV, "1") == "0":
        return None
    try:
        flags, rest = _parse_globals(list(args))
        if len(rest) < 2 or rest[0] != "pg":
            return None
        if rest[1] == "wal-push":
            options = [a for a in rest[2:] if a != "--async"]
            values, positional = _split_command(options, ("--workers",))
            if len(positional) != 1:
                raise _Fallback
            if len(options) != len(rest) - 2 or values:  # --async (cli/walfast.py keeps to the sync path)
                workers = values.get("--workers", "0")
                if not workers.isdigit() or int(workers) > MAX_WORKERS:
                    raise _Fallback  # click reports the bad value
                return push_async_main(flags, positional[0], int(workers))
            return push_main(flags, positional[0])
        if rest[1] == "wal-fetch":
            values, positional = _split_command(rest[2:], ("--lineage", "--prefetch"))
            if len(positional) != 2:
                raise _Fallback
            prefetch = values.get("--prefetch", "0")
            if not prefetch.isdigit() or int(prefetch) > MAX_PREFETCH:
                raise _Fallback  # click reports the bad value (exit 126 for wal-fetch)
            return fetch_main(flags, positional[0], positional[1], values.get("--lineage"), int(prefetch))
    except _Fallback:
        return None
    return None


def usage_exit_code(args: Sequence[str], default: int) -> int:
    """The exit code for a command-line error: 126 for ``wal-fetch`` (a broken
    ``restore_command`` must stop recovery), ``default`` otherwise."""
    return RESTORE_COMMAND_FATAL if is_wal_command(args) == "wal-fetch" else default


__all__ = [
    "FASTPATH_ENV",
    "Flags",
    "RepositorySection",
    "fetch_main",
    "find_config_path",
    "is_wal_command",
    "load_repository_section",
    "open_repository_lean",
    "parse_repository_section",
    "push_async_main",
    "push_main",
    "run_fast",
    "usage_exit_code",
]
