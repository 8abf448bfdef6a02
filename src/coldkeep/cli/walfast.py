"""``pg wal-push`` / ``pg wal-fetch``: the per-segment commands, without click, rich or pydantic.

PostgreSQL starts one ``coldkeep`` process per WAL segment (``archive_command``,
``restore_command``), so the interpreter start and the imports are paid for every 16 MiB
(:mod:`coldkeep.lean`).  :mod:`coldkeep.cli.entry` parses those command lines with
:func:`coldkeep.lean.parse` and calls :func:`run`; ``coldkeep pg wal-push --help`` and anything that
parser leaves alone go to the click commands in :mod:`coldkeep.cli.pg_wal_cmd`, which call the same
:func:`push_main` / :func:`push_async_main` / :func:`fetch_main`.  Configuration: only
``[repository]`` (:mod:`coldkeep.lean.config`), so a mistake in an unrelated section cannot stop
WAL archiving.

Exit codes: ``wal-push`` 0 archived (or already archived, identical), 1 failed, 2 usage or
configuration, 3 integrity (a different file with that name is archived, or the file is not the
segment its name says).  ``wal-fetch`` 0 restored, 1 *only* when the file is not archived,
126 (:data:`~coldkeep.errors.RESTORE_COMMAND_FATAL`) for everything else, including usage and
configuration errors, so that PostgreSQL stops recovery instead of promoting early.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Any

from coldkeep.errors import EXIT_FAILED, RESTORE_COMMAND_FATAL, ColdkeepError
from coldkeep.lean import GlobalOptions, WalCommand
from coldkeep.lean.config import find_config_path, load_repository_section

EXIT_NOT_ARCHIVED = 1
#: :data:`coldkeep.repository.format.CONFIG_KEY` and ``NAMED_PREFIX`` (that module imports the
#: crypto stack; tests/unit/test_walfast.py checks they agree)
REPOSITORY_CONFIG_KEY = "config"
NAMED_OBJECT_PREFIX = "named/"


# ------------------------------------------------------------------------------------------------
# output (plain: these run under PostgreSQL, whose log is the reader)


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _report_error(flags: GlobalOptions, exc: ColdkeepError, message: str | None = None) -> None:
    text = message or exc.message
    if flags.json:
        doc = exc.to_json()
        doc["message"] = text
        sys.stdout.write(json.dumps({"error": doc}, ensure_ascii=False) + "\n")
        sys.stdout.flush()
    _say(f"error: {text}")
    if exc.hint:
        _say(f"hint: {exc.hint}")


def _emit(flags: GlobalOptions, doc: dict[str, Any], human: str) -> None:
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


def push_main(flags: GlobalOptions, path: str) -> int:
    """``coldkeep pg wal-push PATH``; returns the exit code."""
    from coldkeep.postgres.archive import wal_push
    from coldkeep.repository.setup import open_repository_section

    try:
        section = load_repository_section(flags.config)
        with open_repository_section(section) as repo:
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


def push_async_main(flags: GlobalOptions, path: str, workers: int = 0) -> int:
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


def fetch_main(
    flags: GlobalOptions, name: str, dest: str, lineage: str | None = None, prefetch: int = 0
) -> int:
    """``coldkeep pg wal-fetch NAME DEST``; returns 0, 1 (not archived) or 126.

    With ``prefetch`` > 0 a segment is first looked up in the prefetch spool next to ``dest``
    (:mod:`coldkeep.postgres.prefetch`) and, when it had to come from the repository, the next
    ``prefetch`` segments are fetched into that spool in the background."""
    try:
        if prefetch > 0:
            from coldkeep.postgres.prefetch import serve_spooled

            if serve_spooled(find_config_path(flags.config), name, dest, lineage, prefetch):
                _emit(
                    flags, {"name": name, "dest": dest, "prefetched": True}, f"restored {name} (prefetched)"
                )
                return 0

        if lineage and name.endswith(".history") and history_not_archived(flags.config, name, lineage):
            from coldkeep.errors import NotArchived as Missing

            _report_error(flags, Missing(name))
            return EXIT_NOT_ARCHIVED

        from coldkeep.postgres.archive import NotArchived, wal_fetch
        from coldkeep.repository.setup import open_repository_section

        try:
            section = load_repository_section(flags.config)
            with open_repository_section(section) as repo:
                result = wal_fetch(repo, name, dest, prefix=lineage)
        except NotArchived as exc:
            _report_error(flags, exc)
            return EXIT_NOT_ARCHIVED
        if prefetch > 0 and result.seg_size:
            _start_prefetch(section.source, name, dest, result.seg_size, prefetch, lineage)
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


def history_not_archived(config: str | None, name: str, lineage: str) -> bool:
    """The lean miss path of ``wal-fetch`` for a timeline history file (PostgreSQL probes the
    next timeline's at the start and end of every recovery, and the answer is nearly always
    "not archived"): ``True`` only when the storage says for sure that the repository is there
    (its ``config`` object exists) and the file's named object is not (the same key the full
    path reads), without opening the repository (no key slots, no Repository: ~50 ms of imports
    less per probe).  Any other answer (the object exists, an error of any kind, a storage that
    cannot be reached) is ``False``: the full path decides, so "not archived" (exit 1) is never
    said for a repository that is unreachable, unmounted or unreadable."""
    try:
        from coldkeep.errors import ObjectNotFound
        from coldkeep.postgres.wal import archive_key, parse_name
        from coldkeep.storage import open_backend

        parsed = parse_name(name)
        if parsed.kind != "history":
            return False
        section = load_repository_section(config)
        backend = open_backend(
            section.url,
            endpoint_url=section.endpoint_url,
            region=section.region,
            connect_timeout=section.connect_timeout,
            read_timeout=section.read_timeout,
        )
        try:
            backend.stat(REPOSITORY_CONFIG_KEY)  # the repository is there (ObjectNotFound here: not sure)
            try:
                backend.stat(NAMED_OBJECT_PREFIX + archive_key(parsed, lineage))
            except ObjectNotFound:
                return True
            return False
        finally:
            backend.close()
    except Exception:
        return False


def _start_prefetch(
    config_path: str, name: str, dest: str, seg_size: int, count: int, lineage: str | None
) -> None:
    """Prefetch the ``count`` segments after segment ``name`` into the spool next to ``dest``
    (:func:`coldkeep.postgres.prefetch.refill`; best effort: ``name`` is in place already)."""
    from coldkeep.postgres import prefetch, wal

    if wal.parse_name(name).kind != "segment":
        return
    spool = prefetch.Spool.for_dest(dest, config_path, lineage)
    with contextlib.suppress(Exception):
        prefetch.refill(spool, config_path, name, seg_size, count, lineage)


# ------------------------------------------------------------------------------------------------
# from the parsed command line


def run(command: WalCommand) -> int:
    """Run a command line :func:`coldkeep.lean.parse` accepted; returns the exit code."""
    options = command.options
    if command.name == "wal-push":
        if command.asynchronous:
            return push_async_main(options, command.operands[0], command.workers)
        return push_main(options, command.operands[0])
    name, dest = command.operands
    return fetch_main(options, name, dest, command.lineage, command.prefetch)
